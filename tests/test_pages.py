"""Page cache and page tables (sessrec_sdk/pages.py): prefault, warm, drop after write."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from export_tools.synthetic import build_synthetic_bundle
from sessrec_sdk import Recommender, cli, pages
from sessrec_sdk.bundle import ITEM_MATRIX

linux_only = pytest.mark.skipif(not Path("/proc/self/smaps").exists(),
                                reason="needs /proc/self/smaps")


@pytest.fixture(scope="module")
def mid_bundle(tmp_path_factory):
    """Big enough (5 MB matrix) that first-touch mapping covers a small part of it."""
    return build_synthetic_bundle(tmp_path_factory.mktemp("pages") / "b", n_items=40_000,
                                  dim=32, neighbors=10, seed=3)


@linux_only
def test_prefault_maps_every_page_and_answers_alike(mid_bundle):
    lazy = Recommender.load(mid_bundle, verify=False)  # verify would read every array
    eager = Recommender.load(mid_bundle, verify=False, prefault=True)
    m_lazy = lazy._served.bundle.item_matrix
    m_eager = eager._served.bundle.item_matrix
    # nothing of the lazy matrix has been read yet; all of the prefaulted one is mapped
    assert pages._smaps_kib(m_lazy.ctypes.data, "Rss") * 1024 < m_lazy.nbytes / 2
    assert pages._smaps_kib(m_eager.ctypes.data, "Rss") * 1024 >= m_eager.nbytes
    session = lazy.item_ids[[5, 500, 30_000]].tolist()
    a, b = lazy.recommend(session, k=10), eager.recommend(session, k=10)
    assert np.array_equal(a.item_ids, b.item_ids) and np.array_equal(a.scores, b.scores)


def test_reload_takes_prefault(small_bundle, small_ids):
    rec = Recommender.load(small_bundle)
    before = rec.recommend(small_ids[:3].tolist(), k=5)
    rec.reload(small_bundle, prefault=True)
    after = rec.recommend(small_ids[:3].tolist(), k=5)
    assert np.array_equal(before.item_ids, after.item_ids)


@linux_only
def test_prefault_skips_missing_and_empty_arrays_and_maps_the_others(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(400_000, dtype=np.int64))  # 3.2 MB
    pages.drop_cached(path)
    arr = np.load(path, mmap_mode="r")
    assert pages._smaps_kib(arr.ctypes.data, "Rss") * 1024 < arr.nbytes / 2  # nothing read
    assert pages.prefault([None, np.empty(0, np.float32), arr]) is None  # no error on those
    assert pages._smaps_kib(arr.ctypes.data, "Rss") * 1024 >= arr.nbytes  # every page mapped
    np.testing.assert_array_equal(arr[::999], np.arange(0, 400_000, 999))  # content intact


def test_bundle_arrays_lists_each_mapping_once(small_bundle):
    b = Recommender.load(small_bundle)._served.bundle
    arrays = b.arrays()
    assert len({id(a) for a in arrays}) == len(arrays)
    assert any(a is b.item_matrix for a in arrays) and any(a is b.ids.order for a in arrays)
    # the input embedding is the item matrix itself in this bundle: listed once
    assert b.input_embedding is b.item_matrix


def test_warm_reads_every_file_and_leaves_the_bundle_valid(small_bundle):
    report = list(pages.warm(small_bundle))
    files = sorted(p.name for p in Path(small_bundle).iterdir() if p.is_file())
    assert [w.name for w in report] == files
    assert all(w.bytes == (Path(small_bundle) / w.name).stat().st_size for w in report)
    # files below HUGE_PAGE_MIN_FILE are only read: never dropped, no share reported
    assert all(not w.dropped and w.huge_page_share is None for w in report)
    Recommender.load(small_bundle, verify=True)  # every sha256 still matches


@linux_only
def test_huge_page_share_is_a_fraction(small_bundle):
    share = pages.huge_page_share(Path(small_bundle) / ITEM_MATRIX)
    assert share is not None and 0.0 <= share <= 1.0


def test_drop_cached_keeps_the_content(tmp_path):
    f = tmp_path / "x.bin"
    data = np.random.default_rng(0).bytes(1 << 16)
    f.write_bytes(data)
    pages.drop_cached(f)
    assert f.read_bytes() == data


def test_cli_warm(small_bundle, capsys, tmp_path):
    assert cli.main(["warm", str(small_bundle)]) == 0
    out = capsys.readouterr().out
    assert ITEM_MATRIX in out and "warmed in" in out
    assert cli.main(["warm", str(tmp_path)]) == 2
    assert "not a sessrec bundle" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="page sizes are Linux's")
def test_huge_page_constants():
    assert pages.HUGE_PAGE == 2 * 2**20 and pages.HUGE_PAGE_MIN_FILE >= 2 * pages.HUGE_PAGE
