"""Row order of a bundle: put each item's neighbors close to it in the item matrix.

A recommend() call scores the neighbor rows of a few session items. With rows in model
(or id) order those rows are scattered over the whole matrix, so every row is a separate
trip to memory (and a separate address translation). Renumbering the rows along the
neighbor graph lets the rows of one neighbor list share pages and cache-line streams:
on the 1M-item reference bundle a 3-item session's rows fall in about 115 distinct 4 KB
pages instead of 300, and the kernel alone took 40 / 33 µs instead of 50 / 55 µs
(uniform / popular sessions, uncontended rounds; docs/kernels.md, BENCHMARKS.md).

The order is reverse Cuthill-McKee over the neighbor graph (scipy), the standard
bandwidth-reducing order: a breadth-first walk, so an item's neighbors are numbered near
it. Row order is internal to a bundle: callers see external ids, and every backend breaks
score ties by row, so a reordered bundle returns the same items and scores (up to the
order of exactly tied scores).
"""
from __future__ import annotations

import numpy as np


def locality_order(neighbors: np.ndarray) -> np.ndarray:
    """``order[new_row] = old_row``: reverse Cuthill-McKee over the neighbor lists.

    ``neighbors`` [n, K] int32, -1 = no neighbor. The walk follows each list as given
    (scipy's ``symmetric_mode=True`` on the directed graph): 2 s for 1M items, K=100.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    n, width = neighbors.shape
    valid = neighbors >= 0
    counts = valid.sum(axis=1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = neighbors[valid] if counts.sum() < neighbors.size else neighbors.reshape(-1)
    graph = sp.csr_array((np.ones(indices.size, dtype=np.int8),
                          indices.astype(np.int32, copy=False), indptr), shape=(n, n))
    return reverse_cuthill_mckee(graph, symmetric_mode=True).astype(np.int64)


def reorder_rows(order: np.ndarray, *, item_matrix: np.ndarray, neighbors: np.ndarray,
                 item_ids: np.ndarray, popularity: np.ndarray,
                 item_category: np.ndarray | None = None,
                 item_bias: np.ndarray | None = None,
                 input_embedding: np.ndarray | None = None) -> dict:
    """The per-row arrays of a bundle renumbered so that new row r is old row order[r].

    Arrays indexed by row are permuted; arrays holding rows (neighbor ids, the popularity
    ranking) are mapped to the new numbers. Returns the keyword arguments of
    ``write_bundle`` that changed.
    """
    n = item_matrix.shape[0]
    order = np.asarray(order, dtype=np.int64)
    if order.shape != (n,) or not np.array_equal(np.bincount(order, minlength=n), np.ones(n)):
        raise ValueError(f"order must be a permutation of the {n} rows")
    new_of_old = np.empty(n, dtype=np.int32)
    new_of_old[order] = np.arange(n, dtype=np.int32)
    nbrs = neighbors[order]
    nbrs = np.where(nbrs >= 0, new_of_old[np.maximum(nbrs, 0)], -1).astype(np.int32)
    out = {"item_matrix": item_matrix[order], "neighbors": nbrs,
           "item_ids": np.asarray(item_ids)[order],
           "popularity": new_of_old[np.asarray(popularity)]}
    for name, arr in (("item_category", item_category), ("item_bias", item_bias),
                      ("input_embedding", input_embedding)):
        if arr is not None:
            out[name] = np.asarray(arr)[order]
    return out
