"""The session-kNN C kernel (csrc/sessrec_sknn.c) through cffi; the call releases the GIL."""
from __future__ import annotations

import numpy as np

from .._kernels import ffi, lib  # ImportError when the extension was not built
from .common import RowRangeError
from .sknn import (
    INDEX_ARRAYS,
    IndexRangeError,
    SknnIndex,
    SknnQuery,
    SknnScratch,
    check_sknn_query,
)

ERR_ROW_RANGE = lib.SR_ERR_ROW_RANGE
ERR_ARGUMENT = lib.SR_ERR_ARGUMENT
ERR_INDEX_RANGE = lib.SR_ERR_INDEX_RANGE
_I32, _F32 = ffi.typeof("int32_t[]"), ffi.typeof("float[]")
_buf = ffi.from_buffer
_top_k = lib.sr_sknn_top_k


def _ptr(ctype: str, arr: np.ndarray | None):
    return ffi.NULL if arr is None else ffi.cast(ctype, ffi.from_buffer(arr))


class CSknnKernel:
    """Holds the index struct (cffi pointers into the index arrays) so a call converts
    only its own arrays."""

    name = "c"

    def __init__(self, index: SknnIndex):
        self.index = index  # keeps the buffers alive
        ix = self._index = ffi.new("sr_sknn_index *")
        ix.n_items, ix.n_sessions = index.n_items, index.n_sessions
        ix.item_indptr = _ptr("int64_t *", index.item_indptr)
        ix.item_sessions = _ptr("int32_t *", index.item_sessions)
        ix.n_item_sessions = index.item_sessions.shape[0]
        ix.session_indptr = _ptr("int64_t *", index.session_indptr)
        ix.session_items = _ptr("int32_t *", index.session_items)
        ix.n_session_items = index.session_items.shape[0]
        ix.item_weight = _ptr("float *", index.item_weight)
        ix.categories = _ptr("int32_t *", index.categories)
        ix.position_weight = _ptr("float *", index.position_weight)
        ix.position_half = index.position_half

    @staticmethod
    def _pin(scratch: SknnScratch):
        """The scratch struct, pointing at the scratch arrays (built once per scratch and
        again after its slots grow)."""
        sc = ffi.new("sr_sknn_scratch *")
        sc.n_items, sc.n_sessions, sc.capacity = (scratch.n_items, scratch.n_sessions,
                                                  scratch.capacity)
        keep = []  # the buffer objects: each keeps its array exported while the struct points in
        for field, ctype in (("item_seen", "uint32_t[]"), ("item_touched", "uint32_t[]"),
                             ("item_excluded", "uint32_t[]"), ("item_allowed", "uint32_t[]"),
                             ("item_score", "float[]"), ("item_list", "int32_t[]"),
                             ("item_pos", "int32_t[]"), ("session_mark", "uint32_t[]"),
                             ("session_slot", "int32_t[]"), ("heap", "int32_t[]"),
                             ("slot_session", "int32_t[]"), ("slot_sim", "float[]"),
                             ("slot_pos", "int32_t[]"), ("order", "int32_t[]"),
                             ("error", "int64_t[]")):
            buf = _buf(ctype, getattr(scratch, field), require_writable=True)
            keep.append(buf)
            setattr(sc, field, buf)
        return (sc, ffi.new("sr_sknn_query *"), ffi.new("int32_t *"), keep)

    def top_k(self, q: SknnQuery, scratch: SknnScratch) -> tuple[np.ndarray, np.ndarray, int]:
        index = self.index
        check_sknn_query(index, q)  # the C code cannot see the arrays' types
        scratch.fits(index)
        scratch.reserve(q.sample)
        ptrs = scratch.c_pointers
        if ptrs is None:
            ptrs = scratch.c_pointers = self._pin(scratch)
        sc, cq, n_cand = ptrs[0], ptrs[1], ptrs[2]
        sc.epoch = scratch.next_epoch()
        k = min(q.k, max(index.n_items, 1))  # never more results than items: no huge buffers
        out_rows = np.empty(k, dtype=np.int32)
        out_scores = np.empty(k, dtype=np.float32)
        cats, allowed = q.allowed_cats, q.allowed
        # locals keep each buffer alive while the struct points into it
        session, excluded = _buf(_I32, q.session), _buf(_I32, q.excluded)
        cats_buf = ffi.NULL if cats is None else _buf(_I32, cats)
        allowed_buf = ffi.NULL if allowed is None else _buf(_I32, allowed)
        cq.session, cq.n_session = session, len(q.session)
        cq.sample, cq.neighbors, cq.k = q.sample, q.neighbors, k
        cq.exclude_session, cq.session_bonus = bool(q.exclude_session), float(q.session_bonus)
        cq.excluded, cq.n_excluded = excluded, len(q.excluded)
        cq.allowed, cq.n_allowed = allowed_buf, -1 if allowed is None else len(allowed)
        cq.allowed_cats, cq.n_allowed_cats = cats_buf, -1 if cats is None else len(cats)
        n = _top_k(self._index, cq, sc, _buf(_I32, out_rows, require_writable=True),
                   _buf(_F32, out_scores, require_writable=True), n_cand)
        if n < 0:
            if n == ERR_ROW_RANGE:
                raise RowRangeError(int(out_rows[0]))
            if n == ERR_INDEX_RANGE:
                err = scratch.error
                raise IndexRangeError(INDEX_ARRAYS[int(err[0])], int(err[1]))
            raise ValueError(f"session-kNN kernel arguments out of range (sample="
                             f"{q.sample}, neighbors={q.neighbors}, k={q.k}, categories="
                             f"{'yes' if index.categories is not None else 'no'})")
        return out_rows[:n], out_scores[:n], int(n_cand[0])
