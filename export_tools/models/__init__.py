"""Model registry: name -> :class:`~export_tools.models.base.SessionModel` subclass and the
training presets of each model.

Adding a model = one module with a ``SessionModel`` subclass and its ``PRESETS`` (every
model has ``fast`` and ``paper``), plus one :func:`register` line below. The trainer, the
export, the evaluation and the shared contract tests (tests/test_model_contract.py) then
cover it; docs/models.md documents the contract.

A preset mixes model hyper-parameters (the keyword arguments of the model class) and
training settings (the keys of :data:`TRAIN_DEFAULTS`); :func:`split_config` separates them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from . import attenmixer, grainrec, hiersrec, sknn
from .attenmixer import AttenMixer
from .base import Batch, ExportSpec, ItemTables, SessionModel, TensorSpec, TrainingData
from .grainrec import EncoderForExport, GRAINRec
from .hiersrec import HierSRec

#: Training settings understood by export_tools.trainer (defaults for keys a preset omits).
TRAIN_DEFAULTS = {
    "lr": 1e-3,
    "batch_size": 512,
    "weight_decay": 1e-4,
    "optimizer": "adamw",  # "adamw" (decoupled, none on model.no_weight_decay) or "adam" (L2)
    "lr_schedule": "constant",  # or "linear"/"cosine": decay to 0 over the planned epochs
    "epochs": 30,
    "patience": 3,  # epochs without improvement of validation HR@20 or MRR@20
    "same_category": True,  # train (and validate) on prefixes filtered to the last item's category
    "max_length": 20,  # keep the last max_length items of every input prefix
    "eval_batch_size": 1024,
    "bucket_batches": 64,  # sort by length inside windows of this many batches (CPU speed)
}

REQUIRED_PRESETS = ("fast", "paper")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[SessionModel]
    presets: dict


REGISTRY: dict[str, ModelEntry] = {}
MODELS: dict[str, type[SessionModel]] = {}
PRESETS: dict[str, dict] = {}


def register(name: str, cls: type[SessionModel], presets: dict) -> None:
    """Make ``cls`` trainable, exportable and evaluable as ``name``."""
    if not issubclass(cls, SessionModel):
        raise TypeError(f"{cls!r} does not implement export_tools.models.base.SessionModel")
    missing = [p for p in REQUIRED_PRESETS if p not in presets]
    if missing:
        raise ValueError(f"model {name!r} lacks the presets {missing}")
    REGISTRY[name] = ModelEntry(name, cls, presets)
    MODELS[name] = cls
    PRESETS[name] = presets
    for preset in presets.values():  # fail at import, not in the middle of a run
        split_config(name, preset)


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


def build_model(model_name: str, n_items: int, model_cfg: dict,
                n_categories: int | None = None) -> SessionModel:
    """A fresh model; ``n_categories`` (the catalog's category vocabulary) goes to the
    models that take it (a category head), unless ``model_cfg`` sets it."""
    cfg = dict(model_cfg)
    if "n_categories" in model_keys(model_name) and "n_categories" not in cfg:
        if n_categories is None:
            raise ValueError(f"model {model_name!r} needs n_categories (the catalog's)")
        cfg["n_categories"] = int(n_categories)
    return MODELS[model_name](n_items, **cfg)


register("grainrec", GRAINRec, grainrec.PRESETS)
register("attenmixer", AttenMixer, attenmixer.PRESETS)
register("hiersrec", HierSRec, hiersrec.PRESETS)

#: Models without weights: an index of the training sessions, built and tuned by their
#: module's ``train_sknn``, written to a bundle whose scorer is the session-kNN kernel.
INDEX_MODELS: dict[str, dict] = {"sknn": sknn.PRESETS}

__all__ = [
    "INDEX_MODELS",
    "MODELS",
    "PRESETS",
    "REGISTRY",
    "TRAIN_DEFAULTS",
    "AttenMixer",
    "Batch",
    "EncoderForExport",
    "ExportSpec",
    "GRAINRec",
    "HierSRec",
    "ItemTables",
    "SessionModel",
    "TensorSpec",
    "TrainingData",
    "build_model",
    "model_keys",
    "register",
    "split_config",
]
