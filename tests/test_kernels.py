"""The C kernel, its Numba twin and the numpy reference return the same top-k.

Property tests on random catalogs, plus a plain-Python oracle that checks the reference
itself (candidate set and ranking) so the three cannot agree on a wrong answer.

Scores are compared bit for bit (``.view(np.uint32)``), never with a tolerance: the docs
promise identical scores on every backend and both C instruction sets. Two strategies:
``problems`` (small catalogs, many ties, every filter) and ``big_problems`` (up to several
hundred neighbors per item and ~20 seeds, so that a call collects more than one, two and
three of the C kernel's SR_BATCH = 512-candidate batches).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessrec_sdk.kernels import (
    LANES,
    CatalogArrays,
    KernelQuery,
    NeighborRangeError,
    RowRangeError,
    Scratch,
    available_backends,
    make_kernel,
    reference,
)

BACKENDS = available_backends()


def test_all_backends_available_here():
    # CI builds the C extension and installs numba: all three must be compared
    assert BACKENDS == ["c", "numba", "numpy"]


def test_c_kernel_instruction_sets():
    from sessrec_sdk.kernels.c_backend import instruction_set

    best = instruction_set()
    try:
        assert instruction_set("portable") == "portable"
        assert instruction_set() == "portable"
    finally:
        assert instruction_set("best") == best
    with pytest.raises(ValueError) as err:
        instruction_set("sse9")
    assert str(err.value) == "request must be None, 'portable' or 'best', got 'sse9'"


@st.composite
def problems(draw):
    n = draw(st.integers(2, 60))
    dim = draw(st.integers(1, 40))
    width = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    half = draw(st.booleans())
    # few distinct values => many exact score ties, which must break by row everywhere
    if draw(st.booleans()):
        matrix = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    else:
        matrix = rng.standard_normal((n, dim)).astype(np.float32)
    if half:
        matrix = matrix.astype(np.float16)
        if draw(st.booleans()):  # subnormal, tiny and signed-zero halves widen exactly
            special = np.array([6e-8, -6e-8, 3e-5, -1e-7, 6.1e-5, -0.0, 1.0, 0.5],
                               dtype=np.float16)
            mask = rng.random(matrix.shape) < 0.3
            matrix[mask] = rng.choice(special, size=int(mask.sum()))
    neighbors = rng.integers(-1, n, size=(n, width)).astype(np.int32)
    categories = rng.integers(0, 4, size=n).astype(np.int32)
    bias = rng.standard_normal(n).astype(np.float32) if draw(st.booleans()) else None
    cat = CatalogArrays(np.ascontiguousarray(matrix), neighbors, categories, bias)
    seeds = rng.integers(0, n, size=draw(st.integers(1, 6))).astype(np.int32)  # repeats ok
    query = (rng.integers(-2, 3, size=dim) if draw(st.booleans())
             else rng.standard_normal(dim)).astype(np.float32)
    q = KernelQuery(
        seeds=seeds, query=query, k=draw(st.integers(1, 2 * n)),
        n_use=draw(st.integers(1, width)), exclude_seeds=draw(st.booleans()),
        excluded=rng.integers(0, n, size=draw(st.integers(0, 5))).astype(np.int32),
        allowed=(rng.integers(0, n, size=draw(st.integers(0, n))).astype(np.int32)
                 if draw(st.booleans()) else None),
        allowed_cats=(np.unique(rng.integers(0, 4, size=draw(st.integers(0, 3)))
                                ).astype(np.int32) if draw(st.booleans()) else None),
        # further candidate rows after the neighbor rows (candidates="categories"),
        # repeats and overlaps with the neighbors included
        candidates=(rng.integers(0, n, size=draw(st.integers(0, 2 * n))).astype(np.int32)
                    if draw(st.booleans()) else None))
    return cat, q


def _oracle(cat: CatalogArrays, q: KernelQuery):
    """Plain Python sets and float64 scores: what the kernels are meant to compute."""
    cands = set()
    for s in q.seeds:
        if not q.exclude_seeds:
            cands.add(int(s))
        cands.update(int(c) for c in cat.neighbors[s, :q.n_use] if c >= 0)
    if q.candidates is not None:
        cands.update(q.candidates.tolist())
    cands -= set(q.excluded.tolist())
    if q.exclude_seeds:
        cands -= set(q.seeds.tolist())
    if q.allowed is not None:
        cands &= set(q.allowed.tolist())
    if q.allowed_cats is not None:
        cands = {c for c in cands if cat.categories[c] in set(q.allowed_cats.tolist())}
    m = cat.matrix.astype(np.float64)
    scores = {c: float(m[c] @ q.query.astype(np.float64))
              + (float(cat.bias[c]) if cat.bias is not None else 0.0) for c in cands}
    return scores


SR_BATCH = 512  # csrc/sessrec_kernels.c: candidates collected before they are scored


def _bits(scores: np.ndarray) -> np.ndarray:
    assert scores.dtype == np.float32
    return scores.view(np.uint32)


def _all_results(cat: CatalogArrays, q: KernelQuery, reuse: Scratch | None = None) -> dict:
    """(rows, scores, n_scored) of every backend, the C kernel under both instruction sets
    (set explicitly, so the test does not depend on the default). ``reuse``: a scratch
    already stamped by earlier calls (the visited stamps must not leak between calls)."""
    results = {}
    for name in BACKENDS:
        if name == "c":
            from sessrec_sdk.kernels.c_backend import instruction_set

            kernel = make_kernel(cat, "c")
            try:
                for isa in ("portable", "best"):
                    used = instruction_set(isa)
                    results[f"c/{used}"] = kernel.top_k(q, Scratch(cat.n_items))
                    if reuse is not None:
                        results[f"c/{used}/reused"] = kernel.top_k(q, reuse)
            finally:
                instruction_set("best")
        else:
            kernel = make_kernel(cat, name)
            results[name] = kernel.top_k(q, Scratch(cat.n_items))
            if reuse is not None and name == "numba":
                results["numba/reused"] = kernel.top_k(q, reuse)
    return results


def _assert_identical(results: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """Every backend returns the reference's rows, bit-identical scores, the same count."""
    ref_rows, ref_scores, ref_n = results["numpy"]
    for name, (rows, scores, n_cand) in results.items():
        assert rows.dtype == np.int32 and scores.dtype == np.float32, name
        np.testing.assert_array_equal(rows, ref_rows, err_msg=name)
        assert np.array_equal(_bits(scores), _bits(ref_scores)), (
            name, np.flatnonzero(_bits(scores) != _bits(ref_scores))[:5],
            np.abs(scores - ref_scores).max())
        assert n_cand == ref_n, (name, n_cand, ref_n)
    return ref_rows, ref_scores, ref_n


