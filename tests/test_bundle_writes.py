"""The bundle writer's helpers, each on its own: the atomic swap of a finished bundle into
place (``replace_dir``/``_exchange``), ``update_manifest``'s file, the category index at
its edges, and the arrays ``Recommender.load(prefault=True)`` maps. Seconds, synthetic
bundles only (these paths are also in the mutation subset, scripts/mutation.sh)."""
from __future__ import annotations

import ctypes
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from export_tools.synthetic import build_synthetic_sknn_bundle
from sessrec_sdk import Recommender, bundle, pages
from sessrec_sdk.bundle import category_index, read_bundle, replace_dir, update_manifest
from sessrec_sdk.errors import CorruptFileError


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "which").write_text("a")
    (b / "which").write_text("b")
    return a, b


@pytest.mark.parametrize("relative", [False, True])
def test_exchange_swaps_two_directories(tmp_path, monkeypatch, relative):
    """On Linux both paths are swapped in one call, relative ones against the working
    directory too; a failed call (a path missing) is False and moves nothing."""
    a, b = _dirs(tmp_path)
    if relative:
        monkeypatch.chdir(tmp_path)
        a, b = Path("a"), Path("b")
    assert bundle._exchange(a, b) is True
    assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"
    assert bundle._exchange(a, tmp_path / "missing") is False
    assert (a / "which").read_text() == "b"


def test_exchange_is_false_where_unsupported(tmp_path, monkeypatch):
    """Elsewhere than Linux, or with a C library without renameat2, nothing is swapped
    (replace_dir then renames the old bundle aside)."""
    a, b = _dirs(tmp_path)
    monkeypatch.setattr(bundle.platform, "system", lambda: "Darwin")
    assert bundle._exchange(a, b) is False
    monkeypatch.undo()

    class NoRenameat2:
        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoRenameat2)
    assert bundle._exchange(a, b) is False
    assert (a / "which").read_text() == "a" and (b / "which").read_text() == "b"


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir_with_and_without_the_swap(tmp_path, monkeypatch, exchange):
    """The new bundle ends at ``out`` and nothing else is left beside it, by the swap or
    by the two renames."""
    new, out = _dirs(tmp_path)
    if not exchange:
        monkeypatch.setattr(bundle, "_exchange", lambda a, b: False)
    replace_dir(new, out)
    assert (out / "which").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    replace_dir(fresh, tmp_path / "nothing-there")  # no bundle to replace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "nothing-there"]


def test_update_manifest_writes_the_writers_format(small_bundle, tmp_path):
    """No change rewrites the manifest byte for byte as write_bundle wrote it (2-space
    indent, final newline, mode 0644); a change keeps that format."""
    import shutil

    path = tmp_path / "b"
    shutil.copytree(small_bundle, path)
    mpath = path / "manifest.json"
    mpath.chmod(0o600)
    before = mpath.read_bytes()
    manifest = update_manifest(path)
    assert mpath.read_bytes() == before
    assert stat.S_IMODE(mpath.stat().st_mode) == 0o644
    assert manifest == json.loads(before)
    manifest = update_manifest(path, data_stats={"sessions": 3, "note": "naïve"})
    text = mpath.read_text(encoding="utf-8")
    assert text == json.dumps(manifest, indent=2) + "\n"
    assert json.loads(text)["data_stats"]["note"] == "naïve"
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in small_bundle.iterdir())


def test_update_manifest_that_fails_to_write_leaves_no_file(small_bundle, tmp_path,
                                                            monkeypatch):
    """A write that fails before or after the temporary file exists raises its own error,
    leaves the manifest as it was and no temporary file."""
    import shutil

    path = tmp_path / "b"
    shutil.copytree(small_bundle, path)
    before = (path / "manifest.json").read_bytes()

    def no_space(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)  # before the file exists
    with pytest.raises(OSError, match="No space left"):
        update_manifest(path, data_stats={"x": 1})
    monkeypatch.undo()

    def refused(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refused)  # after
    with pytest.raises(PermissionError):
        update_manifest(path, data_stats={"x": 1})
    monkeypatch.undo()
    assert (path / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in small_bundle.iterdir())


def test_category_index_edges():
    """No categorized item: one empty category (C = 1); an empty catalog too; a head
    exactly as wide as the data is fine; a narrower one is refused, naming the largest
    category."""
    pop = np.array([1, 0, 2], np.int32)
    indptr, indices = category_index(np.full(3, -1, np.int32), pop)
    assert indptr.tolist() == [0, 0] and indices.size == 0
    indptr, indices = category_index(np.empty(0, np.int32), np.empty(0, np.int32))
    assert indptr.tolist() == [0, 0] and indices.size == 0
    cats = np.array([0, 2, 2], np.int32)
    indptr, indices = category_index(cats, pop, n_categories=3)
    assert indptr.tolist() == [0, 1, 1, 3] and indices.tolist() == [0, 1, 2]
    with pytest.raises(ValueError) as err:
        category_index(cats, pop, n_categories=2)
    assert str(err.value) == "n_categories=2 but item_category reaches 2"


def test_prefault_maps_every_array_of_the_bundle(tmp_path, monkeypatch):
    """Recommender.load(prefault=True) reads every memory-mapped array, the session
    index's too."""
    path = build_synthetic_sknn_bundle(tmp_path / "knn", 200, 500, sample=20, neighbors=10,
                                       seed=1)
    seen: list[list[np.ndarray]] = []
    real = pages.prefault
    monkeypatch.setattr(pages, "prefault", lambda arrays: (seen.append(list(arrays)),
                                                          real(seen[-1]))[1])
    Recommender.load(path, prefault=True)
    b = read_bundle(path)
    want = {(a.shape, a.dtype.str, a.tobytes()) for a in b.arrays()}
    assert len(seen) == 1
    assert {(a.shape, a.dtype.str, a.tobytes()) for a in seen[0]} == want
    index = [(a.shape, a.dtype.str, a.tobytes()) for a in b.session_index.arrays()]
    assert all(x in want for x in index) and len(index) == 5
    with pytest.raises(CorruptFileError):  # the check of update_manifest is load's
        update_manifest(path, scorer="nope")
