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
             ITEM_IDS_ORDER)
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


def build_bases(root: Path) -> dict[str, Base]:
    from export_tools.synthetic import build_synthetic_bundle

    paths = {
        "synth": build_synthetic_bundle(root / "synth", n_items=3000, dim=32, neighbors=20,
                                        seed=11),
        "hand": _hand_bundle(root / "hand"),
        "str": build_synthetic_bundle(root / "str", n_items=2000, dim=24, neighbors=10,
                                      seed=12, string_ids=True),
    }
    bases = {}
    for name, path in paths.items():
        m = json.loads((path / MANIFEST).read_text())
        files = [MANIFEST, *sorted(m["files"])]
        base = Base(name, path, m["n_items"], m["dim"], m["input_dim"],
                    m["neighbors_per_item"], m["id_kind"], files)
        base.calls = make_calls(base)
        bases[name] = base
    return bases


def _py(values) -> list:
    return [v.item() if isinstance(v, np.generic) else v for v in np.asarray(values).tolist()]


def make_calls(base: Base) -> list[tuple[str, list, dict]]:
    """The fixed recommend() calls, built from the intact bundle's arrays."""
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
HUGE_FILES = (MANIFEST, ENCODER, ITEM_MATRIX, NEIGHBORS, ITEM_IDS_ORDER)


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
                       # give a valid bundle (another model, another category)
                       legit=(name == ENCODER or (name == ITEM_CATEGORY and "high" in label)))
    yield Case(f"{pre}/delete", base.name, name, "delete", _delete(name))
    for kind in SYMLINKS:
        if kind.startswith("huge") and name not in HUGE_FILES:
            continue
        yield Case(f"{pre}/symlink:{kind}", base.name, name, "symlink",
                   _symlink(name, kind, scratch))


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
    n, r = base.n, 5  # row 5 is a session row of every call
    e: dict[str, tuple[Callable, bool]] = {}
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


def manifest_cases(base: Base, scratch: Path) -> Iterator[Case]:
    pre = f"{base.name}/{MANIFEST}"
    orig = read_manifest(base.path)
    keys, values = MANIFEST_KEYS, MANIFEST_VALUES
    if base.name != "synth":  # the whole grid on one base, a cross-section on the others
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
    for v in ENCODER_VARIANTS:
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


def all_cases(bases: dict[str, Base], scratch: Path) -> list[Case]:
    cases: list[Case] = []
    for base in bases.values():
        cases.append(Case(f"{base.name}/intact", base.name, "-", "intact",
                          lambda b, base: None))
        for name in base.files:
            cases.extend(generic_cases(base, name, scratch))
            if name.endswith(".npy"):
                cases.extend(array_cases(base, name))
        cases.extend(manifest_cases(base, scratch))
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


def select_sample(cases: list[Case], n: int) -> list[Case]:
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
               progress: bool = False, keep: Path | None = None, match: str | None = None
               ) -> tuple[list[dict], dict, dict]:
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="sessrec-faults-", dir=keep))
    try:
        bases = build_bases(root / "bases")
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
    ap.add_argument("--jobs", type=int, default=2, help="children at once (default 2)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before 'hung'")
    ap.add_argument("--json", type=Path, help="write the report (every non-passing run)")
    ap.add_argument("--findings", type=Path, help="write a markdown digest of failures")
    ap.add_argument("--all-runs", action="store_true", help="JSON: every run, not only "
                    "non-passing ones")
    args = ap.parse_args(argv)
    if args.list:
        root = Path(tempfile.mkdtemp(prefix="sessrec-faults-"))
        try:
            bases = build_bases(root / "bases")
            for c in all_cases(bases, root):
                print(c.id)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    results, summary, meta = run_matrix(sample=None if args.full else args.sample,
                                        jobs=args.jobs, timeout=args.timeout,
                                        progress=True, match=args.match)
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
