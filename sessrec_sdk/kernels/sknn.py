"""The session-kNN (VMIS-kNN) kernel: its inputs, the numpy reference and the backends.

VMIS-kNN is the session-based nearest-neighbor recommender of Serenade (Kersbergen et al.,
SIGMOD 2022). One call takes the rows of a session (oldest first) and an index of the
training sessions, and returns the k best next items. The algorithm, which the C kernel
(csrc/sessrec_sknn.c), its Numba twin (sknn_numba.py) and the numpy reference below follow
step by step in float32, so that all three return identical rows and scores:

1. the distinct session items, most recent first (p = 0 is the last event; a repeated item
   counts once, at its most recent p); with u distinct items, an item's decay weight is
   ``pi = float32(n - p) / float32(u)``;
2. candidate sessions R (at most ``sample``): for each distinct item in that order, walk
   its training sessions newest first: a session in R gains pi; a new one enters with
   sim = pi and pos = p while R has room, or replaces the oldest session of R (smallest
   id) if it is newer (the evicted one is forgotten); otherwise stop walking that list;
3. neighbors: the ``neighbors`` sessions of R with the highest sim, ties to the larger
   (more recent) session id, in that rank order;
4. scores: per neighbor j, ``w = max(0, 1 - 0.1 * pos_j) * sim_j``, and per item r of j in
   stored order ``score[r] += (w * position_weight[h + clamp(t - a, -h, h)]) * item_weight[r]``
   where t is r's place in j's list, a the place of the session item that brought j into
   R (the session's item at p = pos_j; the list's length if j lacks it) and h the table's
   half-width (a table of 2h + 1 entries; none, h = 0: the factor is left out, as it is 1);
   the touched items are the candidates. The table is STAN's neighbor-position weighting
   (Garg et al., SIGIR 2019) in a form every backend reads the same: what follows the
   shared item in a similar session tends to follow it in this one;
5. filters: excluded rows, the allow-list, the category filter; a session item is dropped
   when ``exclude_session``, else gets ``+ session_bonus``;
6. the best k by score, ties by the smaller row.

Safety: session / excluded / allowed rows outside the catalog raise ``RowRangeError``
before anything is written; an index entry that is out of range (a decreasing or
overlong indptr pair, a session id or an item outside its range) raises
``IndexRangeError`` when the kernel reaches it (the index is checked only where a call
reads it, never scanned whole).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .common import BACKENDS, RowRangeError, backend_class, importable_backends

# the arrays IndexRangeError can name, by their code in the C and Numba kernels
INDEX_ARRAYS = ("item_indptr", "item_sessions", "session_indptr", "session_items")

#: the largest half-width h of a position table
MAX_POSITION_HALF = 1024

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F01 = np.float32(0.1)

__all__ = ["BACKENDS", "INDEX_ARRAYS", "IndexRangeError", "SknnIndex", "SknnQuery",
           "SknnScratch", "available_sknn_backends", "check_sknn_query", "make_sknn_kernel",
           "sknn_top_k"]


class IndexRangeError(Exception):
    """An entry of the session index is out of range: ``array`` names the array
    ("item_indptr", "item_sessions", "session_indptr" or "session_items") and
    ``position`` the entry. For an indptr, the entry is the first of the pair of a list
    that is out of [0, len(data)], else the second (decreasing or past the data)."""

    def __init__(self, array_name: str, position: int):
        super().__init__(f"{array_name}[{position}] is out of range")
        self.array_name = array_name
        self.position = position


def _check_array(name: str, arr: np.ndarray, dtype, length: int | None = None) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D {np.dtype(dtype).name} array")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries, got {arr.shape[0]}")


@dataclass(frozen=True)
class SknnIndex:
    """The training sessions of a session-kNN model (read-only, usually memory-mapped).
    Sessions are numbered in time order (a larger id is more recent)."""

    item_indptr: np.ndarray      # int64 [n_items + 1]
    item_sessions: np.ndarray    # int32: per item, its most recent sessions, newest first
    session_indptr: np.ndarray   # int64 [n_sessions + 1]
    session_items: np.ndarray    # int32: the distinct items of each session
    item_weight: np.ndarray      # float32 [n_items]
    categories: np.ndarray | None = None  # int32 [n_items]
    #: float32 [2h + 1], the weight of an item by its place relative to the shared item in
    #: a neighbor session (offsets -h..h, clamped); None: every place weighs 1
    position_weight: np.ndarray | None = None

    def __post_init__(self):
        # shapes and types only (O(1)): the contents are checked where a call reads them
        _check_array("item_indptr", self.item_indptr, np.int64)
        _check_array("session_indptr", self.session_indptr, np.int64)
        if self.item_indptr.shape[0] < 1 or self.session_indptr.shape[0] < 1:
            raise ValueError("an indptr needs at least one entry")
        _check_array("item_sessions", self.item_sessions, np.int32)
        _check_array("session_items", self.session_items, np.int32)
        _check_array("item_weight", self.item_weight, np.float32, self.n_items)
        if self.categories is not None:
            _check_array("categories", self.categories, np.int32, self.n_items)
        if self.position_weight is not None:
            _check_array("position_weight", self.position_weight, np.float32)
            n = self.position_weight.shape[0]
            if n % 2 != 1 or n > 2 * MAX_POSITION_HALF + 1:
                raise ValueError(f"position_weight must have an odd number of entries, at "
                                 f"most {2 * MAX_POSITION_HALF + 1}, got {n}")
            if not (np.isfinite(self.position_weight).all()
                    and (self.position_weight >= 0).all()):
                raise ValueError("position_weight must be finite and >= 0")
        if self.n_sessions > 2**31 - 1:
            raise ValueError("session ids are int32: at most 2**31 - 1 sessions")

    @property
    def n_items(self) -> int:
        return self.item_indptr.shape[0] - 1

    @property
    def n_sessions(self) -> int:
        return self.session_indptr.shape[0] - 1

    @property
    def position_half(self) -> int:
        """h of the position table (0: no table)."""
        pw = self.position_weight
        return 0 if pw is None else (pw.shape[0] - 1) // 2


class SknnQuery(NamedTuple):
    """One call's inputs, already mapped to rows."""

    session: np.ndarray               # int32 rows of the session, oldest first (may repeat)
    sample: int                       # m: most recent candidate sessions kept (>= 1)
    neighbors: int                    # k: neighbor sessions used (>= 1)
    k: int                            # items returned (>= 1)
    exclude_session: bool             # True: never return the session's items
    session_bonus: float              # added to a session item's score when it may be returned
    excluded: np.ndarray              # int32 rows never returned
    allowed: np.ndarray | None        # int32 allow-list, None = all
    allowed_cats: np.ndarray | None   # int32 categories kept, None = no category filter


