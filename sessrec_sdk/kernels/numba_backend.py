"""The Numba twin of csrc/sessrec_kernels.c: the same loops, so the same float32 results.

Compiled on first use and cached on disk (``cache=True``); ``nogil=True`` lets host threads
run calls in parallel.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .common import (
    LANES,
    CatalogArrays,
    KernelQuery,
    NeighborRangeError,
    RowRangeError,
    Scratch,
    check_query,
)

_ZERO = np.float32(0.0)
# float16 -> float32 is exact, so a lookup table widens half rows exactly as the C code does
_HALF_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(
    np.float32)


def _widen(value, half_table):
    """float32 of a matrix element: half rows arrive as uint16 bit patterns."""


@overload(_widen, inline="always")
def _widen_impl(value, half_table):
    if isinstance(value, types.Integer):
        return lambda value, half_table: half_table[value]
    return lambda value, half_table: np.float32(value)


@numba.njit(cache=True, nogil=True)
def _dot(matrix, half_table, row, query, acc):
    dim = query.shape[0]
    for j in range(LANES):
        acc[j] = _ZERO
    for i in range(dim):
        acc[i % LANES] += _widen(matrix[row, i], half_table) * query[i]
    half = LANES // 2
    while half >= 1:
        for j in range(half):
            acc[j] = acc[j] + acc[j + half]
        half //= 2
    return acc[0]


@numba.njit(cache=True, nogil=True, inline="always")
def _worse(sa, ra, sb, rb):
    return sa < sb or (sa == sb and ra > rb)


@numba.njit(cache=True, nogil=True)
def _sift_down(rows, scores, n, i):
    while True:
        left = 2 * i + 1
        right = left + 1
        m = i
        if left < n and _worse(scores[left], rows[left], scores[m], rows[m]):
            m = left
        if right < n and _worse(scores[right], rows[right], scores[m], rows[m]):
            m = right
        if m == i:
            return
        scores[i], scores[m] = scores[m], scores[i]
        rows[i], rows[m] = rows[m], rows[i]
        i = m


@numba.njit(cache=True, nogil=True)
def _sift_up(rows, scores, i):
    while i > 0:
        p = (i - 1) // 2
        if not _worse(scores[i], rows[i], scores[p], rows[p]):
            return
        scores[i], scores[p] = scores[p], scores[i]
        rows[i], rows[p] = rows[p], rows[i]
        i = p


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_offer(rows, scores, size, k, r, score):
    """Offer (score, r) to the bounded min-heap of the best ``k``; returns its new size."""
    if size < k:
        rows[size] = r
        scores[size] = score
        _sift_up(rows, scores, size)
        return size + 1
    if _worse(scores[0], rows[0], score, r):
        rows[0] = r
        scores[0] = score
        _sift_down(rows, scores, size, 0)
    return size


@numba.njit(cache=True, nogil=True)
def _heap_sort(rows, scores, size):
    """The heap of ``size`` entries in place, best first (score, then the smaller row)."""
    n = size - 1
    while n > 0:
        scores[0], scores[n] = scores[n], scores[0]
        rows[0], rows[n] = rows[n], rows[0]
        _sift_down(rows, scores, n, 0)
        n -= 1


@numba.njit(cache=True, nogil=True)
def _first_out_of_range(rows, n_items):
    """0 if every row is in [0, n_items), else the first bad row encoded so 0 is free
    (row + 1 for rows >= n_items, the row itself for negative rows)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0:
            return r
        if r >= n_items:
            return r + 1
    return 0


