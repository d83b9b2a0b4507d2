"""``recommend_many()`` against a loop of ``recommend()`` over the same sessions, at the
reference point with an encoder that takes a batch axis (manifest ``encoder.batch``, as
``sessrec export`` writes it).

One round is one block of ``Profile.many_sessions`` sessions (``extra_info``
``sessions_per_round``: divide a round's time by it for the time per session), taken in
turn from a pool that interleaves sessions of every length of the session-length sweep, so
recommend_many() groups each block into several window lengths, as mixed traffic would.
"""
from __future__ import annotations

import pytest

from benchmarks import common as C
from sessrec_sdk.recommender import BATCH_SESSIONS

P = C.profile_from_env()


@pytest.mark.parametrize("traffic", C.TRAFFIC)
@pytest.mark.parametrize("method", ("recommend_many", "recommend loop"))
def test_recommend_many(measure, suite, method, traffic):
    spec = P.spec(batch=True)
    rec = suite.rec(spec)
    k, n = P.k, P.many_sessions
    pools = [suite.pool(rec, length, traffic) for length in P.lengths]
    mixed = [s for same_rank in zip(*pools) for s in same_rank]
    blocks = [mixed[i:i + n] for i in range(0, len(mixed) - n + 1, n)]
    if method == "recommend_many":
        def fn(block):
            return rec.recommend_many(block, k=k)
    else:
        def fn(block):
            return [rec.recommend(s, k=k) for s in block]
    measure(fn, blocks, group="recommend_many vs a recommend() loop", suite="batch",
            method=method, axis="batch", traffic=traffic, n_items=spec.n_items, dim=spec.dim,
            K=spec.K, dtype=spec.dtype, row_order=spec.row_order, backend=rec.backend,
            sessions_per_round=n, session_lens=list(P.lengths), k=k,
            batch_sessions=BATCH_SESSIONS)
