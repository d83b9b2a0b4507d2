"""The C kernel (csrc/sessrec_kernels.c) through cffi; the call releases the GIL."""
from __future__ import annotations

import numpy as np

from .._kernels import ffi, lib  # ImportError when the extension was not built
from .common import CatalogArrays, KernelQuery, NeighborRangeError, RowRangeError, Scratch

ERR_NEIGHBOR_RANGE = lib.SR_ERR_NEIGHBOR_RANGE
ERR_ROW_RANGE = lib.SR_ERR_ROW_RANGE
ERR_ARGUMENT = lib.SR_ERR_ARGUMENT
# resolved once: a type given as a string is parsed again on every from_buffer call
_I32, _U32, _F32 = ffi.typeof("int32_t[]"), ffi.typeof("uint32_t[]"), ffi.typeof("float[]")
_buf = ffi.from_buffer
_top_k = lib.sr_top_k


ISAS = ("portable", "avx2+f16c")


def instruction_set(request: str | None = None) -> str:
    """The instruction set the C kernel runs ("portable" or "avx2+f16c", the best the CPU
    has by default). ``request`` switches it for the whole process (tests run both; the
    answers are identical): "portable", or "best"."""
    if request not in (None, "portable", "best"):
        raise ValueError(f"request must be None, 'portable' or 'best', got {request!r}")
    code = {None: -1, "portable": 0, "best": 1}[request]
    return ISAS[lib.sr_kernel_isa(code)]


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
                _buf(_U32, scratch.seen, require_writable=True),
                _buf(_U32, scratch.allow_mark, require_writable=True),
                ffi.new("int32_t *"))
        seen, allow_mark, n_cand = ptrs
        k = q.k
        out_rows = np.empty(k, dtype=np.int32)
        out_scores = np.empty(k, dtype=np.float32)
        cats, allowed = q.allowed_cats, q.allowed
        n = _top_k(
            self._matrix, self._is_half, self._n_items, self._dim, self._bias,
            self._neighbors, self._width, q.n_use,
            _buf(_I32, q.seeds), len(q.seeds), q.exclude_seeds,
            self._categories, ffi.NULL if cats is None else _buf(_I32, cats),
            -1 if cats is None else len(cats),
            _buf(_I32, q.excluded), len(q.excluded),
            ffi.NULL if allowed is None else _buf(_I32, allowed),
            -1 if allowed is None else len(allowed),
            _buf(_F32, q.query), seen, allow_mark, scratch.next_epoch(),
            k, _buf(_I32, out_rows, require_writable=True),
            _buf(_F32, out_scores, require_writable=True), n_cand)
        if n == ERR_NEIGHBOR_RANGE:
            raise NeighborRangeError(int(out_rows[0]))
        if n == ERR_ROW_RANGE:
            raise RowRangeError(int(out_rows[0]))
        if n == ERR_ARGUMENT:
            raise ValueError(f"kernel arguments out of range (dim={self._dim}, "
                             f"n_use={q.n_use}, neighbors per item={self._width})")
        return out_rows[:n], out_scores[:n], n_cand[0]
