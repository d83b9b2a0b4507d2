"""The ONNX session encoder: the session's window of items -> the query vector (and any
further named outputs the bundle declares, e.g. category scores).

The manifest declares each input and output by name and kind (sessrec_sdk.bundle,
INPUT_KINDS / OUTPUT_KINDS); this module builds the feeds the kinds ask for, checks the
model's own declaration against them at load and checks every result before the kernels
read it. An encoder declared with a batch axis (manifest ``encoder.batch``) encodes several
sessions of one length per run (:meth:`SessionEncoder.run_batch`).

ONNX Runtime runs with one intra-op and one inter-op thread so that one recommend() uses
one core and a host scales by running calls in parallel threads or processes.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .bundle import ENCODER
from .errors import CorruptFileError

#: ONNX type and shape after the leading (batch) axis (None = any length, "d_in" = the
#: bundle's) of each input kind
_INPUT_TYPES = {"items": ("tensor(int64)", [None]),
                "item_rows": ("tensor(float)", [None, "d_in"]),
                "positions": ("tensor(int64)", [None]),
                "recency": ("tensor(int64)", [None])}

#: the named outputs of one session
EncoderOutputs = dict[str, np.ndarray]
#: one session's encoder input: its rows int64 [L] and their item_emb float32 [L, d_in]
Window = tuple[np.ndarray, np.ndarray]


def session_options(overrides: dict[str, Any] | None = None) -> ort.SessionOptions:
    """sessrec's ONNX Runtime options (one thread, all graph optimisations); ``overrides``
    sets further ``SessionOptions`` attributes by name."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, value in (overrides or {}).items():
        if not hasattr(opts, name):
            raise ValueError(f"onnxruntime.SessionOptions has no attribute {name!r}")
        setattr(opts, name, value)
    return opts


