"""The ONNX session encoder: session rows and their embeddings -> one query vector.

ONNX Runtime runs with one intra-op and one inter-op thread so that one recommend() uses
one core and a host scales by running calls in parallel threads or processes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .bundle import ENCODER, ENCODER_INPUTS, ENCODER_OUTPUT
from .errors import CorruptFileError


def session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class SessionEncoder:
    """Wraps an ``InferenceSession``; ``run`` is thread-safe, so one instance serves all."""

    def __init__(self, path: str | Path, input_dim: int, output_dim: int):
        path = Path(path)
        try:
            self._session = ort.InferenceSession(str(path), session_options(),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CorruptFileError(
                f"{path}: ONNX Runtime cannot load the encoder ({exc})") from None
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if set(inputs) != set(ENCODER_INPUTS) or ENCODER_OUTPUT not in outputs:
            raise CorruptFileError(
                f"{path}: encoder must take inputs {list(ENCODER_INPUTS)} and give "
                f"'{ENCODER_OUTPUT}'; it takes {sorted(inputs)} and gives {outputs}")
        if inputs["items"].type != "tensor(int64)" or inputs["item_emb"].type != "tensor(float)":
            raise CorruptFileError(f"{path}: encoder input types must be items int64, "
                                   "item_emb float32")
        out = next(o for o in self._session.get_outputs() if o.name == ENCODER_OUTPUT)
        if out.type != "tensor(float)" or not _shape_fits(out.shape, [1, output_dim]):
            raise CorruptFileError(
                f"{path}: encoder output '{ENCODER_OUTPUT}' must be float32 [1, dim={output_dim}]"
                f", it is declared {out.type} {out.shape}")
        if not _shape_fits(inputs["item_emb"].shape, [1, None, input_dim]):
            raise CorruptFileError(
                f"{path}: encoder input 'item_emb' must be float32 [1, L, input_dim="
                f"{input_dim}], it is declared {inputs['item_emb'].shape}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self._outputs = [ENCODER_OUTPUT]
        # InferenceSession.run re-checks the feed's names on every call (several µs, a
        # tenth of the encoder's time); the feed is fixed here and its names were checked
        # above, so calls go to the C++ session's run when onnxruntime exposes it.
        self._run = getattr(self._session, "_sess", self._session).run
        self.path = path
        self.name = ENCODER

    def __call__(self, rows: np.ndarray, item_emb: np.ndarray) -> np.ndarray:
        """rows int64 [L], item_emb float32 [L, d_in] -> query float32 [d].

        The result is checked on every call (the kernels read exactly ``dim`` float32s
        from it): an encoder that fails or returns another shape or dtype raises
        CorruptFileError naming the file."""
        try:
            out = self._run(self._outputs, {"items": rows[None, :],
                                            "item_emb": item_emb[None, :, :]}, None)[0]
        except Exception as exc:  # onnxruntime's own exception types
            raise CorruptFileError(f"{self.path}: the encoder failed on a session of "
                                   f"{len(rows)} items ({str(exc)[:300]})") from None
        if not (isinstance(out, np.ndarray) and out.dtype == np.float32
                and out.size == self.output_dim):
            raise CorruptFileError(
                f"{self.path}: the encoder returned {getattr(out, 'dtype', type(out))} "
                f"{getattr(out, 'shape', '')}, not float32 [1, {self.output_dim}]")
        return out.reshape(-1)


def _shape_fits(declared: list, expected: list) -> bool:
    """A declared ONNX shape (ints, symbolic names or None) that can be ``expected``
    (None there = any length)."""
    if declared is None:
        return True
    return len(declared) == len(expected) and all(
        not isinstance(d, int) or e is None or d == e for d, e in zip(declared, expected))
