"""Training of the session models (full-softmax cross-entropy on the next item).

    sessrec train --model grainrec --preset fast --train train.csv.gz --items items.csv.gz \
        --out runs/grainrec-fast

Protocol:
* the training sessions (whole sessions, catalog rows) are split by session into train and
  validation (``valid_fraction``, seeded);
* training examples: every prefix of every training session predicts its next item
  (prefix augmentation); when ``same_category`` is set the input is first filtered to the
  items of its last item's category, then truncated to its last ``max_length`` items;
* full-softmax cross-entropy, AdamW (decoupled ``weight_decay``, none on biases, as LESSR
  trains) or Adam with L2, learning rate constant
  or decayed to 0 over the planned epochs (``lr_schedule`` linear/cosine), length-bucketed
  shuffled batches;
* validation: each validation session's last item is the target, the events before it are
  the input (the test protocol), with the same input filter; HR@20 and MRR@20 over the full
  catalog; early stopping when neither improves for ``patience`` epochs; the best epoch's
  weights are the checkpoint's model;
* seeded and deterministic (one torch/numpy seed, deterministic algorithms, fixed batch
  order per epoch), two threads; ``resume=True`` continues after the last completed epoch
  and gives the same result as an uninterrupted run.

Checkpoint directory: ``config.json`` (model, configs, catalog size, data, history),
``model.pt`` (best state_dict, tensors only), ``item_ids.npy``, ``categories.npy``,
``category_ids.npy`` and ``train_state.pt`` (last epoch's weights, optimizer and RNG state,
for resume). Everything loads with ``torch.load(..., weights_only=True)`` /
``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import argparse
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
import torch.nn.functional as F

from export_tools import data as D
from export_tools.evaluate import ranking_metrics
from export_tools.models import MODELS, PRESETS, build_model, split_config

CONFIG_FILE = "config.json"
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
CATALOG_FILES = ("item_ids.npy", "categories.npy", "category_ids.npy")
K = 20


# ----------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------
_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Stop glibc from serving the big logits tensors with fresh mmaps.

    Every [batch, n_items] float tensor is larger than glibc's maximum mmap threshold
    (32 MiB), so each allocation is a new mmap that the kernel zero-fills page by page;
    on this kind of machine that costs more than the softmax itself (measured: 2.5x on
    the loss forward+backward). Keeping big blocks in the heap avoids it. Linux/glibc only,
    best effort, once per process.
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


class _TorchSettings:
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
# examples and batches
# ----------------------------------------------------------------------------------------
def _prepare_inputs(seqs, catalog, train_cfg) -> list[np.ndarray]:
    """Same-category filter (if configured) first, then keep the last max_length items."""
    if train_cfg["same_category"]:
        seqs = D.same_category_filter_many(seqs, np.asarray(catalog.categories))
    n = int(train_cfg["max_length"])
    return [np.asarray(x[-n:], dtype=np.int64) for x in seqs]


def make_train_examples(sessions, catalog, train_cfg) -> tuple[list[np.ndarray], np.ndarray]:
    """Prefix augmentation (+ optional same-category filter) -> (inputs, targets)."""
    inputs, targets = D.augment_prefixes(sessions, max_length=None)
    return _prepare_inputs(inputs, catalog, train_cfg), np.asarray(targets, dtype=np.int64)


def make_eval_examples(sessions, catalog, train_cfg) -> tuple[list[np.ndarray], np.ndarray]:
    """Last item = target, the events before it = input (sessions of length >= 2).

    Unknown items (row -1) are dropped from the inputs; an unknown target stays -1 and an
    input left empty stays empty: :func:`rank_targets` counts both as misses.
    """
    inputs, targets = [], []
    for s in sessions:
        s = np.asarray(s)
        if len(s) < 2:
            continue
        inputs.append(s[:-1][s[:-1] >= 0])
        targets.append(int(s[-1]))
    return _prepare_inputs(inputs, catalog, train_cfg), np.asarray(targets, dtype=np.int64)


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


# ----------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def rank_targets(model, inputs, targets, batch_size: int = 1024, progress=False) -> np.ndarray:
    """0-based rank of each target among all items (ties count in the target's favour);
    unknown targets (< 0) and empty inputs get rank n_items (always a miss)."""
    model.eval()
    lengths = np.array([len(x) for x in inputs], dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    ranks = np.full(len(inputs), model.config["n_items"], dtype=np.int64)
    ok = np.flatnonzero(lengths > 0)
    order = ok[np.argsort(lengths[ok], kind="stable")]
    it = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="eval", unit="batch", leave=False)
    for start in it:
        idx = order[start : start + batch_size]
        items = D.pad_batch([inputs[i] for i in idx])
        t = torch.as_tensor(targets[idx])
        known = t >= 0
        logits = model(torch.as_tensor(items))
        tgt = logits.gather(1, t.clamp(min=0)[:, None])
        r = (logits > tgt).sum(dim=1)
        r = torch.where(known, r, torch.full_like(r, logits.shape[1]))
        ranks[idx] = r.numpy()
    return ranks


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------
def _save_catalog(catalog, out: Path) -> None:
    arrays = (catalog.item_ids, catalog.categories, catalog.category_ids)
    for name, arr in zip(CATALOG_FILES, arrays):
        arr = np.asarray(arr)
        if arr.dtype == object:
            arr = arr.astype(str)
        np.save(out / name, arr, allow_pickle=False)


def _load_catalog(path: Path):
    arrays = [np.load(path / name, allow_pickle=False) for name in CATALOG_FILES]
    return D.Catalog(*arrays)


def _atomic_json(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    """(model in eval mode, catalog, config dict) from a checkpoint directory."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no {CONFIG_FILE})")
    config = json.loads((path / CONFIG_FILE).read_text())
    name = config["model"]
    if name not in MODELS:
        raise ValueError(f"checkpoint model {name!r} unknown; known: {sorted(MODELS)}")
    model = MODELS[name].from_config(config["model_config"])
    state = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, _load_catalog(path), config


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------
def _make_optimizer(model, train_cfg):
    """AdamW with decoupled weight decay and none on biases (LESSR's choice), or Adam + L2.

    With Adam's coupled L2 an item absent from a batch still gets the gradient ``wd * w``,
    which Adam normalises to a step of about ``lr`` towards zero; decoupled decay shrinks
    by ``lr * wd * w`` only. (At the paper's lr 0.00045 both reach about valid HR@20 0.015
    after one epoch here: there the learning rate, not the decay, is what is too small.)
    """
    kind = train_cfg["optimizer"].lower()
    lr, wd = float(train_cfg["lr"]), float(train_cfg["weight_decay"])
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    if kind == "adamw":
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            if p.requires_grad:  # LESSR: no decay on biases and activation (PReLU) slopes
                (no_decay if "bias" in n or ".act." in n else decay).append(p)
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


