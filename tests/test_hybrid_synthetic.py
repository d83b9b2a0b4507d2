"""The hybrid request path ("sessions" candidates: session-kNN candidates scored by the
model, the kNN score blended in) on a small synthetic bundle: seconds, no training, so
that every mutant of that path meets a test in the mutation runs (scripts/mutation.sh).

Each answer is recomputed from scratch: the numpy session-kNN reference on the bundle's
index, the encoder's query times the item matrix, the blend written out. The trained
hybrid is tested in tests/test_sknn_model.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from export_tools.models.sknn import build_index, position_table
from export_tools.synthetic import build_synthetic_bundle
from sessrec_sdk import Recommender
from sessrec_sdk.bundle import SessionIndex, read_bundle, write_bundle
from sessrec_sdk.kernels.sknn import SknnIndex, SknnQuery, sknn_top_k

N_ITEMS, SAMPLE, NEIGHBORS, WINDOW, MAX_CANDIDATES = 300, 40, 15, 12, 60
INDEXED = 250  # the training sessions hold only rows < INDEXED: the rest has no neighbors
TABLE = {"position_after": 3.0, "position_decay": 2.0, "position_before": 0.5}


def _training_sessions(rng) -> list[np.ndarray]:
    return [rng.choice(INDEXED, int(rng.integers(2, 9)), replace=False) for _ in range(500)]


def _rewrite(b, out, *, inference: dict, defaults: dict, model: dict | None = None, **extra):
    """The synthetic bundle ``b`` (its encoder and arrays) written again to ``out`` with
    other inference settings, defaults and model entry (and ``extra`` write_bundle
    arguments)."""
    return write_bundle(
        out, encoder=b.path / "encoder.onnx", item_matrix=np.asarray(b.item_matrix),
        neighbors=np.asarray(b.neighbors), item_ids=np.asarray(b.ids.in_row_order),
        popularity=np.asarray(b.popularity), popularity_scores=np.asarray(b.popularity_scores),
        item_category=np.asarray(b.item_category),
        model=b.manifest["model"] if model is None else model, inference=inference,
        defaults=defaults, **extra)


@pytest.fixture(scope="module", params=["plain", "table"])
def hybrid(request, tmp_path_factory):
    """(bundle path, its index arrays as an SknnIndex): a synthetic encoder bundle plus a
    session index over random sessions, with and without a neighbor-position table."""
    root = tmp_path_factory.mktemp("hybrid")
    base = build_synthetic_bundle(root / "base", n_items=N_ITEMS, dim=16, neighbors=10,
                                  seed=5, row_order="given")
    b = read_bundle(base)
    index = build_index(_training_sessions(np.random.default_rng(3)), N_ITEMS,
                        sample=SAMPLE, idf=True)
    arrays = SessionIndex(index["item_indptr"], index["item_sessions"],
                          index["session_indptr"], index["session_items"],
                          index["item_weight"])
    table = position_table(TABLE) if request.param == "table" else None
    sknn = {"n_sessions": 500, "sample": SAMPLE, "idf": True, "neighbors": NEIGHBORS,
            "window": WINDOW, **({} if table is None else
                                 {"position_weight": [float(x) for x in table]})}
    out = _rewrite(b, root / "hybrid",
                   inference={"max_session_length": 3, "session_filter": "none"},
                   defaults={"k": 10, "category_filter": "none", "exclude_session_items": True,
                             "candidates": "sessions", "knn_weight": 2.0,
                             "max_candidates": MAX_CANDIDATES},
                   session_index=arrays, sknn=sknn)
    ref = SknnIndex(*(index[f] for f in ("item_indptr", "item_sessions", "session_indptr",
                                         "session_items", "item_weight")),
                    np.asarray(b.item_category), table)
    # the same index as a session-kNN bundle (no encoder), its defaults those of a hybrid
    write_bundle(
        root / "knn", encoder=None, item_matrix=None, neighbors=None,
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity),
        popularity_scores=np.asarray(b.popularity_scores),
        item_category=np.asarray(b.item_category), model={"kind": "sknn", "config": {}},
        inference={"max_session_length": WINDOW, "session_filter": "none"},
        defaults={"k": 10, "candidates": "sessions", "neighbors": NEIGHBORS,
                  "category_filter": "none", "exclude_session_items": True,
                  "repeat_bonus": 0.0},
        session_index=arrays, sknn=sknn)
    return out, ref


def _knn_reference(ref: SknnIndex, rows: np.ndarray, k: int, cats=None,
                   neighbors: int = NEIGHBORS, exclude: bool = False, bonus: float = 0.0):
    """The kNN candidates of the "sessions" policy: the reference kernel over the last
    WINDOW known rows, the index's neighbors, session items included without bonus
    (``cats``: the category filter's categories)."""
    window = np.ascontiguousarray(rows[-WINDOW:].astype(np.int32))
    q = SknnQuery(session=window, sample=SAMPLE, neighbors=neighbors, k=k,
                  exclude_session=exclude, session_bonus=bonus,
                  excluded=np.empty(0, np.int32), allowed=None,
                  allowed_cats=None if cats is None else np.asarray(cats, np.int32))
    top, scores, _ = sknn_top_k(ref, q)
    return top, scores


def _sessions(rec, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(INDEXED, int(rng.integers(1, 7)), replace=False) for _ in range(n)]


def _model_scores(rec, session) -> dict[int, np.float32]:
    """Row -> the kernel's own model score of every kNN candidate (knn_weight 0 returns
    the best by model score: k = MAX_CANDIDATES returns them all)."""
    out = rec.recommend(session, k=MAX_CANDIDATES, knn_weight=0.0)
    return dict(zip(rec.bundle.ids.rows(out.item_ids).tolist(), out.scores))


@pytest.mark.parametrize("weight", [0.0, 2.0, 0.5, 1.3])
def test_hybrid_answer_recomputed_from_scratch(hybrid, weight):
    """Rows and scores of candidates="sessions": the kNN reference's top MAX_CANDIDATES
    rows minus the session's items, each scored query . row + weight * its kNN score over
    the call's top kNN score, best 10 by that, ties to the smaller row. (1.3: a weight
    whose float32 products round, so a blend computed in float64 and rounded once would
    show.)"""
    path, ref = hybrid
    rec = Recommender.load(path)
    matrix = np.asarray(rec.bundle.item_matrix, np.float32)
    assert rec.manifest["defaults"]["candidates"] == "sessions"
    checked = 0
    for rows in _sessions(rec, 60, 11):
        session = rec.item_ids[rows]
        out = rec.recommend(session, knn_weight=weight)
        knn_rows, knn_scores = _knn_reference(ref, rows, MAX_CANDIDATES)
        keep = ~np.isin(knn_rows, rows)
        cand, cand_knn = knn_rows[keep], knn_scores[keep]
        if cand.size == 0:  # nothing but the session's own items: nothing to compare
            continue
        q = rec.query(session)
        model = matrix[cand] @ q
        blend = (model + np.float32(weight) * (cand_knn / knn_scores.max())).astype(np.float32)
        order = np.lexsort((cand, -blend))[:10]
        got = rec.bundle.ids.rows(out.item_ids)
        assert got.tolist() == cand[order].tolist(), rows
        np.testing.assert_allclose(out.scores, blend[order], rtol=0, atol=1e-5)
        # bit for bit: the kernel's model score + float32(w) * float32(knn / top), float32
        exact = _model_scores(rec, session)
        top = knn_scores.max()
        knn_of = dict(zip(knn_rows.tolist(), knn_scores / np.float32(top)))
        bits = [np.float32(exact[r] + np.float32(weight) * knn_of[r]) for r in got.tolist()]
        assert out.scores.view(np.uint32).tolist() == np.array(bits, np.float32).view(
            np.uint32).tolist()
        assert out.fallback is None and out.unknown == 0
        checked += 1
    assert checked >= 40


def test_session_items_may_come_back_with_a_bonus(hybrid):
    """exclude_session_items=False with a bonus larger than any score: the session's
    items come first, then the kNN candidates as without them."""
    path, ref = hybrid
    rec = Recommender.load(path)
    for rows in _sessions(rec, 20, 12):
        session = rec.item_ids[rows]
        own = np.unique(rows)
        out = rec.recommend(session, k=len(own) + 5, exclude_session_items=False,
                            repeat_bonus=1e4)
        got = rec.bundle.ids.rows(out.item_ids)
        assert set(got[:len(own)].tolist()) == set(own.tolist())
        assert (out.scores[:len(own)] > 1e4 - 100).all()
        rest = rec.recommend(session, k=5, exclude_session_items=True)
        assert got[len(own):].tolist() == rec.bundle.ids.rows(rest.item_ids).tolist()


def test_session_items_unknown_to_the_index(hybrid):
    """A session whose items no training session holds: no kNN candidate, no kNN score;
    with exclude_session_items=False its items still come back, scored by the model plus
    the bonus, whatever the blend weight; excluded, nothing is left."""
    path, _ = hybrid
    rec = Recommender.load(path)
    matrix = np.asarray(rec.bundle.item_matrix, np.float32)
    rows = np.array([INDEXED + 3, INDEXED + 17, INDEXED + 5])
    session = rec.item_ids[rows]
    out = rec.recommend(session, exclude_session_items=True)
    assert (len(out), out.fallback, out.n_candidates) == (0, "no_candidates", 0)
    q = rec.query(session)
    for weight in (0.0, 2.0):
        out = rec.recommend(session, exclude_session_items=False, repeat_bonus=0.5,
                            knn_weight=weight)
        got = rec.bundle.ids.rows(out.item_ids)
        assert sorted(got.tolist()) == sorted(rows.tolist()) and out.fallback is None
        np.testing.assert_allclose(out.scores, matrix[got] @ q + 0.5, rtol=0, atol=1e-5)
        assert np.all(np.diff(out.scores) <= 0)


def test_neighbors_met_only_far_back_weigh_nothing(hybrid):
    """The only indexed item 11 distinct items back (decay max(0, 1 - 0.1 * 11) = 0): the
    kNN candidates all score 0, the blend adds nothing (no 0 / 0), the model ranks."""
    path, ref = hybrid
    rec = Recommender.load(path)
    rows = np.array([7, *range(INDEXED, INDEXED + 11)])
    session = rec.item_ids[rows]
    knn_rows, knn_scores = _knn_reference(ref, rows, MAX_CANDIDATES)
    assert knn_rows.size and not knn_scores.any()
    plain = rec.recommend(session, knn_weight=0.0)
    blended = rec.recommend(session, knn_weight=2.0)
    assert blended.fallback is None and np.isfinite(blended.scores).all()
    assert blended.item_ids.tolist() == plain.item_ids.tolist()
    assert blended.scores.tobytes() == plain.scores.tobytes()


def test_knn_scores_are_scaled_by_the_calls_best_whatever_its_size(hybrid, tmp_path):
    """The same index with every item weight / 1024 (exact in float32): every kNN score,
    the best one included, drops below 1, and the blend, which divides by the call's best,
    answers bit for bit as before."""
    path, ref = hybrid
    b = read_bundle(path)
    arrays = [np.asarray(a) for a in b.session_index.arrays()]
    small = SessionIndex(*arrays[:4], arrays[4] / np.float32(1024))
    scaled = _rewrite(b, tmp_path / "scaled", inference=b.manifest["inference"],
                      defaults=b.manifest["defaults"], session_index=small,
                      sknn=b.manifest["sknn"])
    rec, rec_small = Recommender.load(path), Recommender.load(scaled)
    changed = 0
    for rows in _sessions(rec, 30, 17):
        _, knn_scores = _knn_reference(ref, rows, MAX_CANDIDATES)
        if knn_scores.size == 0:
            continue
        assert knn_scores.max() / 1024 < 1
        out = rec.recommend(rec.item_ids[rows], knn_weight=2.0)
        got = rec_small.recommend(rec.item_ids[rows], knn_weight=2.0)
        assert got.item_ids.tolist() == out.item_ids.tolist()
        assert got.scores.tobytes() == out.scores.tobytes()
        plain = rec.recommend(rec.item_ids[rows], knn_weight=0.0)
        changed += plain.item_ids.tolist() != out.item_ids.tolist()
    assert changed >= 10  # the blend moved the ranking: the kNN part was not dropped


def test_index_without_neighbors_and_window_takes_the_defaults(hybrid, tmp_path):
    """sknn.neighbors and sknn.window are optional in a manifest: without them the kNN
    step of a hybrid takes min(100, sample) neighbor sessions and the encoder's window
    (here the last 3 items). The index adds 150 sessions (hub, row j) with a distinct j
    each, the hub a row no other session holds, so a window of the hub alone has 150
    neighbor sessions, of which exactly 100 give candidates."""
    path, ref = hybrid
    b = read_bundle(path)
    info = {k: v for k, v in b.manifest["sknn"].items() if k not in ("neighbors", "window")}
    info["sample"] = 150  # more than the default neighbors: min(100, sample) is 100
    hub = N_ITEMS - 1
    star = [np.array([hub, j]) for j in range(1, 151)]
    index = build_index(star + _training_sessions(np.random.default_rng(3)), N_ITEMS,
                        sample=150, idf=True)
    info["n_sessions"] = len(index["session_indptr"]) - 1
    fields = ("item_indptr", "item_sessions", "session_indptr", "session_items",
              "item_weight")
    bare = _rewrite(b, tmp_path / "bare", inference=b.manifest["inference"],
                    defaults=b.manifest["defaults"],
                    session_index=SessionIndex(*(index[f] for f in fields)), sknn=info)
    ref = SknnIndex(*(index[f] for f in fields), ref.categories, ref.position_weight)
    rec = Recommender.load(bare)
    sessions = [np.array([hub]), np.array([5, hub]), *_sessions(rec, 30, 18)]
    for rows in sessions:
        q = SknnQuery(session=np.ascontiguousarray(rows[-3:].astype(np.int32)), sample=150,
                      neighbors=100, k=N_ITEMS, exclude_session=False,
                      session_bonus=0.0, excluded=np.empty(0, np.int32), allowed=None,
                      allowed_cats=None)
        knn_rows = sknn_top_k(ref, q)[0]
        out = rec.recommend(rec.item_ids[rows], k=N_ITEMS, knn_weight=0.0,
                            max_candidates=N_ITEMS)  # every item of the neighbor sessions
        assert set(rec.bundle.ids.rows(out.item_ids).tolist()) == {
            r for r in knn_rows.tolist() if r not in set(rows.tolist())}
    alone = rec.recommend(rec.item_ids[[hub]], k=N_ITEMS, knn_weight=0.0,
                          max_candidates=N_ITEMS)
    assert alone.n_candidates == 100  # one distinct row from each of 100 neighbors


def test_max_candidates_bounds_the_knn_step(hybrid):
    """max_candidates=m: only the kNN reference's top m rows can come back."""
    path, ref = hybrid
    rec = Recommender.load(path)
    for rows in _sessions(rec, 20, 13):
        session = rec.item_ids[rows]
        for m in (5, 20):
            out = rec.recommend(session, k=10, max_candidates=m, knn_weight=0.0)
            knn_rows, _ = _knn_reference(ref, rows, m)
            got = set(rec.bundle.ids.rows(out.item_ids).tolist())
            assert got <= set(knn_rows.tolist()) - set(rows.tolist())


def test_neighbors_policy_ignores_the_index(hybrid):
    """candidates="neighbors" on a hybrid bundle: the same answer as the bundle without a
    session index would give (no kNN score anywhere)."""
    path, _ = hybrid
    rec = Recommender.load(path)
    base = Recommender.load(path.parent / "base")
    for rows in _sessions(rec, 20, 14):
        a = rec.recommend(rec.item_ids[rows], candidates="neighbors", knn_weight=0.0)
        b = base.recommend(base.item_ids[rows])
        assert a.item_ids.tolist() == b.item_ids.tolist()
        assert a.scores.tobytes() == b.scores.tobytes()


@pytest.mark.parametrize("category_filter", ["last", "session"])
def test_category_filters_reach_the_knn_step(hybrid, category_filter):
    """A category filter on a hybrid call filters the kNN candidates themselves, by the
    categories the model's call filters by (the last item's, or those of the encoder's
    window, the last 3 items, not of the kNN step's longer window): every kNN candidate
    that is not a session item comes back."""
    path, ref = hybrid
    rec = Recommender.load(path)
    cat = np.asarray(rec.bundle.item_category)
    differs = other_window = 0
    for rows in _sessions(rec, 30, 15):
        session = rec.item_ids[rows]
        cats = cat[rows[-1:]] if category_filter == "last" else np.unique(cat[rows[-3:]])
        knn_rows, _ = _knn_reference(ref, rows, MAX_CANDIDATES, cats)
        out = rec.recommend(session, k=MAX_CANDIDATES, knn_weight=0.0,
                            category_filter=category_filter)
        got = set(rec.bundle.ids.rows(out.item_ids).tolist())
        expected = {r for r in knn_rows.tolist() if r not in set(rows.tolist())}
        assert got == expected
        unfiltered, _ = _knn_reference(ref, rows, MAX_CANDIDATES)
        differs += set(unfiltered.tolist()) != set(knn_rows.tolist())
        knn_window, _ = _knn_reference(ref, rows, MAX_CANDIDATES, np.unique(cat[rows]))
        other_window += set(knn_window.tolist()) != set(knn_rows.tolist())
    assert differs > 0  # the filter changed the candidates somewhere
    if category_filter == "session":  # and the window it takes its categories from matters
        assert other_window > 0


@pytest.mark.parametrize("category_filter", ["none", "last", "session"])
def test_session_knn_bundle_answers_the_reference_kernel(hybrid, category_filter):
    """The session-kNN bundle (no encoder): rows and score bits of the numpy reference
    with the call's neighbors, filter, exclusion and bonus; no query vector."""
    path, ref = hybrid
    rec = Recommender.load(path.parent / "knn")
    cat = np.asarray(rec.bundle.item_category)
    for rows in _sessions(rec, 25, 16):
        session = rec.item_ids[rows]
        window = rows[-WINDOW:]
        cats = {"none": None, "last": cat[window[-1:]],
                "session": np.unique(cat[window])}[category_filter]
        for neighbors, exclude, bonus in ((NEIGHBORS, True, 0.0), (3, False, 0.25)):
            out = rec.recommend(session, k=12, neighbors=neighbors, category_filter=category_filter,
                                exclude_session_items=exclude, repeat_bonus=bonus)
            top, scores = _knn_reference(ref, rows, 12, cats, neighbors, exclude, bonus)
            assert rec.bundle.ids.rows(out.item_ids).tolist() == top.tolist()
            assert out.scores.view(np.uint32).tolist() == scores.view(np.uint32).tolist()
    with pytest.raises(ValueError, match="^a session-kNN bundle has no encoder and no query "
                                         "vector$"):
        rec.query(rec.item_ids[[1, 2]])
    assert rec.encode(rec.plan(rec.item_ids[[1, 2]])) is None


def test_max_candidates_option_is_checked(hybrid):
    path, _ = hybrid
    rec = Recommender.load(path)
    session = rec.item_ids[[1, 2]]
    with pytest.raises(ValueError, match=r"^max_candidates must be in \[1, 2147483647\] for "
                                         r"this bundle, got 0$"):
        rec.recommend(session, max_candidates=0)
    with pytest.raises(TypeError, match="^max_candidates must be an int, got str$"):
        rec.recommend(session, max_candidates="5")
    with pytest.raises(TypeError, match="^max_candidates must be an int, got bool$"):
        rec.recommend(session, max_candidates=True)
    assert len(rec.recommend(session, max_candidates=2**31 - 1)) > 0


def test_load_logs_one_line_that_says_what_was_loaded(hybrid, caplog):
    """The INFO line of a load, word for word: path, model kind, format, items, shape
    (d and K, or sessions and sample for a session-kNN bundle), backend and options."""
    import logging

    path, _ = hybrid
    fmt = 3 if "position_weight" in Recommender.load(path).manifest["sknn"] else 2
    with caplog.at_level(logging.INFO, logger="sessrec"):
        hybrid_numpy = Recommender.load(path, backend="numpy", verify=False)
        Recommender.load(path.parent / "knn", backend="c", verify=True)
        b = read_bundle(path)  # a manifest whose model has no kind: "?" in its place
        nameless = _rewrite(b, path.parent / "nameless", inference=b.manifest["inference"],
                            defaults={"k": 10, "category_filter": "none",
                                      "exclude_session_items": True}, model={"config": {}})
        Recommender.load(nameless, backend="numpy", verify=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded")]
    # the kNN step of a hybrid runs on the backend asked for, like the model's kernel
    assert hybrid_numpy._served.knn_kernel.name == "numpy"
    assert Recommender.load(path.parent / "knn", backend="numpy").backend == "numpy"
    assert lines == [
        f"loaded {path}: synthetic v{fmt}, {N_ITEMS} items, d=16, K=10; backend numpy, "
        "verify=False, prefault=False",
        f"loaded {path.parent / 'knn'}: sknn v{fmt}, {N_ITEMS} items, 500 sessions, sample "
        f"{SAMPLE}; backend c, verify=True, prefault=False",
        f"loaded {nameless}: ? v2, {N_ITEMS} items, d=16, K=10; backend numpy, "
        "verify=False, prefault=False"]


def test_last_category_session_filter_encodes_the_last_items_category(tmp_path):
    """A bundle trained on same-category sessions (session_filter "last_category") encodes
    only the window's items of the last item's category, in order."""
    base = build_synthetic_bundle(tmp_path / "base", n_items=N_ITEMS, dim=16, neighbors=10,
                                  seed=6, row_order="given")
    out = _rewrite(read_bundle(base), tmp_path / "lc",
                   inference={"max_session_length": 5, "session_filter": "last_category"},
                   defaults={"k": 10, "category_filter": "none", "exclude_session_items": True})
    rec = Recommender.load(out)
    cat = np.asarray(rec.bundle.item_category)
    rng = np.random.default_rng(2)
    mixed = 0
    for _ in range(40):
        rows = rng.choice(N_ITEMS, 5, replace=False)
        # one more item of the last item's category, in the middle (cats[1] and cats[-2]
        # stay other categories, mostly: only the last item's category selects)
        rows[2] = rng.choice(np.flatnonzero(cat == cat[rows[-1]]))
        window = rows[-5:]
        expected = window[cat[window] == cat[window[-1]]]
        assert rec.session_rows(rec.item_ids[rows]).tolist() == expected.tolist()
        mixed += len(expected) < len(window)
    assert mixed > 0
