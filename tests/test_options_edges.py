"""The options of ``recommend()`` at their edges: every error an option can raise, word
for word with its exception type; each bound exactly at and just past its edge; the
defaults a manifest may leave out; and the query-size guard of ``Recommender.run``.

Mutation testing (scripts/mutation.sh, see docs/testing.md) found these unchecked: the
option checks in ``_options`` were reached by tests that matched a word of the message
or a value far from the bound, so a changed message, a bound moved by one or a default
changed from 500 to 501 survived. Small synthetic bundles, no training.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from export_tools.synthetic import synthetic_session_index
from sessrec_sdk import Recommender
from sessrec_sdk.bundle import read_bundle, write_bundle

INT32_MAX = 2**31 - 1
WIDTH = 20  # neighbors per item of small_bundle
SAMPLE = 300  # session sample of the index: a popular session has > 501 kNN candidates
N_CATS = 6
UP = np.nextafter(1e6, np.inf)  # the float right above the 1e6 bounds
NO_HEAD = ("category_filter='predicted', candidates='categories' and categories= need a "
           "bundle whose encoder predicts categories (an output of kind category_scores); "
           "this one does not")


def _write(b, out, *, defaults, encoder=None, item_category="same", **extra):
    """The bundle ``b``'s arrays (and encoder) written again to ``out`` with ``defaults``
    (and ``extra`` write_bundle arguments)."""
    return write_bundle(
        out, encoder=b.path / "encoder.onnx" if encoder is None else encoder,
        item_matrix=np.asarray(b.item_matrix), neighbors=np.asarray(b.neighbors),
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity),
        popularity_scores=np.asarray(b.popularity_scores),
        item_category=(np.asarray(b.item_category) if isinstance(item_category, str)
                       else item_category),
        model={"kind": "test", "config": {}},
        inference={"max_session_length": 3, "session_filter": "none"},
        defaults={"k": 10, "category_filter": "none", "exclude_session_items": True,
                  **defaults}, **extra)


def _refused(exc, text, call, *args, **options):
    """``call(*args, **options)`` raises exactly ``exc`` with exactly ``text``."""
    with pytest.raises(exc, match=re.escape(text) + "$") as err:
        call(*args, **options)
    assert type(err.value) is exc and str(err.value) == text


def _same(a, b):
    """Two answers alike: ids, score bits, fallback, counts."""
    return (a.item_ids.tolist() == b.item_ids.tolist()
            and a.scores.view(np.uint32).tolist() == b.scores.view(np.uint32).tolist()
            and a.fallback == b.fallback and a.unknown == b.unknown
            and a.n_candidates == b.n_candidates)


# ---------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def plain(small_bundle):
    """Neighbors policy, item categories, no category head, no session index; the
    manifest has no repeat_bonus, knn_weight or max_candidates."""
    return Recommender.load(small_bundle)


@pytest.fixture(scope="module")
def session(plain):
    return plain.item_ids[[5, 17, 42]].tolist()


@pytest.fixture(scope="module")
def no_cats(small_bundle, tmp_path_factory):
    """small_bundle without item categories."""
    b = read_bundle(small_bundle)
    return Recommender.load(_write(b, tmp_path_factory.mktemp("nc") / "b", defaults={},
                                   item_category=None))


@pytest.fixture(scope="module")
def cat_path(small_bundle, tmp_path_factory):
    """An encoder that predicts N_CATS categories (tests/test_candidate_policies.py)."""
    from test_candidate_policies import CAT_IO, _category_encoder  # tests/ is on sys.path

    b = read_bundle(small_bundle)
    cats = (np.arange(b.manifest["n_items"]) % N_CATS).astype(np.int32)
    return _write(b, tmp_path_factory.mktemp("cat") / "b", item_category=cats,
                  encoder=_category_encoder(b.manifest["dim"]), encoder_io=CAT_IO,
                  defaults={"categories": 2, "max_candidates": 5000})


@pytest.fixture(scope="module")
def cat(cat_path):
    return Recommender.load(cat_path)


@pytest.fixture(scope="module")
def index():
    """(session index over small_bundle's rows, each row's session count)."""
    return synthetic_session_index(2000, 3000, sample=SAMPLE, seed=4)


def _hybrid(small_bundle, out, index, defaults):
    b = read_bundle(small_bundle)
    return Recommender.load(_write(
        b, out, defaults={"candidates": "sessions", **defaults}, session_index=index[0],
        sknn={"n_sessions": 3000, "sample": SAMPLE, "neighbors": SAMPLE}))


@pytest.fixture(scope="module")
def bare(small_bundle, index, tmp_path_factory):
    """Hybrid ("sessions" candidates) whose manifest leaves out max_candidates,
    knn_weight and repeat_bonus."""
    return _hybrid(small_bundle, tmp_path_factory.mktemp("hb") / "b", index, {})


@pytest.fixture(scope="module")
def tuned(small_bundle, index, tmp_path_factory):
    """Hybrid whose manifest sets max_candidates, knn_weight and repeat_bonus."""
    return _hybrid(small_bundle, tmp_path_factory.mktemp("ht") / "b", index,
                   {"max_candidates": 80, "knn_weight": 2.5, "repeat_bonus": 0.75,
                    "exclude_session_items": False})


@pytest.fixture(scope="module")
def popular_session(bare, index):
    """Three of the items held by most sessions: many kNN candidates."""
    return bare.item_ids[np.argsort(-index[1], kind="stable")[:3]].tolist()


@pytest.fixture(scope="module")
def knn_only(small_bundle, index, tmp_path_factory):
    """A session-kNN bundle (no encoder) over the same index."""
    b = read_bundle(small_bundle)
    return Recommender.load(write_bundle(
        tmp_path_factory.mktemp("knn") / "b", encoder=None, item_matrix=None, neighbors=None,
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity),
        popularity_scores=np.asarray(b.popularity_scores),
        item_category=np.asarray(b.item_category), model={"kind": "sknn", "config": {}},
        inference={"max_session_length": 10, "session_filter": "none"},
        defaults={"neighbors": 50}, session_index=index[0],
        sknn={"n_sessions": 3000, "sample": SAMPLE}))


# ---------------------------------------------------------------------- k, category_filter


@pytest.mark.parametrize("k, exc, text", [
    (0, ValueError, "k must be >= 1, got 0"),
    (-3, ValueError, "k must be >= 1, got -3"),
    (1.0, TypeError, "k must be an int, got float"),
    (True, TypeError, "k must be an int, got bool"),
    ("5", TypeError, "k must be an int, got str"),
])
def test_bad_k(plain, session, k, exc, text):
    """k: an int >= 1, on the default path and with other options."""
    _refused(exc, text, plain.recommend, session, k)
    _refused(exc, text, plain.recommend, session, k, neighbors=3)


def test_k_bounds(plain, session):
    """k = 1 is accepted; k above the catalog is cut to the catalog."""
    assert len(plain.recommend(session, 1, neighbors=3)) == 1
    assert plain.plan(session, plain.n_items + 7, neighbors=3).k == plain.n_items
    assert plain.plan(session, np.int64(4), neighbors=3).k == 4


def test_bad_category_filter(plain, session):
    """A filter not in CATEGORY_FILTERS, named with the allowed ones."""
    _refused(ValueError, "category_filter must be one of ('last', 'session', 'none', "
             "'predicted'), got 'nearest'", plain.recommend, session, category_filter="nearest")


@pytest.mark.parametrize("name", ["last", "session", "predicted"])
def test_category_filter_needs_item_categories(no_cats, plain, name):
    """A bundle without item categories refuses every filter but "none", naming it."""
    s = no_cats.item_ids[[5, 17, 42]].tolist()
    _refused(ValueError, f"category_filter={name!r} needs item categories, and this bundle "
             "has none", no_cats.recommend, s, category_filter=name)
    assert len(no_cats.recommend(s, category_filter="none")) == 10


# ---------------------------------------------------------------------- neighbors


@pytest.mark.parametrize("value, exc, text", [
    (0, ValueError, f"neighbors must be in [1, {WIDTH}] for this bundle, got 0"),
    (WIDTH + 1, ValueError,
     f"neighbors must be in [1, {WIDTH}] for this bundle, got {WIDTH + 1}"),
    (1.5, TypeError, "neighbors must be an int, got float"),
    (2.0, TypeError, "neighbors must be an int, got float"),
    (True, TypeError, "neighbors must be an int, got bool"),
    ("3", TypeError, "neighbors must be an int, got str"),
])
def test_bad_neighbors(plain, session, value, exc, text):
    """0 and width + 1 (ValueError), floats, bools, strings (TypeError)."""
    _refused(exc, text, plain.recommend, session, neighbors=value)


def test_neighbors_bounds_are_accepted(plain, session):
    """1 and the bundle's width (and numpy ints) are accepted; 1 scores fewer rows."""
    one = plain.recommend(session, neighbors=1)
    full = plain.recommend(session, neighbors=WIDTH)
    assert 0 < one.n_candidates < full.n_candidates
    assert plain.plan(session, neighbors=np.int64(1)).neighbors == 1
    assert _same(full, plain.recommend(session))  # the manifest's default: the width


