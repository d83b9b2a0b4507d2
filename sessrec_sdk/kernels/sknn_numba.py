"""The Numba twin of csrc/sessrec_sknn.c: the same loops, so the same float32 results.

Compiled on first use and cached on disk (``cache=True``); ``nogil=True`` lets host threads
run calls in parallel. Compiled without bounds checks: every index is checked before use,
as in the C kernel.
"""
from __future__ import annotations

import numba
import numpy as np

from .common import RowRangeError
from .numba_backend import _heap_offer, _heap_sort  # the item heap: same tie rule
from .sknn import (
    INDEX_ARRAYS,
    IndexRangeError,
    SknnIndex,
    SknnQuery,
    SknnScratch,
    check_sknn_query,
)

ERR_ROW_RANGE = -2
ERR_INDEX_RANGE = -4
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F01 = np.float32(0.1)


@numba.njit(cache=True, nogil=True, inline="always")
def _slot_worse(sim, sess, a, b):
    return sim[a] < sim[b] or (sim[a] == sim[b] and sess[a] < sess[b])


@numba.njit(cache=True, nogil=True)
def _id_sift_down(heap, n, i):
    while True:
        left = 2 * i + 1
        right = left + 1
        m = i
        if left < n and heap[left] < heap[m]:
            m = left
        if right < n and heap[right] < heap[m]:
            m = right
        if m == i:
            return
        heap[i], heap[m] = heap[m], heap[i]
        i = m


@numba.njit(cache=True, nogil=True)
def _id_sift_up(heap, i):
    while i > 0:
        p = (i - 1) // 2
        if heap[p] <= heap[i]:
            return
        heap[i], heap[p] = heap[p], heap[i]
        i = p


@numba.njit(cache=True, nogil=True)
def _slot_sift_down(h, sim, sess, n, i):
    while True:
        left = 2 * i + 1
        right = left + 1
        m = i
        if left < n and _slot_worse(sim, sess, h[left], h[m]):
            m = left
        if right < n and _slot_worse(sim, sess, h[right], h[m]):
            m = right
        if m == i:
            return
        h[i], h[m] = h[m], h[i]
        i = m


@numba.njit(cache=True, nogil=True)
def _slot_sift_up(h, sim, sess, i):
    while i > 0:
        p = (i - 1) // 2
        if not _slot_worse(sim, sess, h[i], h[p]):
            return
        h[i], h[p] = h[p], h[i]
        i = p


@numba.njit(cache=True, nogil=True, inline="always")
def _slot_fill(session_mark, session_slot, slot_session, slot_sim, slot_pos, s, j, pi, p,
               epoch):
    """Slot s of R now holds session j, met first at session position p with similarity
    term pi (a new slot, or the slot of the session it evicts)."""
    session_mark[j] = epoch
    session_slot[j] = s
    slot_session[s] = j
    slot_sim[s] = pi
    slot_pos[s] = p


@numba.njit(cache=True, nogil=True)
def _first_out_of_range(rows, n_items):
    """-1 if every row is in [0, n_items), else the index of the first bad one."""
    for i in range(rows.shape[0]):
        if rows[i] < 0 or rows[i] >= n_items:
            return i
    return -1


@numba.njit(cache=True, nogil=True)
def _bad_bounds(indptr, i, n_data):
    """-1 if list i of indptr is within [0, n_data] and not decreasing, else the position
    of the bad entry (i if the start is out of range, else i + 1)."""
    a = indptr[i]
    b = indptr[i + 1]
    if a < 0 or a > n_data:
        return i
    if b < a or b > n_data:
        return i + 1
    return -1


