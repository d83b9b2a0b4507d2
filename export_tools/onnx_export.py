"""ONNX export of a model's session encoder, through its export spec.

``torch.onnx.export(..., dynamo=True)`` (the older TorchScript exporter silently
mis-exports index_add with repeated indices) with the session length ``L`` and the batch
``B`` (sessions per run) dynamic on every input axis the spec marks ``"L"`` or ``"B"``.
The export runs in a fresh (spawned) process: torch 2.13's exporter keeps state after its
first export of an ``nn.GRU``, and every later export in the same process silently fixes
the session length to the example's; a new process exports it dynamic every time. The
written file is checked: every ``"L"`` and ``"B"`` axis of the graph's inputs (and every
``"B"`` axis of its outputs) must be symbolic, and a batched encoder must give each
session of a batch what it gives that session alone, within :data:`BATCH_TOLERANCE`
(:func:`check_batch_parity`).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

#: Largest |batched - alone| allowed on any output value of a batched encoder. Not 0: ONNX
#: Runtime's kernels may sum in another order when a run holds more rows, so a session in
#: a batch can round otherwise in the last bits than alone (seen on sessions of about ten
#: items and more).
BATCH_TOLERANCE = 1e-5


def export_encoder(model, path: Path) -> float | None:
    """Write ``model.encoder()`` to ``path`` as one self-contained ONNX file; returns the
    batched encoder's largest batched-vs-alone output difference (None: no batch axis)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import onnx

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # an executor, not a Pool: a Pool replaces a worker that dies and waits forever
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(_export_encoder_here, type(model), model.config, state,
                        str(path)).result()
        except BrokenProcessPool as e:
            raise RuntimeError(
                "the ONNX export process died before it finished (out of memory, a crash, "
                "or a script without an `if __name__ == \"__main__\":` guard: the export "
                "process re-imports the script that started it)") from e
    spec = model.export_spec()
    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = [o.name for o in graph.output]
    if outputs != spec.output_names:
        raise RuntimeError(f"exported encoder outputs {outputs}, spec {spec.output_names}")
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in [*graph.input, *graph.output]}
    for t in spec.inputs:
        got = dims.get(t.name)
        if got is None:
            raise RuntimeError(f"exported encoder lacks input {t.name!r}: inputs {dims}")
        if any(s == "L" and not isinstance(g, str) for s, g in zip(t.shape, got)):
            raise RuntimeError(f"exported encoder has a static session length: {dims}")
    for t in spec.inputs + spec.outputs:
        if any(s == "B" and not isinstance(g, str) for s, g in zip(t.shape, dims[t.name])):
            raise RuntimeError(f"exported encoder has a static batch axis: {dims}")
    return check_batch_parity(model, path) if spec.batched else None


def check_batch_parity(model, path: Path, seed: int = 0) -> float:
    """The largest difference between an output of a session run in a batch and run alone,
    over a few batches of the batched encoder at ``path``; raises above
    :data:`BATCH_TOLERANCE`. The runtime batches sessions of one length
    (Recommender.recommend_many), whose answers must be recommend()'s.

    Sessions: for a few lengths, six random sessions of the catalog, with repeated items
    (the session structure a graph model reads), run as one batch and one by one through
    ONNX Runtime with the runtime's session options."""
    import onnxruntime as ort
    import torch

    from sessrec_sdk.encoder import session_options

    spec = model.export_spec()
    sess = ort.InferenceSession(str(path), session_options(),
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    n_items = int(model.config["n_items"])
    worst = 0.0
    for length in sorted({1, 2, 5, 12, min(40, spec.max_length)}):
        pool = rng.integers(0, n_items, size=max(1, length // 2 + 1))  # repeats
        items = torch.as_tensor(rng.choice(pool, size=(6, length)).astype(np.int64))
        with torch.no_grad():
            emb = model.embed(items).numpy()
        feeds = dict(zip(spec.input_names, (items.numpy(), emb)))
        together = sess.run(None, feeds)
        for row in range(len(items)):
            alone = sess.run(None, {n: v[row:row + 1] for n, v in feeds.items()})
            for name, a, b in zip(spec.output_names, together, alone):
                diff = float(np.abs(a[row:row + 1] - b).max())
                if not diff <= BATCH_TOLERANCE:  # also NaN
                    raise RuntimeError(
                        f"exported encoder: session {row} of a batch of {len(items)} "
                        f"sessions of {length} items gives {name!r} differing by {diff:.3g} "
                        f"from the same session run alone (> {BATCH_TOLERANCE})")
                worst = max(worst, diff)
    return worst


def _export_encoder_here(model_cls, config: dict, state: dict, path: str) -> None:
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # exporter chatter on stderr
    model = model_cls.from_config(config)
    model.load_state_dict(state)
    model.eval()
    spec = model.export_spec()
    wrapper = model.encoder().eval()
    axes = {"L": torch.export.Dim("L", min=1, max=spec.max_length),
            "B": torch.export.Dim("B", min=1)}
    dynamic = tuple({axis: axes[size] for axis, size in enumerate(t.shape)
                     if size in axes} for t in spec.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, tuple(spec.example_inputs), dynamo=True, dynamic_shapes=dynamic,
            input_names=spec.input_names, output_names=spec.output_names, verbose=False)
    program.save(path, external_data=False)  # one self-contained file
