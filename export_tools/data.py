"""Training-side data pipeline: event log -> sessions -> catalog rows -> training examples.

The steps, in the order an export runs them::

    events = read_events("train.csv.gz")          # or read_diginetica_raw(views, categories)
    sessions = sessionize(events)                  # int64 external ids per session, oldest first
    sessions = clean_sessions(sessions)            # SR-GNN style: repeats, support, length
    catalog = build_catalog(sessions, read_items("items.csv.gz"))
    rows = to_rows(sessions, catalog)              # int32 catalog rows, -1 = unknown
    inputs, targets = augment_prefixes(rows)       # every prefix -> next item
    batch = pad_batch(inputs[:512])                # int64 [B, L], -1 padded (model input)

Everything after reading works on flat numpy arrays (one concatenation, index arithmetic,
one split), never on a Python loop per event, so the 417k-event Diginetica train split goes
through sessionize + clean + augment in well under a second. Sessions are returned as lists
of 1-D arrays because that is what models, evaluation and the SDK consume one at a time.

Conventions shared with the runtime (``sessrec_sdk``): external item ids are int64; the
catalog row of an item is its index in the catalog's sorted id array; -1 means "unknown"
for rows, categories and padding alike.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EVENT_COLUMNS = ("session_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "category_id")
RAW_VIEW_COLUMNS = ("session_id", "item_id", "timeframe", "eventdate")

_PARQUET_SUFFIXES = (".parquet", ".pq")
_DELIMITERS = (",", ";", "\t")

__all__ = [
    "Catalog",
    "augment_prefixes",
    "build_catalog",
    "category_rates",
    "clean_sessions",
    "load_diginetica",
    "pad_batch",
    "read_diginetica_raw",
    "read_events",
    "read_items",
    "same_category_filter",
    "same_category_filter_many",
    "sessionize",
    "split_validation",
    "VALID_SPLITS",
    "to_rows",
]


# --------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Catalog:
    """The items a model knows, in row order, with their categories.

    Rows are sorted by external id so that :meth:`rows` is a binary search (no Python dict
    of millions of ids), matching the id map the bundle stores. Arrays are made read-only:
    the catalog is shared by training, export and evaluation and must not drift.
    ``eq=False`` because element-wise array comparison has no single truth value.
    """

    item_ids: np.ndarray  # int64 [n] external item ids, strictly increasing; index = row
    categories: np.ndarray  # int32 [n] category index per row, -1 if unknown
    category_ids: np.ndarray  # int64 [n_categories] external category id per index

    def __post_init__(self) -> None:
        item_ids = _readonly(self.item_ids, np.int64)
        categories = _readonly(self.categories, np.int32)
        category_ids = _readonly(self.category_ids, np.int64)
        if item_ids.ndim != 1 or categories.shape != item_ids.shape:
            raise ValueError(f"Catalog: item_ids {item_ids.shape} and categories "
                             f"{categories.shape} must be 1-D of the same length")
        if item_ids.size > 1 and not np.all(item_ids[1:] > item_ids[:-1]):
            raise ValueError("Catalog: item_ids must be strictly increasing (sorted, unique)")
        if categories.size and (categories.min() < -1 or categories.max() >= len(category_ids)):
            raise ValueError(f"Catalog: categories must lie in [-1, {len(category_ids)})")
        object.__setattr__(self, "item_ids", item_ids)
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "category_ids", category_ids)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def n_categories(self) -> int:
        return int(self.category_ids.shape[0])

    def rows(self, external_ids: Any) -> np.ndarray:
        """int32 rows of ``external_ids`` (any shape), -1 for ids not in the catalog.

        Vectorised binary search; unknown ids are kept as -1 rather than dropped because
        the evaluation protocol counts an unknown target as a miss.
        """
        ids = np.asarray(external_ids)
        if ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int32)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"item ids must be integers, got an array of dtype {ids.dtype}")
        too_big = None
        if ids.dtype == np.uint64:  # ids above int64 cannot be in the catalog
            too_big = ids > np.uint64(np.iinfo(np.int64).max)
            ids = np.minimum(ids, np.uint64(np.iinfo(np.int64).max))
        ids = ids.astype(np.int64)
        if self.n_items == 0:
            return np.full(ids.shape, -1, dtype=np.int32)
        pos = np.searchsorted(self.item_ids, ids)
        pos_c = np.minimum(pos, self.n_items - 1)
        found = self.item_ids[pos_c] == ids
        if too_big is not None:
            found &= ~too_big
        return np.where(found, pos_c, -1).astype(np.int32)

    def external(self, rows: Any) -> np.ndarray:
        """int64 external ids of catalog ``rows``; raises on -1 or out-of-range rows.

        Checked because a stray -1 would otherwise silently index the last item.
        """
        r = np.asarray(rows)
        if r.size and (r.dtype.kind not in "iu" or r.min() < 0 or r.max() >= self.n_items):
            raise ValueError(f"rows must be integers in [0, {self.n_items})")
        return self.item_ids[r.astype(np.int64, copy=False)]


def _readonly(a: Any, dtype: type) -> np.ndarray:
    """A read-only copy (never freezes the caller's own array)."""
    out = np.array(a, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

def _open_text(path: Path):
    """Text handle for a plain or compressed file (by magic bytes, not by suffix)."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rt", encoding="utf-8", newline="")
    if magic.startswith(b"\xfd7zXZ"):
        return lzma.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _normalise(name: str) -> str:
    """Column-name key that matches session_id, sessionId, SessionID, 'session id'..."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def _read_table(path: str | Path, what: str) -> tuple[pd.DataFrame, Path]:
    """Read CSV (delimiter sniffed from the header) or Parquet into a DataFrame."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    if _is_parquet(p):
        try:
            df = pd.read_parquet(p)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading Parquet file {p} needs pyarrow: "
                              "pip install pyarrow") from exc
    else:
        with _open_text(p) as fh:
            header = fh.readline()
        if not header.strip():
            raise ValueError(f"{p}: empty file, expected a header line")
        sep = max(_DELIMITERS, key=header.count)
        df = pd.read_csv(p, sep=sep, compression="infer")
    # Map spelling variants (itemId, SessionID, ...) onto the canonical snake_case names.
    canonical = {_normalise(c): c for c in (*EVENT_COLUMNS, *ITEM_COLUMNS, *RAW_VIEW_COLUMNS)}
    df = df.rename(columns={c: canonical.get(_normalise(c), c) for c in df.columns})
    return df, p


def _require(df: pd.DataFrame, path: Path, required: Sequence[str], hint: str = "") -> None:
    for col in required:
        if col not in df.columns:
            raise ValueError(f"{path}: missing column {col!r} (found {list(df.columns)}; "
                             f"expected {','.join(required)}){hint}")


def _int_column(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    """The column as int64, or a ValueError naming the file, the column and a bad value."""
    s = df[col]
    if s.dtype.kind in "iu":
        return s.to_numpy(dtype=np.int64)
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() | (num.notna() & (num != np.floor(num.fillna(0))))
    if bad.any():
        first = s[bad].iloc[0]
        raise ValueError(f"{path}: column {col!r} must hold integers; row {int(bad.idxmax())} "
                         f"has {first!r} ({int(bad.sum())} bad values)")
    return num.to_numpy(dtype=np.int64)


def _order_column(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    """A sortable numeric timestamp: numbers as they are, datetimes/strings as int64 ns."""
    s = df[col]
    if s.dtype.kind in "iuf":
        if s.isna().any():
            raise ValueError(f"{path}: column {col!r} has {int(s.isna().sum())} missing values")
        return s.to_numpy()
    try:
        t = pd.to_datetime(s)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column {col!r} must be numbers or dates: {exc}") from exc
    if t.isna().any():
        raise ValueError(f"{path}: column {col!r} has {int(t.isna().sum())} missing values")
    return t.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def read_events(path: str | Path) -> pd.DataFrame:
    """Read an event log: one row per event, columns session_id, item_id, timestamp
    [, category_id].

    CSV (optionally gzip/bz2/xz compressed; delimiter ``,`` ``;`` or tab, sniffed from the
    header) or Parquet. Column spellings such as ``sessionId``/``itemId`` are accepted.
    ``timestamp`` only orders events within a session: numbers are kept, dates are
    converted to int64 nanoseconds. item_id is int64; session_id is kept as read (any
    sortable type). A missing column raises ValueError naming the file and the column.
    """
    df, p = _read_table(path, "events")
    hint = ("; this looks like the raw Diginetica format, use read_diginetica_raw()"
            if "timeframe" in df.columns else "")
    _require(df, p, EVENT_COLUMNS, hint)
    if df["session_id"].isna().any():
        raise ValueError(f"{p}: column 'session_id' has {int(df['session_id'].isna().sum())} "
                         "missing values")
    out = pd.DataFrame({
        "session_id": df["session_id"].to_numpy(),
        "item_id": _int_column(df, "item_id", p),
        "timestamp": _order_column(df, "timestamp", p),
    })
    if "category_id" in df.columns:
        cat = pd.to_numeric(df["category_id"], errors="coerce")
        out["category_id"] = cat.astype("Int64") if cat.isna().any() else cat.astype(np.int64)
    return out


def read_items(path: str | Path) -> pd.DataFrame:
    """Read the item -> category table: columns item_id, category_id (int64).

    Accepts the Diginetica spelling ``itemId;categoryId``. Rows without a category are
    dropped (such items get category -1 in the catalog); exact duplicate rows are dropped.
    """
    df, p = _read_table(path, "items")
    _require(df, p, ITEM_COLUMNS)
    df = df.dropna(subset=["category_id"])
    out = pd.DataFrame({"item_id": _int_column(df, "item_id", p),
                        "category_id": _int_column(df, "category_id", p)})
    return out.drop_duplicates(ignore_index=True)


def read_diginetica_raw(views_path: str | Path,
                        categories_path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the raw CIKM Cup 2016 files (train-item-views.csv, product-categories.csv).

    Raw rows carry ``timeframe`` (ms since the session started) and ``eventdate``; within a
    session the events are ordered by (eventdate, timeframe), ties kept in file order, and
    ``timestamp`` becomes that position 0, 1, 2, ... like the preprocessed split.
    Returns (events with session_id,item_id,timestamp; items with item_id,category_id).
    """
    df, p = _read_table(views_path, "views")
    _require(df, p, RAW_VIEW_COLUMNS)
    session = df["session_id"].to_numpy()
    item = _int_column(df, "item_id", p)
    timeframe = _order_column(df, "timeframe", p)
    date = _order_column(df, "eventdate", p)
    # lexsort is stable: last key is primary -> session, then date, then timeframe.
    order = np.lexsort((timeframe, date, session))
    session_sorted = session[order]
    starts = np.r_[True, session_sorted[1:] != session_sorted[:-1]]
    start_idx = np.flatnonzero(starts)
    seg_len = np.diff(np.r_[start_idx, len(order)])
    position = np.arange(len(order)) - np.repeat(start_idx, seg_len)
    events = pd.DataFrame({"session_id": session_sorted,
                           "item_id": item[order],
                           "timestamp": position.astype(np.int64)})
    return events, read_items(categories_path)


# --------------------------------------------------------------------------------------
# Sessions (flat-array helpers)
# --------------------------------------------------------------------------------------

def _flatten(seqs: Sequence[np.ndarray], dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated values, int64 lengths) of a list of 1-D arrays (or lists)."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    if len(seqs) == 0 or lengths.sum() == 0:
        return np.empty(0, dtype=dtype or np.int64), lengths
    flat = np.concatenate(seqs)
    if flat.ndim != 1:
        raise ValueError(f"expected 1-D sessions, got {flat.ndim}-D")
    if dtype is not None:
        flat = flat.astype(dtype, copy=False)
    return flat, lengths


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Inverse of :func:`_flatten`: views into ``flat`` (plain slicing; ~4x np.split)."""
    ends = np.cumsum(lengths)
    return [flat[a:b] for a, b in zip((ends - lengths).tolist(), ends.tolist())]


def _segment_ids(lengths: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)


def sessionize(events: pd.DataFrame | Mapping[str, Any]) -> list[np.ndarray]:
    """Group events into sessions: int64 external item ids per session, oldest first.

    Sessions come out in session_id order; within a session events are stably sorted by
    timestamp (equal timestamps keep their input order). Accepts the DataFrame of
    :func:`read_events` or any mapping of column name -> array.
    """
    session = np.asarray(events["session_id"])
    item = np.asarray(events["item_id"], dtype=np.int64)
    ts = np.asarray(events["timestamp"])
    if ts.dtype.kind == "M":
        ts = ts.astype("datetime64[ns]").astype(np.int64)
    if not len(session):
        return []
    codes, _ = pd.factorize(session, sort=True)  # dense codes in session_id order
    if (codes < 0).any():
        raise ValueError(f"session_id has {int((codes < 0).sum())} missing values")
    order = np.lexsort((ts, codes))  # stable: ties in timestamp keep input order
    codes_sorted = codes[order]
    return _split(item[order], np.bincount(codes_sorted))


def clean_sessions(sessions: Sequence[np.ndarray], *,
                   drop_consecutive_repeats: bool = True,
                   min_item_support: int = 5,
                   min_session_length: int = 2,
                   max_session_length: int | None = 20) -> list[np.ndarray]:
    """Filter sessions the way SR-GNN / GRAINRec preprocessing does.

    1. drop consecutive repeats (a, a, b -> a, b): a reload is not a new interest;
    2. drop sessions shorter than ``min_session_length`` (SR-GNN drops length-1 sessions
       before counting, so they do not lend support to items);
    3. count each item's support (occurrences) on the remaining sessions and remove items
       with support < ``min_item_support`` from every session (one pass, as SR-GNN; not
       iterated to a fixed point, so a few survivors may end below the threshold);
    4. removing an item can create new consecutive repeats (a, x, a -> a, a): collapsed
       again when ``drop_consecutive_repeats`` so the output never has any;
    5. drop sessions now shorter than ``min_session_length``;
    6. keep the last ``max_session_length`` events of longer sessions (the recent end is
       what predicts the next item); None keeps everything.

    Input: external ids (any integer dtype); output: int64 arrays, input order kept.
    """
    if min_session_length < 1:
        raise ValueError("min_session_length must be >= 1")
    if max_session_length is not None and max_session_length < 1:
        raise ValueError("max_session_length must be >= 1 or None")
    flat, lengths = _flatten(sessions, dtype=np.int64)
    seg = _segment_ids(lengths)

    def collapse(flat: np.ndarray, seg: np.ndarray) -> np.ndarray:
        keep = np.ones(len(flat), dtype=bool)
        keep[1:] = (flat[1:] != flat[:-1]) | (seg[1:] != seg[:-1])
        return keep

    def select(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # current flat, seg
        return flat[keep], seg[keep]

    if drop_consecutive_repeats:
        flat, seg = select(collapse(flat, seg))
    n_sess = len(lengths)
    lengths = np.bincount(seg, minlength=n_sess)
    flat, seg = select(lengths[seg] >= min_session_length)
    if min_item_support > 1 and len(flat):
        _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        flat, seg = select(counts[inverse] >= min_item_support)
        if drop_consecutive_repeats:
            flat, seg = select(collapse(flat, seg))
    lengths = np.bincount(seg, minlength=n_sess)
    flat, seg = select(lengths[seg] >= min_session_length)
    lengths = np.bincount(seg, minlength=n_sess)
    if max_session_length is not None:
        # position counted from the end of the session: keep the last max_session_length
        ends = np.cumsum(lengths)
        from_end = ends[seg] - np.arange(len(flat))  # 1 for the last event
        flat, seg = select(from_end <= max_session_length)
        lengths = np.minimum(lengths, max_session_length)
    return _split(flat, lengths[lengths > 0])


# --------------------------------------------------------------------------------------
# Catalog and rows
# --------------------------------------------------------------------------------------

def build_catalog(sessions: Sequence[np.ndarray],
                  items: pd.DataFrame | Mapping[str, Any] | None = None) -> Catalog:
    """Catalog of the items that occur in ``sessions`` (the cleaned training sessions).

    Rows are sorted by external id. Categories come from ``items`` (item_id, category_id;
    the events table with a category_id column works too); items missing from it get -1.
    Category indices number only the categories of catalog items, in external-id order.
    An item listed with two different categories raises ValueError (silently picking one
    would corrupt the category filters).
    """
    flat, _ = _flatten(sessions, dtype=np.int64)
    item_ids = np.unique(flat)
    categories = np.zeros(len(item_ids), dtype=np.int64)  # external category ids
    has_cat = np.zeros(len(item_ids), dtype=bool)
    if items is not None:
        it = np.asarray(items["item_id"], dtype=np.int64)
        cat = pd.Series(np.asarray(items["category_id"]))
        known = cat.notna().to_numpy()
        it, cat = it[known], cat[known].to_numpy(dtype=np.int64)
        order = np.lexsort((cat, it))
        it, cat = it[order], cat[order]
        first = np.ones(len(it), dtype=bool)
        first[1:] = (it[1:] != it[:-1]) | (cat[1:] != cat[:-1])
        it, cat = it[first], cat[first]  # unique (item, category) pairs, sorted by item
        dup = it[1:] == it[:-1]
        if dup.any():
            bad = np.unique(it[1:][dup])
            raise ValueError(f"items table gives {len(bad)} items more than one category, "
                             f"e.g. item_id {bad[:5].tolist()}")
        if len(it):
            pos = np.minimum(np.searchsorted(it, item_ids), len(it) - 1)
            found = it[pos] == item_ids
            categories[found] = cat[pos[found]]
            has_cat = found
    # external category ids are arbitrary int64: index them through np.unique over known
    category_ids, cat_index = np.unique(categories[has_cat], return_inverse=True)
    cat_rows = np.full(len(item_ids), -1, dtype=np.int32)
    cat_rows[has_cat] = cat_index
    return Catalog(item_ids=item_ids, categories=cat_rows, category_ids=category_ids)


def to_rows(sessions: Sequence[np.ndarray], catalog: Catalog) -> list[np.ndarray]:
    """Map external ids to int32 catalog rows, -1 for unknown items (kept, not dropped:
    the evaluation protocol counts an unknown target as a miss)."""
    flat, lengths = _flatten(sessions, dtype=np.int64)
    return _split(catalog.rows(flat), lengths)


def _row_categories(rows: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Category of each row, -1 for unknown rows (-1) instead of wrapping to the end."""
    rows = np.asarray(rows)
    out = np.full(rows.shape, -1, dtype=np.int64)
    ok = rows >= 0
    out[ok] = categories[rows[ok]]
    return out


def same_category_filter(rows: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The session items in the last item's category, order kept (GRAINRec's session
    filter). The last item is always kept. An unknown category (-1, or an unknown row)
    matches nothing: if the last item's category is unknown only the last item remains."""
    rows = np.asarray(rows)
    if rows.size == 0:
        return rows.copy()
    cat = _row_categories(rows, np.asarray(categories))
    keep = (cat == cat[-1]) & (cat >= 0)
    keep[-1] = True
    return rows[keep]


def same_category_filter_many(seqs: Sequence[np.ndarray],
                              categories: np.ndarray) -> list[np.ndarray]:
    """:func:`same_category_filter` for many sessions at once, vectorised (training
    filters hundreds of thousands of prefixes; a Python loop would dominate)."""
    flat, lengths = _flatten(seqs, dtype=np.int32)
    if len(flat) == 0:
        return [np.empty(0, dtype=np.int32) for _ in seqs]
    seg = _segment_ids(lengths)
    cat = _row_categories(flat, np.asarray(categories))
    last = np.cumsum(lengths) - 1
    is_last = np.zeros(len(flat), dtype=bool)
    is_last[last[lengths > 0]] = True
    last_cat = np.full(len(lengths), -1, dtype=np.int64)
    last_cat[lengths > 0] = cat[last[lengths > 0]]
    keep = ((cat == last_cat[seg]) & (cat >= 0)) | is_last
    return _split(flat[keep], np.bincount(seg[keep], minlength=len(lengths)))


# --------------------------------------------------------------------------------------
# Training examples
# --------------------------------------------------------------------------------------

def augment_prefixes(sessions_rows: Sequence[np.ndarray], *,
                     max_length: int | None = 20) -> tuple[list[np.ndarray], np.ndarray]:
    """Every prefix of every session -> its next item (the SR-GNN augmentation).

    For a session s of length n: inputs s[:i] (its last ``max_length`` items), target
    s[i], for i = 1..n-1, in session order then i ascending. Sessions shorter than 2
    give nothing. Inputs are read-only views into one shared array (no per-example
    copy); targets are int32.
    """
    if max_length is not None and max_length < 1:
        raise ValueError("max_length must be >= 1 or None")
    flat, lengths = _flatten(sessions_rows, dtype=np.int32)
    flat.flags.writeable = False
    starts = np.cumsum(lengths) - lengths
    n_ex = np.maximum(lengths - 1, 0)
    # example j of session k: target at starts[k] + i with i = 1..n-1
    ex_seg = _segment_ids(n_ex)
    i = np.arange(int(n_ex.sum()), dtype=np.int64) - np.repeat(np.cumsum(n_ex) - n_ex, n_ex) + 1
    t_pos = starts[ex_seg] + i
    s_pos = starts[ex_seg] if max_length is None else \
        np.maximum(starts[ex_seg], t_pos - max_length)
    targets = flat[t_pos].astype(np.int32)
    inputs = [flat[a:b] for a, b in zip(s_pos.tolist(), t_pos.tolist())]
    return inputs, targets


VALID_SPLITS = ("recent", "random")


def split_validation(sessions: Sequence[Any], fraction: float = 0.1,
                     seed: int = 0, how: str = "random") -> tuple[list[Any], list[Any]]:
    """Hold out ``fraction`` of whole sessions (never prefixes of one session on both
    sides, which would leak targets). Both parts keep input order.

    ``how="recent"``: the last sessions in input (time) order, the way a bundle is used:
    trained on the past, serving later sessions; the choice for data whose test period
    follows its training period. ``how="random"``: a seeded random sample."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if how not in VALID_SPLITS:
        raise ValueError(f"how must be one of {VALID_SPLITS}, got {how!r}")
    n = len(sessions)
    n_valid = round(fraction * n)
    chosen = np.zeros(n, dtype=bool)
    if how == "recent":
        chosen[n - n_valid:] = True
    else:
        chosen[np.random.default_rng(seed).permutation(n)[:n_valid]] = True
    train = [s for s, c in zip(sessions, chosen.tolist()) if not c]
    valid = [s for s, c in zip(sessions, chosen.tolist()) if c]
    return train, valid


def pad_batch(seqs: Sequence[np.ndarray], max_length: int | None = None) -> np.ndarray:
    """int64 [B, L] batch, each row left-aligned and padded with -1 (the models' input).

    L = the longest sequence, capped at ``max_length`` when given (a sequence longer than
    that keeps its last ``max_length`` items, the ones that predict the next one).
    """
    if max_length is not None and max_length < 1:
        raise ValueError("max_length must be >= 1 or None")
    flat, lengths = _flatten(seqs, dtype=np.int64)
    kept = lengths if max_length is None else np.minimum(lengths, max_length)
    width = int(kept.max()) if len(kept) else 0
    out = np.full((len(lengths), width), -1, dtype=np.int64)
    if width == 0:
        return out
    ends = np.cumsum(lengths)
    take = np.repeat(ends - kept, kept) + (np.arange(int(kept.sum()))
                                           - np.repeat(np.cumsum(kept) - kept, kept))
    out[np.arange(width)[None, :] < kept[:, None]] = flat[take]
    return out


def category_rates(inputs: Sequence[np.ndarray], targets: np.ndarray,
                   categories: np.ndarray) -> dict[str, float | int]:
    """How often the next item stays in the session's categories or repeats an item.

    The export records these in the manifest to choose the SDK's default category filter
    and whether to exclude session items. For each example (input rows, target row):

    * ``next_same_last_category``: target category == last input item's category;
    * ``next_in_session_categories``: target category == some input item's category;
    * ``next_repeats_session_item``: target row occurs among the input rows;
    * ``n_examples``.

    Unknown rows (-1) and unknown categories (-1) never match anything, so examples with
    an unknown target count as misses. Rates are NaN when there are no examples.
    """
    targets = np.asarray(targets).astype(np.int64).ravel()
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    categories = np.asarray(categories)
    n = len(targets)
    if n == 0:
        nan = float("nan")
        return {"n_examples": 0, "next_same_last_category": nan,
                "next_in_session_categories": nan, "next_repeats_session_item": nan}
    flat, lengths = _flatten(inputs, dtype=np.int64)
    seg = _segment_ids(lengths)
    cat = _row_categories(flat, categories)
    t_cat = _row_categories(targets, categories)
    nonempty = lengths > 0
    last_cat = np.full(n, -1, dtype=np.int64)
    last_cat[nonempty] = cat[(np.cumsum(lengths) - 1)[nonempty]]
    same_last = (t_cat >= 0) & (last_cat == t_cat)
    in_cats = np.bincount(seg, weights=((cat >= 0) & (cat == t_cat[seg])), minlength=n) > 0
    repeats = np.bincount(seg, weights=((flat >= 0) & (flat == targets[seg])), minlength=n) > 0
    return {
        "n_examples": int(n),
        "next_same_last_category": float(same_last.mean()),
        "next_in_session_categories": float(in_cats.mean()),
        "next_repeats_session_item": float(repeats.mean()),
    }


# --------------------------------------------------------------------------------------
# Bundled dataset
# --------------------------------------------------------------------------------------

def _resolve_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as given, or relative to the repository root when run elsewhere."""
    p = Path(data_dir)
    if p.is_dir() or p.is_absolute():
        return p
    repo_relative = Path(__file__).resolve().parents[1] / p
    return repo_relative if repo_relative.is_dir() else p


def load_diginetica(data_dir: str | Path = "data/diginetica", *,
                    min_item_support: int = 1,
                    max_session_length: int | None = None,
                    ) -> tuple[list[np.ndarray], list[np.ndarray], Catalog]:
    """The bundled Diginetica split, ready for training and evaluation.

    Returns (train sessions as int32 catalog rows; test sessions as int64 EXTERNAL ids
    exactly as published, the last event being the target; the catalog of the train items
    with their categories). Test sessions stay external so that the 331 test targets that
    never occur in train stay visible (they become -1 rows, i.e. misses).

    Train goes through :func:`clean_sessions` with its defaults except two, because the
    split is already preprocessed upstream (support >= 5 counted on the whole dataset
    before the train/test split; sessions >= 3 events, no repeated items):

    * ``min_item_support=1``: recounting support on the train split alone would remove
      18,476 of its 42,213 items and make 7,603 test targets (not 331) unknown;
    * ``max_session_length=None``: capping train sessions at 20 events would drop the
      training targets of 281 long sessions' early parts (and 11 items). Cap the model
      inputs instead with ``augment_prefixes(max_length=20)``, which keeps every target.

    With these the result is the published split: 77,929 sessions, 42,213 items. Pass
    ``min_item_support=5, max_session_length=20`` for the generic defaults.
    """
    d = _resolve_data_dir(data_dir)
    train = clean_sessions(sessionize(read_events(d / "train.csv.gz")),
                           min_item_support=min_item_support,
                           max_session_length=max_session_length)
    test = sessionize(read_events(d / "test.csv.gz"))
    catalog = build_catalog(train, read_items(d / "items.csv.gz"))
    return to_rows(train, catalog), test, catalog