def test_neighbors_of_a_session_knn_bundle_are_bound_by_the_sample(knn_only):
    """On a session-kNN bundle neighbors= counts sessions, in [1, sample]."""
    s = knn_only.item_ids[[5, 17, 42]].tolist()
    assert knn_only.plan(s, neighbors=SAMPLE).neighbors == SAMPLE
    assert knn_only.plan(s, neighbors=1).neighbors == 1
    _refused(ValueError, f"neighbors must be in [1, {SAMPLE}] for this bundle, "
             f"got {SAMPLE + 1}", knn_only.recommend, s, neighbors=SAMPLE + 1)


# ---------------------------------------------------------------------- exclude_session_items


@pytest.mark.parametrize("value", [1, 0, 1.0, "yes", "True"])
def test_bad_exclude_session_items(plain, session, value):
    """Only True/False (numpy bools too): ints and strings are refused."""
    _refused(TypeError, "exclude_session_items must be True or False", plain.recommend,
             session, exclude_session_items=value)


def test_exclude_session_items_takes_numpy_bools(plain, session):
    """np.bool_ is a bool here."""
    assert plain.plan(session, exclude_session_items=np.bool_(False)).exclude_session_items \
        is False


# ---------------------------------------------------------------------- candidates


def test_bad_candidates(plain, session):
    """A policy not in CANDIDATE_POLICIES, named with the allowed ones."""
    _refused(ValueError, "candidates must be one of ('neighbors', 'categories', 'sessions') "
             "for this bundle, got 'all'", plain.recommend, session, candidates="all")


