"""Edges of the request path that mutation testing (docs/testing.md, run D) found
unchecked: empty results, the popularity fallback and its rank, reload's options, the
category helpers of the "categories" policy and which sessions recommend_many encodes, each
checked against values worked out by hand.

Mutants of these functions that no test can kill (the answer cannot change): in _popular,
the block size (`4 * k` -> `5 * k`, `- len(excluded)`, 1024 -> 1025: the loop gives the
same rows for any block size), the second-block arithmetic (`k - found` -> `k + found`,
`found +=` -> `=`, `>= k` -> `> k`: the first block, of at least 4k + len(excluded) rows,
always holds k rows that are not excluded or the whole list), `rank < len(pop)` -> `<=`
(an unlisted row ranks n_items, which equals len(pop) only when every row is listed), the
float32 conversion of scores stored as float32, and the n_candidates=0 its default;
popularity_rank's arange dtype (int64 values stored into the int32 array); _top_categories'
kind="STABLE" (numpy reads the kind case-insensitively); _category_items' `take > 0` ->
`>= 0` (empty slices) and `total >= cap` -> `>` (the extra passes take nothing); reload's
backend given to _log_load as None (reload passes the resolved name, never "auto", so the
warning about a missing C build cannot fire either way); _empty's n_candidates dropped for
its default where every caller passes 0 (but see the session-kNN test below).
"""
from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from export_tools.synthetic import build_synthetic_bundle
from sessrec_sdk import ChecksumError, CorruptFileError, Limits, Recommender, pages
from sessrec_sdk.bundle import read_bundle, write_bundle
from sessrec_sdk.recommender import _category_items, _top_categories


@pytest.fixture(scope="module")
def rec(small_bundle):
    return Recommender.load(small_bundle)


# ------------------------------------------------------------------ empty results


def test_empty_results_are_typed_and_counted(rec, small_ids):
    """Each way to an empty result (allow holds no known id; the popularity fallback's
    allowed rows all excluded; no candidate left): int64 ids and float32 scores like a
    full result on this catalog, the reason, the unknown ids counted, nothing scored."""
    known = small_ids[:3].tolist()
    near = rec.recommend(known, k=5).item_ids.tolist()[:2]
    cases = [(known + [-1], {"allow": [-7]}, "nothing_allowed", 1),
             ([-1, -2], {"allow": near, "exclude": near}, "nothing_allowed", 2),
             ([-3] + known + [-4, -5], {"allow": near, "exclude": near}, "no_candidates", 3)]
    for session, rules, reason, unknown in cases:
        out = rec.recommend(session, k=5, **rules)
        assert (out.fallback, out.unknown, out.n_candidates, len(out)) == (reason, unknown, 0, 0)
        assert out.item_ids.dtype == np.int64 and out.item_ids.shape == (0,)
        assert out.scores.dtype == np.float32 and out.scores.shape == (0,)


def test_empty_results_on_a_string_catalog_carry_its_dtype(str_bundle):
    """An empty result's ids are in the catalog's own str dtype, like a full result's, so
    a host concatenating results never meets a mixed int64/str array."""
    rec = Recommender.load(str_bundle)
    ids = rec.item_ids
    full = rec.recommend(ids[:3].tolist(), k=5)
    for session, rules in (([str(ids[0])], {"allow": ["no-such-id"]}),
                           (["no-such-id"], {"allow": full.item_ids.tolist()[:2],
                                             "exclude": full.item_ids.tolist()[:2]})):
        out = rec.recommend(session, k=5, **rules)
        assert out.fallback == "nothing_allowed" and len(out) == 0
        assert out.item_ids.dtype == ids.dtype == full.item_ids.dtype


# ------------------------------------------------------------------ the popularity rank


def _listing_the_first(small_bundle, out, n):
    """small_bundle with only its n most popular rows in the popularity list."""
    b = read_bundle(small_bundle)
    m = b.manifest
    return write_bundle(
        out, encoder=(small_bundle / "encoder.onnx").read_bytes(),
        item_matrix=np.asarray(b.item_matrix), neighbors=np.asarray(b.neighbors),
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity)[:n],
        popularity_scores=np.asarray(b.popularity_scores)[:n],
        item_category=np.asarray(b.item_category), model=m["model"],
        inference=m["inference"], defaults=m["defaults"])


