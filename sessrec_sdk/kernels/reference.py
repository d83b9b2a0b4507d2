"""The numpy kernel: the slow, obvious reference the C and Numba kernels must match.

It is also a usable backend when neither the C extension nor Numba is available. It follows
the determinism contract of csrc/sessrec_kernels.c: float32 products accumulated over
``LANES`` lanes (element i into lane i % LANES, rows added in order), lanes folded pairwise,
bias added last; ranking by score descending, then row ascending.
"""
from __future__ import annotations

import numpy as np

from .common import (
    LANES,
    CatalogArrays,
    KernelQuery,
    NeighborRangeError,
    check_query,
    check_rows,
)


def lane_dot(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Dot products of float32 (or float16) ``rows`` [n, d] with ``query`` [d], lane order."""
    n, dim = rows.shape
    padded_dim = -(-dim // LANES) * LANES
    products = np.zeros((n, padded_dim), dtype=np.float32)
    products[:, :dim] = rows.astype(np.float32) * query
    acc = np.zeros((n, LANES), dtype=np.float32)
    for start in range(0, padded_dim, LANES):  # sequential, like the C loop
        acc += products[:, start:start + LANES]
    half = LANES // 2
    while half >= 1:
        acc = acc[:, :half] + acc[:, half:2 * half]
        half //= 2
    return acc[:, 0]


def candidate_rows(cat: CatalogArrays, q: KernelQuery) -> np.ndarray:
    """Rows that survive merge + dedupe + exclusions + allow-list + category filter."""
    check_query(cat, q)
    check_rows(q, cat.n_items)
    block = cat.neighbors[q.seeds, :q.n_use]
    bad = (block < -1) | (block >= cat.n_items)
    if bad.any():
        raise NeighborRangeError(int(q.seeds[np.argmax(bad.any(axis=1))]))
    cands = block.ravel()
    if not q.exclude_seeds:
        cands = np.concatenate([q.seeds, cands])
    if q.candidates is not None:
        cands = np.concatenate([cands, q.candidates])
    cands = np.unique(cands[cands >= 0])
    removed = q.excluded if not q.exclude_seeds else np.concatenate([q.excluded, q.seeds])
    cands = cands[~np.isin(cands, removed)]
    if q.allowed is not None:
        cands = cands[np.isin(cands, q.allowed)]
    if q.allowed_cats is not None:
        cands = cands[np.isin(cat.categories[cands], q.allowed_cats)]
    return cands


def top_k(cat: CatalogArrays, q: KernelQuery, scratch=None) -> tuple[np.ndarray, np.ndarray, int]:
    cands = candidate_rows(cat, q)
    if q.k <= 0 or cands.size == 0:
        return np.empty(0, np.int32), np.empty(0, np.float32), int(cands.size)
    scores = lane_dot(np.asarray(cat.matrix[cands]), q.query)
    if cat.bias is not None:
        scores = scores + cat.bias[cands]
    order = np.lexsort((cands, -scores))[:q.k]
    return cands[order].astype(np.int32), scores[order].astype(np.float32), int(cands.size)
