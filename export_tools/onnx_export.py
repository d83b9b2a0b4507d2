"""ONNX export of a model's session encoder, through its export spec.

``torch.onnx.export(..., dynamo=True)`` (the older TorchScript exporter silently
mis-exports index_add with repeated indices) with the session length ``L`` dynamic on
every input axis the spec marks ``"L"``. The export runs in a fresh (spawned) process:
torch 2.13's exporter keeps state after its first export of an ``nn.GRU``, and every later
export in the same process silently fixes the session length to the example's; a new
process exports it dynamic every time. The written file is checked: every ``"L"`` axis of
the graph's inputs must be symbolic.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path


def export_encoder(model, path: Path) -> None:
    """Write ``model.encoder()`` to ``path`` as one self-contained ONNX file."""
    import multiprocessing

    import onnx

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_export_encoder_here, (type(model), model.config, state, str(path)))
    spec = model.export_spec()
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.input}
    for t in spec.inputs:
        got = dims.get(t.name)
        if got is None:
            raise RuntimeError(f"exported encoder lacks input {t.name!r}: inputs {dims}")
        if any(s == "L" and not isinstance(g, str) for s, g in zip(t.shape, got)):
            raise RuntimeError(f"exported encoder has a static session length: inputs {dims}")
    outputs = [o.name for o in graph.output]
    if outputs != spec.output_names:
        raise RuntimeError(f"exported encoder outputs {outputs}, spec {spec.output_names}")


def _export_encoder_here(model_cls, config: dict, state: dict, path: str) -> None:
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # exporter chatter on stderr
    model = model_cls.from_config(config)
    model.load_state_dict(state)
    model.eval()
    spec = model.export_spec()
    wrapper = model.encoder().eval()
    length = torch.export.Dim("L", min=1, max=spec.max_length)
    dynamic = tuple({axis: length for axis, size in enumerate(t.shape) if size == "L"}
                    for t in spec.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, tuple(spec.example_inputs), dynamo=True, dynamic_shapes=dynamic,
            input_names=spec.input_names, output_names=spec.output_names, verbose=False)
    program.save(path, external_data=False)  # one self-contained file