@pytest.mark.parametrize("policy", ["neighbors", "categories"])
def test_session_knn_bundle_takes_sessions_only(knn_only, policy):
    """A session-kNN bundle refuses any other policy by name."""
    s = knn_only.item_ids[[5, 17, 42]].tolist()
    _refused(ValueError, "a session-kNN bundle takes its candidates from sessions only, "
             f"got candidates={policy!r}", knn_only.recommend, s, candidates=policy)
    assert len(knn_only.recommend(s, candidates="sessions")) == 10


def test_sessions_need_a_session_index(plain, session):
    """"sessions" on a bundle without a session index."""
    _refused(ValueError, "candidates='sessions' needs a bundle with a session index "
             "(sknn_*.npy), which this one does not have", plain.recommend, session,
             candidates="sessions")


@pytest.mark.parametrize("options", [{"category_filter": "predicted"},
                                     {"candidates": "categories"}, {"categories": 2},
                                     {"categories": 2, "candidates": "neighbors"}])
def test_category_options_need_a_category_head(plain, session, options):
    """Each of the three, alone, is refused with the one message."""
    _refused(ValueError, NO_HEAD, plain.recommend, session, **options)


def test_plan_without_category_head_or_cap(plain, knn_only, session):
    """No category head: categories 0; a policy without a cap: max_candidates 0 (also
    when a max_candidates= is passed that no policy of the call uses)."""
    for rec in (plain, knn_only):
        s = rec.item_ids[[5, 17, 42]].tolist()
        for plan in (rec.plan(s), rec.plan(s, 3, exclude_session_items=False),
                     rec.plan(s, max_candidates=7)):
            assert (plan.categories, plan.max_candidates) == (0, 0)


