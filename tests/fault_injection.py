"""Fault-injection matrix: damaged bundles against ``Recommender.load`` and ``recommend()``.

Run from the repository root:

    .venv/bin/python -m tests.fault_injection --full          # the whole matrix
    .venv/bin/python -m tests.fault_injection --sample 150    # the bounded CI sample

Three intact base bundles are built in a temporary directory (a synthetic bundle with int
ids, a hand-made one that uses every optional file with input_dim != dim and a float16
item matrix, a synthetic one with string ids). Every case copies one base, damages one
file (truncation, bit flip, value edit with the checksum re-signed, deletion, symlink,
manifest edit, replacement encoder) and is run twice, under ``verify=None`` and
``verify=False``. Each run is its own forked child process (crash-isolated; the parent
imported numpy, onnxruntime and sessrec_sdk but never created an InferenceSession or a
Numba kernel, so forking is safe and a child costs milliseconds, plus ~0.3 s to load the
Numba kernel from its disk cache when the bundle loads). The child loads the bundle once
per backend (c, numba, numpy) and makes a fixed set of recommend() calls; the parent
compares them with the intact bundle's answers and classifies the run:

    crashed        the child died by a signal, exited without a result, or printed
                   glibc/abort/sanitizer output
    hung           killed after --timeout seconds
    wrong_family   an exception that is not a BundleError (at load or in a call)
    differing      loaded and answered differently from the intact bundle
    changed        differing, but the damaged bundle is a *valid* bundle (e.g. a manifest
                   default changed to another legal value): not a failure
    flagged        differing, but every answer that differs carries a fallback reason
                   that reports damage ("nonfinite_query", "nonfinite_scores"): the
                   caller is told, so not a silent difference
    refused        a BundleError at load or in a call (class and whether the message
                   names the damaged file are recorded)
    same           loaded and answered exactly as the intact bundle (ids, score bits,
                   fallback, unknown count)

Outputs: a summary table per verify mode and per file, a JSON report with every
non-passing run (``--json``) and a markdown digest of the failure classes (``--findings``).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Heavy imports happen once, in the parent, so that forked children start warm.
import onnxruntime  # noqa: F401

import sessrec_sdk
from sessrec_sdk import Recommender
from sessrec_sdk.bundle import (
    CATEGORY_INDICES,
    CATEGORY_INDPTR,
    ENCODER,
    INPUT_EMBEDDING,
    ITEM_BIAS,
    ITEM_CATEGORY,
    ITEM_IDS,
    ITEM_IDS_ORDER,
    ITEM_IDS_SORTED,
    ITEM_MATRIX,
    MANIFEST,
    NEIGHBORS,
    POPULARITY,
    POPULARITY_SCORES,
    SKNN_FILES,
    SKNN_ITEM_INDPTR,
    SKNN_ITEM_SESSIONS,
    SKNN_ITEM_WEIGHT,
    SKNN_SESSION_INDPTR,
    SKNN_SESSION_ITEMS,
    sha256_of,
    write_bundle,
)
from sessrec_sdk.errors import BundleError

try:  # imported (not compiled) in the parent; each child loads its cached machine code
    import sessrec_sdk.kernels.c_backend  # noqa: F401
except ImportError:
    pass
try:
    import sessrec_sdk.kernels.numba_backend  # noqa: F401
except ImportError:
    pass

BACKENDS = ("c", "numba", "numpy")
MODES: tuple[bool | None, ...] = (None, False)
ALL_FILES = (MANIFEST, ENCODER, ITEM_MATRIX, ITEM_BIAS, INPUT_EMBEDDING, NEIGHBORS,
             ITEM_CATEGORY, POPULARITY, POPULARITY_SCORES, ITEM_IDS, ITEM_IDS_SORTED,
             ITEM_IDS_ORDER, CATEGORY_INDPTR, CATEGORY_INDICES, *SKNN_FILES)
# the first three bases; "sknn" (a session-kNN bundle) and "hyb" (an encoder with a
# category head, the category index and a session index) came later and are sampled apart
ORIGINAL_BASES = ("synth", "hand", "str")
OUTCOMES = ("refused", "wrong_family", "crashed", "hung", "same", "differing", "changed",
            "flagged")
# fallback reasons with which the runtime reports that the bundle gave unusable values
DAMAGE_FALLBACKS = ("nonfinite_query", "nonfinite_scores")
CRASH_MARKERS = ("AddressSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
                 "*** ", "malloc(): ", "free(): ", "double free", "corrupted",
                 "Fatal Python error", "Segmentation fault", "Aborted")
HUGE_BYTES = 32 * 2**30   # sparse files: no disk space, but reading them takes long
CHILD_MEMORY = 4 * 2**30  # RLIMIT_AS of a child beyond the parent's mappings: an attempt
#                           to read a huge file fails fast


def mode_name(mode: bool | None) -> str:
    return "verify=None" if mode is None else f"verify={mode}"


# --------------------------------------------------------------------------- encoders


def encoder_model(d_in: int, d: int, variant: str = "ok", seed: int = 0) -> bytes:
    """A small real ONNX session encoder: items [1, L] int64, item_emb [1, L, d_in] float32
    -> query [1, d] float32 = tanh((mean(item_emb) + last(item_emb)) @ W + b); ``variant``
    breaks one thing about it (names, output shape or dtype, values, opset)."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    out_d = d + {"out_short": -1, "out_short_declared_d": -1, "out_long": 1}.get(variant, 0)
    weight = (rng.standard_normal((d_in, out_d)) / np.sqrt(2 * d_in)).astype(np.float32)
    bias = (rng.standard_normal(out_d) * 0.1).astype(np.float32)
    items, emb, out = "items", "item_emb", "query"
    if variant == "in_name_items":
        items = "item_rows"
    if variant == "in_name_emb":
        emb = "emb"
    if variant == "out_name":
        out = "vector"
    inits = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias"),
             numpy_helper.from_array(np.array(-1, np.int64), "last_index")]
    src = emb
    nodes = []
    emb_type = TP.FLOAT
    if variant == "in_emb_f64":
        emb_type = TP.DOUBLE
        nodes.append(helper.make_node("Cast", [emb], ["emb32"], to=TP.FLOAT))
        src = "emb32"
    nodes += [
        helper.make_node("ReduceMean", [src], ["mean"], axes=[1], keepdims=0),
        helper.make_node("Gather", [src, "last_index"], ["last"], axis=1),
        helper.make_node("Add", ["mean", "last"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["q"]),
    ]
    out_type, out_shape = TP.FLOAT, [1, out_d]
    if variant == "out_short_declared_d":
        out_shape = [1, d]
    if variant in ("ok", "out_short", "out_short_declared_d", "out_long", "in_name_items",
                   "in_name_emb", "out_name", "in_emb_f64", "in_items_i32", "in_extra",
                   "in_missing_items", "in_emb_width", "opset99", "two_outputs"):
        nodes.append(helper.make_node("Identity", ["q"], [out]))
    elif variant == "out_3d":
        nodes.append(helper.make_node("MatMul", [src, "weight"], ["per_pos"]))
        nodes.append(helper.make_node("Tanh", ["per_pos"], [out]))
        out_shape = [1, "L", d]
    elif variant == "out_1d":
        inits.append(numpy_helper.from_array(np.array([d], np.int64), "shape1d"))
        nodes.append(helper.make_node("Reshape", ["q", "shape1d"], [out]))
        out_shape = [d]
    elif variant == "out_symbolic_short":  # declared [1, "D"], computes d-1 values
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "s0"))
        inits.append(numpy_helper.from_array(np.array([d - 1], np.int64), "s1"))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax1"))
        nodes.append(helper.make_node("Slice", ["q", "s0", "s1", "ax1"], [out]))
        out_shape = [1, "D"]
    elif variant == "out_len_L":  # flattened item_emb: [1, L * d_in], grows with L
        inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))
        nodes.append(helper.make_node("Reshape", [src, "flat"], [out]))
        out_shape = [1, "N"]
    elif variant in ("out_f64", "out_f16", "out_i64"):
        to = {"out_f64": TP.DOUBLE, "out_f16": TP.FLOAT16, "out_i64": TP.INT64}[variant]
        inits.append(numpy_helper.from_array(np.array(100, np.float32), "hundred"))
        nodes.append(helper.make_node("Mul", ["q", "hundred"], ["q100"]))
        nodes.append(helper.make_node("Cast", ["q100" if variant == "out_i64" else "q"],
                                      [out], to=to))
        out_type = to
    elif variant in ("out_nan", "out_inf", "out_3e38", "out_nan_one"):
        value = {"out_nan": np.nan, "out_inf": np.inf, "out_3e38": 3e38}.get(variant, 1.0)
        scale = np.full(out_d, value, np.float32)
        if variant == "out_nan_one":
            scale[0] = np.nan
        inits.append(numpy_helper.from_array(scale, "scale"))
        nodes.append(helper.make_node("Mul", ["q", "scale"], [out]))
    else:
        raise ValueError(f"unknown encoder variant {variant!r}")
    items_type = TP.INT32 if variant == "in_items_i32" else TP.INT64
    emb_width = d_in + 1 if variant == "in_emb_width" else d_in
    inputs = [helper.make_tensor_value_info(items, items_type, [1, "L"]),
              helper.make_tensor_value_info(emb, emb_type, [1, "L", emb_width])]
    if variant == "in_missing_items":
        inputs = inputs[1:]
    if variant == "in_extra":
        inputs.append(helper.make_tensor_value_info("mask", TP.FLOAT, [1, "L"]))
    outputs = [helper.make_tensor_value_info(out, out_type, out_shape)]
    if variant == "two_outputs":
        outputs.append(helper.make_tensor_value_info("pooled", TP.FLOAT, [1, d_in]))
    graph = helper.make_graph(nodes, "fault_encoder", inputs, outputs, initializer=inits)
    opset = 99 if variant == "opset99" else 17
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="sessrec.fault_injection")
    model.ir_version = 8
    if variant not in ("opset99", "in_emb_width"):
        onnx.checker.check_model(model)
    return model.SerializeToString()


ENCODER_VARIANTS = ("in_name_items", "in_name_emb", "in_missing_items", "in_extra",
                    "in_items_i32", "in_emb_f64", "in_emb_width", "out_name", "two_outputs",
                    "out_short", "out_short_declared_d", "out_long", "out_symbolic_short",
                    "out_3d", "out_1d", "out_len_L", "out_f64", "out_i64", "out_f16",
                    "out_nan", "out_nan_one", "out_inf", "out_3e38", "opset99")
# a valid encoder with other names of its unused parts still answers the same
ENCODER_SAME = ("in_extra", "two_outputs")


# --------------------------------------------------------------------------- base bundles


@dataclass
class Base:
    name: str
    path: Path
    n: int
    dim: int
    input_dim: int
    width: int
    id_kind: str
    files: list[str]
    calls: list[tuple[str, list, dict]] = field(default_factory=list)
    reference: dict[str, Any] | None = None
    r: int = 5             # the row the value edits change (a session row of every call)
    n_sessions: int = 0    # of the session index (0: none)
    n_cats: int = 0        # manifest n_categories (0: no category index)

    @property
    def extended(self) -> bool:
        """A base added with the session-kNN and category-index files."""
        return self.name not in ORIGINAL_BASES


