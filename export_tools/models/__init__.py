"""Model registry: name -> torch module class, and the training presets of each model.

A preset mixes model hyper-parameters (the keyword arguments of the model class) and
training settings (everything else); :func:`split_config` separates them.
"""

from __future__ import annotations

import inspect

from .grainrec import EncoderForExport, GRAINRec

MODELS = {"grainrec": GRAINRec}

#: Training settings understood by export_tools.train (defaults for keys a preset omits).
TRAIN_DEFAULTS = {
    "lr": 1e-3,
    "batch_size": 512,
    "weight_decay": 1e-4,
    "optimizer": "adamw",  # "adamw" (decoupled, no decay on biases: LESSR's) or "adam" (L2)
    "lr_schedule": "constant",  # or "linear"/"cosine": decay to 0 over the planned epochs
    "epochs": 30,
    "patience": 3,  # epochs without improvement of validation HR@20 or MRR@20
    "same_category": True,  # train (and validate) on prefixes filtered to the last item's category
    "max_length": 20,  # keep the last max_length items of every input prefix
    "eval_batch_size": 1024,
    "bucket_batches": 64,  # sort by length inside windows of this many batches (CPU speed)
}

PRESETS = {
    "grainrec": {
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
        # Small and quick: the whole Diginetica training run in about 4-5 minutes on 2 CPU
        # cores (2 epochs of ~110 s when the machine is otherwise idle). A high learning rate
        # with a cosine decay to 0 is what makes 2 epochs enough (lr 2e-3 constant: valid
        # HR@20 0.13 after one epoch; lr 0.02 cosine: 0.43).
        "fast": {
            "dim": 64,
            "layers": "GA",
            "dropout": 0.0,
            "lr": 0.02,
            "lr_schedule": "cosine",
            "batch_size": 512,
            "weight_decay": 1e-5,
            "optimizer": "adam",  # tuned and measured with Adam + L2 1e-5
            "epochs": 2,
            "patience": 1,
            # Measured on Diginetica (test HR@20/MRR@20, full catalog, inference with the
            # filter / without): trained with the filter 0.520/0.223 / 0.529/0.224, without
            # it 0.531/0.230 / 0.544/0.232. The filter discards context, so it is off here.
            "same_category": False,
        },
    }
}


def model_keys(model_name: str) -> set[str]:
    """Names of the model's constructor hyper-parameters (n_items excluded)."""
    sig = inspect.signature(MODELS[model_name].__init__)
    return {p for p in sig.parameters if p not in ("self", "n_items")}


def split_config(model_name: str, config: dict) -> tuple[dict, dict]:
    """(model kwargs, training settings incl. defaults) from a flat preset/override dict."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; known: {sorted(MODELS)}")
    mkeys = model_keys(model_name)
    unknown = set(config) - mkeys - set(TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown settings for {model_name}: {sorted(unknown)}")
    model_cfg = {k: v for k, v in config.items() if k in mkeys}
    train_cfg = dict(TRAIN_DEFAULTS)
    train_cfg.update({k: v for k, v in config.items() if k not in mkeys})
    return model_cfg, train_cfg


def build_model(model_name: str, n_items: int, model_cfg: dict):
    return MODELS[model_name](n_items, **model_cfg)


__all__ = [
    "MODELS",
    "PRESETS",
    "TRAIN_DEFAULTS",
    "GRAINRec",
    "EncoderForExport",
    "model_keys",
    "split_config",
    "build_model",
]
