"""What ``write_bundle`` writes and refuses, on bundles of a few items (milliseconds each):
the file names and dtypes, the manifest word for word (defaults filled in, flags, format
version, checksums, creator), the hidden sibling temp dir whose files are synced and
dropped from the page cache before the swap, the refusals of bad arguments word for word,
overwrite, and failed writes and failed clean-ups. The encoder is opaque bytes: the
writer copies it and the reader does not parse it. In the mutation subset's reach
(scripts/mutation.sh) as tests/test_bundle_writes.py is."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export_tools.synthetic import synthetic_session_index
from sessrec_sdk import __version__, bundle
from sessrec_sdk.bundle import (
    DEFAULT_ENCODER_SPEC,
    OUTPUT_KINDS,
    category_index,
    read_bundle,
    update_manifest,
    write_bundle,
)
from sessrec_sdk.errors import CorruptFileError
from sessrec_sdk.ids import INT64_MIN

ENCODER_BYTES = b"an opaque encoder"
N, D, K = 6, 4, 2
INFERENCE = {"max_session_length": 3, "session_filter": "none"}
CATEGORY_IO = {"inputs": DEFAULT_ENCODER_SPEC["inputs"],
               "outputs": [{"name": "query", "kind": "query"},
                           {"name": "cats", "kind": "category_scores"}]}


def _args(**changes) -> dict:
    """The arguments of a 6-item encoder bundle, the integer ones int64 and the float ones
    float64 where the bundle stores int32 and float32 (the writer converts them)."""
    rng = np.random.default_rng(3)
    args = dict(
        encoder=ENCODER_BYTES,
        item_matrix=rng.uniform(-1, 1, (N, D)).astype(np.float32),
        neighbors=np.array([[1, 2], [0, -1], [3, 0], [2, 5], [5, -1], [4, 3]], np.int64),
        item_ids=np.array([50, 10, 40, 20, 60, 30], np.int64),
        popularity=np.array([3, 0, 5, 1, 2, 4], np.int64),
        popularity_scores=np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1]),
        model={"kind": "test", "config": {"seed": 3}},
        inference=INFERENCE,
        defaults={"category_filter": "none", "exclude_session_items": True},
    )
    args.update(changes)
    return args


def _knn_args(**changes) -> dict:
    """A session-kNN bundle (no encoder) of the same 6 items over 4 sessions."""
    index, _ = synthetic_session_index(N, 4, sample=3, seed=0)
    args = _args(encoder=None, item_matrix=None, neighbors=None, session_index=index,
                 sknn={"n_sessions": 4, "sample": 3}, defaults={})
    args.update(changes)
    return args


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text(encoding="utf-8"))


def test_written_files_and_manifest_word_for_word(tmp_path):
    """Every optional array given: each file under its name in its bundle dtype, and a
    manifest that states exactly the shapes, flags, defaults filled in, the caller's data
    stats and tool versions, and each file's sha256 and size; written with a 2-space
    indent and a final newline, in a directory servers can read (0755)."""
    rng = np.random.default_rng(4)
    embedding = rng.uniform(-1, 1, (N, 3)).astype(np.float16)
    stats = {"sessions": 3, "note": "naïve"}
    out = write_bundle(tmp_path / "b", **_args(
        item_category=np.array([0, 1, 0, 2, -1, 1], np.int64),
        item_bias=np.linspace(-0.5, 0.5, N), input_embedding=embedding,
        defaults={"category_filter": "last", "exclude_session_items": True},
        data_stats=stats, tool_versions={"torch": "9.9"}, row_order="locality"))
    assert out == tmp_path / "b"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    arrays = {"item_matrix.npy": "float32", "neighbors.npy": "int32",
              "popularity.npy": "int32", "popularity_scores.npy": "float32",
              "item_ids.npy": "int64", "item_ids_sorted.npy": "int64",
              "item_ids_order.npy": "int32", "item_category.npy": "int32",
              "item_bias.npy": "float32", "input_embedding.npy": "float16"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*arrays, "encoder.onnx", "manifest.json"])
    assert {name: str(np.load(out / name).dtype) for name in arrays} == arrays
    assert (out / "encoder.onnx").read_bytes() == ENCODER_BYTES
    a = _args()
    assert np.load(out / "neighbors.npy").tolist() == a["neighbors"].tolist()
    assert np.load(out / "popularity.npy").tolist() == a["popularity"].tolist()
    assert np.array_equal(np.load(out / "popularity_scores.npy"),
                          a["popularity_scores"].astype(np.float32))
    assert np.array_equal(np.load(out / "item_bias.npy"),
                          np.linspace(-0.5, 0.5, N).astype(np.float32))
    assert np.array_equal(np.load(out / "input_embedding.npy"), embedding)
    assert np.load(out / "item_ids_sorted.npy").tolist() == [10, 20, 30, 40, 50, 60]
    assert np.load(out / "item_ids_order.npy").tolist() == [1, 3, 5, 2, 0, 4]

    text = (out / "manifest.json").read_text(encoding="utf-8")
    m = json.loads(text)
    assert text == json.dumps(m, indent=2) + "\n"
    files = {name: {"sha256": _sha(out / name), "bytes": (out / name).stat().st_size}
             for name in [*arrays, "encoder.onnx"]}
    assert m == {
        "format_version": 2, "model": a["model"], "n_items": N, "dim": D, "input_dim": 3,
        "item_dtype": "float32", "neighbors_per_item": K, "row_order": "locality",
        "id_kind": "int", "has_categories": True, "has_bias": True,
        "score_transform": "dot", "encoder": DEFAULT_ENCODER_SPEC, "inference": INFERENCE,
        "defaults": {"k": 10, "candidates": "neighbors", "neighbors": K,
                     "category_filter": "last", "exclude_session_items": True},
        "data_stats": stats,
        "created_by": {"sessrec": __version__, "numpy": np.__version__,
                       "python": platform.python_version(), "torch": "9.9"},
        "files": files}
    assert read_bundle(out, verify=True).manifest == m


def test_plain_bundle_flags_and_an_encoder_file_copied(tmp_path):
    """No bias, no categories, no data stats: the flags say so and data_stats is an
    empty object; an encoder given as a path is copied byte for byte; string ids."""
    src = tmp_path / "model.onnx"
    src.write_bytes(ENCODER_BYTES)
    out = write_bundle(tmp_path / "b", **_args(
        encoder=src, item_ids=np.array(["e", "a", "d", "b", "f", "c"])))
    m = _manifest(out)
    assert (m["has_bias"], m["has_categories"], m["data_stats"]) == (False, False, {})
    assert (m["id_kind"], m["row_order"], m["input_dim"]) == ("str", "given", D)
    assert (out / "encoder.onnx").read_bytes() == ENCODER_BYTES
    assert np.load(out / "item_ids_sorted.npy").tolist() == list("abcdef")
    assert sorted(m["files"]) == sorted(
        ["encoder.onnx", "item_matrix.npy", "neighbors.npy", "popularity.npy",
         "popularity_scores.npy", "item_ids.npy", "item_ids_sorted.npy",
         "item_ids_order.npy"])


@pytest.mark.parametrize("position_weight", [None, [0.5, 1.0, 0.5]])
def test_session_knn_defaults_files_and_format(tmp_path, position_weight):
    """A bundle without an encoder: scorer "sknn", the session-kNN defaults (10 items,
    candidates from sessions, no category filter, session items kept, as many neighbor
    sessions as the sample), no encoder entries; format 3 only with a position table."""
    sknn = {"n_sessions": 4, "sample": 3}
    if position_weight is not None:
        sknn["position_weight"] = position_weight
    out = write_bundle(tmp_path / "b", **_knn_args(sknn=sknn))
    m = _manifest(out)
    assert m["defaults"] == {"k": 10, "candidates": "sessions", "category_filter": "none",
                             "exclude_session_items": False, "neighbors": 3}
    assert (m["scorer"], m["sknn"], m["format_version"]) == (
        "sknn", sknn, 2 if position_weight is None else 3)
    for key in ("encoder", "score_transform", "dim", "input_dim", "item_dtype",
                "neighbors_per_item"):
        assert key not in m
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "popularity.npy", "popularity_scores.npy", "item_ids.npy",
         "item_ids_sorted.npy", "item_ids_order.npy", *bundle.SKNN_FILES])
    given = write_bundle(tmp_path / "c", **_knn_args(
        defaults={"k": 4, "neighbors": 2, "exclude_session_items": True}))
    assert _manifest(given)["defaults"] == {
        "k": 4, "candidates": "sessions", "category_filter": "none",
        "exclude_session_items": True, "neighbors": 2}


@pytest.mark.parametrize("cats, n_categories, n_cats, top", [
    ([0, 4, 1, 2, 3, 0], None, 5, 3),   # C = largest category + 1; 3 categories by default
    ([0, 1, 1, 0, -1, 0], None, 2, 2),  # fewer categories than 3: all of them
    ([0, 1, 1, 0, -1, 0], 7, 7, 3),     # a head wider than the data
])
def test_category_head_gets_its_index_and_defaults(tmp_path, cats, n_categories, n_cats,
                                                    top):
    """An encoder with a category_scores output: the category -> items index over
    ``n_categories`` (default the largest category + 1) and the category defaults
    (min(3, C) categories, at most 5000 candidates)."""
    out = write_bundle(tmp_path / "b", **_args(
        item_category=np.array(cats, np.int64), encoder_io=CATEGORY_IO,
        n_categories=n_categories))
    m = _manifest(out)
    assert m["n_categories"] == n_cats
    assert m["defaults"] == {"k": 10, "candidates": "neighbors", "neighbors": K,
                             "categories": top, "max_candidates": 5000,
                             "category_filter": "none", "exclude_session_items": True}
    indptr, indices = category_index(np.array(cats), _args()["popularity"], n_cats)
    assert np.load(out / "category_items_indptr.npy").tolist() == indptr.tolist()
    assert np.load(out / "category_items_indices.npy").tolist() == indices.tolist()
    assert m["encoder"] == CATEGORY_IO


def _manifest_error(tmp_path: Path) -> str:
    kinds = OUTPUT_KINDS
    return (f"{tmp_path / 'b' / 'manifest.json'}: encoder.outputs must be a non-empty "
            f'list of {{"name": str, "kind": one of {kinds}}}')


TRIO = ("give encoder, item_matrix and neighbors together (or none of them for a "
        "session-kNN bundle)")
KNN = "a session-kNN bundle needs session_index and sknn"


@pytest.mark.parametrize("changes, error, message", [
    ({"row_order": "random"}, ValueError,
     "row_order must be one of ('given', 'locality'), got 'random'"),
    ({"item_ids": np.array([INT64_MIN, 1, 2, 3, 4, 5], np.int64)}, ValueError,
     "integer item ids must be greater than -2**63"),
    ({"item_ids": np.arange(N, dtype=np.float64)}, TypeError,
     "item_ids must be integers or str, got dtype float64"),
    ({"encoder": None}, ValueError, TRIO),
    ({"item_matrix": None}, ValueError, TRIO),
    ({"neighbors": None}, ValueError, TRIO),
    ({"encoder": None, "item_matrix": None}, ValueError, TRIO),
    ({"encoder": None, "neighbors": None}, ValueError, TRIO),
    ({"item_matrix": None, "neighbors": None}, ValueError, TRIO),
    ({"session_index": synthetic_session_index(N, 4, sample=3, seed=0)[0]}, ValueError,
     KNN),
    ({"sknn": {"n_sessions": 4, "sample": 3}}, ValueError, KNN),
    ({"encoder": None, "item_matrix": None, "neighbors": None}, ValueError, KNN),
    ({"encoder_io": CATEGORY_IO}, ValueError,
     "an encoder that predicts categories needs item_category"),
    ({"encoder_io": {"inputs": DEFAULT_ENCODER_SPEC["inputs"]}}, CorruptFileError,
     _manifest_error),
], ids=["row_order", "int64_min", "float_ids", "no_encoder", "no_matrix", "no_neighbors",
        "only_neighbors", "only_matrix", "only_encoder", "index_no_sknn", "sknn_no_index",
        "knn_nothing", "head_no_category", "no_outputs"])
def test_bad_arguments_are_refused_word_for_word(tmp_path, changes, error, message):
    """Each bad argument raises its own error, saying what to give, before anything is
    written."""
    if callable(message):
        message = message(tmp_path)
    with pytest.raises(error) as err:
        write_bundle(tmp_path / "b", **_args(**changes))
    assert type(err.value) is error and str(err.value) == message
    assert list(tmp_path.iterdir()) == []


def test_an_existing_path_needs_overwrite(tmp_path):
    """A second write to the same path is refused, word for word, and leaves the bundle
    there as it was; with overwrite=True it is replaced and nothing else is left."""
    out = write_bundle(tmp_path / "b", **_args())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError) as err:
        write_bundle(out, **_args(model={"kind": "new", "config": {}}))
    assert str(err.value) == f"{out} exists; pass overwrite=True to replace it"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    write_bundle(out, **_args(model={"kind": "new", "config": {}}), overwrite=True)
    assert read_bundle(out).manifest["model"] == {"kind": "new", "config": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_missing_parent_directories_are_made(tmp_path):
    out = write_bundle(tmp_path / "x" / "y" / "b", **_args())
    assert read_bundle(out).manifest["n_items"] == N


def test_files_are_synced_and_dropped_in_a_hidden_sibling(tmp_path, monkeypatch):
    """Each listed file, complete, goes through pages.drop_cached (fsync, then out of the
    page cache) once, in name order, inside a hidden temp dir beside ``out`` (same file
    system, so the swap is a rename; skipped by anything listing bundles), before the
    manifest is written; the temp dir becomes the bundle."""
    seen: list[tuple[Path, str, bool]] = []
    real = bundle.drop_cached

    def record(path):
        path = Path(path)
        seen.append((path, _sha(path), (path.parent / "manifest.json").exists()))
        real(path)

    monkeypatch.setattr(bundle, "drop_cached", record)
    out = write_bundle(tmp_path / "b", **_args(item_category=np.zeros(N, np.int32)))
    m = _manifest(out)
    assert [p.name for p, _, _ in seen] == sorted(m["files"])
    assert [sha for _, sha, _ in seen] == [m["files"][p.name]["sha256"] for p, _, _ in seen]
    assert not any(manifest_there for _, _, manifest_there in seen)
    (tmp,) = {p.parent for p, _, _ in seen}
    assert tmp.parent == tmp_path and tmp.name.startswith(".b.tmp-")
    assert not tmp.exists() and [p.name for p in tmp_path.iterdir()] == ["b"]


def _io_error(path):
    raise OSError(5, "Input/output error")


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, existing):
    """A write that fails raises its own error, removes its temp dir and leaves the bundle
    that was there (if any) as it was."""
    before = {}
    if existing:
        write_bundle(tmp_path / "b", **_args())
        before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    monkeypatch.setattr(bundle, "drop_cached", _io_error)
    with pytest.raises(OSError) as err:
        write_bundle(tmp_path / "b", **_args(model={"kind": "new", "config": {}}),
                     overwrite=True)
    assert type(err.value) is OSError and err.value.errno == 5
    assert [p.name for p in tmp_path.iterdir()] == (["b"] if existing else [])
    if existing:
        assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before


def _refuse_unlink(*args, **kwargs):
    raise PermissionError(13, "Permission denied")


def test_a_failed_write_reports_its_error_when_the_clean_up_fails_too(tmp_path,
                                                                      monkeypatch):
    """If the temp dir cannot be removed either, the caller still gets the error that
    stopped the write, not the clean-up's."""
    with monkeypatch.context() as m:
        m.setattr(bundle, "drop_cached", _io_error)
        m.setattr(os, "unlink", _refuse_unlink)
        with pytest.raises(OSError) as err:
            write_bundle(tmp_path / "b", **_args())
    assert type(err.value) is OSError and err.value.errno == 5
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("exchange", [True, False])
def test_an_old_bundle_that_cannot_be_removed_does_not_fail_the_overwrite(
        tmp_path, monkeypatch, exchange):
    """Once the new bundle is in place (swapped in, or renamed after the old one was moved
    aside), failing to delete the old one is not an error: the write returns and ``out``
    holds the new bundle."""
    out = write_bundle(tmp_path / "b", **_args())
    with monkeypatch.context() as m:
        if not exchange:
            m.setattr(bundle, "_exchange", lambda a, b: False)
        m.setattr(os, "unlink", _refuse_unlink)
        assert write_bundle(out, **_args(model={"kind": "new", "config": {}}),
                            overwrite=True) == out
    assert read_bundle(out, verify=True).manifest["model"] == {"kind": "new", "config": {}}


def test_update_manifest_reads_utf8_whatever_the_locale(tmp_path):
    """A manifest holding raw UTF-8 (as another tool may write it; the reader decodes
    UTF-8) is updated under an ASCII locale without Python's UTF-8 mode, keeping the text
    (a subprocess, as the locale is fixed at start-up)."""
    out = write_bundle(tmp_path / "b", **_args(model={"kind": "test",
                                                      "config": {"note": "naïve"}}))
    mpath = out / "manifest.json"
    m = json.loads(mpath.read_text(encoding="utf-8"))
    mpath.write_text(json.dumps(m, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_bundle(out).manifest == m
    root = str(Path(bundle.__file__).resolve().parents[1])  # the sessrec_sdk under test
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": root}
    code = ("import sys; from sessrec_sdk.bundle import update_manifest; "
            "update_manifest(sys.argv[1], data_stats={'sessions': 4})")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert read_bundle(out).manifest == {**m, "data_stats": {"sessions": 4}}
    assert update_manifest(out) == {**m, "data_stats": {"sessions": 4}}
