"""The manifest checks of ``read_bundle``, field by field: each damaged field is refused
with its own error class and message (word for word, naming manifest.json), and each
bound holds at its edge and fails just past it. Tiny synthetic bundles written once per
module with ``write_bundle`` (an encoder bundle, one with a category head, a session-kNN
one and one-of-everything edge bundles); each case copies one and edits its manifest.
The encoder file is never run: ``read_bundle`` checks the manifest and arrays only."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export_tools.synthetic import synthetic_session_index
from sessrec_sdk import bundle
from sessrec_sdk.bundle import (
    INT32_MAX,
    MAX_MANIFEST_BYTES,
    SessionIndex,
    read_bundle,
    write_bundle,
)
from sessrec_sdk.errors import ChecksumError, CorruptFileError, VersionError
from sessrec_sdk.kernels.sknn import MAX_POSITION_HALF

N, D, K, N_CATS = 8, 2, 3, 3
DROP = object()  # an edit value: delete the key
MOST_WEIGHTS = 2 * MAX_POSITION_HALF + 1
CAT_IO = {"inputs": [{"name": "items", "kind": "items"},
                     {"name": "item_emb", "kind": "item_rows"}],
          "outputs": [{"name": "query", "kind": "query"},
                      {"name": "cats", "kind": "category_scores"}]}


def _encoder_bundle(out: Path, *, n: int = N, d: int = D, k: int = K, head: bool = False,
                    input_dim: int | None = None, session_index: SessionIndex | None = None,
                    sknn: dict | None = None) -> Path:
    rng = np.random.default_rng(3)
    matrix = (rng.standard_normal((n, d)) * 0.1).astype(np.float32)
    emb = None if input_dim is None else (
        rng.standard_normal((n, input_dim)) * 0.1).astype(np.float32)
    nbrs = ((np.arange(n)[:, None] + np.arange(1, k + 1)) % n).astype(np.int32)
    if n == 1:
        nbrs[:] = -1
    return write_bundle(
        out, encoder=b"never run by these tests", item_matrix=matrix, neighbors=nbrs,
        item_ids=np.arange(100, 100 + n), popularity=np.arange(n),
        popularity_scores=np.linspace(0.3, 0.01, n), item_category=np.arange(n) % N_CATS,
        input_embedding=emb, model={"kind": "test", "config": {}},
        inference={"max_session_length": 3, "session_filter": "none"},
        defaults={"category_filter": "none", "exclude_session_items": True},
        encoder_io=CAT_IO if head else None, session_index=session_index, sknn=sknn)


def _sknn_bundle(out: Path, index: SessionIndex, sknn: dict, *, n: int = N,
                 neighbors: int = 2) -> Path:
    return write_bundle(
        out, encoder=None, item_matrix=None, neighbors=None, item_ids=np.arange(100, 100 + n),
        popularity=np.arange(n), popularity_scores=np.linspace(0.3, 0.01, n),
        session_index=index, sknn=sknn, model={"kind": "test", "config": {}},
        inference={"max_session_length": 4, "session_filter": "none"},
        defaults={"neighbors": neighbors})


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("manifest")
    index, _ = synthetic_session_index(N, 5, sample=4, seed=1)
    one = SessionIndex(item_indptr=np.array([0, 1]), item_sessions=np.array([0], np.int32),
                       session_indptr=np.array([0, 1]), session_items=np.array([0], np.int32),
                       item_weight=np.ones(1, np.float32))
    out = {
        "enc": _encoder_bundle(root / "enc"),
        "head": _encoder_bundle(root / "head", head=True),
        "knn": _sknn_bundle(root / "knn", index,
                            {"n_sessions": 5, "sample": 4, "position_weight": [0.5, 1, 0.5]}),
        "untied": _encoder_bundle(root / "untied", input_dim=5),
        # an encoder bundle with a session index (hybrid candidates)
        "hybrid": _encoder_bundle(root / "hybrid", session_index=index,
                                  sknn={"n_sessions": 5, "sample": 4}),
        # every count at 1: the lower bound of each size is a value that loads
        "one": _encoder_bundle(root / "one", n=1, d=1, k=1),
        "one_knn": _sknn_bundle(root / "one_knn", one, {"n_sessions": 1, "sample": 1,
                                                        "neighbors": 1, "window": 1}, n=1,
                               neighbors=1),
    }
    return out


def _edit(manifest: dict, changes: dict) -> None:
    for dotted, value in changes.items():  # "a/b": key b of entry a
        *parents, key = dotted.split("/")
        node = manifest
        for p in parents:
            node = node[p]
        if value is DROP:
            del node[key]
        else:
            node[key] = value


def _copy(bundles, tmp_path, name: str, changes: dict | None = None) -> Path:
    b = shutil.copytree(bundles[name], tmp_path / name)
    if changes is not None:
        m = json.loads((b / "manifest.json").read_text())
        _edit(m, changes)
        (b / "manifest.json").write_text(json.dumps(m))
    return b


def _refusal(b: Path, exc: type[Exception] = CorruptFileError) -> str:
    """The message of ``read_bundle``'s refusal, with the manifest path cut off."""
    with pytest.raises(exc) as info:
        read_bundle(b, verify=False)
    assert type(info.value) is exc
    where = f"{b / 'manifest.json'}: "
    assert str(info.value).startswith(where), str(info.value)
    return str(info.value)[len(where):]