@numba.njit(cache=True, nogil=True)
def sr_top_k(matrix, half_table, bias, has_bias, neighbors, n_use, seeds, exclude_seeds,
             categories, allowed_cats, use_cats, cands, excluded, allowed, use_allowed, query,
             seen, allow_mark, epoch, k, out_rows, out_scores):
    """Returns (n results, n scored); n = -1 and out_rows[0] = item row on a bad neighbor id,
    n = -2 and out_rows[0] = the row if a seed/excluded/allowed row is out of range."""
    n_items = matrix.shape[0]
    acc = np.zeros(LANES, dtype=np.float32)
    size = 0
    n_scored = 0
    if k <= 0:
        return 0, 0
    bad = _first_out_of_range(seeds, n_items)
    if bad == 0:
        bad = _first_out_of_range(cands, n_items)
    if bad == 0:
        bad = _first_out_of_range(excluded, n_items)
    if bad == 0:
        bad = _first_out_of_range(allowed, n_items)
    if bad != 0:  # rows come from the caller: checked before any is written
        out_rows[0] = bad - 1 if bad > 0 else bad
        return -2, 0
    for i in range(excluded.shape[0]):
        seen[excluded[i]] = epoch
    if exclude_seeds:
        for i in range(seeds.shape[0]):
            seen[seeds[i]] = epoch
    for i in range(allowed.shape[0]):
        allow_mark[allowed[i]] = epoch
    n_seeds = seeds.shape[0]
    for s in range(n_seeds + (1 if cands.shape[0] > 0 else 0)):
        from_seed = s < n_seeds
        start = 0 if exclude_seeds or not from_seed else -1
        for t in range(start, n_use if from_seed else cands.shape[0]):
            if not from_seed:
                c = cands[t]
            else:
                c = seeds[s] if t < 0 else neighbors[seeds[s], t]
            if c < 0 or c >= n_items:
                if c == -1:
                    continue
                out_rows[0] = seeds[s]
                return -1, 0
            if seen[c] == epoch:
                continue
            seen[c] = epoch
            if use_allowed and allow_mark[c] != epoch:
                continue
            if use_cats:
                cat = categories[c]
                ok = False
                for j in range(allowed_cats.shape[0]):
                    if allowed_cats[j] == cat:
                        ok = True
                        break
                if not ok:
                    continue
            score = _dot(matrix, half_table, c, query, acc)
            if has_bias:
                score += bias[c]
            n_scored += 1
            size = _heap_offer(out_rows, out_scores, size, k, c, score)
    _heap_sort(out_rows, out_scores, size)
    return size, n_scored


_EMPTY_I32 = np.empty(0, dtype=np.int32)
_EMPTY_F32 = np.empty(0, dtype=np.float32)


class NumbaKernel:
    name = "numba"

    def __init__(self, cat: CatalogArrays):
        self._cat = cat
        # float16 rows are read as their bit patterns and widened exactly in the kernel
        self._matrix = cat.matrix.view(np.uint16) if cat.matrix.dtype == np.float16 else cat.matrix
        self._bias = _EMPTY_F32 if cat.bias is None else cat.bias
        self._categories = _EMPTY_I32 if cat.categories is None else cat.categories

    def warm_up(self) -> None:
        """Compile (or load from the on-disk cache) outside of any timed call."""
        n = self._cat.n_items
        scratch = Scratch(n)
        q = KernelQuery(seeds=np.zeros(1, np.int32), query=np.zeros(self._matrix.shape[1],
                        np.float32), k=1, n_use=1, exclude_seeds=True, excluded=_EMPTY_I32,
                        allowed=None, allowed_cats=None)
        try:
            self.top_k(q, scratch)
        except NeighborRangeError:  # compiled all the same; a call will report the row
            pass

    def top_k(self, q: KernelQuery, scratch: Scratch) -> tuple[np.ndarray, np.ndarray, int]:
        check_query(self._cat, q)
        k = q.k
        out_rows = np.empty(max(k, 1), dtype=np.int32)
        out_scores = np.empty(max(k, 1), dtype=np.float32)
        n, n_scored = sr_top_k(
            self._matrix, _HALF_TABLE, self._bias, self._cat.bias is not None,
            self._cat.neighbors, q.n_use, q.seeds, q.exclude_seeds,
            self._categories, _EMPTY_I32 if q.allowed_cats is None else q.allowed_cats,
            q.allowed_cats is not None,
            _EMPTY_I32 if q.candidates is None else q.candidates, q.excluded,
            _EMPTY_I32 if q.allowed is None else q.allowed, q.allowed is not None, q.query,
            scratch.seen, scratch.allow_mark, np.uint32(scratch.next_epoch()), k,
            out_rows, out_scores)
        if n == -2:
            raise RowRangeError(int(out_rows[0]))
        if n < 0:
            raise NeighborRangeError(int(out_rows[0]))
        return out_rows[:n], out_scores[:n], int(n_scored)
