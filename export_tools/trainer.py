"""The training loop: drives any registered model through the model contract.

Protocol:
* the training sessions (whole sessions, catalog rows) are split by session into train and
  validation (``valid_fraction``; ``valid_split`` "recent": the last sessions in time
  order, as ``sessrec train`` does by default; "random": seeded; see
  export_tools.data.split_validation);
* ``model.prepare(TrainingData)`` once, before the first epoch, on the training part;
* training examples: every prefix of every training session predicts its next item
  (export_tools.examples); each step minimises ``model.loss(batch)`` (the total; its named
  parts are logged per epoch when a model has more than one);
* AdamW (decoupled ``weight_decay``, none on ``model.no_weight_decay`` parameters) or Adam
  with L2, learning rate constant or decayed to 0 over the planned epochs (``lr_schedule``
  linear/cosine), length-bucketed shuffled batches;
* validation: each validation session's last item is the target, the events before it the
  input (the test protocol), with the same input filter; HR@20 and MRR@20 over the full
  catalog (export_tools.metrics); early stopping when neither improves for ``patience``
  epochs; the best epoch's weights are the checkpoint's model;
* seeded and deterministic (one torch/numpy seed, deterministic algorithms, fixed batch
  order per epoch), two threads; ``resume=True`` continues after the last completed epoch
  and gives the same result as an uninterrupted run.

``callbacks``: objects with an optional ``on_epoch_end(model, record)`` method, called
after each epoch's validation (e.g. to log or to stop a sweep).
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    STATE_FILE,
    atomic_json,
    atomic_torch_save,
    save_catalog,
)
from .examples import batch_order, make_batch, make_eval_examples, make_train_examples
from .metrics import rank_targets, ranking_metrics
from .models import PRESETS, build_model, split_config
from .models.base import TrainingData

# ----------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------
_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Stop glibc from serving the big logits tensors with fresh mmaps.

    Every [batch, n_items] float tensor is larger than glibc's maximum mmap threshold
    (32 MiB), so each allocation is a new mmap that the kernel zero-fills page by page;
    on this kind of machine that costs more than the softmax itself. Keeping big blocks in
    the heap avoids it. Linux/glibc only, best effort, once per process.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or platform.system() != "Linux" or os.environ.get("SESSREC_NO_MALLOPT"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
        _MALLOC_TUNED = True
    except (OSError, AttributeError):
        pass


class TorchSettings:
    """Two threads, deterministic algorithms and a seeded global RNG for the duration of a
    training run; the thread count and determinism flags are restored afterwards."""

    def __init__(self, seed: int, threads: int = 2):
        self.seed, self.threads = seed, threads

    def __enter__(self):
        self.saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled())
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        threads, det, warn_only = self.saved
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        return False


# ----------------------------------------------------------------------------------------
# optimizer and schedule
# ----------------------------------------------------------------------------------------
def make_optimizer(model, train_cfg):
    """AdamW with decoupled weight decay and none on ``model.no_weight_decay`` parameters,
    or Adam + L2 on every parameter.

    With Adam's coupled L2 an item absent from a batch still gets the gradient ``wd * w``,
    which Adam normalises to a step of about ``lr`` towards zero; decoupled decay shrinks
    by ``lr * wd * w`` only.
    """
    kind = train_cfg["optimizer"].lower()
    lr, wd = float(train_cfg["lr"]), float(train_cfg["weight_decay"])
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    if kind == "adamw":
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if model.no_weight_decay(n, p) else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer must be 'adam' or 'adamw', got {kind!r}")


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1) of the planned training steps."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"lr_schedule must be constant, linear or cosine, got {schedule!r}")


def improved(m: dict, best: dict | None) -> bool:
    if best is None:
        return True
    return m["HR@20"] > best["HR@20"] or m["MRR@20"] > best["MRR@20"]


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------
def train(
    model_name: str,
    preset: str,
    train_sessions_rows,
    catalog,
    out_dir,
    *,
    overrides: dict | None = None,
    valid_fraction: float = 0.1,
    valid_split: str = "random",
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    data_info: dict | None = None,
    threads: int = 2,
    callbacks: list | None = None,
) -> Path:
    """Train ``model_name`` with ``preset`` (+ ``overrides``); returns the checkpoint dir.

    ``train_sessions_rows``: whole training sessions as catalog rows (oldest first);
    ``overrides``: preset keys to change (model hyper-parameters or training settings, see
    ``export_tools.models.TRAIN_DEFAULTS``); ``resume``: continue the run in ``out_dir``
    after its last completed epoch (only ``epochs``/``patience`` may change); ``data_info``:
    recorded in config.json (e.g. the data paths); ``threads``: torch intra-op threads.
    """
    tune_malloc()
    with TorchSettings(seed, threads):
        return _train(model_name, preset, train_sessions_rows, catalog, out_dir,
                      overrides=overrides, valid_fraction=valid_fraction,
                      valid_split=valid_split, seed=seed,
                      resume=resume, progress=progress, data_info=data_info,
                      callbacks=list(callbacks or []))


def _scalar(value) -> float:
    """A loss part as a float, without autograd's warning for a tensor that needs grad."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _call(callbacks, hook: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def _train(model_name, preset, train_sessions_rows, catalog, out_dir, *, overrides,
           valid_fraction, valid_split, seed, resume, progress, data_info, callbacks) -> Path:
    if model_name not in PRESETS:
        raise ValueError(f"unknown model {model_name!r}; known: {sorted(PRESETS)}")
    if preset not in PRESETS[model_name]:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS[model_name])}")
    flat = dict(PRESETS[model_name][preset])
    flat.update({k: v for k, v in (overrides or {}).items() if v is not None})
    model_cfg, train_cfg = split_config(model_name, flat)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_s, valid_s = D.split_validation(list(train_sessions_rows), valid_fraction, seed,
                                          valid_split)
    tr_x, tr_y = make_train_examples(train_s, catalog, train_cfg)
    va_x, va_y = make_eval_examples(valid_s, catalog, train_cfg)
    if not tr_x:
        raise ValueError("no training examples (sessions need at least 2 items)")
    lengths = np.array([len(x) for x in tr_x])

    model = build_model(model_name, catalog.n_items, model_cfg,
                        n_categories=len(catalog.category_ids))
    opt = make_optimizer(model, train_cfg)
    config = {
        "model": model_name,
        "preset": preset,
        "model_config": model.config,
        "train_config": train_cfg,
        "overrides": dict(overrides or {}),
        "seed": seed,
        "valid_fraction": valid_fraction,
        "valid_split": valid_split,
        "n_items": int(catalog.n_items),
        "n_train_sessions": len(train_s),
        "n_valid_sessions": len(valid_s),
        "n_train_examples": len(tr_x),
        "n_valid_examples": len(va_x),
        "data": dict(data_info or {}),
        "validation": "last item of each held-out training session, full catalog",
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "history": [],
        "best_epoch": None,
        "best_metrics": None,
        "stopped": None,
    }
    start_epoch, best, bad_epochs = 0, None, 0
    if resume and (out / STATE_FILE).is_file():
        old = json.loads((out / CONFIG_FILE).read_text())
        for key in ("model", "model_config", "seed", "valid_fraction", "valid_split"):
            if old.get(key, "random" if key == "valid_split" else None) != config[key]:
                raise ValueError(f"cannot resume: {key} differs ({old[key]!r} != {config[key]!r})")
        changed = {k for k in train_cfg if old["train_config"].get(k) != train_cfg[k]}
        if changed - {"epochs", "patience"}:
            raise ValueError(f"cannot resume: training settings differ: {sorted(changed)}")
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        if len(state["optimizer"]["param_groups"]) != len(opt.param_groups):
            raise ValueError("cannot resume: the checkpoint's optimizer state comes from an "
                             "older sessrec (one parameter group); train from scratch")
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"])
        config["history"] = old["history"]
        config["best_epoch"], config["best_metrics"] = old["best_epoch"], old["best_metrics"]
        best, bad_epochs = old["best_metrics"], int(state["bad_epochs"])
    else:
        if resume and progress:
            print(f"nothing to resume in {out}: starting from scratch", file=sys.stderr)
        for stale in (MODEL_FILE, STATE_FILE):  # never mix a new config with old weights
            (out / stale).unlink(missing_ok=True)
        save_catalog(catalog, out)
        model.prepare(TrainingData(sessions=list(train_s), catalog=catalog))
    atomic_json(config, out / CONFIG_FILE)

    epochs, patience = int(train_cfg["epochs"]), int(train_cfg["patience"])
    bs = int(train_cfg["batch_size"])
    if bad_epochs >= patience and start_epoch > 0:
        config["stopped"] = "early stopping (before resume)"
        start_epoch = epochs
    schedule, base_lr = str(train_cfg["lr_schedule"]), float(train_cfg["lr"])
    lr_factor(schedule, 0.0)  # validate early
    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng([seed, epoch])
        batches = batch_order(lengths, bs, int(train_cfg["bucket_batches"]), rng)
        total_steps = epochs * len(batches)
        model.train()
        t0 = time.perf_counter()
        seen, loss_sum, part_sums = 0, 0.0, {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(tr_x), desc=f"epoch {epoch + 1}/{epochs}", unit="ex",
                       unit_scale=True, dynamic_ncols=True, mininterval=1.0)
        for step, idx in enumerate(batches):
            lr = base_lr * lr_factor(schedule, (epoch * len(batches) + step) / total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, parts = model.loss(make_batch(tr_x, tr_y, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = loss.item()
            if not math.isfinite(lv):
                raise FloatingPointError(f"loss became {lv} in epoch {epoch + 1}")
            seen += len(idx)
            loss_sum += lv * len(idx)
            if len(parts) > 1:
                for name, value in parts.items():
                    part_sums[name] = part_sums.get(name, 0.0) + _scalar(value) * len(idx)
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(loss=f"{lv:.3f}", lr=f"{lr:.2g}",
                                ex_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        if va_x:
            ranks = rank_targets(model, va_x, va_y, int(train_cfg["eval_batch_size"]), progress)
            m = ranking_metrics(ranks)
        else:  # no validation split: keep the last epoch, no early stopping
            m = {}
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1, seen),
            **{f"loss_{k}": v / max(1, seen) for k, v in part_sums.items()},
            "train_seconds": round(train_time, 2),
            "eval_seconds": round(time.perf_counter() - t1, 2),
            "examples_per_second": round(seen / max(train_time, 1e-9), 1),
            **{k: round(v, 6) for k, v in m.items()},
        }
        config["history"].append(record)
        if not m or improved(m, best):
            best, bad_epochs = (m or None), 0
            config["best_epoch"], config["best_metrics"] = epoch + 1, record
            atomic_torch_save(model.state_dict(), out / MODEL_FILE)
        else:
            bad_epochs += 1
        _call(callbacks, "on_epoch_end", model, record)
        if progress:
            print(
                f"epoch {epoch + 1}: loss {record['loss']:.4f}  valid HR@20 "
                f"{m.get('HR@20', float('nan')):.4f} MRR@20 {m.get('MRR@20', float('nan')):.4f}"
                f"  ({train_time:.0f}s train, "
                f"{record['examples_per_second']:.0f} ex/s)"
                + ("  *best*" if bad_epochs == 0
                   else f"  (no improvement {bad_epochs}/{patience})"),
                file=sys.stderr,
            )
        atomic_torch_save(
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "bad_epochs": bad_epochs,
            },
            out / STATE_FILE,
        )
        if bad_epochs >= patience:
            config["stopped"] = f"early stopping after epoch {epoch + 1}"
            atomic_json(config, out / CONFIG_FILE)
            break
        atomic_json(config, out / CONFIG_FILE)
    if config["stopped"] is None:
        config["stopped"] = f"completed {epochs} epochs"
    atomic_json(config, out / CONFIG_FILE)
    return out