@numba.njit(cache=True, nogil=True)
def sr_sknn_top_k(item_indptr, item_sessions, session_indptr, session_items, item_weight,
                  categories, position_weight, half, session, sample, neighbors, k,
                  exclude_session, session_bonus,
                  excluded, allowed, use_allowed, allowed_cats, use_cats,
                  item_seen, item_touched, item_excluded, item_allowed, item_score, item_list,
                  item_pos, session_mark, session_slot, heap, slot_session, slot_sim,
                  slot_pos, order, error, epoch, out_rows, out_scores):
    """Returns (n results, n candidates); n = -2 and out_rows[0] = the row if a session,
    excluded or allowed row is out of range; n = -4 and error = (array code, position)
    on a bad index entry. The caller checks the arguments (check_sknn_query, the scratch's
    sizes and slots)."""
    n_items = item_indptr.shape[0] - 1
    n_sessions = session_indptr.shape[0] - 1
    # rows come from the caller: checked before any is written
    bad = _first_out_of_range(session, n_items)
    if bad >= 0:
        out_rows[0] = session[bad]
        return ERR_ROW_RANGE, 0
    bad = _first_out_of_range(excluded, n_items)
    if bad >= 0:
        out_rows[0] = excluded[bad]
        return ERR_ROW_RANGE, 0
    bad = _first_out_of_range(allowed, n_items)
    if bad >= 0:
        out_rows[0] = allowed[bad]
        return ERR_ROW_RANGE, 0
    n = session.shape[0]
    if n == 0:
        return 0, 0
    cap = sample if sample < n_sessions else n_sessions

    # 1. distinct session items, most recent first
    u = 0
    for p in range(n):
        r = session[n - 1 - p]
        if item_seen[r] == epoch:
            continue
        item_seen[r] = epoch
        item_list[u] = r
        item_pos[u] = p
        u += 1

    # 2. candidate sessions
    n_item_sessions = item_sessions.shape[0]
    n_r = 0
    for i in range(u):
        r = item_list[i]
        p = item_pos[i]
        pi = np.float32(n - p) / np.float32(u)
        bad = _bad_bounds(item_indptr, r, n_item_sessions)
        if bad >= 0:
            error[0] = 0
            error[1] = bad
            return ERR_INDEX_RANGE, 0
        for t in range(item_indptr[r], item_indptr[r + 1]):
            j = item_sessions[t]
            if j < 0 or j >= n_sessions:
                error[0] = 1
                error[1] = t
                return ERR_INDEX_RANGE, 0
            if session_mark[j] == epoch:
                s = session_slot[j]
                slot_sim[s] = slot_sim[s] + pi
            elif n_r < cap:
                _slot_fill(session_mark, session_slot, slot_session, slot_sim, slot_pos, n_r,
                           j, pi, p, epoch)
                heap[n_r] = j
                _id_sift_up(heap, n_r)
                n_r += 1
            elif j > heap[0]:
                old = heap[0]
                session_mark[old] = 0
                _slot_fill(session_mark, session_slot, slot_session, slot_sim, slot_pos,
                           session_slot[old], j, pi, p, epoch)
                heap[0] = j
                _id_sift_down(heap, n_r, 0)
            else:
                break

    # 3. neighbors
    n_nb = neighbors if neighbors < n_r else n_r
    size = 0
    for s in range(n_r):
        if size < n_nb:
            order[size] = s
            _slot_sift_up(order, slot_sim, slot_session, size)
            size += 1
        elif _slot_worse(slot_sim, slot_session, order[0], s):
            order[0] = s
            _slot_sift_down(order, slot_sim, slot_session, size, 0)
    m = size - 1
    while m > 0:
        order[0], order[m] = order[m], order[0]
        _slot_sift_down(order, slot_sim, slot_session, m, 0)
        m -= 1

    # 4. item scores
    n_session_items = session_items.shape[0]
    n_cand = 0
    for i in range(n_nb):
        s = order[i]
        j = slot_session[s]
        lam = _F1 - _F01 * np.float32(slot_pos[s])
        if lam < _F0:
            lam = _F0
        w = lam * slot_sim[s]
        bad = _bad_bounds(session_indptr, j, n_session_items)
        if bad >= 0:
            error[0] = 2
            error[1] = bad
            return ERR_INDEX_RANGE, 0
        lo, hi = session_indptr[j], session_indptr[j + 1]
        anchor = hi  # the place of the shared item (the list's end if absent)
        if half > 0:
            shared = session[n - 1 - slot_pos[s]]
            for t in range(lo, hi):
                if session_items[t] == shared:
                    anchor = t
                    break
        for t in range(lo, hi):
            r = session_items[t]
            if r < 0 or r >= n_items:
                error[0] = 3
                error[1] = t
                return ERR_INDEX_RANGE, 0
            if item_touched[r] != epoch:
                item_touched[r] = epoch
                item_score[r] = _F0
                item_list[n_cand] = r
                n_cand += 1
            wt = w
            if half > 0:
                d = t - anchor
                if d > half:
                    d = half
                if d < -half:
                    d = -half
                wt = w * position_weight[d + half]
            c = wt * item_weight[r]
            item_score[r] = item_score[r] + c

    # 5. filters and bonus, 6. the best k
    for i in range(excluded.shape[0]):
        item_excluded[excluded[i]] = epoch
    for i in range(allowed.shape[0]):
        item_allowed[allowed[i]] = epoch
    kept = 0
    for i in range(n_cand):
        r = item_list[i]
        if item_excluded[r] == epoch:
            continue
        if use_allowed and item_allowed[r] != epoch:
            continue
        if use_cats:
            cat = categories[r]
            ok = False
            for c in range(allowed_cats.shape[0]):
                if allowed_cats[c] == cat:
                    ok = True
                    break
            if not ok:
                continue
        score = item_score[r]
        if item_seen[r] == epoch:
            if exclude_session:
                continue
            score = score + session_bonus
        kept = _heap_offer(out_rows, out_scores, kept, k, r, score)
    _heap_sort(out_rows, out_scores, kept)
    return kept, n_cand