ENCODER_MSG = ('encoder.{} must be a non-empty list of {{"name": str, "kind": one of {}}}')
KNN_MSG = (f"sknn must be an object with ints n_sessions, sample (and optional neighbors, "
           f"window) in [1, {INT32_MAX}]")
WEIGHT_MSG = (f"sknn.position_weight must be a list of an odd number (at most {MOST_WEIGHTS}) "
              "of finite numbers >= 0")
CANDIDATES_MSG = ("defaults.candidates={!r} does not fit a bundle scored by {!r} (an sknn "
                  "bundle's candidates are 'sessions', which needs the session index)")
HEADLESS_MSG = ("defaults need an encoder that predicts categories (an output of kind "
                "category_scores)")
FILE_ENTRY_MSG = 'files.{} must be {{"sha256": str, "bytes": int >= 0}}'
CAT_MAX = f"[1, n_categories={N_CATS}]"

REFUSED = [
    # the manifest as a whole, its version and scorer
    ("enc", {"format_version": 0}, CorruptFileError,
     "format_version missing or not an integer >= 1, got 0"),
    ("enc", {"format_version": 4}, VersionError,
     f"bundle format 4 is newer than this sessrec {bundle.__version__} reads (up to 3); "
     "upgrade sessrec"),
    ("enc", {"scorer": "bogus"}, CorruptFileError,
     "scorer must be one of ('encoder', 'sknn') (format 2), got 'bogus'"),
    ("knn", {"format_version": 1}, CorruptFileError,
     "scorer must be one of ('encoder', 'sknn') (format 2), got 'sknn'"),
    ("enc", {"encoder": DROP}, CorruptFileError, "format 2 needs the encoder declaration"),
    ("enc", {"id_kind": DROP}, CorruptFileError, "missing keys ['id_kind']"),
    ("enc", {"defaults": DROP, "model": DROP}, CorruptFileError,
     "missing keys ['model', 'defaults']"),
    ("enc", {"dim": DROP}, CorruptFileError, "missing keys ['dim']"),
    ("knn", {"sknn": DROP}, CorruptFileError, "missing keys ['sknn']"),
    # an encoder bundle lists the session index but lost its sknn entry
    ("hybrid", {"sknn": DROP}, CorruptFileError, "a session index needs the sknn entry"),
    # the encoder declaration
    ("enc", {"encoder/inputs": []}, CorruptFileError,
     ENCODER_MSG.format("inputs", bundle.INPUT_KINDS)),
    ("enc", {"encoder/outputs": [{"name": "query", "kind": "vector"}]}, CorruptFileError,
     ENCODER_MSG.format("outputs", bundle.OUTPUT_KINDS)),
    ("enc", {"encoder/outputs": [{"name": "items", "kind": "query"}]}, CorruptFileError,
     "encoder names must be unique, got ['items', 'item_emb', 'items']"),
    ("enc", {"encoder/inputs": [{"name": "a", "kind": "items"}, {"name": "b", "kind": "items"}]},
     CorruptFileError, "encoder.inputs declares a kind twice: ['items', 'items']"),
    ("enc", {"encoder/outputs": [{"name": "q", "kind": "query"}, {"name": "r", "kind": "query"},
                                 {"name": "x", "kind": "extra"}]},
     CorruptFileError, "encoder.outputs declares a kind twice: ['query', 'query']"),
    ("enc", {"encoder/outputs": [{"name": "x", "kind": "extra"}]}, CorruptFileError,
     "encoder.outputs must include the 'query' kind"),
    ("enc", {"encoder/batch": "yes"}, CorruptFileError,
     "encoder.batch must be true or false, got 'yes'"),
    # sizes: each an int >= 1
    ("enc", {"n_items": 0}, CorruptFileError, "n_items must be an int >= 1, got 0"),
    ("enc", {"dim": 0}, CorruptFileError, "dim must be an int >= 1, got 0"),
    ("enc", {"input_dim": 0}, CorruptFileError, "input_dim must be an int >= 1, got 0"),
    ("enc", {"neighbors_per_item": 0}, CorruptFileError,
     "neighbors_per_item must be an int >= 1, got 0"),
    ("enc", {"dim": 2.0}, CorruptFileError, "dim must be an int >= 1, got 2.0"),
    ("knn", {"n_items": True}, CorruptFileError, "n_items must be an int >= 1, got True"),
    # the session-kNN entry: ints in [1, INT32_MAX], neighbors and window optional
    ("knn", {"sknn": [5, 4]}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/n_sessions": 0}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/sample": 0}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/sample": INT32_MAX + 1}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/sample": "4"}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/n_sessions": DROP}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/neighbors": 0}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/neighbors": True}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/neighbors": INT32_MAX + 1}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/window": 0}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/window": 2.5}, CorruptFileError, KNN_MSG),
    ("knn", {"sknn/window": INT32_MAX + 1}, CorruptFileError, KNN_MSG),
    # sknn.position_weight: format 3, an odd-length list of finite numbers >= 0
    ("knn", {"format_version": 2}, CorruptFileError,
     "sknn.position_weight needs format_version >= 3, got 2"),
    ("knn", {"sknn/position_weight": [1.0, 1.0]}, CorruptFileError, WEIGHT_MSG),
    ("knn", {"sknn/position_weight": []}, CorruptFileError, WEIGHT_MSG),
    ("knn", {"sknn/position_weight": {"0": 1}}, CorruptFileError, WEIGHT_MSG),
    ("knn", {"sknn/position_weight": [1.0] * (MOST_WEIGHTS + 2)}, CorruptFileError, WEIGHT_MSG),
    ("knn", {"sknn/position_weight": [1.0, -0.5, 1.0]}, CorruptFileError, WEIGHT_MSG),
    ("knn", {"sknn/position_weight": [1.0, float("inf"), 1.0]}, CorruptFileError, WEIGHT_MSG),
    ("knn", {"sknn/position_weight": [1.0, True, 1.0]}, CorruptFileError, WEIGHT_MSG),
    ("knn", {"sknn/position_weight": [1.0, "1", 1.0]}, CorruptFileError, WEIGHT_MSG),
    # a session-kNN bundle has nothing of an encoder bundle
    ("knn", {"encoder": bundle.DEFAULT_ENCODER_SPEC}, CorruptFileError,
     "scorer 'sknn' but the manifest has encoder-bundle entries ['encoder'] (damaged manifest?)"),
    ("knn", {"dim": 2}, CorruptFileError,
     "scorer 'sknn' but the manifest has encoder-bundle entries ['dim'] (damaged manifest?)"),
    ("knn", {"input_dim": 2}, CorruptFileError,
     "scorer 'sknn' but the manifest has encoder-bundle entries ['input_dim'] "
     "(damaged manifest?)"),
    ("knn", {"neighbors_per_item": 2}, CorruptFileError,
     "scorer 'sknn' but the manifest has encoder-bundle entries ['neighbors_per_item'] "
     "(damaged manifest?)"),
    ("knn", {"dim": 2, "files/neighbors.npy": {"sha256": "", "bytes": 0}}, CorruptFileError,
     "scorer 'sknn' but the manifest has encoder-bundle entries ['dim', 'neighbors.npy'] "
     "(damaged manifest?)"),
    ("knn", {"files/encoder.onnx": {"sha256": "", "bytes": 0}}, CorruptFileError,
     "scorer 'sknn' but the manifest has encoder-bundle entries ['encoder.onnx'] "
     "(damaged manifest?)"),
    # the other top-level fields
    ("enc", {"id_kind": "float"}, CorruptFileError, "id_kind must be 'int' or 'str'"),
    ("enc", {"model": "test"}, CorruptFileError, "model must be a JSON object"),
    ("enc", {"inference": []}, CorruptFileError, "inference must be a JSON object"),
    ("enc", {"files": []}, CorruptFileError, "files must be a JSON object"),
    ("enc", {"has_categories": 1}, CorruptFileError, "has_categories must be true or false"),
    ("enc", {"has_bias": "no"}, CorruptFileError, "has_bias must be true or false"),
    ("enc", {"n_categories": 0}, CorruptFileError, "n_categories must be an int >= 1"),
    ("enc", {"n_categories": "3"}, CorruptFileError, "n_categories must be an int >= 1"),
    # the category index and the category head go together, with n_categories
    ("head", {"n_categories": DROP}, CorruptFileError, "a category index needs n_categories"),
    ("head", {"n_categories": DROP, "files/category_items_indptr.npy": DROP,
              "files/category_items_indices.npy": DROP}, CorruptFileError,
     "an encoder output of kind category_scores needs n_categories (damaged manifest?)"),
    ("head", {"encoder": bundle.DEFAULT_ENCODER_SPEC}, CorruptFileError,
     "a category index needs an encoder output of kind category_scores (damaged manifest?)"),
    # the file entries
    ("enc", {"files/notes.txt": {"sha256": "", "bytes": 0}}, CorruptFileError,
     "files lists 'notes.txt', which is not a bundle file"),
    ("enc", {"files/..": {"sha256": "", "bytes": 0}}, CorruptFileError,
     "files lists '..', which is not a bundle file"),
    ("enc", {"files/popularity.npy/bytes": -1}, CorruptFileError,
     FILE_ENTRY_MSG.format("popularity.npy")),
    ("enc", {"files/popularity.npy/bytes": "160"}, CorruptFileError,
     FILE_ENTRY_MSG.format("popularity.npy")),
    ("enc", {"files/popularity.npy/sha256": 5}, CorruptFileError,
     FILE_ENTRY_MSG.format("popularity.npy")),
    ("enc", {"files/popularity.npy": [0, 160]}, CorruptFileError,
     FILE_ENTRY_MSG.format("popularity.npy")),
    # inference
    ("enc", {"inference/session_filter": "all"}, CorruptFileError,
     "inference.session_filter must be one of ('none', 'last_category')"),
    ("enc", {"inference/max_session_length": 0}, CorruptFileError,
     "inference.max_session_length must be an int >= 1"),
    ("enc", {"inference/max_session_length": True}, CorruptFileError,
     "inference.max_session_length must be an int >= 1"),
    # defaults
    ("enc", {"defaults": []}, CorruptFileError, "defaults must be a JSON object"),
    ("enc", {"defaults/candidates": DROP}, CorruptFileError, "defaults miss ['candidates']"),
    ("enc", {"defaults/k": 0}, CorruptFileError, "defaults.k must be an int >= 1, got 0"),
    ("enc", {"defaults/neighbors": 0}, CorruptFileError,
     f"defaults.neighbors must be an int in [1, neighbors_per_item={K}], got 0"),
    ("enc", {"defaults/neighbors": K + 1}, CorruptFileError,
     f"defaults.neighbors must be an int in [1, neighbors_per_item={K}], got {K + 1}"),
    ("knn", {"defaults/neighbors": 5}, CorruptFileError,
     "defaults.neighbors must be an int in [1, sknn.sample=4], got 5"),
    ("enc", {"defaults/category_filter": "brand"}, CorruptFileError,
     f"defaults.category_filter must be one of {bundle.CATEGORY_FILTERS}, got 'brand'"),
    ("enc", {"defaults/exclude_session_items": 1}, CorruptFileError,
     "defaults.exclude_session_items must be true or false, got 1"),
    ("enc", {"defaults/candidates": "all"}, CorruptFileError,
     f"defaults.candidates must be one of {bundle.CANDIDATE_POLICIES}, got 'all'"),
    ("enc", {"defaults/category_filter": "last", "has_categories": False}, CorruptFileError,
     "defaults.category_filter='last' needs item_category.npy, which the bundle does not have"),
    ("enc", {"defaults/candidates": "sessions"}, CorruptFileError,
     CANDIDATES_MSG.format("sessions", "encoder")),
    ("knn", {"defaults/candidates": "neighbors"}, CorruptFileError,
     CANDIDATES_MSG.format("neighbors", "sknn")),
    ("enc", {"defaults/category_filter": "predicted"}, CorruptFileError, HEADLESS_MSG),
    ("enc", {"defaults/candidates": "categories"}, CorruptFileError, HEADLESS_MSG),
    ("head", {"defaults/candidates": "categories", "files/category_items_indptr.npy": DROP,
              "files/category_items_indices.npy": DROP}, CorruptFileError,
     "defaults.candidates='categories' needs category_items_indptr.npy"),
    ("enc", {"defaults/repeat_bonus": 1e6 + 1}, CorruptFileError,
     "defaults.repeat_bonus must be a finite number with abs(x) <= 1e6, got 1000001.0"),
    ("enc", {"defaults/repeat_bonus": -1e6 - 1}, CorruptFileError,
     "defaults.repeat_bonus must be a finite number with abs(x) <= 1e6, got -1000001.0"),
    ("enc", {"defaults/repeat_bonus": True}, CorruptFileError,
     "defaults.repeat_bonus must be a finite number with abs(x) <= 1e6, got True"),
    ("enc", {"defaults/knn_weight": -1}, CorruptFileError,
     "defaults.knn_weight must be a finite number in [0, 1e6], got -1"),
    ("enc", {"defaults/knn_weight": 1e6 + 1}, CorruptFileError,
     "defaults.knn_weight must be a finite number in [0, 1e6], got 1000001.0"),
    ("enc", {"defaults/knn_weight": True}, CorruptFileError,
     "defaults.knn_weight must be a finite number in [0, 1e6], got True"),
    ("enc", {"defaults/knn_weight": "0.5"}, CorruptFileError,
     "defaults.knn_weight must be a finite number in [0, 1e6], got '0.5'"),
    ("enc", {"defaults/knn_weight": float("nan")}, CorruptFileError,
     "defaults.knn_weight must be a finite number in [0, 1e6], got nan"),
    ("head", {"defaults/categories": 0}, CorruptFileError,
     f"defaults.categories must be an int in {CAT_MAX}, got 0"),
    ("head", {"defaults/categories": N_CATS + 1}, CorruptFileError,
     f"defaults.categories must be an int in {CAT_MAX}, got {N_CATS + 1}"),
    ("head", {"defaults/categories": DROP}, CorruptFileError,
     f"defaults.categories must be an int in {CAT_MAX}, got None"),
    ("head", {"defaults/max_candidates": 0}, CorruptFileError,
     f"defaults.max_candidates must be an int in [1, {INT32_MAX}], got 0"),
    ("enc", {"defaults/max_candidates": 0}, CorruptFileError,
     f"defaults.max_candidates must be an int in [1, {INT32_MAX}], got 0"),
    ("knn", {"defaults/max_candidates": INT32_MAX + 1}, CorruptFileError,
     f"defaults.max_candidates must be an int in [1, {INT32_MAX}], got {INT32_MAX + 1}"),
    ("knn", {"defaults/max_candidates": 5.0}, CorruptFileError,
     f"defaults.max_candidates must be an int in [1, {INT32_MAX}], got 5.0"),
]