def _is_rows(arr) -> bool:
    return (isinstance(arr, np.ndarray) and arr.dtype == np.int32 and arr.ndim == 1
            and arr.flags.c_contiguous)


def check_sknn_query(index: SknnIndex, q: SknnQuery) -> None:
    """ValueError unless ``q`` fits ``index`` (the checks every backend runs first)."""
    if q.sample < 1 or q.neighbors < 1 or q.k < 1:
        raise ValueError(f"sample, neighbors and k must be >= 1, got {q.sample}, "
                         f"{q.neighbors}, {q.k}")
    if q.sample > 2**31 - 1 or q.neighbors > 2**31 - 1 or q.k > 2**31 - 1:
        raise ValueError("sample, neighbors and k must fit int32")
    for name in ("session", "excluded", "allowed", "allowed_cats"):
        arr = getattr(q, name)
        if arr is None and name in ("allowed", "allowed_cats"):
            continue
        if not _is_rows(arr):
            raise ValueError(f"{name} must be a C-contiguous 1-D int32 array")
    if q.allowed_cats is not None and index.categories is None:
        raise ValueError("a category filter needs an index with categories")


def check_sknn_rows(index: SknnIndex, q: SknnQuery) -> None:
    """RowRangeError unless every session / excluded / allowed row is in the catalog."""
    for rows in (q.session, q.excluded, q.allowed):
        if rows is not None and rows.size:
            bad = (rows < 0) | (rows >= index.n_items)
            if bad.any():
                raise RowRangeError(int(rows[np.argmax(bad)]))


