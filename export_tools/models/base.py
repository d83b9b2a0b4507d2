"""The model contract: what every session model of ``export_tools.models`` implements.

The trainer (:mod:`export_tools.trainer`), the export (:mod:`export_tools.export`) and the
evaluation (:mod:`export_tools.evaluate`) only talk to a model through this class, so a new
model is one module with a :class:`SessionModel` subclass plus one registry entry (with its
``fast`` and ``paper`` presets) in :mod:`export_tools.models`.

Life of a model:

1. **build** -- ``cls(n_items, **hyper_parameters)`` or ``cls.from_config(model.config)``;
   ``config`` is a JSON-able dict of every constructor argument (``n_items`` included): the
   checkpoint stores it and rebuilds the model from it;
2. **prepare** -- :meth:`SessionModel.prepare` sees the whole training data
   (:class:`TrainingData`) once before the first step, for whatever a model derives from
   it (an item graph, category tables, vocabularies). Anything it derives must live in
   registered buffers or in ``config`` so that the checkpoint restores it;
3. **train** -- :meth:`SessionModel.loss` takes a :class:`Batch` and returns the total
   loss and its named parts (a multi-task model adds auxiliary losses; the trainer logs the
   parts). :meth:`SessionModel.no_weight_decay` names the parameters the optimizer must not
   decay;
4. **rank** -- :meth:`SessionModel.forward` gives full-catalog scores ``[B, n_items]``:
   the model's own ranking, used for validation and the ``<model>/full`` evaluation rows;
5. **export** -- the bundle holds (a) an ONNX session encoder, the torch module
   :meth:`SessionModel.encoder` with the inputs/outputs of :meth:`SessionModel.export_spec`,
   and (b) the item tables of :meth:`SessionModel.item_tables`. The runtime computes
   ``score_j = query . item_matrix[j] (+ item_bias[j])`` (``score_transform = "dot"``), so
   a model must fold any normalisation or scale of its scores into those tables and its
   encoder. Contract: for every session, ``forward(items)[j]`` equals
   ``encoder(items, input_rows[items]) . item_matrix[j] (+ bias[j])`` up to float error.

Sessions are left-aligned padded batches of catalog rows, ``items`` int64 ``[B, L]`` with
``-1`` as padding, oldest item first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class TrainingData:
    """What :meth:`SessionModel.prepare` may look at: the training sessions (catalog rows,
    oldest first, validation sessions excluded) and the catalog (ids, categories)."""

    sessions: list[np.ndarray]
    catalog: Any  # export_tools.data.Catalog


@dataclass
class Batch:
    """One training (or validation) batch: ``items`` [B, L] int64 padded with -1 and the
    next-item ``targets`` [B] int64 (catalog rows)."""

    items: Tensor
    targets: Tensor


@dataclass
class ItemTables:
    """The per-item arrays a bundle stores for a model, in catalog row order.

    ``item_matrix`` [n_items, d]: the rows a query is scored against (dot product);
    ``input_embedding`` [n_items, d_in] or None: the rows the encoder takes as ``item_emb``
    (None: the item matrix itself); ``item_bias`` [n_items] or None: added to each score.
    """

    item_matrix: np.ndarray
    input_embedding: np.ndarray | None = None
    item_bias: np.ndarray | None = None

    @property
    def encoder_rows(self) -> np.ndarray:
        """The rows the encoder takes as ``item_emb``."""
        return self.item_matrix if self.input_embedding is None else self.input_embedding


@dataclass
class TensorSpec:
    """One ONNX input or output: name, dtype (numpy name) and shape; a str in ``shape`` is
    a symbolic (dynamic) axis ("B": sessions per run, "L": session length), an int a fixed
    one."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass
