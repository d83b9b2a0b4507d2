"""HierSRec (Park et al., "Hierarchical Multi-Task Learning Framework for Session-based
Recommendations"), dense padded tensors, for one category level (Diginetica's).

* each session position concatenates an item id embedding (d_I) and the embedding of the
  item's category (d_C); with no further metadata columns d_M is absent;
* a metadata-aware Transformer encoder over the session: the concatenation projected to
  the model width, plus a learned position embedding (oldest item = position 0), ``layers``
  pre-norm layers of ``heads``-head self-attention and a feed-forward block, padding
  masked; average pooling over the valid positions gives the session encoding ``h``;
* the category head predicts the next item's category: ``c = W_c h`` (logits over the
  categories); its prediction ``softmax(c)`` is projected (``Proj``) and concatenated with
  ``h``; the item head maps ``[h || Proj(softmax(c))]`` to the query ``q``;
* item scores ``q . e_j`` against the item id embeddings (tied with the input side);
* loss = item cross-entropy + ``lambda_c`` * category cross-entropy (targets of unknown
  category are left out of the category term).

Export (bundle v2): the encoder takes ``items`` and ``item_emb`` (the bundle's
``input_embedding`` rows ``[e_j || category embedding of j]``, gathered by the runtime) and
returns ``query`` and ``category_scores`` (the logits ``c``): the runtime's "categories"
candidate policy and "predicted" category filter read them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .base import Batch, ExportSpec, SessionModel, TensorSpec, TrainingData

NEG = -1e9  # finite fill for masked attention logits


class _Layer(nn.Module):
    """Pre-norm Transformer encoder layer written with plain matmuls (exportable with a
    dynamic session length, no fused kernels)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        B, T, W = x.shape
        H = self.heads
        q, k, v = self.qkv(self.norm1(x)).reshape(B, T, 3, H, W // H).permute(2, 0, 3, 1, 4)
        logits = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(W // H)  # [B, H, T, T]
        logits = logits.masked_fill(~valid[:, None, None, :], NEG)
        att = torch.matmul(torch.softmax(logits, dim=-1), v)  # [B, H, T, W/H]
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(B, T, W)))
        return x + self.drop(self.ffn(self.norm2(x)))