@pytest.mark.parametrize("value, exc, text", [
    (0, ValueError, f"max_candidates must be in [1, {INT32_MAX}] for this bundle, got 0"),
    (INT32_MAX + 1, ValueError, f"max_candidates must be in [1, {INT32_MAX}] for this "
     f"bundle, got {INT32_MAX + 1}"),
    (True, TypeError, "max_candidates must be an int, got bool"),
    ("5", TypeError, "max_candidates must be an int, got str"),
])
def test_bad_max_candidates_is_refused_where_no_policy_uses_it(plain, knn_only, bare, value,
                                                                exc, text):
    """The neighbors policy and a session-kNN bundle use no cap, but a bad max_candidates=
    is refused there as on the bundles that use it (it was silently accepted)."""
    for rec, options in ((plain, {}), (knn_only, {}), (bare, {"candidates": "neighbors"})):
        s = rec.item_ids[[5, 17, 42]].tolist()
        _refused(exc, text, rec.recommend, s, max_candidates=value, **options)
        assert rec.plan(s, max_candidates=1, **options).max_candidates == 0
        assert rec.plan(s, max_candidates=INT32_MAX, **options).max_candidates == 0


# ---------------------------------------------------------------------- category head


@pytest.mark.parametrize("value, exc, text", [
    (0, ValueError, f"categories must be in [1, {N_CATS}] for this bundle, got 0"),
    (N_CATS + 1, ValueError,
     f"categories must be in [1, {N_CATS}] for this bundle, got {N_CATS + 1}"),
    (1.5, TypeError, "categories must be an int, got float"),
    (True, TypeError, "categories must be an int, got bool"),
])
def test_bad_categories(cat, value, exc, text):
    """categories= outside [1, n_categories] or not an int, with either policy."""
    s = cat.item_ids[[5, 17, 42]].tolist()
    _refused(exc, text, cat.recommend, s, candidates="categories", categories=value)
    _refused(exc, text, cat.recommend, s, categories=value)


def test_categories_bounds_are_accepted(cat):
    """1 and n_categories: the categories policy scores 1 and all categories' items."""
    s = cat.item_ids[[5, 17, 42]].tolist()
    one = cat.recommend(s, candidates="categories", categories=1)
    every = cat.recommend(s, candidates="categories", categories=N_CATS)
    assert one.n_candidates < every.n_candidates == cat.n_items - 3
    assert cat.plan(s).categories == 2 and cat.plan(s, neighbors=3).categories == 2


@pytest.mark.parametrize("value, exc, text", [
    (0, ValueError, f"max_candidates must be in [1, {INT32_MAX}] for this bundle, got 0"),
    (INT32_MAX + 1, ValueError, f"max_candidates must be in [1, {INT32_MAX}] for this "
     f"bundle, got {INT32_MAX + 1}"),
    (1.0, TypeError, "max_candidates must be an int, got float"),
    (True, TypeError, "max_candidates must be an int, got bool"),
])
@pytest.mark.parametrize("policy", ["categories", "neighbors"])
def test_bad_max_candidates_with_a_category_head(cat, value, exc, text, policy):
    """max_candidates= of a category-head bundle, under either policy."""
    s = cat.item_ids[[5, 17, 42]].tolist()
    _refused(exc, text, cat.recommend, s, candidates=policy, max_candidates=value)


