"""GRAINRec: LESSR-based session encoder, written with dense padded tensors.

The reference (twchen/lessr) builds one DGL graph per session. Here every session of a
batch is a left-aligned row of item rows padded with -1, and the session graph is built
inside :meth:`GRAINRec.encode` with dense, exportable ops only:

* nodes = the unique items of the session, in order of first occurrence, padded to L;
  ``alias[p]`` is the node of position ``p`` (equality matrix + first-occurrence mask +
  cumsum, no ``unique``);
* ``G`` layers (EOPA-like): the ordered session multigraph has one edge
  ``alias[t] -> alias[t+1]`` per consecutive pair of valid positions. Each node runs a GRU
  over its incoming messages in edge order; the messages are gathered into a left-aligned,
  zero-padded ``[B*N, M, d]`` tensor by a dense one-hot selection (no scatter, no
  index_add), and the GRU state after the node's in-degree-th message is taken (zero for
  in-degree 0). Node update ``PReLU(W_v h_v + W_neigh h_N)``;
* ``A`` layers (shortcut-graph attention): edge ``i -> j`` when node ``j`` occurs at some
  position after an occurrence of node ``i``, ``i != j`` (no self-loops);
  ``e_ij = w_e^T sigmoid(Q h_i + K h_j)``, softmax over the incoming neighbours of ``j``,
  weighted sum of ``V h_i`` (zeros for nodes without incoming edges), PReLU;
* dense connections as in LESSR: each layer sees the concatenation of the embeddings and
  all previous layer outputs;
* readout: attention readout over the valid nodes (global) and the last item's node
  (local), concatenated, linear -> query ``[B, d]``. Scores = query @ item_matrix().T.

No batch norm (it would mix padded nodes into the statistics); masked softmaxes use a
large negative fill (not -inf) and zero the fully masked rows, so length-1 sessions and
nodes without neighbours stay finite.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import EncoderModule, SessionModel

NEG = -1e9  # fill for masked logits (finite: a fully masked row must not become NaN)

LAYER_KINDS = ("G", "A")


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask``; rows with no valid entry give zeros."""
    logits = logits.masked_fill(~mask, NEG)
    return torch.softmax(logits, dim=dim) * mask.to(logits.dtype)


