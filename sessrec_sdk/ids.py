"""External item ids <-> catalog rows, without a Python dict of every id.

The bundle stores the ids in row order plus a sorted copy and the rows in that order, all
memory-mapped; a lookup is a binary search (``np.searchsorted``), so a catalog of millions
of ids loads in milliseconds and a 3-item session touches a few dozen pages.
"""
from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence

import numpy as np

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

try:  # the C lookup of integer ids (csrc/); numpy's searchsorted where it was not built
    from ._kernels import ffi as _ffi
    from ._kernels import lib as _lib
except ImportError:
    _lib = None


def sorted_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted, rows in that order): the lookup structure the bundle stores."""
    order = np.argsort(ids, kind="stable").astype(np.int32)
    return ids[order], order


_BOOLS = frozenset((bool, np.bool_))


class ItemIds:
    """The catalog's external ids (int64 or str) with vectorised lookup."""

    def __init__(self, in_row_order: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray):
        self.in_row_order = in_row_order
        self.sorted_ids = sorted_ids
        self.order = order
        self.kind = "str" if in_row_order.dtype.kind == "U" else "int"
        if self.kind == "str":
            # lookups run in the sorted ids' own dtype: a wider query would make numpy
            # widen (copy) every sorted id, so longer ids are replaced by an id known to
            # be absent before any lookup
            self.width = sorted_ids.dtype.itemsize // 4
            self._absent = _absent_str(sorted_ids)
        self._c_find = None
        if (_lib is not None and self.kind == "int" and sorted_ids.flags.c_contiguous
                and order.flags.c_contiguous):
            self._c_args = (_ffi.cast("int64_t *", _ffi.from_buffer(sorted_ids)),
                            _ffi.cast("int32_t *", _ffi.from_buffer(order)), len(sorted_ids))
            self._c_find = _lib.sr_find_int64

    def __len__(self) -> int:
        return len(self.in_row_order)

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in the sorted ids, whether the id is there) of each non-empty ``ids``."""
        pos = self.sorted_ids.searchsorted(ids)
        np.minimum(pos, len(self.sorted_ids) - 1, out=pos)
        return pos, self.sorted_ids.take(pos) == ids

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """int32 rows of already-coerced ids (see :meth:`coerce`), -1 where unknown."""
        if ids.size == 0:
            return np.empty(0, dtype=np.int32)
        pos, hit = self._find(ids)
        rows = self.order.take(pos)
        rows[~hit] = -1
        return rows

    def known(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """(int32 rows of the known ids, in input order; how many ids are unknown).

        The request path's lookup: same answer as ``rows`` with the -1s dropped. Integer
        catalogs use the C lookup when it is built (one call; the searches of all ids
        overlap), otherwise fewer numpy calls than ``rows`` when every id is known."""
        if ids.size == 0:
            return np.empty(0, dtype=np.int32), 0
        if self._c_find is not None:  # int64 ids (coerce's output for integer catalogs)
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            out = np.empty(ids.size, dtype=np.int32)
            n = self._c_find(*self._c_args, _ffi.from_buffer("int64_t[]", ids), ids.size,
                             _ffi.from_buffer("int32_t[]", out, require_writable=True))
            return (out if n == ids.size else out[:n]), int(ids.size - n)
        pos, hit = self._find(ids)
        if hit.all():
            return self.order.take(pos), 0
        return self.order.take(pos[hit]), int(hit.size - np.count_nonzero(hit))

    def external(self, rows: np.ndarray) -> np.ndarray:
        """External ids of ``rows`` (a fresh array, not a view of the mapped file)."""
        return self.in_row_order.take(rows)

    def coerce(self, ids, what: str = "session", *, keep_last: int | None = None,
               max_len: int | None = None) -> np.ndarray:
        """Validate a caller's ids and return them as a 1-D int64 or str array.

        Integer catalogs take Python or numpy integers; ids outside int64 cannot be in the
        catalog and become -1 (counted as unknown). String catalogs take str; an id longer
        than the catalog's longest cannot be in it and is looked up as unknown at no extra
        cost. Anything else (None, a bare string, nested lists, floats, bools, bytes,
        masked arrays) raises TypeError. ``keep_last``: only the last N ids are read (the
        rest is never converted); ``max_len``: more ids than that raise ValueError.
        """
        if ids is None:
            raise TypeError(f"{what} must be a list, tuple or numpy array of item ids, not None")
        if isinstance(ids, (str, bytes, bytearray, memoryview)):
            shown = ids if isinstance(ids, (str, bytes)) else bytes(ids[:40])
            raise TypeError(f"{what} must be a sequence of item ids, not a bare "
                            f"{type(ids).__name__}; wrap a single id in a list: [{shown!r}]")
        if isinstance(ids, np.ma.MaskedArray):
            raise TypeError(f"{what}: masked arrays are not accepted (the mask would be "
                            "ignored); pass arr.compressed() for the unmasked ids")
        if not isinstance(ids, (np.ndarray, list, tuple, Sequence)):  # ABC check last: slow
            raise TypeError(f"{what} must be a list, tuple or numpy array of item ids, "
                            f"not {type(ids).__name__}")
        n = len(ids)
        if max_len is not None and n > max_len:
            raise ValueError(f"{what} holds {n} ids; at most {max_len} are accepted "
                             "(sessrec_sdk.Limits, set at Recommender.load)")
        if keep_last is not None and n > keep_last:
            ids = ids[n - keep_last:]
        if self.kind == "int":
            return self._coerce_int(ids, what)
        return self._coerce_str(ids, what)

    def _coerce_int(self, ids, what: str) -> np.ndarray:
        if isinstance(ids, np.ndarray):
            arr = ids
        else:
            try:
                arr = np.asarray(ids)
            except (ValueError, OverflowError):
                arr = np.asarray(ids, dtype=object) if _flat(ids) else None
                if arr is None:
                    raise TypeError(f"{what} must be a flat sequence of integer item ids") from None
        if arr.ndim != 1:
            raise TypeError(f"{what} must be a flat (1-D) sequence of integer item ids, "
                            f"got {arr.ndim}-D input")
        if arr.size == 0:
            return np.empty(0, dtype=np.int64)
        kind = arr.dtype.kind
        if kind == "i":
            if not isinstance(ids, np.ndarray) and not _BOOLS.isdisjoint(map(type, ids)):
                # numpy turns [1, True] into int64 [1, 1]: a bool is refused at its place
                return self._coerce_objects(np.asarray(ids, dtype=object), what)
            return arr.astype(np.int64, copy=False)
        if kind == "u":
            return np.where(arr <= INT64_MAX, arr.astype(np.int64), _UNKNOWN_INT)
        if kind == "O" or (kind == "f" and not isinstance(ids, np.ndarray)):
            # a list mixing numpy uint64 and int64 comes out of np.asarray as floats:
            # judge its elements one by one (real floats still raise)
            return self._coerce_objects(np.asarray(ids, dtype=object), what)
        raise TypeError(f"{what} item ids must be integers for this catalog, "
                        f"got {_describe(arr)}")

    def _coerce_objects(self, arr: np.ndarray, what: str) -> np.ndarray:
        out = np.empty(arr.shape, dtype=np.int64)
        for i, v in enumerate(arr):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{what} item ids must be integers for this catalog, "
                                f"got {type(v).__name__} {v!r} at position {i}")
            v = int(v)
            out[i] = v if INT64_MIN <= v <= INT64_MAX else _UNKNOWN_INT
        return out

    def _coerce_str(self, ids, what: str) -> np.ndarray:
        """str ids in the sorted ids' dtype; an id no catalog id can equal (longer than the
        widest, or ending in NUL, which numpy would strip) becomes a known-absent id."""
        dtype = self.sorted_ids.dtype
        if isinstance(ids, np.ndarray):
            if ids.dtype.kind != "U" or ids.ndim != 1:
                if ids.ndim != 1:
                    raise TypeError(f"{what} must be a flat (1-D) sequence of str item ids, "
                                    f"got {ids.ndim}-D input")
                if ids.dtype.kind != "O":
                    raise TypeError(f"{what} item ids must be str for this catalog, "
                                    f"got {_describe(ids)}")
            elif ids.dtype.itemsize <= dtype.itemsize:
                return ids
            else:  # wider than any catalog id: only the short enough ones can match
                fits = np.char.str_len(ids) <= self.width
                out = np.full(ids.shape, self._absent, dtype=dtype)
                out[fits] = ids[fits]
                return out
        items = list(ids)
        if not items:
            return np.empty(0, dtype=dtype)
        width = self.width
        # C-level passes over the ids; the Python loop runs only when one needs fixing
        if (set(map(type, items)) != {str} or max(map(len, items)) > width
                or "\x00" in "".join(items)):
            for i, v in enumerate(items):
                if not isinstance(v, str):
                    raise TypeError(f"{what} item ids must be str for this catalog, "
                                    f"got {type(v).__name__} {v!r} at position {i}")
                if len(v) > width or v.endswith("\x00"):
                    items[i] = self._absent
        return np.array(items, dtype=dtype)


# An int64 no catalog can contain: coerce maps out-of-range ids to it, and lookup to -1.
_UNKNOWN_INT = np.int64(INT64_MIN)


def _absent_str(sorted_ids: np.ndarray) -> str:
    """A str id of at most one character that is not in the catalog ("" unless the catalog
    holds it: found at once for any real catalog)."""
    for candidate in itertools.chain([""], map(chr, range(1, 0x110000))):
        pos = int(sorted_ids.searchsorted(candidate))
        if not (pos < len(sorted_ids) and sorted_ids[pos] == candidate):
            return candidate
    raise ValueError("a catalog of every one-character id has no room for an absent id")


def _flat(ids) -> bool:
    return all(not isinstance(v, (list, tuple, np.ndarray)) for v in ids)


def _describe(arr: np.ndarray) -> str:
    names = {"f": "floats", "b": "booleans", "U": "strings", "S": "bytes", "c": "complex numbers"}
    return f"{names.get(arr.dtype.kind, str(arr.dtype))} (dtype {arr.dtype})"