class HierSRec(SessionModel):
    """HierSRec session encoder with a next-category head (see the module docstring).

    ``n_categories``: the category vocabulary (the catalog's); ``dim`` = d_I (and the
    query/item width), ``cat_dim`` = d_C, ``width`` the Transformer's width, ``proj_dim``
    the projected category prediction, ``lambda_c`` the weight of the category loss.
    """

    name = "hiersrec"

    def __init__(self, n_items: int, n_categories: int, dim: int = 128, cat_dim: int = 128,
                 width: int = 256, layers: int = 2, heads: int = 8, proj_dim: int = 64,
                 max_positions: int = 64, dropout: float = 0.1, lambda_c: float = 1.0):
        super().__init__()
        if min(n_items, n_categories, dim, cat_dim, width, layers, heads, proj_dim,
               max_positions) < 1:
            raise ValueError("every size of HierSRec must be positive")
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        self.config = {"n_items": int(n_items), "n_categories": int(n_categories),
                       "dim": int(dim), "cat_dim": int(cat_dim), "width": int(width),
                       "layers": int(layers), "heads": int(heads), "proj_dim": int(proj_dim),
                       "max_positions": int(max_positions), "dropout": float(dropout),
                       "lambda_c": float(lambda_c)}
        self.n_categories, self.max_positions = n_categories, max_positions
        self.lambda_c = float(lambda_c)
        self.item_emb = nn.Embedding(n_items, dim)
        self.cat_emb = nn.Embedding(n_categories + 1, cat_dim)  # last row: unknown category
        nn.init.normal_(self.item_emb.weight, std=1.0 / math.sqrt(dim))
        nn.init.normal_(self.cat_emb.weight, std=1.0 / math.sqrt(cat_dim))
        # item row -> category index (n_categories = unknown), filled by prepare()
        self.register_buffer("item_category", torch.full((n_items,), n_categories,
                                                         dtype=torch.int64))
        self.inp = nn.Linear(dim + cat_dim, width)
        self.pos = nn.Embedding(max_positions, width)
        self.layers = nn.ModuleList([_Layer(width, heads, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.cat_head = nn.Linear(width, n_categories)
        self.cat_proj = nn.Linear(n_categories, proj_dim)
        self.item_head = nn.Linear(width + proj_dim, dim)
        self.drop = nn.Dropout(dropout)

    # -- data --------------------------------------------------------------------------------
    def prepare(self, data: TrainingData) -> None:
        cats = torch.tensor(np.asarray(data.catalog.categories), dtype=torch.int64)
        if cats.shape != self.item_category.shape:
            raise ValueError(f"catalog has {cats.shape[0]} items, the model "
                             f"{self.item_category.shape[0]}")
        if cats.numel() and int(cats.max()) >= self.n_categories:
            raise ValueError(f"catalog categories reach {int(cats.max())}, the model has "
                             f"{self.n_categories}")
        self.item_category.copy_(torch.where(cats < 0, self.n_categories, cats))

    # -- item side ---------------------------------------------------------------------------
    def input_rows(self) -> Tensor:
        """[n_items, dim + cat_dim]: an item's id embedding and its category's embedding."""
        return torch.cat([self.item_emb.weight, self.cat_emb(self.item_category)], dim=-1)

    def item_matrix(self) -> Tensor:
        return self.item_emb.weight

    def embed(self, items: Tensor) -> Tensor:
        valid = items >= 0
        rows = items.clamp(min=0)
        emb = torch.cat([self.item_emb(rows), self.cat_emb(self.item_category[rows])], dim=-1)
        return emb * valid[:, :, None].to(emb.dtype)

    # -- session side ------------------------------------------------------------------------
    def encode_all(self, items: Tensor, item_emb: Tensor) -> tuple[Tensor, Tensor]:
        """(query [B, dim], category logits [B, n_categories])."""
        B, T = items.shape
        valid = items >= 0
        pos = torch.arange(T, device=items.device).clamp(max=self.max_positions - 1)
        x = self.drop(self.inp(item_emb) + self.pos(pos)[None, :, :])
        for layer in self.layers:
            x = layer(x, valid)
        x = self.norm(x)
        vf = valid.to(x.dtype)[:, :, None]
        h = (x * vf).sum(dim=1) / vf.sum(dim=1).clamp_min(1.0)  # average pooling
        cat_logits = self.cat_head(h)
        p = self.cat_proj(torch.softmax(cat_logits, dim=-1))
        query = self.item_head(self.drop(torch.cat([h, p], dim=-1)))
        return query, cat_logits

    def encode(self, items: Tensor, item_emb: Tensor) -> Tensor:
        return self.encode_all(items, item_emb)[0]

    # -- train -------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        query, cat_logits = self.encode_all(batch.items, self.embed(batch.items))
        item_ce = nn.functional.cross_entropy(self.scores(query), batch.targets)
        target_cat = self.item_category[batch.targets]
        target_cat = torch.where(target_cat == self.n_categories, -100, target_cat)
        if bool((target_cat >= 0).any()):
            cat_ce = nn.functional.cross_entropy(cat_logits, target_cat, ignore_index=-100)
        else:
            cat_ce = cat_logits.sum() * 0.0
        return item_ce + self.lambda_c * cat_ce, {"item_ce": item_ce, "category_ce": cat_ce}

    # -- export ------------------------------------------------------------------------------
    def encoder(self) -> nn.Module:
        return _TwoOutputEncoder(self)

    def export_spec(self) -> ExportSpec:
        spec = super().export_spec()
        spec.outputs.append(TensorSpec("category_scores", "float32", ("B", self.n_categories)))
        return spec

    #: the bundle v2 declaration of the encoder's outputs (name -> kind)
    output_kinds = {"query": "query", "category_scores": "category_scores"}


class _TwoOutputEncoder(nn.Module):
    def __init__(self, model: HierSRec):
        super().__init__()
        self.model = model

    def forward(self, items: Tensor, item_emb: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode_all(items, item_emb)


#: Training presets (model hyper-parameters and training settings, see TRAIN_DEFAULTS).
PRESETS = {
    # The paper: d_I = d_C = 128, 2 Transformer layers with 8 heads, batch 1024, lr 1e-4,
    # lambda_C = 1.0, settings chosen on 10% of the training sessions held out.
    "paper": {"dim": 128, "cat_dim": 128, "width": 256, "layers": 2, "heads": 8,
              "proj_dim": 64, "dropout": 0.1, "lambda_c": 1.0, "optimizer": "adam",
              "lr": 1e-4, "weight_decay": 0.0, "batch_size": 1024, "epochs": 20,
              "patience": 3, "same_category": False},
    # The budget class of the other fast presets: minutes per epoch on 2 CPU cores.
    # lr 0.01: chosen on validation sessions against 0.005 and 0.02, see
    # docs/evaluation.md ("HierSRec (fast preset)").
    "fast": {"dim": 64, "cat_dim": 32, "width": 64, "layers": 2, "heads": 4,
             "proj_dim": 32, "dropout": 0.0, "lambda_c": 1.0, "optimizer": "adam",
             "lr": 0.01, "lr_schedule": "cosine", "weight_decay": 0.0, "batch_size": 512,
             "epochs": 2, "same_category": False},
}