class SknnScratch:
    """Per-thread scratch of the C and Numba kernels for one index size: visited stamps
    (no clearing pass per call; cleared on wrap-around), item scores and the slots of the
    candidate sessions. The slots grow on demand to min(sample, n_sessions) (R never holds
    more sessions than the index has). The [n_items] and [n_sessions] arrays are
    allocated lazily by the OS (untouched pages cost no memory)."""

    def __init__(self, n_items: int, n_sessions: int, max_sample: int = 500):
        self.n_items, self.n_sessions = int(n_items), int(n_sessions)
        self.item_seen = np.zeros(n_items, dtype=np.uint32)
        self.item_touched = np.zeros(n_items, dtype=np.uint32)
        self.item_excluded = np.zeros(n_items, dtype=np.uint32)
        self.item_allowed = np.zeros(n_items, dtype=np.uint32)
        self.item_score = np.zeros(n_items, dtype=np.float32)
        self.item_list = np.zeros(n_items, dtype=np.int32)
        self.item_pos = np.zeros(n_items, dtype=np.int32)
        self.session_mark = np.zeros(n_sessions, dtype=np.uint32)
        self.session_slot = np.zeros(n_sessions, dtype=np.int32)
        self.error = np.zeros(2, dtype=np.int64)
        self.epoch = 0
        self.capacity = -1
        self.c_pointers = None  # set by the C backend on first use
        self.reserve(max(1, int(max_sample)))

    @classmethod
    def for_index(cls, index: SknnIndex, max_sample: int = 500) -> SknnScratch:
        return cls(index.n_items, index.n_sessions, max_sample)

    def slots_for(self, sample: int) -> int:
        """The candidate-session slots a call with ``sample`` needs."""
        return min(int(sample), self.n_sessions)

    def reserve(self, sample: int) -> None:
        """Make room for calls with up to ``sample`` candidate sessions."""
        cap = self.slots_for(sample)
        if cap <= self.capacity:
            return
        self.capacity = cap
        self.heap = np.zeros(cap, dtype=np.int32)
        self.slot_session = np.zeros(cap, dtype=np.int32)
        self.slot_sim = np.zeros(cap, dtype=np.float32)
        self.slot_pos = np.zeros(cap, dtype=np.int32)
        self.order = np.zeros(cap, dtype=np.int32)
        self.c_pointers = None  # the C struct points at the old arrays

    def fits(self, index: SknnIndex) -> None:
        """ValueError unless this scratch was made for ``index``'s sizes."""
        if self.n_items != index.n_items or self.n_sessions != index.n_sessions:
            raise ValueError(f"scratch made for {self.n_items} items / {self.n_sessions} "
                             f"sessions, index has {index.n_items} / {index.n_sessions}")

    def next_epoch(self) -> int:
        """A stamp never used before with the mark arrays (cleared on wrap-around)."""
        if self.epoch >= 0xFFFFFFFF:
            for arr in (self.item_seen, self.item_touched, self.item_excluded,
                        self.item_allowed, self.session_mark):
                arr[:] = 0
            self.epoch = 0
        self.epoch += 1
        return self.epoch


_EMPTY_ROWS = np.empty(0, dtype=np.int32)
_EMPTY_SCORES = np.empty(0, dtype=np.float32)


def _bounds(indptr: np.ndarray, i: int, n_data: int, name: str) -> tuple[int, int]:
    a, b = int(indptr[i]), int(indptr[i + 1])
    if a < 0 or a > n_data:
        raise IndexRangeError(name, i)
    if b < a or b > n_data:
        raise IndexRangeError(name, i + 1)
    return a, b