_EMPTY_I32 = np.empty(0, dtype=np.int32)
_EMPTY_F32 = np.empty(0, dtype=np.float32)


class NumbaSknnKernel:
    name = "numba"

    def __init__(self, index: SknnIndex):
        self.index = index
        self._categories = _EMPTY_I32 if index.categories is None else index.categories
        self._position = (_EMPTY_F32 if index.position_weight is None
                          else index.position_weight)

    def warm_up(self) -> None:
        """Compile (or load from the on-disk cache) outside of any timed call."""
        index = self.index
        if index.n_items == 0:
            return
        q = SknnQuery(session=np.zeros(1, np.int32), sample=1, neighbors=1, k=1,
                      exclude_session=True, session_bonus=0.0, excluded=_EMPTY_I32,
                      allowed=None, allowed_cats=None)
        # a scratch sized for the index, so the compiled signature is the calls' one
        try:
            self.top_k(q, SknnScratch.for_index(index, max_sample=1))
        except IndexRangeError:  # compiled all the same; a call will report the entry
            pass

    def top_k(self, q: SknnQuery, scratch: SknnScratch) -> tuple[np.ndarray, np.ndarray, int]:
        index = self.index
        check_sknn_query(index, q)
        scratch.fits(index)
        scratch.reserve(q.sample)
        k = min(q.k, max(index.n_items, 1))  # never more results than items: no huge buffers
        out_rows = np.empty(k, dtype=np.int32)
        out_scores = np.empty(k, dtype=np.float32)
        s = scratch
        n, n_cand = sr_sknn_top_k(
            index.item_indptr, index.item_sessions, index.session_indptr,
            index.session_items, index.item_weight, self._categories, self._position,
            np.int64(index.position_half),
            q.session, np.int64(q.sample), np.int64(q.neighbors), np.int64(k),
            bool(q.exclude_session), np.float32(q.session_bonus), q.excluded,
            _EMPTY_I32 if q.allowed is None else q.allowed, q.allowed is not None,
            _EMPTY_I32 if q.allowed_cats is None else q.allowed_cats,
            q.allowed_cats is not None,
            s.item_seen, s.item_touched, s.item_excluded, s.item_allowed, s.item_score,
            s.item_list, s.item_pos, s.session_mark, s.session_slot, s.heap,
            s.slot_session, s.slot_sim, s.slot_pos, s.order, s.error,
            np.uint32(scratch.next_epoch()), out_rows, out_scores)
        if n == ERR_ROW_RANGE:
            raise RowRangeError(int(out_rows[0]))
        if n == ERR_INDEX_RANGE:
            raise IndexRangeError(INDEX_ARRAYS[int(s.error[0])], int(s.error[1]))
        return out_rows[:n], out_scores[:n], int(n_cand)