@pytest.mark.parametrize("name, changes, exc, message", REFUSED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(REFUSED)])
def test_damaged_manifest_field_is_refused_with_its_message(bundles, tmp_path, name, changes,
                                                            exc, message):
    """Each damaged field fails the load naming the manifest and what is wrong with it, in
    its own words (a host logs the message; the class says whether upgrading helps)."""
    b = _copy(bundles, tmp_path, name, changes)
    assert _refusal(b, exc) == message


ACCEPTED = [
    ("enc", {"defaults/k": 1}),
    ("enc", {"defaults/neighbors": 1}),
    ("enc", {"defaults/neighbors": K}),
    ("enc", {"defaults/repeat_bonus": 1e6}),
    ("enc", {"defaults/repeat_bonus": -1e6}),
    ("enc", {"defaults/knn_weight": 0}),
    ("enc", {"defaults/knn_weight": 1e6}),
    ("enc", {"defaults/max_candidates": 1}),
    ("enc", {"defaults/max_candidates": INT32_MAX}),
    ("enc", {"n_categories": 1}),
    ("enc", {"inference/max_session_length": 1}),
    ("enc", {"defaults/category_filter": "session", "inference/session_filter":
             "last_category"}),
    ("head", {"defaults/categories": 1}),
    ("head", {"defaults/categories": N_CATS}),
    ("head", {"defaults/candidates": "categories", "defaults/category_filter": "predicted"}),
    ("knn", {"sknn/sample": 1, "defaults/neighbors": 1}),
    ("knn", {"sknn/sample": INT32_MAX}),
    ("knn", {"sknn/neighbors": 1, "sknn/window": 1}),
    ("knn", {"sknn/neighbors": INT32_MAX, "sknn/window": INT32_MAX}),
    ("knn", {"sknn/position_weight": [0, 1, 0]}),
    ("knn", {"sknn/position_weight": [1.0] * MOST_WEIGHTS}),
    ("knn", {"sknn/position_weight": DROP, "format_version": 2}),
    ("knn", {"defaults/max_candidates": INT32_MAX}),
]