def _improved(m: dict, best: dict | None) -> bool:
    if best is None:
        return True
    return m["HR@20"] > best["HR@20"] or m["MRR@20"] > best["MRR@20"]


def train(
    model_name: str,
    preset: str,
    train_sessions_rows,
    catalog,
    out_dir,
    *,
    overrides: dict | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    data_info: dict | None = None,
    threads: int = 2,
) -> Path:
    """Train ``model_name`` with ``preset`` (+ ``overrides``); returns the checkpoint dir.

    ``train_sessions_rows``: whole training sessions as catalog rows (oldest first);
    ``overrides``: preset keys to change (model hyper-parameters or training settings, see
    ``export_tools.models.TRAIN_DEFAULTS``); ``resume``: continue the run in ``out_dir``
    after its last completed epoch (only ``epochs``/``patience`` may change); ``data_info``:
    recorded in config.json (e.g. the data paths); ``threads``: torch intra-op threads.
    """
    _tune_malloc()
    with _TorchSettings(seed, threads):
        return _train(model_name, preset, train_sessions_rows, catalog, out_dir,
                      overrides=overrides, valid_fraction=valid_fraction, seed=seed,
                      resume=resume, progress=progress, data_info=data_info)


def _train(model_name, preset, train_sessions_rows, catalog, out_dir, *, overrides,
           valid_fraction, seed, resume, progress, data_info) -> Path:
    if model_name not in PRESETS:
        raise ValueError(f"unknown model {model_name!r}; known: {sorted(PRESETS)}")
    if preset not in PRESETS[model_name]:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS[model_name])}")
    flat = dict(PRESETS[model_name][preset])
    flat.update({k: v for k, v in (overrides or {}).items() if v is not None})
    model_cfg, train_cfg = split_config(model_name, flat)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_s, valid_s = D.split_validation(list(train_sessions_rows), valid_fraction, seed)
    tr_x, tr_y = make_train_examples(train_s, catalog, train_cfg)
    va_x, va_y = make_eval_examples(valid_s, catalog, train_cfg)
    if not tr_x:
        raise ValueError("no training examples (sessions need at least 2 items)")
    lengths = np.array([len(x) for x in tr_x])

    model = build_model(model_name, catalog.n_items, model_cfg)
    opt = _make_optimizer(model, train_cfg)
    config = {
        "model": model_name,
        "preset": preset,
        "model_config": model.config,
        "train_config": train_cfg,
        "overrides": dict(overrides or {}),
        "seed": seed,
        "valid_fraction": valid_fraction,
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
        for key in ("model", "model_config", "seed", "valid_fraction"):
            if old[key] != config[key]:
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
        _save_catalog(catalog, out)
    _atomic_json(config, out / CONFIG_FILE)

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
        seen, loss_sum = 0, 0.0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(tr_x), desc=f"epoch {epoch + 1}/{epochs}", unit="ex",
                       unit_scale=True, dynamic_ncols=True, mininterval=1.0)
        for step, idx in enumerate(batches):
            lr = base_lr * lr_factor(schedule, (epoch * len(batches) + step) / total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            items = torch.as_tensor(D.pad_batch([tr_x[i] for i in idx]))
            target = torch.as_tensor(tr_y[idx])
            loss = F.cross_entropy(model(items), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = loss.item()
            if not math.isfinite(lv):
                raise FloatingPointError(f"loss became {lv} in epoch {epoch + 1}")
            seen += len(idx)
            loss_sum += lv * len(idx)
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
            "train_seconds": round(train_time, 2),
            "eval_seconds": round(time.perf_counter() - t1, 2),
            "examples_per_second": round(seen / max(train_time, 1e-9), 1),
            **{k: round(v, 6) for k, v in m.items()},
        }
        config["history"].append(record)
        if not m or _improved(m, best):
            best, bad_epochs = (m or None), 0
            config["best_epoch"], config["best_metrics"] = epoch + 1, record
            _atomic_torch_save(model.state_dict(), out / MODEL_FILE)
        else:
            bad_epochs += 1
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
        _atomic_torch_save(
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
            _atomic_json(config, out / CONFIG_FILE)
            break
        _atomic_json(config, out / CONFIG_FILE)
    if config["stopped"] is None:
        config["stopped"] = f"completed {epochs} epochs"
    _atomic_json(config, out / CONFIG_FILE)
    return out


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------
def load_training_data(train_csv, items_csv, *, min_item_support: int = 1,
                       max_session_length: int | None = None):
    """(training sessions as catalog rows, catalog) from an event log and an items table.

    Sessionized, consecutive repeats and single-item sessions dropped; items with fewer
    than ``min_item_support`` occurrences removed (1 = keep all: right for an already
    preprocessed split such as the bundled Diginetica one, see data.load_diginetica).
    """
    sessions = D.clean_sessions(D.sessionize(D.read_events(train_csv)),
                                min_item_support=min_item_support,
                                max_session_length=max_session_length)
    catalog = D.build_catalog(sessions, D.read_items(items_csv))
    return D.to_rows(sessions, catalog), catalog


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sessrec train",
        description="Train a session model (full-softmax next-item cross-entropy) and write a "
        "checkpoint directory.",
    )
    p.add_argument("--model", default="grainrec", choices=sorted(MODELS))
    p.add_argument("--preset", default="fast", help="fast | paper (default: fast)")
    p.add_argument("--train", required=True, help="event CSV: session_id,item_id,timestamp")
    p.add_argument("--items", required=True, help="items CSV: item_id,category_id")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue after the last completed epoch")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-schedule", choices=("constant", "linear", "cosine"),
                   help="decay of the learning rate over the planned epochs")
    p.add_argument("--optimizer", choices=("adamw", "adam"))
    p.add_argument("--dim", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--layers", help="layer order, e.g. GA, GAGA, GGGG, AAAA")
    p.add_argument("--dropout", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--same-category", dest="same_category", action="store_true", default=None,
                   help="filter inputs to the last item's category (preset default)")
    p.add_argument("--no-same-category", dest="same_category", action="store_false")
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--min-item-support", type=int, default=1,
                   help="drop items seen fewer times in the training log (default 1: the "
                   "log is already preprocessed, as the bundled Diginetica split; use 5 for a "
                   "raw clickstream)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.preset not in PRESETS[args.model]:
        print(f"error: unknown preset {args.preset!r}; choose from "
              f"{', '.join(sorted(PRESETS[args.model]))}", file=sys.stderr)
        return 2
    overrides = {
        "epochs": args.epochs, "lr": args.lr, "dim": args.dim, "batch_size": args.batch_size,
        "layers": args.layers, "dropout": args.dropout, "weight_decay": args.weight_decay,
        "patience": args.patience, "same_category": args.same_category,
        "lr_schedule": args.lr_schedule, "optimizer": args.optimizer,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    t0 = time.perf_counter()
    sessions, catalog = load_training_data(args.train, args.items,
                                           min_item_support=args.min_item_support)
    out = train(
        args.model, args.preset, sessions, catalog, args.out, overrides=overrides,
        valid_fraction=args.valid_fraction, seed=args.seed, resume=args.resume,
        progress=not args.no_progress, threads=args.threads,
        data_info={"train": str(Path(args.train).resolve()),
                   "items": str(Path(args.items).resolve()),
                   "min_item_support": args.min_item_support},
    )
    cfg = json.loads((out / CONFIG_FILE).read_text())
    best = cfg.get("best_metrics") or {}
    print(f"checkpoint: {out}  (best epoch {cfg.get('best_epoch')}: valid HR@20 "
          f"{best.get('HR@20', float('nan')):.4f} MRR@20 {best.get('MRR@20', float('nan')):.4f}; "
          f"{time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