def test_max_candidates_bounds_with_a_category_head(cat):
    """1 keeps one candidate; INT32_MAX is accepted (and keeps them all)."""
    s = cat.item_ids[[5, 17, 42]].tolist()
    one = cat.recommend(s, candidates="categories", categories=N_CATS, max_candidates=1)
    assert one.n_candidates == 1 and len(one) == 1
    top = cat.recommend(s, candidates="categories", categories=N_CATS,
                        max_candidates=INT32_MAX)
    assert top.n_candidates == cat.n_items - 3
    assert cat.plan(s).max_candidates == 5000
    assert cat.plan(s, max_candidates=np.int64(1)).max_candidates == 1


def test_category_head_without_category_index(cat, cat_path, tmp_path):
    """A category head whose bundle lacks the category index: the "categories" policy is
    refused by name; the predicted filter, which needs no index, still answers."""
    from fault_injection import read_manifest, write_manifest  # tests/ is on sys.path

    b = tmp_path / "b"
    shutil.copytree(cat_path, b)
    m = read_manifest(b)
    for name in ("category_items_indptr.npy", "category_items_indices.npy"):
        del m["files"][name]
        (b / name).unlink()
    write_manifest(b, m)
    rec = Recommender.load(b)
    s = rec.item_ids[[5, 17, 42]].tolist()
    _refused(ValueError, "candidates='categories' needs the bundle's category index "
             "(category_items_*.npy), which this bundle does not have", rec.recommend, s,
             candidates="categories")
    for options in ({"category_filter": "predicted"}, {"neighbors": 5}, {}):
        got = rec.recommend(s, **options)
        assert len(got) > 0 and _same(got, cat.recommend(s, **options))


# ---------------------------------------------------------------------- "sessions" policy


def test_max_candidates_default_of_a_sessions_bundle_is_500(bare, popular_session):
    """Without max_candidates in its manifest a "sessions" bundle caps the kNN candidates
    at 500: the same answer as 500 passed, not that of 499 or 501."""
    s = popular_session
    assert "max_candidates" not in bare.manifest["defaults"]
    assert bare.plan(s).max_candidates == 500
    assert bare.plan(s, exclude_session_items=True).max_candidates == 500
    got = bare.recommend(s)
    assert _same(got, bare.recommend(s, max_candidates=500))
    assert _same(bare.recommend(s, 5, knn_weight=0.0),
                 bare.recommend(s, 5, knn_weight=0.0, max_candidates=500))
    below = bare.recommend(s, max_candidates=499).n_candidates
    above = bare.recommend(s, max_candidates=501).n_candidates
    assert below < got.n_candidates < above


@pytest.mark.parametrize("value, exc, text", [
    (0, ValueError, f"max_candidates must be in [1, {INT32_MAX}] for this bundle, got 0"),
    (-1, ValueError, f"max_candidates must be in [1, {INT32_MAX}] for this bundle, got -1"),
    (INT32_MAX + 1, ValueError, f"max_candidates must be in [1, {INT32_MAX}] for this "
     f"bundle, got {INT32_MAX + 1}"),
    (1.5, TypeError, "max_candidates must be an int, got float"),
    (True, TypeError, "max_candidates must be an int, got bool"),
])
def test_bad_max_candidates_of_sessions(bare, popular_session, value, exc, text):
    """max_candidates= of the "sessions" policy."""
    _refused(exc, text, bare.recommend, popular_session, max_candidates=value)


def test_max_candidates_of_sessions_at_one(bare, popular_session):
    """1: one kNN candidate (a session item, excluded here, leaves none)."""
    plan = bare.plan(popular_session, max_candidates=1)
    assert plan.max_candidates == 1
    assert bare.recommend(popular_session, max_candidates=1).n_candidates <= 1
    assert bare.plan(popular_session, max_candidates=INT32_MAX).max_candidates == INT32_MAX