@pytest.mark.parametrize("name, changes", ACCEPTED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ACCEPTED)])
def test_manifest_values_at_their_bounds_load(bundles, tmp_path, name, changes):
    """The edge value of each bound is a valid manifest: the bundle loads and keeps it."""
    b = _copy(bundles, tmp_path, name, changes)
    loaded = read_bundle(b, verify=True)
    want = json.loads((b / "manifest.json").read_text())
    assert loaded.manifest == want


@pytest.mark.parametrize("name", ["one", "one_knn"])
def test_every_count_at_one_loads(bundles, name):
    """A bundle of one item (dim, input_dim, neighbors per item, sessions, sample, window,
    session length all 1) is valid: the lower bound of each size is 1, not 2."""
    b = read_bundle(bundles[name], verify=True)
    m = b.manifest
    keys = (["dim", "input_dim", "neighbors_per_item"] if name == "one" else
            ["sknn.n_sessions", "sknn.sample", "sknn.neighbors", "sknn.window"])
    values = [m["n_items"], m["defaults"]["neighbors"]]
    for key in keys:
        node = m
        for part in key.split("."):
            node = node[part]
        values.append(node)
    assert values == [1] * len(values)


def test_manifest_not_an_object(bundles, tmp_path):
    """Valid JSON that is not an object is refused before any key is looked up."""
    b = _copy(bundles, tmp_path, "enc")
    (b / "manifest.json").write_text("[1, 2]")
    assert _refusal(b) == "not a JSON object"