@pytest.fixture(scope="module")
def short_pop_bundle(small_bundle, tmp_path_factory):
    return _listing_the_first(small_bundle, tmp_path_factory.mktemp("pop") / "b", 50)


def test_popularity_rank_is_built_once_as_int32(short_pop_bundle):
    """The rank of each row in the popularity list (n_items: not listed), one int32 per
    item, built on the first popularity fallback under an allow list and then kept: the
    later calls cost O(len(allow)), not O(n_items). Unlisted allowed rows are never
    returned."""
    rec = Recommender.load(short_pop_bundle)
    s = rec._served
    pop = np.asarray(rec.bundle.popularity).tolist()
    assert len(pop) == 50 and s.n_items == 2000
    assert s._popularity_rank is None  # not built by load nor by a plain fallback
    rec.recommend([-1], k=3)
    assert s._popularity_rank is None
    unlisted = [r for r in range(20) if r not in pop][:3]
    allow = [pop[30], unlisted[0], pop[7], unlisted[1], pop[41], unlisted[2]]
    out = rec.recommend([-1], k=4, allow=rec.item_ids[allow].tolist())
    assert out.item_ids.tolist() == rec.item_ids[[pop[7], pop[30], pop[41]]].tolist()
    rank = s._popularity_rank
    assert rank is not None and s.popularity_rank() is rank
    assert rank.dtype == np.int32 and rank.shape == (2000,)
    assert rank.tolist() == [pop.index(r) if r in pop else 2000 for r in range(2000)]
    one = rec.recommend([-1, -2], k=4, allow=rec.item_ids[[unlisted[0], pop[7]]].tolist())
    assert one.item_ids.tolist() == rec.item_ids[[pop[7]]].tolist()
    assert one.scores.tolist() == [float(np.float32(rec.bundle.popularity_scores[7]))]
    assert (one.fallback, one.unknown, one.n_candidates) == ("popularity", 2, 0)


def test_popularity_fallback_lists_at_most_the_popularity_list(rec, short_pop_bundle,
                                                               small_bundle, tmp_path):
    """Without an allow list: the first k listed rows not excluded (also past an exclude
    list longer than the fallback's 1,024-row blocks), no candidate scored; fewer than k
    when the list runs out; an empty list gives an empty result that says "popularity"
    (the bundle format allows it)."""
    pop = np.asarray(rec.bundle.popularity)
    out = rec.recommend([], k=5, exclude=rec.item_ids[pop[:1100]].tolist())
    assert out.item_ids.tolist() == rec.item_ids[pop[1100:1105]].tolist()
    short = Recommender.load(short_pop_bundle)  # 50 rows listed
    pop = np.asarray(short.bundle.popularity)
    scores = np.asarray(short.bundle.popularity_scores)
    out = short.recommend([-1], k=4, exclude=short.item_ids[pop[[0, 2]]].tolist())
    assert out.item_ids.tolist() == short.item_ids[pop[[1, 3, 4, 5]]].tolist()
    assert out.scores.dtype == np.float32 and out.scores.tolist() == scores[[1, 3, 4, 5]].tolist()
    assert (out.fallback, out.unknown, out.n_candidates) == ("popularity", 1, 0)
    out = short.recommend([], k=60, exclude=short.item_ids[pop[:5]].tolist())
    assert out.item_ids.tolist() == short.item_ids[pop[5:]].tolist() and len(out) == 45
    empty = Recommender.load(_listing_the_first(small_bundle, tmp_path / "none", 0))
    for rules in ({}, {"exclude": empty.item_ids[:3].tolist()}):
        out = empty.recommend([-1, -2, -3], k=5, **rules)
        assert (out.fallback, out.unknown, out.n_candidates, len(out)) == ("popularity", 3, 0, 0)
        assert out.item_ids.dtype == np.int64 and out.scores.dtype == np.float32
        assert out.item_ids.shape == out.scores.shape == (0,)
    out = empty.recommend([], k=5, allow=empty.item_ids[:3].tolist())
    assert (out.fallback, len(out)) == ("nothing_allowed", 0)


# ------------------------------------------------------------------ reload


