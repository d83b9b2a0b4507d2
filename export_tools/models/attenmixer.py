"""Atten-Mixer (Zhang et al., "Efficiently Leveraging Multi-level User Intent for
Session-based Recommendation via Atten-Mixer Network", WSDM 2023), dense padded tensors.

No GNN propagation: the readout does the reasoning.

* item embeddings are L2-normalised: ``h~_i = e_i / |e_i|``;
* multi-level user-intent queries: for l = 1..L a deep-sets sum over the session's last l
  items, projected by its own ``W_ql``: ``q_l = W_ql (sum_{i > n-l} h~_i) + b_l``. A session
  shorter than l uses all its items (so short sessions repeat their top level);
* H-head attention of the L queries over the session items: per head,
  ``alpha_{l,i} = softmax_i(<q_l, W_k h~_i> / sqrt(d/H))`` over the valid items;
* the L attention maps of a head are mixed by L_p pooling over the levels,
  ``alpha_i = (sum_l alpha_{l,i}^p)^(1/p)`` (p = 4), renormalised to sum to 1 over the
  session; each head reads ``sum_i alpha_i W_v h~_i``; the heads are concatenated: ``s~``;
* session vector ``s = W_m [s~/|s~| || h~_n]`` (h~_n: the last item), normalised;
* scores ``sigma * <s/|s|, h~_j>`` over all items (sigma = 12).

Where the authors' released code (Peiyance/Atten-Mixer-torch) differs from the paper, this
module follows the paper as issue 11 states it: the level-l query is a deep-sets sum (the
code concatenates the last l items into an l*d input of W_ql), the attention is a softmax
of scaled dot products per head (the code: a sigmoid, then a softmax with temperature 1/2),
and the pooled maps are renormalised to sum to 1 (the code: a second softmax).

Export (bundle v1, dot-product kernel): the encoder returns ``s/|s|``, its ``item_emb``
inputs are the normalised embeddings (the bundle's ``input_embedding``), and the scored
rows are ``sigma * h~_j`` (the bundle's ``item_matrix``), so the runtime's
``query . row`` is the model's score.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import SessionModel

NEG = -1e9  # finite fill for masked logits (a fully masked row must not become NaN)
EPS = 1e-12


def l2_normalize(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


class AttenMixer(SessionModel):
    """Atten-Mixer session encoder + normalised item embeddings (see the module docstring).

    ``levels`` = L (intent levels), ``heads`` = H (``dim`` must be a multiple of H),
    ``lp`` = p of the L_p pooling, ``scale`` = sigma, ``dropout`` on the session items'
    embeddings and on the session vector in training. ``repeat_head``: the model
    contract's learned repeat/explore head, reading the normalised embedding ``h~_i`` of
    each position (``repeat_explore_weight``: see ``SessionModel.init_repeat_head``).
    """

    name = "attenmixer"

    def __init__(self, n_items: int, dim: int = 256, levels: int = 7, heads: int = 8,
                 lp: float = 4.0, scale: float = 12.0, dropout: float = 0.1,
                 repeat_head: bool = False, repeat_explore_weight: float = 0.0):
        super().__init__()
        if n_items < 1 or dim < 1 or levels < 1 or heads < 1:
            raise ValueError("n_items, dim, levels and heads must be positive")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        if lp < 1:
            raise ValueError("lp must be >= 1")
        self.config = {"n_items": int(n_items), "dim": int(dim), "levels": int(levels),
                       "heads": int(heads), "lp": float(lp), "scale": float(scale),
                       "dropout": float(dropout)}
        self.dim, self.levels, self.heads = dim, levels, heads
        self.lp, self.scale = float(lp), float(scale)
        self.embedding = nn.Embedding(n_items, dim)
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        self.level_proj = nn.ModuleList([nn.Linear(dim, dim) for _ in range(levels)])
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.mix = nn.Linear(2 * dim, dim, bias=False)
        self.drop = nn.Dropout(dropout)
        self.init_repeat_head(repeat_head, dim, repeat_explore_weight)

    # -- item side -----------------------------------------------------------------------
    def input_rows(self) -> Tensor:
        """[n_items, d]: the normalised embeddings h~ (the encoder's item_emb rows)."""
        return l2_normalize(self.embedding.weight)

    def item_matrix(self) -> Tensor:
        """[n_items, d]: sigma * h~ (score = query . row = sigma * <s, h~_j>)."""
        return self.scale * self.input_rows()

    def embed(self, items: Tensor) -> Tensor:
        valid = items >= 0
        emb = l2_normalize(self.embedding(items.clamp(min=0)))
        return emb * valid[:, :, None].to(emb.dtype)

    # -- session side --------------------------------------------------------------------
    def encode(self, items: Tensor, item_emb: Tensor) -> Tensor:
        return self.encode_states(items, item_emb)[0]

    def encode_states(self, items: Tensor, item_emb: Tensor) -> tuple[Tensor, Tensor]:
        """(session vector s/|s| [B, d], the positions' normalised embeddings [B, T, d])."""
        B, T = items.shape
        H, d = self.heads, self.dim
        dh = d // H
        valid = items >= 0
        vf = valid.to(item_emb.dtype)
        h = item_emb * vf[:, :, None]  # [B, T, d]
        length = valid.to(torch.int64).sum(dim=1)  # [B]
        pos = torch.arange(T, device=items.device)
        lv = torch.arange(1, self.levels + 1, device=items.device)
        # in_level[b, l, i]: position i is among the last (l+1) items of session b
        in_level = (pos[None, None, :] >= (length[:, None, None] - lv[None, :, None])) \
            & valid[:, None, :]
        sums = torch.matmul(in_level.to(h.dtype), h)  # [B, L, d]: deep-sets sums
        queries = torch.stack([proj(sums[:, i]) for i, proj in enumerate(self.level_proj)],
                              dim=1)  # [B, L, d]
        hd = self.drop(h)
        q = queries.reshape(B, self.levels, H, dh).transpose(1, 2)  # [B, H, L, dh]
        k = self.key(hd).reshape(B, T, H, dh).transpose(1, 2)  # [B, H, T, dh]
        v = self.value(hd).reshape(B, T, H, dh).transpose(1, 2)  # [B, H, T, dh]
        logits = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(dh)  # [B, H, L, T]
        mask = valid[:, None, None, :]
        alpha = torch.softmax(logits.masked_fill(~mask, NEG), dim=-1) * mask.to(h.dtype)
        # L_p pooling over the levels (EPS keeps the root differentiable at 0)
        pooled = (alpha.pow(self.lp).sum(dim=2) + EPS).pow(1.0 / self.lp)  # [B, H, T]
        pooled = pooled * valid[:, None, :].to(h.dtype)
        weights = pooled / pooled.sum(dim=-1, keepdim=True).clamp_min(EPS)
        heads = torch.matmul(weights[:, :, None, :], v)  # [B, H, 1, dh]
        s_tilde = heads.reshape(B, d)
        last = (pos[None, :] == (length - 1)[:, None]).to(h.dtype)  # [B, T]
        h_last = (h * last[:, :, None]).sum(dim=1)  # [B, d]
        s = self.mix(torch.cat([l2_normalize(s_tilde), l2_normalize(h_last)], dim=-1))
        return l2_normalize(self.drop(s)), h


#: Training presets (model hyper-parameters and training settings, see TRAIN_DEFAULTS).
PRESETS = {
    # The paper's setup: d = 256, batch 100, Adam with lr 1e-3 and L2 1e-5, up to 10
    # epochs; L = 7 intent levels, H = 8 heads and p = 4 are the defaults of the authors'
    # released code (GNN-AM/main.py of Peiyance/Atten-Mixer-torch). That code decays the
    # lr by 0.1 every 3 epochs; the trainer here offers constant/linear/cosine schedules,
    # so the lr stays constant. Early stopping on the validation split (valid_fraction of
    # the training sessions) instead of the paper's last 20% of training.
    "paper": {
        "dim": 256,
        "levels": 7,
        "heads": 8,
        "lp": 4.0,
        "scale": 12.0,
        "dropout": 0.1,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "batch_size": 100,
        "epochs": 10,
        "patience": 3,
        "same_category": False,
    },
    # The budget class of GRAINRec's fast preset (dim 64, 2 epochs, batch 512, Adam, a
    # high learning rate decayed to 0 with a cosine schedule): minutes per epoch on 2 CPU
    # cores. L and H (L=4/H=4 against the paper's L=7/H=8) and the learning rate (0.01
    # against 0.02) were compared on the validation sessions of
    # export_tools.data.split_validation (valid_fraction 0.1 of the training sessions,
    # seed 0), never on test: docs/evaluation.md has the figures.
    "fast": {
        "dim": 64,
        "levels": 4,
        "heads": 4,
        "lp": 4.0,
        "scale": 12.0,
        "dropout": 0.0,
        "optimizer": "adam",
        "lr": 0.02,
        "lr_schedule": "cosine",
        "weight_decay": 0.0,
        "batch_size": 512,
        "epochs": 2,
        "patience": 1,
        "same_category": False,
    },
}
