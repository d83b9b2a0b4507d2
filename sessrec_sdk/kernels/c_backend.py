"""The C kernel (csrc/sessrec_kernels.c) through cffi; the call releases the GIL."""
from __future__ import annotations

import numpy as np

from .._kernels import ffi, lib  # ImportError when the extension was not built
from .common import CatalogArrays, KernelQuery, NeighborRangeError, Scratch

ERR_NEIGHBOR_RANGE = -1
_EMPTY = np.empty(0, dtype=np.int32)


def _ptr(ctype: str, arr: np.ndarray | None):
    return ffi.NULL if arr is None else ffi.cast(ctype, ffi.from_buffer(arr))


class CKernel:
    """Holds cffi pointers to the catalog arrays so a call converts only per-call arrays."""

    name = "c"

    def __init__(self, cat: CatalogArrays):
        for arr in (cat.matrix, cat.neighbors, cat.categories, cat.bias):
            if arr is not None and not arr.flags.c_contiguous:
                raise ValueError("kernel arrays must be C-contiguous")
        self._cat = cat  # keeps the buffers alive
        self._matrix = ffi.cast("void *", ffi.from_buffer(cat.matrix))
        self._is_half = int(cat.matrix.dtype == np.float16)
        self._n_items, self._dim = cat.matrix.shape
        self._bias = _ptr("float *", cat.bias)
        self._neighbors = _ptr("int32_t *", cat.neighbors)
        self._width = cat.neighbors.shape[1]
        self._categories = _ptr("int32_t *", cat.categories)

    def top_k(self, q: KernelQuery, scratch: Scratch) -> tuple[np.ndarray, np.ndarray, int]:
        ptrs = scratch.c_pointers
        if ptrs is None:  # first call on this thread: pin the scratch buffers once
            ptrs = scratch.c_pointers = (
                ffi.from_buffer("uint32_t[]", scratch.seen, require_writable=True),
                ffi.from_buffer("uint32_t[]", scratch.allow_mark, require_writable=True),
                ffi.new("int32_t *"))
        seen, allow_mark, n_cand = ptrs
        k = q.k
        out_rows = np.empty(k, dtype=np.int32)
        out_scores = np.empty(k, dtype=np.float32)
        cats = _EMPTY if q.allowed_cats is None else q.allowed_cats
        allowed = _EMPTY if q.allowed is None else q.allowed
        n = lib.sr_top_k(
            self._matrix, self._is_half, self._n_items, self._dim, self._bias,
            self._neighbors, self._width, q.n_use,
            ffi.from_buffer("int32_t[]", q.seeds), len(q.seeds), q.exclude_seeds,
            self._categories, ffi.from_buffer("int32_t[]", cats),
            -1 if q.allowed_cats is None else len(cats),
            ffi.from_buffer("int32_t[]", q.excluded), len(q.excluded),
            ffi.from_buffer("int32_t[]", allowed), -1 if q.allowed is None else len(allowed),
            ffi.from_buffer("float[]", q.query), seen, allow_mark, scratch.next_epoch(),
            k, ffi.from_buffer("int32_t[]", out_rows, require_writable=True),
            ffi.from_buffer("float[]", out_scores, require_writable=True), n_cand)
        if n == ERR_NEIGHBOR_RANGE:
            raise NeighborRangeError(int(out_rows[0]))
        return out_rows[:n], out_scores[:n], n_cand[0]