def session_graph(items: Tensor):
    """Dense session graph of a left-aligned padded batch ``items`` [B, L] (-1 = padding).

    Returns a dict of tensors (N = L node slots):
      valid [B, L] bool, alias [B, L] int64 (node of each position, 0 at padding),
      pos_node [B, L, N] float (one-hot of alias at valid positions),
      first [B, L] bool (first occurrence of its item), node_mask [B, N] bool,
      last_node [B, N] float (one-hot of the last valid position's node).
    """
    B, L = items.shape
    valid = items >= 0
    eq = (items[:, :, None] == items[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    ar = torch.arange(L, device=items.device)
    before = ar[None, :] < ar[:, None]  # [L, L]: before[p, q] = q < p
    first = valid & ~(eq & before).any(dim=-1)
    node_of_first = torch.cumsum(first.to(torch.int64), dim=1) - 1  # [B, L]
    # alias[p] = node index of the first occurrence q of items[p] (exactly one such q)
    sel = eq & first[:, None, :]
    alias = (sel.to(torch.int64) * node_of_first[:, None, :]).sum(dim=-1)  # [B, L]
    pos_node = ((alias[:, :, None] == ar[None, None, :]) & valid[:, :, None]).to(torch.float32)
    n_nodes = first.to(torch.int64).sum(dim=1)  # [B]
    node_mask = ar[None, :] < n_nodes[:, None]  # [B, N]
    length = valid.to(torch.int64).sum(dim=1)  # [B]
    last_pos = (ar[None, :] == (length - 1)[:, None]).to(torch.int64)  # [B, L]
    last_alias = (last_pos * alias).sum(dim=1)  # [B]
    last_node = (ar[None, :] == last_alias[:, None]).to(torch.float32)  # [B, N]
    return {
        "valid": valid,
        "alias": alias,
        "pos_node": pos_node,
        "first": first,
        "node_mask": node_mask,
        "last_node": last_node,
    }


def eop_messages(h: Tensor, graph: dict, slots: int | None = None):
    """Incoming messages of every node of the ordered session multigraph, in edge order.

    h: node features [B, N, d]. Returns (msgs [B, N, M, d] left-aligned and zero padded,
    deg [B, N] int64 in-degrees). M = ``slots`` (>= max in-degree) or L by default.
    """
    valid, alias, pos_node = graph["valid"], graph["alias"], graph["pos_node"]
    B, L = valid.shape
    N = pos_node.shape[2]
    M = L if slots is None else slots
    # edge t: alias[t] -> alias[t+1], for t in 0..L-1 (the last one is always invalid,
    # which keeps every dimension >= 1 even for L = 1).
    pad_alias = torch.zeros_like(alias[:, :1])
    pad_valid = torch.zeros_like(valid[:, :1])
    alias_next = torch.cat([alias[:, 1:], pad_alias], dim=1)
    valid_next = torch.cat([valid[:, 1:], pad_valid], dim=1)
    evalid = valid & valid_next  # [B, T=L]
    node_ar = torch.arange(N, device=alias.device)
    src_oh = pos_node * evalid[:, :, None].to(pos_node.dtype)  # [B, T, N]
    dst_oh = ((alias_next[:, :, None] == node_ar[None, None, :]) & evalid[:, :, None]).to(
        torch.int64
    )  # [B, T, N]
    # rank of edge t among the edges into the same destination (0-based)
    rank = ((torch.cumsum(dst_oh, dim=1) - 1) * dst_oh).sum(dim=-1)  # [B, T]
    deg = dst_oh.sum(dim=1)  # [B, N]
    slot_ar = torch.arange(M, device=alias.device)
    rank_oh = (rank[:, :, None] == slot_ar[None, None, :]).to(h.dtype)  # [B, T, M]
    dst_f = dst_oh.to(h.dtype)
    # selection[b, n, m, t] = edge t is the m-th edge into node n  (broadcast, no reshape:
    # reshapes through products of symbolic sizes such as N*M make torch.export specialize L)
    selection = dst_f.transpose(1, 2)[:, :, None, :] * rank_oh.permute(0, 2, 1)[:, None, :, :]
    src_feat = torch.matmul(src_oh, h)  # [B, T, d]
    msgs = torch.matmul(selection, src_feat[:, None, :, :])  # [B, N, M, d]
    return msgs, deg


class PReLU(nn.Module):
    """PReLU with one slope per feature of the LAST dim (nn.PReLU uses dim 1 as channels,
    which for [B, N, d] node tensors is the node axis)."""

    def __init__(self, dim: int, init: float = 0.25):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, self.weight * x)


class EOPALayer(nn.Module):
    """'G' layer: GRU aggregation of the incoming messages in edge order (LESSR EOPA)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(in_dim, in_dim, batch_first=True)
        self.fc_self = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.act = PReLU(out_dim)

    def aggregate(self, h: Tensor, graph: dict, slots: int | None = None) -> Tensor:
        """h_N [B, N, d]: the GRU state after each node's last incoming message."""
        msgs, deg = eop_messages(h, graph, slots)
        B, N, M, d = msgs.shape
        out, _ = self.gru(msgs.reshape(B * N, M, d))  # [B*N, M, d]
        # Export pitfall: the exported aten::gru output carries the *example's* sequence
        # length as a static shape; anything derived from out.shape (unflatten, view(-1))
        # bakes that constant into the ONNX graph. Reshape with sizes taken from the input.
        out = out.reshape(B, N, M, d)
        slot_ar = torch.arange(M, device=h.device)
        pick = ((deg - 1)[:, :, None] == slot_ar[None, None, :]).to(h.dtype)  # [B, N, M]
        return (out * pick[:, :, :, None]).sum(dim=2)

    def forward(self, h: Tensor, graph: dict, slots: int | None = None) -> Tensor:
        neigh = self.aggregate(self.drop(h), graph, slots)
        return self.act(self.fc_self(h) + self.fc_neigh(neigh))


def shortcut_adjacency(graph: dict) -> Tensor:
    """adj [B, N(src), N(dst)] bool: node j occurs after an occurrence of node i, i != j."""
    pos_node, valid = graph["pos_node"], graph["valid"]
    L = valid.shape[1]
    ar = torch.arange(L, device=valid.device)
    later = (ar[:, None] < ar[None, :]).to(pos_node.dtype)  # later[p, q] = p < q
    reach = torch.matmul(torch.matmul(pos_node.transpose(1, 2), later), pos_node)  # [B, N, N]
    N = pos_node.shape[2]
    nar = torch.arange(N, device=valid.device)
    not_self = nar[:, None] != nar[None, :]
    return (reach > 0.5) & not_self[None, :, :]


class ShortcutAttentionLayer(nn.Module):
    """'A' layer: attention over the shortcut graph (LESSR SGAT without self-loops)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc_q = nn.Linear(in_dim, hidden_dim, bias=True)
        self.fc_k = nn.Linear(in_dim, hidden_dim, bias=False)
        self.fc_v = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_e = nn.Linear(hidden_dim, 1, bias=False)
        self.act = PReLU(out_dim)

    def forward(self, h: Tensor, graph: dict, adj: Tensor) -> Tensor:
        h = self.drop(h)
        q = self.fc_q(h)  # sources
        k = self.fc_k(h)  # destinations
        v = self.fc_v(h)
        e = self.fc_e(torch.sigmoid(q[:, :, None, :] + k[:, None, :, :])).squeeze(-1)  # [B,i,j]
        a = masked_softmax(e, adj, dim=1)  # over the incoming neighbours i of each j
        out = torch.matmul(a.transpose(1, 2), v)  # [B, j, d]
        return self.act(out)


class AttnReadout(nn.Module):
    """LESSR attention readout, masked to the valid nodes of each session."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc_u = nn.Linear(in_dim, hidden_dim, bias=False)
        self.fc_v = nn.Linear(in_dim, hidden_dim, bias=True)
        self.fc_e = nn.Linear(hidden_dim, 1, bias=False)
        self.fc_out = nn.Linear(in_dim, out_dim, bias=False) if out_dim != in_dim else None
        self.act = PReLU(out_dim)

    def forward(self, h: Tensor, h_last: Tensor, node_mask: Tensor) -> Tensor:
        h = self.drop(h)
        h_last = self.drop(h_last)
        e = self.fc_e(torch.sigmoid(self.fc_u(h) + self.fc_v(h_last)[:, None, :])).squeeze(-1)
        alpha = masked_softmax(e, node_mask, dim=1)  # [B, N]
        rst = (h * alpha[:, :, None]).sum(dim=1)
        if self.fc_out is not None:
            rst = self.fc_out(rst)
        return self.act(rst)


class GRAINRec(SessionModel):
    """GRAINRec session encoder + tied item embeddings.

    ``encode(items, item_emb)`` uses ``items`` only for the graph structure (equality of
    items, padding) and takes every item feature from ``item_emb``, so an exported encoder
    does not contain the catalog. ``item_emb`` must be rows of :meth:`item_matrix` (what
    :meth:`embed` returns), and scores are ``query @ item_matrix().T``.

    Options beyond the paper's (all recorded in ``config``):
      dense: LESSR's dense connections (each layer sees the embeddings and all previous
        layer outputs); False feeds each layer only the previous one.
      emb_max_norm: clip item vectors to this L2 norm (LESSR's ``max_norm=1``, written
        differentiably); item_matrix() returns the clipped rows.
      norm_scale: NISER-style L2-normalised item vectors and query, query scaled by this.
        Both default to None (plain embeddings); norm_scale learned slower in a short test.
      repeat_head: the model contract's learned repeat/explore head
        (:class:`~export_tools.models.base.RepeatHead`); its per-position states are the
        final node states mapped back to the window positions (a position takes its
        item's node state), so the head reads the graph's view of each session item.
        repeat_explore_weight: weight of the explore logits' own cross-entropy in the loss
        (:meth:`~export_tools.models.base.SessionModel.init_repeat_head`).
    """

    name = "grainrec"

    def __init__(
        self,
        n_items: int,
        dim: int = 256,
        layers: str = "GA",
        dropout: float = 0.146,
        *,
        dense: bool = True,
        emb_max_norm: float | None = None,
        norm_scale: float | None = None,
        repeat_head: bool = False,
        repeat_explore_weight: float = 0.0,
    ):
        super().__init__()
        layers = layers.upper()
        if not layers or any(c not in LAYER_KINDS for c in layers):
            raise ValueError(f"layers must be a non-empty string of 'G'/'A', got {layers!r}")
        if n_items < 1 or dim < 1:
            raise ValueError("n_items and dim must be positive")
        self.config = {
            "n_items": int(n_items),
            "dim": int(dim),
            "layers": layers,
            "dropout": float(dropout),
            "dense": bool(dense),
            "emb_max_norm": None if emb_max_norm is None else float(emb_max_norm),
            "norm_scale": None if norm_scale is None else float(norm_scale),
        }
        self.n_items = n_items
        self.dim = dim
        self.layer_kinds = layers
        self.dense = dense
        self.emb_max_norm = emb_max_norm
        self.norm_scale = norm_scale
        self.embedding = nn.Embedding(n_items, dim)
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)
        self.layers = nn.ModuleList()
        in_dim = dim
        for kind in layers:
            if kind == "G":
                self.layers.append(EOPALayer(in_dim, dim, dropout))
            else:
                self.layers.append(ShortcutAttentionLayer(in_dim, dim, dim, dropout))
            if dense:
                in_dim += dim
            else:
                in_dim = dim
        self.readout = AttnReadout(in_dim, dim, dim, dropout)
        self.drop = nn.Dropout(dropout)
        self.fc_sr = nn.Linear(in_dim + dim, dim, bias=False)
        self.init_repeat_head(repeat_head, in_dim, repeat_explore_weight)

    @classmethod
    def from_config(cls, config: dict) -> GRAINRec:
        cfg = dict(config)
        return cls(
            cfg.pop("n_items"),
            cfg.pop("dim", 256),
            cfg.pop("layers", "GA"),
            cfg.pop("dropout", 0.146),
            **cfg,
        )

    # -- item side -----------------------------------------------------------------------
    def _clip(self, w: Tensor) -> Tensor:
        if self.norm_scale is not None:
            return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.emb_max_norm is None:
            return w
        norm = w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return w * torch.clamp(self.emb_max_norm / norm, max=1.0)

    def item_matrix(self) -> Tensor:
        """[n_items, d]: the rows candidates are scored against (score = query . row)."""
        return self._clip(self.embedding.weight)

    def embed(self, items: Tensor) -> Tensor:
        """items int64 [B, L] (-1 = padding) -> [B, L, d], zeros at padding."""
        valid = items >= 0
        emb = self._clip(self.embedding(items.clamp(min=0)))
        return emb * valid[:, :, None].to(emb.dtype)

    # -- session side --------------------------------------------------------------------
    def encode(self, items: Tensor, item_emb: Tensor, *, gru_slots: int | None = None) -> Tensor:
        """Session query [B, d] from items [B, L] (structure only) and item_emb [B, L, d].

        ``gru_slots`` (eager training only) caps the message slots of the GRU layers at the
        batch's maximum in-degree; the default (L slots) has no data-dependent shapes and is
        what gets exported. Both give identical results.
        """
        return self.encode_states(items, item_emb, gru_slots=gru_slots)[0]

    def encode_states(self, items: Tensor, item_emb: Tensor, *,
                      gru_slots: int | None = None) -> tuple[Tensor, Tensor]:
        """(query [B, d], position states [B, L, d_h]): :meth:`encode`'s query and the final
        node state of each position's item (zeros at padding), for the repeat head."""
        graph = session_graph(items)
        pos_node = graph["pos_node"]  # [B, L, N]
        first = graph["first"].to(item_emb.dtype)
        # node features: the embedding at each node's first occurrence
        feat = torch.matmul((pos_node * first[:, :, None]).transpose(1, 2), item_emb)  # [B,N,d]
        adj = shortcut_adjacency(graph) if "A" in self.layer_kinds else None
        for kind, layer in zip(self.layer_kinds, self.layers):
            if kind == "G":
                out = layer(feat, graph, gru_slots)
            else:
                out = layer(feat, graph, adj)
            feat = torch.cat([out, feat], dim=-1) if self.dense else out
        node_mask = graph["node_mask"]
        feat = feat * node_mask[:, :, None].to(feat.dtype)
        h_last = (feat * graph["last_node"][:, :, None]).sum(dim=1)  # local
        h_global = self.readout(feat, h_last, node_mask)  # global
        sr = torch.cat([h_last, h_global], dim=-1)
        query = self.fc_sr(self.drop(sr))
        if self.norm_scale is not None:
            query = self.norm_scale * query / query.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return query, torch.matmul(pos_node, feat)

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """LESSR: no decay on biases and activation (PReLU) slopes."""
        return "bias" in name or ".act." in name

    @staticmethod
    def gru_slots_needed(items: Tensor) -> int:
        """Max in-degree of any node in the batch (>= 1): enough GRU message slots."""
        with torch.no_grad():
            valid = items >= 0
            eq = (items[:, :, None] == items[:, None, :]) & valid[:, :, None]
            return max(1, int(eq.sum(dim=-1).max()))

    def encoder(self) -> nn.Module:
        return EncoderForExport(self)

    def encode_batch(self, items: Tensor) -> tuple[Tensor, Tensor | None]:
        """(query, position states or None) with the GRU slots capped at the batch's
        maximum in-degree (eager training and ranking; same results as the export's L)."""
        slots = self.gru_slots_needed(items) if "G" in self.layer_kinds else None
        query, states = self.encode_states(items, self.embed(items), gru_slots=slots)
        return query, (None if self.repeat_head is None else states)