def test_manifest_not_json_says_why(bundles, tmp_path):
    """The parser's own error is in the message, by class and text."""
    b = _copy(bundles, tmp_path, "enc")
    (b / "manifest.json").write_text("{oops")
    assert _refusal(b) == ("not valid JSON (JSONDecodeError: Expecting property name "
                           "enclosed in double quotes: line 1 column 2 (char 1))")
    (b / "manifest.json").write_bytes(b'{"a": "\xff"}')
    assert _refusal(b) == ("not valid JSON (UnicodeDecodeError: 'utf-8' codec can't decode "
                           "byte 0xff in position 7: invalid start byte)")


def test_manifest_size_limit_is_inclusive(bundles, tmp_path):
    """A manifest of exactly MAX_MANIFEST_BYTES loads (read whole, its last byte the
    closing brace); one byte more is refused before it is read."""
    b = _copy(bundles, tmp_path, "enc")
    text = json.dumps(json.loads((b / "manifest.json").read_text()))
    assert text.endswith("}")
    (b / "manifest.json").write_text(text[:-1] + " " * (MAX_MANIFEST_BYTES - len(text)) + "}")
    assert read_bundle(b, verify=False).manifest["n_items"] == N
    with open(b / "manifest.json", "a") as f:
        f.write(" ")
    assert _refusal(b) == (f"{MAX_MANIFEST_BYTES + 1} bytes; a manifest is at most "
                           f"{MAX_MANIFEST_BYTES} (damaged bundle?)")