def _hand_bundle(out: Path) -> Path:
    """Every optional file: item_bias, input_embedding (d_in=20 != dim=32), item_category;
    a float16 item matrix; popularity shorter than the catalog; ids negative and large."""
    rng = np.random.default_rng(7)
    n, d, d_in, width = 1500, 32, 20, 16
    emb = (rng.standard_normal((n, d_in)) / np.sqrt(d_in)).astype(np.float32)
    matrix = (rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float16)
    sims = matrix.astype(np.float32) @ matrix.astype(np.float32).T
    np.fill_diagonal(sims, -np.inf)
    nbrs = np.argsort(-sims, axis=1, kind="stable")[:, :width].astype(np.int32)
    nbrs[::7, width - 4:] = -1  # some rows with fewer neighbors
    cats = rng.integers(0, 12, size=n).astype(np.int32)
    cats[::11] = -1
    bias = (rng.standard_normal(n) * 0.05).astype(np.float32)
    ids = rng.choice(np.arange(-5000, 5000) * 2**30 + 17, size=n, replace=False).astype(np.int64)
    pop_raw = rng.zipf(1.4, size=n).astype(np.float64)
    pop = np.argsort(-pop_raw, kind="stable")[:1000].astype(np.int32)
    pop_scores = (pop_raw[pop] / pop_raw.sum()).astype(np.float32)
    return write_bundle(
        out, encoder=encoder_model(d_in, d, "ok", seed=3), item_matrix=matrix,
        neighbors=nbrs, item_ids=ids, popularity=pop, popularity_scores=pop_scores,
        item_category=cats, item_bias=bias, input_embedding=emb,
        model={"kind": "hand", "config": {}},
        inference={"max_session_length": 4, "session_filter": "last_category"},
        defaults={"k": 10, "category_filter": "session", "exclude_session_items": True,
                  "neighbors": 12})


N_CATS_HYB = 9
CAT_IO = {"inputs": [{"name": "items", "kind": "items"},
                     {"name": "item_emb", "kind": "item_rows"}],
          "outputs": [{"name": "query", "kind": "query"},
                      {"name": "category_scores", "kind": "category_scores"}]}
CATEGORY_VARIANTS = ("cat_short", "cat_long", "cat_nan", "cat_inf", "cat_f64", "cat_1d",
                     "cat_missing", "cat_renamed")


def category_encoder(d: int, n_cats: int, variant: str = "ok", seed: int = 0) -> bytes:
    """An ONNX encoder with a category head: items [1, L] int64, item_emb [1, L, d] ->
    query = tanh((mean + last) @ W) [1, d], category_scores = query @ C [1, n_cats];
    ``variant`` breaks the category output (width, values, dtype, rank, name, missing)."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    width = n_cats + {"cat_short": -1, "cat_long": 1}.get(variant, 0)
    w = (rng.standard_normal((d, d)) / np.sqrt(2 * d)).astype(np.float32)
    c = (rng.standard_normal((d, width)) * 3).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C"),
             numpy_helper.from_array(np.array(-1, np.int64), "last_index")]
    nodes = [helper.make_node("ReduceMean", ["item_emb"], ["mean"], axes=[1], keepdims=0),
             helper.make_node("Gather", ["item_emb", "last_index"], ["last"], axis=1),
             helper.make_node("Add", ["mean", "last"], ["pooled"]),
             helper.make_node("MatMul", ["pooled", "W"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["query"]),
             helper.make_node("MatMul", ["query", "C"], ["cs"])]
    cat_name = "cat_logits" if variant == "cat_renamed" else "category_scores"
    cat_type, cat_shape = TP.FLOAT, [1, width]
    if variant in ("cat_nan", "cat_inf"):
        scale = np.ones(width, np.float32)
        scale[1] = np.nan if variant == "cat_nan" else np.inf
        inits.append(numpy_helper.from_array(scale, "scale"))
        nodes.append(helper.make_node("Mul", ["cs", "scale"], [cat_name]))
    elif variant == "cat_f64":
        nodes.append(helper.make_node("Cast", ["cs"], [cat_name], to=TP.DOUBLE))
        cat_type = TP.DOUBLE
    elif variant == "cat_1d":
        inits.append(numpy_helper.from_array(np.array([width], np.int64), "shape1d"))
        nodes.append(helper.make_node("Reshape", ["cs", "shape1d"], [cat_name]))
        cat_shape = [width]
    else:
        nodes.append(helper.make_node("Identity", ["cs"], [cat_name]))
    inputs = [helper.make_tensor_value_info("items", TP.INT64, [1, "L"]),
              helper.make_tensor_value_info("item_emb", TP.FLOAT, [1, "L", d])]
    outputs = [helper.make_tensor_value_info("query", TP.FLOAT, [1, d])]
    if variant != "cat_missing":
        outputs.append(helper.make_tensor_value_info(cat_name, cat_type, cat_shape))
    graph = helper.make_graph(nodes, "fault_cat_encoder", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="sessrec.fault_injection")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _popularity_of(counts: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    pop = np.argsort(-counts, kind="stable")[:top].astype(np.int32)
    return pop, (counts[pop] / max(int(counts.sum()), 1)).astype(np.float32)


def _sknn_bundle(out: Path) -> Path:
    """A session-kNN bundle (scorer "sknn"): int ids, item_category (so the category
    filters reach the kNN kernel), a window and neighbors of its own, a repeat bonus with
    session items kept by default, and a validation record."""
    from export_tools.synthetic import synthetic_session_index

    n, n_sessions, sample = 1000, 3000, 120
    index, counts = synthetic_session_index(n, n_sessions, sample=sample, idf=True, seed=31)
    rng = np.random.default_rng(32)
    cats = rng.integers(0, 7, size=n).astype(np.int32)
    cats[::9] = -1
    pop, pop_scores = _popularity_of(counts, 700)
    ids = (rng.choice(10 * n, size=n, replace=False) * 7919 + 3).astype(np.int64)
    return write_bundle(
        out, encoder=None, item_matrix=None, neighbors=None, item_ids=ids, popularity=pop,
        popularity_scores=pop_scores, item_category=cats, session_index=index,
        sknn={"n_sessions": n_sessions, "sample": sample, "idf": True, "neighbors": 40,
              "window": 10},
        model={"kind": "fault-sknn", "config": {}},
        inference={"max_session_length": 10, "session_filter": "none"},
        defaults={"k": 10, "neighbors": 40, "candidates": "sessions",
                  "category_filter": "none", "exclude_session_items": False,
                  "repeat_bonus": 0.3,
                  "validation": {"split": "fault", "n_sessions": 10, "metric": "mrr@20"}})


def _hybrid_bundle(out: Path) -> Path:
    """An encoder bundle with a category head (the category -> items index, n_categories,
    defaults categories / max_candidates) and a session index (candidates "sessions" by
    default, blended with knn_weight)."""
    from export_tools.synthetic import synthetic_session_index

    rng = np.random.default_rng(21)
    n, d, width, n_sessions = 1200, 16, 12, 2500
    matrix = (rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, -np.inf)
    nbrs = np.argsort(-sims, axis=1, kind="stable")[:, :width].astype(np.int32)
    cats = rng.integers(0, N_CATS_HYB, size=n).astype(np.int32)
    cats[::13] = -1
    index, counts = synthetic_session_index(n, n_sessions, sample=150, idf=True, seed=22)
    pop, pop_scores = _popularity_of(counts, 800)
    ids = (rng.choice(10**7, size=n, replace=False) + 1).astype(np.int64)
    return write_bundle(
        out, encoder=category_encoder(d, N_CATS_HYB, seed=4), item_matrix=matrix,
        neighbors=nbrs, item_ids=ids, popularity=pop, popularity_scores=pop_scores,
        item_category=cats, encoder_io=CAT_IO, n_categories=N_CATS_HYB,
        session_index=index,
        sknn={"n_sessions": n_sessions, "sample": 150, "idf": True, "neighbors": 40,
              "window": 6},
        model={"kind": "fault-hybrid", "config": {}},
        inference={"max_session_length": 5, "session_filter": "none"},
        defaults={"k": 10, "category_filter": "none", "exclude_session_items": True,
                  "candidates": "sessions", "knn_weight": 0.5, "categories": 3,
                  "max_candidates": 200, "repeat_bonus": 0.2})


BASE_NAMES = (*ORIGINAL_BASES, "sknn", "hyb")


def build_bases(root: Path, names: tuple[str, ...] | None = None) -> dict[str, Base]:
    from export_tools.synthetic import build_synthetic_bundle

    builders = {
        "synth": lambda: build_synthetic_bundle(root / "synth", n_items=3000, dim=32,
                                                neighbors=20, seed=11),
        "hand": lambda: _hand_bundle(root / "hand"),
        "str": lambda: build_synthetic_bundle(root / "str", n_items=2000, dim=24,
                                              neighbors=10, seed=12, string_ids=True),
        "sknn": lambda: _sknn_bundle(root / "sknn"),
        "hyb": lambda: _hybrid_bundle(root / "hyb"),
    }
    bases = {}
    for name in names or BASE_NAMES:
        path = builders[name]()
        m = json.loads((path / MANIFEST).read_text())
        files = [MANIFEST, *sorted(m["files"])]
        width = m["neighbors_per_item"] if "neighbors_per_item" in m else m["sknn"]["sample"]
        base = Base(name, path, m["n_items"], m.get("dim", 0), m.get("input_dim", 0),
                    width, m["id_kind"], files,
                    n_sessions=m["sknn"]["n_sessions"] if "sknn" in m else 0,
                    n_cats=m.get("n_categories", 0))
        base.calls = make_calls(base)
        bases[name] = base
    return bases


def _py(values) -> list:
    return [v.item() if isinstance(v, np.generic) else v for v in np.asarray(values).tolist()]


def make_calls(base: Base) -> list[tuple[str, list, dict]]:
    """The fixed recommend() calls, built from the intact bundle's arrays."""
    if base.extended:
        return make_index_calls(base)
    p = base.path
    ids = np.load(p / ITEM_IDS)
    sorted_ids = np.load(p / ITEM_IDS_SORTED)
    nbrs = np.load(p / NEIGHBORS)
    pop = np.load(p / POPULARITY)
    rows = [5, 17, 42]
    known = _py(ids[rows])
    s0, s1, slast = _py(sorted_ids[[0, 1, -1]])
    near = nbrs[rows, :8].ravel()
    allow = _py(ids[near[near >= 0]]) + [s0]
    unknown = [-7, int(sorted_ids.max()) + 1] if base.id_kind == "int" else ["nope", "sku-"]
    calls = [
        ("known3", known, {}),
        ("with_sorted0", [known[0], known[1], s0], {}),
        ("with_sortedlast", [slast, known[2]], {}),
        ("only_sorted0", [s0], {}),
        ("exclude_sorted0", known, {"exclude": [s0, s1]}),
        ("allow", known, {"allow": allow}),
        ("allow_exclude", known, {"allow": allow, "exclude": [s0, allow[0]]}),
        ("unknown", unknown, {}),
        ("empty", [], {}),
        ("empty_rules", [], {"exclude": [s0] + _py(ids[pop[:3]]),
                             "allow": [s0, s1] + _py(ids[pop[:20]])}),
        ("long20", _py(ids[100:120]), {"k": 25}),
        ("keep_seen", known, {"exclude_session_items": False}),
        ("neighbors5", known, {"neighbors": 5}),
    ]
    if (p / ITEM_CATEGORY).exists():
        calls += [("cat_last", known, {"category_filter": "last"}),
                  ("cat_session", known, {"category_filter": "session"}),
                  ("cat_none", known, {"category_filter": "none"})]
    return calls


