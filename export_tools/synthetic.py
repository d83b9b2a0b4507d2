"""Synthetic bundles (no torch) for tests, examples and benchmarks.

Item vectors are drawn around cluster centres, so an item's nearest neighbors are members
of its own cluster and categories (two clusters each, plus some noise) mean something. The
encoder is a small real ONNX graph built with the onnx helper API:
query = tanh((mean(item_emb) + last(item_emb)) @ W + b).
1,000,000 items, d=256, K=100 build in well under two minutes on two cores.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from sessrec_sdk.bundle import (
    DEFAULT_ENCODER_SPEC,
    ENCODER_OUTPUT,
    ROW_ORDERS,
    SessionIndex,
    write_bundle,
)

from .layout import locality_order, reorder_rows

#: the synthetic encoder's repeat output (``repeat=True``), as trained models name it
SYNTHETIC_REPEAT_OUTPUT = "repeat_scores"


def synthetic_encoder(dim: int, seed: int = 0, batch: bool = False,
                      repeat: bool = False) -> bytes:
    """Serialized ONNX model: items [1, L] int64, item_emb [1, L, dim] -> query [1, dim]
    (``batch``: [B, L], [B, L, dim] -> [B, dim], each row one session). ``repeat``: also
    a learned-repeat output [1, L] (kind "repeat_scores"): item_emb[l] . v + 0.1 (l + 1),
    so an item met at several positions has several scores (the SDK keeps the largest)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((dim, dim)) / np.sqrt(2 * dim)).astype(np.float32)
    bias = (rng.standard_normal(dim) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias"),
             numpy_helper.from_array(np.array(-1, np.int64), "last_index")]
    repeat_v = (rng.standard_normal(dim) * 2).astype(np.float32)
    # This encoder ignores the session structure in "items" (a graph model uses it).
    nodes = [
        helper.make_node("ReduceMean", ["item_emb"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("Gather", ["item_emb", "last_index"], ["last"], axis=1),
        helper.make_node("Add", ["mean", "last"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["pre"]),
        helper.make_node("Tanh", ["pre"], [ENCODER_OUTPUT]),
    ]
    lead = "B" if batch else 1
    outputs = [helper.make_tensor_value_info(ENCODER_OUTPUT, TensorProto.FLOAT, [lead, dim])]
    if repeat:
        inits += [numpy_helper.from_array(repeat_v, "repeat_v"),
                  numpy_helper.from_array(np.array(0, np.int64), "first_dim"),
                  numpy_helper.from_array(np.array(1, np.int64), "seq_axis"),
                  numpy_helper.from_array(np.array(0.1, np.float32), "step")]
        nodes += [  # positions 1..L from the input's shape, then item . v + 0.1 * position
            helper.make_node("Gather", ["item_emb", "first_dim"], ["dim0"], axis=2),
            helper.make_node("Mul", ["dim0", "step"], ["tenth_dim0"]),
            helper.make_node("Sub", ["tenth_dim0", "tenth_dim0"], ["zeros"]),
            helper.make_node("Add", ["zeros", "step"], ["tenths"]),
            helper.make_node("CumSum", ["tenths", "seq_axis"], ["positions"]),
            helper.make_node("MatMul", ["item_emb", "repeat_v"], ["affinity"]),
            helper.make_node("Add", ["affinity", "positions"], [SYNTHETIC_REPEAT_OUTPUT]),
        ]
        outputs.append(helper.make_tensor_value_info(SYNTHETIC_REPEAT_OUTPUT,
                                                     TensorProto.FLOAT, [lead, "L"]))
    graph = helper.make_graph(
        nodes, "synthetic_session_encoder",
        [helper.make_tensor_value_info("items", TensorProto.INT64, [lead, "L"]),
         helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, [lead, "L", dim])],
        outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="sessrec.synthetic")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _encoder_io(batch: bool, repeat: bool) -> dict | None:
    if not (batch or repeat):
        return None  # the default declaration, no batch axis
    spec: dict = {**DEFAULT_ENCODER_SPEC, "batch": batch}
    if repeat:
        spec["outputs"] = [*DEFAULT_ENCODER_SPEC["outputs"],
                           {"name": SYNTHETIC_REPEAT_OUTPUT, "kind": "repeat_scores"}]
    return spec


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
    batch: bool = False,
    repeat_head: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic bundle of ``n_items`` items to ``out`` and return its path.

    Items are drawn in random cluster order; ``row_order="locality"`` renumbers the rows
    along the neighbor graph as the export does (export_tools.layout), "given" keeps the
    drawn order (neighbor rows scattered over the matrix). ``batch``: the encoder takes a
    batch axis (manifest ``encoder.batch``), as exported models' encoders do; the default
    writes the one-session encoder of bundles from before the key. ``repeat_head``: the
    encoder also returns learned repeat scores (:func:`synthetic_encoder`)."""
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
        encoder=synthetic_encoder(dim, seed, batch, repeat_head),
        encoder_io=_encoder_io(batch, repeat_head),
        popularity_scores=pop_scores,
        **arrays,
        model={"kind": "synthetic", "config": {"n_items": n_items, "dim": dim, "seed": seed,
                                               "n_clusters": n_clusters}},
        inference={"max_session_length": max_session_length, "session_filter": "none"},
        defaults={"k": 10, "category_filter": "none", "exclude_session_items": True},
        row_order=row_order,
        overwrite=overwrite,
    )


# --------------------------------------------------------------------------- session-kNN

#: Item popularity of the synthetic sessions: the item of popularity rank r (0-based) is
#: drawn with probability ~ 1 / (r + SKNN_ZIPF_OFFSET) (Zipf-like, exponent 1), sampled
#: by the inverse of the continuous CDF, so a draw costs O(1) at any catalog size.
SKNN_ZIPF_OFFSET = 10
#: Events per synthetic session: uniform in [SKNN_MIN_EVENTS, SKNN_MAX_EVENTS].
SKNN_MIN_EVENTS, SKNN_MAX_EVENTS = 2, 20
_SKNN_CHUNK_EVENTS = 1 << 24  # events drawn and deduplicated per block (bounds temporaries)


def synthetic_session_index(n_items: int, n_sessions: int, *, sample: int, idf: bool = True,
                            seed: int = 0) -> tuple[SessionIndex, np.ndarray]:
    """A seeded synthetic session-kNN index and each item's session count, built with
    numpy (no per-session Python).

    Sessions are numbered in time order (a larger number is more recent) and have
    2-20 events, uniformly; each event is an item drawn by Zipf-like popularity
    (``SKNN_ZIPF_OFFSET``; the popularity ranks are shuffled over the rows). Each session
    keeps its distinct items, in row order; each item lists its ``sample`` most recent
    sessions, newest first. Item weights as the export writes them
    (export_tools.models.sknn.build_index): ``idf`` = ln(distinct (session, item) pairs /
    sessions holding the item), 0 for an item no session holds; else 1.

    Memory: the events are drawn and deduplicated in blocks of sessions, so the peak is
    about 20 bytes per distinct (session, item) pair plus a block's temporaries.
    """
    if n_items < 2 or n_sessions < 1 or sample < 1:
        raise ValueError("need n_items >= 2, n_sessions >= 1 and sample >= 1")
    if n_sessions > 2**31 - 1:
        raise ValueError("session ids are int32: at most 2**31 - 1 sessions")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(SKNN_MIN_EVENTS, SKNN_MAX_EVENTS + 1, n_sessions)
    row_of_rank = rng.permutation(n_items).astype(np.int32)
    log_span = np.log((n_items + SKNN_ZIPF_OFFSET) / SKNN_ZIPF_OFFSET)
    ends = np.cumsum(lengths)
    # blocks of whole sessions of about _SKNN_CHUNK_EVENTS events each
    cuts = np.unique(np.concatenate((
        [0], np.searchsorted(ends, np.arange(_SKNN_CHUNK_EVENTS, int(ends[-1]),
                                             _SKNN_CHUNK_EVENTS), side="right"),
        [n_sessions])))
    per_session = np.empty(n_sessions, np.int64)
    items_parts: list[np.ndarray] = []
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        local = np.repeat(np.arange(b - a, dtype=np.int64), lengths[a:b])
        rank = np.exp(rng.random(local.size) * log_span)
        rank *= SKNN_ZIPF_OFFSET
        rank -= SKNN_ZIPF_OFFSET
        rows = row_of_rank[np.minimum(rank.astype(np.int64), n_items - 1)]
        del rank
        # distinct items per session: sort by (session, row), drop repeats
        key = local * n_items + rows
        del local, rows
        key.sort()
        key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        per_session[a:b] = np.bincount(key // n_items, minlength=b - a)
        items_parts.append((key % n_items).astype(np.int32))
        del key
    session_items = np.concatenate(items_parts) if len(items_parts) > 1 else items_parts[0]
    del items_parts
    session_indptr = np.zeros(n_sessions + 1, np.int64)
    np.cumsum(per_session, out=session_indptr[1:])
    session_of = np.repeat(np.arange(n_sessions, dtype=np.int64), per_session)
    del per_session
    counts = np.bincount(session_items, minlength=n_items)
    # per item its sessions, newest first: sort by (row, newest session first)
    key = session_items.astype(np.int64) * n_sessions
    key += n_sessions - 1
    key -= session_of
    del session_of
    key.sort()
    starts = np.zeros(n_items + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    item_indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.minimum(counts, sample), out=item_indptr[1:])
    item_sessions = np.empty(int(item_indptr[-1]), np.int32)
    done = 0
    for a in range(0, key.size, _SKNN_CHUNK_EVENTS):  # keep each item's first `sample`
        part = key[a:a + _SKNN_CHUNK_EVENTS]
        row = part // n_sessions
        kept = part[np.arange(a, a + part.size) - starts[row] < sample]
        item_sessions[done:done + kept.size] = n_sessions - 1 - kept % n_sessions
        done += kept.size
    del key
    if idf:
        with np.errstate(divide="ignore"):
            weight = np.where(counts > 0, np.log(session_items.size / np.maximum(counts, 1)),
                              0.0)
    else:
        weight = np.ones(n_items)
    index = SessionIndex(item_indptr=item_indptr, item_sessions=item_sessions,
                         session_indptr=session_indptr, session_items=session_items,
                         item_weight=weight.astype(np.float32))
    return index, counts


def build_synthetic_sknn_bundle(
    out: str | os.PathLike,
    n_items: int,
    n_sessions: int,
    *,
    sample: int = 500,
    neighbors: int = 100,
    window: int = SKNN_MAX_EVENTS,
    idf: bool = True,
    k: int = 20,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic session-kNN bundle (scorer "sknn") of ``n_items`` items indexing
    ``n_sessions`` sessions (:func:`synthetic_session_index`) and return its path.

    ``sample``: each item's most recent sessions in the index, also the candidate sessions
    of a call (VMIS-kNN's m); ``neighbors``: neighbor sessions (k); ``window``: the session
    items a call reads; session items may be recommended (no repeat bonus). Popularity: the
    items by how many sessions hold them. Integer item ids, distinct and shuffled."""
    import time

    if not 1 <= neighbors <= sample:
        raise ValueError("neighbors must be in [1, sample]")
    t0 = time.perf_counter()
    index, counts = synthetic_session_index(n_items, n_sessions, sample=sample, idf=idf,
                                            seed=seed)
    if progress:
        print(f"synthetic session index: {n_items:,} items, {n_sessions:,} sessions, "
              f"{index.session_items.size:,} (session, item) pairs, "
              f"{index.item_sessions.size:,} postings in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    rng = np.random.default_rng([seed, 1])
    popularity = np.argsort(-counts, kind="stable").astype(np.int32)
    pop_scores = (counts[popularity] / max(int(counts.sum()), 1)).astype(np.float32)
    ids = rng.choice(10 * n_items, size=n_items, replace=False).astype(np.int64) + 1
    return write_bundle(
        out, encoder=None, item_matrix=None, neighbors=None, item_ids=ids,
        popularity=popularity, popularity_scores=pop_scores,
        session_index=index,
        sknn={"n_sessions": n_sessions, "sample": sample, "idf": idf},
        model={"kind": "synthetic-sknn",
               "config": {"n_items": n_items, "n_sessions": n_sessions, "sample": sample,
                          "neighbors": neighbors, "window": window, "idf": idf,
                          "seed": seed, "zipf_offset": SKNN_ZIPF_OFFSET,
                          "events": [SKNN_MIN_EVENTS, SKNN_MAX_EVENTS]}},
        inference={"max_session_length": window, "session_filter": "none"},
        defaults={"k": k, "neighbors": neighbors, "candidates": "sessions",
                  "category_filter": "none", "exclude_session_items": False,
                  "repeat_bonus": 0.0},
        overwrite=overwrite,
    )