def test_manifest_that_grows_after_its_size_check_is_refused(bundles, tmp_path, monkeypatch):
    """The size is checked before the read; a file that grew past the limit in between (the
    stat faked small here) is refused, never parsed from its first MAX_MANIFEST_BYTES."""
    b = _copy(bundles, tmp_path, "enc")
    text = json.dumps(json.loads((b / "manifest.json").read_text()))
    (b / "manifest.json").write_text(text + " " * (MAX_MANIFEST_BYTES + 1 - len(text)))
    real = bundle._regular_file_size
    monkeypatch.setattr(bundle, "_regular_file_size", lambda p, declared: (
        len(text) if p.name == "manifest.json" else real(p, declared)))
    assert _refusal(b) == (f"grew past {MAX_MANIFEST_BYTES} bytes while being read (a bundle "
                           "being written?)")


def test_unreadable_manifest_is_a_bundle_error(bundles, tmp_path):
    """A regular file that fails to read (here /proc/self/mem, whose offset 0 is unmapped:
    EIO) is a CorruptFileError with the OS error, not an OSError."""
    b = _copy(bundles, tmp_path, "enc")
    (b / "manifest.json").unlink()
    (b / "manifest.json").symlink_to("/proc/self/mem")
    assert _refusal(b) == "cannot be read ([Errno 5] Input/output error)"


