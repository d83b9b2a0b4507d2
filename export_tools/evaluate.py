"""Next-item evaluation: baselines, the model's full-catalog ranking, the SDK path.

Protocol (DESIGN.md): for every test session the last event is the target and the events
before it are the input. Targets never seen in training stay in the denominator (a miss
for every method). Ranks are 0-based; ties count in the target's favour for full-catalog
rankings, list position for list-returning methods.

Rows of the table (method names are stable, scripts read them from the JSON):
  popularity                 most popular training items
  transition                 most frequent successors of the last item, popularity fill
  grainrec/full              the torch model over the whole catalog (needs --checkpoint)
  grainrec/full-sdk-query    the bundle's query (SDK session handling) over the whole
                             catalog: separates the cost of candidates from that of the
                             session truncation/filter
  grainrec/sdk               Recommender.recommend with the bundle's defaults
  grainrec/sdk/<filter>      each category filter (last, session, none)
  grainrec/sdk/neighbors=<n> the neighbors-per-item sweep (paper Fig. 4)

Every SDK row runs every test session through ``Recommender.recommend``. A session's query
vector depends on the session only, so after the first SDK pass the encoder's answers are
memoised (:class:`MemoEncoder`) and the other passes cost the kernel alone; the latency
columns come from separate, unmemoised calls on the first ``latency_sessions`` sessions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import data as D

KS = (10, 20)
SWEEP = (25, 50, 75, 100, 125, 150)
LATENCY_SESSIONS = 2000  # timed recommend() calls per SDK row


# ------------------------------------------------------------------------ metrics


def ranking_metrics(ranks: np.ndarray, n: int | None = None, ks: Sequence[int] = KS) -> dict:
    """HR@K, MRR@K, NDCG@K from 0-based ranks (a miss is any rank >= max K).

    ``n`` is the denominator (default: len(ranks)).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    n = len(ranks) if n is None else n
    out = {}
    for k in ks:
        hit = ranks < k
        denom = max(n, 1)
        out[f"HR@{k}"] = float(hit.sum() / denom)
        out[f"MRR@{k}"] = float((1.0 / (ranks[hit] + 1)).sum() / denom)
        out[f"NDCG@{k}"] = float((1.0 / np.log2(ranks[hit] + 2)).sum() / denom)
    return out


def list_rank(recommended: np.ndarray, target) -> int:
    """Position of ``target`` in a recommendation list, or a miss (10**9)."""
    hits = np.flatnonzero(recommended == target)
    return int(hits[0]) if hits.size else 10**9


# ------------------------------------------------------------------------ baselines


class TransitionBaseline:
    """Most frequent successors of the last item (ties: first seen in training first), then
    the most popular items (same tie rule) to fill the list. This is the reference rule of
    the dataset README (HR@20 0.3775, MRR@20 0.1945 on the Diginetica split)."""

    def __init__(self, train_sessions: Sequence[np.ndarray]):
        flat = np.concatenate([np.asarray(s, np.int64) for s in train_sessions])
        items, first, counts = np.unique(flat, return_index=True, return_counts=True)
        self.popular = items[np.lexsort((first, -counts))]
        src = np.concatenate([np.asarray(s[:-1], np.int64) for s in train_sessions])
        dst = np.concatenate([np.asarray(s[1:], np.int64) for s in train_sessions])
        pairs = np.stack([src, dst], axis=1)
        uniq, first, counts = np.unique(pairs, axis=0, return_index=True, return_counts=True)
        order = np.lexsort((first, -counts, uniq[:, 0]))
        self._src = uniq[order, 0]
        self._dst = uniq[order, 1]

    def recommend(self, session: np.ndarray, k: int) -> np.ndarray:
        last = session[-1] if len(session) else None
        succ = np.empty(0, np.int64)
        if last is not None:
            lo, hi = np.searchsorted(self._src, [last, last + 1])
            succ = self._dst[lo:min(hi, lo + k)]
        if len(succ) >= k:
            return succ
        fill = self.popular[: k + len(succ)]
        fill = fill[~np.isin(fill, succ)]
        return np.concatenate([succ, fill])[:k]


# ------------------------------------------------------------------------ evaluation


def load_test_examples(test_csv: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """(inputs as external ids, targets) of every test session with >= 2 events."""
    sessions = [s for s in D.sessionize(D.read_events(test_csv)) if len(s) >= 2]
    return [s[:-1] for s in sessions], np.array([s[-1] for s in sessions], dtype=np.int64)


def _progress(it, desc: str, enabled: bool, total: int | None = None):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, total=total, unit="session", leave=False, mininterval=0.5)


