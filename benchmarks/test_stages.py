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

import time

import numpy as np
import pytest

from benchmarks import common as C
from sessrec_sdk.kernels import CatalogArrays
from sessrec_sdk.kernels.reference import candidate_rows
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
    """Per-session inputs of every stage, computed once with the Recommender's own public
    stages (plan, encode, kernel_query, score), the very code recommend() runs."""

    def __init__(self, rec, pool: list, k: int):
        self.rec, self.k = rec, k
        # sessions with no known item take the popularity fallback, not the model path
        self.pool = pool = [x for x in pool if rec.plan(x).known.size]
        self.plans, self.outputs, self.kq, self.outs = [], [], [], []
        for session in pool:
            plan = rec.plan(session, k)
            outputs = rec.encode(plan)
            q = rec.kernel_query(plan, outputs)
            self.plans.append(plan)
            self.outputs.append(outputs)
            self.kq.append(q)
            self.outs.append(rec.score(plan, q))

    @property
    def catalog(self) -> CatalogArrays:
        b = self.rec.bundle
        return CatalogArrays(b.item_matrix, b.neighbors, b.item_category, b.item_bias)

    def gather_inputs(self) -> list:
        """(rows the kernel scores, query) per session, for the gather floor."""
        return [(candidate_rows(self.catalog, q), q.query) for q in self.kq]

    def floor_blocks(self, n_blocks: int) -> list:
        """(contiguous float32 block of the rows the kernel scores, query) per session."""
        cat = self.catalog
        out = []
        for q in self.kq[:n_blocks]:
            rows = candidate_rows(cat, q)
            out.append((np.ascontiguousarray(cat.matrix[rows], dtype=np.float32), q.query))
        return out


def in_call_stages(rec, session, k: int) -> tuple[dict, Recommendation]:
    """One recommend() call through its public stages, with a clock read between them:
    the stages *inside* a call, where they share caches with each other (the isolated
    benchmarks above run each stage alone). ``run`` is recommend()'s own second half;
    the breakdown checks the result equals recommend()'s."""
    clock = time.perf_counter
    t0 = clock()
    plan = rec.plan(session, k)
    t1 = clock()
    outputs = rec.encode(plan)
    t2 = clock()
    q = rec.kernel_query(plan, outputs)
    t3 = clock()
    top_rows, scores, n_cand = rec.score(plan, q)
    t4 = clock()
    result = Recommendation(rec.bundle.ids.external(top_rows), scores, None, plan.unknown,
                            n_cand)
    t5 = clock()
    return {"options + id mapping": t1 - t0, "encoder": t2 - t1, "kernel query": t3 - t2,
            "kernel": t4 - t3, "result building": t5 - t4, "total": t5 - t0}, result


def in_call_breakdown(prep: Prepared, n: int) -> dict:
    """Medians (seconds) of each in-call stage over ``n`` sessions of the pool, after
    checking the instrumented calls return what recommend() returns."""
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
    rec, k = prep.rec, prep.k
    plan0 = prep.plans[0]
    if stage == "recommend":
        fn, pool = (lambda x: rec.recommend(x, k=k)), prep.pool
    elif stage == "id mapping":
        fn, pool = (lambda x: rec.plan(x, k)), prep.pool
    elif stage == "encoder":
        fn, pool = rec.encode, prep.plans
    elif stage == "kernel":
        fn, pool = (lambda q: rec.score(plan0, q)), prep.kq
    elif stage == "kernel, hot":
        fn, pool = (lambda q: rec.score(plan0, q)), prep.kq[:1]
    elif stage == "result building":
        ids = rec.bundle.ids
        fn, pool = (lambda o: Recommendation(ids.external(o[0]), o[1], None, 0, o[2])), prep.outs
    elif stage == "numpy gather floor":
        matrix = prep.catalog.matrix
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
