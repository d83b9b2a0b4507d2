"""Bad input: each case gets a clear exception or a documented fallback, never a crash."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export_tools.synthetic import build_synthetic_bundle
from sessrec_sdk import (
    BundleError,
    ChecksumError,
    CorruptFileError,
    Limits,
    MissingFileError,
    Recommender,
    VersionError,
)
from sessrec_sdk.kernels import available_backends


@pytest.fixture(scope="module")
def rec(small_bundle):
    return Recommender.load(small_bundle)


# ------------------------------------------------------------------ sessions


@pytest.mark.parametrize("session, match", [
    (None, "not None"),
    ("12345", "bare str"),
    (b"12345", "bare bytes"),
    ([[1, 2], [3, 4]], "1-D"),
    ([1, [2, 3]], "flat"),
    ([1.0, 2.0], "integers"),
    ([float("nan")], "integers"),
    (np.array([1.5]), "integers"),
    ([True, False], "integers"),
    ([1, None], "integers"),
    (["a", "b"], "integers"),
    ({1, 2}, "list, tuple or numpy array"),
    (42, "list, tuple or numpy array"),
])
def test_ill_typed_sessions_raise_type_error(rec, session, match):
    with pytest.raises(TypeError, match=match):
        rec.recommend(session)


def test_negative_and_huge_integers_are_unknown(rec, small_ids):
    out = rec.recommend([-1, -(2**63), 2**63 - 1, 2**64, 2**200, np.uint64(2**64 - 1)])
    assert out.fallback == "popularity" and out.unknown == 6
    out = rec.recommend(np.array([2**64 - 1, small_ids[0]], dtype=np.uint64))
    assert out.unknown == 1 and out.fallback is None


def test_ten_thousand_item_session(rec, small_bundle, small_ids):
    rng = np.random.default_rng(0)
    session = rng.choice(small_ids, size=10_000).tolist()
    out = rec.recommend(session, k=10)
    assert len(out) <= 10 and out.fallback is None
    # only the last Limits.session_history ids are read: those are never returned
    history = Limits().session_history
    assert not set(out.item_ids.tolist()) & set(session[-history:])
    same = rec.recommend(session[-history:], k=10)
    assert out.item_ids.tolist() == same.item_ids.tolist()
    assert np.array_equal(out.scores, same.scores)
    # a host that wants the whole session excluded raises the limit
    wide = Recommender.load(small_bundle, limits=Limits(session_history=10_000))
    out = wide.recommend(session, k=10)
    assert not set(out.item_ids.tolist()) & set(session)
    # the session covers almost the whole catalog: fewer than k left, and an empty
    # result says why
    assert len(out) > 0 or out.fallback == "no_candidates"


@pytest.mark.parametrize("k, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                    (True, TypeError), ("10", TypeError)])
def test_bad_k(rec, small_ids, k, exc):
    with pytest.raises(exc, match="k must"):
        rec.recommend(small_ids[:2].tolist(), k=k)


def test_k_above_catalog_size_is_clamped(rec):
    out = rec.recommend([], k=10**12)
    assert len(out) == rec.n_items and out.fallback == "popularity"


@pytest.mark.parametrize("kwargs, match", [
    ({"category_filter": "brand"}, "category_filter must be one of"),
    ({"candidates": "everything"}, "candidates must be one of"),
    ({"neighbors": 0}, "neighbors must be in"),
    ({"neighbors": 21}, "neighbors must be in"),
    ({"exclude_session_items": "yes"}, "exclude_session_items"),
])
def test_unknown_option_values(rec, small_ids, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rec.recommend(small_ids[:2].tolist(), **kwargs)


def test_bad_exclude_list(rec, small_ids):
    with pytest.raises(TypeError, match="exclude"):
        rec.recommend(small_ids[:2].tolist(), exclude="abc")


def test_unknown_backend(small_bundle):
    with pytest.raises(ValueError, match="backend must be one of"):
        Recommender.load(small_bundle, backend="gpu")


# ------------------------------------------------------------------ bundles


@pytest.fixture
def bundle_copy(small_bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(small_bundle, dst)
    return dst


def test_missing_directory(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        Recommender.load(tmp_path / "nope")


@pytest.mark.parametrize("name", ["manifest.json", "neighbors.npy", "encoder.onnx",
                                  "item_ids_sorted.npy"])
def test_missing_file(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(MissingFileError, match=name):
        Recommender.load(bundle_copy)


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_file(bundle_copy, verify):
    path = bundle_copy / "item_matrix.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="item_matrix.npy"):
        Recommender.load(bundle_copy, verify=verify)


def test_corrupted_file_fails_checksum(bundle_copy):
    path = bundle_copy / "item_matrix.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="item_matrix.npy"):
        Recommender.load(bundle_copy)


def test_corrupted_encoder(bundle_copy):
    path = bundle_copy / "encoder.onnx"
    size = path.stat().st_size
    path.write_bytes(b"not an onnx model")  # another size: refused before it is read
    with pytest.raises(CorruptFileError, match="encoder.onnx: 17 bytes on disk"):
        Recommender.load(bundle_copy, verify=False)
    path.write_bytes(b"not an onnx model".ljust(size, b"\0"))  # the declared size
    with pytest.raises(ChecksumError, match="encoder.onnx"):
        Recommender.load(bundle_copy)
    # even without checksums, ONNX Runtime's refusal is reported as a bundle error
    with pytest.raises(CorruptFileError, match="encoder.onnx: ONNX Runtime cannot load"):
        Recommender.load(bundle_copy, verify=False)


def _edit_manifest(bundle, edit):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_newer_format_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(VersionError, match="newer"):
        Recommender.load(bundle_copy)


def test_manifest_not_json(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{oops")
    with pytest.raises(CorruptFileError, match="manifest.json"):
        Recommender.load(bundle_copy)


def test_manifest_shape_mismatch(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(dim=31))
    with pytest.raises(CorruptFileError, match="item_matrix.npy"):
        Recommender.load(bundle_copy, verify=False)


def _corrupt_neighbors(bundle, value):
    """Rewrite neighbors.npy with one bad id and a matching checksum (a writer bug)."""
    from sessrec_sdk.bundle import sha256_of

    nbrs = np.load(bundle / "neighbors.npy")
    nbrs[7, 3] = value
    np.save(bundle / "neighbors.npy", nbrs)
    _edit_manifest(bundle, lambda m: m["files"]["neighbors.npy"].update(
        sha256=sha256_of(bundle / "neighbors.npy")))


@pytest.mark.parametrize("value", [2000, 10**9, -2])
def test_neighbor_ids_out_of_range_rejected_at_load(bundle_copy, value):
    _corrupt_neighbors(bundle_copy, value)
    with pytest.raises(CorruptFileError, match="neighbors.npy"):
        Recommender.load(bundle_copy)


@pytest.mark.parametrize("backend", available_backends())
def test_neighbor_ids_out_of_range_caught_by_kernel(bundle_copy, backend):
    """Unverified (huge) bundles: the kernel bounds-checks instead of reading past the end."""
    _corrupt_neighbors(bundle_copy, 10**9)
    rec = Recommender.load(bundle_copy, verify=False, backend=backend)
    item = rec.item_ids[7]
    with pytest.raises(CorruptFileError, match="neighbors.npy: row 7"):
        rec.recommend([item], k=10)


def test_pickled_array_refused(bundle_copy):
    from sessrec_sdk.bundle import sha256_of

    np.save(bundle_copy / "popularity.npy", np.array([{"x": 1}], dtype=object),
            allow_pickle=True)
    _edit_manifest(bundle_copy, lambda m: m["files"]["popularity.npy"].update(
        sha256=sha256_of(bundle_copy / "popularity.npy")))
    with pytest.raises(CorruptFileError, match="popularity.npy"):
        Recommender.load(bundle_copy)


def test_bundle_error_is_the_common_base():
    assert all(issubclass(e, BundleError) for e in (MissingFileError, CorruptFileError,
                                                    ChecksumError, VersionError))


def test_write_refuses_to_overwrite_and_is_atomic(tmp_path):
    out = build_synthetic_bundle(tmp_path / "b", n_items=50, dim=4, neighbors=5)
    with pytest.raises(FileExistsError):
        build_synthetic_bundle(out, n_items=50, dim=4, neighbors=5)
    build_synthetic_bundle(out, n_items=60, dim=4, neighbors=5, overwrite=True)
    assert Recommender.load(out).n_items == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or old dirs left


@pytest.mark.parametrize("key, value, message", [
    ("k", 0, "defaults.k"),
    ("k", "10", "defaults.k"),
    ("neighbors", 10**6, "defaults.neighbors"),
    ("neighbors", True, "defaults.neighbors"),
    ("exclude_session_items", "yes", "defaults.exclude_session_items"),
    ("candidates", "everything", "defaults.candidates"),
    ("category_filter", "brand", "defaults.category_filter"),
    ("category_filter", "predicted", "predicts categories"),
    ("candidates", "categories", "predicts categories"),
    ("repeat_bonus", "0.5", "defaults.repeat_bonus"),
    ("repeat_bonus", 1e300, "defaults.repeat_bonus"),
    ("k", None, "defaults miss"),  # None: the key is deleted
])
def test_bad_manifest_defaults_fail_at_load(bundle_copy, key, value, message):
    def edit(m):
        if value is None:
            del m["defaults"][key]
        else:
            m["defaults"][key] = value

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(CorruptFileError, match=message) as info:
        Recommender.load(bundle_copy, verify=False)
    assert "manifest.json" in str(info.value)


@pytest.mark.parametrize("key, value", [("n_items", "2000"), ("input_dim", 0),
                                        ("has_categories", False)])
def test_bad_manifest_fields_fail_at_load(bundle_copy, key, value):
    _edit_manifest(bundle_copy, lambda m: m.update({key: value}))
    with pytest.raises(CorruptFileError, match="manifest.json"):
        Recommender.load(bundle_copy, verify=False)


def test_update_manifest_changes_only_the_manifest(bundle_copy):
    from sessrec_sdk.bundle import update_manifest

    before = {f.name: f.stat().st_mtime_ns for f in bundle_copy.iterdir()}
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    update_manifest(bundle_copy, defaults={**manifest["defaults"], "k": 7})
    rec = Recommender.load(bundle_copy, verify=True)  # checksums still match
    assert rec.manifest["defaults"]["k"] == 7
    assert len(rec.recommend(rec.item_ids[:3].tolist())) == 7
    after = {f.name: f.stat().st_mtime_ns for f in bundle_copy.iterdir()}
    assert {n for n in before if before[n] != after.get(n)} == {"manifest.json"}
    # a bad change is refused and leaves the manifest as it was
    with pytest.raises(CorruptFileError, match="defaults.k"):
        update_manifest(bundle_copy, defaults={**manifest["defaults"], "k": 0})
    assert Recommender.load(bundle_copy).manifest["defaults"]["k"] == 7
    assert sorted(f.name for f in bundle_copy.iterdir()) == sorted(before)


# ------------------------------------------------------------------ bounded work (issue 10)


@pytest.fixture(scope="module")
def str_rec(str_bundle):
    return Recommender.load(str_bundle)


def _peak_bytes(fn) -> int:
    """Peak of Python and numpy allocations while ``fn`` runs (numpy reports its buffers
    to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("length", [10_000, 1_000_000])
def test_long_string_id_costs_no_more_than_a_short_one(str_rec, length):
    ids = str_rec.item_ids
    known = ids[[3, 7]].tolist()
    long_id = "x" * length  # built outside the measurement: it is the caller's memory
    short = _peak_bytes(lambda: str_rec.recommend(known + ["nope"], k=10))
    for place in ("session", "exclude", "allow"):
        kwargs = {place: [long_id] + known} if place != "session" else {}
        session = known + [long_id] if place == "session" else known
        peak = _peak_bytes(lambda s=session, kw=kwargs: str_rec.recommend(s, k=10, **kw))
        # numpy would widen every sorted id to the long id's width: len(ids) * 4 * length
        assert peak < short + 64 * 1024, (place, peak, short)
    out = str_rec.recommend(known + [long_id], k=10)
    assert out.unknown == 1 and out.fallback is None
    wide = np.array(known + [long_id])  # a numpy array that wide is refused the same way
    assert str_rec.recommend(wide, k=10).unknown == 1


def test_string_id_with_trailing_nul_is_unknown(str_rec):
    known = str_rec.item_ids[[3, 7]].tolist()
    out = str_rec.recommend([known[0], known[1] + "\x00"], k=5)
    assert out.unknown == 1  # numpy would strip the NUL and match known[1]


@pytest.mark.parametrize("session", [bytearray(b"12"), memoryview(b"12")])
def test_byte_buffers_are_refused_like_bytes(rec, session):
    with pytest.raises(TypeError, match="bare"):
        rec.recommend(session)


def test_masked_array_is_refused(rec, small_ids):
    arr = np.ma.masked_array(small_ids[:3], mask=[False, True, False])
    with pytest.raises(TypeError, match="masked"):
        rec.recommend(arr)


def test_mixed_numpy_integer_types_are_ids(rec, small_ids):
    a, b = int(small_ids[0]), int(small_ids[1])
    out = rec.recommend([np.uint64(a), np.int64(b)], k=5)
    ref = rec.recommend([a, b], k=5)
    assert out.unknown == 0 and out.item_ids.tolist() == ref.item_ids.tolist()


def test_rule_lists_over_the_limit_are_refused_before_any_work(small_bundle, small_ids):
    strict = Recommender.load(small_bundle, limits=Limits(rule_ids=10))
    session = small_ids[:3].tolist()
    with pytest.raises(ValueError, match="exclude holds 11 ids; at most 10"):
        strict.recommend(session, exclude=small_ids[:11].tolist())
    with pytest.raises(ValueError, match="allow holds 11 ids"):
        strict.recommend(session, allow=small_ids[:11].tolist())
    assert len(strict.recommend(session, exclude=small_ids[:10].tolist(), k=3)) == 3
    with pytest.raises(ValueError, match="session_history"):
        Limits(session_history=0)
    with pytest.raises(TypeError, match="Limits"):
        Recommender.load(small_bundle, limits={"rule_ids": 5})


def test_long_session_reads_only_the_history(small_bundle, small_ids):
    r = Recommender.load(small_bundle, limits=Limits(session_history=5))
    session = [-1] * 50 + small_ids[:5].tolist()  # 50 unknown ids before the window
    out = r.recommend(session, k=5)
    assert out.unknown == 0 and out.fallback is None
    assert r.recommend([-1] * 5 + small_ids[:5].tolist(), k=5).unknown == 0
    assert r.recommend(small_ids[:5].tolist() + [-1] * 5, k=5).fallback == "popularity"


@pytest.mark.parametrize("kwargs, reason", [
    ({"allow": []}, "nothing_allowed"),
    ({"allow": [-5, -6]}, "nothing_allowed"),
])
def test_empty_results_say_why(rec, small_ids, kwargs, reason):
    for session in (small_ids[:3].tolist(), []):
        out = rec.recommend(session, k=5, **kwargs)
        assert len(out) == 0 and out.fallback == reason


def test_allow_within_exclude_says_why(rec, small_ids):
    session = small_ids[:3].tolist()
    near = rec.recommend(session, k=5).item_ids.tolist()
    out = rec.recommend(session, k=5, allow=near, exclude=near)
    assert len(out) == 0 and out.fallback == "no_candidates"
    out = rec.recommend([], k=5, allow=near, exclude=near)
    assert len(out) == 0 and out.fallback == "nothing_allowed"


def test_popularity_fallback_with_allow_list_matches_a_scan(rec, small_bundle, small_ids):
    pop = np.load(small_bundle / "popularity.npy")
    rng = np.random.default_rng(3)
    allow = rng.choice(small_ids, size=300, replace=False)
    exclude = allow[:50]
    out = rec.recommend([], k=20, allow=allow.tolist(), exclude=exclude.tolist())
    allowed_rows = set(np.flatnonzero(np.isin(small_ids, allow[50:])).tolist())
    want = [small_ids[r] for r in pop if r in allowed_rows][:20]
    assert out.item_ids.tolist() == want and out.fallback == "popularity"


# ------------------------------------------------------------------ damaged bundles (issue 10)


def _resign(bundle, name):
    from fault_injection import resign  # tests/ is on sys.path under pytest

    resign(bundle, name)


@pytest.mark.parametrize("value", [2**30, -5])
@pytest.mark.parametrize("verify", [None, False])
def test_id_order_out_of_range_is_refused_at_every_load(bundle_copy, value, verify):
    path = bundle_copy / "item_ids_order.npy"
    order = np.load(path)
    order[0] = value
    np.save(path, order)
    _resign(bundle_copy, "item_ids_order.npy")
    with pytest.raises(CorruptFileError, match="item_ids_order.npy: value"):
        Recommender.load(bundle_copy, verify=verify)


@pytest.mark.parametrize("backend", available_backends())
def test_kernels_check_rows_before_writing(small_bundle, backend):
    from sessrec_sdk.kernels import CatalogArrays, KernelQuery, RowRangeError, Scratch, make_kernel

    b = Recommender.load(small_bundle)._served.bundle
    kernel = make_kernel(CatalogArrays(b.item_matrix, b.neighbors, b.item_category, None),
                         backend)
    n = b.item_matrix.shape[0]
    q = KernelQuery(seeds=np.array([1, 2], np.int32), query=np.ones(32, np.float32), k=5,
                    n_use=4, exclude_seeds=True, excluded=np.empty(0, np.int32), allowed=None,
                    allowed_cats=None)
    scratch = Scratch(n)
    for bad in (n, n + 64, -1, 2**31 - 1):
        for field in ("seeds", "excluded", "allowed"):
            with pytest.raises(RowRangeError) as e:
                kernel.top_k(q._replace(**{field: np.array([3, bad], np.int32)}), scratch)
            assert e.value.row == bad
    assert not scratch.seen.any() and not scratch.allow_mark.any()  # nothing was written


def test_manifest_that_is_not_a_regular_file_or_too_large(bundle_copy, tmp_path):
    m = bundle_copy / "manifest.json"
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(64 * 2**20)  # sparse: never read
    m.unlink()
    m.symlink_to(big)
    with pytest.raises(CorruptFileError, match="manifest.json: .* bytes; a manifest is at most"):
        Recommender.load(bundle_copy)
    m.unlink()
    m.mkdir()
    with pytest.raises(CorruptFileError, match="manifest.json: not a regular file"):
        Recommender.load(bundle_copy)


def test_file_larger_than_declared_is_refused_before_it_is_read(bundle_copy):
    with open(bundle_copy / "item_matrix.npy", "ab") as f:
        f.truncate(2**34)  # 16 GiB, sparse: a checksum of it would take a minute
    for verify in (None, True, False):
        with pytest.raises(CorruptFileError, match="item_matrix.npy: .* bytes on disk"):
            Recommender.load(bundle_copy, verify=verify)


def test_deeply_nested_manifest_is_a_bundle_error(bundle_copy):
    (bundle_copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptFileError, match="manifest.json: not valid JSON"):
        Recommender.load(bundle_copy)


@pytest.mark.parametrize("key, value", [
    ("format_version", -1), ("format_version", 0), ("files", []), ("inference", "x"),
    ("has_categories", "yes"), ("files", {"../../etc/passwd": {"sha256": "", "bytes": 1}}),
])
def test_manifest_types_fail_at_load(bundle_copy, key, value):
    _edit_manifest(bundle_copy, lambda m: m.__setitem__(key, value))
    with pytest.raises(CorruptFileError, match="manifest.json"):
        Recommender.load(bundle_copy, verify=False)


def _encoder_short_by_one(d: int, data_dependent: bool) -> bytes:
    """query = mean(item_emb)[:d-1]; the slice end is a constant (ONNX Runtime infers the
    [1, d-1] shape at load) or computed from the items (known only when it runs)."""
    from onnx import TensorProto, helper

    const = [helper.make_tensor("s", TensorProto.INT64, [1], [0]),
             helper.make_tensor("a", TensorProto.INT64, [1], [1]),
             helper.make_tensor("z", TensorProto.INT64, [1], [0]),
             helper.make_tensor("dm1", TensorProto.INT64, [1], [d - 1])]
    nodes = [helper.make_node("ReduceMean", ["item_emb"], ["m"], axes=[1], keepdims=0)]
    if data_dependent:  # e = min(items) * 0 + (d - 1)
        nodes += [helper.make_node("ReduceMin", ["items"], ["mn"], axes=[1], keepdims=0),
                  helper.make_node("Mul", ["mn", "z"], ["zero"]),
                  helper.make_node("Add", ["zero", "dm1"], ["e"])]
    else:
        nodes += [helper.make_node("Identity", ["dm1"], ["e"])]
    nodes += [helper.make_node("Slice", ["m", "s", "e", "a"], ["query"])]
    graph = helper.make_graph(
        nodes, "short",
        [helper.make_tensor_value_info("items", TensorProto.INT64, [1, "L"]),
         helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, [1, "L", d])],
        # declared [1, d] when the end is data-dependent (only a run shows it is d - 1)
        [helper.make_tensor_value_info("query", TensorProto.FLOAT,
                                       [1, d] if data_dependent else None)], const)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_encoder_output_of_another_shape_is_refused(bundle_copy):
    d = json.loads((bundle_copy / "manifest.json").read_text())["dim"]
    ids = np.load(bundle_copy / "item_ids.npy")
    (bundle_copy / "encoder.onnx").write_bytes(_encoder_short_by_one(d, False))
    _resign(bundle_copy, "encoder.onnx")
    with pytest.raises(CorruptFileError, match=rf"encoder.onnx: encoder output 'query' \(kind "
                                               rf"query\) must be float32 \[1, {d}\]"):
        Recommender.load(bundle_copy)
    (bundle_copy / "encoder.onnx").write_bytes(_encoder_short_by_one(d, True))
    _resign(bundle_copy, "encoder.onnx")
    rec = Recommender.load(bundle_copy)  # declared right: wrong only when it runs
    for backend_rec in (rec, Recommender.load(bundle_copy, backend="numpy")):
        with pytest.raises(CorruptFileError, match=rf"encoder.onnx: the encoder returned "
                                                   rf"float32 \(1, {d - 1}\) for 'query'"):
            backend_rec.recommend(ids[:3].tolist())