class EncoderForExport(EncoderModule):
    """forward(items [B, L] int64, item_emb [B, L, d] float32) -> query [B, d] (and the
    repeat logits [B, L] with the repeat head).

    The export face of :class:`GRAINRec`: no data-dependent shapes (the GRU layers use L
    message slots, not the batch's in-degree), dynamic B and L. Every op works within
    one row of the batch (the session graph, the GRU over each node's messages, the
    attention masks), so each session of a batch is encoded as it is alone.

    ONNX pitfalls of this model (handled here and in export_tools.onnx_export): torch's
    exporter keeps state after its first export of an ``nn.GRU`` and later exports in the
    same process fix the session length (onnx_export exports in a fresh process); the
    exported ``aten::gru`` output has a static sequence length, so reshapes take their sizes
    from the input (see :meth:`EOPALayer.aggregate`).
    """


#: Training presets (model hyper-parameters and training settings, see TRAIN_DEFAULTS).
PRESETS = {
    # The GRAINRec paper's settings.
    "paper": {
        "dim": 256,
        "layers": "GA",
        "dropout": 0.146,
        "lr": 0.00045,
        "batch_size": 1024,
        "weight_decay": 1e-4,
        "epochs": 30,
        "patience": 3,
        "same_category": True,
    },
    # Small and quick: the whole Diginetica training run in a few minutes on 2 CPU cores.
    # A high learning rate with a cosine decay to 0 is what makes 2 epochs enough (chosen
    # on the validation split of export_tools.data.split_validation).
    "fast": {
        "dim": 64,
        "layers": "GA",
        "dropout": 0.0,
        "lr": 0.02,
        "lr_schedule": "cosine",
        "batch_size": 512,
        "weight_decay": 1e-5,
        "optimizer": "adam",  # tuned with Adam + L2 1e-5
        "epochs": 2,
        "patience": 1,
        # The same-category filter discards context: off. Compared on the validation
        # sessions of export_tools.data.split_validation (docs/evaluation.md), not on test.
        "same_category": False,
    },
}
