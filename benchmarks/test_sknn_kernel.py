"""Per-call latency of the session-kNN (VMIS-kNN) kernel alone: ``top_k`` of the C and
Numba backends (sessrec_sdk/kernels/sknn*.py) on a synthetic session index.

Full profile: 1,000,000 items, 2,000,000 training sessions of 2-20 events over a Zipf-like
item popularity (each session's distinct items), the 500 most recent sessions per item
(m_index), idf item weights; calls with sample=500, neighbors=100, k=21 on sessions drawn
from the index's own sessions, without and with a neighbor-position table (the one the
Diginetica validation search chose: items after the shared item weigh up to 11x, items
before it 0; see export_tools.models.sknn.position_table). The smoke profile runs the
same on a small index. The index comes from
export_tools.synthetic.synthetic_session_index (numpy, seeded; the generator of the
synthetic sknn bundles too), built in a session-scoped fixture; the Numba kernel is
compiled at construction, before anything is timed.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from benchmarks import common as C
from export_tools.models.sknn import position_table
from export_tools.synthetic import synthetic_session_index
from sessrec_sdk.kernels.sknn import SknnIndex, SknnQuery, SknnScratch, make_sknn_kernel

P = C.profile_from_env()
FULL = P.name == "full"
N_ITEMS = 1_000_000 if FULL else 20_000
N_SESSIONS = 2_000_000 if FULL else 40_000
M_INDEX = 500
SAMPLE, NEIGHBORS, K = 500, 100, 21
POOL = 2000 if FULL else 200
@pytest.fixture(scope="session")
def sknn_index() -> SknnIndex:
    t0 = time.perf_counter()
    built, _ = synthetic_session_index(N_ITEMS, N_SESSIONS, sample=M_INDEX, idf=True, seed=7)
    index = SknnIndex(*built.arrays(), categories=None)
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


TABLE = {"position_after": 10.0, "position_decay": 64.0, "position_before": 0.0}


@pytest.mark.parametrize("position", ["none", "table"])
@pytest.mark.parametrize("backend", ["c", "numba"])
def test_sknn_top_k(measure, sknn_index, sknn_pool, backend, position):
    if position == "table":  # the same arrays, plus the table
        sknn_index = replace(sknn_index, position_weight=position_table(TABLE))
    kernel = make_sknn_kernel(sknn_index, backend)  # Numba: compiled here, untimed
    scratch = SknnScratch.for_index(sknn_index, max_sample=SAMPLE)

    def call(q):
        return kernel.top_k(q, scratch)

    measure(call, sknn_pool, group="sknn kernel", suite="sknn",
            method="sessrec sknn" + (" + position table" if position == "table" else ""),
            backend=kernel.name, n_items=sknn_index.n_items,
            n_sessions=sknn_index.n_sessions, m_index=M_INDEX, sample=SAMPLE,
            neighbors=NEIGHBORS, k=K, position=position,
            mean_query_len=float(np.mean([len(q.session) for q in sknn_pool])),
            candidates=lambda: float(np.mean([call(q)[2] for q in sknn_pool[:500]])))