def sknn_top_k(index: SknnIndex, q: SknnQuery) -> tuple[np.ndarray, np.ndarray, int]:
    """The numpy reference: (rows int32, scores float32, n_candidates)."""
    check_sknn_query(index, q)
    check_sknn_rows(index, q)
    session = q.session
    n = int(session.shape[0])
    if n == 0:
        return _EMPTY_ROWS.copy(), _EMPTY_SCORES.copy(), 0
    n_sessions = index.n_sessions
    # 1. distinct items, most recent first: first occurrence in the reversed session
    rev = session[::-1]
    _, first = np.unique(rev, return_index=True)
    first.sort()
    items, positions = rev[first], first
    u = len(items)
    # 2. candidate sessions: sim/pos by session id, and a min-heap of the ids in R
    sim: dict[int, np.float32] = {}
    pos: dict[int, int] = {}
    heap: list[int] = []
    sample = q.sample
    item_sessions = index.item_sessions
    for r, p in zip(items.tolist(), positions.tolist()):
        pi = np.float32(np.float32(n - p) / np.float32(u))
        a, b = _bounds(index.item_indptr, r, item_sessions.shape[0], "item_indptr")
        ids = item_sessions[a:b]
        bad = (ids < 0) | (ids >= n_sessions)
        stop = int(np.argmax(bad)) if bad.any() else len(ids)
        for j in ids[:stop].tolist():
            if j in sim:
                sim[j] = np.float32(sim[j] + pi)
            elif len(heap) < sample:
                sim[j], pos[j] = pi, p
                heapq.heappush(heap, j)
            elif j > heap[0]:
                old = heapq.heapreplace(heap, j)
                del sim[old], pos[old]
                sim[j], pos[j] = pi, p
            else:
                break
        else:  # the walk reached the first bad id (or the end of the list)
            if stop < len(ids):
                raise IndexRangeError("item_sessions", a + stop)
    # 3. neighbors: sim descending, then session id descending
    ids = np.fromiter(sim.keys(), dtype=np.int64, count=len(sim))
    sims = np.fromiter(sim.values(), dtype=np.float32, count=len(sim))
    rank = np.lexsort((-ids, -sims))[:q.neighbors]
    # 4. scores: every neighbor's items in rank order, accumulated one by one
    lists, weights = [], []
    half = index.position_half
    for j in ids[rank].tolist():
        lam = np.float32(_F1 - np.float32(_F01 * np.float32(pos[j])))
        if lam < _F0:
            lam = _F0
        w = np.float32(lam * sim[j])
        a, b = _bounds(index.session_indptr, j, index.session_items.shape[0],
                       "session_indptr")
        rows = index.session_items[a:b]
        bad = (rows < 0) | (rows >= index.n_items)
        if bad.any():
            raise IndexRangeError("session_items", a + int(np.argmax(bad)))
        lists.append(rows)
        if half:
            anchor = session[n - 1 - pos[j]]
            where = np.flatnonzero(rows == anchor)
            a_t = int(where[0]) if where.size else len(rows)
            offset = np.clip(np.arange(len(rows)) - a_t, -half, half) + half
            weights.append(w * index.position_weight[offset])  # float32 products
        else:
            weights.append(np.full(len(rows), w, dtype=np.float32))
    if not lists:
        return _EMPTY_ROWS.copy(), _EMPTY_SCORES.copy(), 0
    touched = np.concatenate(lists)
    contrib = np.concatenate(weights) * index.item_weight[touched]  # float32 products
    cands = np.unique(touched)
    # add.at adds the contributions one by one, in order: the kernels' float32 sums
    local = np.searchsorted(cands, touched)
    score = np.zeros(len(cands), dtype=np.float32)
    np.add.at(score, local, contrib)
    n_cand = len(cands)
    # 5. filters and bonus
    keep = ~np.isin(cands, q.excluded)
    if q.allowed is not None:
        keep &= np.isin(cands, q.allowed)
    if q.allowed_cats is not None:
        keep &= np.isin(index.categories[cands], q.allowed_cats)
    in_session = np.isin(cands, items)
    if q.exclude_session:
        keep &= ~in_session
    else:
        score = np.where(in_session, score + np.float32(q.session_bonus), score)
    cands, score = cands[keep], score[keep].astype(np.float32)
    # 6. the best k
    order = np.lexsort((cands, -score))[:q.k]
    return cands[order].astype(np.int32), score[order], n_cand


class NumpySknnKernel:
    name = "numpy"

    def __init__(self, index: SknnIndex):
        self.index = index

    def top_k(self, q: SknnQuery, scratch: SknnScratch | None = None
              ) -> tuple[np.ndarray, np.ndarray, int]:
        if scratch is not None:
            scratch.fits(self.index)
        return sknn_top_k(self.index, q)


def _load(name: str):
    if name == "c":
        from .sknn_c import CSknnKernel
        return CSknnKernel
    if name == "numba":
        from .sknn_numba import NumbaSknnKernel
        return NumbaSknnKernel
    return NumpySknnKernel


def available_sknn_backends() -> list[str]:
    """The session-kNN backends that import on this machine, fastest first."""
    return importable_backends(_load)


def make_sknn_kernel(index: SknnIndex, backend: str = "auto"):
    """A kernel object with ``top_k(SknnQuery, SknnScratch)`` and a ``name``: "auto" picks
    C, then Numba, then numpy (as ``sessrec_sdk.kernels.make_kernel``)."""
    kernel = backend_class(_load, backend)(index)
    if hasattr(kernel, "warm_up"):
        kernel.warm_up()
    return kernel