def test_knn_weight_default_is_0(bare, popular_session):
    """No knn_weight in the manifest: 0, the answer of 0.0 passed, not that of 1.0."""
    s = popular_session
    assert bare.plan(s).knn_weight == 0.0
    assert bare.plan(s, exclude_session_items=True).knn_weight == 0.0
    for options in ({}, {"exclude_session_items": True}):
        got = bare.recommend(s, **options)
        assert _same(got, bare.recommend(s, knn_weight=0.0))
        assert not _same(got, bare.recommend(s, knn_weight=1.0))


def test_manifest_values_are_used(tuned, popular_session):
    """A manifest's max_candidates, knn_weight and repeat_bonus are the defaults, on the
    default path and when other options are passed."""
    s = popular_session
    for plan in (tuned.plan(s), tuned.plan(s, 5, neighbors=3)):
        assert (plan.max_candidates, plan.knn_weight, plan.repeat_bonus) == (80, 2.5, 0.75)
    explicit = {"max_candidates": 80, "knn_weight": 2.5, "repeat_bonus": 0.75}
    assert _same(tuned.recommend(s), tuned.recommend(s, **explicit))
    assert _same(tuned.recommend(s, neighbors=3), tuned.recommend(s, **explicit))
    assert not _same(tuned.recommend(s), tuned.recommend(s, knn_weight=0.0))


# ---------------------------------------------------------------------- repeat_bonus


def test_repeat_bonus_default_is_0(plain, session):
    """No repeat_bonus in the manifest: session items get 0, the answer of 0.0 passed,
    not that of 1.0."""
    assert plain.plan(session).repeat_bonus == 0.0
    got = plain.recommend(session, exclude_session_items=False)
    assert plain.plan(session, exclude_session_items=False).repeat_bonus == 0.0
    assert _same(got, plain.recommend(session, exclude_session_items=False, repeat_bonus=0.0))
    assert not _same(got, plain.recommend(session, exclude_session_items=False,
                                          repeat_bonus=1.0))


@pytest.mark.parametrize("value", [1e6, -1e6, 0, np.float32(0.5), np.int64(-3), 1e-300])
def test_repeat_bonus_accepted(plain, session, value):
    """abs(x) <= 1e6 exactly, numpy numbers too."""
    assert plain.plan(session, repeat_bonus=value).repeat_bonus == float(value)


@pytest.mark.parametrize("value", [UP, -UP, 1e6 + 1, float("nan"), float("inf"),
                                   float("-inf"), np.float64(np.nan)])
def test_repeat_bonus_out_of_range(plain, session, value):
    """The next float past +-1e6, NaN and infinities."""
    _refused(ValueError, f"repeat_bonus must be finite with abs(x) <= 1e6, got {value}",
             plain.recommend, session, repeat_bonus=value)


@pytest.mark.parametrize("value, name", [(True, "bool"), ("1", "str"), ([1.0], "list"),
                                         (1j, "complex")])
def test_repeat_bonus_not_a_number(plain, session, value, name):
    """Bools, strings, lists and complex numbers, by type name."""
    _refused(TypeError, f"repeat_bonus must be a number, got {name}", plain.recommend,
             session, repeat_bonus=value)


# ---------------------------------------------------------------------- knn_weight


@pytest.mark.parametrize("value", [0, 0.0, -0.0, 1e6, np.float32(2.5), np.int64(7), 5e-324])
def test_knn_weight_accepted(plain, bare, popular_session, value):
    """[0, 1e6], on a bundle without a session index too (it is then unused)."""
    assert bare.plan(popular_session, knn_weight=value).knn_weight == float(value)
    assert plain.plan(popular_session, knn_weight=value).knn_weight == float(value)


@pytest.mark.parametrize("value", [-0.5, -5e-324, -1e6, UP, 1e6 + 1, float("nan"),
                                   float("inf"), float("-inf")])
def test_knn_weight_out_of_range(plain, bare, popular_session, value):
    """Below 0 (the smallest negative too), past 1e6, NaN, infinities."""
    for rec in (plain, bare):
        _refused(ValueError, f"knn_weight must be finite and in [0, 1e6], got {value}",
                 rec.recommend, popular_session, knn_weight=value)