def evaluate_lists(name: str, recommend: Callable[[np.ndarray], np.ndarray],
                   inputs: list[np.ndarray], targets: np.ndarray, progress: bool) -> dict:
    """Metrics of a recommender that returns a list of item ids per input session."""
    ranks = np.empty(len(targets), dtype=np.int64)
    for i, (x, t) in enumerate(_progress(zip(inputs, targets), name, progress, len(targets))):
        ranks[i] = list_rank(recommend(x), t)
    return {"method": name, **ranking_metrics(ranks), "n": len(targets)}


class MemoEncoder:
    """The SDK's encoder with its answers kept per session (rows -> query vector), so
    evaluating many SDK settings on the same sessions runs the ONNX model once per session."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.memo: dict[bytes, np.ndarray] = {}

    def __call__(self, rows: np.ndarray, item_emb: np.ndarray) -> np.ndarray:
        key = rows.tobytes()
        query = self.memo.get(key)
        if query is None:
            query = self.memo[key] = self.encoder(rows, item_emb)
        return query


def latency(call: Callable[[np.ndarray], object], inputs: list[np.ndarray]) -> dict:
    """Median and p99 (µs) of ``call`` over ``inputs``, one timed call each."""
    times = np.empty(len(inputs))
    clock = time.perf_counter
    for i, x in enumerate(inputs):
        t0 = clock()
        call(x)
        times[i] = clock() - t0
    return {"latency_median_us": round(float(np.median(times)) * 1e6, 1),
            "latency_p99_us": round(float(np.percentile(times, 99)) * 1e6, 1),
            "latency_calls": len(inputs)}


def full_catalog_ranks_sdk_query(rec, inputs, targets, progress: bool) -> np.ndarray:
    """Rank of the target among all items scored with the SDK's own query vector."""
    matrix = np.asarray(rec._served.bundle.item_matrix, dtype=np.float32)
    ids = rec._served.bundle.ids
    target_rows = ids.rows(ids.coerce(targets))
    ranks = np.full(len(targets), 10**9, dtype=np.int64)
    for i, x in enumerate(_progress(inputs, "full-sdk-query", progress)):
        q = rec.query(x)
        if q is None or target_rows[i] < 0:
            continue
        scores = matrix @ q
        ranks[i] = int((scores > scores[target_rows[i]]).sum())
    return ranks


def full_catalog_ranks_torch(checkpoint: str | Path, inputs, targets, progress: bool
                             ) -> np.ndarray:
    """The torch model's own ranking over the whole catalog, with its training-time session
    handling (last 20 items, same-category filter if trained so)."""
    from .train import load_checkpoint, make_eval_examples, rank_targets

    model, catalog, config = load_checkpoint(checkpoint)
    sessions = [np.concatenate([catalog.rows(x), catalog.rows(np.array([t]))])
                for x, t in zip(inputs, targets)]
    x_rows, t_rows = make_eval_examples(sessions, catalog, config["train_config"])
    ranks = rank_targets(model, x_rows, t_rows, progress=progress)
    return np.where(ranks >= catalog.n_items, 10**9, ranks)


