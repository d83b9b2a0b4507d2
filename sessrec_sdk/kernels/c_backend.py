"""The C kernel (csrc/sessrec_kernels.c) through cffi; the call releases the GIL."""
from __future__ import annotations

import numpy as np

from .._kernels import ffi, lib  # ImportError when the extension was not built
from .common import (
    CatalogArrays,
    KernelQuery,
    NeighborRangeError,
    RowRangeError,
    Scratch,
    check_query_vector,
)

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
    """Holds the catalog struct (cffi pointers to the catalog arrays) so a call converts
    only per-call arrays."""

    name = "c"

    def __init__(self, cat: CatalogArrays):
        for arr in (cat.matrix, cat.neighbors, cat.categories, cat.bias):
            if arr is not None and not arr.flags.c_contiguous:
                raise ValueError("kernel arrays must be C-contiguous")
        self._cat = cat  # keeps the buffers alive
        self._dim = cat.matrix.shape[1]
        self._width = cat.neighbors.shape[1]
        c = self._catalog = ffi.new("sr_catalog *")
        c.matrix = ffi.cast("void *", ffi.from_buffer(cat.matrix))
        c.is_half = int(cat.matrix.dtype == np.float16)
        c.n_items, c.dim = cat.matrix.shape
        c.bias = _ptr("float *", cat.bias)
        c.neighbors = _ptr("int32_t *", cat.neighbors)
        c.row_width = self._width
        c.categories = _ptr("int32_t *", cat.categories)

    def top_k(self, q: KernelQuery, scratch: Scratch) -> tuple[np.ndarray, np.ndarray, int]:
        ptrs = scratch.c_pointers
        if ptrs is None:  # first call on this thread: pin the scratch buffers once
            seen = _buf(_U32, scratch.seen, require_writable=True)
            allow_mark = _buf(_U32, scratch.allow_mark, require_writable=True)
            sc = ffi.new("sr_scratch *")
            sc.seen, sc.allow_mark = seen, allow_mark
            ptrs = scratch.c_pointers = (sc, ffi.new("sr_query *"), ffi.new("int32_t *"),
                                         seen, allow_mark)  # the buffers stay referenced
        check_query_vector(q.query, self._dim)  # the C code cannot see its length
        sc, cq, n_cand = ptrs[0], ptrs[1], ptrs[2]
        sc.epoch = scratch.next_epoch()
        k = q.k
        out_rows = np.empty(k, dtype=np.int32)
        out_scores = np.empty(k, dtype=np.float32)
        cats, allowed = q.allowed_cats, q.allowed
        # locals keep each buffer alive while the struct points into it
        seeds, excluded, query = _buf(_I32, q.seeds), _buf(_I32, q.excluded), _buf(_F32, q.query)
        cats_buf = ffi.NULL if cats is None else _buf(_I32, cats)
        allowed_buf = ffi.NULL if allowed is None else _buf(_I32, allowed)
        cq.seeds, cq.n_seeds, cq.exclude_seeds, cq.n_use = (seeds, len(q.seeds),
                                                            q.exclude_seeds, q.n_use)
        cq.allowed_cats, cq.n_allowed_cats = cats_buf, -1 if cats is None else len(cats)
        cq.excluded, cq.n_excluded = excluded, len(q.excluded)
        cq.allowed, cq.n_allowed = allowed_buf, -1 if allowed is None else len(allowed)
        cq.query, cq.k = query, k
        extra = q.candidates
        cands_buf = ffi.NULL if extra is None or not len(extra) else _buf(_I32, extra)
        cq.candidates, cq.n_candidates = cands_buf, 0 if extra is None else len(extra)
        n = _top_k(self._catalog, cq, sc, _buf(_I32, out_rows, require_writable=True),
                   _buf(_F32, out_scores, require_writable=True), n_cand)
        if n == ERR_NEIGHBOR_RANGE:
            raise NeighborRangeError(int(out_rows[0]))
        if n == ERR_ROW_RANGE:
            raise RowRangeError(int(out_rows[0]))
        if n == ERR_ARGUMENT:
            raise ValueError(f"kernel arguments out of range (dim={self._dim}, "
                             f"n_use={q.n_use}, neighbors per item={self._width}, "
                             f"categories={'yes' if self._cat.categories is not None else 'no'})")
        return out_rows[:n], out_scores[:n], n_cand[0]