def make_index_calls(base: Base) -> list[tuple[str, list, dict]]:
    """The calls of the bases with a session index (and category index): sessions of items
    that training sessions hold, with repeats, rules, both exclude_session_items values, the
    category filters and, on the hybrid, every candidate policy. Sets ``base.r`` to the
    first session row (the row the value edits change)."""
    p = base.path
    ids = np.load(p / ITEM_IDS)
    sorted_ids = np.load(p / ITEM_IDS_SORTED)
    pop = np.load(p / POPULARITY)
    indptr = np.load(p / SKNN_ITEM_INDPTR)
    held = np.flatnonzero(np.diff(indptr) >= 3)   # items in at least 3 training sessions
    rows = [int(held[len(held) // 7]), int(held[len(held) // 3]), int(held[len(held) // 2])]
    base.r = rows[0]
    known = _py(ids[rows])
    s0, s1, slast = _py(sorted_ids[[0, 1, -1]])
    # the items of the first sessions of the session rows: likely kNN candidates
    sess_indptr = np.load(p / SKNN_SESSION_INDPTR)
    sess_items = np.load(p / SKNN_SESSION_ITEMS)
    item_sessions = np.load(p / SKNN_ITEM_SESSIONS)
    near: list[int] = []
    for r in rows:
        for sess in item_sessions[indptr[r]:indptr[r] + 2]:
            near += sess_items[sess_indptr[sess]:sess_indptr[sess + 1]].tolist()
    near = [x for x in dict.fromkeys(near) if x not in rows][:30]
    allow = _py(ids[near]) + [s0, known[0]]
    unknown = [-7, int(sorted_ids.max()) + 1]
    a, b, c = known
    repeats = [a, b, a, c, b, a]
    calls = [
        ("known3", known, {}),
        ("with_sorted0", [a, b, s0], {}),
        ("with_sortedlast", [slast, c], {}),
        ("only_sorted0", [s0], {}),
        ("exclude_sorted0", known, {"exclude": [s0, s1]}),
        ("exclude_near", known, {"exclude": allow[:5]}),
        ("allow", known, {"allow": allow}),
        ("allow_exclude", known, {"allow": allow, "exclude": [s0, allow[0]]}),
        ("unknown", unknown, {}),
        ("unknown_mixed", [unknown[0], a, unknown[1], b], {}),
        ("empty", [], {}),
        ("empty_rules", [], {"exclude": [s0] + _py(ids[pop[:3]]),
                             "allow": [s0, s1] + _py(ids[pop[:20]])}),
        ("long20", _py(ids[held[:20]]), {"k": 25}),
        ("repeats", repeats, {}),
        ("repeats_excl", repeats, {"exclude_session_items": True}),
        ("repeats_keep", repeats, {"exclude_session_items": False, "repeat_bonus": 1.0}),
        ("repeats_rules", repeats, {"exclude_session_items": False, "allow": allow,
                                    "exclude": [b]}),
        ("keep_seen", known, {"exclude_session_items": False}),
        ("neighbors5", known, {"neighbors": 5}),
        ("cat_last", known, {"category_filter": "last"}),
        ("cat_session", repeats, {"category_filter": "session"}),
    ]
    if base.n_cats:  # the hybrid: every candidate policy and the predicted categories
        calls += [
            ("cand_neighbors", known, {"candidates": "neighbors"}),
            ("cand_categories", known, {"candidates": "categories", "categories": 2}),
            ("cand_categories_cap", repeats, {"candidates": "categories", "max_candidates": 15,
                                              "exclude_session_items": False}),
            ("cat_predicted", known, {"category_filter": "predicted", "categories": 1}),
            ("sessions_noblend", known, {"candidates": "sessions", "knn_weight": 0.0}),
            ("sessions_keep", repeats, {"candidates": "sessions", "exclude_session_items":
                                        False, "max_candidates": 30}),
            ("sessions_allow", known, {"candidates": "sessions", "allow": allow}),
        ]
    return calls


# --------------------------------------------------------------------------- mutations


@dataclass
class Case:
    id: str            # base/file/family:detail
    base: str
    file: str          # the file damaged (manifest.json for manifest edits)
    family: str        # truncate, flip, flip_resigned, value, struct, symlink, delete, ...
    apply: Callable[[Path, Base], None]
    legit: bool = False  # the damaged bundle is still a valid bundle: answers may change

    @property
    def key(self) -> str:
        return self.id


def read_manifest(b: Path) -> dict:
    return json.loads((b / MANIFEST).read_text())


def write_manifest(b: Path, m: Any) -> None:
    (b / MANIFEST).write_text(json.dumps(m, indent=2))


def resign(b: Path, name: str) -> None:
    """Make the manifest's sha256/bytes of ``name`` match the file again."""
    m = read_manifest(b)
    f = b / name
    m["files"][name] = {"sha256": sha256_of(f), "bytes": f.stat().st_size}
    write_manifest(b, m)


def npy_header_len(path: Path) -> int:
    head = path.read_bytes()[:12]
    if head[6] == 1:
        return 10 + struct.unpack("<H", head[8:10])[0]
    return 12 + struct.unpack("<I", head[8:12])[0]


def write_npy(path: Path, arr: np.ndarray, *, fortran_flag: bool | None = None,
              version: tuple[int, int] | None = None) -> None:
    """np.save, or a hand-written header when the fortran flag must lie about a 1-D array."""
    if fortran_flag is None:
        with open(path, "wb") as f:
            np.lib.format.write_array(f, arr, version=version, allow_pickle=True)
        return
    header = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": fortran_flag,
              "shape": arr.shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.ascontiguousarray(arr).tobytes())


def _edit_array(name: str, edit: Callable[[np.ndarray, Base], np.ndarray | None]):
    def apply(b: Path, base: Base) -> None:
        arr = np.load(b / name, allow_pickle=False)
        arr = np.array(arr)  # writable copy
        out = edit(arr, base)
        write_npy(b / name, arr if out is None else out)
        resign(b, name)
    return apply


def _set(index, value):
    def edit(a: np.ndarray, base: Base):
        a[index] = value
    return edit


def _truncate(name: str, length_of: Callable[[Path], int], resigned: bool):
    def apply(b: Path, base: Base) -> None:
        p = b / name
        data = p.read_bytes()
        p.write_bytes(data[:max(0, min(len(data), length_of(p)))])
        if resigned:
            resign(b, name)
    return apply


def _flip(name: str, pos_of: Callable[[Path], int], bit: int, resigned: bool):
    def apply(b: Path, base: Base) -> None:
        p = b / name
        data = bytearray(p.read_bytes())
        pos = pos_of(p) % len(data)
        data[pos] ^= 1 << bit
        p.write_bytes(bytes(data))
        if resigned:
            resign(b, name)
    return apply


def _delete(name: str):
    def apply(b: Path, base: Base) -> None:
        (b / name).unlink()
    return apply


def _replace_bytes(name: str, data: bytes | Callable[[Base], bytes], resigned: bool):
    def apply(b: Path, base: Base) -> None:
        (b / name).write_bytes(data(base) if callable(data) else data)
        if resigned:
            resign(b, name)
    return apply


def _symlink(name: str, kind: str, scratch: Path):
    def apply(b: Path, base: Base) -> None:
        p = b / name
        outside = scratch / f"outside-{b.parent.name}-{name}"
        if kind == "dev_zero":
            target = Path("/dev/zero")
        elif kind == "directory":
            target = b
        elif kind == "huge_zeros":
            target = scratch / "huge_zeros"
        elif kind == "huge_prefix":  # the real file followed by a 32 GiB hole
            shutil.copyfile(p, outside)
            os.truncate(outside, HUGE_BYTES)
            target = outside
        elif kind == "outside_copy":
            shutil.copyfile(p, outside)
            target = outside
        elif kind == "outside_other":
            target = Path("/etc/passwd")
        elif kind == "dangling":
            target = scratch / "does-not-exist"
        elif kind == "loop":
            target = p
        elif kind == "fifo":
            p.unlink()
            os.mkfifo(p)
            return
        else:
            raise ValueError(kind)
        p.unlink()
        os.symlink(target, p)
    return apply


SYMLINKS = ("dev_zero", "directory", "huge_zeros", "huge_prefix", "outside_copy",
            "outside_other", "dangling", "loop", "fifo")
HUGE_FILES = (MANIFEST, ENCODER, ITEM_MATRIX, NEIGHBORS, ITEM_IDS_ORDER, SKNN_ITEM_SESSIONS,
              CATEGORY_INDICES)


def generic_cases(base: Base, name: str, scratch: Path) -> Iterator[Case]:
    """Truncations, bit flips, deletion and symlinks: the same for every file."""
    pre = f"{base.name}/{name}"
    is_npy = name.endswith(".npy")
    path = base.path / name
    size = path.stat().st_size
    rng = random.Random(f"{base.name}/{name}")
    if is_npy:
        hdr = npy_header_len(path)
        lengths = {"0": 0, "3": 3, "8": 8, "9": 9, "hdr/2": hdr // 2, "hdr-1": hdr - 1,
                   "hdr": hdr, "hdr+1": hdr + 1, "hdr+4": hdr + 4, "half": size // 2,
                   "size-1": size - 1}
        resigned_lengths = ("hdr-1", "hdr", "hdr+4", "half", "size-1")
    else:
        lengths = {"0": 0, "1": 1, "quarter": size // 4, "half": size // 2,
                   "size-1": size - 1}
        resigned_lengths = ("half", "size-1") if name == ENCODER else ()
    for label, n in lengths.items():
        yield Case(f"{pre}/truncate:{label}", base.name, name, "truncate",
                   _truncate(name, lambda p, n=n: n, False))
        if label in resigned_lengths:
            yield Case(f"{pre}/truncate_resigned:{label}", base.name, name,
                       "truncate_resigned", _truncate(name, lambda p, n=n: n, True))
    # bit flips
    flips: dict[str, tuple[int, int]] = {}
    if is_npy:
        text = path.read_bytes()[:hdr]
        item = np.load(path, mmap_mode="r").dtype.itemsize
        last = size - item
        flips.update({"magic0.b0": (0, 0), "magic1.b1": (1, 1), "major.b1": (6, 1),
                      "minor.b0": (7, 0), "hlen_lo.b0": (8, 0), "hlen_lo.b4": (8, 4),
                      "hlen_hi.b0": (9, 0), "hlen_hi.b7": (9, 7),
                      "newline.b0": (hdr - 1, 0)})
        for token, tag in ((b"descr", "descr"), (b"'<", "byteorder"), (b"fortran", "fortran"),
                           (b"False", "False"), (b"(", "shape"), (b",", "comma")):
            at = text.find(token)
            if at >= 0:
                flips[f"{tag}.b0"] = (at + (1 if token == b"'<" else 0), 0)
        at = text.find(b"'<") if text.find(b"'<") >= 0 else text.find(b"'|")
        if at >= 0:
            flips["dtype_char.b1"] = (at + 2, 1)
            flips["dtype_size.b0"] = (at + 3, 0)
        shape_at = text.find(b"(")
        flips["shape_digit.b0"] = (shape_at + 1, 0)
        flips["shape_digit.b3"] = (shape_at + 1, 3)
        flips.update({"data0.b0": (hdr, 0), "data0.b7": (hdr, 7),
                      "last.b0": (last, 0), "last.b7": (size - 1, 7),
                      "last_high.b6": (size - 1, 6), "first_high.b6": (hdr + item - 1, 6)})
        for i in range(8 if base.name != "str" else 4):
            pos, bit = rng.randrange(hdr, size), rng.randrange(8)
            flips[f"rand{i}@{pos}.b{bit}"] = (pos, bit)
        resigned = ("hlen_lo.b0", "hlen_hi.b0", "dtype_char.b1", "dtype_size.b0",
                    "shape_digit.b0", "fortran.b0", "last_high.b6", "last.b7",
                    "first_high.b6")
    else:
        for i in range(16 if name == MANIFEST else 12):
            pos, bit = rng.randrange(size), rng.randrange(7)
            flips[f"rand{i}@{pos}.b{bit}"] = (pos, bit)
        flips["last.b0"] = (size - 1, 0)
        flips["first.b1"] = (0, 1)
        resigned = tuple(list(flips)[:6]) if name == ENCODER else ()
    for label, (pos, bit) in flips.items():
        yield Case(f"{pre}/flip:{label}", base.name, name, "flip",
                   _flip(name, lambda p, pos=pos: pos, bit, False))
        if label in resigned:
            yield Case(f"{pre}/flip_resigned:{label}", base.name, name, "flip_resigned",
                       _flip(name, lambda p, pos=pos: pos, bit, True),
                       # a re-signed flip of an encoder weight or of a category id can
                       # give a valid bundle (another model, another category); so can one
                       # of a session-kNN item weight that stays finite and <= 2**20
                       legit=(name == ENCODER or (name == ITEM_CATEGORY and "high" in label)
                              or (name == SKNN_ITEM_WEIGHT and pos >= hdr
                                  and _weight_flip_valid(path, pos, bit))))
    yield Case(f"{pre}/delete", base.name, name, "delete", _delete(name))
    for kind in SYMLINKS:
        if kind.startswith("huge") and name not in HUGE_FILES:
            continue
        yield Case(f"{pre}/symlink:{kind}", base.name, name, "symlink",
                   _symlink(name, kind, scratch))


def _weight_flip_valid(path: Path, pos: int, bit: int) -> bool:
    """Whether a float32 array still holds only finite values with abs(x) <= 2**20 (what
    the verified load accepts) after bit ``bit`` of byte ``pos`` is flipped."""
    data = bytearray(path.read_bytes())
    data[pos] ^= 1 << bit
    hdr = npy_header_len(path)
    arr = np.frombuffer(bytes(data[hdr:]), dtype="<f4")
    return bool(np.isfinite(arr).all() and (np.abs(arr) <= 2.0**20).all())


INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


def _wide_str(a: np.ndarray, base: Base):
    return a.astype("<U2048")


def _swap01(a, base):
    a[[0, 1]] = a[[1, 0]]


def _dup01(a, base):
    a[1] = a[0]


def value_edits(base: Base, name: str) -> dict[str, tuple[Callable, bool]]:
    """Value edits of one array (re-signed, so that checksums pass): name -> (edit, legit)."""
    n, r = base.n, base.r  # a session row of every call (row 5 on the first three bases)
    e: dict[str, tuple[Callable, bool]] = {}
    if name in SKNN_FILES or name in (CATEGORY_INDPTR, CATEGORY_INDICES):
        return index_value_edits(base, name)
    if name == ITEM_IDS_ORDER:
        for label, idx, v in (("[0]=2**30", 0, 2**30), ("[0]=-5", 0, -5), ("[0]=n", 0, n),
                              ("[0]=-1", 0, -1), ("[0]=int32max", 0, INT32_MAX),
                              ("[0]=int32min", 0, INT32_MIN), ("[-1]=n", -1, n),
                              ("[-1]=2**30", -1, 2**30), ("[-1]=-5", -1, -5),
                              ("[1]=n+1", 1, n + 1)):
            e[label] = (_set(idx, v), False)
        e["swap01"] = (_swap01, False)
        e["dup01"] = (_dup01, False)
        e["all0"] = (lambda a, b: a.fill(0), False)
    elif name == POPULARITY:
        for label, idx, v in (("[0]=n", 0, n), ("[0]=-1", 0, -1), ("[0]=2**30", 0, 2**30),
                              ("[-1]=int32min", -1, INT32_MIN), ("[2]=n+5", 2, n + 5)):
            e[label] = (_set(idx, v), False)
        e["dup01"] = (_dup01, False)
    elif name == POPULARITY_SCORES:
        for label, v in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf),
                         ("3e38", 3e38), ("-1", -1.0)):
            e[f"[0]={label}"] = (_set(0, v), False)
        e["all_nan"] = (lambda a, b: a.fill(np.nan), False)
    elif name == NEIGHBORS:
        for label, idx, v in (("[r,0]=n", (r, 0), n), ("[r,0]=-2", (r, 0), -2),
                              ("[r,K-1]=int32max", (r, -1), INT32_MAX),
                              ("[r,0]=int32min", (r, 0), INT32_MIN),
                              ("[r,1]=2**30", (r, 1), 2**30)):
            e[label] = (_set(idx, v), False)
        e["[r,:]=-1"] = (_set((r, slice(None)), -1), True)  # a row without neighbors: valid
    elif name == ITEM_CATEGORY:
        for label, v in (("-2", -2), ("int32min", INT32_MIN), ("int32max", INT32_MAX)):
            e[f"[r]={label}"] = (_set(r, v), False)
        e["[r]=77 (valid)"] = (_set(r, 77), True)
    elif name in (ITEM_MATRIX, INPUT_EMBEDDING):
        big = 65504.0 if np.load(base.path / name, mmap_mode="r").dtype == np.float16 else 3e38
        half = big == 65504.0  # the largest half: legal, and no float32 dot overflows
        for label, idx, v in (("row_nan", r, np.nan), ("row_inf", r, np.inf),
                              ("row_big", r, big), ("row_-big", r, -big),
                              ("last_elem_nan", (r, -1), np.nan),
                              ("all_big", slice(None), big)):
            e[label] = (_set(idx, v), half and "big" in label)
    elif name == ITEM_BIAS:
        for label, v in (("nan", np.nan), ("inf", np.inf), ("3e38", 3e38), ("-3e38", -3e38)):
            e[f"[r]={label}"] = (_set(r, v), False)
    elif name == ITEM_IDS:
        e["[r]=dup"] = (lambda a, b: a.__setitem__(r, a[17]), False)
        if base.id_kind == "int":
            e["[r]=int64min"] = (_set(r, INT64_MIN), False)
            e["[r]=int64max"] = (_set(r, INT64_MAX), False)
            e["[r]=new"] = (_set(r, 987654321987), False)
        else:
            e["[r]=empty"] = (_set(r, ""), False)
            e["[r]=new"] = (_set(r, "zzz-new"), False)
            e["wide_dtype"] = (_wide_str, True)
    elif name == ITEM_IDS_SORTED:
        e["swap01"] = (_swap01, False)
        e["dup01"] = (_dup01, False)
        e["reversed"] = (lambda a, b: a[::-1].copy(), False)
        if base.id_kind == "int":
            e["[-1]=int64max"] = (_set(-1, INT64_MAX), False)
            e["[0]=int64min"] = (_set(0, INT64_MIN), False)
        else:
            e["[-1]=zzzz"] = (_set(-1, "zzzz"), False)
            e["wide_dtype"] = (_wide_str, True)
    return e