def test_c_kernel_has_both_instruction_sets_here():
    from sessrec_sdk.kernels.c_backend import instruction_set

    # CI runs on x86-64 with AVX2 + F16C: both instances of the kernel body are compared
    assert instruction_set() == "avx2+f16c"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_backends_agree_exactly(problem):
    cat, q = problem
    reuse = Scratch(cat.n_items)  # stale stamps of "earlier calls" in half the rows
    reuse.epoch = 5
    reuse.seen[::2] = 5
    reuse.allow_mark[1::2] = 5
    _assert_identical(_all_results(cat, q, reuse))


@st.composite
def big_problems(draw):
    """Catalogs and sessions that reach the C kernel's batch path: up to 20 seeds x up to
    400 neighbors, so 0..~4,000 candidates (one, two, several full batches of 512 and a
    partial one), with every filter, float16 rows, bias and repeated seeds."""
    n = draw(st.sampled_from([3000, 6000, 1000, 300]))
    dim = draw(st.sampled_from([1, 3, 8, 15, 16, 17, 24, 32, 33, 48]))
    # (sampled, not integers(): hypothesis draws small values often, which would rarely
    # reach a full batch; short rows and sessions are the other strategy's)
    width = draw(st.sampled_from([300, 400, 200, 100]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "integers", "float16", "float16-int"]))
    if kind.endswith("int") or kind == "integers":  # many exact ties
        matrix = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    else:
        matrix = rng.standard_normal((n, dim)).astype(np.float32)
    if kind.startswith("float16"):
        matrix = matrix.astype(np.float16)
    # few -1 holes, mostly distinct ids: the merged candidate set grows past SR_BATCH
    neighbors = rng.integers(0, n, size=(n, width)).astype(np.int32)
    neighbors[rng.random((n, width)) < draw(st.sampled_from([0.02, 0.0, 0.3]))] = -1
    n_cats = draw(st.integers(1, 6))
    categories = rng.integers(0, n_cats, size=n).astype(np.int32)
    bias = (rng.integers(-3, 4, size=n) / 4).astype(np.float32) if draw(st.booleans()) \
        else (rng.standard_normal(n).astype(np.float32) if draw(st.booleans()) else None)
    cat = CatalogArrays(np.ascontiguousarray(matrix), neighbors, categories, bias)
    n_seeds = draw(st.sampled_from([20, 10, 5, 3]))
    seeds = rng.integers(0, n, size=n_seeds).astype(np.int32)
    if n_seeds > 1 and draw(st.booleans()):
        seeds[-1] = seeds[0]  # a repeated session item
    query = (rng.integers(-2, 3, size=dim) if kind.endswith("int") or kind == "integers"
             else rng.standard_normal(dim)).astype(np.float32)
    k = draw(st.sampled_from([1, 2, 20, 100, 511, 512, 513, 1000, 5000]))
    q = KernelQuery(
        seeds=seeds, query=query, k=k,
        n_use=width if draw(st.booleans()) else draw(st.integers(max(1, width // 2), width)),
        exclude_seeds=draw(st.booleans()),
        excluded=rng.integers(0, n, size=draw(st.integers(0, 50))).astype(np.int32),
        allowed=(rng.integers(0, n, size=int(n * draw(st.sampled_from([0.5, 2.0, 0.1])))
                              ).astype(np.int32)
                 if draw(st.sampled_from([False, False, True])) else None),
        allowed_cats=(np.unique(rng.integers(0, n_cats, size=draw(st.integers(1, 3)))
                                ).astype(np.int32)
                      if draw(st.sampled_from([False, False, True])) else None),
        candidates=(rng.integers(0, n, size=draw(st.sampled_from([1, 100, 600, 1500]))
                                 ).astype(np.int32)
                    if draw(st.sampled_from([False, False, True])) else None))
    return cat, q


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(big_problems())
def test_backends_agree_exactly_past_the_batch_size(problem):
    cat, q = problem
    reuse = Scratch(cat.n_items)
    reuse.seen[:] = 1
    reuse.epoch = 1  # stale stamps of "an earlier call" everywhere
    _, _, n_cand = _assert_identical(_all_results(cat, q, reuse))
    expected = _oracle(cat, q)
    assert n_cand == len(expected)


def _batch_problem(n_cand: int, k: int, half: bool, bias: bool, exclude_seeds: bool):
    """A catalog whose one-seed query collects exactly ``n_cand`` candidates, in merge
    order; the highest-scoring candidates sit at the batch boundaries (positions 510,
    511, 512, 1023, 1024, ... and the last one), where a dropped or doubled candidate
    of a batch changes the top k."""
    width = n_cand if exclude_seeds else n_cand - 1
    n = n_cand + 10
    dim = 19
    rng = np.random.default_rng(n_cand * 7 + k)
    matrix = (rng.standard_normal((n, dim)) * 0.01).astype(np.float32)
    merge = rng.permutation(np.arange(1, n))[:width].astype(np.int32)  # row 0 is the seed
    neighbors = np.full((n, width), -1, dtype=np.int32)
    neighbors[0] = merge
    order = merge if exclude_seeds else np.concatenate([[0], merge]).astype(np.int32)
    assert len(order) == n_cand
    query = np.ones(dim, np.float32)
    for rank, pos in enumerate(p for p in (510, 511, 512, 513, 1022, 1023, 1024, 1025,
                                           1535, 1536, n_cand - 1) if p < n_cand):
        matrix[order[pos]] = 1.0 + 0.001 * rank
    if half:
        matrix = matrix.astype(np.float16)
    cat = CatalogArrays(matrix, neighbors, np.zeros(n, np.int32),
                        rng.standard_normal(n).astype(np.float32) * 1e-3 if bias else None)
    q = KernelQuery(seeds=np.array([0], np.int32), query=query, k=k, n_use=width,
                    exclude_seeds=exclude_seeds, excluded=np.empty(0, np.int32),
                    allowed=None, allowed_cats=None)
    return cat, q, order


@pytest.mark.parametrize("n_cand", [SR_BATCH - 1, SR_BATCH, SR_BATCH + 1, 2 * SR_BATCH,
                                    2 * SR_BATCH + 1, 3 * SR_BATCH + 7])
@pytest.mark.parametrize("exclude_seeds", [True, False])
@pytest.mark.parametrize("half", [False, True])
def test_batch_boundaries(n_cand, exclude_seeds, half):
    """Exactly around 1, 2, 3 full batches: every candidate is scored once, whichever
    batch it falls in, and the boundary candidates (the best ones here) are all returned."""
    for k in (5, n_cand):
        cat, q, order = _batch_problem(n_cand, k, half, bias=k == 5, exclude_seeds=exclude_seeds)
        rows, scores, n = _assert_identical(_all_results(cat, q))
        assert n == n_cand
        if k == n_cand:
            assert sorted(rows.tolist()) == sorted(order.tolist())
        boundary = [order[p] for p in (510, 511, 512, 513, 1022, 1023, 1024, 1025, 1535,
                                       1536, n_cand - 1) if p < n_cand]
        assert set(boundary[-min(k, len(boundary)):]) <= set(rows.tolist())


@pytest.mark.parametrize("n_extra", [1, 2, SR_BATCH, 1500])
def test_further_candidates_alone_and_after_the_neighbors(n_extra):
    """Explicit candidate rows (candidates="categories"), with and without neighbor rows:
    a single one, two, a full batch, several batches; every one scored once."""
    n, dim = 3000, 20
    rng = np.random.default_rng(n_extra)
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    neighbors = np.full((n, 3), -1, np.int32)
    neighbors[7] = [1, 2, 3]
    extra = rng.permutation(np.arange(10, n))[:n_extra].astype(np.int32)
    cat = CatalogArrays(matrix, neighbors, (np.arange(n) % 4).astype(np.int32), None)
    for seed, k in ((8, n), (7, n), (7, 3)):  # row 8 has no neighbors: the extras alone
        q = KernelQuery(seeds=np.array([seed], np.int32),
                        query=rng.standard_normal(dim).astype(np.float32), k=k, n_use=3,
                        exclude_seeds=True, excluded=np.empty(0, np.int32), allowed=None,
                        allowed_cats=None, candidates=extra)
        rows, _, n_cand = _assert_identical(_all_results(cat, q))
        expected = set(extra.tolist()) | ({1, 2, 3} if seed == 7 else set())
        assert n_cand == len(expected)
        if k == n:
            assert set(rows.tolist()) == expected


@pytest.mark.parametrize("filter_kind", ["categories", "allowed", "excluded"])
def test_filters_past_the_batch_size(filter_kind):
    """Filters applied while a batch fills: only the survivors are batched and scored."""
    n, dim, width = 4000, 16, 300
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    neighbors = np.stack([rng.permutation(n)[:width] for _ in range(n)]).astype(np.int32)
    categories = (np.arange(n) % 3).astype(np.int32)
    seeds = np.arange(0, 200, 20, dtype=np.int32)  # 10 seeds: up to 3,000 candidates
    base = dict(seeds=seeds, query=rng.standard_normal(dim).astype(np.float32), k=2000,
                n_use=width, exclude_seeds=True, excluded=np.empty(0, np.int32),
                allowed=None, allowed_cats=None)
    if filter_kind == "categories":
        base["allowed_cats"] = np.array([1], np.int32)
        keep = lambda r: categories[r] == 1  # noqa: E731
    elif filter_kind == "allowed":
        base["allowed"] = np.arange(0, n, 2, dtype=np.int32)
        keep = lambda r: r % 2 == 0  # noqa: E731
    else:
        base["excluded"] = np.arange(0, n, 2, dtype=np.int32)
        keep = lambda r: r % 2 == 1  # noqa: E731
    cat = CatalogArrays(matrix, neighbors, categories, None)
    q = KernelQuery(**base)
    rows, scores, n_cand = _assert_identical(_all_results(cat, q))
    expected = _oracle(cat, q)
    assert n_cand == len(expected) > SR_BATCH
    assert all(keep(r) for r in rows.tolist()) and all(keep(r) for r in expected)
    assert set(rows.tolist()) == set(sorted(expected, key=lambda c: (-expected[c], c))[:2000])


def _lane_dot_python(row, query) -> np.float32:
    """The determinism contract written out element by element in numpy float32 scalars:
    element i into lane i % 16, lanes folded pairwise (j + j + half)."""
    acc = [np.float32(0.0)] * LANES
    for i in range(len(query)):
        acc[i % LANES] = np.float32(acc[i % LANES] + np.float32(np.float32(row[i]) * query[i]))
    half = LANES // 2
    while half >= 1:
        acc = [np.float32(acc[j] + acc[j + half]) for j in range(half)]
        half //= 2
    return acc[0]


@settings(max_examples=60, deadline=None)
@given(problems())
def test_reference_scores_follow_the_lane_contract_bit_for_bit(problem):
    cat, q = problem
    rows, scores, _ = reference.top_k(cat, q)
    expected = np.array([
        np.float32(_lane_dot_python(cat.matrix[r], q.query)
                   + (cat.bias[r] if cat.bias is not None else np.float32(0.0)))
        if cat.bias is not None else _lane_dot_python(cat.matrix[r], q.query)
        for r in rows.tolist()], dtype=np.float32)
    assert np.array_equal(_bits(scores), _bits(expected))


def test_lane_fold_order_is_the_documented_one():
    """A dot product whose float32 value depends on the fold order. Lanes (query all ones)
    [1e8, 1, -1e8, 1, 0, ...]: the contract folds j + j+8, j + j+4, then (0 + 2) + (1 + 3)
    = 0 + 2 = 2 exactly; folding the last steps as (0 + 1) + (2 + 3) gives 1e8 - 1e8 = 0,
    a sequential sum gives 1."""
    row = np.zeros(16, np.float32)
    row[:4] = [1e8, 1.0, -1e8, 1.0]
    matrix = np.stack([row, np.zeros(16, np.float32)])
    cat = CatalogArrays(matrix, np.array([[1], [0]], np.int32), None, None)
    q = KernelQuery(seeds=np.array([1], np.int32), query=np.ones(16, np.float32), k=1,
                    n_use=1, exclude_seeds=True, excluded=np.empty(0, np.int32),
                    allowed=None, allowed_cats=None)
    assert _lane_dot_python(row, q.query) == np.float32(2.0)
    for name, (rows, scores, _) in _all_results(cat, q).items():
        assert rows.tolist() == [0] and scores.tolist() == [2.0], (name, scores)


@settings(max_examples=300, deadline=None)
@given(problems())
def test_reference_matches_python_oracle(problem):
    cat, q = problem
    expected = _oracle(cat, q)
    rows, scores, n_cand = reference.top_k(cat, q)
    assert n_cand == len(expected)
    assert len(rows) == min(q.k, len(expected))
    assert len(set(rows.tolist())) == len(rows)
    assert set(rows.tolist()) <= set(expected)
    np.testing.assert_allclose(scores, [expected[r] for r in rows], atol=1e-4, rtol=1e-5)
    # best first, and nothing left out scores (meaningfully) higher than the last kept
    assert np.all(np.diff(scores) <= 0)
    if len(rows) and len(rows) < len(expected):
        left_out = max(v for c, v in expected.items() if c not in set(rows.tolist()))
        assert left_out <= scores[-1] + 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_break_by_row(backend):
    matrix = np.ones((6, 4), dtype=np.float32)
    neighbors = np.array([[5, 3, 1, 2, 4]] * 6, dtype=np.int32)
    cat = CatalogArrays(matrix, neighbors, None, None)
    q = KernelQuery(seeds=np.array([0], np.int32), query=np.ones(4, np.float32), k=3, n_use=5,
                    exclude_seeds=True, excluded=np.empty(0, np.int32), allowed=None,
                    allowed_cats=None)
    rows, scores, n = make_kernel(cat, backend).top_k(q, Scratch(6))
    assert rows.tolist() == [1, 2, 3] and n == 5
    assert scores.tolist() == [4.0, 4.0, 4.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_candidate_set(backend):
    matrix = np.ones((3, 2), dtype=np.float32)
    neighbors = np.full((3, 2), -1, dtype=np.int32)
    cat = CatalogArrays(matrix, neighbors, None, None)
    q = KernelQuery(seeds=np.array([0, 1], np.int32), query=np.ones(2, np.float32), k=5,
                    n_use=2, exclude_seeds=True, excluded=np.empty(0, np.int32), allowed=None,
                    allowed_cats=None)
    rows, scores, n = make_kernel(cat, backend).top_k(q, Scratch(3))
    assert len(rows) == 0 and len(scores) == 0 and n == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [4, 7, -2, 2**31 - 1])  # 4 == n_items: just past the end
def test_out_of_range_neighbor_is_reported_not_read(backend, bad):
    matrix = np.ones((4, 2), dtype=np.float32)
    neighbors = np.array([[1, 2], [bad, 0], [0, 1], [0, 1]], dtype=np.int32)
    cat = CatalogArrays(matrix, neighbors, None, None)
    q = KernelQuery(seeds=np.array([0, 1], np.int32), query=np.ones(2, np.float32), k=2,
                    n_use=2, exclude_seeds=True, excluded=np.empty(0, np.int32), allowed=None,
                    allowed_cats=None)
    with pytest.raises(NeighborRangeError) as info:
        make_kernel(cat, backend).top_k(q, Scratch(4))
    assert info.value.item_row == 1
    assert str(info.value) == "neighbors.npy row 1 holds an item id out of range"


def _tiny(categories=True):
    matrix = np.arange(15, dtype=np.float32).reshape(5, 3)
    neighbors = np.array([[1, 2], [2, 3], [3, 4], [4, 0], [0, 1]], dtype=np.int32)
    cats = np.array([0, 1, 0, 1, 0], np.int32) if categories else None
    q = KernelQuery(seeds=np.array([0], np.int32), query=np.ones(3, np.float32), k=5, n_use=2,
                    exclude_seeds=True, excluded=np.empty(0, np.int32), allowed=None,
                    allowed_cats=None)
    return CatalogArrays(matrix, neighbors, cats, None), q


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field,bad", [
    ("seeds", np.array([0, 5], np.int32)), ("seeds", np.array([-1], np.int32)),
    ("excluded", np.array([5], np.int32)), ("allowed", np.array([1, 5], np.int32)),
    ("candidates", np.array([2, 5], np.int32)), ("excluded", np.array([-3], np.int32))])
def test_rows_out_of_range_are_refused_before_any_write(backend, field, bad):
    cat, q = _tiny()
    scratch = Scratch(5)
    with pytest.raises(RowRangeError) as info:
        make_kernel(cat, backend).top_k(q._replace(**{field: bad}), scratch)
    assert info.value.row == int(bad[(bad < 0) | (bad >= 5)][0])
    assert str(info.value) == f"row {info.value.row} is outside the catalog"
    assert not scratch.seen.any() and not scratch.allow_mark.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_queries_that_do_not_fit_the_catalog_are_refused(backend):
    cat, q = _tiny()
    kernel = make_kernel(cat, backend)
    for bad in (q._replace(query=np.ones(3, np.float64)),    # wrong dtype only
                q._replace(query=np.ones(4, np.float32)),    # wrong length only
                q._replace(n_use=3),                         # more than K neighbors
                q._replace(n_use=-1)):
        with pytest.raises(ValueError):
            kernel.top_k(bad, Scratch(5))
    no_cats, q = _tiny(categories=False)
    with pytest.raises(ValueError):
        make_kernel(no_cats, backend).top_k(q._replace(allowed_cats=np.array([0], np.int32)),
                                            Scratch(5))


def test_refusal_messages_of_the_reference():
    cat, q = _tiny()
    with pytest.raises(ValueError, match=r"^query must be float32 \[3\], got float64 \[3\]$"):
        reference.top_k(cat, q._replace(query=np.ones(3, np.float64)))
    with pytest.raises(ValueError, match=r"^query must be float32 \[3\], got float32 \[4\]$"):
        reference.top_k(cat, q._replace(query=np.ones(4, np.float32)))
    with pytest.raises(ValueError, match=r"^n_use must be in \[0, 2\], got 3$"):
        reference.top_k(cat, q._replace(n_use=3))
    no_cats, q = _tiny(categories=False)
    with pytest.raises(ValueError,
                       match=r"^a category filter needs a catalog with categories$"):
        reference.top_k(no_cats, q._replace(allowed_cats=np.array([0], np.int32)))


def test_refusal_messages_of_the_c_kernel():
    """The C kernel's own refusal (its argument check, not the reference's) says what it
    was given: dim, n_use, the row width and whether the catalog has categories."""
    from sessrec_sdk.kernels.c_backend import CKernel

    cat, q = _tiny()
    with pytest.raises(ValueError) as err:
        CKernel(cat).top_k(q._replace(n_use=3), Scratch(5))
    assert str(err.value) == ("kernel arguments out of range (dim=3, n_use=3, neighbors per "
                              "item=2, categories=yes)")
    no_cats, q = _tiny(categories=False)
    with pytest.raises(ValueError) as err:
        CKernel(no_cats).top_k(q._replace(allowed_cats=np.array([0], np.int32)), Scratch(5))
    assert str(err.value) == ("kernel arguments out of range (dim=3, n_use=2, neighbors per "
                              "item=2, categories=no)")


@pytest.mark.parametrize("exclude_seeds", [True, False])
def test_zero_neighbors_per_item(exclude_seeds):
    """n_use = 0 is valid: only the seeds themselves (when they may be returned) and the
    further candidates are scored."""
    cat, q = _tiny()
    q = q._replace(seeds=np.array([0, 3], np.int32), n_use=0, exclude_seeds=exclude_seeds,
                   candidates=np.array([2], np.int32))
    rows, scores, n = _assert_identical(_all_results(cat, q))
    assert sorted(rows.tolist()) == ([2] if exclude_seeds else [0, 2, 3])


def test_scratch_epoch_wraps_around():
    s = Scratch(3)
    assert s.seen.dtype == s.allow_mark.dtype == np.uint32  # what the C kernel reads
    assert s.seen.shape == s.allow_mark.shape == (3,)
    s.seen[:] = 7
    s.allow_mark[:] = 9
    s.epoch = 0xFFFFFFFF
    assert s.next_epoch() == 1
    assert not s.seen.any() and not s.allow_mark.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_right_after_the_wrap_around(backend):
    """Stamps of the last epoch before the wrap must not leak into the first after it: an
    allow-list or exclusion of the old epoch would otherwise apply to the new call."""
    cat, q = _tiny()
    kernel = make_kernel(cat, backend)
    s = Scratch(5)
    s.epoch = 0xFFFFFFFF - 1
    kernel.top_k(q._replace(allowed=np.arange(5, dtype=np.int32),
                            excluded=np.array([1], np.int32)), s)  # stamps epoch 0xFFFFFFFF
    rows, _, _ = kernel.top_k(q._replace(allowed=np.array([2], np.int32)), s)  # wraps
    assert rows.tolist() == [2]
    assert s.epoch == (1 if backend != "numpy" else 0xFFFFFFFF - 1)  # numpy keeps no stamps
    rows, _, _ = kernel.top_k(q, s)
    assert sorted(rows.tolist()) == [1, 2]


def test_unknown_backend_rejected():
    cat = CatalogArrays(np.ones((2, 2), np.float32), np.zeros((2, 1), np.int32), None, None)
    with pytest.raises(ValueError, match="backend must be one of"):
        make_kernel(cat, "cuda")
