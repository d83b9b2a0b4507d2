"""Checkpoint directories: files, atomic writes, the catalog, loading a trained model.

A checkpoint directory holds ``config.json`` (model name, model and training configs,
catalog size, data, history), ``model.pt`` (best state_dict, tensors only),
``item_ids.npy``, ``categories.npy``, ``category_ids.npy`` (the catalog) and
``train_state.pt`` (last epoch's weights, optimizer and RNG state, for resume). Everything
loads with ``torch.load(..., weights_only=True)`` / ``np.load(allow_pickle=False)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import data as D

CONFIG_FILE = "config.json"
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
CATALOG_FILES = ("item_ids.npy", "categories.npy", "category_ids.npy")


def save_catalog(catalog, out: Path) -> None:
    arrays = (catalog.item_ids, catalog.categories, catalog.category_ids)
    for name, arr in zip(CATALOG_FILES, arrays):
        arr = np.asarray(arr)
        if arr.dtype == object:
            arr = arr.astype(str)
        np.save(Path(out) / name, arr, allow_pickle=False)


def load_catalog(path: Path):
    arrays = [np.load(Path(path) / name, allow_pickle=False) for name in CATALOG_FILES]
    return D.Catalog(*arrays)


def atomic_json(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    import torch

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_config(path) -> dict:
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no {CONFIG_FILE})")
    return json.loads((path / CONFIG_FILE).read_text())


def load_checkpoint(path):
    """(model in eval mode, catalog, config dict) from a checkpoint directory."""
    import torch

    from .models import MODELS

    path = Path(path)
    config = read_config(path)
    name = config["model"]
    if name not in MODELS:
        raise ValueError(f"checkpoint model {name!r} unknown; known: {sorted(MODELS)}")
    model = MODELS[name].from_config(config["model_config"])
    state = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, load_catalog(path), config