def evaluate(bundle: str | Path, test_csv: str | Path, *, train_csv: str | Path | None = None,
             checkpoint: str | Path | None = None, limit: int | None = None,
             sweep: Sequence[int] = SWEEP, latency_sessions: int = LATENCY_SESSIONS,
             progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """All rows of the evaluation table, as {"rows": [...], "info": {...}}."""
    from sessrec_sdk import Recommender

    rec = Recommender.load(bundle)
    kind = rec.manifest["model"]["kind"]
    inputs, targets = load_test_examples(test_csv)
    if limit:
        inputs, targets = inputs[:limit], targets[:limit]
    n = len(targets)
    rows: list[dict] = []
    info = {"bundle": str(Path(bundle).resolve()), "test": str(test_csv), "n_sessions": n,
            "defaults": rec.manifest["defaults"], "inference": rec.manifest["inference"],
            "unknown_targets": int((rec._served.bundle.ids.rows(targets) < 0).sum()),
            "latency_sessions": min(latency_sessions, n)}

    def add(row: dict) -> None:
        rows.append(row)
        log(format_row(row))

    log(header())
    popular = rec.item_ids[np.asarray(rec._served.bundle.popularity[:max(KS)])]
    add(evaluate_lists("popularity", lambda x: popular, inputs, targets, False))
    if train_csv:
        baseline = TransitionBaseline(D.sessionize(D.read_events(train_csv)))
        add(evaluate_lists("transition", lambda x: baseline.recommend(x, max(KS)),
                           inputs, targets, progress))
    if checkpoint:
        ranks = full_catalog_ranks_torch(checkpoint, inputs, targets, progress)
        add({"method": f"{kind}/full", **ranking_metrics(ranks), "n": n})
    served = rec._served
    encoder, memo = served.encoder, MemoEncoder(served.encoder)
    served.encoder = memo  # evaluation only: this Recommender is private to evaluate()
    ranks = full_catalog_ranks_sdk_query(rec, inputs, targets, progress)
    add({"method": f"{kind}/full-sdk-query", **ranking_metrics(ranks), "n": n})

    k = max(KS)
    timed = inputs[:latency_sessions]

    def sdk_row(name: str, **options) -> None:
        def call(x):
            return rec.recommend(x, k=k, **options).item_ids
        served.encoder = encoder  # latency: whole calls, encoder included
        for x in timed[:200]:  # warm caches and code paths before anything is timed
            call(x)
        lat = latency(call, timed)
        served.encoder = memo
        add({**evaluate_lists(name, call, inputs, targets, progress), **lat})

    sdk_row(f"{kind}/sdk")
    filters = ("last", "session", "none") if rec.manifest["has_categories"] else ("none",)
    for f in filters:
        sdk_row(f"{kind}/sdk/{f}", category_filter=f)
    width = rec.manifest["neighbors_per_item"]
    skipped = [m for m in sweep if m > width]
    if skipped:
        log(f"(sweep: neighbors {skipped} skipped, the bundle has K={width}; export with "
            f"--neighbors {max(sweep)} for the whole curve)")
    for m in (m for m in sweep if m <= width):
        sdk_row(f"{kind}/sdk/neighbors={m}", neighbors=m)
    served.encoder = encoder
    return {"rows": rows, "info": info}


# ------------------------------------------------------------------------ output


COLUMNS = [f"{m}@{k}" for k in KS for m in ("HR", "MRR", "NDCG")]


def header() -> str:
    cols = "".join(f"{c:>9}" for c in COLUMNS)
    return f"{'method':<32}{cols}{'median us':>11}{'p99 us':>9}"


def format_row(row: dict) -> str:
    cols = "".join(f"{row[c]:>9.4f}" for c in COLUMNS)
    lat = row.get("latency_median_us")
    p99 = row.get("latency_p99_us")
    lat_s = f"{lat:>11.1f}{p99:>9.1f}" if lat is not None else f"{'':>11}{'':>9}"
    return f"{row['method']:<32}{cols}{lat_s}"


def plot(result: dict, path: str | Path) -> None:
    """Accuracy and latency against neighbors per item (the GRAINRec trade-off curve)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in result["rows"] if "/sdk/neighbors=" in r["method"]]
    if not sweep:
        raise ValueError("no neighbors sweep in the result to plot")
    xs = [int(r["method"].rsplit("=", 1)[1]) for r in sweep]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(xs, [r["HR@20"] for r in sweep], "o-", label="HR@20")
    ax.plot(xs, [r["MRR@20"] for r in sweep], "s-", label="MRR@20")
    full = [r for r in result["rows"] if r["method"].endswith("/full")]
    for r in full:
        ax.axhline(r["HR@20"], ls="--", color="C0", lw=0.8, label="HR@20 full catalog")
    ax.set_xlabel("neighbors per session item")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["latency_median_us"] for r in sweep], "^:", color="C3",
             label="median latency")
    ax2.set_ylabel("recommend() median latency (µs)")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title(f"Accuracy and latency vs neighbors per item ({result['info']['n_sessions']:,}"
                 " test sessions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sessrec evaluate", description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--test", required=True, help="test event CSV (last event = target)")
    p.add_argument("--train", help="training event CSV, for the transition baseline "
                   "(default: the checkpoint's)")
    p.add_argument("--checkpoint", help="checkpoint directory, for the full-catalog row")
    p.add_argument("--json", help="write {'rows': [...], 'info': {...}} here")
    p.add_argument("--plot", help="write a PNG of accuracy and latency vs neighbors")
    p.add_argument("--limit", type=int, help="evaluate only the first N test sessions")
    p.add_argument("--latency-sessions", type=lambda v: max(1, int(v)), default=LATENCY_SESSIONS,
                   help=f"timed recommend() calls per SDK row (default {LATENCY_SESSIONS})")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train_csv = args.train
    if train_csv is None and args.checkpoint:
        cfg = json.loads((Path(args.checkpoint) / "config.json").read_text())
        train_csv = cfg.get("data", {}).get("train")
    t0 = time.perf_counter()
    result = evaluate(args.bundle, args.test, train_csv=train_csv, checkpoint=args.checkpoint,
                      limit=args.limit, latency_sessions=args.latency_sessions,
                      progress=not args.no_progress and sys.stderr.isatty())
    result["info"]["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    print(f"({result['info']['n_sessions']:,} sessions, {result['info']['unknown_targets']} "
          f"targets unknown to the bundle; {result['info']['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
