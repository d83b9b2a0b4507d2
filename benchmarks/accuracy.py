"""HR@20 (and MRR@20) on the Diginetica test sessions for sessrec and the alternatives, so
that report.py can put accuracy next to latency in one table.

Protocol (docs/architecture.md, export_tools.evaluate): for every test session the last event is the
target and the events before it are the input; targets unknown to the bundle stay in the
denominator as misses. Every method uses the same session vector (the bundle's encoder on
the bundle's session handling: last ``max_session_length`` items, session filter):

* sessrec: ``Recommender.recommend(x, k=20)`` with the bundle's defaults (candidates = the
  neighbors of the session items, default category filter, neighbors per item);
* full catalog: ``query @ item_matrix.T`` over every item, the top 20 (what the
  full-catalog ONNX and numpy alternatives return);
* faiss HNSW (M=32, efConstruction=40) at each efSearch of the profile.

When the bundle's default excludes session items, the full-catalog and HNSW lists drop
them too (they ask for 20 + session length and filter), so every method plays by the same
rule.

    python -m benchmarks.accuracy --out accuracy.json [--limit N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common as C

K = 20


def _metrics(ranks: np.ndarray) -> dict:
    hit = ranks < K
    n = max(len(ranks), 1)
    return {"HR@20": float(hit.sum() / n), "MRR@20": float((1.0 / (ranks[hit] + 1)).sum() / n)}


def _rank(lst: np.ndarray, target) -> int:
    pos = np.flatnonzero(lst[:K] == target)
    return int(pos[0]) if pos.size else 10**9


def _drop_session(top_rows: np.ndarray, rows: np.ndarray, exclude: bool) -> np.ndarray:
    if exclude and rows.size:
        top_rows = top_rows[~np.isin(top_rows, rows)]
    return top_rows[:K]


def run(p: C.Profile, bundle: Path | None = None, limit: int | None = None) -> dict:
    from benchmarks.alternatives import Hnsw
    from export_tools.data import load_diginetica
    from sessrec_sdk import Recommender

    bundle = bundle or C.grainrec_bundle()
    if bundle is None:
        return {"skipped": C.grainrec_missing_message()}
    t_start = time.perf_counter()
    rec = Recommender.load(bundle, verify=False)
    b = rec.bundle
    exclude = bool(rec.manifest["defaults"]["exclude_session_items"])
    _, test, _ = load_diginetica()
    sessions = [s for s in test if len(s) >= 2]
    if limit:
        sessions = sessions[:limit]
    inputs = [s[:-1] for s in sessions]
    targets = np.array([s[-1] for s in sessions], dtype=np.int64)
    target_rows = b.ids.rows(targets)
    n = len(targets)

    # the session vectors (one encoder run per session) and the session rows
    d = rec.manifest["dim"]
    queries = np.zeros((n, d), dtype=np.float32)
    has_query = np.zeros(n, dtype=bool)
    session_rows = []
    for i, x in enumerate(inputs):
        q = rec.query(x)
        known = b.ids.rows(b.ids.coerce(x))
        session_rows.append(known[known >= 0])
        if q is not None:
            queries[i], has_query[i] = q, True
    pop_rows = np.asarray(b.popularity[:K + 50])

    def ranks_of(top_lists) -> np.ndarray:
        return np.array([_rank(lst, t) if t >= 0 else 10**9
                         for lst, t in zip(top_lists, target_rows)], dtype=np.int64)

    rows_out = []
    # sessrec with the bundle's defaults
    t0 = time.perf_counter()
    sdk = [b.ids.rows(rec.recommend(x, k=K).item_ids) for x in inputs]
    rows_out.append({"method": "sessrec", "detail": "bundle defaults: "
                     + ", ".join(f"{k}={v}" for k, v in rec.manifest["defaults"].items()),
                     **_metrics(ranks_of(sdk)), "seconds": time.perf_counter() - t0})

    # full catalog: exact top-k over every item (batched; identical lists to a per-call run)
    t0 = time.perf_counter()
    matrix = np.asarray(b.item_matrix, dtype=np.float32)
    bias = None if b.item_bias is None else np.asarray(b.item_bias)
    extra = max((len(r) for r in session_rows), default=0) if exclude else 0
    want = K + extra
    full = []
    for start in range(0, n, 512):
        scores = queries[start:start + 512] @ matrix.T
        if bias is not None:
            scores += bias
        top = np.argpartition(-scores, want, axis=1)[:, :want]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        for j in range(len(top)):
            i = start + j
            full.append(_drop_session(top[j], session_rows[i], exclude) if has_query[i]
                        else pop_rows[:K])
    rows_out.append({"method": "full-catalog", "detail": "query @ item_matrix.T, exact top-20",
                     **_metrics(ranks_of(full)), "seconds": time.perf_counter() - t0})

    # HNSW at each efSearch
    hnsw = Hnsw(rec, p.hnsw_M, p.hnsw_ef_construction, p.hnsw_ef_search)
    for ef in sorted({p.hnsw_ef_search, *p.hnsw_ef_sweep}):
        hnsw.set_ef(max(ef, want))
        t0 = time.perf_counter()
        _, idx = hnsw.index.search(queries, want)
        lists = [_drop_session(idx[i][idx[i] >= 0], session_rows[i], exclude) if has_query[i]
                 else pop_rows[:K] for i in range(n)]
        agree = float(np.mean([len(np.intersect1d(a, f)) / K for a, f in zip(lists, full)]))
        rows_out.append({"method": "faiss HNSW", "ef_search": ef, "effective_ef": max(ef, want),
                         "detail": f"M={p.hnsw_M}, efConstruction={p.hnsw_ef_construction}, "
                                   f"efSearch={ef}",
                         **_metrics(ranks_of(lists)), "recall@20_vs_full": agree,
                         "seconds": time.perf_counter() - t0})
    hnsw.set_ef(p.hnsw_ef_search)
    m = rec.manifest
    return {
        "bundle": str(Path(bundle).resolve()), "model": m["model"]["kind"],
        "n_items": m["n_items"], "dim": m["dim"], "K": m["neighbors_per_item"],
        "defaults": m["defaults"], "inference": m["inference"],
        "n_sessions": n, "unknown_targets": int((target_rows < 0).sum()),
        "no_known_item_sessions": int((~has_query).sum()),
        "exclude_session_items": exclude, "rows": rows_out,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__)
    ap.add_argument("--profile", choices=sorted(C.PROFILES), default="full")
    ap.add_argument("--bundle", type=Path, help="default: $SESSREC_BENCH_BUNDLE or "
                                                 "runs/fast/bundle")
    ap.add_argument("--limit", type=int, help="only the first N test sessions")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    p = C.PROFILES[args.profile]
    result = run(p, args.bundle, args.limit or p.accuracy_limit)
    if "skipped" in result:
        C.log(result["skipped"])
    else:
        for r in result["rows"]:
            C.log(f"{r['method']:<14} {r.get('ef_search', ''):>4} HR@20 {r['HR@20']:.4f} "
                  f"MRR@20 {r['MRR@20']:.4f}")
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
