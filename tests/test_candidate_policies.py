"""Candidate policies beyond the neighbor rows: explicit candidate rows in every kernel
(C on both instruction sets, Numba, numpy), and the "categories" policy and "predicted"
category filter of bundles whose encoder predicts categories (bundle format v2).

Kernel answers are compared bit for bit across backends, and the reference is checked
against a plain-Python oracle of the candidate set."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from sessrec_sdk import CorruptFileError, Recommender
from sessrec_sdk.bundle import read_bundle, write_bundle
from sessrec_sdk.kernels import (
    CatalogArrays,
    KernelQuery,
    RowRangeError,
    Scratch,
    available_backends,
    make_kernel,
    reference,
)

BACKENDS = available_backends()


@st.composite
def with_candidates(draw):
    n = draw(st.integers(2, 900))
    dim = draw(st.sampled_from([1, 7, 16, 33]))
    width = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    matrix = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)  # many exact ties
    if draw(st.booleans()):
        matrix = matrix.astype(np.float16)
    neighbors = rng.integers(-1, n, size=(n, width)).astype(np.int32)
    categories = rng.integers(-1, 6, size=n).astype(np.int32)
    cat = CatalogArrays(matrix, neighbors, categories, None)
    seeds = rng.integers(0, n, size=draw(st.integers(1, 4))).astype(np.int32)
    # up to ~1,200 further candidates (past the C kernel's 512-candidate batches), with
    # repeats and overlaps with the neighbor rows
    cands = rng.integers(0, n, size=draw(st.integers(0, 1200))).astype(np.int32)
    q = KernelQuery(
        seeds=seeds, query=rng.standard_normal(dim).astype(np.float32),
        k=draw(st.integers(1, 40)), n_use=draw(st.integers(0, width)),
        exclude_seeds=draw(st.booleans()),
        excluded=rng.integers(0, n, size=draw(st.integers(0, 20))).astype(np.int32),
        allowed=(rng.integers(0, n, size=draw(st.integers(0, n))).astype(np.int32)
                 if draw(st.booleans()) else None),
        allowed_cats=(np.unique(rng.integers(-1, 6, size=2)).astype(np.int32)
                      if draw(st.booleans()) else None),
        candidates=cands if draw(st.integers(0, 4)) else None)
    return cat, q


def _oracle_candidates(cat: CatalogArrays, q: KernelQuery) -> set[int]:
    pool = [int(c) for s in q.seeds for c in cat.neighbors[s, :q.n_use] if c >= 0]
    if not q.exclude_seeds:
        pool += [int(s) for s in q.seeds]
    if q.candidates is not None:
        pool += [int(c) for c in q.candidates]
    removed = set(q.excluded.tolist()) | (set(q.seeds.tolist()) if q.exclude_seeds else set())
    out = {c for c in pool if c not in removed}
    if q.allowed is not None:
        out &= set(q.allowed.tolist())
    if q.allowed_cats is not None:
        out = {c for c in out if cat.categories[c] in set(q.allowed_cats.tolist())}
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(with_candidates())
def test_explicit_candidates_agree_on_every_backend(problem):
    cat, q = problem
    assert set(reference.candidate_rows(cat, q).tolist()) == _oracle_candidates(cat, q)
    want = reference.top_k(cat, q)
    runs = []
    for name in BACKENDS:
        kernel = make_kernel(cat, name)
        if name == "c":
            from sessrec_sdk.kernels.c_backend import instruction_set

            best = instruction_set()
            try:
                instruction_set("portable")
                runs.append(("c/portable", kernel.top_k(q, Scratch(cat.n_items))))
            finally:
                instruction_set("best")
            assert instruction_set() == best
        runs.append((name, kernel.top_k(q, Scratch(cat.n_items))))
    for name, got in runs:
        assert got[0].tolist() == want[0].tolist(), name
        assert got[1].view(np.uint32).tolist() == want[1].view(np.uint32).tolist(), name
        assert got[2] == want[2], name


@pytest.mark.parametrize("backend", BACKENDS)
def test_candidate_rows_out_of_range_are_refused(backend):
    n = 50
    cat = CatalogArrays(np.ones((n, 4), np.float32), np.zeros((n, 2), np.int32), None, None)
    q = KernelQuery(seeds=np.array([1], np.int32), query=np.ones(4, np.float32), k=3, n_use=2,
                    exclude_seeds=True, excluded=np.empty(0, np.int32), allowed=None,
                    allowed_cats=None)
    for bad in (n, -1, 2**31 - 1):
        scratch = Scratch(n)
        with pytest.raises(RowRangeError) as e:
            make_kernel(cat, backend).top_k(q._replace(candidates=np.array([2, bad], np.int32)),
                                            scratch)
        assert e.value.row == bad and not scratch.seen.any()


# ---------------------------------------------------------------- category-predicting bundles

N_CATS = 6


def _category_encoder(d: int) -> bytes:
    """query = tanh(mean(item_emb) @ W); category_scores = query @ C (a category head)."""
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    c = (rng.standard_normal((d, N_CATS)) * 3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["item_emb"], ["m"], axes=[1], keepdims=0),
         helper.make_node("MatMul", ["m", "W"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["query"]),
         helper.make_node("MatMul", ["query", "C"], ["category_scores"])],
        "cats",
        [helper.make_tensor_value_info("items", TensorProto.INT64, [1, "L"]),
         helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, [1, "L", d])],
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, [1, d]),
         helper.make_tensor_value_info("category_scores", TensorProto.FLOAT, [1, N_CATS])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


CAT_IO = {"inputs": [{"name": "items", "kind": "items"},
                     {"name": "item_emb", "kind": "item_rows"}],
          "outputs": [{"name": "query", "kind": "query"},
                      {"name": "category_scores", "kind": "category_scores"}]}


@pytest.fixture(scope="module")
def cat_bundle(small_bundle, tmp_path_factory):
    b = read_bundle(small_bundle)
    n, d = b.item_matrix.shape
    cats = (np.arange(n) % N_CATS).astype(np.int32)  # every category non-empty
    return write_bundle(
        tmp_path_factory.mktemp("cat") / "b", encoder=_category_encoder(d),
        item_matrix=np.asarray(b.item_matrix), neighbors=np.asarray(b.neighbors),
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity),
        popularity_scores=np.asarray(b.popularity_scores), item_category=cats,
        model={"kind": "test", "config": {}},
        inference={"max_session_length": 3, "session_filter": "none"},
        defaults={"category_filter": "none", "exclude_session_items": True,
                  "categories": 2, "max_candidates": 5000},
        encoder_io=CAT_IO)


@pytest.fixture(scope="module")
def cat_rec(cat_bundle):
    return Recommender.load(cat_bundle)


def _top_categories(rec, session, n):
    scores = rec.encode(rec.plan(session))["category_scores"]
    return np.argsort(-scores, kind="stable")[:n]


def test_category_index_is_written_and_checked(cat_bundle, cat_rec):
    m = json.loads((cat_bundle / "manifest.json").read_text())
    assert m["n_categories"] == N_CATS
    b = cat_rec.bundle
    indptr, indices = b.category_indptr, b.category_items
    cats = np.asarray(b.item_category)
    for c in range(N_CATS):
        members = indices[indptr[c]:indptr[c + 1]]
        assert sorted(members.tolist()) == np.flatnonzero(cats == c).tolist()
        # within a category, the most popular items first (a cap keeps the popular ones)
        pop_rank = {int(r): i for i, r in enumerate(np.asarray(b.popularity))}
        ranks = [pop_rank.get(int(r), len(pop_rank)) for r in members]
        assert ranks == sorted(ranks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_categories_policy_scores_the_items_of_the_top_categories(cat_bundle, backend):
    rec = Recommender.load(cat_bundle, backend=backend)
    ids = rec.item_ids
    session = ids[[5, 17, 42]].tolist()
    for n_cats in (1, 2, 4):
        out = rec.recommend(session, k=15, candidates="categories", categories=n_cats)
        top = set(_top_categories(rec, session, n_cats).tolist())
        cats = np.asarray(rec.bundle.item_category)
        members = [r for r in range(rec.n_items) if cats[r] in top and r not in (5, 17, 42)]
        # the model's own scores over exactly those items, ranked by (score, row)
        q = rec.query(session)
        from sessrec_sdk.kernels.reference import lane_dot

        scores = lane_dot(np.asarray(rec.bundle.item_matrix)[members], q)
        order = np.lexsort((np.array(members), -scores))[:15]
        assert out.item_ids.tolist() == ids[np.array(members)[order]].tolist()
        assert out.n_candidates == len(members)


def test_categories_policy_is_capped_and_says_how_many(cat_bundle):
    rec = Recommender.load(cat_bundle)
    session = rec.item_ids[[5, 17, 42]].tolist()
    out = rec.recommend(session, k=10, candidates="categories", categories=N_CATS,
                        max_candidates=100)
    assert out.n_candidates <= 100 and len(out) == 10
    full = rec.recommend(session, k=10, candidates="categories", categories=N_CATS)
    assert full.n_candidates == rec.n_items - 3


def test_predicted_category_filter_on_neighbors(cat_rec):
    ids = cat_rec.item_ids
    session = ids[[5, 17, 42]].tolist()
    top = set(_top_categories(cat_rec, session, 2).tolist())
    out = cat_rec.recommend(session, k=20, category_filter="predicted", categories=2)
    cats = np.asarray(cat_rec.bundle.item_category)
    rows = cat_rec.bundle.ids.rows(cat_rec.bundle.ids.coerce(out.item_ids))
    assert len(out) > 0 and set(cats[rows].tolist()) <= top
    plain = cat_rec.recommend(session, k=200, category_filter="none")
    plain_rows = cat_rec.bundle.ids.rows(cat_rec.bundle.ids.coerce(plain.item_ids))
    kept = [i for i, r in zip(plain.item_ids.tolist(), plain_rows) if cats[r] in top][:20]
    assert out.item_ids.tolist() == kept  # the same neighbors, filtered


def test_category_options_on_a_bundle_without_a_category_head(small_bundle):
    rec = Recommender.load(small_bundle)
    s = np.load(small_bundle / "item_ids.npy")[:3].tolist()
    with pytest.raises(ValueError, match="category_scores"):
        rec.recommend(s, candidates="categories")
    with pytest.raises(ValueError, match="category_scores"):
        rec.recommend(s, category_filter="predicted")


@pytest.mark.parametrize("categories, exc", [(0, ValueError), (N_CATS + 1, ValueError),
                                             (1.5, TypeError), (True, TypeError)])
def test_bad_categories_option(cat_rec, categories, exc):
    s = cat_rec.item_ids[:3].tolist()
    with pytest.raises(exc, match="categories"):
        cat_rec.recommend(s, candidates="categories", categories=categories)


def test_a_category_head_without_n_categories_is_refused_at_load(cat_bundle, tmp_path):
    """A hand-edited manifest that keeps the category_scores output but drops
    n_categories (and the category index that needs it): refused at load, saying what is
    missing (not only that the default categories= is out of [1, 0])."""
    from fault_injection import read_manifest, write_manifest  # tests/ is on sys.path

    b = tmp_path / "b"
    shutil.copytree(cat_bundle, b)
    m = read_manifest(b)
    del m["n_categories"]
    for name in ("category_items_indptr.npy", "category_items_indices.npy"):
        del m["files"][name]
        (b / name).unlink()
    write_manifest(b, m)
    with pytest.raises(CorruptFileError) as err:
        Recommender.load(b)
    assert str(err.value) == (f"{b / 'manifest.json'}: an encoder output of kind "
                              "category_scores needs n_categories (damaged manifest?)")


@pytest.mark.parametrize("edit, match", [
    (lambda p, i: i.__setitem__(0, 10**6), "category_items_indices.npy"),
    (lambda p, i: p.__setitem__(2, p[3] + 1), "category_items_indptr.npy"),
    (lambda p, i: p.__setitem__(-1, len(i) + 5), "category_items_indptr.npy"),
])
@pytest.mark.parametrize("verify", [None, False])
def test_damaged_category_index_is_refused_at_every_load(cat_bundle, tmp_path, edit, match,
                                                         verify):
    from fault_injection import resign  # tests/ is on sys.path under pytest

    b = tmp_path / "b"
    shutil.copytree(cat_bundle, b)
    indptr = np.load(b / "category_items_indptr.npy")
    indices = np.load(b / "category_items_indices.npy")
    edit(indptr, indices)
    np.save(b / "category_items_indptr.npy", indptr)
    np.save(b / "category_items_indices.npy", indices)
    for name in ("category_items_indptr.npy", "category_items_indices.npy"):
        resign(b, name)
    with pytest.raises(CorruptFileError, match=match):
        Recommender.load(b, verify=verify)


# ---------------------------------------------------------------- repeats


def _oracle_repeats(rec, session, k, bonus, **kwargs):
    """One pass over neighbors-of-the-window plus every session item, the session items
    scored + bonus, ranked by (score, row): what the two kernel calls must add up to."""
    from sessrec_sdk.kernels.reference import lane_dot

    b = rec.bundle
    plan = rec.plan(session, k, exclude_session_items=False, repeat_bonus=bonus, **kwargs)
    q = rec.query(session)
    known = set(plan.known.tolist())
    nb = np.asarray(b.neighbors)[plan.window, :plan.neighbors].ravel()
    excluded = set(plan.excluded.tolist())
    cands = sorted(({int(c) for c in nb if c >= 0} | known) - excluded)
    if plan.category_filter == "last":
        keep = set(np.asarray(b.item_category)[plan.window[-1:]].tolist())
        cands = [c for c in cands if b.item_category[c] in keep]
    scores = lane_dot(np.asarray(b.item_matrix)[cands], q)
    scores = np.where(np.isin(cands, list(known)), scores + np.float32(bonus), scores)
    order = np.lexsort((np.array(cands), -scores.astype(np.float32)))[:k]
    return rec.item_ids[np.array(cands)[order]].tolist(), scores[order].astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_items_compete_with_a_repeat_bonus(small_bundle, backend):
    rec = Recommender.load(small_bundle, backend=backend)
    ids = rec.item_ids
    rng = np.random.default_rng(4)
    for _ in range(20):
        session = ids[rng.integers(0, len(ids), int(rng.integers(1, 12)))].tolist()
        bonus = float(rng.choice([0.0, 0.05, 0.5, 5.0, -0.3]))
        kwargs = {"category_filter": str(rng.choice(["none", "last"])),
                  "exclude": ids[rng.integers(0, len(ids), 3)].tolist()}
        out = rec.recommend(session, k=12, exclude_session_items=False, repeat_bonus=bonus,
                            **kwargs)
        want_ids, want_scores = _oracle_repeats(rec, session, 12, bonus, **kwargs)
        assert out.item_ids.tolist() == want_ids
        assert out.scores.view(np.uint32).tolist() == want_scores.view(np.uint32).tolist()
    # a large bonus puts the session's items first, most recent-looking by model score
    session = ids[[3, 8, 13, 21, 34]].tolist()
    out = rec.recommend(session, k=5, exclude_session_items=False, repeat_bonus=100.0,
                        category_filter="none")
    assert set(out.item_ids.tolist()) == set(session)
    # items older than the encoder's window are repeat candidates too
    assert ids[3] in out.item_ids.tolist()


def test_repeat_bonus_option_is_checked(small_bundle):
    rec = Recommender.load(small_bundle)
    s = np.load(small_bundle / "item_ids.npy")[:3].tolist()
    for bad, exc in ((float("nan"), ValueError), (1e9, ValueError), ("1", TypeError),
                     (True, TypeError)):
        with pytest.raises(exc, match="repeat_bonus"):
            rec.recommend(s, exclude_session_items=False, repeat_bonus=bad)


def test_category_index_by_hand():
    from sessrec_sdk.bundle import category_index

    cats = np.array([2, 0, -1, 2, 0, 1], np.int32)
    pop = np.array([3, 4, 0], np.int32)  # rows 3, 4, 0 most popular, in that order
    indptr, indices = category_index(cats, pop)
    assert indptr.tolist() == [0, 2, 3, 5]
    assert indices.tolist() == [4, 1, 5, 3, 0]  # by popularity, then by row
    indptr, _ = category_index(cats, pop, n_categories=5)  # a head wider than the data
    assert indptr.tolist() == [0, 2, 3, 5, 5, 5]
    with pytest.raises(ValueError, match="n_categories=2"):
        category_index(cats, pop, n_categories=2)
