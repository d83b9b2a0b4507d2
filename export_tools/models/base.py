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

**The repeat head** (opt-in, config key ``repeat_head``; issue 13). Many next items repeat
an item of the session. A model that implements :meth:`SessionModel.encode_states` (the
query and one state per window position) can turn on :class:`RepeatHead`, a learned
repeat/explore mechanism after RepeatNet (Ren et al., AAAI 2019): from the session vector
``s`` (the query) and the states ``h_1..h_L`` it gives one repeat logit per position,
``r_p = gate(s) + att(h_p, s, recency_p)``: a repeat-explore gate and a repeat attention
over the positions, in additive-logit form. The model's logit of item ``j`` is then

    logit_j = <q, e_j> + b_j + R_j,   R_j = max over positions p with item_p = j of r_p,

and ``R_j = 0`` for an item that is not in the window, so an item is explored by the dot
product and repeated by the same dot product plus its learned bonus. :meth:`forward` (so
training, validation and the ``<model>/full`` evaluation rows) adds ``R`` with a
scatter-reduce (amax) over the window's items (:func:`repeat_item_scores`); the exported
encoder returns ``r`` as a second output (bundle kind ``repeat_scores``, float32
``[1, L]``) and the runtime adds ``R_j`` to the score of each session item it may
return. RepeatNet itself mixes two normalised distributions,
``P(j) = P(repeat) P_r(j) + P(explore) P_e(j)``, with ``P_e`` a softmax over the catalog
and ``P_r`` a softmax over the session positions (summed over an item's positions). That
mixture cannot be served here: the SDK scores only its candidates (a dot product each in
the C kernel) and never sees the catalog-wide normaliser of ``P_e``, so a repeat's
probability could not be compared with an explored item's. In logit form both are
unnormalised scores on one scale; one softmax over the catalog (the training loss)
normalises them together, the gate's logit shifts every repeat candidate at once (a
negative value lets the model explore), the attention ranks the repeat candidates among
themselves, and ranking needs no normaliser at all.

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
#: The encoder output of the repeat head (bundle kind "repeat_scores"): float32 [B, L].
REPEAT_OUTPUT = "repeat_scores"


class RepeatHead(nn.Module):
    """Repeat logits ``r [B, L]`` of the window positions (see the module docstring).

    ``r_p = gate(s) + w^T tanh(W_h h_p + W_s s + E[recency_p])``: ``gate`` is a linear
    repeat-explore logit of the session vector ``s`` [B, d_s]; the attention term scores
    the state ``h_p`` [B, L, d_h] of each position against ``s``, with a learned embedding
    of its recency (how many items came after it, capped at ``max_recency - 1``), so that
    two positions of one item (which share a state in a graph model) still differ.
    Zeros at padding (``items < 0``).
    """

    def __init__(self, session_dim: int, state_dim: int, hidden: int, max_recency: int = 20):
        super().__init__()
        self.max_recency = max_recency
        self.gate = nn.Linear(session_dim, 1)
        self.fc_state = nn.Linear(state_dim, hidden, bias=False)
        self.fc_session = nn.Linear(session_dim, hidden)
        self.recency = nn.Embedding(max_recency, hidden)
        nn.init.normal_(self.recency.weight, std=hidden**-0.5)
        self.fc_score = nn.Linear(hidden, 1, bias=False)

    def forward(self, session: Tensor, states: Tensor, items: Tensor) -> Tensor:
        valid = items >= 0
        length = valid.to(torch.int64).sum(dim=1)  # [B]
        pos = torch.arange(items.shape[1], device=items.device)
        recency = (length[:, None] - 1 - pos[None, :]).clamp(0, self.max_recency - 1)
        hidden = torch.tanh(self.fc_state(states) + self.fc_session(session)[:, None, :]
                            + self.recency(recency))
        r = self.gate(session) + self.fc_score(hidden).squeeze(-1)  # [B, L]
        return r * valid.to(r.dtype)


