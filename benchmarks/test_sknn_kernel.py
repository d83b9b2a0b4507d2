"""Per-call latency of the session-kNN (VMIS-kNN) kernel alone: ``top_k`` of the C and
Numba backends (sessrec_sdk/kernels/sknn*.py) on a synthetic session index.

Full profile: 1,000,000 items, 2,000,000 training sessions of 2-20 events over a Zipf-like
item popularity (each session's distinct items), the 500 most recent sessions per item
(m_index), idf item weights; calls with sample=500, neighbors=100, k=21 on sessions drawn
from the index's own sessions. The smoke profile runs the same on a small index. The index
is built with numpy in a session-scoped fixture (seeded); the Numba kernel is compiled at
construction, before anything is timed.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks import common as C
from sessrec_sdk.kernels.sknn import SknnIndex, SknnQuery, SknnScratch, make_sknn_kernel

P = C.profile_from_env()
FULL = P.name == "full"
N_ITEMS = 1_000_000 if FULL else 20_000
N_SESSIONS = 2_000_000 if FULL else 40_000
M_INDEX = 500
SAMPLE, NEIGHBORS, K = 500, 100, 21
POOL = 2000 if FULL else 200
ZIPF_EXPONENT = 1.0
ZIPF_OFFSET = 10  # popularity of the item of rank r ~ 1 / (r + ZIPF_OFFSET) ** ZIPF_EXPONENT


def build_index(n_items: int, n_sessions: int, m_index: int, seed: int = 0) -> SknnIndex:
    """A seeded synthetic index, built vectorised: session lengths uniform in 2..20 events,
    items drawn by Zipf-like popularity (ranks shuffled over the rows), deduplicated per
    session (stored in row order), and per item its ``m_index`` most recent sessions,
    newest first."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 21, n_sessions)
    session_of = np.repeat(np.arange(n_sessions, dtype=np.int64), lengths)
    popularity = 1.0 / (np.arange(n_items) + ZIPF_OFFSET) ** ZIPF_EXPONENT
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]
    rank = np.searchsorted(cdf, rng.random(session_of.shape[0]), side="right")
    item = rng.permutation(n_items).astype(np.int64)[np.minimum(rank, n_items - 1)]
    # distinct items per session: sort by (session, item), drop repeats
    key = np.sort(session_of * n_items + item)
    key = key[np.concatenate(([True], key[1:] != key[:-1]))]
    session_of, item = key // n_items, (key % n_items).astype(np.int32)
    session_indptr = np.zeros(n_sessions + 1, np.int64)
    np.cumsum(np.bincount(session_of, minlength=n_sessions), out=session_indptr[1:])
    # per item its sessions, newest first, at most m_index of them
    order = np.argsort(item.astype(np.int64) * n_sessions + (n_sessions - 1 - session_of),
                       kind="stable")
    by_item, sessions = item[order], session_of[order].astype(np.int32)
    counts = np.bincount(by_item, minlength=n_items)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    keep = np.arange(len(by_item)) - starts[by_item] < m_index
    item_indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.minimum(counts, m_index), out=item_indptr[1:])
    df = np.maximum(counts, 1)  # idf over the sessions containing the item
    weight = np.log(n_sessions / df).astype(np.float32)
    return SknnIndex(item_indptr=item_indptr, item_sessions=np.ascontiguousarray(sessions[keep]),
                     session_indptr=session_indptr, session_items=item, item_weight=weight,
                     categories=None)


@pytest.fixture(scope="session")
def sknn_index() -> SknnIndex:
    t0 = time.perf_counter()
    index = build_index(N_ITEMS, N_SESSIONS, M_INDEX, seed=7)
    C.log(f"sknn index: {index.n_items} items, {index.n_sessions} sessions, "
          f"{index.item_sessions.size} postings, built in {time.perf_counter() - t0:.1f} s")
    return index


@pytest.fixture(scope="session")
def sknn_pool(sknn_index) -> list:
    """Queries on sessions of the index itself (their items in stored order)."""
    rng = np.random.default_rng(11)
    ids = rng.choice(sknn_index.n_sessions, POOL, replace=False)
    empty = np.empty(0, np.int32)
    pool = []
    for j in ids.tolist():
        a, b = sknn_index.session_indptr[j], sknn_index.session_indptr[j + 1]
        session = np.ascontiguousarray(sknn_index.session_items[a:b])
        pool.append(SknnQuery(session=session, sample=SAMPLE, neighbors=NEIGHBORS, k=K,
                              exclude_session=True, session_bonus=0.0, excluded=empty,
                              allowed=None, allowed_cats=None))
    return pool


@pytest.mark.parametrize("backend", ["c", "numba"])
def test_sknn_top_k(measure, sknn_index, sknn_pool, backend):
    kernel = make_sknn_kernel(sknn_index, backend)  # Numba: compiled here, untimed
    scratch = SknnScratch.for_index(sknn_index, max_sample=SAMPLE)

    def call(q):
        return kernel.top_k(q, scratch)

    measure(call, sknn_pool, group="sknn kernel", suite="sknn", method="sessrec sknn",
            backend=kernel.name, n_items=sknn_index.n_items,
            n_sessions=sknn_index.n_sessions, m_index=M_INDEX, sample=SAMPLE,
            neighbors=NEIGHBORS, k=K,
            mean_query_len=float(np.mean([len(q.session) for q in sknn_pool])),
            candidates=lambda: float(np.mean([call(q)[2] for q in sknn_pool[:500]])))