def test_reload_keeps_the_load_options_and_passes_its_own(small_bundle, tmp_path, caplog,
                                                          monkeypatch):
    """reload: the backend and limits chosen at load stay; ``verify`` and ``prefault``
    are the reload's own (a damaged bundle is served only when verify=False is asked;
    prefault=True maps the new bundle's arrays), and the log line says which."""
    other = build_synthetic_bundle(tmp_path / "other", n_items=300, dim=8, neighbors=10,
                                   seed=4)
    damaged = tmp_path / "damaged"
    shutil.copytree(other, damaged)
    data = bytearray((damaged / "item_matrix.npy").read_bytes())
    data[-5] ^= 0xFF  # a checksum mismatch, nothing the unverified load looks at
    (damaged / "item_matrix.npy").write_bytes(bytes(data))
    faulted = []
    monkeypatch.setattr(pages, "prefault", lambda arrays: faulted.append(len(list(arrays))))

    rec = Recommender.load(small_bundle, backend="numpy", limits=Limits(rule_ids=2))
    ids = np.load(other / "item_ids.npy")
    with pytest.raises(ChecksumError, match="item_matrix.npy"):
        rec.reload(damaged)  # a small bundle is verified unless told otherwise
    assert rec.n_items == 2000  # the failed reload left the old bundle serving
    with caplog.at_level(logging.INFO, logger="sessrec"):
        rec.reload(damaged, verify=False)
    assert rec.n_items == 300 and faulted == []
    assert "backend numpy, verify=False, prefault=False" in caplog.records[-1].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sessrec"):
        rec.reload(other, prefault=True)
    assert len(faulted) == 1 and faulted[0] > 0
    assert "backend numpy, verify=None, prefault=True" in caplog.records[-1].getMessage()
    assert rec.backend == "numpy"
    with pytest.raises(ValueError, match="exclude holds 3 ids; at most 2"):
        rec.recommend(ids[:2].tolist(), exclude=ids[5:8].tolist())


# ------------------------------------------------------------------ category helpers


def _served_stub(*, indptr=None, items=None, n_categories=0):
    """The few _Served fields the category helpers read."""
    bundle = SimpleNamespace(category_indptr=None if indptr is None else np.array(indptr),
                             category_items=None if items is None else np.array(items, np.int32),
                             encoder_path="enc.onnx")
    return SimpleNamespace(bundle=bundle, category_name="cats", n_categories=n_categories)


def test_top_categories_by_score_ties_to_the_smaller_id():
    """The n best-scored categories, ties in category order (a stable sort: many ties
    here, enough for an unstable sort to reorder them), as int32."""
    scores = np.tile(np.array([1.0, 3.0, 2.0, 3.0, 1.0], np.float32), 40)  # 200 categories
    s = _served_stub(n_categories=200)
    top = _top_categories(s, {"cats": scores}, 90)
    want = sorted(range(200), key=lambda c: (-scores[c], c))[:90]
    assert top.dtype == np.int32 and top.tolist() == want
    assert _top_categories(s, {"cats": scores}, 1).tolist() == [1]
    with pytest.raises(CorruptFileError, match=r"^enc.onnx: the encoder returned 200 category "
                                               r"scores for 'cats'; the bundle has "
                                               r"n_categories=199$"):
        _top_categories(_served_stub(n_categories=199), {"cats": scores}, 3)


def test_category_items_in_category_order_up_to_the_cap():
    """The members of each category in turn (most popular first, as the index stores
    them), cut at ``cap`` in the middle of a category; an empty category adds nothing."""
    # category 0: rows 10, 11; 1: 12; 2: none; 3: 13, 14, 15
    s = _served_stub(indptr=[0, 2, 3, 3, 6], items=[10, 11, 12, 13, 14, 15])

    def items(cats, cap):
        out = _category_items(s, np.array(cats, np.int32), cap)
        assert out.dtype == np.int32
        return out.tolist()

    assert items([3, 0], 100) == [13, 14, 15, 10, 11]
    assert items([3, 0], 5) == [13, 14, 15, 10, 11]
    assert items([3, 0], 3) == [13, 14, 15]  # the cap reached at a category's end
    assert items([3, 0, 1], 4) == [13, 14, 15, 10]  # ... and inside one
    assert items([1, 3, 0], 2) == [12, 13]  # one item left under the cap
    assert items([0, 1, 2, 3], 1) == [10]
    assert items([2, 1, 0], 100) == [12, 10, 11]
    assert items([2], 100) == [] and items([], 5) == []


# ------------------------------------------------------------------ recommend_many