def _shift(i: int, by: int):
    """indptr[i] += by: the pointers still rise from 0 to the data's length (a valid CSR),
    one entry moves from one list to its neighbor."""
    def edit(a: np.ndarray, base: Base):
        a[i] += by
    return edit


def index_value_edits(base: Base, name: str) -> dict[str, tuple[Callable, bool]]:
    """Value edits of the session index and the category index (re-signed). ``legit``: the
    result is still a well-formed index of the documented shape and ranges that the
    verified load accepts (another list, another session, another weight); what it says
    is what the checksum signs, so other answers are "changed", not a failure."""
    p, r = base.path, base.r
    e: dict[str, tuple[Callable, bool]] = {}
    if name in (SKNN_ITEM_INDPTR, SKNN_SESSION_INDPTR, CATEGORY_INDPTR):
        ptr = np.load(p / name)
        data_len = int(ptr[-1])
        if name == SKNN_ITEM_INDPTR:
            i = r
        elif name == SKNN_SESSION_INDPTR:
            items = np.load(p / SKNN_ITEM_SESSIONS)
            i = int(items[np.load(p / SKNN_ITEM_INDPTR)[r]])  # row r's newest session
        else:
            i = int(np.load(p / ITEM_CATEGORY)[r])  # row r's category
        e["[i+1]=[i]-1 (decreasing)"] = (lambda a, b: a.__setitem__(i + 1, a[i] - 1), False)
        e["[0]=1"] = (_set(0, 1), False)
        e["[-1]=len+1"] = (_set(-1, data_len + 1), False)
        e["[-1]=int64max"] = (_set(-1, INT64_MAX), False)
        e["[i+1]=int64min"] = (_set(i + 1, INT64_MIN), False)
        e["[i+1]=len+1000"] = (_set(i + 1, data_len + 1000), False)
        e["all0"] = (lambda a, b: a.fill(0), False)
        if ptr[i + 1] - 1 >= ptr[i]:
            e["[i+1]-=1 (valid)"] = (_shift(i + 1, -1), True)
        if ptr[i + 1] + 1 <= ptr[i + 2]:
            e["[i+1]+=1 (valid)"] = (_shift(i + 1, 1), True)
    elif name in (SKNN_ITEM_SESSIONS, SKNN_SESSION_ITEMS, CATEGORY_INDICES):
        if name == SKNN_ITEM_SESSIONS:
            at, hi = int(np.load(p / SKNN_ITEM_INDPTR)[r]), base.n_sessions
        elif name == SKNN_SESSION_ITEMS:
            sess = int(np.load(p / SKNN_ITEM_SESSIONS)[np.load(p / SKNN_ITEM_INDPTR)[r]])
            at, hi = int(np.load(p / SKNN_SESSION_INDPTR)[sess]), base.n
        else:
            cat = int(np.load(p / ITEM_CATEGORY)[r])
            at, hi = int(np.load(p / CATEGORY_INDPTR)[cat]), base.n
        for label, v in (("hi", hi), ("-1", -1), ("int32max", INT32_MAX),
                         ("int32min", INT32_MIN), ("hi+7", hi + 7)):
            e[f"[at]={label}"] = (_set(at, v), False)
        e["[-1]=hi"] = (_set(-1, hi), False)
        e["all-1"] = (lambda a, b: a.fill(-1), False)
        e["[at]=0 (valid)"] = (_set(at, 0), True)
        e["[at]=hi-1 (valid)"] = (_set(at, hi - 1), True)
        e["swap_at (valid)"] = (lambda a, b: a.__setitem__([at, at + 1], a[[at + 1, at]]),
                                True)
        e["dup_at (valid)"] = (lambda a, b: a.__setitem__(at + 1, a[at]), True)
    elif name == SKNN_ITEM_WEIGHT:
        for label, v in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf),
                         ("3e38", 3e38), ("-3e38", -3e38), ("2**21", 2.0**21)):
            e[f"[r]={label}"] = (_set(r, v), False)
        e["all_nan"] = (lambda a, b: a.fill(np.nan), False)
        e["all_3e38"] = (lambda a, b: a.fill(3e38), False)
        e["[r]=0 (valid)"] = (_set(r, 0.0), True)
        e["[r]=-1 (valid)"] = (_set(r, -1.0), True)
        e["[r]=2**20 (valid)"] = (_set(r, 2.0**20), True)
    return e


def _cast(dtype):
    def edit(a: np.ndarray, base: Base):
        if a.dtype.kind == "U" and np.dtype(dtype).kind != "U":
            return a.astype(object) if dtype is object else np.char.encode(a, "ascii")
        return a.astype(dtype)
    return edit


def struct_edits(base: Base, name: str) -> dict[str, tuple[Callable, bool]]:
    """Layout edits of one array (re-signed): Fortran order, byte order, dtype, shape."""
    arr = np.load(base.path / name, mmap_mode="r")
    e: dict[str, tuple[Callable, bool]] = {}
    if arr.ndim == 2:
        e["fortran_order"] = (lambda a, b: np.asfortranarray(a), False)
        e["transposed"] = (lambda a, b: np.ascontiguousarray(a.T), False)
        e["flattened"] = (lambda a, b: a.ravel(), False)
        e["one_column_less"] = (lambda a, b: np.ascontiguousarray(a[:, :-1]), False)
        e["one_column_more"] = (lambda a, b: np.concatenate([a, a[:, -1:]], axis=1), False)
    else:
        e["as_column"] = (lambda a, b: a.reshape(-1, 1), False)
    e["big_endian"] = (lambda a, b: a.astype(a.dtype.newbyteorder(">")), False)
    e["one_row_less"] = (lambda a, b: a[:-1].copy(), False)
    e["one_row_more"] = (lambda a, b: np.concatenate([a, a[-1:]]), False)
    e["empty"] = (lambda a, b: a[:0].copy(), False)
    e["scalar"] = (lambda a, b: np.array(a.ravel()[0]), False)
    e["npy_v2"] = (None, True)  # format 2.0 / 3.0 headers are valid .npy files
    e["npy_v3"] = (None, True)
    e["pickled_object"] = (lambda a, b: a.astype(object), False)
    k = arr.dtype.kind
    if k == "i" and arr.dtype.itemsize == 4:
        casts = {"int64": np.int64, "int16": np.int16, "uint32": np.uint32,
                 "float32": np.float32}
    elif k == "i":
        casts = {"int32": np.int32, "uint64": np.uint64, "float64": np.float64}
    elif k == "f" and arr.dtype.itemsize == 4:
        casts = {"float64": np.float64, "float16": np.float16, "int32": np.int32}
    elif k == "f":
        casts = {"float32": np.float32, "float64": np.float64, "int16": np.int16}
    else:
        casts = {"bytes": "S", "object": object}
    for label, dt in casts.items():
        legit = (name in (ITEM_MATRIX, INPUT_EMBEDDING) and label in ("float16", "float32"))
        e[f"dtype_{label}"] = (_cast(dt), legit)
    return e


