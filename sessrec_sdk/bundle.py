"""Bundle format v2 (v1 still loads): the one thing that crosses from the export tools to
the runtime.

A bundle is a directory of ``.npy`` arrays (memory-mapped at load, never pickled),
``manifest.json`` and, for a neural model, an ONNX session encoder. The manifest's
``scorer`` says how a call scores items: "encoder" (the default: the encoder's query
vector against the item matrix, over the neighbor rows) or "sknn" (session-kNN over a
session index, no encoder). This module is the single spec: ``write_bundle``
(export side) and ``read_bundle`` (runtime) share the file names and the checks below.
See docs/bundle-format.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import ChecksumError, CorruptFileError, MissingFileError, VersionError
from .ids import INT64_MIN, ItemIds, sorted_index
from .kernels.sknn import MAX_POSITION_HALF
from .pages import drop_cached

FORMAT_VERSION = 3
# format 3 differs from 2 only by sknn.position_weight, which an older reader would ignore
# (a wrong ranking in silence): bundles without one are still written as format 2
POSITION_FORMAT_VERSION = 3
# the oldest format this reader loads (v1: the encoder declaration was implied, see
# encoder_spec)
MIN_FORMAT_VERSION = 1

MANIFEST = "manifest.json"
ENCODER = "encoder.onnx"
ITEM_MATRIX = "item_matrix.npy"
ITEM_BIAS = "item_bias.npy"
INPUT_EMBEDDING = "input_embedding.npy"
NEIGHBORS = "neighbors.npy"
ITEM_CATEGORY = "item_category.npy"
POPULARITY = "popularity.npy"
POPULARITY_SCORES = "popularity_scores.npy"
ITEM_IDS = "item_ids.npy"
ITEM_IDS_SORTED = "item_ids_sorted.npy"
ITEM_IDS_ORDER = "item_ids_order.npy"
# category -> items (CSR; each category's items most popular first): the candidates of the
# "categories" policy, written for bundles whose encoder predicts categories
CATEGORY_INDPTR = "category_items_indptr.npy"
CATEGORY_INDICES = "category_items_indices.npy"

# the session index of session-kNN (CSR both ways; sessions numbered in time order, a
# larger number is more recent): item -> its most recent training sessions (most recent
# first), session -> its distinct items, and a weight per item (idf or 1)
SKNN_ITEM_INDPTR = "sknn_item_sessions_indptr.npy"
SKNN_ITEM_SESSIONS = "sknn_item_sessions.npy"
SKNN_SESSION_INDPTR = "sknn_session_items_indptr.npy"
SKNN_SESSION_ITEMS = "sknn_session_items.npy"
SKNN_ITEM_WEIGHT = "sknn_item_weight.npy"
SKNN_FILES = (SKNN_ITEM_INDPTR, SKNN_ITEM_SESSIONS, SKNN_SESSION_INDPTR, SKNN_SESSION_ITEMS,
              SKNN_ITEM_WEIGHT)

SCORERS = ("encoder", "sknn")
COMMON_FILES = (POPULARITY, POPULARITY_SCORES, ITEM_IDS, ITEM_IDS_SORTED, ITEM_IDS_ORDER)
ENCODER_FILES = (ENCODER, ITEM_MATRIX, NEIGHBORS)
REQUIRED_FILES = ENCODER_FILES + COMMON_FILES  # of an "encoder" bundle
OPTIONAL_FILES = (ITEM_BIAS, INPUT_EMBEDDING, ITEM_CATEGORY, CATEGORY_INDPTR, CATEGORY_INDICES,
                  *SKNN_FILES)

# The encoder's inputs and outputs are declared in the manifest (v2) by name and kind; the
# kind says what the runtime feeds or reads. Input kinds, each [1, L] over the encoded
# window of L session items, oldest first:
#   items       int64           the items' catalog rows (the session structure: which
#                               positions hold the same item)
#   item_rows   float32 [.., d_in]  the items' rows of input_embedding.npy (or the item
#                               matrix), gathered by the runtime: [1, L, input_dim]
#   positions   int64           0 .. L-1, oldest first
#   recency     int64           L-1 .. 0: how many items came after each one
# Output kinds:
#   query            float32 [1, dim]  the session vector (exactly one)
#   category_scores  float32 [1, n]    a score per category (models with a category head)
#   repeat_scores    float32 [1, L]    a repeat logit per window position (models with the
#                                      learned repeat head): a session item of the window
#                                      gets the largest of its positions' added to its score
#   extra            float32           any other named output, handed on by name
# "batch": true (optional, default false) says the leading axis of every input and output
# is a symbolic batch axis B instead of 1: one run encodes B sessions of one length L, row
# b of each output belonging to session b (Recommender.recommend_many).
INPUT_KINDS = ("items", "item_rows", "positions", "recency")
OUTPUT_KINDS = ("query", "category_scores", "repeat_scores", "extra")
# output kinds an encoder declares at most once (query: exactly once)
UNIQUE_OUTPUT_KINDS = ("query", "category_scores", "repeat_scores")
# v1 bundles declared no kinds: their encoder is this one
ENCODER_INPUTS = ("items", "item_emb")
ENCODER_OUTPUT = "query"
DEFAULT_ENCODER_SPEC = {"inputs": [{"name": "items", "kind": "items"},
                                   {"name": "item_emb", "kind": "item_rows"}],
                        "outputs": [{"name": "query", "kind": "query"}]}

# "predicted": the top predicted categories (bundles whose encoder predicts categories)
CATEGORY_FILTERS = ("last", "session", "none", "predicted")
SESSION_FILTERS = ("none", "last_category")
# how the writer numbered the rows (manifest "row_order", informational): "given" = the
# model's or caller's order, "locality" = along the neighbor graph (export_tools.layout)
ROW_ORDERS = ("given", "locality")
# "neighbors": the neighbor rows of the session items; "categories": the items of the top
# predicted categories (capped at max_candidates); "sessions": the items of the nearest
# training sessions (session-kNN; needs the session index)
CANDIDATE_POLICIES = ("neighbors", "categories", "sessions")
DEFAULT_KEYS = ("k", "neighbors", "category_filter", "exclude_session_items", "candidates")
# defaults of bundles whose encoder predicts categories: how many top categories, and the
# cap on the candidates of the "categories" policy
CATEGORY_DEFAULT_KEYS = ("categories", "max_candidates")

# Bundles up to this size are fully verified (sha256, id ranges) at load unless told not to.
AUTO_VERIFY_MAX_BYTES = 256 * 2**20
# Counts a call hands to a kernel (sample, neighbor sessions, window, candidates) are int32.
INT32_MAX = 2**31 - 1
# A manifest is a few KB; anything larger than this is refused before it is read.
MAX_MANIFEST_BYTES = 16 * 2**20
# Verified bundles hold vectors, biases and popularity shares of at most this magnitude:
# no trained model comes near it, and it keeps every float32 dot product finite.
MAX_ABS_VALUE = 2.0**20


@dataclass(frozen=True)
class SessionIndex:
    """The session-kNN index of a bundle (see SKNN_FILES), memory-mapped."""

    item_indptr: np.ndarray      # int64 [n_items + 1]
    item_sessions: np.ndarray    # int32 session numbers, each item's most recent first
    session_indptr: np.ndarray   # int64 [n_sessions + 1]
    session_items: np.ndarray    # int32 rows, each session's distinct items
    item_weight: np.ndarray      # float32 [n_items]

    @property
    def n_sessions(self) -> int:
        return int(self.session_indptr.shape[0]) - 1

    def arrays(self) -> list[np.ndarray]:
        return [self.item_indptr, self.item_sessions, self.session_indptr,
                self.session_items, self.item_weight]


def scorer(manifest: dict[str, Any]) -> str:
    """How the bundle scores items: "encoder" (also every bundle that does not say) or
    "sknn"."""
    return manifest.get("scorer", "encoder")


def required_files(manifest: dict[str, Any]) -> tuple[str, ...]:
    return COMMON_FILES + (SKNN_FILES if scorer(manifest) == "sknn" else ENCODER_FILES)


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the manifest and memory-mapped arrays (nothing copied)."""

    path: Path
    manifest: dict[str, Any]
    item_matrix: np.ndarray | None     # None in an "sknn" bundle (so are the next ones)
    neighbors: np.ndarray | None
    item_category: np.ndarray | None
    item_bias: np.ndarray | None
    input_embedding: np.ndarray | None  # the item matrix itself unless the model unties them
    popularity: np.ndarray
    popularity_scores: np.ndarray
    ids: ItemIds
    category_indptr: np.ndarray | None = None   # [n_categories + 1] int64
    category_items: np.ndarray | None = None    # int32 rows, by category
    session_index: SessionIndex | None = None   # session-kNN (SKNN_FILES)

    @property
    def predicts_categories(self) -> bool:
        """The encoder has a category head (an output of kind "category_scores")."""
        return predicts_categories(self.manifest)

    @property
    def encoder_path(self) -> Path:
        return self.path / ENCODER

    def arrays(self) -> list[np.ndarray]:
        """Every memory-mapped array, each once."""
        arrs = [self.item_matrix, self.neighbors, self.item_category, self.item_bias,
                self.input_embedding, self.popularity, self.popularity_scores,
                self.ids.in_row_order, self.ids.sorted_ids, self.ids.order,
                self.category_indptr, self.category_items,
                *(self.session_index.arrays() if self.session_index else ())]
        unique = {id(a): a for a in arrs if a is not None}
        return list(unique.values())