def test_recommend_many_encodes_only_the_sessions_that_need_it(small_bundle, small_ids):
    """The encoder sees only sessions with a known item and something allowed, each
    window once, handed over in groups of one window length; the other sessions get
    run()'s answer without it (popularity, nothing allowed), each in its place."""
    rec = Recommender.load(small_bundle)
    enc = rec._served.encoder
    groups, runs = [], []
    run_batch, onnx_run = enc.run_batch, enc._run

    def counting_batch(windows):
        groups.append(sorted(len(rows) for rows, _ in windows))
        return run_batch(windows)

    def counting_run(names, feeds, options):
        runs.append(len(next(iter(feeds.values()))))
        return onnx_run(names, feeds, options)

    enc.run_batch, enc._run = counting_batch, counting_run
    a, b, c = small_ids[:3].tolist(), small_ids[10:11].tolist(), small_ids[20:23].tolist()
    sessions = [a, [], [-1], b, [-2, *b], c]
    many = rec.recommend_many(sessions, k=5)
    assert sorted(groups) == [[1, 1], [3, 3]]
    assert len(runs) == 4  # this bundle's encoder has no batch axis: one run per window
    for session, got in zip(sessions, many):
        want = rec.recommend(session, k=5)
        assert (got.item_ids.tolist(), got.scores.tolist(), got.fallback, got.unknown) == \
            (want.item_ids.tolist(), want.scores.tolist(), want.fallback, want.unknown)
    assert [r.fallback for r in many] == [None, "popularity", "popularity", None, None, None]
    groups.clear()
    runs.clear()
    many = rec.recommend_many(sessions, k=5, allow=[-5])
    assert groups == [] and runs == []
    assert [(r.fallback, r.unknown, len(r)) for r in many] == \
        [("nothing_allowed", u, 0) for u in (0, 0, 1, 0, 1, 0)]


def test_session_knn_empty_result_counts_what_was_scored(tmp_path):
    """A session-kNN kernel scores the neighbor sessions' items before applying the rules:
    when the rules leave none of them, the empty result still says how many it scored."""
    from export_tools.synthetic import build_synthetic_sknn_bundle

    rec = Recommender.load(build_synthetic_sknn_bundle(tmp_path / "sknn", 500, 2000, sample=50,
                                                       neighbors=20, seed=3))
    session = [-1, *rec.item_ids[[4, 9]].tolist()]
    full = rec.recommend(session, k=500)  # every candidate: k above their number
    assert 0 < len(full) == full.n_candidates < 500
    outside = sorted(set(rec.item_ids.tolist()) - set(full.item_ids.tolist()))[:2]
    out = rec.recommend(session, k=5, allow=outside)
    assert (out.fallback, out.unknown, out.n_candidates, len(out)) == \
        ("no_candidates", 1, full.n_candidates, 0)


def test_no_query_without_a_known_item_and_results_are_read_only(rec, small_ids):
    """query() of a session with no known item is None (nothing to encode); a result's
    scores cannot be written (they may be shared with a cache)."""
    assert rec.query([-1, -2]) is None
    out = rec.recommend(small_ids[:2].tolist(), k=5)
    with pytest.raises(ValueError, match="read-only"):
        out.scores[0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        out.item_ids[0] = 1


def test_item_bias_is_added_to_every_score(small_bundle, small_ids, tmp_path):
    """A bundle with an item bias (models with an output bias): each score is the
    bias-free bundle's score of that item plus its bias, rounded once in float32, and the
    ranking follows the sum."""
    b = read_bundle(small_bundle)
    bias = np.random.default_rng(9).normal(0, 2, b.item_matrix.shape[0]).astype(np.float32)
    biased = write_bundle(
        tmp_path / "biased", encoder=small_bundle / "encoder.onnx",
        item_matrix=np.asarray(b.item_matrix), neighbors=np.asarray(b.neighbors),
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity),
        popularity_scores=np.asarray(b.popularity_scores),
        item_category=np.asarray(b.item_category), item_bias=bias, model=b.manifest["model"],
        inference=b.manifest["inference"], defaults=b.manifest["defaults"])
    plain, rec = Recommender.load(small_bundle), Recommender.load(biased)
    moved = 0
    for i in range(0, 60, 3):
        session = small_ids[i:i + 3].tolist()
        every = plain.recommend(session, k=200)  # every candidate (K x 3 < 200)
        base = dict(zip(plain.bundle.ids.rows(every.item_ids).tolist(), every.scores))
        out = rec.recommend(session, k=10)
        rows = rec.bundle.ids.rows(out.item_ids).tolist()
        want = sorted(base, key=lambda r: (-np.float32(base[r] + bias[r]), r))[:10]
        assert rows == want
        assert out.scores.tolist() == [np.float32(base[r] + bias[r]) for r in rows]
        moved += rows != plain.bundle.ids.rows(every.item_ids[:10]).tolist()
    assert moved > 0


