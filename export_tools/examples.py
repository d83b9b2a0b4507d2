"""Training and evaluation examples (session prefix -> next item) and their batches.

* training: every prefix of every training session predicts its next item (prefix
  augmentation, :func:`make_train_examples`);
* validation / test ("last" protocol): each session's last item is the target and the
  events before it are the input (:func:`make_eval_examples`);
* both: optionally filtered to the items of the last item's category (``same_category``),
  then truncated to the last ``max_length`` items (:func:`prepare_inputs`).
"""
from __future__ import annotations

import numpy as np
import torch

from . import data as D
from .models.base import Batch


def prepare_inputs(seqs, catalog, train_cfg) -> list[np.ndarray]:
    """Same-category filter (if configured) first, then keep the last max_length items."""
    if train_cfg["same_category"]:
        seqs = D.same_category_filter_many(seqs, np.asarray(catalog.categories))
    n = int(train_cfg["max_length"])
    return [np.asarray(x[-n:], dtype=np.int64) for x in seqs]


def make_train_examples(sessions, catalog, train_cfg) -> tuple[list[np.ndarray], np.ndarray]:
    """Prefix augmentation (+ optional same-category filter) -> (inputs, targets)."""
    inputs, targets = D.augment_prefixes(sessions, max_length=None)
    return prepare_inputs(inputs, catalog, train_cfg), np.asarray(targets, dtype=np.int64)


def make_eval_examples(sessions, catalog, train_cfg) -> tuple[list[np.ndarray], np.ndarray]:
    """Last item = target, the events before it = input (sessions of length >= 2).

    Unknown items (row -1) are dropped from the inputs; an unknown target stays -1 and an
    input left empty stays empty: :func:`export_tools.metrics.rank_targets` counts both as
    misses.
    """
    inputs, targets = [], []
    for s in sessions:
        s = np.asarray(s)
        if len(s) < 2:
            continue
        inputs.append(s[:-1][s[:-1] >= 0])
        targets.append(int(s[-1]))
    return prepare_inputs(inputs, catalog, train_cfg), np.asarray(targets, dtype=np.int64)


def batch_order(lengths: np.ndarray, batch_size: int, window: int, rng: np.random.Generator):
    """Shuffled batches of example indices, length-sorted inside windows (less padding)."""
    perm = rng.permutation(len(lengths))
    span = batch_size * max(1, window)
    batches = []
    for start in range(0, len(perm), span):
        chunk = perm[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def make_batch(inputs: list[np.ndarray], targets: np.ndarray, idx) -> Batch:
    """The padded :class:`~export_tools.models.base.Batch` of examples ``idx``."""
    return Batch(items=torch.as_tensor(D.pad_batch([inputs[i] for i in idx])),
                 targets=torch.as_tensor(np.asarray(targets)[idx]))
