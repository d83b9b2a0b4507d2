"""Synthetic bundles (no torch) for tests, examples and benchmarks.

Item vectors are drawn around cluster centres, so an item's nearest neighbors are members
of its own cluster and categories (two clusters each, plus some noise) mean something. The
encoder is a small real ONNX graph built with the onnx helper API:
query = tanh((mean(item_emb) + last(item_emb)) @ W + b).
1,000,000 items, d=256, K=100 build in well under two minutes on two cores.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sessrec_sdk.bundle import ENCODER_OUTPUT, ROW_ORDERS, write_bundle

from .layout import locality_order, reorder_rows


def synthetic_encoder(dim: int, seed: int = 0) -> bytes:
    """Serialized ONNX model: items [1, L] int64, item_emb [1, L, dim] -> query [1, dim]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((dim, dim)) / np.sqrt(2 * dim)).astype(np.float32)
    bias = (rng.standard_normal(dim) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias"),
             numpy_helper.from_array(np.array(-1, np.int64), "last_index")]
    # This encoder ignores the session structure in "items" (a graph model uses it).
    nodes = [
        helper.make_node("ReduceMean", ["item_emb"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("Gather", ["item_emb", "last_index"], ["last"], axis=1),
        helper.make_node("Add", ["mean", "last"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["pre"]),
        helper.make_node("Tanh", ["pre"], [ENCODER_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes, "synthetic_session_encoder",
        [helper.make_tensor_value_info("items", TensorProto.INT64, [1, "L"]),
         helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, [1, "L", dim])],
        [helper.make_tensor_value_info(ENCODER_OUTPUT, TensorProto.FLOAT, [1, dim])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="sessrec.synthetic")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _cluster_neighbors(vectors: np.ndarray, labels: np.ndarray, k: int,
                       progress: bool) -> np.ndarray:
    """Exact top-k inner-product neighbors of every item within its cluster, best first."""
    n = len(vectors)
    out = np.full((n, k), -1, dtype=np.int32)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    groups = np.split(order, bounds)
    for members in _progress(groups, progress, "neighbors"):
        m = len(members)
        if m < 2:
            continue
        vec = np.asarray(vectors[members], dtype=np.float32)
        sims = vec @ vec.T
        np.fill_diagonal(sims, -np.inf)
        take = min(k, m - 1)
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take < m else None
        part = part if part is not None else np.argsort(-sims, axis=1)[:, :take]
        # order the kept ones best first; ties by row so the matrix is deterministic
        part_sims = np.take_along_axis(sims, part, axis=1)
        part_rows = members[part]
        idx = np.lexsort((part_rows, -part_sims), axis=1)
        out[members, :take] = np.take_along_axis(part_rows, idx, axis=1)
    return out


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, unit="cluster", leave=False)


def build_synthetic_bundle(
    out: str | os.PathLike,
    *,
    n_items: int,
    dim: int = 64,
    neighbors: int = 100,
    seed: int = 0,
    dtype: str = "float32",
    string_ids: bool = False,
    cluster_size: int | None = None,
    max_session_length: int = 3,
    row_order: str = "locality",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic bundle of ``n_items`` items to ``out`` and return its path.

    Items are drawn in random cluster order; ``row_order="locality"`` renumbers the rows
    along the neighbor graph as the export does (export_tools.layout), "given" keeps the
    drawn order (neighbor rows scattered over the matrix)."""
    if n_items < 2:
        raise ValueError("n_items must be >= 2")
    if dtype not in ("float32", "float16"):
        raise ValueError("dtype must be float32 or float16")
    if row_order not in ROW_ORDERS:
        raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
    rng = np.random.default_rng(seed)
    cluster_size = cluster_size or max(2 * neighbors, 64)
    n_clusters = max(1, n_items // cluster_size)
    labels = rng.integers(0, n_clusters, size=n_items)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    vectors = rng.standard_normal((n_items, dim), dtype=np.float32)
    vectors *= np.float32(0.6)
    vectors += centres[labels]
    vectors *= np.float32(1.0 / np.sqrt(dim))
    nbrs = _cluster_neighbors(vectors, labels, neighbors, progress)

    categories = (labels // 2).astype(np.int32)
    noisy = rng.random(n_items) < 0.1
    categories[noisy] = rng.integers(0, max(1, n_clusters // 2), size=int(noisy.sum()))

    popularity_raw = rng.zipf(1.5, size=n_items).astype(np.float64)
    popularity = np.argsort(-popularity_raw, kind="stable").astype(np.int32)
    pop_scores = (popularity_raw[popularity] / popularity_raw.sum()).astype(np.float32)

    ids = rng.choice(10 * n_items, size=n_items, replace=False).astype(np.int64) + 1
    item_ids = np.char.add("sku-", ids.astype(str)) if string_ids else ids
    arrays = {"item_matrix": vectors.astype(np.float16) if dtype == "float16" else vectors,
              "neighbors": nbrs, "item_ids": item_ids, "popularity": popularity,
              "item_category": categories}
    if row_order == "locality":
        arrays.update(reorder_rows(locality_order(nbrs), **arrays))

    return write_bundle(
        out,
        encoder=synthetic_encoder(dim, seed),
        popularity_scores=pop_scores,
        **arrays,
        model={"kind": "synthetic", "config": {"n_items": n_items, "dim": dim, "seed": seed,
                                               "n_clusters": n_clusters}},
        inference={"max_session_length": max_session_length, "session_filter": "none"},
        defaults={"k": 10, "category_filter": "none", "exclude_session_items": True},
        row_order=row_order,
        overwrite=overwrite,
    )
