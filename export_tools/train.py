"""``sessrec train``: the command line and the training data it reads.

    sessrec train --model grainrec --preset fast --train train.csv.gz --items items.csv.gz \
        --out runs/grainrec-fast

The training loop is export_tools.trainer (protocol there), examples and batches
export_tools.examples, checkpoint files export_tools.checkpoint, metrics
export_tools.metrics; the models and presets are in export_tools.models. The names below
are re-exported for the callers of the old single-module layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from export_tools import data as D
from export_tools.checkpoint import (  # noqa: F401  (re-exported)
    CATALOG_FILES,
    CONFIG_FILE,
    MODEL_FILE,
    STATE_FILE,
    load_checkpoint,
)
from export_tools.examples import (  # noqa: F401  (re-exported)
    batch_order,
    make_eval_examples,
    make_train_examples,
)
from export_tools.metrics import rank_targets  # noqa: F401  (re-exported)
from export_tools.models import INDEX_MODELS, MODELS, PRESETS
from export_tools.trainer import lr_factor, train  # noqa: F401  (re-exported)

K = 20


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------
def load_training_data(train_csv, items_csv=None, *, min_item_support: int = 1,
                       max_session_length: int | None = None, keep_repeats: bool = False):
    """(training sessions as catalog rows, catalog) from an event log and an optional
    items table (without one the catalog has no categories: every command then works
    without category filters).

    Sessionized; consecutive repeats dropped unless ``keep_repeats`` (keep them on data
    where re-viewing an item is a real signal: a repeat-heavy log); single-item sessions
    dropped; items with fewer than ``min_item_support`` occurrences removed (1 = keep all:
    right for an already preprocessed split such as the bundled ones, see
    data.load_diginetica).
    """
    sessions = D.clean_sessions(D.sessionize(D.read_events(train_csv)),
                                drop_consecutive_repeats=not keep_repeats,
                                min_item_support=min_item_support,
                                max_session_length=max_session_length)
    items = D.read_items(items_csv) if items_csv else None
    catalog = D.build_catalog(sessions, items)
    return D.to_rows(sessions, catalog), catalog


def data_options(data: dict) -> dict:
    """The ``load_training_data`` keywords a checkpoint recorded (older ones: defaults)."""
    return {"min_item_support": data.get("min_item_support", 1),
            "keep_repeats": bool(data.get("keep_repeats", False))}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sessrec train",
        description="Train a session model (its own loss, by default full-softmax next-item "
        "cross-entropy) and write a checkpoint directory.",
    )
    p.add_argument("--model", default="grainrec", choices=sorted({**MODELS, **INDEX_MODELS}),
                   help="a neural session model, or sknn (session-kNN: an index of the "
                   "training sessions, its setting chosen on the validation sessions)")
    p.add_argument("--preset", default="fast", help="fast | paper (default: fast)")
    p.add_argument("--train", required=True, help="event CSV: session_id,item_id,timestamp")
    p.add_argument("--items", help="items CSV: item_id,category_id (optional: without it "
                   "the catalog has no categories)")
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
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="any preset key (model hyper-parameter or training setting), the "
                   "value parsed as JSON when it parses, e.g. --set levels=3 --set heads=4")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="share of the training sessions held out for validation (0.1)")
    p.add_argument("--valid-split", choices=D.VALID_SPLITS, default="recent",
                   help="recent (default): the last sessions in time order, as the bundle "
                   "will serve later sessions; random: a seeded random sample")
    p.add_argument("--keep-repeats", action="store_true",
                   help="keep consecutive repeats of an item (a repeat-heavy log, where "
                   "re-viewing is a signal); default: collapse them")
    p.add_argument("--min-item-support", type=int, default=1,
                   help="drop items seen fewer times in the training log (default 1: the "
                   "log is already preprocessed, as the bundled Diginetica split; use 5 for a "
                   "raw clickstream)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    presets = {**PRESETS, **INDEX_MODELS}[args.model]
    if args.preset not in presets:
        print(f"error: unknown preset {args.preset!r}; choose from "
              f"{', '.join(sorted(presets))}", file=sys.stderr)
        return 2
    overrides = {
        "epochs": args.epochs, "lr": args.lr, "dim": args.dim, "batch_size": args.batch_size,
        "layers": args.layers, "dropout": args.dropout, "weight_decay": args.weight_decay,
        "patience": args.patience, "same_category": args.same_category,
        "lr_schedule": args.lr_schedule, "optimizer": args.optimizer,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        try:
            overrides[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.replace("-", "_")] = value
    t0 = time.perf_counter()
    sessions, catalog = load_training_data(args.train, args.items,
                                           min_item_support=args.min_item_support,
                                           keep_repeats=args.keep_repeats)
    data_info = {"train": str(Path(args.train).resolve()),
                 "items": str(Path(args.items).resolve()) if args.items else None,
                 "min_item_support": args.min_item_support,
                 "keep_repeats": args.keep_repeats}
    if args.model in INDEX_MODELS:
        from export_tools.models.sknn import train_sknn

        out = train_sknn(args.preset, sessions, catalog, args.out, overrides=overrides,
                         valid_fraction=args.valid_fraction, valid_split=args.valid_split,
                         data_info=data_info)
        _report(out, t0, lambda cfg: f"setting {json.dumps(cfg['model_config'])}")
        return 0
    out = train(
        args.model, args.preset, sessions, catalog, args.out, overrides=overrides,
        valid_fraction=args.valid_fraction, valid_split=args.valid_split, seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress, threads=args.threads, data_info=data_info,
    )
    _report(out, t0, lambda cfg: f"best epoch {cfg.get('best_epoch')}")
    return 0


def _report(out: Path, t0: float, what) -> None:
    """One line on the written checkpoint: ``what(config)``, its validation figures."""
    cfg = json.loads((out / CONFIG_FILE).read_text())
    best = cfg.get("best_metrics") or {}
    print(f"checkpoint: {out}  ({what(cfg)}: valid HR@20 "
          f"{best.get('HR@20', float('nan')):.4f} MRR@20 {best.get('MRR@20', float('nan')):.4f}; "
          f"{time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    raise SystemExit(main())