def test_required_file_not_listed(bundles, tmp_path):
    """A manifest that drops a required file of its scorer names that file."""
    b = _copy(bundles, tmp_path, "enc", {"files/popularity.npy": DROP})
    assert _refusal(b) == "does not list required file popularity.npy"
    b = _copy(bundles, tmp_path, "knn", {"files/sknn_item_weight.npy": DROP})
    assert _refusal(b) == "does not list required file sknn_item_weight.npy"


def test_checksum_mismatch_names_the_file(bundles, tmp_path):
    """A verified load names the damaged file (not the manifest) and says what failed."""
    b = _copy(bundles, tmp_path, "enc", {"files/popularity.npy/sha256": "0" * 64})
    with pytest.raises(ChecksumError) as info:
        read_bundle(b, verify=True)
    assert str(info.value) == (f"{b / 'popularity.npy'}: sha256 does not match the manifest "
                               "(file changed or damaged)")
    assert read_bundle(b, verify=False).manifest["n_items"] == N  # not checked unverified


def test_auto_verify_limit_is_inclusive(bundles, tmp_path, monkeypatch):
    """verify=None checks the checksums of a bundle whose files add up to exactly
    AUTO_VERIFY_MAX_BYTES, and not of one a byte larger."""
    b = _copy(bundles, tmp_path, "enc", {"files/popularity.npy/sha256": "0" * 64})
    m = json.loads((b / "manifest.json").read_text())
    total = sum(info["bytes"] for info in m["files"].values())
    monkeypatch.setattr(bundle, "AUTO_VERIFY_MAX_BYTES", total)
    with pytest.raises(ChecksumError, match="popularity.npy"):
        read_bundle(b)
    monkeypatch.setattr(bundle, "AUTO_VERIFY_MAX_BYTES", total - 1)
    assert read_bundle(b).manifest["n_items"] == N


def test_untied_input_embedding_is_the_bundles_own(bundles):
    """A bundle with input_embedding.npy hands that array to the encoder side, not the
    item matrix; a tied bundle hands the item matrix itself."""
    untied = read_bundle(bundles["untied"], verify=True)
    assert untied.input_embedding.shape == (N, 5) and untied.item_matrix.shape == (N, D)
    assert np.array_equal(untied.input_embedding,
                          np.load(bundles["untied"] / "input_embedding.npy"))
    tied = read_bundle(bundles["enc"], verify=True)
    assert tied.input_embedding is tied.item_matrix


def test_arrays_lists_each_mapped_array_once(bundles):
    """Bundle.arrays covers the session index of an sknn bundle and every array of an
    encoder bundle, each once (the tied input embedding is the item matrix)."""
    knn = read_bundle(bundles["knn"], verify=False)
    assert {id(a) for a in knn.session_index.arrays()} <= {id(a) for a in knn.arrays()}
    assert len(knn.arrays()) == 5 + 5
    enc = read_bundle(bundles["enc"], verify=False)
    assert len(enc.arrays()) == 3 + 5  # item matrix, neighbors, categories + common
    assert len(read_bundle(bundles["head"], verify=False).arrays()) == 3 + 5 + 2