def _struct_apply(name: str, label: str, edit: Callable | None):
    if label in ("npy_v2", "npy_v3"):
        def apply(b: Path, base: Base) -> None:
            arr = np.load(b / name)
            write_npy(b / name, arr, version=(2, 0) if label == "npy_v2" else (3, 0))
            resign(b, name)
        return apply
    if label == "fortran_flag_1d":
        def apply(b: Path, base: Base) -> None:
            write_npy(b / name, np.load(b / name), fortran_flag=True)
            resign(b, name)
        return apply
    return _edit_array(name, edit)


def array_cases(base: Base, name: str) -> Iterator[Case]:
    pre = f"{base.name}/{name}"
    for label, (edit, legit) in value_edits(base, name).items():
        yield Case(f"{pre}/value:{label}", base.name, name, "value", _edit_array(name, edit),
                   legit)
    edits = struct_edits(base, name)
    if np.load(base.path / name, mmap_mode="r").ndim == 1:
        edits["fortran_flag_1d"] = (None, True)
    for label, (edit, legit) in edits.items():
        yield Case(f"{pre}/struct:{label}", base.name, name, "struct",
                   _struct_apply(name, label, edit), legit)


# ---- manifest


_MISSING = object()
MANIFEST_VALUES: dict[str, Any] = {
    "missing": _MISSING, "null": None, "str": "1", "neg": -1, "zero": 0, "huge": 2**63,
    "true": True, "false": False, "list": [1], "dict": {"a": 1}, "float": 1.5, "empty_str": "",
}
MANIFEST_KEYS = ("format_version", "model", "n_items", "dim", "input_dim", "item_dtype",
                 "neighbors_per_item", "row_order", "id_kind", "has_categories", "has_bias",
                 "score_transform", "encoder", "inference", "inference.max_session_length",
                 "inference.session_filter", "defaults", "defaults.k", "defaults.neighbors",
                 "defaults.category_filter", "defaults.exclude_session_items",
                 "defaults.candidates", "data_stats", "created_by", "files",
                 "encoder.inputs", "encoder.output", "model.kind")


def _set_path(m: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = m
    for p in parents:
        node = node[p]
    if value is _MISSING:
        node.pop(last, None)
    else:
        node[last] = copy.deepcopy(value)


def _manifest_set(key: str, value: Any):
    def apply(b: Path, base: Base) -> None:
        m = read_manifest(b)
        _set_path(m, key, value)
        write_manifest(b, m)
    return apply


def _manifest_edit(fn: Callable[[dict, Base], Any]):
    def apply(b: Path, base: Base) -> None:
        m = read_manifest(b)
        out = fn(m, base)
        write_manifest(b, m if out is None else out)
    return apply


def manifest_legit(orig: dict, new: Any, base: Base) -> bool:
    """Whether ``new`` is still a valid manifest that may legitimately answer differently:
    only the tunable keys (defaults, inference) changed, each to a documented legal value."""
    if not isinstance(new, dict):
        return False
    if base.extended:
        return _index_manifest_legit(orig, new, base)
    tun_d = ("k", "neighbors", "category_filter", "exclude_session_items")
    tun_i = ("max_session_length", "session_filter")
    a = {k: v for k, v in orig.items() if k not in ("defaults", "inference")}
    bb = {k: v for k, v in new.items() if k not in ("defaults", "inference")}
    if a != bb:
        return False
    d, i = new.get("defaults"), new.get("inference")
    if not isinstance(d, dict) or not isinstance(i, dict):
        return False
    if set(d) != set(orig["defaults"]) or set(i) != set(orig["inference"]):
        return False
    if any(d[k] != orig["defaults"][k] for k in orig["defaults"] if k not in tun_d):
        return False
    if any(i[k] != orig["inference"][k] for k in orig["inference"] if k not in tun_i):
        return False

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    cats = bool(new.get("has_categories"))
    return (is_int(d["k"]) and d["k"] >= 1
            and is_int(d["neighbors"]) and 1 <= d["neighbors"] <= base.width
            and d["category_filter"] in (("none", "last", "session") if cats else ("none",))
            and isinstance(d["exclude_session_items"], bool)
            and is_int(i["max_session_length"]) and i["max_session_length"] >= 1
            and i["session_filter"] in (("none", "last_category") if cats else ("none",)))


def _number(v: Any, lo: float, hi: float) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and lo <= v <= hi)


def _index_manifest_legit(orig: dict, new: dict, base: Base) -> bool:
    """manifest_legit of the "sknn" and "hyb" bases: besides defaults and inference, the
    sknn entry's neighbors, window and sample are tunable; the optional defaults
    (repeat_bonus, knn_weight, validation) may be absent."""
    tun_d = ("k", "neighbors", "category_filter", "exclude_session_items", "candidates",
             "repeat_bonus", "knn_weight", "categories", "max_candidates", "validation")
    optional_d = ("repeat_bonus", "knn_weight", "validation")
    tun_i = ("max_session_length", "session_filter")
    skip = ("defaults", "inference", "sknn")
    if {k: v for k, v in orig.items() if k not in skip} != {
            k: v for k, v in new.items() if k not in skip}:
        return False
    d, i, kn = new.get("defaults"), new.get("inference"), new.get("sknn")
    if not (isinstance(d, dict) and isinstance(i, dict) and isinstance(kn, dict)):
        return False
    od, oi, okn = orig["defaults"], orig["inference"], orig["sknn"]
    if set(d) - set(od) or set(od) - set(d) - set(optional_d) or set(i) != set(oi):
        return False
    if set(kn) - set(okn) or set(okn) - set(kn) - {"neighbors", "window"}:
        return False
    if any(kn[k] != okn[k] for k in ("n_sessions", "idf")):
        return False
    if any(d[k] != od[k] for k in od if k not in tun_d and k in d):
        return False
    if any(i[k] != oi[k] for k in oi if k not in tun_i):
        return False

    def is_int(v, lo=1, hi=None):
        return (isinstance(v, int) and not isinstance(v, bool) and v >= lo
                and (hi is None or v <= hi))

    knn_only = new.get("scorer") == "sknn"
    cats = bool(new.get("has_categories"))
    head = bool(base.n_cats)
    filters = ("none", "last", "session") if cats else ("none",)
    policies = ("sessions",) if knn_only else ("neighbors", "sessions", "categories")
    ok = (is_int(d["k"]) and is_int(kn["sample"]) and is_int(kn.get("neighbors", 1))
          and is_int(kn.get("window", 1))
          and is_int(d["neighbors"], 1, kn["sample"] if knn_only else base.width)
          and d["category_filter"] in filters + (("predicted",) if head else ())
          and isinstance(d["exclude_session_items"], bool)
          and d["candidates"] in policies
          and _number(d.get("repeat_bonus", 0.0), -1e6, 1e6)
          and _number(d.get("knn_weight", 0.0), 0, 1e6)
          and is_int(i["max_session_length"])
          and i["session_filter"] in (("none", "last_category") if cats else ("none",)))
    if ok and head:
        ok = is_int(d.get("categories"), 1, base.n_cats) and is_int(d.get("max_candidates"))
    return ok


INDEX_KEYS = {
    "sknn": ("format_version", "scorer", "model", "n_items", "id_kind", "has_categories",
             "sknn", "sknn.n_sessions", "sknn.sample", "sknn.idf", "sknn.neighbors",
             "sknn.window", "inference", "inference.max_session_length",
             "inference.session_filter", "defaults", "defaults.k", "defaults.neighbors",
             "defaults.candidates", "defaults.category_filter",
             "defaults.exclude_session_items", "defaults.repeat_bonus", "defaults.validation",
             "files", "dim", "encoder"),
    "hyb": ("format_version", "scorer", "n_items", "dim", "input_dim", "neighbors_per_item",
            "n_categories", "has_categories", "encoder", "encoder.outputs", "sknn",
            "sknn.n_sessions", "sknn.sample", "sknn.neighbors", "sknn.window", "inference",
            "inference.max_session_length", "defaults", "defaults.k", "defaults.neighbors",
            "defaults.candidates", "defaults.knn_weight", "defaults.categories",
            "defaults.max_candidates", "defaults.repeat_bonus", "defaults.category_filter",
            "files"),
}
# labels of the generic manifest edits that only apply to encoder bundles
ENCODER_ONLY_EDITS = ("dim=", "input_dim=", "neighbors_per_item=", "item_dtype=",
                      "score_transform=", "encoder.output=", "files.item_matrix.",
                      "files.neighbors", "defaults.neighbors=K+1")