@pytest.mark.parametrize("backend", available_backends())
def test_kernels_refuse_a_query_that_does_not_fit_the_catalog(small_bundle, backend):
    from sessrec_sdk.kernels import CatalogArrays, KernelQuery, Scratch, make_kernel

    b = Recommender.load(small_bundle).bundle
    n, d = b.item_matrix.shape
    q = KernelQuery(seeds=np.array([1, 2], np.int32), query=np.ones(d, np.float32), k=5,
                    n_use=4, exclude_seeds=True, excluded=np.empty(0, np.int32), allowed=None,
                    allowed_cats=None)
    with_cats = make_kernel(CatalogArrays(b.item_matrix, b.neighbors, b.item_category, None),
                            backend)
    no_cats = make_kernel(CatalogArrays(b.item_matrix, b.neighbors, None, None), backend)
    bad = [(with_cats, {"query": np.ones(d + 1, np.float32)}, "query must be float32"),
           (with_cats, {"query": np.ones(d - 1, np.float32)}, "query must be float32"),
           (with_cats, {"query": np.ones(d, np.float64)}, "query must be float32"),
           (with_cats, {"n_use": b.neighbors.shape[1] + 1}, "n_use|out of range"),
           (no_cats, {"allowed_cats": np.array([0], np.int32)}, "categor")]
    for kernel, change, match in bad:
        with pytest.raises(ValueError, match=match):
            kernel.top_k(q._replace(**change), Scratch(n))
    assert len(with_cats.top_k(q, Scratch(n))[0]) == 5


