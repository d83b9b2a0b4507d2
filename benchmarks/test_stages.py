"""Where the time of one recommend() goes, at the reference point.

Each stage is timed alone on inputs precomputed from the same session pool, exactly as
recommend() would hand them on: id mapping (coerce + binary search + unknown filter), the
encoder (gather the session's input embeddings + the ONNX run), the kernel alone
(``kernel.top_k``: merge neighbor rows, dedupe, filter, gather-dot, top-k), and result
building (rows back to external ids, the Recommendation object). What is left of a whole
call (option checks, exclusion arrays) is the whole minus the stages.

Three more rows bound the kernel from below. "numpy gather floor" is
``matrix.take(rows, axis=0) @ query`` over exactly the rows the kernel scores, straight
from the memory-mapped matrix (cold: the random reads of those rows, nothing else). A plain
numpy matmul (``block @ query``) over
the same number of rows, already gathered into one contiguous block per session, rotating
over hundreds of blocks (larger than the L3 cache: the memory-bound floor of reading those
rows) and on one block only (cache-hot). "kernel, hot" repeats one query: the kernel
when its rows are in cache.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from benchmarks import common as C
from sessrec_sdk.kernels import KernelQuery
from sessrec_sdk.kernels.reference import candidate_rows
from sessrec_sdk.recommender import Recommender
from sessrec_sdk.result import Recommendation

P = C.profile_from_env()
STAGES = ("recommend", "id mapping", "encoder", "kernel", "result building",
          "kernel, hot", "numpy gather floor", "numpy matmul floor", "numpy matmul floor, hot")
# variants of the reference catalog (bundle changes, stages timed again): its rows in drawn
# order, its item matrix in float16 (numpy has no fast float16 matmul: no floor for it)
VARIANTS = {
    "given row order": ({"row_order": "given"}, ("recommend", "kernel", "numpy gather floor")),
    "float16 item matrix": ({"dtype": "float16"}, ("recommend", "kernel")),
}


class Prepared:
    """Per-session inputs of every stage, computed once with the SDK's own helpers, the
    same way recommend() computes them."""

    def __init__(self, rec, pool: list, k: int):
        s = rec._served
        self.rec, self.s = rec, s
        # sessions with no known item take the popularity fallback, not the model path
        self.pool = pool = [x for x in pool if Recommender._known(s, x)[0].size]
        k, cat_filter, n_use, exclude_seen = Recommender._options(s, k, None, None, None, None)
        self.k = k
        self.windows, self.queries, self.kq, self.outs = [], [], [], []
        for session in pool:
            known, _ = Recommender._known(s, session)
            window = known[-s.max_length:]
            query = Recommender._encode(s, window)
            excluded = known if exclude_seen else np.empty(0, np.int32)
            allowed_cats = None
            if cat_filter == "last":
                allowed_cats = s.bundle.item_category[window[-1:]]
            elif cat_filter == "session":
                allowed_cats = np.unique(s.bundle.item_category[window])
            q = KernelQuery(seeds=window, query=query, k=k, n_use=n_use,
                            exclude_seeds=exclude_seen, excluded=excluded, allowed=None,
                            allowed_cats=allowed_cats)
            self.windows.append(window)
            self.queries.append(query)
            self.kq.append(q)
            self.outs.append(s.kernel.top_k(q, s.scratch()))

    def gather_inputs(self) -> list:
        """(rows the kernel scores, query) per session, for the gather floor."""
        cat = self.s.kernel._cat
        return [(candidate_rows(cat, q), q.query) for q in self.kq]

    def floor_blocks(self, n_blocks: int) -> list:
        """(contiguous float32 block of the rows the kernel scores, query) per session."""
        cat = self.s.kernel._cat
        out = []
        for q in self.kq[:n_blocks]:
            rows = candidate_rows(cat, q)
            out.append((np.ascontiguousarray(cat.matrix[rows], dtype=np.float32), q.query))
        return out


def in_call_stages(rec, session, k: int) -> tuple[dict, Recommendation]:
    """One recommend() call, step for step as Recommender.recommend runs it (default
    options), with a clock read between the steps: the stages *inside* a call, where they
    share caches with each other (the isolated benchmarks above run each stage alone).
    ``test_stage`` checks the result equals recommend()'s, so this copy cannot drift."""
    clock = time.perf_counter
    s = rec._served
    t0 = clock()
    k, cat_filter, n_use, exclude_seen = Recommender._options(s, k, None, None, None, None)
    known, unknown = Recommender._known(s, session)
    t1 = clock()
    window = known[-s.max_length:]
    query = Recommender._encode(s, window)
    t2 = clock()
    if not math.isfinite(query.sum()):
        raise AssertionError("non-finite query")
    excluded = known if exclude_seen else np.empty(0, np.int32)
    allowed_cats = None
    if cat_filter == "last":
        allowed_cats = s.bundle.item_category[window[-1:]]
    elif cat_filter == "session":
        allowed_cats = np.unique(s.bundle.item_category[window])
    q = KernelQuery(seeds=window, query=query, k=k, n_use=n_use, exclude_seeds=exclude_seen,
                    excluded=excluded, allowed=None, allowed_cats=allowed_cats)
    t3 = clock()
    top_rows, scores, n_cand = s.kernel.top_k(q, s.scratch())
    t4 = clock()
    result = Recommendation(s.bundle.ids.external(top_rows), scores, None, unknown, n_cand)
    t5 = clock()
    return {"options + id mapping": t1 - t0, "encoder": t2 - t1, "kernel query": t3 - t2,
            "kernel": t4 - t3, "result building": t5 - t4, "total": t5 - t0}, result