def index_manifest_specials(base: Base) -> dict[str, Callable[[dict, Base], Any]]:
    """Manifest edits of the session index and the category index entries."""
    ns = base.n_sessions
    sp: dict[str, Callable[[dict, Base], Any]] = {
        "sknn.n_sessions=N-1": lambda m, b: m["sknn"].update(n_sessions=ns - 1),
        "sknn.n_sessions=N+1": lambda m, b: m["sknn"].update(n_sessions=ns + 1),
        "sknn.n_sessions=2**31": lambda m, b: m["sknn"].update(n_sessions=2**31),
        "sknn.sample=1": lambda m, b: m["sknn"].update(sample=1),
        "sknn.sample=10**9": lambda m, b: m["sknn"].update(sample=10**9),
        "sknn.neighbors=10**9": lambda m, b: m["sknn"].update(neighbors=10**9),
        "sknn.window=10**9": lambda m, b: m["sknn"].update(window=10**9),
        "sknn.window=1": lambda m, b: m["sknn"].update(window=1),
        "sknn=list": lambda m, b: m.update(sknn=[ns, 1]),
        "sknn.extra_key": lambda m, b: m["sknn"].update(extra=1),
        "defaults.repeat_bonus=1e7": lambda m, b: m["defaults"].update(repeat_bonus=1e7),
        "defaults.repeat_bonus=-2.5": lambda m, b: m["defaults"].update(repeat_bonus=-2.5),
        "defaults.repeat_bonus=nan": lambda m, b: m["defaults"].update(
            repeat_bonus=float("nan")),
        "defaults.repeat_bonus=true": lambda m, b: m["defaults"].update(repeat_bonus=True),
        "defaults.exclude_session_items=flipped": lambda m, b: m["defaults"].update(
            exclude_session_items=not m["defaults"]["exclude_session_items"]),
        "defaults.k=10**30": lambda m, b: m["defaults"].update(k=10**30),
        "defaults.k=2**31": lambda m, b: m["defaults"].update(k=2**31),
        "files.sknn_item_weight=missing": lambda m, b: m["files"].pop(SKNN_ITEM_WEIGHT),
        "files.sknn_session_items=missing": lambda m, b: m["files"].pop(SKNN_SESSION_ITEMS),
        "files.sknn_item_sessions.bytes=2**62": lambda m, b: m["files"][
            SKNN_ITEM_SESSIONS].update(bytes=2**62),
        "files.sknn_item_indptr.sha256=int": lambda m, b: m["files"][
            SKNN_ITEM_INDPTR].update(sha256=5),
        "files.extra=item_matrix.npy": lambda m, b: m["files"].update(
            {ITEM_MATRIX: {"sha256": "0" * 64, "bytes": 1}}),
        "files.extra=category_items_indptr.npy": lambda m, b: m["files"].update(
            {CATEGORY_INDPTR: {"sha256": "0" * 64, "bytes": 1}}),
        "sknn+files=dropped": lambda m, b: [m.pop("sknn")] + [
            m["files"].pop(f) for f in SKNN_FILES],
    }
    if base.n_cats:  # the hybrid
        c = base.n_cats
        sp.update({
            "scorer=sknn": lambda m, b: m.update(scorer="sknn"),
            "defaults.candidates=neighbors": lambda m, b: m["defaults"].update(
                candidates="neighbors"),
            "defaults.candidates=categories": lambda m, b: m["defaults"].update(
                candidates="categories"),
            "defaults.category_filter=predicted": lambda m, b: m["defaults"].update(
                category_filter="predicted"),
            "defaults.knn_weight=0": lambda m, b: m["defaults"].update(knn_weight=0),
            "defaults.knn_weight=-1": lambda m, b: m["defaults"].update(knn_weight=-1),
            "defaults.knn_weight=1e7": lambda m, b: m["defaults"].update(knn_weight=1e7),
            "defaults.categories=C": lambda m, b: m["defaults"].update(categories=c),
            "defaults.categories=C+1": lambda m, b: m["defaults"].update(categories=c + 1),
            "defaults.max_candidates=1": lambda m, b: m["defaults"].update(max_candidates=1),
            "defaults.max_candidates=10**12": lambda m, b: m["defaults"].update(
                max_candidates=10**12),
            "n_categories=C-1": lambda m, b: m.update(n_categories=c - 1),
            "n_categories=C+1": lambda m, b: m.update(n_categories=c + 1),
            "n_categories=missing": lambda m, b: m.pop("n_categories"),
            "files.category_items_indptr=missing": lambda m, b: m["files"].pop(
                CATEGORY_INDPTR),
            "files.category_items_indices=missing": lambda m, b: m["files"].pop(
                CATEGORY_INDICES),
            "files.category_index=missing": lambda m, b: [m["files"].pop(CATEGORY_INDPTR),
                                                          m["files"].pop(CATEGORY_INDICES)],
            "sknn+files=dropped,candidates=neighbors": lambda m, b: [
                m.pop("sknn"), m["defaults"].update(candidates="neighbors")] + [
                m["files"].pop(f) for f in SKNN_FILES],
            "encoder.outputs=category_kind_extra": lambda m, b: m["encoder"].update(
                outputs=[{"name": "query", "kind": "query"},
                         {"name": "category_scores", "kind": "extra"}]),
            "encoder.outputs=names_swapped": lambda m, b: m["encoder"].update(
                outputs=[{"name": "category_scores", "kind": "query"},
                         {"name": "query", "kind": "category_scores"}]),
        })
    else:  # the session-kNN bundle
        sp.update({
            "scorer=encoder": lambda m, b: m.update(scorer="encoder"),
            "scorer=knn": lambda m, b: m.update(scorer="knn"),
            "format_version=1": lambda m, b: m.update(format_version=1),
            "defaults.candidates=neighbors": lambda m, b: m["defaults"].update(
                candidates="neighbors"),
            "defaults.neighbors=sample": lambda m, b: m["defaults"].update(
                neighbors=m["sknn"]["sample"]),
            "defaults.neighbors=sample+1": lambda m, b: m["defaults"].update(
                neighbors=m["sknn"]["sample"] + 1),
            "defaults.category_filter=predicted": lambda m, b: m["defaults"].update(
                category_filter="predicted"),
            "defaults.category_filter=session": lambda m, b: m["defaults"].update(
                category_filter="session"),
            "inference.session_filter=last_category": lambda m, b: m["inference"].update(
                session_filter="last_category"),
            "sknn.sample=neighbors-1": lambda m, b: m["sknn"].update(
                sample=m["defaults"]["neighbors"] - 1),
            "add_encoder_entry": lambda m, b: m.update(
                encoder={"inputs": [{"name": "items", "kind": "items"}],
                         "outputs": [{"name": "query", "kind": "query"}]}),
        })
    return sp


