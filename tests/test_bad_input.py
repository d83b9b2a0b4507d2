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