def in_call_breakdown(prep: Prepared, n: int) -> dict:
    """Medians (seconds) of each in-call stage over ``n`` sessions of the pool, after
    checking the instrumented copy returns what recommend() returns."""
    pool = prep.pool[:n]
    for x in pool[:50]:
        got = in_call_stages(prep.rec, x, prep.k)[1]
        want = prep.rec.recommend(x, k=prep.k)
        assert np.array_equal(got.item_ids, want.item_ids), "in_call_stages drifted"
        assert np.array_equal(got.scores, want.scores), "in_call_stages drifted"
    times: dict[str, list] = {}
    for x in pool:
        for name, t in in_call_stages(prep.rec, x, prep.k)[0].items():
            times.setdefault(name, []).append(t)
    return {name: float(np.median(v)) for name, v in times.items()}


_PREPARED: dict = {}


def _prepared(suite, which: str, traffic: str) -> Prepared:
    key = (which, traffic)
    if key not in _PREPARED:
        if which == "grainrec":
            rec = suite.grainrec()
            pool = suite.pool(rec, rec.manifest["inference"]["max_session_length"], traffic)
        else:
            spec = P.ref if which == "reference" else P.spec(**VARIANTS[which][0])
            rec = suite.rec(spec)
            pool = suite.pool(rec, P.session_len, traffic)
        _PREPARED[key] = Prepared(rec, pool, P.k)
    return _PREPARED[key]


CASES = [("reference", t, stage) for t in C.TRAFFIC for stage in STAGES]
CASES += [(which, t, stage) for which, (_, stages) in VARIANTS.items() for t in C.TRAFFIC
          for stage in stages]
if P.grainrec:
    CASES += [("grainrec", "test", stage) for stage in STAGES]


@pytest.mark.parametrize("which,traffic,stage", CASES)
def test_stage(measure, suite, which, traffic, stage):
    prep = _prepared(suite, which, traffic)
    s, rec, k = prep.s, prep.rec, prep.k
    scratch = s.scratch()
    if stage == "recommend":
        fn, pool = (lambda x: rec.recommend(x, k=k)), prep.pool
    elif stage == "id mapping":
        fn, pool = (lambda x: Recommender._known(s, x)), prep.pool
    elif stage == "encoder":
        fn, pool = (lambda w: Recommender._encode(s, w)), prep.windows
    elif stage == "kernel":
        fn, pool = (lambda q: s.kernel.top_k(q, scratch)), prep.kq
    elif stage == "kernel, hot":
        fn, pool = (lambda q: s.kernel.top_k(q, scratch)), prep.kq[:1]
    elif stage == "result building":
        ids = s.bundle.ids
        fn, pool = (lambda o: Recommendation(ids.external(o[0]), o[1], None, 0, o[2])), prep.outs
    elif stage == "numpy gather floor":
        matrix = s.kernel._cat.matrix
        fn, pool = (lambda rq: matrix.take(rq[0], axis=0) @ rq[1]), prep.gather_inputs()
    elif stage == "numpy matmul floor":
        fn, pool = (lambda bq: bq[0] @ bq[1]), prep.floor_blocks(P.floor_blocks)
    elif stage == "numpy matmul floor, hot":
        fn, pool = (lambda bq: bq[0] @ bq[1]), prep.floor_blocks(1)
    else:
        raise ValueError(stage)
    m = rec.manifest
    cands = float(np.mean([o[2] for o in prep.outs[:500]]))
    extra = {}
    if stage == "recommend":  # the same pool, timed step by step inside whole calls
        extra["in_call"] = in_call_breakdown(prep, max(50, min(P.max_rounds, len(prep.pool))))
    measure(fn, pool, group=f"stages ({which}, {traffic})", suite="stages", stage=stage,
            bundle=which, traffic=traffic, n_items=m["n_items"], dim=m["dim"],
            K=m["neighbors_per_item"], dtype=m["item_dtype"],
            row_order=m.get("row_order", "given"), backend=rec.backend, k=k,
            session_len="test" if traffic == "test" else P.session_len, candidates=cands,
            floor_rows=(float(np.mean([len(b) for b, _ in pool[:500]]))
                        if "floor" in stage else None), **extra)