def manifest_cases(base: Base, scratch: Path) -> Iterator[Case]:
    pre = f"{base.name}/{MANIFEST}"
    orig = read_manifest(base.path)
    keys, values = MANIFEST_KEYS, MANIFEST_VALUES
    if base.extended:
        keys = INDEX_KEYS[base.name]
        values = {k: v for k, v in MANIFEST_VALUES.items()
                  if k in ("missing", "null", "str", "neg", "zero", "huge", "dict")}
    elif base.name != "synth":  # the whole grid on one base, a cross-section on the others
        pick = ("missing", "null", "str", "neg", "huge", "dict")
        values = {k: v for k, v in MANIFEST_VALUES.items() if k in pick[:6 if base.name ==
                                                                      "hand" else 4]}
    if base.name == "str":
        keys = ("format_version", "n_items", "dim", "input_dim", "neighbors_per_item",
                "id_kind", "inference", "inference.max_session_length", "defaults",
                "defaults.k", "defaults.neighbors", "files")
    for key in keys:
        for label, value in values.items():
            new = copy.deepcopy(orig)
            _set_path(new, key, value)
            yield Case(f"{pre}/key:{key}={label}", base.name, MANIFEST, "manifest_key",
                       _manifest_set(key, value), manifest_legit(orig, new, base))
    n, d, k, din = base.n, base.dim, base.width, base.input_dim
    specials: dict[str, Callable[[dict, Base], Any]] = {
        "format_version=-1": lambda m, b: m.update(format_version=-1),
        "format_version=99": lambda m, b: m.update(format_version=99),
        "format_version=1.0": lambda m, b: m.update(format_version=1.0),
        "format_version=2": lambda m, b: m.update(format_version=2),
        "n_items=n-1": lambda m, b: m.update(n_items=n - 1),
        "n_items=n+1": lambda m, b: m.update(n_items=n + 1),
        "dim=d-1": lambda m, b: m.update(dim=d - 1),
        "dim=d+1": lambda m, b: m.update(dim=d + 1),
        "input_dim=d_in-1": lambda m, b: m.update(input_dim=din - 1),
        "input_dim=d_in+1": lambda m, b: m.update(input_dim=din + 1),
        "input_dim=dim": lambda m, b: m.update(input_dim=d if din != d else d + 3),
        "neighbors_per_item=K-1": lambda m, b: m.update(neighbors_per_item=k - 1),
        "neighbors_per_item=K+1": lambda m, b: m.update(neighbors_per_item=k + 1),
        "defaults.neighbors=K+1": lambda m, b: m["defaults"].update(neighbors=k + 1),
        "defaults.k=10**30": lambda m, b: m["defaults"].update(k=10**30),
        "defaults.k=1": lambda m, b: m["defaults"].update(k=1),
        "defaults.category_filter=last": lambda m, b: m["defaults"].update(
            category_filter="last"),
        "inference.max_session_length=10**9": lambda m, b: m["inference"].update(
            max_session_length=10**9),
        "inference.session_filter=last_category": lambda m, b: m["inference"].update(
            session_filter="last_category"),
        "id_kind=swapped": lambda m, b: m.update(
            id_kind="str" if m["id_kind"] == "int" else "int"),
        "has_categories=flipped": lambda m, b: m.update(
            has_categories=not m.get("has_categories")),
        "has_bias=flipped": lambda m, b: m.update(has_bias=not m.get("has_bias")),
        "item_dtype=float64": lambda m, b: m.update(item_dtype="float64"),
        "score_transform=cosine": lambda m, b: m.update(score_transform="cosine"),
        "encoder.output=vector": lambda m, b: m["encoder"].update(output="vector"),
        "files.extra=../escape.npy": lambda m, b: m["files"].update(
            {"../escape.npy": {"sha256": "0" * 64, "bytes": 1}}),
        "files.extra=/etc/passwd": lambda m, b: m["files"].update(
            {"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}}),
        "files.extra=missing.npy": lambda m, b: m["files"].update(
            {"unknown.npy": {"sha256": "0" * 64, "bytes": 1}}),
        "files.extra=manifest.json": lambda m, b: m["files"].update(
            {MANIFEST: {"sha256": "0" * 64, "bytes": 1}}),
        "files.item_matrix.bytes=2**62": lambda m, b: m["files"][ITEM_MATRIX].update(
            bytes=2**62),
        "files.item_matrix.bytes=-2**62": lambda m, b: m["files"][ITEM_MATRIX].update(
            bytes=-2**62),
        "files.neighbors.bytes=str": lambda m, b: m["files"][NEIGHBORS].update(bytes="12"),
        "files.neighbors.bytes=null": lambda m, b: m["files"][NEIGHBORS].update(bytes=None),
        "files.neighbors.sha256=missing": lambda m, b: m["files"][NEIGHBORS].pop("sha256"),
        "files.neighbors.sha256=int": lambda m, b: m["files"][NEIGHBORS].update(sha256=5),
        "files.neighbors=list": lambda m, b: m["files"].update({NEIGHBORS: [1, 2]}),
        "files.neighbors=str": lambda m, b: m["files"].update({NEIGHBORS: "x"}),
        "files.item_ids_order=missing": lambda m, b: m["files"].pop(ITEM_IDS_ORDER),
        "files=list": lambda m, b: m.update(files=list(m["files"])),
        "inference.extra_key": lambda m, b: m["inference"].update(extra=1),
        "top_level_list": lambda m, b: [m],
        "top_level_str": lambda m, b: "manifest",
        "top_level_null": lambda m, b: None,
    }
    if base.id_kind == "int" and (base.path / ITEM_CATEGORY).exists():
        specials["files.item_category=missing"] = lambda m, b: m["files"].pop(ITEM_CATEGORY)
    if base.extended:
        if ENCODER not in base.files:
            specials = {k: v for k, v in specials.items()
                        if not any(k.startswith(p) for p in ENCODER_ONLY_EDITS)}
        specials.update(index_manifest_specials(base))
    for label, fn in specials.items():
        new = copy.deepcopy(orig)
        out = fn(new, base)
        new = new if out is None else out
        yield Case(f"{pre}/edit:{label}", base.name, MANIFEST, "manifest_edit",
                   _manifest_edit(fn), manifest_legit(orig, new, base))
    text = (base.path / MANIFEST).read_bytes()
    raw: dict[str, bytes] = {
        "empty": b"", "not_json": b"{oops", "bom": b"\xef\xbb\xbf" + text,
        "utf16": text.decode().encode("utf-16"), "invalid_utf8": text[:-3] + b"\xff\xfe}\n",
        "deep_nesting": b"[" * 200_000 + b"]" * 200_000,
        "deep_in_key": text.replace(b'"data_stats": {}', b'"data_stats": {"x": '
                                    + b"[" * 100_000 + b"]" * 100_000 + b"}", 1),
        "nan_literal": text.replace(b'"format_version": 1', b'"format_version": NaN', 1),
        "inf_dim": text.replace(f'"dim": {d}'.encode(), b'"dim": 1e999', 1),
        "duplicate_key": text.replace(b'"format_version": 1',
                                      b'"format_version": 99, "format_version": 1', 1),
        "huge_int_literal": text.replace(f'"n_items": {n}'.encode(),
                                         b'"n_items": ' + b"9" * 5000, 1),
        "trailing_garbage": text + b"\x00garbage",
        "nul_bytes": text.replace(b"{", b"{\x00", 1),
    }
    for label, data in raw.items():
        yield Case(f"{pre}/raw:{label}", base.name, MANIFEST, "manifest_raw",
                   _replace_bytes(MANIFEST, data, False))


def encoder_cases(base: Base) -> Iterator[Case]:
    pre = f"{base.name}/{ENCODER}"
    # the hybrid's encoder takes the same inputs as the first three bases' encoders: only
    # its category head is new
    for v in ENCODER_VARIANTS if not base.extended else ():
        yield Case(f"{pre}/replace:{v}", base.name, ENCODER, "encoder",
                   _replace_bytes(ENCODER, lambda b, v=v: encoder_model(
                       b.input_dim, b.dim, v, seed=5), True),
                   legit=v in ENCODER_SAME)
    for label, data in (("not_onnx", b"this is not an onnx model\n" * 40), ("empty", b""),
                        ("npy_file", None), ("zeros_1k", b"\x00" * 1024)):
        def make(b, data=data):
            return (b.path / ITEM_IDS_ORDER).read_bytes() if data is None else data
        yield Case(f"{pre}/replace_resigned:{label}", base.name, ENCODER, "encoder",
                   _replace_bytes(ENCODER, make, True))
    yield Case(f"{pre}/replace_stale:not_onnx", base.name, ENCODER, "encoder",
               _replace_bytes(ENCODER, b"not an onnx model", False))
    if base.n_cats:  # the category head: its output broken, the query output intact
        for v in CATEGORY_VARIANTS:
            yield Case(f"{pre}/replace:{v}", base.name, ENCODER, "encoder",
                       _replace_bytes(ENCODER, lambda b, v=v: category_encoder(
                           b.dim, b.n_cats, v, seed=4), True))
        yield Case(f"{pre}/replace:cat_other_weights", base.name, ENCODER, "encoder",
                   _replace_bytes(ENCODER, lambda b: category_encoder(
                       b.dim, b.n_cats, "ok", seed=9), True), legit=True)


# the files damaged on the "sknn" and "hyb" bases (plus item_category.npy of the sknn one,
# which the kNN kernel's category filters read): the item ids, popularity, item matrix and
# neighbor files go through the same checks as on the first three bases
INDEX_BASE_FILES = (MANIFEST, ENCODER, *SKNN_FILES, CATEGORY_INDPTR, CATEGORY_INDICES)


def all_cases(bases: dict[str, Base], scratch: Path) -> list[Case]:
    cases: list[Case] = []
    for base in bases.values():
        cases.append(Case(f"{base.name}/intact", base.name, "-", "intact",
                          lambda b, base: None))
        for name in base.files:
            if base.extended and name not in INDEX_BASE_FILES and not (
                    name == ITEM_CATEGORY and ENCODER not in base.files):
                continue  # covered on the first three bases, through the same code
            cases.extend(generic_cases(base, name, scratch))
            if name.endswith(".npy"):
                cases.extend(array_cases(base, name))
        cases.extend(manifest_cases(base, scratch))
        if ENCODER in base.files:
            cases.extend(encoder_cases(base))
    ids = [c.id for c in cases]
    dup = [k for k, v in Counter(ids).items() if v > 1]
    assert not dup, f"duplicate case ids: {dup[:5]}"
    return cases


# --------------------------------------------------------------------------- the child


def _exc(exc: BaseException, target: str) -> dict:
    msg = str(exc)
    return {"type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix(
                "builtins."),
            "msg": msg[:400], "bundle_error": isinstance(exc, BundleError),
            "names_target": target in msg,
            "names_file": any(f in msg for f in ALL_FILES)}


def child_run(bundle: Path, mode: bool | None, calls: list, target: str) -> dict:
    """Load under ``mode`` on each backend and make the fixed calls (runs in the child)."""
    out: dict[str, Any] = {}
    for backend in BACKENDS:
        try:
            rec = Recommender.load(bundle, verify=mode, backend=backend)
        except BaseException as exc:  # noqa: BLE001 - everything is reported
            out[backend] = {"load": _exc(exc, target)}
            continue
        answers = {}
        for name, session, kwargs in calls:
            try:
                r = rec.recommend(session, **kwargs)
                scores = np.asarray(r.scores)
                answers[name] = {"ids": _py(r.item_ids),
                                 "bits": (scores.astype(np.float32).view(np.uint32).tolist()
                                          if scores.dtype.kind == "f" else repr(scores)),
                                 "scores": [float(s) for s in scores.tolist()][:5],
                                 "fallback": r.fallback, "unknown": int(r.unknown)}
            except BaseException as exc:  # noqa: BLE001
                answers[name] = {"error": _exc(exc, target)}
        out[backend] = {"load": None, "answers": answers}
    return out


def _mapped_bytes() -> int:
    """This process's virtual address space in use (what RLIMIT_AS counts)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _child_main(bundle: Path, mode, calls, target, result_path: Path, log_path: Path) -> None:
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # on top of what the forked parent already maps (under pytest: torch, numba, ...)
        limit = _mapped_bytes() + CHILD_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        res = child_run(bundle, mode, calls, target)
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        os.replace(tmp, result_path)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)


# --------------------------------------------------------------------------- the parent


@dataclass
class Job:
    case: Case
    mode: bool | None
    bundle: Path
    result_path: Path
    log_path: Path
    pid: int = 0
    started: float = 0.0


def classify(case: Case, job_result: dict | None, status: str, log: str,
             reference: dict) -> dict:
    """One (case, mode) run -> {"outcome": ..., "detail": ...}."""
    if status == "hung":
        return {"outcome": "hung", "detail": "timeout"}
    markers = [m for m in CRASH_MARKERS if m in log]
    if status != "ok" or job_result is None or markers:
        return {"outcome": "crashed", "detail": status if status != "ok" else
                ("no result" if job_result is None else f"stderr: {markers}"),
                "log": log[-1500:]}
    per_backend = {}
    worst = "same"
    rank = {"same": 0, "changed": 1, "flagged": 2, "refused": 3, "differing": 4,
            "wrong_family": 5}
    for be, res in job_result.items():
        ref = reference[be]["answers"]
        if res["load"] is not None:
            e = res["load"]
            o = "refused" if e["bundle_error"] else "wrong_family"
            per_backend[be] = {"at": "load", **e, "outcome": o}
        else:
            outs, diffs, errors = Counter(), [], []
            for call, ans in res["answers"].items():
                if "error" in ans:
                    e = ans["error"]
                    outs["refused" if e["bundle_error"] else "wrong_family"] += 1
                    errors.append({"call": call, **e})
                elif _same(ans, ref[call]):
                    outs["same"] += 1
                else:
                    outs["changed" if case.legit else "flagged"
                         if ans["fallback"] in DAMAGE_FALLBACKS else "differing"] += 1
                    diffs.append({"call": call, "got": _brief(ans), "want": _brief(ref[call])})
            o = max(outs, key=lambda x: rank[x]) if outs else "same"
            per_backend[be] = {"at": "calls", "outcome": o, "counts": dict(outs),
                               "errors": errors[:3], "diffs": diffs[:3]}
        if rank[per_backend[be]["outcome"]] > rank[worst]:
            worst = per_backend[be]["outcome"]
    return {"outcome": worst, "backends": per_backend}


def _same(a: dict, b: dict) -> bool:
    return (a["ids"] == b["ids"] and a["bits"] == b["bits"] and a["fallback"] == b["fallback"]
            and a["unknown"] == b["unknown"])


def _brief(ans: dict) -> dict:
    return {"ids": ans["ids"][:5], "scores": ans["scores"][:3], "fallback": ans["fallback"],
            "n": len(ans["ids"])}


class Runner:
    def __init__(self, root: Path, jobs: int, timeout: float, progress: bool):
        self.root = root
        self.jobs = max(1, jobs)
        self.timeout = timeout
        self.progress = progress
        self.scratch = root / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        with open(self.scratch / "huge_zeros", "wb") as f:
            f.truncate(HUGE_BYTES)
        self.cases_dir = root / "cases"
        self.cases_dir.mkdir(exist_ok=True)

    def _start(self, job: Job, calls, target) -> None:
        pid = os.fork()
        if pid == 0:  # the child
            _child_main(job.bundle, job.mode, calls, target, job.result_path, job.log_path)
        job.pid, job.started = pid, time.monotonic()

    def run(self, cases: list[Case], bases: dict[str, Base]) -> list[dict]:
        # the intact bundles' answers first (also warms Numba's disk cache once)
        for base in bases.values():
            ref_case = Case(f"{base.name}/reference", base.name, "-", "intact",
                            lambda b, base: None)
            (res,) = self._run_jobs([ref_case], bases, modes=(None,), progress=False,
                                    reference_pass=True)
            base.reference = res["raw"]
            bad = [be for be, r in base.reference.items() if r["load"] is not None
                   or any("error" in a for a in r["answers"].values())]
            if res["status"] != "ok" or bad:
                raise RuntimeError(f"intact base bundle {base.name} does not work: {res}")
            # the backends must agree with each other on the intact bundle
            answers = {be: r["answers"] for be, r in base.reference.items()}
            for be in BACKENDS[1:]:
                for call, a in answers[be].items():
                    if not _same(a, answers[BACKENDS[0]][call]):
                        raise RuntimeError(f"{base.name}: backend {be} differs on {call}")
        return self._run_jobs(cases, bases, modes=MODES, progress=self.progress)

    def _run_jobs(self, cases, bases, modes, progress, reference_pass=False) -> list[dict]:
        pending: list[tuple[Case, Any]] = [(c, m) for c in cases for m in modes]
        pending.reverse()
        running: dict[int, Job] = {}
        remaining_modes: dict[str, int] = {}
        dirs: dict[str, Path] = {}
        results: list[dict] = []
        bar = None
        if progress:
            import tqdm as _tqdm
            _tqdm.tqdm.monitor_interval = 0  # no monitor thread in a process that forks
            bar = _tqdm.tqdm(total=len(pending), unit="run", desc="fault matrix", file=sys.stderr)
        while pending or running:
            while pending and len(running) < self.jobs:
                case, mode = pending.pop()
                if case.id not in dirs:
                    d = self.cases_dir / f"c{len(results)}-{os.getpid()}-{random.random():.6f}"
                    bundle = d / "bundle"
                    base = bases[case.base]
                    shutil.copytree(base.path, bundle, symlinks=True)
                    try:
                        case.apply(bundle, base)
                        prep_error = None
                    except Exception as exc:  # a harness bug: report it, do not hide it
                        prep_error = f"{type(exc).__name__}: {exc}"
                    dirs[case.id] = d
                    remaining_modes[case.id] = len(modes)
                    if prep_error:
                        for m in modes:
                            results.append({"case": case.id, "mode": mode_name(m),
                                            "outcome": "harness_error", "detail": prep_error,
                                            "file": case.file, "family": case.family})
                        pending = [(c, m) for c, m in pending if c.id != case.id]
                        shutil.rmtree(d, ignore_errors=True)
                        if bar:
                            bar.update(len(modes))
                        continue
                d = dirs[case.id]
                tag = "none" if mode is None else str(mode).lower()
                job = Job(case, mode, d / "bundle", d / f"result-{tag}.json",
                          d / f"log-{tag}.txt")
                calls = bases[case.base].calls
                target = case.file if case.file != "-" else MANIFEST
                self._start(job, calls, target)
                running[job.pid] = job
            finished = []
            for pid, job in list(running.items()):
                got, status = os.waitpid(pid, os.WNOHANG)
                if got == 0:
                    if time.monotonic() - job.started > self.timeout:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        finished.append((job, "hung"))
                    continue
                if os.WIFSIGNALED(status):
                    finished.append((job, f"signal {signal.Signals(os.WTERMSIG(status)).name}"))
                elif os.WEXITSTATUS(status) != 0:
                    finished.append((job, f"exit {os.WEXITSTATUS(status)}"))
                else:
                    finished.append((job, "ok"))
            for job, status in finished:
                del running[job.pid]
                elapsed = time.monotonic() - job.started
                raw = (json.loads(job.result_path.read_text())
                       if job.result_path.exists() and status == "ok" else None)
                log = job.log_path.read_text(errors="replace") if job.log_path.exists() else ""
                rec = {"case": job.case.id, "mode": mode_name(job.mode), "file": job.case.file,
                       "family": job.case.family, "legit": job.case.legit,
                       "seconds": round(elapsed, 3), "status": status}
                if reference_pass:
                    rec["raw"] = raw
                else:
                    rec.update(classify(job.case, raw, status, log,
                                        bases[job.case.base].reference))
                results.append(rec)
                remaining_modes[job.case.id] -= 1
                if remaining_modes[job.case.id] == 0:
                    shutil.rmtree(dirs.pop(job.case.id), ignore_errors=True)
                    for p in self.scratch.glob(f"outside-{job.bundle.parent.name}-*"):
                        p.unlink(missing_ok=True)
                if bar:
                    bar.update(1)
            if not finished:
                time.sleep(0.003)
        if bar:
            bar.close()
        for p in self.scratch.glob("outside-*"):
            p.unlink(missing_ok=True)
        return results


# --------------------------------------------------------------------------- reports


def summarize(results: list[dict]) -> dict:
    by_mode: dict[str, Counter] = defaultdict(Counter)
    by_file: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in results:
        o = r["outcome"]
        for key, table in ((r["mode"], by_mode), ((r["file"], r["mode"]), by_file)):
            table[key]["cases"] += 1
            table[key][o] += 1
            if o == "refused" and not _names_file(r):
                table[key]["refused_unnamed"] += 1
    return {"by_mode": {k: dict(v) for k, v in by_mode.items()},
            "by_file": {f"{f} | {m}": dict(v) for (f, m), v in sorted(by_file.items())}}


def _names_file(r: dict) -> bool:
    """Every refusal message of the run names a bundle file."""
    for b in r.get("backends", {}).values():
        if b["at"] == "load" and b["bundle_error"] and not b["names_file"]:
            return False
        for e in b.get("errors", []):
            if e["bundle_error"] and not e["names_file"]:
                return False
    return True


COLUMNS = ("cases", "refused", "refused_unnamed", "wrong_family", "crashed", "hung", "same",
           "differing", "flagged", "changed")


def table(summary: dict) -> str:
    lines = ["| verify mode | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for mode, c in sorted(summary["by_mode"].items()):
        lines.append(f"| {mode} | " + " | ".join(str(c.get(k, 0)) for k in COLUMNS) + " |")
    lines += ["", "| file | verify mode | " + " | ".join(COLUMNS) + " |",
              "|---|---|" + "---:|" * len(COLUMNS)]
    for key, c in summary["by_file"].items():
        f, m = key.split(" | ")
        lines.append(f"| {f} | {m} | " + " | ".join(str(c.get(k, 0)) for k in COLUMNS) + " |")
    return "\n".join(lines)


def failing(r: dict) -> bool:
    """A run that the issue's checks count against the runtime."""
    o = r["outcome"]
    if o in ("crashed", "hung", "wrong_family", "harness_error"):
        return True
    if o == "differing" and r["mode"] == "verify=None":
        return True
    return o == "refused" and not _names_file(r)


def signature(r: dict) -> str:
    """A short description of what happened, to group runs into failure classes."""
    o = r["outcome"]
    if o in ("crashed", "hung", "harness_error"):
        return f"{o}: {r.get('status', '')} {r.get('detail', '')}".strip()
    parts = set()
    for b in r.get("backends", {}).values():
        if b["outcome"] != o:
            continue
        if b["at"] == "load":
            parts.add(f"{b['type']} at load")
        for e in b.get("errors", []):
            if (o == "wrong_family") != e["bundle_error"]:
                parts.add(f"{e['type']} in recommend")
        if b.get("diffs"):
            parts.add("different answer")
        if o == "refused" and not _names_file(r):
            parts.add("message names no file")
    return f"{o}: " + "; ".join(sorted(parts))


def example_message(r: dict) -> str:
    if r.get("log"):
        return r["log"].strip().splitlines()[-1][:300] if r["log"].strip() else ""
    for b in r.get("backends", {}).values():
        if b["outcome"] == r["outcome"]:
            if b["at"] == "load":
                return f"[{b.get('type')}] {b.get('msg', '')[:300]}"
            if b.get("errors"):
                e = b["errors"][0]
                return f"[{e['type']} in {e['call']}] {e['msg'][:300]}"
            if b.get("diffs"):
                dd = b["diffs"][0]
                return f"{dd['call']}: got {dd['got']} want {dd['want']}"
    return ""


def findings_markdown(results: list[dict], summary: dict, meta: dict) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        if failing(r) or r["outcome"] == "differing":
            fam = r["family"]
            groups[(r["mode"], r["outcome"], r["file"], fam, signature(r))].append(r)
    out = [f"# Fault-injection findings ({meta['when']}, commit {meta['commit']}, "
           f"{meta['n_cases']} cases x 2 verify modes, {meta['seconds']:.0f} s)", "",
           f"Command: `{meta['command']}`", "", table(summary), "",
           "## Failure classes", "",
           "Grouped by verify mode, outcome, file, mutation family and what happened; "
           "up to 4 example cases each. `differing` under verify=False is listed too (it is "
           "the list the docs must state); under verify=None it is a failure.", ""]
    order = {"crashed": 0, "hung": 1, "wrong_family": 2, "differing": 3, "refused": 4,
             "harness_error": 5}
    for key in sorted(groups, key=lambda k: (k[0] != "verify=None" and 1, order.get(k[1], 9),
                                             k[2], k[3])):
        runs = groups[key]
        mode, outcome, f, fam, sig = key
        out.append(f"- **{mode} / {outcome} / {f} / {fam}** ({len(runs)} runs): {sig}")
        for r in runs[:4]:
            out.append(f"  - `{r['case']}` — {example_message(r)}")
    return "\n".join(out) + "\n"


def _commit() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:
        return "?"


# of the "sknn" and "hyb" bases: always in the sample
INDEX_MUST = ("sknn/intact", "hyb/intact", "sknn/sknn_item_sessions.npy/value:[at]=hi",
              "sknn/sknn_session_items.npy/value:[at]=int32min",
              "sknn/sknn_item_sessions_indptr.npy/value:[i+1]=len+1000",
              "sknn/sknn_item_weight.npy/value:[r]=nan",
              "hyb/sknn_session_items_indptr.npy/value:[i+1]=[i]-1 (decreasing)",
              "hyb/category_items_indices.npy/value:[at]=hi")


def _h(c: Case) -> str:
    return hashlib.sha256(c.id.encode()).hexdigest()


def select_sample(cases: list[Case], n: int) -> list[Case]:
    """A deterministic sample: about ``n`` cases of the first three bases
    (:func:`_select_original`, the sample as it was before the session-index bases) plus
    about ``n // 10`` of the "sknn" and "hyb" bases (:func:`_select_index`)."""
    old = [c for c in cases if c.base in ORIGINAL_BASES]
    new = [c for c in cases if c.base not in ORIGINAL_BASES]
    chosen = {c.id for c in _select_original(old, n)} if old else set()
    if new:
        chosen |= {c.id for c in _select_index(new, max(16, n // 10))}
    return [c for c in cases if c.id in chosen]


def _select_index(cases: list[Case], n: int) -> list[Case]:
    """INDEX_MUST, then one case of every (base, file) of the index files (the manifests
    last), then by hash."""
    chosen = {c.id: c for c in cases if c.id in INDEX_MUST}
    index_files = (*SKNN_FILES, CATEGORY_INDPTR, CATEGORY_INDICES, MANIFEST)
    by_file: dict[tuple, list[Case]] = defaultdict(list)
    for c in cases:
        if c.file in index_files:
            by_file[(c.base, c.file)].append(c)
    for group in sorted(by_file, key=lambda g: (g[1] == MANIFEST, g)):
        if len(chosen) >= n:
            break
        if not any(c.base == group[0] and c.file == group[1] for c in chosen.values()):
            first = min(by_file[group], key=_h)
            chosen[first.id] = first
    for c in sorted(cases, key=_h):
        if len(chosen) >= n:
            break
        chosen.setdefault(c.id, c)
    return list(chosen.values())


def _select_original(cases: list[Case], n: int) -> list[Case]:
    """A deterministic sample of about ``n`` cases: every family of every file of every
    base at least once where possible, the known crash classes always, then by hash."""
    must = [c for c in cases if any(s in c.id for s in (
        "intact", "item_ids_order.npy/value:[0]=2**30", "item_ids_order.npy/value:[0]=-5",
        "item_ids_order.npy/flip:hlen_lo.b0", "item_ids_order.npy/flip:last_high.b6",
        "encoder.onnx/replace:out_short", "encoder.onnx/replace:out_f64",
        "encoder.onnx/replace:out_3d", "item_matrix.npy/value:row_big",
        "popularity_scores.npy/value:[0]=nan", "manifest.json/edit:format_version=-1",
        "manifest.json/edit:input_dim=d_in+1", "input_embedding.npy/struct:fortran_order",
        "synth/manifest.json/symlink:huge_zeros", "synth/item_matrix.npy/symlink:huge_prefix"))]
    chosen = {c.id: c for c in must}
    by_group: dict[tuple, list[Case]] = defaultdict(list)
    for c in cases:
        by_group[(c.base, c.file, c.family)].append(c)

    def h(c: Case) -> str:
        return hashlib.sha256(c.id.encode()).hexdigest()

    for group in sorted(by_group):
        if len(chosen) >= n:
            break
        first = min(by_group[group], key=h)
        chosen.setdefault(first.id, first)
    for c in sorted(cases, key=h):
        if len(chosen) >= n:
            break
        chosen.setdefault(c.id, c)
    return [c for c in cases if c.id in chosen]


def run_matrix(*, sample: int | None, jobs: int = 2, timeout: float = 10.0,
               progress: bool = False, keep: Path | None = None, match: str | None = None,
               base_names: tuple[str, ...] | None = None
               ) -> tuple[list[dict], dict, dict]:
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="sessrec-faults-", dir=keep))
    try:
        bases = build_bases(root / "bases", base_names)
        runner = Runner(root, jobs, timeout, progress)
        cases = all_cases(bases, runner.scratch)
        if match:
            cases = [c for c in cases if match in c.id]
        if sample:
            cases = select_sample(cases, sample)
        results = runner.run(cases, bases)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = summarize(results)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
            "n_cases": len(cases), "seconds": time.monotonic() - t0,
            "command": "python -m tests.fault_injection " + " ".join(sys.argv[1:])
            if __name__ == "__main__" else f"run_matrix(sample={sample})",
            "sessrec": sessrec_sdk.__version__ if hasattr(sessrec_sdk, "__version__") else "?"}
    return results, summary, meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--full", action="store_true", help="every case of the matrix")
    g.add_argument("--sample", type=int, help="a deterministic sample of about N cases")
    g.add_argument("--list", action="store_true", help="print the case ids and exit")
    ap.add_argument("--match", help="only cases whose id contains this string")
    ap.add_argument("--bases", help="comma-separated base bundles to build and run (default "
                    f"all: {','.join(BASE_NAMES)})")
    ap.add_argument("--jobs", type=int, default=2, help="children at once (default 2)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before 'hung'")
    ap.add_argument("--json", type=Path, help="write the report (every non-passing run)")
    ap.add_argument("--findings", type=Path, help="write a markdown digest of failures")
    ap.add_argument("--all-runs", action="store_true", help="JSON: every run, not only "
                    "non-passing ones")
    args = ap.parse_args(argv)
    base_names = None
    if args.bases:
        base_names = tuple(b.strip() for b in args.bases.split(",") if b.strip())
        unknown = [b for b in base_names if b not in BASE_NAMES]
        if unknown:
            ap.error(f"unknown bases {unknown}; choose from {BASE_NAMES}")
    if args.list:
        root = Path(tempfile.mkdtemp(prefix="sessrec-faults-"))
        try:
            bases = build_bases(root / "bases", base_names)
            for c in all_cases(bases, root):
                print(c.id)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    results, summary, meta = run_matrix(sample=None if args.full else args.sample,
                                        jobs=args.jobs, timeout=args.timeout,
                                        progress=True, match=args.match,
                                        base_names=base_names)
    print(table(summary))
    bad = [r for r in results if failing(r)]
    print(f"\n{meta['n_cases']} cases x {len(MODES)} modes in {meta['seconds']:.0f} s; "
          f"{len(bad)} runs fail the checks (crash, hang, non-BundleError, unnamed refusal, "
          "differing under verify=None)")
    if args.json:
        keep = results if args.all_runs else [r for r in results if r["outcome"] != "same"
                                              and r["outcome"] != "refused" or failing(r)]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "summary": summary, "runs": keep},
                                        indent=1, default=str) + "\n")
    if args.findings:
        args.findings.write_text(findings_markdown(results, summary, meta))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
