"""What every kernel backend takes and gives: the catalog arrays, one query, scratch."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

LANES = 16  # accumulation lanes of a dot product; must equal SR_LANES in csrc/
BACKENDS = ("auto", "c", "numba", "numpy")
_FASTEST_FIRST = ("c", "numba", "numpy")


def importable_backends(load: Callable[[str], type]) -> list[str]:
    """The backends whose class ``load(name)`` imports on this machine, fastest first."""
    names = []
    for name in _FASTEST_FIRST:
        try:
            load(name)
        except ImportError:
            continue
        names.append(name)
    return names


def backend_class(load: Callable[[str], type], backend: str) -> type:
    """The kernel class of ``backend``: "auto" = C, else Numba, else numpy; a named backend
    that does not import raises ImportError saying how to get it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":  # the first that imports (Numba is not imported if C is there)
        for name in _FASTEST_FIRST[:-1]:
            try:
                return load(name)
            except ImportError:
                continue
        return load(_FASTEST_FIRST[-1])
    try:
        return load(backend)
    except ImportError as exc:
        hint = ("the C extension was not built (reinstall with a C compiler)"
                if backend == "c" else "install the extra: pip install 'sessrec[numba]'")
        raise ImportError(f"kernel backend {backend!r} is unavailable: {hint}") from exc


class NeighborRangeError(Exception):
    """neighbors.npy holds an id outside [-1, n_items) in the row of ``item_row``."""

    def __init__(self, item_row: int):
        super().__init__(f"neighbors.npy row {item_row} holds an item id out of range")
        self.item_row = item_row


class RowRangeError(Exception):
    """A seed, excluded or allowed row outside [0, n_items) reached the kernel (the rows
    come from the id lookup, so its arrays are damaged); nothing was read or written."""

    def __init__(self, row: int):
        super().__init__(f"row {row} is outside the catalog")
        self.row = row


def check_query(cat: CatalogArrays, q: KernelQuery) -> None:
    """ValueError unless ``q`` fits ``cat``: a query of the catalog's dim, n_use within the
    neighbor rows, a category filter only on a catalog with categories (the C kernel
    checks the last two itself; the Numba kernel, compiled without bounds checks, relies
    on this)."""
    check_query_vector(q.query, cat.matrix.shape[1])
    if not 0 <= q.n_use <= cat.neighbors.shape[1]:
        raise ValueError(f"n_use must be in [0, {cat.neighbors.shape[1]}], got {q.n_use}")
    if q.allowed_cats is not None and cat.categories is None:
        raise ValueError("a category filter needs a catalog with categories")


def check_query_vector(query: np.ndarray, dim: int) -> None:
    """ValueError unless ``query`` is float32 [dim]: every kernel reads exactly that."""
    if query.shape != (dim,) or query.dtype != np.float32:
        raise ValueError(f"query must be float32 [{dim}], got {query.dtype} "
                         f"{list(query.shape)}")


def check_rows(q: KernelQuery, n_items: int) -> None:
    """Raise RowRangeError unless every row of ``q`` is in [0, n_items) (the numpy twin of
    the C kernel's own check)."""
    for rows in (q.seeds, q.candidates, q.excluded, q.allowed):
        if rows is not None and rows.size:
            bad = (rows < 0) | (rows >= n_items)
            if bad.any():
                raise RowRangeError(int(rows[np.argmax(bad)]))


@dataclass(frozen=True)
class CatalogArrays:
    """The read-only arrays a kernel scores against (usually memory-mapped)."""

    matrix: np.ndarray              # [n_items, d] float32 or float16
    neighbors: np.ndarray           # [n_items, K] int32, -1 = none
    categories: np.ndarray | None   # [n_items] int32
    bias: np.ndarray | None         # [n_items] float32

    @property
    def n_items(self) -> int:
        return self.matrix.shape[0]


class KernelQuery(NamedTuple):
    """One call's inputs, already mapped to rows and validated by the Recommender."""

    seeds: np.ndarray                 # int32 session rows whose neighbor rows are merged
    query: np.ndarray                 # float32 [d]
    k: int
    n_use: int                        # neighbors per item used, <= K
    exclude_seeds: bool               # True: never return the seeds; False: score them too
    excluded: np.ndarray              # int32 rows never returned
    allowed: np.ndarray | None        # int32 allow-list of rows, None = all
    allowed_cats: np.ndarray | None   # int32 categories kept, None = no category filter
    candidates: np.ndarray | None = None  # int32 further candidate rows, merged after the
    #                                       neighbor rows (items of predicted categories)


class Scratch:
    """Per-thread visited stamps, so one call is O(candidates) with no clearing pass."""

    def __init__(self, n_items: int):
        self.seen = np.zeros(n_items, dtype=np.uint32)
        self.allow_mark = np.zeros(n_items, dtype=np.uint32)
        self.epoch = 0
        self.c_pointers = None  # set by the C backend on first use

    def next_epoch(self) -> int:
        """A stamp never used before with these arrays (they are cleared on wrap-around)."""
        if self.epoch >= 0xFFFFFFFF:
            self.seen[:] = 0
            self.allow_mark[:] = 0
            self.epoch = 0
        self.epoch += 1
        return self.epoch
