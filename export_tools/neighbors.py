"""The bundle's nearest-neighbor matrix: exact top-K per item, in blocks."""
from __future__ import annotations

import numpy as np


def nearest_neighbors(matrix: np.ndarray, k: int, similarity: str = "cosine",
                      block: int = 2048, progress: bool = False,
                      queries: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k neighbors of every row (itself excluded), best first, ties by row.

    ``similarity``: "cosine" or "inner" between rows of ``matrix``; with ``queries``
    (one row per item) row i's neighbors are the top-k of queries[i] . matrix.
    Computed in blocks of rows so memory stays at block x n_items floats.
    """
    if similarity not in ("cosine", "inner"):
        raise ValueError("similarity must be 'cosine' or 'inner'")
    m = np.asarray(matrix, dtype=np.float32)
    if similarity == "cosine":
        m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    q = m if queries is None else np.asarray(queries, dtype=np.float32)
    n = len(m)
    k_eff = min(k, n - 1)
    out = np.full((n, k), -1, dtype=np.int32)
    starts = range(0, n, block)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="neighbors", unit="block", leave=False)
    import torch

    mt, qt = torch.from_numpy(m), torch.from_numpy(q)
    for start in starts:
        stop = min(start + block, n)
        with torch.no_grad():
            sims = qt[start:stop] @ mt.T
            sims[torch.arange(stop - start), torch.arange(start, stop)] = -torch.inf
            # one extra so that ties at the K-th place are resolved by row below
            vals, idx = torch.topk(sims, min(k_eff + 1, n - 1), dim=1)
        vals, idx = vals.numpy(), idx.numpy()
        order = np.lexsort((idx, -vals), axis=1)[:, :k_eff]
        out[start:stop, :k_eff] = np.take_along_axis(idx, order, axis=1)
    return out


def model_neighbor_space(model, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(queries, item matrix) for ``similarity="model"``: item i's neighbors are the items
    the model itself ranks highest after the one-item session [i] (the scored rows of its
    item tables; a per-item bias is not part of this similarity)."""
    import torch

    n = int(model.config["n_items"])
    queries = np.empty((n, model.query_dim), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, n, batch):
            items = torch.arange(start, min(start + batch, n), dtype=torch.int64)[:, None]
            queries[start:start + len(items)] = model.encode(items, model.embed(items)).numpy()
    return queries, model.item_tables().item_matrix
