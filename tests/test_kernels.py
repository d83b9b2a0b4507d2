"""The C kernel, its Numba twin and the numpy reference return the same top-k.

Property tests on random catalogs, plus a plain-Python oracle that checks the reference
itself (candidate set and ranking) so the three cannot agree on a wrong answer.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessrec_sdk.kernels import (
    CatalogArrays,
    KernelQuery,
    NeighborRangeError,
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
    with pytest.raises(ValueError):
        instruction_set("sse9")


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
                                ).astype(np.int32) if draw(st.booleans()) else None))
    return cat, q


def _oracle(cat: CatalogArrays, q: KernelQuery):
    """Plain Python sets and float64 scores: what the kernels are meant to compute."""
    cands = set()
    for s in q.seeds:
        if not q.exclude_seeds:
            cands.add(int(s))
        cands.update(int(c) for c in cat.neighbors[s, :q.n_use] if c >= 0)
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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_backends_agree_exactly(problem):
    cat, q = problem
    results = {}
    for name in BACKENDS:
        kernel = make_kernel(cat, name)
        results[name] = kernel.top_k(q, Scratch(cat.n_items))
    if "c" in BACKENDS:  # the C kernel's other instruction set too
        from sessrec_sdk.kernels.c_backend import instruction_set

        best = instruction_set()
        try:
            other = instruction_set("portable" if best != "portable" else "best")
            results[f"c/{other}"] = make_kernel(cat, "c").top_k(q, Scratch(cat.n_items))
        finally:
            instruction_set("best")
    ref_rows, ref_scores, ref_n = results["numpy"]
    for name, (rows, scores, n_cand) in results.items():
        assert rows.dtype == np.int32 and scores.dtype == np.float32
        np.testing.assert_array_equal(rows, ref_rows, err_msg=name)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5, err_msg=name)
        assert n_cand == ref_n, name


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
@pytest.mark.parametrize("bad", [7, -2, 2**31 - 1])
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


def test_scratch_epoch_wraps_around():
    s = Scratch(3)
    s.seen[:] = 7
    s.epoch = 0xFFFFFFFF
    assert s.next_epoch() == 1
    assert not s.seen.any()


def test_unknown_backend_rejected():
    cat = CatalogArrays(np.ones((2, 2), np.float32), np.zeros((2, 1), np.int32), None, None)
    with pytest.raises(ValueError, match="backend must be one of"):
        make_kernel(cat, "cuda")
