"""The recommend() contract of docs/architecture.md on synthetic bundles."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_tools.synthetic import build_synthetic_bundle
from sessrec_sdk import Recommendation, Recommender
from sessrec_sdk.ids import ItemIds, sorted_index
from sessrec_sdk.kernels import available_backends


@pytest.fixture(scope="module")
def rec(small_bundle):
    return Recommender.load(small_bundle)


def _session(ids, rng, n=3):
    return ids[rng.choice(len(ids), size=n, replace=False)].tolist()


def test_result_shape_and_order(rec, small_ids):
    out = rec.recommend(small_ids[:3].tolist(), k=7)
    assert isinstance(out, Recommendation)
    assert len(out) == 7 and out.item_ids.dtype == np.int64 and out.scores.dtype == np.float32
    assert np.all(np.diff(out.scores) <= 0)
    assert out.fallback is None and out.unknown == 0 and out.n_candidates >= 7
    pairs = out.pairs()
    assert pairs[0] == (int(out.item_ids[0]), float(out.scores[0]))
    ids, scores = out  # unpacks as (item_ids, scores), for any k
    assert ids is out.item_ids and scores is out.scores
    with pytest.raises(ValueError):
        out.item_ids[0] = 1  # read-only


def test_scores_are_query_dot_rows(rec, small_ids, small_bundle):
    """Recompute the scores from the bundle files: the SDK ranks by query . row."""
    import onnxruntime as ort

    session = small_ids[[5, 17, 99]]
    out = rec.recommend(session.tolist(), k=5)
    matrix = np.load(small_bundle / "item_matrix.npy")
    rows = [int(np.flatnonzero(small_ids == i)[0]) for i in session]
    enc = ort.InferenceSession(str(small_bundle / "encoder.onnx"))
    query = enc.run(None, {"items": np.array([rows]), "item_emb": matrix[rows][None]})[0][0]
    got_rows = [int(np.flatnonzero(small_ids == i)[0]) for i in out.item_ids]
    np.testing.assert_allclose(out.scores, matrix[got_rows] @ query, rtol=1e-5, atol=1e-6)
    # nothing among the candidates scores higher than what was returned
    nbrs = np.load(small_bundle / "neighbors.npy")
    cands = set(nbrs[rows].ravel().tolist()) - set(rows) - {-1}
    best = max(float(matrix[c] @ query) for c in cands)
    assert out.scores[0] == pytest.approx(best, abs=1e-5)


def test_session_items_excluded_unless_asked(rec, small_ids, small_bundle):
    nbrs = np.load(small_bundle / "neighbors.npy")
    # a session whose items are each other's neighbors
    a = 0
    b = int(nbrs[a, 0])
    session = [small_ids[a], small_ids[b]]
    out = rec.recommend(session, k=50)
    assert not set(out.item_ids.tolist()) & set(session)
    out = rec.recommend(session, k=50, exclude_session_items=False)
    assert set(session) <= set(out.item_ids.tolist())


def test_k_above_catalog_and_candidates(rec, small_ids):
    out = rec.recommend(small_ids[:1].tolist(), k=10**9)
    # one item with K=20 neighbors: at most 20 candidates
    assert 0 < len(out) <= 20 and len(out) == out.n_candidates


def test_category_filters(rec, small_ids, small_bundle):
    cats = np.load(small_bundle / "item_category.npy")
    cat_of = dict(zip(small_ids.tolist(), cats.tolist()))
    rng = np.random.default_rng(3)
    for _ in range(20):
        session = _session(small_ids, rng)
        last = rec.recommend(session, k=20, category_filter="last")
        assert all(cat_of[i] == cat_of[session[-1]] for i in last.item_ids.tolist())
        anyc = rec.recommend(session, k=20, category_filter="session")
        assert all(cat_of[i] in {cat_of[s] for s in session} for i in anyc.item_ids.tolist())
        none = rec.recommend(session, k=20, category_filter="none")
        assert none.n_candidates >= anyc.n_candidates >= last.n_candidates


def test_exclude_and_allow(rec, small_ids):
    session = small_ids[:3].tolist()
    full = rec.recommend(session, k=10)
    dropped = full.item_ids[:4].tolist()
    out = rec.recommend(session, k=10, exclude=dropped + [-12345])
    assert not set(out.item_ids.tolist()) & set(dropped)
    allow = full.item_ids[2:6].tolist()
    out = rec.recommend(session, k=10, allow=allow)
    assert out.item_ids.tolist() == full.item_ids[2:6].tolist()


def test_neighbors_option_limits_candidates(rec, small_ids):
    session = small_ids[:3].tolist()
    few = rec.recommend(session, k=100, neighbors=2)
    many = rec.recommend(session, k=100, neighbors=20)
    assert few.n_candidates <= 6 < many.n_candidates


def test_truncates_to_max_session_length(rec, small_ids):
    """Only the last max_session_length (3) items drive the query and candidates."""
    long = small_ids[10:40].tolist()
    assert np.array_equal(rec.query(long), rec.query(long[-3:]))
    # the same items excluded either way: the same neighbor candidates, the same answer
    out_long = rec.recommend(long, k=10)
    out_tail = rec.recommend(long[-3:], k=10, exclude=long[:-3])
    np.testing.assert_array_equal(out_long.item_ids, out_tail.item_ids)
    # but exclusion covers the whole session
    out = rec.recommend(long, k=50)
    assert not set(out.item_ids.tolist()) & set(long)


def test_session_rows_are_the_known_window(rec, small_ids):
    """session_rows: unknown ids dropped, then the last max_session_length (3) known ids,
    in session order (the synthetic bundle has no session filter)."""
    unknown = int(small_ids.max()) + 1
    session = [unknown, *small_ids[[5, 9, 2, 7]].tolist(), unknown]
    rows = rec.session_rows(session)
    assert rows.tolist() == rec.bundle.ids.rows(small_ids[[9, 2, 7]]).tolist()
    assert rec.item_ids[rows].tolist() == small_ids[[9, 2, 7]].tolist()
    assert rec.session_rows([unknown]).size == 0


def test_popularity_fallback_under_an_allow_list(rec, small_ids):
    """An all-unknown session with ``allow``: the allowed rows that are not excluded, in the
    bundle's popularity order (ranked by hand here), with their popularity scores as
    float32, the unknown ids counted; nothing allowed left: empty, with the reason."""
    unknown = int(small_ids.max()) + 1
    allow = small_ids[[3, 7, 11, 40, 41]].tolist()
    out = rec.recommend([unknown, unknown + 1], k=3, allow=allow, exclude=[allow[1]])
    keep = set(rec.bundle.ids.rows(np.asarray(allow[:1] + allow[2:])).tolist())
    pop = np.asarray(rec.bundle.popularity)
    ranked = [(r, s) for r, s in zip(pop.tolist(), np.asarray(rec.bundle.popularity_scores))
              if r in keep][:3]
    assert out.fallback == "popularity" and out.unknown == 2 and len(out) == 3
    assert out.item_ids.tolist() == [int(rec.item_ids[r]) for r, _ in ranked]
    assert out.scores.dtype == np.float32
    assert out.scores.tolist() == [float(s) for _, s in ranked]
    none = rec.recommend([unknown, unknown + 1], k=3, allow=allow[:1], exclude=allow[:1])
    assert (none.fallback, none.unknown, len(none)) == ("nothing_allowed", 2, 0)


def test_recommendation_repr_is_short_and_exact():
    """repr: the first five (id: score) pairs, then the size, fallback and unknown count."""
    ids = np.array([10, 20, 30, 40, 50, 60])
    scores = np.array([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625], dtype=np.float32)
    assert repr(Recommendation(ids, scores, unknown=2)) == (
        "Recommendation([10: 0.5, 20: 0.25, 30: 0.125, 40: 0.0625, 50: 0.03125, ...], n=6, "
        "fallback=None, unknown=2)")
    few = Recommendation(np.array(["a", "b"]), np.array([1.0, 1 / 3], dtype=np.float32),
                         fallback="popularity")
    assert repr(few) == ("Recommendation(['a': 1, 'b': 0.3333], n=2, "
                         "fallback='popularity', unknown=0)")
    assert repr(Recommendation(ids[:5], scores[:5])).endswith(
        "50: 0.03125], n=5, fallback=None, unknown=0)")


def test_popularity_fallback(rec, small_ids, small_bundle):
    pop = np.load(small_bundle / "popularity.npy")
    for session in ([], [-1, -2], np.array([], dtype=np.int64)):
        out = rec.recommend(session, k=5)
        assert out.fallback == "popularity"
        assert out.item_ids.tolist() == small_ids[pop[:5]].tolist()
    out = rec.recommend([-7, -8, -9], k=5, exclude=small_ids[pop[:2]].tolist())
    assert out.unknown == 3
    assert out.item_ids.tolist() == small_ids[pop[2:7]].tolist()
    out = rec.recommend([], k=5, allow=small_ids[pop[[3, 9]]].tolist())
    assert out.item_ids.tolist() == small_ids[pop[[3, 9]]].tolist()


def test_unknown_ids_skipped_and_counted(rec, small_ids):
    session = small_ids[:3].tolist()
    out = rec.recommend([-5, session[0], 10**15, session[1], session[2]], k=10)
    assert out.unknown == 2
    np.testing.assert_array_equal(out.item_ids, rec.recommend(session, k=10).item_ids)


def test_item_ids_in_row_order(rec, small_ids):
    np.testing.assert_array_equal(rec.item_ids, small_ids)
    assert rec.n_items == len(small_ids)


@pytest.mark.parametrize("backend", available_backends())
def test_string_ids_and_float16(str_bundle, backend):
    rec = Recommender.load(str_bundle, backend=backend)
    assert rec.backend == backend
    ids = rec.item_ids
    assert ids.dtype.kind == "U"
    out = rec.recommend(ids[:3].tolist(), k=5)
    assert len(out) == 5 and all(isinstance(i, str) for i, _ in out.pairs())
    with pytest.raises(TypeError, match="str"):
        rec.recommend([1, 2, 3])


def test_backends_give_identical_recommendations(small_bundle, small_ids):
    recs = [Recommender.load(small_bundle, backend=b) for b in available_backends()]
    rng = np.random.default_rng(11)
    for _ in range(50):
        session = _session(small_ids, rng, n=int(rng.integers(1, 6)))
        kw = {"k": int(rng.integers(1, 40)),
              "category_filter": str(rng.choice(["last", "session", "none"]))}
        outs = [r.recommend(session, **kw) for r in recs]
        for o in outs[1:]:
            np.testing.assert_array_equal(o.item_ids, outs[0].item_ids)
            np.testing.assert_allclose(o.scores, outs[0].scores, atol=1e-5, rtol=0)


def test_threads_get_the_sequential_answers(rec, small_ids):
    rng = np.random.default_rng(5)
    sessions = [_session(small_ids, rng, n=int(rng.integers(1, 5))) for _ in range(400)]
    expected = [rec.recommend(s, k=10).item_ids.tolist() for s in sessions]
    results: dict[int, list] = {}
    errors = []
    barrier = threading.Barrier(8)

    def work(t):
        try:
            barrier.wait()
            results[t] = [rec.recommend(s, k=10).item_ids.tolist() for s in sessions]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[t] == expected for t in range(8))


def test_reload_swaps_under_traffic(tmp_path, small_ids):
    a = build_synthetic_bundle(tmp_path / "a", n_items=300, dim=8, neighbors=10, seed=1)
    b = build_synthetic_bundle(tmp_path / "b", n_items=400, dim=16, neighbors=12, seed=2)
    rec = Recommender.load(a)
    ids_a, ids_b = rec.item_ids.copy(), np.load(b / "item_ids.npy")
    stop = threading.Event()
    errors = []

    def traffic():
        rng = np.random.default_rng(0)
        while not stop.is_set():
            try:
                ids = ids_a if rng.random() < 0.5 else ids_b
                out = rec.recommend(ids[:3].tolist(), k=5)
                assert len(out) == 5 or out.fallback == "popularity"
            except Exception as exc:  # pragma: no cover
                errors.append(exc)

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        rec.reload(b)
        rec.reload(a)
    rec.reload(b)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert rec.n_items == 400 and rec.manifest["dim"] == 16


def test_onnxruntime_uses_one_thread(rec):
    opts = rec._served.encoder._session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1


def test_import_is_light():
    code = ("import sys, sessrec_sdk; "
            "bad = [m for m in ('torch', 'numba', 'export_tools', 'onnx') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_auto_backend_does_not_import_numba_when_c_exists(small_bundle):
    code = ("import sys; from sessrec_sdk import Recommender; "
            f"r = Recommender.load({str(small_bundle)!r}); "
            "print(r.backend, 'numba' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["c", "False"], proc.stderr


def test_works_without_the_c_extension(small_bundle, small_ids):
    """A build without a compiler: the C module fails to import; the SDK falls back (Numba
    if installed, else numpy) for the kernel and to numpy for the id lookup, and answers
    as the C build does."""
    session = small_ids[[3, 50, 700]].tolist()
    code = (
        "import sys, json\n"
        "class NoC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sessrec_sdk._kernels':\n"
        "            raise ImportError('no C extension in this test')\n"
        "sys.meta_path.insert(0, NoC())\n"
        "from sessrec_sdk import Recommender\n"
        f"r = Recommender.load({str(small_bundle)!r})\n"
        f"out = r.recommend({session!r}, k=10)\n"
        "print(json.dumps([r.backend, r._served.bundle.ids._c_find is None,"
        " out.item_ids.tolist(), out.scores.tolist()]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    backend, numpy_lookup, ids, scores = json.loads(proc.stdout)
    assert backend in ("numba", "numpy") and numpy_lookup
    here = Recommender.load(small_bundle).recommend(session, k=10)
    assert ids == here.item_ids.tolist()
    np.testing.assert_allclose(scores, here.scores, rtol=0, atol=1e-5)


@given(catalog=st.lists(st.integers(-2**63 + 1, 2**63 - 1), min_size=1, max_size=40,
                       unique=True),
       extra=st.lists(st.integers(-2**63, 2**63 - 1), max_size=10), seed=st.integers(0, 99),
       n_known=st.sampled_from([0, 1, 7, 64, 65, 150]))
@settings(max_examples=200, deadline=None)
def test_known_lookup_matches_rows(catalog, extra, seed, n_known):
    """ItemIds.known (the request path's lookup: C for integer catalogs when built) ==
    rows() (numpy) with the unknown ids dropped; more than 64 ids cross the C lookup's
    chunks. The catalog spans int64 except INT64_MIN (the writer refuses it)."""
    ids = ItemIds(np.array(catalog, dtype=np.int64), *sorted_index(np.array(catalog, np.int64)))
    rng = np.random.default_rng(seed)
    query = np.array(list(rng.choice(catalog, size=n_known)) + extra, np.int64)
    rng.shuffle(query)
    rows = ids.rows(query)
    known, unknown = ids.known(query)
    assert known.dtype == np.int32
    assert known.tolist() == rows[rows >= 0].tolist()
    assert unknown == int((rows < 0).sum())


@pytest.mark.skipif("c" not in available_backends(), reason="C extension not built")
def test_integer_lookup_runs_in_c_when_built():
    """So that test_known_lookup_matches_rows compares the C lookup with numpy's."""
    cat = np.array([5, -3, 9], np.int64)
    assert ItemIds(cat, *sorted_index(cat))._c_find is not None
    strs = np.array(["a", "b"])
    assert ItemIds(strs, *sorted_index(strs))._c_find is None


def test_recommendation_is_read_only():
    r = Recommendation(np.array([3, 1]), np.array([0.5, 0.25], np.float32))
    with pytest.raises(AttributeError):
        r.fallback = "x"
    with pytest.raises(AttributeError):
        del r.scores
    with pytest.raises(ValueError):
        r.item_ids[0] = 7
    assert r.pairs() == [(3, 0.5), (1, 0.25)] and len(r) == 2
    ids, scores = r  # two items: still (ids, scores), never two (item, score) pairs
    assert ids.tolist() == [3, 1] and scores.tolist() == [0.5, 0.25]
    ids, scores = Recommendation(np.array([3]), np.array([0.5], np.float32))
    assert ids.tolist() == [3] and scores.tolist() == [0.5]


def test_recommendation_pickles_and_copies():
    import copy
    import pickle

    r = Recommendation(np.array([3, 1]), np.array([0.5, 0.25], np.float32), None, 2, 7)
    for twin in (pickle.loads(pickle.dumps(r)), copy.copy(r), copy.deepcopy(r)):
        assert twin.item_ids.tolist() == [3, 1] and twin.unknown == 2 and twin.n_candidates == 7