# --------------------------------------------------------------------------- checks


def _check_arrays(arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Shapes and dtypes: cheap, always run (on write and on every load)."""
    n, d = manifest["n_items"], manifest.get("dim")

    def expect(name: str, ok: bool, what: str) -> None:
        if not ok:
            arr = arrays[name]
            raise CorruptFileError(f"{name}: expected {what}, found shape {arr.shape} "
                                   f"dtype {arr.dtype}")

    for name, arr in arrays.items():  # the kernels read raw memory in C order, native bytes
        if not (arr.flags.c_contiguous and arr.dtype.isnative):
            raise CorruptFileError(f"{name}: must be a C-order array in native byte order "
                                   f"(found {'C' if arr.flags.c_contiguous else 'Fortran'} "
                                   f"order, dtype {arr.dtype.str})")

    if SKNN_ITEM_INDPTR in arrays:
        n_sessions = manifest["sknn"]["n_sessions"]
        for name, rows in ((SKNN_ITEM_INDPTR, n), (SKNN_SESSION_INDPTR, n_sessions)):
            expect(name, arrays[name].shape == (rows + 1,) and arrays[name].dtype == np.int64,
                   f"[{rows + 1}] int64")
        for name in (SKNN_ITEM_SESSIONS, SKNN_SESSION_ITEMS):
            expect(name, arrays[name].ndim == 1 and arrays[name].dtype == np.int32,
                   "a 1-D int32 array")
        expect(SKNN_ITEM_WEIGHT, arrays[SKNN_ITEM_WEIGHT].shape == (n,)
               and arrays[SKNN_ITEM_WEIGHT].dtype == np.float32, f"[{n}] float32")
    if scorer(manifest) == "sknn":
        _check_common_arrays(arrays, manifest, expect)
        return
    m = arrays[ITEM_MATRIX]
    expect(ITEM_MATRIX, m.ndim == 2 and m.shape == (n, d)
           and m.dtype in (np.float32, np.float16), f"[{n}, {d}] float32 or float16")
    nb = arrays[NEIGHBORS]
    expect(NEIGHBORS, nb.ndim == 2 and nb.shape[0] == n and nb.dtype == np.int32
           and nb.shape[1] == manifest["neighbors_per_item"],
           f"[{n}, {manifest['neighbors_per_item']}] int32")
    if ITEM_BIAS in arrays:
        b = arrays[ITEM_BIAS]
        expect(ITEM_BIAS, b.shape == (n,) and b.dtype == np.float32, f"[{n}] float32")
    d_in = manifest["input_dim"]
    if INPUT_EMBEDDING in arrays:
        e = arrays[INPUT_EMBEDDING]
        expect(INPUT_EMBEDDING, e.ndim == 2 and e.shape == (n, d_in)
               and e.dtype in (np.float32, np.float16),
               f"[{n}, input_dim={d_in}] float32 or float16")
    elif d_in != d:
        raise CorruptFileError(f"{MANIFEST}: input_dim={d_in} but there is no "
                               f"{INPUT_EMBEDDING}, so the encoder takes the item matrix "
                               f"rows (dim={d})")
    _check_common_arrays(arrays, manifest, expect)


def _check_common_arrays(arrays: dict[str, np.ndarray], manifest: dict[str, Any],
                         expect) -> None:
    """The arrays of every bundle, whatever its scorer."""
    n = manifest["n_items"]
    if ITEM_CATEGORY in arrays:
        c = arrays[ITEM_CATEGORY]
        expect(ITEM_CATEGORY, c.shape == (n,) and c.dtype == np.int32, f"[{n}] int32")
    p = arrays[POPULARITY]
    expect(POPULARITY, p.ndim == 1 and p.dtype == np.int32 and p.shape[0] <= n,
           f"[<= {n}] int32")
    ps = arrays[POPULARITY_SCORES]
    expect(POPULARITY_SCORES, ps.shape == p.shape and ps.dtype == np.float32,
           f"{list(p.shape)} float32")
    ids_kind = "U" if manifest["id_kind"] == "str" else "i"
    for name in (ITEM_IDS, ITEM_IDS_SORTED):
        a = arrays[name]
        expect(name, a.shape == (n,) and a.dtype.kind == ids_kind
               and (ids_kind == "U" or a.dtype == np.int64),
               f"[{n}] {'str' if ids_kind == 'U' else 'int64'} ids")
    o = arrays[ITEM_IDS_ORDER]
    expect(ITEM_IDS_ORDER, o.shape == (n,) and o.dtype == np.int32, f"[{n}] int32")
    if (CATEGORY_INDPTR in arrays) != (CATEGORY_INDICES in arrays):
        raise CorruptFileError(f"{MANIFEST}: {CATEGORY_INDPTR} and {CATEGORY_INDICES} go "
                               "together")
    if CATEGORY_INDPTR in arrays:
        n_cats = manifest.get("n_categories")
        expect(CATEGORY_INDPTR, arrays[CATEGORY_INDPTR].shape == (n_cats + 1,)
               and arrays[CATEGORY_INDPTR].dtype == np.int64, "[n_categories + 1] int64")
        ci = arrays[CATEGORY_INDICES]
        expect(CATEGORY_INDICES, ci.ndim == 1 and ci.shape[0] <= n and ci.dtype == np.int32,
               f"[<= {n}] int32")


def _check_values(arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Id ranges and orderings: O(size of the bundle), run on write and on verified loads."""
    n = manifest["n_items"]
    if NEIGHBORS in arrays:
        in_range(NEIGHBORS, arrays[NEIGHBORS], -1, n)
    if SKNN_ITEM_SESSIONS in arrays:
        in_range(SKNN_ITEM_SESSIONS, arrays[SKNN_ITEM_SESSIONS], 0,
                 manifest["sknn"]["n_sessions"])
        in_range(SKNN_SESSION_ITEMS, arrays[SKNN_SESSION_ITEMS], 0, n)
    pop = arrays[POPULARITY]
    if np.unique(pop).size != pop.size:
        raise CorruptFileError(f"{POPULARITY}: lists an item more than once")
    ps = arrays[POPULARITY_SCORES]
    if ps.size and not (np.isfinite(ps).all() and ps.min() >= 0 and ps.max() <= 1
                        and (ps[1:] <= ps[:-1]).all()):
        raise CorruptFileError(f"{POPULARITY_SCORES}: must be shares in [0, 1], "
                               "most popular first (non-increasing)")
    if ITEM_CATEGORY in arrays:
        in_range(ITEM_CATEGORY, arrays[ITEM_CATEGORY], -1, 2**31 - 1)
    s = arrays[ITEM_IDS_SORTED]
    if n > 1 and not np.all(s[1:] > s[:-1]):
        raise CorruptFileError(f"{ITEM_IDS_SORTED}: ids are not strictly increasing "
                               "(duplicate ids or a damaged file)")
    if not np.array_equal(arrays[ITEM_IDS][arrays[ITEM_IDS_ORDER]], s):
        raise CorruptFileError(f"{ITEM_IDS_ORDER}: does not map {ITEM_IDS} onto "
                               f"{ITEM_IDS_SORTED}")
    for name in (ITEM_MATRIX, INPUT_EMBEDDING, ITEM_BIAS):
        if name in arrays:
            for start in range(0, n, 65536):
                block = np.abs(arrays[name][start:start + 65536], dtype=np.float32)
                if not (block <= MAX_ABS_VALUE).all():  # False for NaN too
                    raise CorruptFileError(f"{name}: holds NaN, infinite or out-of-range "
                                           f"values (|x| > {MAX_ABS_VALUE:g})")


def predicts_categories(manifest: dict[str, Any]) -> bool:
    """The manifest's encoder has a category head (an output of kind "category_scores");
    never for v1 or session-kNN bundles."""
    return scorer(manifest) == "encoder" and any(
        e["kind"] == "category_scores" for e in encoder_spec(manifest)["outputs"])


def encoder_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The encoder's declared inputs and outputs ({"inputs": [{"name", "kind"}, ...],
    "outputs": [...], optional "batch": bool}); a v1 manifest implies
    :data:`DEFAULT_ENCODER_SPEC` (no batch axis)."""
    if manifest["format_version"] < 2:
        return DEFAULT_ENCODER_SPEC
    return manifest["encoder"]


def _check_encoder_spec(spec: Any, where: Path) -> None:
    def entries(key: str, kinds: tuple[str, ...]) -> list[dict]:
        items = spec.get(key) if isinstance(spec, dict) else None
        if not (isinstance(items, list) and items and all(
                isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"]
                and e.get("kind") in kinds for e in items)):
            raise CorruptFileError(f"{where}: encoder.{key} must be a non-empty list of "
                                   f'{{"name": str, "kind": one of {kinds}}}')
        return items

    inputs, outputs = entries("inputs", INPUT_KINDS), entries("outputs", OUTPUT_KINDS)
    names = [e["name"] for e in inputs + outputs]
    if len(set(names)) != len(names):
        raise CorruptFileError(f"{where}: encoder names must be unique, got {names}")
    for key, group, unique in (("inputs", inputs, INPUT_KINDS),
                               ("outputs", outputs, UNIQUE_OUTPUT_KINDS)):
        kinds = [e["kind"] for e in group if e["kind"] in unique]
        if len(set(kinds)) != len(kinds):
            raise CorruptFileError(f"{where}: encoder.{key} declares a kind twice: {kinds}")
    if not any(e["kind"] == "query" for e in outputs):
        raise CorruptFileError(f"{where}: encoder.outputs must include the 'query' kind")
    if not isinstance(spec.get("batch", False), bool):
        raise CorruptFileError(f"{where}: encoder.batch must be true or false, "
                               f"got {spec['batch']!r}")


def _check_manifest(manifest: Any, path: Path) -> None:
    where = path / MANIFEST
    if not isinstance(manifest, dict):
        raise CorruptFileError(f"{where}: not a JSON object")
    version = manifest.get("format_version")
    if not _is_int(version) or version < 1:
        raise CorruptFileError(f"{where}: format_version missing or not an integer >= 1, "
                               f"got {version!r}")
    if version > FORMAT_VERSION:
        raise VersionError(f"{where}: bundle format {version} is newer than this sessrec "
                           f"{__version__} reads (up to {FORMAT_VERSION}); upgrade sessrec")
    kind = manifest.get("scorer", "encoder")
    if kind not in SCORERS or (kind != "encoder" and version < 2):
        raise CorruptFileError(f"{where}: scorer must be one of {SCORERS} (format 2), "
                               f"got {kind!r}")
    if version >= 2 and kind == "encoder":
        if "encoder" not in manifest:
            raise CorruptFileError(f"{where}: format 2 needs the encoder declaration")
        _check_encoder_spec(manifest["encoder"], where)
    sizes = ("n_items",) + (("dim", "input_dim", "neighbors_per_item") if kind == "encoder"
                            else ())
    required = (*sizes, "id_kind", "files", "model", "inference", "defaults",
                *(("sknn",) if kind == "sknn" else ()))
    missing = [k for k in required if k not in manifest]
    if missing:
        raise CorruptFileError(f"{where}: missing keys {missing}")
    if "sknn" in manifest:
        info = manifest["sknn"]
        if not (isinstance(info, dict) and all(
                _is_int(info.get(key)) and 1 <= info[key] <= INT32_MAX
                for key in ("n_sessions", "sample"))
                and all(_is_int(info.get(key, 1)) and 1 <= info.get(key, 1) <= INT32_MAX
                        for key in ("neighbors", "window"))):
            raise CorruptFileError(f"{where}: sknn must be an object with ints n_sessions, "
                                   f"sample (and optional neighbors, window) in [1, {INT32_MAX}]")
        table = info.get("position_weight")
        if table is not None and version < POSITION_FORMAT_VERSION:
            raise CorruptFileError(f"{where}: sknn.position_weight needs format_version "
                                   f">= {POSITION_FORMAT_VERSION}, got {version}")
        if table is not None and not (
                isinstance(table, list) and len(table) % 2 == 1
                and len(table) <= 2 * MAX_POSITION_HALF + 1
                and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                        and math.isfinite(x) and x >= 0 for x in table)):
            raise CorruptFileError(f"{where}: sknn.position_weight must be a list of an odd "
                                   f"number (at most {2 * MAX_POSITION_HALF + 1}) of finite "
                                   "numbers >= 0")
    if kind == "sknn":  # a session-kNN bundle has nothing of an encoder bundle
        stray = [k for k in ("encoder", "dim", "input_dim", "neighbors_per_item")
                 if k in manifest]
        files = manifest.get("files")
        stray += [f for f in ENCODER_FILES if isinstance(files, dict) and f in files]
        if stray:
            raise CorruptFileError(f"{where}: scorer 'sknn' but the manifest has encoder-bundle "
                                   f"entries {stray} (damaged manifest?)")
    for key in sizes:
        if not _is_int(manifest[key]) or manifest[key] < 1:
            raise CorruptFileError(f"{where}: {key} must be an int >= 1, "
                                   f"got {manifest[key]!r}")
    if manifest["id_kind"] not in ("int", "str"):
        raise CorruptFileError(f"{where}: id_kind must be 'int' or 'str'")
    for key in ("model", "inference", "files"):
        if not isinstance(manifest[key], dict):
            raise CorruptFileError(f"{where}: {key} must be a JSON object")
    for key in ("has_categories", "has_bias"):
        if not isinstance(manifest.get(key, False), bool):
            raise CorruptFileError(f"{where}: {key} must be true or false")
    if "n_categories" in manifest and not (_is_int(manifest["n_categories"])
                                           and manifest["n_categories"] >= 1):
        raise CorruptFileError(f"{where}: n_categories must be an int >= 1")
    if CATEGORY_INDPTR in manifest["files"] and "n_categories" not in manifest:
        raise CorruptFileError(f"{where}: a category index needs n_categories")
    head = predicts_categories(manifest)
    if "n_categories" not in manifest and head:
        raise CorruptFileError(f"{where}: an encoder output of kind category_scores needs "
                               "n_categories (damaged manifest?)")
    if CATEGORY_INDPTR in manifest["files"] and not head:
        raise CorruptFileError(f"{where}: a category index needs an encoder output of kind "
                               "category_scores (damaged manifest?)")
    for name, info in manifest["files"].items():
        if name not in REQUIRED_FILES + OPTIONAL_FILES:  # also keeps paths inside the bundle
            raise CorruptFileError(f"{where}: files lists {name!r}, which is not a bundle "
                                   "file")
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str)
                and _is_int(info.get("bytes")) and info["bytes"] >= 0):
            raise CorruptFileError(f"{where}: files.{name} must be "
                                   '{"sha256": str, "bytes": int >= 0}')
    inference = manifest["inference"]
    if inference.get("session_filter") not in SESSION_FILTERS:
        raise CorruptFileError(f"{where}: inference.session_filter must be one of "
                               f"{SESSION_FILTERS}")
    if not (_is_int(inference.get("max_session_length"))
            and inference["max_session_length"] >= 1):
        raise CorruptFileError(f"{where}: inference.max_session_length must be an int >= 1")
    _check_defaults(manifest["defaults"], manifest, where)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_defaults(d: Any, manifest: dict[str, Any], where: Path) -> None:
    """The recommend() defaults: checked here so that a bad one fails at load, naming the
    manifest, rather than on the first request."""
    if not isinstance(d, dict):
        raise CorruptFileError(f"{where}: defaults must be a JSON object")
    missing = [k for k in DEFAULT_KEYS if k not in d]
    if missing:
        raise CorruptFileError(f"{where}: defaults miss {missing}")
    sknn = manifest.get("sknn")
    if scorer(manifest) == "sknn":  # neighbors = neighbor sessions, within the sample
        width, what = sknn["sample"], "sknn.sample"
    else:
        width, what = manifest["neighbors_per_item"], "neighbors_per_item"
    problems = {
        "k": "an int >= 1" if not (_is_int(d["k"]) and d["k"] >= 1) else None,
        "neighbors": (f"an int in [1, {what}={width}]"
                      if not (_is_int(d["neighbors"]) and 1 <= d["neighbors"] <= width)
                      else None),
        "category_filter": (f"one of {CATEGORY_FILTERS}"
                            if d["category_filter"] not in CATEGORY_FILTERS else None),
        "exclude_session_items": ("true or false"
                                  if not isinstance(d["exclude_session_items"], bool) else None),
        "candidates": (f"one of {CANDIDATE_POLICIES}"
                       if d["candidates"] not in CANDIDATE_POLICIES else None),
    }
    for key, expected in problems.items():
        if expected:
            raise CorruptFileError(f"{where}: defaults.{key} must be {expected}, "
                                   f"got {d[key]!r}")
    if d["category_filter"] != "none" and not manifest.get("has_categories"):
        raise CorruptFileError(f"{where}: defaults.category_filter={d['category_filter']!r} "
                               f"needs {ITEM_CATEGORY}, which the bundle does not have")
    if (d["candidates"] == "sessions") != (scorer(manifest) == "sknn") and not (
            d["candidates"] == "sessions" and sknn is not None):
        raise CorruptFileError(f"{where}: defaults.candidates={d['candidates']!r} does not fit "
                               f"a bundle scored by {scorer(manifest)!r} (an sknn bundle's "
                               "candidates are 'sessions', which needs the session index)")
    head = predicts_categories(manifest)
    if (d["category_filter"] == "predicted" or d["candidates"] == "categories") and not head:
        raise CorruptFileError(f"{where}: defaults need an encoder that predicts categories "
                               "(an output of kind category_scores)")
    if d["candidates"] == "categories" and CATEGORY_INDPTR not in manifest["files"]:
        raise CorruptFileError(f"{where}: defaults.candidates='categories' needs "
                               f"{CATEGORY_INDPTR}")
    bonus = d.get("repeat_bonus", 0.0)
    if isinstance(bonus, bool) or not isinstance(bonus, (int, float)) or not (
            math.isfinite(bonus) and abs(bonus) <= 1e6):
        raise CorruptFileError(f"{where}: defaults.repeat_bonus must be a finite number with "
                               f"abs(x) <= 1e6, got {bonus!r}")
    weight = d.get("knn_weight", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
            math.isfinite(weight) and 0 <= weight <= 1e6):
        raise CorruptFileError(f"{where}: defaults.knn_weight must be a finite number in "
                               f"[0, 1e6], got {weight!r}")
    n_cats = manifest.get("n_categories", 0)
    # required with a category head; max_candidates also caps the "sessions" policy
    keys = CATEGORY_DEFAULT_KEYS if head else ("max_candidates",) * ("max_candidates" in d)
    for key in keys:
        v = d.get(key)
        top = n_cats if key == "categories" else INT32_MAX
        if not (_is_int(v) and 1 <= v <= top):
            name = f"n_categories={top}" if key == "categories" else str(top)
            raise CorruptFileError(f"{where}: defaults.{key} must be an int in [1, {name}], "
                                   f"got {v!r}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest would need Python 3.11
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- read


def read_bundle(path: str | os.PathLike, verify: bool | None = None) -> Bundle:
    """Open a bundle: parse the manifest, memory-map the arrays, check them.

    ``verify``: True checks every file's sha256 and every value (reads the whole bundle);
    False checks only what keeps the runtime memory-safe: the manifest, file sizes, shapes,
    dtypes and the id-order and popularity rows (milliseconds, whatever the size); None
    (default) verifies bundles whose files add up to at most 256 MiB. docs/bundle-format.md
    states what each mode guarantees. Every problem raises a :class:`BundleError` naming
    the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise MissingFileError(f"{path}: bundle directory not found")
    manifest = _read_manifest(path / MANIFEST)
    _check_manifest(manifest, path)
    mpath = path / MANIFEST
    files = manifest["files"]
    for name in required_files(manifest):
        if name not in files:
            raise CorruptFileError(f"{mpath}: does not list required file {name}")
    if bool(manifest.get("has_categories")) != (ITEM_CATEGORY in files):
        raise CorruptFileError(f"{mpath}: has_categories disagrees with the files listed")
    if SKNN_ITEM_INDPTR in files and "sknn" not in manifest:
        raise CorruptFileError(f"{mpath}: a session index needs the sknn entry")
    sizes = {name: _regular_file_size(path / name, info["bytes"])
             for name, info in files.items()}
    if verify is None:  # decided from the files on disk, not from what the manifest claims
        verify = sum(sizes.values()) <= AUTO_VERIFY_MAX_BYTES
    if verify:
        for name, info in files.items():
            if sha256_of(path / name) != info["sha256"]:
                raise ChecksumError(f"{path / name}: sha256 does not match the manifest "
                                    "(file changed or damaged)")
    arrays = {name: _open_npy(path / name) for name in files if name.endswith(".npy")}
    _check_arrays(arrays, manifest)
    _check_rows(arrays, manifest)
    if verify:
        _check_values(arrays, manifest)
    matrix = arrays.get(ITEM_MATRIX)
    index = None
    if SKNN_ITEM_INDPTR in arrays:
        index = SessionIndex(*(arrays[name] for name in SKNN_FILES))
    return Bundle(
        path=path, manifest=manifest, item_matrix=matrix, neighbors=arrays.get(NEIGHBORS),
        item_category=arrays.get(ITEM_CATEGORY), item_bias=arrays.get(ITEM_BIAS),
        input_embedding=arrays.get(INPUT_EMBEDDING, matrix), session_index=index,
        popularity=arrays[POPULARITY], popularity_scores=arrays[POPULARITY_SCORES],
        ids=ItemIds(arrays[ITEM_IDS], arrays[ITEM_IDS_SORTED], arrays[ITEM_IDS_ORDER]),
        category_indptr=arrays.get(CATEGORY_INDPTR), category_items=arrays.get(CATEGORY_INDICES))


