"""What users would run instead, on the same bundles and the same session pools as
test_latency.py (so the same sessions and the same query vectors): full-catalog scoring in
ONNX and in numpy, and a faiss HNSW index over every item. See alternatives.py."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import alternatives as A
from benchmarks import common as C

P = C.profile_from_env()
TRAFFIC = pytest.mark.parametrize("traffic", C.TRAFFIC)
METHODS = {"onnx": "full-catalog ONNX", "numpy": "full-catalog numpy", "hnsw": "faiss HNSW"}


def _info(rec, traffic, length):
    m = rec.manifest
    return dict(n_items=m["n_items"], dim=m["dim"], K=m["neighbors_per_item"],
                dtype=m["item_dtype"], traffic=traffic, session_len=length, k=P.k)


_EXACT: dict = {}
RECALL_SESSIONS = 200


def _exact_top(rec, pool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, exact top-k rows over the whole catalog) of the first sessions."""
    key = (str(rec.bundle.path), id(pool), k)
    if key not in _EXACT:
        queries = np.stack([rec.query(s) for s in pool[:RECALL_SESSIONS]])
        matrix = rec.bundle.item_matrix
        best_s = np.full((len(queries), k), -np.inf, np.float32)
        best_r = np.zeros((len(queries), k), np.int64)
        for start in range(0, len(matrix), 65536):
            scores = queries @ np.asarray(matrix[start:start + 65536], np.float32).T
            both_s = np.concatenate([best_s, scores], axis=1)
            both_r = np.concatenate([best_r, np.broadcast_to(
                np.arange(start, start + scores.shape[1]), scores.shape)], axis=1)
            top = np.argpartition(-both_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(both_s, top, axis=1)
            best_r = np.take_along_axis(both_r, top, axis=1)
        _EXACT[key] = (queries, best_r)
    return _EXACT[key]


def _hnsw_recall(rec, alt, pool, k: int) -> float:
    """Mean share of the exact top-k (same query vector) that HNSW returns."""
    queries, exact = _exact_top(rec, pool, k)
    got = [alt.search(q, k) for q in queries]
    return float(np.mean([len(np.intersect1d(g, e)) / k for g, e in zip(got, exact)]))


def _hnsw_info(rec) -> dict:
    path = rec.bundle.path
    index = A.hnsw_index_path(path, P.hnsw_M, P.hnsw_ef_construction)
    return {"ef_search": P.hnsw_ef_search, "M": P.hnsw_M,
            "ef_construction": P.hnsw_ef_construction,
            "index_mib": round(index.stat().st_size / 2**20, 1),
            "build_seconds": A.hnsw_build_seconds(path, P.hnsw_M, P.hnsw_ef_construction)}


@TRAFFIC
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("n_items", P.sizes)
def test_alternative(measure, suite, n_items, method, traffic):
    rec = suite.rec(P.spec(n_items=n_items))
    alt = suite.alternative(rec, method)
    if method == "hnsw":
        alt.set_ef(P.hnsw_ef_search)
    pool = suite.pool(rec, P.session_len, traffic)
    k = P.k
    extra = _hnsw_info(rec) if method == "hnsw" else {}
    if method == "hnsw":
        extra["recall_vs_exact"] = _hnsw_recall(rec, alt, pool, k)
    measure(lambda s: alt(s, k), pool, group="alternatives vs catalog size",
            warmup=min(P.warmup_rounds, 20 if method != "hnsw" else P.warmup_rounds),
            suite="alternatives", method=METHODS[method], axis="catalog size",
            **_info(rec, traffic, P.session_len), **extra)


@TRAFFIC
@pytest.mark.parametrize("ef", P.hnsw_ef_sweep)
def test_hnsw_ef(measure, suite, ef, traffic):
    """HNSW at the reference point for several efSearch (speed/recall knob)."""
    rec = suite.rec(P.ref)
    alt = suite.alternative(rec, "hnsw")
    alt.set_ef(ef)
    pool = suite.pool(rec, P.session_len, traffic)
    k = P.k
    try:
        recall = _hnsw_recall(rec, alt, pool, k)
        measure(lambda s: alt(s, k), pool, group="HNSW efSearch", suite="alternatives",
                method="faiss HNSW", axis="efSearch", ef_search=ef, M=P.hnsw_M,
                recall_vs_exact=recall,
                **_info(rec, traffic, P.session_len))
    finally:
        alt.set_ef(P.hnsw_ef_search)


@pytest.mark.skipif(not P.grainrec, reason="GRAINRec rows are not part of this profile")
@pytest.mark.parametrize("method", list(METHODS))
def test_grainrec_alternative(measure, suite, method):
    """The alternatives on the GRAINRec bundle and the Diginetica test sessions (their
    HR@20 comes from accuracy.py; report.py puts both in one table)."""
    rec = suite.grainrec()
    alt = suite.alternative(rec, method)
    pool = suite.pool(rec, 0, "test")
    k = P.k
    extra = _hnsw_info(rec) if method == "hnsw" else {}
    measure(lambda s: alt(s, k), pool, group="GRAINRec bundle", warmup=20,
            suite="grainrec", method=METHODS[method], axis="grainrec",
            backend=None, **_info(rec, "test", "test"), **extra)
