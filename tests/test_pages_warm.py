"""warm()'s decisions, huge_page_share's arithmetic, drop_cached's call and the smaps
parser (sessrec_sdk/pages.py), with the OS replaced by fakes so each edge is checked
exactly on any machine; and the bounds of Limits (sessrec_sdk/limits.py).

Mutants of these functions that no test can kill: _smaps_kib opened with the locale's
encoding (UTF-8 or any other, ``errors="replace"`` decodes every byte and the fields read
are ASCII) or with "ASCII" (the same codec), ``inside = None`` (falsy like False);
huge_page_share's file opened in text mode (only its descriptor is used); prefault's
``reshape(-2)`` (numpy takes any negative size as "the rest").
"""
from __future__ import annotations

import builtins
import os
import re

import pytest

from sessrec_sdk import Limits, pages

# two adjacent mappings, a gap, two more; the first and last carry non-ASCII paths (UTF-8,
# then bytes that are not UTF-8), as files named by a user can
SMAPS = (
    "7f0000000000-7f0000200000 r--p 00000000 fe:00 11   /data/caf\u00e9/items.npy\n"
    "Size:               2048 kB\n"
    "Rss:                2048 kB\n"
    "Pss_Dirty:             7 kB\n"
    "Pss:                1024 kB\n"
    "FilePmdMapped:      2048 kB\n"
    "7f0000200000-7f0000201000 r--p 00000000 fe:00 12   /data/ids.npy\n"
    "Size:                  4 kB\n"
    "Rss:                   4 kB\n"
    "Pss:                   2 kB\n"
    "FilePmdMapped:         0 kB\n"
    "7f0000400000-7f0000402000 rw-p 00000000 00:00 0 \n"
    "Size:                  8 kB\n"
    "Rss:                   8 kB\n"
    "Pss:                   8 kB\n"
    "FilePmdMapped:         0 kB\n"
).encode("utf-8") + b"7f0000500000-7f0000501000 r--p 00000000 fe:00 13   /x/\xe9\xff.bin\n" \
    b"Rss:                  12 kB\n"


@pytest.fixture
def fake_smaps(tmp_path, monkeypatch):
    """Point _smaps_kib's open() at a file holding ``data``, read with the very encoding
    arguments _smaps_kib passes."""
    def use(data: bytes):
        path = tmp_path / "smaps"
        path.write_bytes(data)

        def fake_open(name, *args, **kwargs):
            assert name == "/proc/self/smaps"
            return builtins.open(path, *args, **kwargs)

        monkeypatch.setattr(pages, "open", fake_open, raising=False)
    return use


# ------------------------------------------------------------------ _smaps_kib

def test_smaps_field_of_the_mapping_holding_the_address(fake_smaps):
    """The start of a mapping is inside it, its end is not: at the boundary of two
    adjacent mappings the second one answers."""
    fake_smaps(SMAPS)
    assert pages._smaps_kib(0x7F0000000000, "Rss") == 2048
    assert pages._smaps_kib(0x7F00001FFFFF, "Rss") == 2048
    assert pages._smaps_kib(0x7F0000200000, "Rss") == 4
    assert pages._smaps_kib(0x7F0000200000, "FilePmdMapped") == 0
    assert pages._smaps_kib(0x7F0000401000, "Pss") == 8


def test_smaps_field_name_matches_whole(fake_smaps):
    """"Pss" is not "Pss_Dirty", which comes first in the mapping."""
    fake_smaps(SMAPS)
    assert pages._smaps_kib(0x7F0000000010, "Pss") == 1024


def test_smaps_address_outside_every_mapping(fake_smaps):
    """An address in a gap between mappings, past the last one, or below the first:
    None, not the field of a neighbouring mapping."""
    fake_smaps(SMAPS)
    assert pages._smaps_kib(0x7F0000300000, "Rss") is None  # gap after the 2nd mapping
    assert pages._smaps_kib(0x7F0000600000, "Rss") is None  # past the last
    assert pages._smaps_kib(0x1000, "Rss") is None          # below the first
    assert pages._smaps_kib(0x7F0000000000, "NoSuchField") is None


def test_smaps_lines_before_the_first_range_belong_to_no_mapping(fake_smaps):
    fake_smaps(b"Rss:                 99 kB\n" + SMAPS)
    assert pages._smaps_kib(0x7F0000300000, "Rss") is None
    assert pages._smaps_kib(0x7F0000200000, "Rss") == 4


