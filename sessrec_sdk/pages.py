"""The operating-system side of a memory-mapped bundle: 2 MB pages and prefaulting.

A recommend() call reads a few hundred scattered rows of a large item matrix. Mapped in
4 KB pages, every row costs a TLB miss, and those misses evict the translations the rest
of the call (Python, ONNX Runtime) needs. Mapped in 2 MB pages, a 1 GB matrix takes 512
TLB entries. Linux maps a file in 2 MB pages when its page cache holds 2 MB folios. Recent
kernels on ext4 or xfs create those when the file is *read*. Pages left in the cache by a
*write* (an export, a ``cp``) stay 4 KB until they are evicted. So:

- ``write_bundle`` flushes each file it writes and drops it from the page cache
  (:func:`drop_cached`). The first server that loads the bundle reads it fresh.
- ``sessrec warm BUNDLE`` (:func:`warm`) fixes a bundle that was copied into place:
  it drops the 4 KB pages of files no process has mapped and reads them back.
- ``Recommender.load(path, prefault=True)`` (:func:`prefault`) maps every page at load,
  like annoy's ``prefault``. Early requests then pay no page faults. The cost: RSS counts
  the whole bundle (shared page cache, not private memory).

All of this is best effort. Where the OS lacks a feature, nothing fails; answers are the
same either way, only speed changes.
"""
from __future__ import annotations

import mmap
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HUGE_PAGE = 2 * 2**20
# warm() only reads smaller files: the kernel ramps its readahead up to 2 MB folios over
# the first megabytes of a file, so a file of a few MB stays in small pages anyway (seen
# on 6.18/ext4), and a request touches only a few pages of those files
HUGE_PAGE_MIN_FILE = 64 * 2**20
HUGE_ENOUGH = 0.85  # warm() leaves a file alone once this share of it is in 2 MB pages

_SMAPS_RANGE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")


def prefault(arrays: Iterable[np.ndarray | None]) -> None:
    """Map every page of ``arrays`` into this process now: one read per page."""
    for arr in arrays:
        if arr is not None and arr.size:
            int(arr.reshape(-1).view(np.uint8)[::mmap.PAGESIZE].max())


def drop_cached(path: str | os.PathLike) -> None:
    """Write a file's dirty pages to disk, then drop its pages from the page cache.

    Pages that a process has mapped stay. Does nothing where ``posix_fadvise`` is missing.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def huge_page_share(path: str | os.PathLike) -> float | None:
    """The share of ``path`` this process maps in 2 MB pages, after reading all of it
    through a fresh mapping (which also puts it in the page cache).

    None if the OS does not say (no ``/proc/self/smaps``).
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        view = np.frombuffer(mm, dtype=np.uint8)
        int(view[::mmap.PAGESIZE].max())
        huge = _smaps_kib(view.ctypes.data, "FilePmdMapped")
        size = view.size
        del view  # the mapping cannot close while a view exports it
    finally:
        mm.close()
    return None if huge is None else min(1.0, huge * 1024 / size)


@dataclass(frozen=True)
class Warmed:
    """What :func:`warm` did to one file."""

    name: str
    bytes: int
    dropped: bool               # its 4 KB pages were dropped and it was read again
    huge_page_share: float | None


def warm(bundle: str | os.PathLike) -> Iterator[Warmed]:
    """Read every file of ``bundle`` into the page cache, in 2 MB pages where possible;
    yields a :class:`Warmed` as each file is done (a large bundle read from disk takes a
    while).

    A large file that comes back mostly in 4 KB pages is dropped from the cache and read
    again. That works only for pages no running process has mapped, so run it before the
    servers start. Small files are only read.
    """
    for f in sorted(Path(bundle).iterdir()):
        if not f.is_file():
            continue
        size = f.stat().st_size
        share = huge_page_share(f)
        dropped = False
        if size >= HUGE_PAGE_MIN_FILE and share is not None and share < HUGE_ENOUGH:
            drop_cached(f)
            share, dropped = huge_page_share(f), True
        yield Warmed(f.name, size, dropped, share if size >= HUGE_PAGE_MIN_FILE else None)


def _smaps_kib(addr: int, field: str) -> int | None:
    """``field`` (in KiB) of the mapping of this process that contains ``addr``."""
    try:
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
            inside = False
            for line in f:
                m = _SMAPS_RANGE.match(line)
                if m:
                    inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
                elif inside and line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