@pytest.mark.parametrize("session, text", [
    (b"a1", "session must be a sequence of item ids, not a bare bytes; wrap a single id in "
            "a list: [b'a1']"),
    (bytearray(b"x" * 50), "session must be a sequence of item ids, not a bare bytearray; "
                           f"wrap a single id in a list: [{b'x' * 40!r}]"),
    (np.ma.masked_array([1, 2], mask=[0, 1]), "session: masked arrays are not accepted (the "
     "mask would be ignored); pass arr.compressed() for the unmasked ids"),
    ({1, 2}, "session must be a list, tuple or numpy array of item ids, not set"),
])
def test_id_type_errors_word_for_word(rec, session, text):
    """What a caller sees for ids of the wrong kind: the exact TypeError text (a bytearray
    is shown by its first 40 bytes)."""
    with pytest.raises(TypeError) as err:
        rec.recommend(session)
    assert str(err.value) == text


def test_rule_list_limit_word_for_word(small_bundle, small_ids):
    """An exclude= list longer than Limits.rule_ids: refused with the count and the limit;
    one exactly at the limit is read."""
    rec = Recommender.load(small_bundle, limits=Limits(rule_ids=5))
    assert len(rec.recommend(small_ids[:3].tolist(), k=3, exclude=small_ids[:5])) == 3
    with pytest.raises(ValueError) as err:
        rec.recommend(small_ids[:3].tolist(), exclude=small_ids[:6])
    assert str(err.value) == ("exclude holds 6 ids; at most 5 are accepted "
                              "(sessrec_sdk.Limits, set at Recommender.load)")


@pytest.mark.parametrize("kwargs, exc, text", [
    ({"limits": 3}, TypeError, "limits must be a sessrec_sdk.Limits, got int"),
    ({"encoder_cache": -1}, ValueError, "encoder_cache must be an int >= 0, got -1"),
    ({"encoder_cache": True}, ValueError, "encoder_cache must be an int >= 0, got True"),
    ({"encoder_cache": 2.0}, ValueError, "encoder_cache must be an int >= 0, got 2.0"),
])
def test_load_option_errors_word_for_word(small_bundle, kwargs, exc, text):
    with pytest.raises(exc) as err:
        Recommender.load(small_bundle, **kwargs)
    assert str(err.value) == text


def test_c_kernel_refuses_arrays_that_are_not_c_contiguous(small_bundle):
    """The C kernel reads raw pointers: a strided (Fortran-order) matrix is refused with a
    ValueError before any call, never read with the wrong strides."""
    from sessrec_sdk.kernels import CatalogArrays
    from sessrec_sdk.kernels.c_backend import CKernel

    b = read_bundle(small_bundle)
    matrix = np.asfortranarray(np.asarray(b.item_matrix))
    with pytest.raises(ValueError) as err:
        CKernel(CatalogArrays(matrix, np.asarray(b.neighbors), None, None))
    assert str(err.value) == "kernel arrays must be C-contiguous"


def test_an_encoder_whose_item_rows_are_narrower_is_refused_at_load(tmp_path):
    """The encoder's declared item-row width is checked against the manifest's input_dim
    at load (here an encoder of a dim-8 bundle in a dim-16 bundle): named before its query
    width, so the first thing wrong is what the error says."""
    from fault_injection import resign  # tests/ is on sys.path under pytest

    wide = build_synthetic_bundle(tmp_path / "wide", n_items=200, dim=16, neighbors=10)
    narrow = build_synthetic_bundle(tmp_path / "narrow", n_items=200, dim=8, neighbors=10)
    shutil.copy(narrow / "encoder.onnx", wide / "encoder.onnx")
    resign(wide, "encoder.onnx")
    with pytest.raises(CorruptFileError) as err:
        Recommender.load(wide)
    assert str(err.value) == (
        f"{wide / 'encoder.onnx'}: encoder input 'item_emb' (kind item_rows) must be "
        f"tensor(float) [1, None, 16], it is declared tensor(float) [1, 'L', 8]")
