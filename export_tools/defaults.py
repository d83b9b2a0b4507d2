"""The bundle's data-driven parts: next-item rates of the training data, the default
per-call options chosen from them, and the popularity ranking (cold-start fallback)."""
from __future__ import annotations

import numpy as np

from . import data as D

# Defaults are chosen from the data: a filter becomes the default only if it keeps the true
# next item at least this often on the training sessions; session items stay excluded only
# if shoppers re-visit them less often than this.
FILTER_KEEP_RATE = 0.95
REPEAT_RATE_TO_KEEP_SEEN = 0.05


def data_stats(sessions_rows: list[np.ndarray], catalog: D.Catalog, window: int) -> dict:
    """Next-item facts of the training sessions, as the SDK sees a session (last
    ``window`` items): same category as the last item, as any item, repeat of an item."""
    inputs, targets = D.augment_prefixes(sessions_rows, max_length=window)
    rates = D.category_rates(inputs, targets, np.asarray(catalog.categories))
    return {k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in rates.items()}


def choose_defaults(stats: dict, neighbors: int) -> dict:
    """Default per-call options from the measured rates (see FILTER_KEEP_RATE); 100
    neighbors per item (the paper's setting) unless the bundle has fewer."""
    if stats["next_same_last_category"] >= FILTER_KEEP_RATE:
        category_filter = "last"
    elif stats["next_in_session_categories"] >= FILTER_KEEP_RATE:
        category_filter = "session"
    else:
        category_filter = "none"
    return {"k": 20, "candidates": "neighbors", "neighbors": min(neighbors, 100),
            "category_filter": category_filter,
            "exclude_session_items": stats["next_repeats_session_item"] < REPEAT_RATE_TO_KEEP_SEEN}


def popularity(sessions_rows: list[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows by training-event count, most frequent first, ties by row (lower row first),
    and each one's share of the events."""
    counts = np.bincount(np.concatenate(sessions_rows), minlength=n_items).astype(np.float64)
    order = np.lexsort((np.arange(n_items), -counts)).astype(np.int32)
    return order, (counts[order] / max(counts.sum(), 1.0)).astype(np.float32)