def repeat_item_scores(items: Tensor, repeat: Tensor, n_items: int) -> Tensor:
    """R [B, n_items]: for each item of the window (``items`` [B, L], -1 = padding) the
    largest repeat logit ``repeat`` [B, L] of its positions; 0 for every other item."""
    valid = items >= 0
    index = torch.where(valid, items, torch.full_like(items, n_items))  # padding: spare column
    out = torch.zeros(items.shape[0], n_items + 1, dtype=repeat.dtype, device=repeat.device)
    out = out.scatter_reduce(1, index, repeat, reduce="amax", include_self=False)
    return out[:, :n_items]


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

    def __init__(self) -> None:
        super().__init__()
        #: the learned repeat mechanism (:meth:`init_repeat_head`); None: not used
        self.repeat_head: RepeatHead | None = None

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

    def init_repeat_head(self, enabled: bool, state_dim: int,
                         explore_weight: float = 0.0) -> None:
        """Record ``repeat_head`` and ``repeat_explore_weight`` in ``config`` and, if
        ``enabled``, add the :class:`RepeatHead` over the query (the session vector) and the
        per-position states of :meth:`encode_states` (width ``state_dim``). Call it in
        ``__init__`` after ``self.config`` is set.

        ``explore_weight`` > 0 adds to the training loss the cross-entropy of the explore
        logits alone (the scores without ``R``), times this weight: the query then stays a
        complete next-item model by itself (as without the head) and the head adds the
        repeats on top; 0 trains only the combined logits."""
        if explore_weight < 0 or (explore_weight and not enabled):
            raise ValueError("repeat_explore_weight must be >= 0, and > 0 only with "
                             "repeat_head")
        self.config["repeat_head"] = bool(enabled)
        self.config["repeat_explore_weight"] = float(explore_weight)
        if enabled:
            self.repeat_head = RepeatHead(self.query_dim, state_dim, self.query_dim)

    def prepare(self, data: TrainingData) -> None:
        """Derive whatever the model needs from the whole training set (default: nothing).
        Called once, before the first training step (not again on resume)."""

    # -- train -----------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, named parts); default: full-softmax next-item cross-entropy, plus
        with the repeat head's ``repeat_explore_weight`` that of the explore logits alone
        (:meth:`init_repeat_head`)."""
        weight = self.config.get("repeat_explore_weight", 0.0)
        if self.repeat_head is None or not weight:
            ce = nn.functional.cross_entropy(self(batch.items), batch.targets)
            return ce, {"ce": ce}
        query, states = self.encode_batch(batch.items)
        explore = self.scores(query)
        repeat = self.repeat_logits(batch.items, query, states)
        full = explore + repeat_item_scores(batch.items, repeat, int(self.config["n_items"]))
        ce = nn.functional.cross_entropy(full, batch.targets)
        explore_ce = nn.functional.cross_entropy(explore, batch.targets)
        return ce + weight * explore_ce, {"ce": ce, "explore_ce": explore_ce}

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

    def encode_states(self, items: Tensor, item_emb: Tensor) -> tuple[Tensor, Tensor]:
        """(session query [B, d], a state per position [B, L, d_h]): what the repeat head
        reads. Models that offer ``repeat_head`` implement it; ``encode`` must equal its
        first part."""
        raise NotImplementedError(f"{type(self).__name__} has no per-position states "
                                  "(no repeat head)")

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

    def repeat_logits(self, items: Tensor, query: Tensor, states: Tensor) -> Tensor:
        """The repeat head's logits ``r`` [B, L] of the window ``items`` (0 at padding)."""
        return self.repeat_head(query, states, items)

    def scores_with_repeats(self, items: Tensor, query: Tensor, states: Tensor) -> Tensor:
        """Full-catalog scores with the repeat head: ``scores(query) + R`` (see the module
        docstring), for the window ``items`` whose query and states are given."""
        repeat = self.repeat_logits(items, query, states)
        return self.scores(query) + repeat_item_scores(items, repeat,
                                                       int(self.config["n_items"]))

    def encode_batch(self, items: Tensor) -> tuple[Tensor, Tensor | None]:
        """(query, position states, or None without the repeat head) of a padded batch,
        eager (what :meth:`forward` and :meth:`loss` use; a model may specialise it for
        training speed, e.g. GRAINRec's GRU slots)."""
        emb = self.embed(items)
        if self.repeat_head is None:
            return self.encode(items, emb), None
        return self.encode_states(items, emb)

    def forward(self, items: Tensor) -> Tensor:
        """Full-catalog scores [B, n_items] of the padded sessions ``items`` (with the
        repeat head's bonus of the session items when it is on)."""
        query, states = self.encode_batch(items)
        if states is None:
            return self.scores(query)
        return self.scores_with_repeats(items, query, states)

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
        """ONNX signature of :meth:`encoder`: items, item_emb -> query (with the repeat head
        also -> ``repeat_scores`` [B, L]), each row one session (the encoder computes every
        row on its own, so a run may hold several sessions)."""
        items = self.export_example()
        with torch.no_grad():
            emb = self.embed(items)
        outputs = [TensorSpec("query", "float32", ("B", self.query_dim))]
        if self.repeat_head is not None:
            outputs.append(TensorSpec(REPEAT_OUTPUT, "float32", ("B", "L")))
        return ExportSpec(
            inputs=[TensorSpec("items", "int64", ("B", "L")),
                    TensorSpec("item_emb", "float32", ("B", "L", self.input_dim))],
            outputs=outputs,
            example_inputs=(items, emb),
        )


def encoder_io(model: SessionModel) -> dict[str, Any]:
    """The bundle v2 declaration of ``model``'s exported encoder (names from its export
    spec, kinds from its ``output_kinds``, the repeat head's output "repeat_scores",
    ``batch`` when the spec's axes lead with B)."""
    spec = model.export_spec()
    inputs = {"items": "items", "item_emb": "item_rows"}
    kinds = {**model.output_kinds, REPEAT_OUTPUT: "repeat_scores"}
    return {"inputs": [{"name": n, "kind": inputs[n]} for n in spec.input_names],
            "outputs": [{"name": n, "kind": kinds.get(n, "extra")}
                        for n in spec.output_names],
            "batch": spec.batched}


class EncoderModule(nn.Module):
    """forward(items [B, L] int64, item_emb [B, L, d_in] float32) -> query [B, d], and
    with the repeat head (query, repeat logits [B, L]): the export face of a
    :class:`SessionModel` (no data-dependent shapes, dynamic B and L)."""

    def __init__(self, model: SessionModel):
        super().__init__()
        self.model = model

    def forward(self, items: Tensor, item_emb: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.model.repeat_head is None:
            return self.model.encode(items, item_emb)
        query, states = self.model.encode_states(items, item_emb)
        return query, self.model.repeat_logits(items, query, states)
