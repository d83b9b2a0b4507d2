"""Per-call latency of ``Recommender.recommend()``: one sweep per axis around the reference
point (full profile: 1M items, d=256, K=100, float32, locality row order, C backend, 3-item
sessions, k=20),
each for uniform-random and popularity-weighted sessions."""
from __future__ import annotations

import pytest

from benchmarks import common as C
from benchmarks.conftest import mean_candidates

P = C.profile_from_env()
TRAFFIC = pytest.mark.parametrize("traffic", C.TRAFFIC)


def _bench(measure, suite, spec, *, axis, traffic, length=None, backend=None, k=None,
           pages="steady", **info):
    p = suite.p
    length = length or p.session_len
    k = k or p.k
    rec = suite.rec(spec, backend, pages)
    pool = suite.pool(rec, length, traffic)
    measure(lambda s: rec.recommend(s, k=k), pool, group=f"recommend vs {axis}",
            suite="latency", method="sessrec", axis=axis, traffic=traffic,
            n_items=spec.n_items, dim=spec.dim, K=spec.K, dtype=spec.dtype,
            row_order=spec.row_order, backend=rec.backend, session_len=length, k=k, pages=pages,
            candidates=lambda: mean_candidates(rec, pool, k), **info)


@TRAFFIC
def test_reference(measure, suite, traffic):
    """The reference point itself (the headline figure)."""
    _bench(measure, suite, P.ref, axis="reference", traffic=traffic)


@TRAFFIC
@pytest.mark.parametrize("n_items", P.sizes)
def test_catalog_size(measure, suite, n_items, traffic):
    _bench(measure, suite, P.spec(n_items=n_items), axis="catalog size", traffic=traffic)


@TRAFFIC
@pytest.mark.parametrize("dim", P.dims)
def test_dim(measure, suite, dim, traffic):
    _bench(measure, suite, P.spec(dim=dim), axis="dimension", traffic=traffic)


@TRAFFIC
@pytest.mark.parametrize("K", P.Ks)
def test_neighbors(measure, suite, K, traffic):
    _bench(measure, suite, P.spec(K=K), axis="neighbors per item", traffic=traffic)


@TRAFFIC
@pytest.mark.parametrize("length", P.lengths)
def test_session_length(measure, suite, length, traffic):
    _bench(measure, suite, P.ref, axis="session length", traffic=traffic, length=length)


@TRAFFIC
@pytest.mark.parametrize("backend", P.backends)
def test_backend(measure, suite, backend, traffic):
    _bench(measure, suite, P.ref, axis="backend", traffic=traffic, backend=backend)


@TRAFFIC
@pytest.mark.parametrize("dtype", P.dtypes)
def test_dtype(measure, suite, dtype, traffic):
    _bench(measure, suite, P.spec(dtype=dtype), axis="item dtype", traffic=traffic)


@TRAFFIC
@pytest.mark.parametrize("row_order", P.row_orders)
def test_row_order(measure, suite, row_order, traffic):
    """The same catalog with rows numbered along the neighbor graph (the default) or in the
    order they were drawn (an item's neighbors scattered over the matrix)."""
    _bench(measure, suite, P.spec(row_order=row_order), axis="row order", traffic=traffic)


@TRAFFIC
@pytest.mark.parametrize("pages", ("steady", "lazy", "4k"))
def test_memory_pages(measure, suite, pages, traffic):
    """The reference bundle in steady state (as every other row) and away from it: pages
    mapped on first touch (a server just started, without ``prefault``), or a page cache in
    4 KB pages (a bundle copied in with ``cp`` and never warmed; see sessrec_sdk/pages.py)."""
    from sessrec_sdk.bundle import ITEM_MATRIX
    from sessrec_sdk.pages import huge_page_share

    path = C.small_page_dir(P.ref) if pages == "4k" else C.bundle_dir(P.ref)
    # the share of the item matrix in 2 MB pages in the page cache, after the timed rounds
    _bench(measure, suite, P.ref, axis="memory pages", traffic=traffic, pages=pages,
           matrix_2mb_share=lambda: huge_page_share(path / ITEM_MATRIX))


# ------------------------------------------------------------------ the GRAINRec bundle


@pytest.mark.skipif(not P.grainrec, reason="GRAINRec rows are not part of this profile")
@pytest.mark.parametrize("traffic", ("test", *C.TRAFFIC))
def test_grainrec(measure, suite, traffic):
    """The exported GRAINRec bundle with its defaults (Diginetica test sessions, plus the
    synthetic traffic kinds drawn from its catalog). SESSREC_BENCH_BUNDLE may name another
    model's bundle; a session-kNN one has no dim, K or item dtype (left empty)."""
    rec = suite.grainrec()
    m = rec.manifest
    length = m["inference"]["max_session_length"]
    pool = suite.pool(rec, length, traffic)
    k = P.k
    measure(lambda s: rec.recommend(s, k=k), pool, group="GRAINRec bundle",
            suite="grainrec", method="sessrec", axis="grainrec", traffic=traffic,
            n_items=m["n_items"], dim=m.get("dim"), K=m.get("neighbors_per_item"),
            dtype=m.get("item_dtype"), scorer=m.get("scorer", "encoder"), backend=rec.backend,
            session_len="test" if traffic == "test" else length, k=k,
            candidates=mean_candidates(rec, pool, k))