def _read_manifest(mpath: Path) -> Any:
    """The parsed manifest; a BundleError (never another exception) for any bad one."""
    size = _regular_file_size(mpath, None)
    if size > MAX_MANIFEST_BYTES:
        raise CorruptFileError(f"{mpath}: {size} bytes; a manifest is at most "
                               f"{MAX_MANIFEST_BYTES} (damaged bundle?)")
    try:
        with open(mpath, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise CorruptFileError(f"{mpath}: cannot be read ({exc})") from None
    if len(data) > MAX_MANIFEST_BYTES:  # it grew after the size check: never parse a prefix
        raise CorruptFileError(f"{mpath}: grew past {MAX_MANIFEST_BYTES} bytes while being "
                               "read (a bundle being written?)")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptFileError(f"{mpath}: not valid JSON ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from None


def _regular_file_size(p: Path, declared: int | None) -> int:
    """Size of ``p``, which must be a regular file (a symlink to one is fine) of the size
    the manifest declares: a device, a directory or a file of another size is refused
    before anything reads it."""
    try:
        st = p.stat()
    except FileNotFoundError:
        what = "manifest missing (not a sessrec bundle?)" if p.name == MANIFEST else (
            "listed in the manifest but missing")
        raise MissingFileError(f"{p}: {what}") from None
    except OSError as exc:
        raise CorruptFileError(f"{p}: cannot be read ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CorruptFileError(f"{p}: not a regular file")
    if declared is not None and st.st_size != declared:
        raise CorruptFileError(f"{p}: {st.st_size} bytes on disk, the manifest says "
                               f"{declared} (damaged or replaced file)")
    return st.st_size


def _check_rows(arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """The rows the id lookup, the popularity fallback and the category index hand to the
    kernels and to ``take``: checked on every load (O(n_items) on int32 arrays), so an
    unverified bundle cannot make a call index outside the catalog."""
    n = manifest["n_items"]
    if SKNN_ITEM_WEIGHT in arrays:  # O(n_items) floats: scores stay finite and comparable
        w = arrays[SKNN_ITEM_WEIGHT]
        if not (np.abs(w) <= MAX_ABS_VALUE).all():
            raise CorruptFileError(f"{SKNN_ITEM_WEIGHT}: holds NaN, infinite or out-of-range "
                                   f"values (|x| > {MAX_ABS_VALUE:g})")
    for indptr, data in ((CATEGORY_INDPTR, CATEGORY_INDICES),
                         (SKNN_ITEM_INDPTR, SKNN_ITEM_SESSIONS),
                         (SKNN_SESSION_INDPTR, SKNN_SESSION_ITEMS)):
        if indptr in arrays:
            p, nnz = arrays[indptr], len(arrays[data])
            if p[0] != 0 or p[-1] != nnz or (p.size > 1 and (p[1:] < p[:-1]).any()):
                raise CorruptFileError(f"{indptr}: must rise from 0 to the length of "
                                       f"{data} ({nnz})")
    for name in (ITEM_IDS_ORDER, POPULARITY, CATEGORY_INDICES):
        if name in arrays:
            in_range(name, arrays[name], 0, n)


def in_range(name: str, arr: np.ndarray, lo: int, hi: int) -> None:
    """CorruptFileError naming ``name`` and the first value of ``arr`` outside [lo, hi)."""
    if arr.size and (arr.min() < lo or arr.max() >= hi):
        flat = arr.ravel()
        bad = int(np.argmax((flat < lo) | (flat >= hi)))
        raise CorruptFileError(f"{name}: value {flat[bad]} at flat index {bad} is outside "
                               f"[{lo}, {hi})")


def _open_npy(path: Path) -> np.ndarray:
    try:
        # a plain ndarray view of the memmap: indexing a np.memmap subclass costs microseconds
        return np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many types
        raise CorruptFileError(f"{path}: unreadable or truncated .npy "
                               f"({type(exc).__name__}: {str(exc)[:200]})") from None


# --------------------------------------------------------------------------- write


def write_bundle(
    out: str | os.PathLike,
    *,
    encoder: bytes | str | os.PathLike | None,
    item_matrix: np.ndarray | None,
    neighbors: np.ndarray | None,
    item_ids: np.ndarray,
    popularity: np.ndarray,
    popularity_scores: np.ndarray,
    model: dict[str, Any],
    inference: dict[str, Any],
    defaults: dict[str, Any],
    item_category: np.ndarray | None = None,
    item_bias: np.ndarray | None = None,
    input_embedding: np.ndarray | None = None,
    data_stats: dict[str, Any] | None = None,
    tool_versions: dict[str, str] | None = None,
    row_order: str = "given",
    encoder_io: dict[str, Any] | None = None,
    n_categories: int | None = None,
    session_index: SessionIndex | None = None,
    sknn: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle atomically: build it in a sibling temp dir, then rename into place.

    ``model`` = {"kind": ..., "config": {...}}; ``inference`` = {"max_session_length": int,
    "session_filter": one of SESSION_FILTERS}; ``defaults`` = {"k", "category_filter",
    "exclude_session_items", "neighbors", "candidates"}. ``row_order`` only records how the
    caller numbered the rows ("given": model/id order, "locality": export_tools.layout).
    ``encoder_io``: the encoder's named inputs and outputs with their kinds (see
    INPUT_KINDS / OUTPUT_KINDS; default: items + item_rows -> query) and whether it takes
    a batch axis (``"batch": true``; default: one session per run). An encoder with a
    ``category_scores`` output gets the category -> items index; ``n_categories`` is the
    width of that output (default: the largest category + 1).
    ``session_index`` + ``sknn`` ({"n_sessions", "sample", ...}): the session-kNN index;
    with ``encoder``, ``item_matrix`` and ``neighbors`` all None the bundle's scorer is
    "sknn" (no encoder), otherwise the index rides along for ``candidates="sessions"``.
    Arrays are validated with the same checks the reader runs, so a bundle that writes is
    a bundle that loads.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    if row_order not in ROW_ORDERS:
        raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
    item_ids = np.asarray(item_ids)
    if item_ids.dtype.kind in "iu":
        if item_ids.size and (item_ids.min() <= INT64_MIN):
            raise ValueError("integer item ids must be greater than -2**63")
        item_ids = item_ids.astype(np.int64)
        id_kind = "int"
    elif item_ids.dtype.kind == "U":
        id_kind = "str"
    else:
        raise TypeError(f"item_ids must be integers or str, got dtype {item_ids.dtype}")
    knn_only = encoder is None and item_matrix is None and neighbors is None
    if not knn_only and (encoder is None or item_matrix is None or neighbors is None):
        raise ValueError("give encoder, item_matrix and neighbors together (or none of them "
                         "for a session-kNN bundle)")
    if (session_index is None) != (sknn is None) or (knn_only and session_index is None):
        raise ValueError("a session-kNN bundle needs session_index and sknn")
    n_items = len(item_ids)
    sorted_ids, order = sorted_index(item_ids)
    arrays: dict[str, np.ndarray] = {} if knn_only else {
        ITEM_MATRIX: item_matrix, NEIGHBORS: np.ascontiguousarray(neighbors, dtype=np.int32)}
    if session_index is not None:
        arrays.update(zip(SKNN_FILES, session_index.arrays()))
    arrays.update({
        POPULARITY: np.asarray(popularity, dtype=np.int32),
        POPULARITY_SCORES: np.asarray(popularity_scores, dtype=np.float32),
        ITEM_IDS: item_ids, ITEM_IDS_SORTED: sorted_ids, ITEM_IDS_ORDER: order,
    })
    if item_category is not None:
        arrays[ITEM_CATEGORY] = np.asarray(item_category, dtype=np.int32)
    if item_bias is not None:
        arrays[ITEM_BIAS] = np.asarray(item_bias, dtype=np.float32)
    if input_embedding is not None:
        arrays[INPUT_EMBEDDING] = input_embedding
    encoder_io = encoder_io or DEFAULT_ENCODER_SPEC
    extra: dict[str, Any] = {} if sknn is None else {"sknn": dict(sknn)}
    if knn_only:
        extra["scorer"] = "sknn"
        defaults = {"k": 10, "candidates": "sessions", "category_filter": "none",
                    "exclude_session_items": False, **defaults}
    elif any(e["kind"] == "category_scores" for e in encoder_io.get("outputs", [])):
        if item_category is None:
            raise ValueError("an encoder that predicts categories needs item_category")
        indptr, indices = category_index(arrays[ITEM_CATEGORY], arrays[POPULARITY],
                                         n_categories)
        arrays[CATEGORY_INDPTR], arrays[CATEGORY_INDICES] = indptr, indices
        extra["n_categories"] = len(indptr) - 1
        defaults = {"categories": min(3, len(indptr) - 1), "max_candidates": 5000, **defaults}
    width = sknn["sample"] if knn_only else int(neighbors.shape[1])
    defaults = {"k": 10, "candidates": "neighbors", "neighbors": width, **defaults}
    shapes = {} if knn_only else {
        "dim": int(item_matrix.shape[1]),
        "input_dim": int((input_embedding if input_embedding is not None
                          else item_matrix).shape[1]),
        "item_dtype": str(item_matrix.dtype),
        "neighbors_per_item": int(neighbors.shape[1])}
    manifest: dict[str, Any] = {
        "format_version": (POSITION_FORMAT_VERSION if sknn and "position_weight" in sknn
                           else 2),
        "model": model,
        "n_items": int(n_items),
        **shapes,
        "row_order": row_order,
        "id_kind": id_kind,
        "has_categories": item_category is not None,
        "has_bias": item_bias is not None,
        **extra,
        **({} if knn_only else {"score_transform": "dot", "encoder": encoder_io}),
        "inference": inference,
        "defaults": defaults,
        "data_stats": data_stats or {},
        "created_by": {"sessrec": __version__, "numpy": np.__version__,
                       "python": platform.python_version(), **(tool_versions or {})},
        "files": {name: {"sha256": "", "bytes": 0}
                  for name in [*([] if knn_only else [ENCODER]), *arrays]},
    }
    _check_manifest(manifest, out)  # the file entries are filled in once written
    _check_arrays(arrays, manifest)
    _check_rows(arrays, manifest)
    _check_values(arrays, manifest)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is shared by servers
    try:
        if isinstance(encoder, bytes):
            (tmp / ENCODER).write_bytes(encoder)
        elif encoder is not None:
            shutil.copyfile(encoder, tmp / ENCODER)
        for name, arr in arrays.items():
            np.save(tmp / name, arr, allow_pickle=False)
        for name in sorted(manifest["files"]):
            manifest["files"][name] = {"sha256": sha256_of(tmp / name),
                                       "bytes": (tmp / name).stat().st_size}
            drop_cached(tmp / name)  # durable before the rename; read back in 2 MB pages
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def category_index(item_category: np.ndarray, popularity: np.ndarray,
                   n_categories: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 [C + 1], indices int32): the rows of each category 0..C-1 (C =
    ``n_categories``, default the largest category + 1; rows of category -1 are left out),
    most popular first, then by row, so that a capped read of a category keeps its popular
    items."""
    cats = np.asarray(item_category)
    n_cats = int(cats.max()) + 1 if cats.size and cats.max() >= 0 else 1
    if n_categories is not None:
        if n_categories < n_cats:
            raise ValueError(f"n_categories={n_categories} but item_category reaches "
                             f"{n_cats - 1}")
        n_cats = n_categories
    rank = np.full(len(cats), len(popularity), dtype=np.int64)
    rank[np.asarray(popularity)] = np.arange(len(popularity))
    rows = np.flatnonzero(cats >= 0)
    order = np.lexsort((rows, rank[rows], cats[rows]))
    indices = rows[order].astype(np.int32)
    indptr = np.zeros(n_cats + 1, dtype=np.int64)
    np.cumsum(np.bincount(cats[rows], minlength=n_cats), out=indptr[1:])
    return indptr, indices


def update_manifest(path: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Change top-level manifest entries (e.g. ``defaults``, ``data_stats``) of a written
    bundle without rewriting its arrays; checked as at load, replaced atomically."""
    path = Path(path)
    mpath = path / MANIFEST
    manifest = {**json.loads(mpath.read_text(encoding="utf-8")), **changes}
    _check_manifest(manifest, path)
    tmp = mpath.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, mpath)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished bundle ``tmp`` to ``out``, replacing any bundle there.

    On Linux the two directories are swapped in one ``renameat2(RENAME_EXCHANGE)``, so a
    server reloading ``out`` at that moment sees the old bundle or the new one, whole.
    Elsewhere the old bundle is renamed aside first: a reload in the microseconds between
    the two renames gets a clear MissingFileError, never a half-deleted bundle."""
    if out.exists() and _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
        return
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if platform.system() != "Linux":
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