class SessionEncoder:
    """Wraps an ``InferenceSession``; ``run`` is thread-safe, so one instance serves all."""

    def __init__(self, path: str | Path, spec: dict[str, Any],
                 input_dim: int, output_dim: int, ort_options: dict[str, Any] | None = None):
        path = Path(path)
        self.path, self.name = path, ENCODER
        self.input_dim, self.output_dim = input_dim, output_dim
        #: the encoder takes a batch axis: run_batch encodes many sessions per run
        self.batch: bool = spec.get("batch", False)
        options = session_options(ort_options)  # a bad option is the caller's ValueError
        try:
            self._session = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CorruptFileError(
                f"{path}: ONNX Runtime cannot load the encoder ({exc})") from None
        self._check_declaration(spec)
        self._feeds = tuple((e["name"], e["kind"]) for e in spec["inputs"])
        self._outputs = [e["name"] for e in spec["outputs"]]
        self.output_kinds = {e["name"]: e["kind"] for e in spec["outputs"]}
        self.query_name = next(e["name"] for e in spec["outputs"] if e["kind"] == "query")
        self._query_index = self._outputs.index(self.query_name)
        # InferenceSession.run re-checks the feed's names on every call (several µs, a
        # tenth of the encoder's time); the names were checked above, so calls go to the
        # C++ session's run when onnxruntime exposes it.
        self._run = getattr(self._session, "_sess", self._session).run

    def _check_declaration(self, spec: dict[str, Any]) -> None:
        """The model's inputs and outputs are the manifest's, of the kinds' types and
        shapes; a batch encoder's leading axes must be symbolic ("B": any number of
        sessions), the others' 1 (or symbolic: run with 1)."""
        path = self.path
        lead = "B" if self.batch else 1
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        want_in = {e["name"]: e["kind"] for e in spec["inputs"]}
        missing = [n for n in {e["name"] for e in spec["outputs"]} if n not in outputs]
        if set(inputs) != set(want_in) or missing:
            raise CorruptFileError(
                f"{path}: the manifest declares inputs {sorted(want_in)} and outputs "
                f"{[e['name'] for e in spec['outputs']]}; the encoder takes {sorted(inputs)} "
                f"and gives {sorted(outputs)}")
        for name, kind in want_in.items():
            onnx_type, shape = _INPUT_TYPES[kind]
            shape = [lead, *(self.input_dim if d == "d_in" else d for d in shape)]
            if inputs[name].type != onnx_type or not _shape_fits(inputs[name].shape, shape):
                raise CorruptFileError(
                    f"{path}: encoder input {name!r} (kind {kind}) must be {onnx_type} "
                    f"{shape}, it is declared {inputs[name].type} {inputs[name].shape}")
        for e in spec["outputs"]:
            o = outputs[e["name"]]
            want = [lead, self.output_dim] if e["kind"] == "query" else [lead, None]
            # the query's width must be declared as a number: a symbolic one (e.g. one that
            # grows with the session) could match dim for one length and not another; the
            # repeat scores' width is the window's length, so it must not be a number
            if e["kind"] == "query":
                fixed = (o.shape is not None and len(o.shape) == 2
                         and o.shape[1] == self.output_dim)
            elif e["kind"] == "repeat_scores":
                fixed = o.shape is None or (len(o.shape) == 2
                                            and not isinstance(o.shape[1], int))
                want = [lead, "L"]
            else:
                fixed = True
            # run_batch hands row b of every output to session b
            batched = not self.batch or o.shape is None or (
                len(o.shape) >= 1 and not isinstance(o.shape[0], int))
            if o.type != "tensor(float)" or not fixed or not batched or (
                    e["kind"] != "extra" and not _shape_fits(o.shape, want)):
                raise CorruptFileError(
                    f"{path}: encoder output {e['name']!r} (kind {e['kind']}) must be "
                    f"float32 {want}, it is declared {o.type} {o.shape}")

    def feeds(self, rows: np.ndarray, item_emb: np.ndarray) -> dict[str, np.ndarray]:
        """The encoder's inputs for B windows of one length L: rows int64 [B, L], item_emb
        float32 [B, L, d_in] (a single window: [L] and [L, d_in], fed as B = 1)."""
        if rows.ndim == 1:
            rows, item_emb = rows[None, :], item_emb[None, :, :]
        n, length = rows.shape
        out = {}
        for name, kind in self._feeds:
            if kind == "items":
                out[name] = rows
            elif kind == "item_rows":
                out[name] = item_emb
            elif kind == "positions":
                out[name] = np.tile(np.arange(length, dtype=np.int64), (n, 1))
            else:  # recency
                out[name] = np.tile(np.arange(length - 1, -1, -1, dtype=np.int64), (n, 1))
        return out

    def __call__(self, rows: np.ndarray, item_emb: np.ndarray) -> EncoderOutputs:
        """rows int64 [L], item_emb float32 [L, d_in] -> the named outputs, each flattened
        to 1-D (the query: float32 [dim]).

        Results are checked on every call (the kernels read exactly ``dim`` float32s from
        the query): an encoder that fails or returns another shape or dtype raises
        CorruptFileError naming the file."""
        results, query = self._checked_run(rows, item_emb, f"a session of {len(rows)} items")
        if query.size != self.output_dim:
            raise CorruptFileError(
                f"{self.path}: the encoder returned float32 {query.shape} for "
                f"{self.query_name!r}, not float32 [1, {self.output_dim}]")
        return {name: out.reshape(-1) for name, out in zip(self._outputs, results)}

    def run_batch(self, windows: Sequence[Window]) -> list[EncoderOutputs]:
        """The outputs of each window (rows int64 [L], item_emb float32 [L, d_in], one L
        for all), as ``__call__`` gives them: all in one run when the encoder takes a batch
        axis (the per-run overhead is paid once), else one run each. Results are checked
        as in ``__call__``, and every output must hold one row per window."""
        if not self.batch or len(windows) < 2:
            return [self(rows, item_emb) for rows, item_emb in windows]
        n, length = len(windows), len(windows[0][0])
        if any(len(rows) != length for rows, _ in windows):
            raise ValueError("run_batch takes windows of one length")
        rows = np.stack([w[0] for w in windows])
        item_emb = np.stack([w[1] for w in windows])
        results, query = self._checked_run(rows, item_emb,
                                           f"a batch of {n} sessions of {length} items")
        if query.shape != (n, self.output_dim):
            raise CorruptFileError(
                f"{self.path}: the encoder returned float32 {query.shape} for "
                f"{self.query_name!r} on {n} sessions, not float32 [{n}, {self.output_dim}]")
        for name, out in zip(self._outputs, results):
            if out.ndim < 1 or out.shape[0] != n:
                raise CorruptFileError(f"{self.path}: the encoder returned {out.shape} for "
                                       f"{name!r} on {n} sessions, not one row per session")
        # copies: each session's outputs own their memory (a cache keeps them alone)
        return [{name: out[b].reshape(-1).copy() for name, out in zip(self._outputs, results)}
                for b in range(n)]

    def _checked_run(self, rows: np.ndarray, item_emb: np.ndarray, what: str
                     ) -> tuple[list, np.ndarray]:
        """One encoder run: (every output, the query output), each output checked to be
        float32; a failing run raises CorruptFileError naming ``what`` was encoded."""
        try:
            results = self._run(self._outputs, self.feeds(rows, item_emb), None)
        except Exception as exc:  # onnxruntime's own exception types
            raise CorruptFileError(f"{self.path}: the encoder failed on {what} "
                                   f"({str(exc)[:300]})") from None
        for name, out in zip(self._outputs, results):
            if not (isinstance(out, np.ndarray) and out.dtype == np.float32):
                raise CorruptFileError(f"{self.path}: the encoder returned "
                                       f"{getattr(out, 'dtype', type(out))} for {name!r}, "
                                       "not float32")
        return results, results[self._query_index]