def test_query_width_must_be_declared_as_a_number(bundle_copy):
    """An output declared [1, "N"] (e.g. growing with the session) could match dim for one
    session length and not another: refused at load."""
    from onnx import TensorProto, helper

    d = json.loads((bundle_copy / "manifest.json").read_text())["dim"]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["item_emb"], ["query"], axes=[1], keepdims=0)],
        "symbolic",
        [helper.make_tensor_value_info("items", TensorProto.INT64, [1, "L"]),
         helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, [1, "L", "D"])],
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, [1, "D"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (bundle_copy / "encoder.onnx").write_bytes(model.SerializeToString())
    _resign(bundle_copy, "encoder.onnx")
    with pytest.raises(CorruptFileError, match=rf"encoder output 'query' \(kind query\) must "
                                               rf"be float32 \[1, {d}\], it is declared "
                                               r"tensor\(float\) \[1, 'D'\]"):
        Recommender.load(bundle_copy)


def test_session_length_true_is_not_one(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["inference"].__setitem__("max_session_length",
                                                                     True))
    with pytest.raises(CorruptFileError, match="max_session_length"):
        Recommender.load(bundle_copy)


def test_numba_load_survives_a_bad_neighbor_in_row_zero(bundle_copy):
    path = bundle_copy / "neighbors.npy"
    nb = np.load(path)
    nb[0, 0] = 10**9
    np.save(path, nb)
    rec = Recommender.load(bundle_copy, verify=False, backend="numba")  # warm-up is fine
    ids = np.load(bundle_copy / "item_ids.npy")
    with pytest.raises(CorruptFileError, match="neighbors.npy: row 0"):
        rec.recommend([ids[0]])