class ExportSpec:
    """The session encoder's ONNX signature and an example to trace it with.

    ``example_inputs``: tensors matching ``inputs`` (the exporter traces with them: use a
    general example, e.g. sessions with repeated items, and for a batched encoder more than
    one session, of a count other than the length: the exporter fixes an axis of size 1
    and merges axes of equal size); ``max_length``: the largest session length the dynamic
    axis ``L`` admits.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example_inputs: tuple[Tensor, ...] = field(default=())
    max_length: int = 4096

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def batched(self) -> bool:
        """Every input and output leads with the dynamic batch axis ``B``: one run
        encodes several sessions of one length (the bundle's ``encoder.batch``)."""
        return all(t.shape[0] == "B" for t in self.inputs + self.outputs)


#: The v1 bundle's encoder signature (sessrec_sdk.bundle): what every model exports today.
ENCODER_INPUT_NAMES = ("items", "item_emb")
ENCODER_OUTPUT_NAME = "query"


class SessionModel(nn.Module):
    """Base class of every session model (see the module docstring for the contract).

    Subclasses implement ``__init__(n_items, ...)`` (setting ``self.config``),
    :meth:`embed`, :meth:`encode` and :meth:`item_matrix`; the defaults of the other
    methods fit a model that scores ``encode(items, embed(items)) @ item_matrix().T``
    with full-softmax cross-entropy.
    """

    #: registry name (set by the subclass)
    name: ClassVar[str] = ""
    #: how the runtime turns (query, item row) into a score; v1 bundles know only "dot"
    score_transform: ClassVar[str] = "dot"
    #: bundle v2 kind of each encoder output (sessrec_sdk.bundle.OUTPUT_KINDS)
    output_kinds: ClassVar[dict[str, str]] = {"query": "query"}

    config: dict

    # -- build -----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict) -> SessionModel:
        """Rebuild from ``config`` (the dict a checkpoint stores)."""
        cfg = dict(config)
        return cls(cfg.pop("n_items"), **cfg)

    @property
    def query_dim(self) -> int:
        """Width of the query vector (= of the scored item rows)."""
        return int(self.config["dim"])

    def prepare(self, data: TrainingData) -> None:
        """Derive whatever the model needs from the whole training set (default: nothing).
        Called once, before the first training step (not again on resume)."""

    # -- train -----------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, named parts); default: full-softmax next-item cross-entropy."""
        ce = nn.functional.cross_entropy(self(batch.items), batch.targets)
        return ce, {"ce": ce}

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """True for a parameter the optimizer must not decay (default: biases)."""
        return "bias" in name

    # -- rank ------------------------------------------------------------------------------
    def embed(self, items: Tensor) -> Tensor:
        """items [B, L] -> the encoder's ``item_emb`` [B, L, d_in], zeros at padding."""
        raise NotImplementedError

    def encode(self, items: Tensor, item_emb: Tensor) -> Tensor:
        """Session query [B, d] from items [B, L] and item_emb [B, L, d_in]."""
        raise NotImplementedError

    def item_matrix(self) -> Tensor:
        """[n_items, d]: the scored rows (score = query . row)."""
        raise NotImplementedError

    def item_bias(self) -> Tensor | None:
        """[n_items] added to every score, or None."""
        return None

    def scores(self, query: Tensor) -> Tensor:
        """Full-catalog scores of queries [B, d] with the runtime's score transform."""
        s = query @ self.item_matrix().t()
        bias = self.item_bias()
        return s if bias is None else s + bias

    def forward(self, items: Tensor) -> Tensor:
        """Full-catalog scores [B, n_items] of the padded sessions ``items``."""
        return self.scores(self.encode(items, self.embed(items)))

    # -- export ----------------------------------------------------------------------------
    def encoder(self) -> nn.Module:
        """The torch module exported to ONNX: forward(*export_spec().inputs) -> query."""
        return EncoderModule(self)

    @torch.no_grad()
    def item_tables(self) -> ItemTables:
        """The item arrays of the bundle (float32 numpy, catalog row order)."""
        matrix = self.item_matrix().detach().float().numpy()
        inputs = self.input_rows()
        bias = self.item_bias()
        return ItemTables(
            item_matrix=np.ascontiguousarray(matrix, dtype=np.float32),
            input_embedding=None if inputs is None
            else np.ascontiguousarray(inputs.detach().float().numpy(), dtype=np.float32),
            item_bias=None if bias is None else bias.detach().float().numpy(),
        )

    def input_rows(self) -> Tensor | None:
        """[n_items, d_in] rows of ``item_emb`` when they differ from :meth:`item_matrix`
        (then ``embed(items)`` must equal ``input_rows()[items]`` at valid positions)."""
        return None

    @property
    def input_dim(self) -> int:
        rows = self.input_rows()
        return self.query_dim if rows is None else int(rows.shape[1])

    def export_example(self) -> Tensor:
        """The items of the tracing example: two sessions of five items (repeats: general
        sessions; two rows so that the batch axis stays dynamic)."""
        items = torch.tensor([[0, 1, 0, 2, 1], [3, 3, 1, 4, 0]], dtype=torch.int64)
        return items.clamp(max=int(self.config["n_items"]) - 1)

    def export_spec(self) -> ExportSpec:
        """ONNX signature of :meth:`encoder`: items, item_emb -> query, each row one session
        (the encoder computes every row on its own, so a run may hold several sessions)."""
        items = self.export_example()
        with torch.no_grad():
            emb = self.embed(items)
        return ExportSpec(
            inputs=[TensorSpec("items", "int64", ("B", "L")),
                    TensorSpec("item_emb", "float32", ("B", "L", self.input_dim))],
            outputs=[TensorSpec("query", "float32", ("B", self.query_dim))],
            example_inputs=(items, emb),
        )


def encoder_io(model: SessionModel) -> dict[str, Any]:
    """The bundle v2 declaration of ``model``'s exported encoder (names from its export
    spec, kinds from its ``output_kinds``, ``batch`` when the spec's axes lead with B)."""
    spec = model.export_spec()
    inputs = {"items": "items", "item_emb": "item_rows"}
    return {"inputs": [{"name": n, "kind": inputs[n]} for n in spec.input_names],
            "outputs": [{"name": n, "kind": model.output_kinds.get(n, "extra")}
                        for n in spec.output_names],
            "batch": spec.batched}


class EncoderModule(nn.Module):
    """forward(items [B, L] int64, item_emb [B, L, d_in] float32) -> query [B, d]: the
    export face of a :class:`SessionModel` (no data-dependent shapes, dynamic B and L)."""

    def __init__(self, model: SessionModel):
        super().__init__()
        self.model = model

    def forward(self, items: Tensor, item_emb: Tensor) -> Tensor:
        return self.model.encode(items, item_emb)