class CachedEncoder:
    """An encoder whose outputs are kept for the last ``size`` distinct windows (LRU): for
    evaluation (many settings over the same sessions) and for hosts whose traffic repeats
    sessions. Thread-safe."""

    def __init__(self, encoder: SessionEncoder, size: int):
        self.encoder, self.size = encoder, size
        self.path, self.name = encoder.path, encoder.name
        self._memo: OrderedDict[bytes, EncoderOutputs] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, rows: np.ndarray, item_emb: np.ndarray) -> EncoderOutputs:
        key = rows.tobytes()
        with self._lock:
            hit = self._memo.get(key)
            if hit is not None:
                self._memo.move_to_end(key)
                return hit
        out = self.encoder(rows, item_emb)
        self._keep({key: out})
        return out

    def run_batch(self, windows: Sequence[Window]) -> list[EncoderOutputs]:
        """``SessionEncoder.run_batch`` for the windows not in the cache (each distinct
        window once); the others are answered from it."""
        keys = [rows.tobytes() for rows, _ in windows]
        found: dict[bytes, EncoderOutputs] = {}
        with self._lock:
            for key in keys:
                hit = self._memo.get(key)
                if hit is not None:
                    self._memo.move_to_end(key)
                    found[key] = hit
        todo = {key: w for key, w in zip(keys, windows) if key not in found}
        if todo:
            new = dict(zip(todo, self.encoder.run_batch(list(todo.values()))))
            self._keep(new)
            found.update(new)
        return [found[key] for key in keys]

    def _keep(self, outputs: dict[bytes, EncoderOutputs]) -> None:
        for out in outputs.values():
            for v in out.values():  # shared by every caller that hits the cache
                v.setflags(write=False)
        with self._lock:
            for key, out in outputs.items():
                self._memo[key] = out
                self._memo.move_to_end(key)
            while len(self._memo) > self.size:
                self._memo.popitem(last=False)


def _shape_fits(declared: list | None, expected: list) -> bool:
    """A declared ONNX shape (ints, symbolic names or None) that can be ``expected``
    (None there = any length; a name there, e.g. "B", = must be symbolic)."""
    if declared is None:
        return True
    return len(declared) == len(expected) and all(
        not isinstance(d, int) or e is None or d == e for d, e in zip(declared, expected))