@pytest.mark.parametrize("value, name", [(True, "bool"), (False, "bool"), ("1", "str"),
                                         ([0.5], "list")])
def test_knn_weight_not_a_number(plain, bare, popular_session, value, name):
    """Bools (both), strings, lists, by type name."""
    for rec in (plain, bare):
        _refused(TypeError, f"knn_weight must be a number, got {name}", rec.recommend,
                 popular_session, knn_weight=value)


# ---------------------------------------------------------------------- run: the query guard

SCALE = 2.0**31  # the encoder's query is the window's mean row times this
EDGE = np.float32(2.0**19)  # a row [EDGE, 0, 0, 0] makes q . q exactly 2**100


def _scale_encoder(d):
    """query = mean(item_emb) * SCALE (exact for one item: a power of two)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["item_emb"], ["m"], axes=[1], keepdims=0),
         helper.make_node("Mul", ["m", "S"], ["query"])],
        "scale",
        [helper.make_tensor_value_info("items", TensorProto.INT64, [1, "L"]),
         helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, [1, "L", d])],
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, [1, d])],
        [numpy_helper.from_array(np.array(SCALE, np.float32), "S")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """40 items, d=4: row 0 gives a query with q . q == 2**100, row 1 (the next float32
    above) one just past it, row 2 one far past it."""
    n, d = 40, 4
    rng = np.random.default_rng(8)
    matrix = (rng.standard_normal((n, d)) * 0.1).astype(np.float32)
    matrix[:3] = 0
    matrix[0, 0] = EDGE
    matrix[1, 0] = np.nextafter(EDGE, np.float32(np.inf))
    matrix[2, 0] = np.float32(2.0**20)
    neighbors = ((np.arange(n)[:, None] + np.arange(1, 6)[None, :]) % n).astype(np.int32)
    pop = rng.permutation(n).astype(np.int32)
    return Recommender.load(write_bundle(
        tmp_path_factory.mktemp("scaled") / "b", encoder=_scale_encoder(d),
        item_matrix=matrix, neighbors=neighbors, item_ids=np.arange(n, dtype=np.int64) + 100,
        popularity=pop, popularity_scores=np.linspace(1, 0.1, n).astype(np.float32),
        model={"kind": "test", "config": {}},
        inference={"max_session_length": 3, "session_filter": "none"},
        defaults={"k": 4, "category_filter": "none", "exclude_session_items": True}))


def test_query_exactly_at_the_bound_is_scored(scaled):
    """q . q == 2**100 is still scored (the guard is <=, not <)."""
    q = scaled.query([100])
    assert float(q.dot(q)) == 2.0**100
    got = scaled.recommend([100, 7777])
    assert got.fallback is None and len(got) == 4 and got.unknown == 1
    assert got.item_ids[:2].tolist() == [102, 101]  # the two largest rows, then the rest
    assert set(got.item_ids.tolist()) <= {101, 102, 103, 104, 105}  # row 0's neighbors
    many = scaled.recommend_many([[100, 7777]])[0]
    assert _same(got, many)


@pytest.mark.parametrize("row", [1, 2])
def test_query_past_the_bound_gets_the_popular_items(scaled, row):
    """Past 2**100 the call answers the popularity list under the caller's rules, with
    the reason "nonfinite_query" and the unknown count."""
    q = scaled.query([100 + row])
    assert float(q.dot(q)) > 2.0**100
    for k, options in ((4, {}), (3, {"exclude": [int(scaled.item_ids[0])]})):
        got = scaled.recommend([100 + row, 7777], k, **options)
        pop = scaled.recommend([7777], k, **options)  # no known item: popularity
        assert pop.fallback == "popularity" and len(pop) == k
        assert got.fallback == "nonfinite_query" and got.unknown == 1
        assert got.item_ids.tolist() == pop.item_ids.tolist()
        assert got.scores.tolist() == pop.scores.tolist()
        assert _same(got, scaled.recommend_many([[100 + row, 7777]], k, **options)[0])