def test_smaps_reads_past_paths_that_are_not_ascii(fake_smaps):
    """Mapped file names are arbitrary bytes (UTF-8 or not): they must not break the
    parse of this or any later mapping."""
    fake_smaps(SMAPS)
    assert pages._smaps_kib(0x7F0000401000, "Rss") == 8
    assert pages._smaps_kib(0x7F0000500000, "Rss") == 12


def test_smaps_unreadable_is_none(monkeypatch):
    def no_smaps(*args, **kwargs):
        raise FileNotFoundError("/proc/self/smaps")

    monkeypatch.setattr(pages, "open", no_smaps, raising=False)
    assert pages._smaps_kib(0x7F0000000000, "Rss") is None


# ------------------------------------------------------------------ huge_page_share

def _huge_kib(monkeypatch, kib):
    """Make _smaps_kib report ``kib`` KiB of FilePmdMapped; returns the calls seen."""
    calls = []

    def fake(addr, field):
        calls.append(field)
        return kib

    monkeypatch.setattr(pages, "_smaps_kib", fake)
    return calls


def test_huge_page_share_is_huge_bytes_over_file_bytes(tmp_path, monkeypatch):
    """4 MiB in 2 MB pages of an 8 MiB file: half of it (the whole file is mapped)."""
    f = tmp_path / "m.bin"
    f.write_bytes(bytes(8 * 2**20))
    calls = _huge_kib(monkeypatch, 4096)
    assert pages.huge_page_share(f) == 0.5
    assert calls == ["FilePmdMapped"]


def test_huge_page_share_is_capped_at_one(tmp_path, monkeypatch):
    f = tmp_path / "m.bin"
    f.write_bytes(bytes(3 * 2**20))
    _huge_kib(monkeypatch, 4096)  # more than the file: a share is at most 1
    assert pages.huge_page_share(f) == 1.0


def test_huge_page_share_none_when_smaps_says_nothing(tmp_path, monkeypatch):
    f = tmp_path / "m.bin"
    f.write_bytes(bytes(2 * 2**20))
    _huge_kib(monkeypatch, None)
    assert pages.huge_page_share(f) is None


def test_huge_page_share_of_an_empty_file_is_none(tmp_path, monkeypatch):
    """An empty file cannot be mapped: no share, no error."""
    f = tmp_path / "empty.bin"
    f.write_bytes(b"")
    calls = _huge_kib(monkeypatch, 0)
    assert pages.huge_page_share(f) is None
    assert calls == []


def test_huge_page_share_of_a_one_byte_file(tmp_path, monkeypatch):
    f = tmp_path / "one.bin"
    f.write_bytes(b"x")
    _huge_kib(monkeypatch, 0)
    assert pages.huge_page_share(f) == 0.0


# ------------------------------------------------------------------ drop_cached

