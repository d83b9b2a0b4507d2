"""Row order (export_tools.layout): renumbering rows keeps every answer and puts each
item's neighbors near it."""
from __future__ import annotations

import numpy as np
import pytest

from export_tools.layout import locality_order, reorder_rows
from export_tools.synthetic import build_synthetic_bundle
from sessrec_sdk import Recommender


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    kw = dict(n_items=3000, dim=32, neighbors=20, seed=7)
    given = build_synthetic_bundle(root / "given", row_order="given", **kw)
    local = build_synthetic_bundle(root / "local", row_order="locality", **kw)
    return Recommender.load(given, verify=True), Recommender.load(local, verify=True)


def test_reorder_rows_renumbers_consistently():
    rng = np.random.default_rng(0)
    n, k = 50, 6
    nbrs = rng.integers(0, n, size=(n, k)).astype(np.int32)
    nbrs[rng.random((n, k)) < 0.2] = -1
    matrix = rng.standard_normal((n, 4)).astype(np.float32)
    ids = rng.permutation(1000)[:n]
    pop = rng.permutation(n).astype(np.int32)
    cats = rng.integers(0, 5, n).astype(np.int32)
    order = locality_order(nbrs)
    assert sorted(order.tolist()) == list(range(n))
    out = reorder_rows(order, item_matrix=matrix, neighbors=nbrs, item_ids=ids,
                       popularity=pop, item_category=cats)
    for new in range(n):  # new row r is old row order[r], with everything it points to
        old = order[new]
        np.testing.assert_array_equal(out["item_matrix"][new], matrix[old])
        assert out["item_ids"][new] == ids[old] and out["item_category"][new] == cats[old]
        mapped = np.where(out["neighbors"][new] >= 0, order[out["neighbors"][new]], -1)
        np.testing.assert_array_equal(mapped, nbrs[old])
    np.testing.assert_array_equal(order[out["popularity"]], pop)


def test_reorder_rows_rejects_a_non_permutation():
    m = np.zeros((3, 2), np.float32)
    nb = np.zeros((3, 1), np.int32)
    for bad in ([0, 0, 1], [0, 1], [0, 1, 3]):
        with pytest.raises(ValueError, match="permutation"):
            reorder_rows(np.array(bad), item_matrix=m, neighbors=nb, item_ids=np.arange(3),
                         popularity=np.arange(3))


def test_locality_puts_neighbors_near_their_item(pair):
    given, local = pair
    assert given.manifest["row_order"] == "given"
    assert local.manifest["row_order"] == "locality"

    def mean_span(rec):
        nb = np.asarray(rec._served.bundle.neighbors)
        return float(np.mean(nb.max(axis=1) - np.where(nb >= 0, nb, nb.max()).min(axis=1)))

    # drawn order: a neighbor list spans most of the matrix; along the graph, a cluster
    assert mean_span(local) < 0.2 * mean_span(given)


def test_same_answers_in_either_row_order(pair):
    given, local = pair
    ids = given.item_ids
    rng = np.random.default_rng(1)
    for _ in range(300):
        session = ids[rng.integers(0, len(ids), size=int(rng.integers(1, 5)))].tolist()
        opts = dict(k=int(rng.integers(1, 40)),
                    category_filter=str(rng.choice(["none", "last", "session"])),
                    exclude_session_items=bool(rng.integers(0, 2)))
        if rng.random() < 0.3:
            opts["exclude"] = ids[rng.integers(0, len(ids), size=50)].tolist()
        if rng.random() < 0.2:
            opts["allow"] = ids[rng.integers(0, len(ids), size=300)].tolist()
        a, b = given.recommend(session, **opts), local.recommend(session, **opts)
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.fallback == b.fallback and a.n_candidates == b.n_candidates
    # the popularity fallback (no known item) too
    a, b = given.recommend([-5], k=30), local.recommend([-5], k=30)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    assert a.fallback == b.fallback is not None


def test_unknown_row_order_rejected_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="row_order"):
        build_synthetic_bundle(tmp_path / "x", n_items=10**7, row_order="random")
    assert not (tmp_path / "x").exists()
