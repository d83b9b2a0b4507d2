"""HR@K, MRR@K and NDCG@K: the one implementation used by training (validation), the
evaluation and the benchmarks.

Ranks are 0-based (0 = the target is first). A list-returning method ranks the target at
its list position (:func:`list_rank`); a full-catalog ranking counts the items scored
strictly above the target (ties count in the target's favour, :func:`rank_targets`,
:func:`rank_in_scores`). A miss is any rank >= K; ``MISS`` is the rank of a target that is
absent, unknown or has a non-finite score.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (10, 20)
MISS = 10**9


def ranking_metrics(ranks, n: int | None = None, ks: Sequence[int] = KS) -> dict:
    """HR@K, MRR@K, NDCG@K from 0-based ranks; ``n`` is the denominator (default:
    len(ranks)). A hit at K is a rank < K (rank K - 1 is the K-th place); a NaN rank is a
    miss; a negative rank is a caller's bug and raises ValueError."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if (ranks < 0).any():
        raise ValueError(f"ranks are 0-based: got negative ranks {ranks[ranks < 0][:5]}")
    n = len(ranks) if n is None else n
    denom = max(n, 1)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.sum() / denom)
        out[f"MRR@{k}"] = float((1.0 / (ranks[hit] + 1)).sum() / denom)
        out[f"NDCG@{k}"] = float((1.0 / np.log2(ranks[hit] + 2)).sum() / denom)
    return out


def list_rank(recommended: np.ndarray, target) -> int:
    """Position of ``target`` in a recommendation list, or a miss (MISS)."""
    hits = np.flatnonzero(np.asarray(recommended) == target)
    return int(hits[0]) if hits.size else MISS


def rank_in_scores(scores, target_scores):
    """0-based ranks of targets among full-catalog ``scores`` [B, N] (numpy or torch),
    given each row's target score [B]: the number of items scored strictly above it.

    Non-finite target scores (NaN, +-inf) give MISS: a NaN never compares greater, so
    without the guard a NaN target would rank first. Other items' NaN scores never count
    above the target."""
    import torch

    s = torch.as_tensor(scores)
    t = torch.as_tensor(target_scores).reshape(-1, 1).to(s.dtype)
    r = (s > t).sum(dim=1)
    r = torch.where(torch.isfinite(t[:, 0]), r, torch.full_like(r, MISS))
    return r.numpy() if isinstance(scores, np.ndarray) else r


def rank_targets(model, inputs, targets, batch_size: int = 1024, progress=False,
                 n_miss: int | None = None) -> np.ndarray:
    """0-based rank of each target among all items by ``model(items)`` (ties count in the
    target's favour); unknown targets (< 0), empty inputs and non-finite target scores get
    rank ``n_miss`` (default: the model's n_items; always a miss)."""
    import torch

    from . import data as D

    model.eval()
    miss = int(model.config["n_items"] if n_miss is None else n_miss)
    lengths = np.array([len(x) for x in inputs], dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    ranks = np.full(len(inputs), miss, dtype=np.int64)
    ok = np.flatnonzero(lengths > 0)
    order = ok[np.argsort(lengths[ok], kind="stable")]
    it = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="rank", unit="batch", leave=False)
    with torch.no_grad():
        for start in it:
            idx = order[start : start + batch_size]
            items = D.pad_batch([inputs[i] for i in idx])
            t = torch.as_tensor(targets[idx])
            known = t >= 0
            logits = model(torch.as_tensor(items))
            tgt = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
            r = rank_in_scores(logits, tgt)
            r = torch.where(known & (r < MISS), r, torch.full_like(r, miss))
            ranks[idx] = r.numpy()
    return ranks