def test_drop_cached_advises_dontneed_on_the_whole_file(tmp_path, monkeypatch):
    """offset 0, length 0: the whole file, whatever its size."""
    f = tmp_path / "x.bin"
    f.write_bytes(bytes(3 * 4096 + 5))
    real = os.posix_fadvise
    seen = []

    def spy(fd, offset, length, advice):
        seen.append((os.fstat(fd).st_ino, offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    pages.drop_cached(f)
    assert seen == [(f.stat().st_ino, 0, 0, os.POSIX_FADV_DONTNEED)]


def test_drop_cached_without_posix_fadvise_does_nothing(tmp_path, monkeypatch):
    """Where the OS has no posix_fadvise the file is not even opened (a missing one
    raises nothing)."""
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    assert pages.drop_cached(tmp_path / "missing.bin") is None


# ------------------------------------------------------------------ warm

class FakeOS:
    """huge_page_share answers from ``shares[name]`` (one value per call, the last one
    repeated); drop_cached is recorded."""

    def __init__(self, monkeypatch, shares):
        self.shares = {k: list(v) for k, v in shares.items()}
        self.share_calls, self.dropped = [], []
        monkeypatch.setattr(pages, "huge_page_share", self.share)
        monkeypatch.setattr(pages, "drop_cached", self.drop)

    def share(self, path):
        self.share_calls.append(path.name)
        values = self.shares[path.name]
        return values.pop(0) if len(values) > 1 else values[0]

    def drop(self, path):
        self.dropped.append(path.name)


def _sized(directory, name, size):
    """A sparse file of ``size`` bytes (nothing is written)."""
    path = directory / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


MIN = pages.HUGE_PAGE_MIN_FILE


def test_warm_drops_a_large_file_in_small_pages_and_reports_the_new_share(tmp_path,
                                                                        monkeypatch):
    _sized(tmp_path, "items.npy", MIN)  # exactly the threshold: large
    fake = FakeOS(monkeypatch, {"items.npy": [0.25, 0.9]})
    [w] = list(pages.warm(tmp_path))
    assert w == pages.Warmed("items.npy", MIN, True, 0.9)
    assert w.dropped is True
    assert fake.dropped == ["items.npy"]
    assert fake.share_calls == ["items.npy", "items.npy"]  # read, dropped, read again


def test_warm_leaves_a_large_file_already_in_huge_pages(tmp_path, monkeypatch):
    """At HUGE_ENOUGH the file is good enough: not dropped, its share reported."""
    _sized(tmp_path, "items.npy", MIN + 1)
    fake = FakeOS(monkeypatch, {"items.npy": [pages.HUGE_ENOUGH]})
    [w] = list(pages.warm(tmp_path))
    assert w == pages.Warmed("items.npy", MIN + 1, False, pages.HUGE_ENOUGH)
    assert w.dropped is False
    assert fake.dropped == [] and fake.share_calls == ["items.npy"]


def test_warm_drops_just_below_huge_enough(tmp_path, monkeypatch):
    _sized(tmp_path, "items.npy", MIN)
    below = pages.HUGE_ENOUGH - 1e-9
    fake = FakeOS(monkeypatch, {"items.npy": [below, below]})
    [w] = list(pages.warm(tmp_path))
    assert w == pages.Warmed("items.npy", MIN, True, below)
    assert fake.dropped == ["items.npy"]


def test_warm_only_reads_a_file_below_the_size_threshold(tmp_path, monkeypatch):
    """One byte under HUGE_PAGE_MIN_FILE: read, never dropped, no share reported."""
    _sized(tmp_path, "items.npy", MIN - 1)
    fake = FakeOS(monkeypatch, {"items.npy": [0.0]})
    [w] = list(pages.warm(tmp_path))
    assert w == pages.Warmed("items.npy", MIN - 1, False, None)
    assert w.dropped is False
    assert fake.dropped == [] and fake.share_calls == ["items.npy"]


def test_warm_leaves_a_large_file_when_the_os_gives_no_share(tmp_path, monkeypatch):
    _sized(tmp_path, "items.npy", MIN)
    fake = FakeOS(monkeypatch, {"items.npy": [None]})
    [w] = list(pages.warm(tmp_path))
    assert w == pages.Warmed("items.npy", MIN, False, None)
    assert fake.dropped == []


def test_warm_skips_directories_and_goes_on(tmp_path, monkeypatch):
    """A subdirectory sorted before the files is passed over, not the end of the walk."""
    (tmp_path / "a_dir").mkdir()
    _sized(tmp_path, "b.json", 10)
    _sized(tmp_path, "items.npy", MIN)
    (tmp_path / "m_dir").mkdir()
    _sized(tmp_path, "z.npy", 3)
    fake = FakeOS(monkeypatch, {"b.json": [None], "items.npy": [0.5, 0.6], "z.npy": [None]})
    report = list(pages.warm(tmp_path))
    assert report == [pages.Warmed("b.json", 10, False, None),
                      pages.Warmed("items.npy", MIN, True, 0.6),
                      pages.Warmed("z.npy", 3, False, None)]
    assert fake.dropped == ["items.npy"]


# ------------------------------------------------------------------ Limits

def test_limits_accept_one():
    """1 is the smallest bound and a legal one."""
    lim = Limits(session_history=1, rule_ids=1)
    assert (lim.session_history, lim.rule_ids) == (1, 1)


@pytest.mark.parametrize("name", ["session_history", "rule_ids"])
@pytest.mark.parametrize("value", [0, -3, True, False, 2.5, "5", None])
def test_limits_refuse_what_is_not_an_int_of_at_least_one(name, value):
    message = f"Limits.{name} must be an int >= 1, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Limits(**{name: value})
