"""Turn one run's JSON files into BENCHMARKS.md and a PNG plot.

Inputs: the pytest-benchmark JSON (``--benchmark-json``; it holds every round's time, from
which p99 is computed), memory.json (benchmarks/memory.py), accuracy.json
(benchmarks/accuracy.py) and meta.json (machine, load average, commands; written by
benchmarks/run.py). Every figure in the report is read from these files.

    python -m benchmarks.report --results benchmarks/results --out BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

QUIET_LOAD = 0.5
QUIET_OTHER_CORES = 0.25
UNCONTENDED = 1.25  # a round counts as uncontended if its host probe is within 25% of the best


# --------------------------------------------------------------------------- loading


class Bench:
    def __init__(self, raw: dict):
        self.name = raw["name"]
        self.info = raw.get("extra_info", {})
        stats = raw["stats"]
        data = np.asarray(stats.get("data") or [stats["median"]], dtype=np.float64)
        self.data = data
        self.rounds = int(stats["rounds"])
        self.median = float(np.median(data))
        self.p90 = float(np.percentile(data, 90))
        self.p99 = float(np.percentile(data, 99))
        self.mean = float(stats["mean"])

    def __getitem__(self, key):
        return self.info.get(key)

    def host_slowdown(self, baseline: float | None) -> float | None:
        """Median host probe of this benchmark over the run's uncontended probe time."""
        probes = self["host_probe_us"]
        return float(np.median(probes)) / baseline if probes and baseline else None

    def uncontended(self, baseline: float | None) -> tuple[float, float] | None:
        """(median of the rounds whose nearest host probe was uncontended, their share)."""
        probes, every = self["host_probe_us"], self["probe_every"]
        if not probes or not every or baseline is None or len(self.data) < 2:
            return None
        probe = np.asarray(probes)[np.minimum(np.arange(len(self.data)) // every,
                                              len(probes) - 1)]
        ok = probe <= UNCONTENDED * baseline
        return (float(np.median(self.data[ok])) if ok.any() else None), float(ok.mean())


def host_baseline(benches: list[Bench]) -> float | None:
    """The run's uncontended probe time: the 5th percentile of every host probe."""
    probes = [p for b in benches for p in (b["host_probe_us"] or [])]
    return float(np.percentile(probes, 5)) if probes else None


def load_benches(path: Path) -> list[Bench]:
    if not path.is_file():
        return []
    return [Bench(b) for b in json.loads(path.read_text())["benchmarks"]]


def find(benches: list[Bench], **match) -> Bench | None:
    for b in benches:
        if all(b[k] == v for k, v in match.items()):
            return b
    return None


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- formatting


def t(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    us = seconds * 1e6
    if us < 1000:
        return f"{us:.1f} µs" if us < 100 else f"{us:.0f} µs"
    ms = us / 1000
    if ms < 1000:
        return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    return f"{r:,.0f}×" if r >= 10 else f"{r:.2f}×"


def pct(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{100 * a / b:.0f}%"


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def items(n) -> str:
    if not isinstance(n, int):
        return str(n)
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


TRAFFIC = ("uniform", "popular")
TRAFFIC_NAME = {"uniform": "uniform-random sessions", "popular": "popularity-weighted sessions",
                "test": "Diginetica test sessions"}


# --------------------------------------------------------------------------- sections


def headline(benches, meta) -> tuple[str, dict]:
    """The closing-note figures at the reference point, per traffic kind."""
    ref = meta["profile"]["ref"]
    n = ref["n_items"]
    ef = meta["profile"]["hnsw_ef_search"]
    figures: dict = {}
    rows = []
    base = host_baseline(benches)
    for traffic in TRAFFIC:
        s = find(benches, axis="reference", traffic=traffic)
        onnx = find(benches, suite="alternatives", axis="catalog size",
                    method="full-catalog ONNX", n_items=n, traffic=traffic)
        npy = find(benches, suite="alternatives", axis="catalog size",
                   method="full-catalog numpy", n_items=n, traffic=traffic)
        hnsw = find(benches, suite="alternatives", axis="catalog size", method="faiss HNSW",
                    n_items=n, traffic=traffic)
        rec = find(benches, suite="stages", bundle="reference", traffic=traffic,
                   stage="recommend")
        ker = find(benches, suite="stages", bundle="reference", traffic=traffic, stage="kernel")
        hot = find(benches, suite="stages", bundle="reference", traffic=traffic,
                   stage="kernel, hot")
        floor = find(benches, suite="stages", bundle="reference", traffic=traffic,
                     stage="numpy matmul floor")
        gather = find(benches, suite="stages", bundle="reference", traffic=traffic,
                      stage="numpy gather floor")
        floor_hot = find(benches, suite="stages", bundle="reference", traffic=traffic,
                         stage="numpy matmul floor, hot")
        variant = {(which, stage): find(benches, suite="stages", bundle=which, traffic=traffic,
                                        stage=stage)
                   for which in ("float16 item matrix", "given row order")
                   for stage in ("recommend", "kernel")}

        def med(b):
            return None if b is None else b.median

        f = {
            "sessrec_median": med(s), "sessrec_p99": None if s is None else s.p99,
            "full_onnx_median": med(onnx), "full_numpy_median": med(npy),
            "hnsw_median": med(hnsw),
            "full_onnx_over_sessrec": (med(onnx) / med(s)) if s and onnx else None,
            "full_numpy_over_sessrec": (med(npy) / med(s)) if s and npy else None,
            "hnsw_over_sessrec": (med(hnsw) / med(s)) if s and hnsw else None,
            "kernel_median": med(ker), "recommend_median_stage_run": med(rec),
            "kernel_share_isolated": (med(ker) / med(rec)) if ker and rec else None,
            "kernel_share_in_call": None, "floor_median": med(floor),
            "floor_hot_median": med(floor_hot), "kernel_hot_median": med(hot),
            "gather_floor_median": med(gather),
            "candidates": None if s is None else s["candidates"],
            "host_slowdown": None if s is None else s.host_slowdown(base),
            "sessrec_uncontended": None if s is None else s.uncontended(base),
            "kernel_host_slowdown": None if ker is None else ker.host_slowdown(base),
            "kernel_uncontended": None if ker is None else ker.uncontended(base),
            "f16_recommend_median": med(variant["float16 item matrix", "recommend"]),
            "f16_kernel_median": med(variant["float16 item matrix", "kernel"]),
            "given_recommend_median": med(variant["given row order", "recommend"]),
            "given_kernel_median": med(variant["given row order", "kernel"]),
        }
        if rec is not None and rec["in_call"]:
            ic = rec["in_call"]
            f["kernel_share_in_call"] = ic["kernel"] / ic["total"]
            f["kernel_in_call_median"] = ic["kernel"]
        figures[traffic] = f
        rows.append((traffic, f))

    def col(fn):
        return [fn(f) for _, f in rows]

    lines = table(
        ["figure", *[TRAFFIC_NAME[tr] for tr, _ in rows]],
        [
            ["sessrec recommend(): median", *col(lambda f: t(f["sessrec_median"]))],
            ["sessrec recommend(): p99", *col(lambda f: t(f["sessrec_p99"]))],
            ["host slowdown during those rounds (host probe, see below)",
             *col(lambda f: slowdown(f["host_slowdown"]))],
            ["sessrec recommend(): median of the uncontended rounds (their share)",
             *col(lambda f: uncontended(f["sessrec_uncontended"]))],
            ["candidates scored per call (mean)",
             *col(lambda f: "–" if f["candidates"] is None else f"{f['candidates']:.0f}")],
            ["full-catalog ONNX (encoder + Gemm + TopK): median",
             *col(lambda f: t(f["full_onnx_median"]))],
            ["full-catalog numpy (matvec + argpartition): median",
             *col(lambda f: t(f["full_numpy_median"]))],
            [f"faiss HNSW (M=32, efSearch={ef}): median", *col(lambda f: t(f["hnsw_median"]))],
            ["**full-catalog ONNX / sessrec**",
             *col(lambda f: ratio(f["full_onnx_median"], f["sessrec_median"]))],
            ["full-catalog numpy / sessrec",
             *col(lambda f: ratio(f["full_numpy_median"], f["sessrec_median"]))],
            ["**HNSW / sessrec**",
             *col(lambda f: ratio(f["hnsw_median"], f["sessrec_median"]))],
            ["kernel alone (`kernel.top_k`): median", *col(lambda f: t(f["kernel_median"]))],
            ["kernel alone: host slowdown / median of the uncontended rounds (share)",
             *col(lambda f: f"{slowdown(f['kernel_host_slowdown'])} / "
                  f"{uncontended(f['kernel_uncontended'])}")],
            ["kernel share of a call (isolated kernel / whole call, same pool)",
             *col(lambda f: pct(f["kernel_median"], f["recommend_median_stage_run"]))],
            ["kernel share of a call (timed inside the calls)",
             *col(lambda f: "–" if f["kernel_share_in_call"] is None
                  else f"{100 * f['kernel_share_in_call']:.0f}%")],
            ["numpy `matrix.take(rows) @ q` over the same rows, from the mapped matrix "
             "(random-read floor)", *col(lambda f: t(f["gather_floor_median"]))],
            ["kernel / that floor",
             *col(lambda f: ratio(f["kernel_median"], f["gather_floor_median"]))],
            ["numpy `block @ q` over the same rows, pre-gathered contiguous, out of cache "
             "(streaming floor)", *col(lambda f: t(f["floor_median"]))],
            ["kernel / that floor", *col(lambda f: ratio(f["kernel_median"], f["floor_median"]))],
            ["same matmul, cache-hot block / kernel, cache-hot rows",
             *col(lambda f: f"{t(f['floor_hot_median'])} / {t(f['kernel_hot_median'])}")],
            ["same catalog, float16 item matrix: recommend() (stage run) / kernel alone",
             *col(lambda f: f"{t(f['f16_recommend_median'])} / {t(f['f16_kernel_median'])}")],
            ["same catalog, rows in drawn order: recommend() (stage run) / kernel alone",
             *col(lambda f: f"{t(f['given_recommend_median'])} / "
                  f"{t(f['given_kernel_median'])}")],
        ])
    return lines, figures


def slowdown(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def uncontended(u: tuple[float | None, float] | None) -> str:
    if u is None:
        return "–"
    med, share = u
    return f"{t(med) if med is not None else '–'} ({share:.0%})"


def targets_text(figures: dict, accuracy: dict | None) -> str:
    out = []
    for traffic in TRAFFIC:
        f = figures.get(traffic, {})
        rec, ker = f.get("sessrec_median"), f.get("kernel_median")
        if rec is not None and ker is not None:
            u_rec, u_ker = f.get("sessrec_uncontended"), f.get("kernel_uncontended")
            out.append(
                f"- {TRAFFIC_NAME[traffic]}: recommend() median {t(rec)} (target ≤ 150 µs: "
                f"{'met' if rec <= 150e-6 else 'NOT met'}); kernel alone {t(ker)} (target "
                f"≤ 30 µs: {'met' if ker <= 30e-6 else 'NOT met'}). Over the rounds with an "
                f"uncontended host: recommend() {uncontended(u_rec)}, kernel "
                f"{uncontended(u_ker)}.")
        f16_rec, f16_ker = f.get("f16_recommend_median"), f.get("f16_kernel_median")
        if f16_rec is not None and f16_ker is not None:
            out.append(
                f"- {TRAFFIC_NAME[traffic]}, the same catalog with a float16 item matrix "
                f"(stage runs): recommend() median {t(f16_rec)} (≤ 150 µs: "
                f"{'met' if f16_rec <= 150e-6 else 'NOT met'}); kernel alone {t(f16_ker)} "
                f"(≤ 30 µs: {'met' if f16_ker <= 30e-6 else 'NOT met'}).")
        full = f.get("full_onnx_over_sessrec")
        hn = f.get("hnsw_over_sessrec")
        if full is not None:
            out.append(f"- {TRAFFIC_NAME[traffic]}: full-catalog ONNX takes "
                       f"{ratio(full, 1.0)} sessrec's time (target ≥ 100×: "
                       f"{'met' if full >= 100 else 'NOT met'}); "
                       + (f"HNSW takes {ratio(hn, 1.0)} (target > 1×: "
                          f"{'met' if hn > 1 else 'NOT met'})." if hn is not None else ""))
    if accuracy and "rows" in accuracy:
        s = next(r for r in accuracy["rows"] if r["method"] == "sessrec")
        best = [r for r in accuracy["rows"] if r["method"] == "faiss HNSW"]
        if best:
            h = max(best, key=lambda r: r["HR@20"])
            verdict = "equal or better: met" if s["HR@20"] >= h["HR@20"] else "lower: NOT met"
            out.append(f"- Diginetica HR@20: sessrec {s['HR@20']:.4f} vs the best HNSW "
                       f"setting {h['HR@20']:.4f} (efSearch={h['ef_search']}): {verdict}.")
    return "\n".join(out)


def accuracy_section(benches, accuracy: dict | None) -> str:
    if accuracy is None:
        return "_accuracy.json missing: `python -m benchmarks.accuracy` was not run._"
    if "skipped" in accuracy:
        return f"_Skipped: {accuracy['skipped']}._"
    lat = {}
    for b in benches:
        if b["suite"] == "grainrec" and b["traffic"] == "test":
            key = b["method"] if b["method"] != "faiss HNSW" else f"faiss HNSW@{b['ef_search']}"
            lat[key] = b
    rows = []
    for r in accuracy["rows"]:
        key = r["method"]
        if key == "faiss HNSW":
            key = f"faiss HNSW@{r['ef_search']}"
            name = f"faiss HNSW, efSearch={r['ef_search']}"
        elif key == "full-catalog":
            name = "full catalog (ONNX / numpy: same list)"
        else:
            name = "sessrec (bundle defaults)"
        if r["method"] == "full-catalog":
            lats = [lat.get("full-catalog ONNX"), lat.get("full-catalog numpy")]
            med = " / ".join(t(b.median) if b else "–" for b in lats)
            p99 = " / ".join(t(b.p99) if b else "–" for b in lats)
        else:
            b = lat.get(key)
            med, p99 = (t(b.median), t(b.p99)) if b else ("not timed", "–")
        rec = r.get("recall@20_vs_full")
        rows.append([name, f"{r['HR@20']:.4f}", f"{r['MRR@20']:.4f}",
                     "–" if rec is None else f"{rec:.3f}", med, p99])
    head = (f"GRAINRec bundle `{accuracy['bundle']}` ({accuracy['n_items']:,} items, "
            f"d={accuracy['dim']}, K={accuracy['K']}); {accuracy['n_sessions']:,} Diginetica "
            f"test sessions ({accuracy['unknown_targets']} targets unknown to the bundle count "
            f"as misses); bundle defaults {json.dumps(accuracy['defaults'])}, session "
            f"handling {json.dumps(accuracy['inference'])}. Every method scores the same "
            "session vector (the bundle's encoder); latency per call over the test sessions, "
            "one thread.")
    return head + "\n\n" + table(
        ["method", "HR@20", "MRR@20", "recall@20 vs full", "median", "p99"], rows)


def sweep_table(benches, axis: str, key: str, fmt=str, alternatives: bool = False) -> str:
    values = []
    for b in benches:
        if b["suite"] == "latency" and b["axis"] == axis and b[key] not in values:
            values.append(b[key])
    if not values:
        return "_not measured in this run_"
    header = [key.replace("_", " ")]
    for tr in TRAFFIC:
        header += [f"{tr}: median", f"{tr}: p99"]
    header += ["candidates (uniform / popular)", "host slowdown (uniform / popular)"]
    if alternatives:
        header += ["full ONNX", "full numpy", "HNSW", "full ONNX / sessrec"]
    rows = []
    base = host_baseline(benches)
    for v in values:
        row = [fmt(v)]
        cands, slow = [], []
        for tr in TRAFFIC:
            b = find(benches, suite="latency", axis=axis, traffic=tr, **{key: v})
            row += [t(b.median), t(b.p99)] if b else ["–", "–"]
            cands.append(f"{b['candidates']:.0f}" if b else "–")
            slow.append(slowdown(b.host_slowdown(base)) if b else "–")
        row.append(" / ".join(cands))
        row.append(" / ".join(slow))
        if alternatives:
            alts = {m: find(benches, suite="alternatives", axis="catalog size", method=m,
                            n_items=v, traffic="uniform")
                    for m in ("full-catalog ONNX", "full-catalog numpy", "faiss HNSW")}
            row += [t(a.median) if a else "–" for a in alts.values()]
            s = find(benches, suite="latency", axis=axis, traffic="uniform", **{key: v})
            a = alts["full-catalog ONNX"]
            row.append(ratio(a.median if a else None, s.median if s else None))
        rows.append(row)
    return table(header, rows)


def alternatives_table(benches) -> str:
    rows = []
    for b in benches:
        if b["suite"] == "alternatives" and b["axis"] == "catalog size":
            rows.append(b)
    if not rows:
        return "_not measured in this run_"
    rows.sort(key=lambda b: (b["n_items"], b["method"], b["traffic"]))

    def note(b):
        if b["method"] != "faiss HNSW" or b["index_mib"] is None:
            return ""
        built = b["build_seconds"]
        rec = b["recall_vs_exact"]
        return ((f"recall@{b['k']} vs exact {rec:.3f}; " if rec is not None else "")
                + f"index {b['index_mib']:,.0f} MiB in RAM"
                + (f", built in {built:,.0f} s on all cores" if built else ""))
    return table(["items", "method", "traffic", "median", "p99", "rounds", ""],
                 [[items(b["n_items"]), b["method"], b["traffic"], t(b.median), t(b.p99),
                   b.rounds, note(b)] for b in rows])


def hostile_table(benches) -> str:
    rows = [b for b in benches if b["suite"] == "hostile"]
    if not rows:
        return "_not measured in this run_"
    base = next((b for b in rows if b["case"] == "short ids"), None)
    return table(["call", "median", "p99", "vs short ids", "rounds"],
                 [[b["case"], t(b.median), t(b.p99),
                   ratio(b.median, base.median) if base else "–", b.rounds] for b in rows])


# Serenade's published latencies (Kersbergen et al., SIGMOD 2022; the repository's README).
SERENADE = {
    "source": "https://github.com/bolcom/serenade (README), Kersbergen et al., SIGMOD 2022",
    "micro_p90_s": 1.7e-3,        # VMIS-kNN (Rust) prediction, micro benchmarks
    "micro_items": 1_760_000,     # ... on training sets of up to this many distinct items
    "micro_interactions": 60_000_000,
    "prod_p90_s": 7e-3,           # deployed service, end to end over HTTP
    "prod_items": 6_500_000,
    "prod_records": 582_000_000,  # training records in the index after pruning
}
SKNN_RESULTS = "sknn_latency.json"  # sknn rows of a separate run (when latency.json has none)
SKNN_SUITE = "sknn bundle"


def sknn_results(results: Path, benches: list[Bench]
                 ) -> tuple[list[Bench], str | None, float | None]:
    """The session-kNN bundle rows, a note on where they come from and the host-probe
    baseline of their run: those of this run's latency.json, else those of
    ``sknn_latency.json`` (a separate run)."""
    return separate_results(results, benches, SKNN_SUITE, SKNN_RESULTS, "the sknn benchmarks")


def separate_results(results: Path, benches: list[Bench], suite: str, filename: str,
                     what: str) -> tuple[list[Bench], str | None, float | None]:
    """The rows of ``suite``, a note on where they come from and the host-probe baseline
    of their run: those of this run's latency.json, else those of ``filename`` in
    ``results`` (a separate run of ``what``)."""
    rows = [b for b in benches if b["suite"] == suite]
    if rows:
        return rows, None, host_baseline(benches)
    path = results / filename
    if not path.is_file():
        return [], None, None
    raw = json.loads(path.read_text())
    everything = [Bench(x) for x in raw["benchmarks"]]
    rows = [b for b in everything if b["suite"] == suite]
    commit = raw.get("commit_info", {})
    dirty = " with local changes" if commit.get("dirty") else ""
    when = str(raw.get("datetime", "?"))[:16].replace("T", " ")
    note = (f"These rows come from a separate run of {what}, "
            f"`benchmarks/results/{filename}` ({when} UTC, commit "
            f"{str(commit.get('id', '?'))[:7]}{dirty}), not the run above; their host "
            "slowdown is against that run's own probes.")
    load = rows[0]["loadavg_before"] if rows else None
    if load:
        note += f" 1-minute load average {load[0]:.2f} when it started."
    return rows, note, host_baseline(everything)


def sknn_section(rows: list[Bench], note: str | None, base: float | None
                 ) -> tuple[str, dict]:
    if not rows:
        return ("_No session-kNN rows: run `python -m pytest benchmarks/test_sknn_latency.py` "
                "(see docs/benchmarks.md)._"), {}
    traffic = {"test": "test sessions (all events but the last)",
               "index": "sessions of its own index"}
    table_rows, figures = [], {"rows": []}
    for b in rows:
        slow, unc = b.host_slowdown(base), b.uncontended(base)
        table_rows.append([
            b["bundle"], items(b["n_items"]), f"{b['n_sessions']:,}",
            f"{b['sample']} / {b['neighbors']} / {b['window']}",
            traffic.get(b["traffic"], b["traffic"]), f"{b['mean_session_len']:.1f}",
            b["backend"], t(b.median), t(b.p90), t(b.p99), slowdown(slow), uncontended(unc),
            f"{b['candidates']:.0f}", b.rounds])
        figures["rows"].append({"bundle": b["bundle"], "n_items": b["n_items"],
                                "median_s": b.median, "p90_s": b.p90, "p99_s": b.p99,
                                "host_slowdown": slow, "uncontended": unc,
                                "candidates": b["candidates"], "rounds": b.rounds})
    lines = [
        "`Recommender.recommend()` on session-kNN bundles (scorer `sknn`, VMIS-kNN as in "
        "Serenade) with each bundle's defaults (k, neighbor sessions, window, repeat "
        "handling), one thread. Trained bundles answer their own test sessions; the "
        "synthetic ones (`export_tools/synthetic.py`: Zipf-like item popularity, sessions "
        "of 2-20 events, idf weights) answer sessions drawn from their own index. "
        "m = each item's most recent sessions in the index and the candidate sessions of "
        "a call, k = neighbor sessions, window = session items read; candidates = items "
        "scored per call (mean).",
        "",
        *([note, ""] if note else []),
        table(["bundle", "items", "sessions indexed", "m / k / window", "queries",
               "mean session items", "backend", "median", "p90", "p99", "host slowdown",
               "median of the uncontended rounds (share)", "candidates", "rounds"],
              table_rows),
    ]
    sr = SERENADE
    big = next((b for b in rows if str(b["bundle"]).startswith("synthetic")
                and b["n_items"] == sr["prod_items"]), None)
    near = max((b for b in rows if str(b["bundle"]).startswith("synthetic")
                and 1_000_000 <= b["n_items"] <= 2 * sr["micro_items"]),
               key=lambda b: b["n_items"], default=None)
    if big is not None or near is not None:
        lines += ["", "**Against Serenade's published figures** "
                  f"({sr['source']}). Serenade reports a p90 of VMIS-kNN prediction (Rust) "
                  f"below {t(sr['micro_p90_s'])} in micro benchmarks on training sets of up to "
                  f"{sr['micro_interactions'] / 1e6:.0f}M interactions and "
                  f"{sr['micro_items'] / 1e6:.2f}M items, and, for its production catalog of "
                  f"{sr['prod_items'] / 1e6:.1f}M items ({sr['prod_records'] / 1e6:.0f}M "
                  f"training records in the index), a p90 below {t(sr['prod_p90_s'])} end to "
                  "end (HTTP, network, session store, business rules). Their data and "
                  "machines are private: these are not the same catalog, sessions, index "
                  "size, setting or hardware, so the ratios below are orders of magnitude, "
                  "not a like-for-like comparison.", ""]
        if big is not None:
            figures["serenade_6_5m"] = {"p90_s": big.p90, "over_1_7ms": big.p90 /
                                        sr["micro_p90_s"], "over_7ms": big.p90 /
                                        sr["prod_p90_s"]}
            lines.append(
                f"- synthetic {sr['prod_items'] / 1e6:.1f}M-item catalog "
                f"({big['n_sessions']:,} sessions indexed): recommend() p90 {t(big.p90)}, "
                f"{ratio(big.p90, sr['micro_p90_s'])} Serenade's {t(sr['micro_p90_s'])} "
                f"micro-benchmark p90 (measured on at most {sr['micro_items'] / 1e6:.2f}M "
                f"items) and {ratio(big.p90, sr['prod_p90_s'])} its "
                f"{t(sr['prod_p90_s'])} end-to-end p90 at {sr['prod_items'] / 1e6:.1f}M items "
                "(which includes the HTTP round trip; ours is the in-process call alone); "
                f"host slowdown {slowdown(big.host_slowdown(base))} during those rounds.")
        if near is not None and near is not big:
            figures["serenade_near_micro"] = {"n_items": near["n_items"], "p90_s": near.p90,
                                              "over_1_7ms": near.p90 / sr["micro_p90_s"]}
            lines.append(
                f"- synthetic {items(near['n_items'])}-item catalog (the size closest to "
                f"Serenade's micro benchmarks): p90 {t(near.p90)}, "
                f"{ratio(near.p90, sr['micro_p90_s'])} their {t(sr['micro_p90_s'])}.")
    return "\n".join(lines), figures


POLICY_RESULTS = "policy_latency.json"  # candidate-policy rows of a separate run
POLICY_SUITE = "candidate policy"


def policy_results(results: Path, benches: list[Bench]
                   ) -> tuple[list[Bench], str | None, float | None]:
    """The candidate-policy rows (benchmarks/test_policy_latency.py): those of this run's
    latency.json, else those of ``policy_latency.json`` (a separate run)."""
    return separate_results(results, benches, POLICY_SUITE, POLICY_RESULTS,
                            "`benchmarks/test_policy_latency.py`")


def _call(b: Bench) -> str:
    opts = b["options"] or {}
    if not opts:
        return "defaults"
    return ", ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}"
                     for k, v in opts.items())


def _contention(rows: list[Bench], base: float | None) -> str:
    """Load average, other processes' cores and host slowdown over a set of rows."""
    load = [b["loadavg_before"][0] for b in rows if b["loadavg_before"]]
    other = [b["other_cpu_cores"] for b in rows if b["other_cpu_cores"] is not None]
    slow = [x for x in (b.host_slowdown(base) for b in rows) if x is not None]
    share = [u[1] for u in (b.uncontended(base) for b in rows) if u is not None]
    parts = []
    if load:
        span = (f"{min(load):.2f}" if min(load) == max(load)
                else f"{min(load):.2f}-{max(load):.2f}")
        parts.append(f"1-minute load average {span} before the rows")
    if other:
        parts.append(f"other processes kept {np.median(other):.2f} cores busy (median; max "
                     f"{max(other):.2f}) of {os.cpu_count()} during the timed rounds")
    if slow:
        parts.append(f"host slowdown {min(slow):.2f}-{max(slow):.2f}×")
    if share:
        parts.append(f"{min(share):.0%}-{max(share):.0%} of the rounds uncontended")
    return ("Contention during these rows: " + "; ".join(parts) + ".") if parts else ""


def policy_section(rows: list[Bench], note: str | None, base: float | None
                   ) -> tuple[str, dict]:
    if not rows:
        return ("_No candidate-policy rows: run `python -m pytest "
                "benchmarks/test_policy_latency.py` (see docs/benchmarks.md)._"), {}
    figures = {"rows": []}

    def cells(b: Bench) -> list:
        unc = b.uncontended(base)
        figures["rows"].append({
            "bundle": b["bundle"], "call": _call(b), "policy": b["policy"],
            "categories": b["categories"], "category_filter": b["category_filter"],
            "median_s": b.median, "uncontended": unc, "p90_s": b.p90, "p99_s": b.p99,
            "host_slowdown": b.host_slowdown(base), "candidates": b["candidates"],
            "catalog_share": b["catalog_share"], "knn_items": b["knn_items"],
            "rounds": b.rounds})
        return [t(b.median), uncontended(unc), t(b.p90), t(b.p99),
                slowdown(b.host_slowdown(base)), f"{b['candidates']:,.0f}",
                f"{100 * b['catalog_share']:.2f}%"]

    timing = ["median", "median of the uncontended rounds (share)", "p90", "p99",
              "host slowdown", "candidates", "catalog share"]
    hier = [b for b in rows if b["role"] == "hiersrec"]
    hybrid = [b for b in rows if b["role"] in ("hybrid", "baseline")]
    lines = [
        "`Recommender.recommend()` on trained bundles under each candidate policy, on the "
        "test sessions of their data set (all events but the last; the same sessions for "
        "every bundle of one data set), one thread. Options a row does not name take the "
        "bundle's defaults; the columns give the options in effect. candidates = rows the "
        "model scored per call (mean; on a session-kNN bundle, the items its kernel "
        "scored), catalog share = candidates / items.",
        "",
        *([note, ""] if note else []),
        _contention(rows, base),
        "",
    ]
    if hier:
        lines += [
            "**HierSRec** (an encoder that also predicts categories): `neighbors` merges "
            "the session items' neighbor rows; `categories` takes the items of the top K "
            "predicted categories (at most the cap, most popular first within a category); "
            "the category filter keeps the candidates of the session's categories "
            "(`session`), of the top K predicted ones (`predicted`) or all (`none`).",
            "",
            table(["bundle", "items", "call", "policy", "K", "category filter", "cap",
                   "backend", *timing, "rounds"],
                  [[b["bundle"], f"{b['n_items']:,}", _call(b), b["policy"],
                    b["categories"] if b["categories"] is not None else "–",
                    b["category_filter"],
                    f"{b['max_candidates']:,}" if b["max_candidates"] is not None else "–",
                    b["backend"], *cells(b), b.rounds] for b in hier]),
            "",
        ]
    if hybrid:
        lines += [
            "**Hybrid bundles** (an encoder and a session index) with their defaults "
            "(`sessions`: the session-kNN kernel's top `cap` items, scored by the model, "
            "the normalised kNN score added with weight `knn_weight`) and with "
            "`candidates=\"neighbors\"`, next to the plain neural bundle and the "
            "session-kNN bundle of the same data with their defaults. kNN items = items "
            "the session-kNN stage scored before the model (the `sessions` policy only).",
            "",
            table(["bundle", "model", "data", "items", "call", "policy", "category filter",
                   "cap", "knn_weight", "backend", *timing, "kNN items", "rounds"],
                  [[b["bundle"], b["model"], b["dataset"], f"{b['n_items']:,}", _call(b),
                    b["policy"], b["category_filter"],
                    f"{b['max_candidates']:,}" if b["max_candidates"] is not None else "–",
                    f"{b['knn_weight']:g}" if b["knn_weight"] is not None else "–",
                    b["backend"], *cells(b),
                    f"{b['knn_items']:.0f}" if b["knn_items"] is not None else "–",
                    b.rounds] for b in hybrid]),
        ]
    return "\n".join(lines), figures


def hnsw_ef_table(benches) -> str:
    rows = [b for b in benches if b["axis"] == "efSearch"]
    if not rows:
        return "_not measured in this run_"
    rows.sort(key=lambda b: (b["ef_search"], b["traffic"]))
    return table(["efSearch", "traffic", "median", "p99", "recall@k vs exact top-k"],
                 [[b["ef_search"], b["traffic"], t(b.median), t(b.p99),
                   "–" if b["recall_vs_exact"] is None else f"{b['recall_vs_exact']:.3f}"]
                  for b in rows])


def stages_table(benches, which: str, traffic: str) -> str | None:
    rows = [b for b in benches if b["suite"] == "stages" and b["bundle"] == which
            and b["traffic"] == traffic]
    if not rows:
        return None
    whole = next((b for b in rows if b["stage"] == "recommend"), None)
    order = ["recommend", "id mapping", "encoder", "kernel", "result building", "kernel, hot",
             "numpy gather floor", "numpy matmul floor", "numpy matmul floor, hot"]
    rows.sort(key=lambda b: order.index(b["stage"]) if b["stage"] in order else 99)
    out = []
    parts, n_parts = 0.0, 0
    for b in rows:
        share = pct(b.median, whole.median) if whole and b["stage"] != "recommend" else ""
        if b["stage"] in ("id mapping", "encoder", "kernel", "result building"):
            parts += b.median
            n_parts += 1
        note = ""
        if b["floor_rows"]:
            note = f"{b['floor_rows']:.0f} rows per block"
        out.append([b["stage"], t(b.median), t(b.p99), share, note])
    if whole and n_parts == 4:
        out.insert(5, ["*rest of a call (whole − the four stages)*",
                       t(whole.median - parts), "", pct(whole.median - parts, whole.median), ""])
    text = table(["stage (timed alone)", "median", "p99", "of a whole call", ""], out)
    if whole and whole["in_call"]:
        ic = whole["in_call"]
        text += "\n\nTimed inside whole calls (clock read between the steps; medians):\n\n"
        text += table(["step", "median", "share"],
                      [[k, t(v), pct(v, ic["total"])] for k, v in ic.items()])
    return text


def memory_section(memory: dict | None) -> str:
    if memory is None:
        return "_memory.json missing: `python -m benchmarks.memory` was not run._"
    load_rows = []
    for r in memory["load"]:
        load_rows.append([
            items(r["n_items"]), f"d={r['dim']}, K={r['K']}", f"{r['bundle_mib']:,.0f} MiB",
            {"auto": "default (auto)", "no": "verify=False", "yes": "verify=True"}[r["verify"]]
            + (", prefault=True" if r.get("prefault") else ""),
            t(r["import_numpy_s"]), t(r["import_sessrec_s"]), t(r["load_s"]),
            t(r["first_call_s"]), f"{r['rss_after_import_mib']:.0f} MiB",
            f"{r['rss_after_load_mib']:.0f} MiB", f"{r['rss_after_first_call_mib']:.0f} MiB",
            "–" if r.get("file_rss_after_first_call_mib") is None
            else f"{r['file_rss_after_first_call_mib']:.0f} MiB"])
    text = table(["items", "shape", "bundle on disk", "load options", "import numpy",
                  "import sessrec_sdk (+onnxruntime)", "Recommender.load", "first recommend()",
                  "RSS after imports", "RSS after load", "RSS after 1st call",
                  "of which file-backed"], load_rows)
    text += (f"\n\nMedians of {memory['load'][0]['repeats']} fresh processes each. "
             "\"default (auto)\" verifies checksums and id ranges of bundles up to 256 MiB "
             "and only shapes/dtypes above; prefault=True also maps every page of the bundle "
             "(RSS then counts it all: shared page cache). Bundle files were in the OS page "
             "cache (read once before measuring). File-backed RSS is pages of the mapped "
             "bundle (and libraries): shared between processes and reclaimable, not copies; "
             "one call can "
             "map far more than the ~300 rows it reads, since the kernel maps page-cache "
             "pages around each touched row.\n\n")
    shared = memory["shared"]
    rows = []
    for s in shared:
        tot = s["total"]
        rows.append([s["processes"], s["calls_each"], f"{tot['VmRSS']:,.0f} MiB",
                     f"{tot['Pss']:,.0f} MiB", f"{tot['RssFile']:,.0f} MiB",
                     f"{tot['RssAnon']:,.0f} MiB",
                     f"{tot['Private_Clean'] + tot['Private_Dirty']:,.0f} MiB"])
    text += (f"Processes serving the same bundle ({shared[0]['bundle']}), each after "
             f"loading it and answering {shared[0]['calls_each']:,} uniform-random calls; "
             "sums over the processes:\n\n")
    text += table(["processes", "calls each", "total RSS", "total PSS", "file-backed RSS",
                   "anonymous RSS", "private (clean + dirty)"], rows)
    if len(shared) >= 2:
        one, many = shared[0]["total"], shared[-1]["total"]
        n = shared[-1]["processes"]
        text += (f"\n\n{n} processes: total RSS {many['VmRSS'] / one['VmRSS']:.2f}× one "
                 f"process (RSS counts shared pages in every process), total PSS "
                 f"{many['Pss'] / one['Pss']:.2f}× one process: each extra process costs "
                 f"{(many['Pss'] - one['Pss']) / (n - 1):,.0f} MiB of PSS. PSS charges each "
                 "shared page once across the processes, so total RSS − total PSS = "
                 f"{many['VmRSS'] - many['Pss']:,.0f} MiB is memory the {n} processes share "
                 "(the mapped bundle and the shared libraries) instead of copying.")
    return text


# --------------------------------------------------------------------------- plot


def plot(benches, meta, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    sizes = sorted({b["n_items"] for b in benches if b["axis"] == "catalog size"})
    series = [("sessrec, uniform", "latency", "sessrec", "uniform", "o-"),
              ("sessrec, popular", "latency", "sessrec", "popular", "o--"),
              ("full-catalog ONNX", "alternatives", "full-catalog ONNX", "uniform", "s-"),
              ("full-catalog numpy", "alternatives", "full-catalog numpy", "uniform", "s--"),
              ("faiss HNSW", "alternatives", "faiss HNSW", "uniform", "^-")]
    for label, suite, method, traffic, style in series:
        xs, ys = [], []
        for n in sizes:
            b = find(benches, suite=suite, method=method, axis="catalog size", n_items=n,
                     traffic=traffic)
            if b:
                xs.append(n)
                ys.append(b.median * 1e6)
        if xs:
            ax.plot(xs, ys, style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size (items)")
    ax.set_ylabel("median latency per call (µs)")
    ref = meta["profile"]["ref"]
    ax.set_title(f"vs catalog size (d={ref['dim']}, K={ref['K']})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    for ax, axis, key, title in ((axes[1], "session length", "session_len",
                                  "vs session length"),
                                 (axes[2], "neighbors per item", "K", "vs neighbors per item K")):
        for traffic, style in (("uniform", "o-"), ("popular", "o--")):
            pts = sorted((b[key], b.median * 1e6, b.p99 * 1e6) for b in benches
                         if b["suite"] == "latency" and b["axis"] == axis
                         and b["traffic"] == traffic)
            if pts:
                xs, med, p99 = zip(*pts)
                line, = ax.plot(xs, med, style, label=f"{traffic}: median")
                ax.plot(xs, p99, ":", color=line.get_color(), label=f"{traffic}: p99")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel("latency per call (µs)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"sessrec {title} ({items(ref['n_items'])} items)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- document


def quiet_text(meta: dict, benches) -> str:
    """Was the machine quiet? The load average before the run (the run itself adds ~1 to
    it), and the cores other processes kept busy during the run and each benchmark."""
    before = meta.get("loadavg_before", [None])[0]
    run_other = meta.get("other_cpu_cores")
    per = [b["other_cpu_cores"] for b in benches if b["other_cpu_cores"] is not None]
    if before is None:
        return "Machine load not recorded."
    quiet = before < QUIET_LOAD and (run_other is None or run_other < QUIET_OTHER_CORES)
    parts = [f"1-minute load average {before:.2f} when the run started"]
    if run_other is not None:
        parts.append(f"other processes kept {run_other:.2f} of {os.cpu_count()} cores busy "
                     "on average during the run")
    if per:
        parts.append(f"{np.median(per):.2f} cores (median) and {max(per):.2f} (max) during "
                     "the timed rounds of the latency benchmarks")
    verdict = ("**quiet**" if quiet else "**not quiet**: other work shared the CPU, so "
               "absolute times are pessimistic and noisier, p99 most of all")
    return ("; ".join(parts) + f". The machine was {verdict} (quiet = load average below "
            f"{QUIET_LOAD} at the start and other processes below {QUIET_OTHER_CORES} cores "
            "on average).")


def build(results: Path, out: Path, plot_path: Path | None = None) -> dict:
    benches = load_benches(results / "latency.json")
    meta = _json(results / "meta.json") or {}
    memory = _json(results / "memory.json")
    accuracy = _json(results / "accuracy.json")
    plot_path = plot_path or results / "latency.png"
    if benches:
        plot(benches, meta, plot_path)
    head, figures = headline(benches, meta) if benches else ("_no latency results_", {})
    sknn_text, sknn_figures = sknn_section(*sknn_results(results, benches))
    policy_text, policy_figures = policy_section(*policy_results(results, benches))
    m = meta.get("machine", {})
    v = m.get("versions", {})
    prof = meta.get("profile", {})
    ref = prof.get("ref", {})
    rel_plot = os.path.relpath(plot_path, out.parent)
    ref_text = (f"{items(ref.get('n_items'))} items, d={ref.get('dim')}, K={ref.get('K')}, "
                f"{ref.get('dtype')}, {prof.get('session_len')}-item sessions, "
                f"k={prof.get('k')}, {prof.get('backend')} backend")
    doc = [
        "# sessrec benchmarks",
        "",
        f"Generated by `benchmarks/report.py` from one run of `{meta.get('command', '?')}` "
        f"(profile `{prof.get('name')}`), {meta.get('started', '?')} – "
        f"{meta.get('finished', '?')} UTC. Nothing here is typed by hand; "
        "how to run and read it: [docs/benchmarks.md](docs/benchmarks.md).",
        "",
        f"**Machine**: {m.get('cpu_model')} ({m.get('hypervisor') or 'bare metal'} VM), "
        f"{m.get('cpus')} cores ({m.get('threads_per_core')} thread per core), L2 "
        f"{m.get('l2')}, L3 {m.get('l3')}, {m.get('ram_gib')} GiB RAM, Linux "
        f"{m.get('kernel')}; Python {v.get('python')}, numpy {v.get('numpy')}, onnxruntime "
        f"{v.get('onnxruntime')}, numba {v.get('numba')}, faiss {v.get('faiss')}, "
        f"pytest-benchmark {v.get('pytest_benchmark')}; sessrec {v.get('sessrec')} at "
        f"commit {m.get('git_commit')}.",
        "",
        quiet_text(meta, benches),
        "",
        *(["**Smoke profile**: tiny bundles that check the suite runs; its figures say "
           "nothing about sessrec's speed.", ""] if prof.get("name") == "smoke" else []),
        "Every contender runs on one thread (ONNX Runtime 1 intra/1 inter-op thread, OpenBLAS "
        "and faiss OpenMP 1 thread, sessrec's kernel single-threaded). Latency is per call, "
        "end to end from external ids to external ids, over a pool of "
        f"{prof.get('pool_size', '?'):,} seeded sessions taken in turn (not one hot session); "
        "median and p99 of the timed rounds (p99 from the raw per-round times).",
        "",
        f"## Headline: reference point ({ref_text})",
        "",
        head,
        "",
        "**Host probe**: this is a shared VM. Another tenant can slow its core (every step of "
        "a call slows together, by ~1.7× here) in stretches of a fraction of a second that "
        "the load average does not see. Every 25 rounds, in pytest-benchmark's untimed "
        "setup, the suite times a fixed pure-Python loop. \"Host slowdown\" is a "
        "benchmark's median probe over the run's uncontended probe time (the 5th percentile "
        "of all probes). \"Uncontended rounds\" are the rounds whose nearest probe was "
        f"within {UNCONTENDED:.2f}× of it. The medians over all rounds are the figures of "
        "record; the uncontended ones show what the code does with a whole core.",
        "",
        targets_text(figures, accuracy),
        "",
        "## Accuracy and latency on Diginetica (GRAINRec bundle)",
        "",
        accuracy_section(benches, accuracy),
        "",
        "## Latency sweeps (one axis at a time around the reference point)",
        "",
        f"![latency vs catalog size, session length and K]({rel_plot})",
        "",
        "Uniform-random sessions draw their items uniformly over the catalog (rows scattered "
        "over the whole mapping: the cache-cold worst case); popularity-weighted sessions "
        "draw them by popularity: the synthetic bundles' popularity ranking (popularity.npy) "
        "with Zipf weights 1/rank, so the top 1% of a 1M catalog draws ~70% of the traffic "
        "(their own popularity_scores.npy are degenerate, see benchmarks/common.py); a "
        "trained bundle's own popularity_scores.npy. Realistic traffic, warmer caches. "
        "\"candidates\" = rows the kernel scored per call (mean).",
        "",
        "### Catalog size (with the alternatives, uniform-random sessions)",
        "",
        sweep_table(benches, "catalog size", "n_items", items, alternatives=True),
        "",
        "### Session length (synthetic bundles keep up to 20 items)",
        "",
        sweep_table(benches, "session length", "session_len"),
        "",
        "### Neighbors per item K (one bundle per K, all K neighbors used)",
        "",
        sweep_table(benches, "neighbors per item", "K"),
        "",
        "### Dimension",
        "",
        sweep_table(benches, "dimension", "dim"),
        "",
        "### Kernel backend",
        "",
        sweep_table(benches, "backend", "backend"),
        "",
        "### Item matrix dtype",
        "",
        sweep_table(benches, "item dtype", "dtype"),
        "",
        "### Row order (the reference catalog)",
        "",
        "locality: rows numbered along the neighbor graph (reverse Cuthill-McKee, what "
        "`sessrec synth` and `sessrec export` write by default, export_tools/layout.py), so "
        "an item's neighbors sit in nearby rows; given: the rows in the order the items were "
        "drawn, each neighbor list scattered over the whole matrix. Same items, vectors and "
        "answers.",
        "",
        sweep_table(benches, "row order", "row_order"),
        "",
        "### Memory pages (the reference bundle)",
        "",
        "steady: page cache in 2 MB pages where the kernel allows (`sessrec warm`) and every "
        "page mapped (`Recommender.load(prefault=True)`), as in every other row; lazy: same "
        "page cache, pages mapped on first touch (a server just started without prefault); "
        "4k: a copy of the bundle whose page cache holds 4 KB pages (written by a file copy "
        "and never warmed). See sessrec_sdk/pages.py.",
        "",
        sweep_table(benches, "memory pages", "pages"),
        "",
        "Share of the item matrix in 2 MB pages after each row (uniform / popular): "
        + ", ".join(f"{v}: " + " / ".join(
            f"{b['matrix_2mb_share']:.0%}" if b and b["matrix_2mb_share"] is not None
            else "–" for b in (find(benches, suite="latency", axis="memory pages", pages=v,
                                    traffic=tr) for tr in TRAFFIC))
            for v in ("steady", "lazy", "4k")) + ".",
        "",
        "### GRAINRec bundle (sessrec)",
        "",
        (table(["traffic", "median", "p99", "candidates", "rounds"],
               [[TRAFFIC_NAME.get(b["traffic"], b["traffic"]), t(b.median), t(b.p99),
                 f"{b['candidates']:.0f}", b.rounds]
                for b in benches if b["suite"] == "grainrec" and b["method"] == "sessrec"])
         if any(b["suite"] == "grainrec" for b in benches)
         else "_Skipped: no exported GRAINRec bundle (see the accuracy section)._"),
        "",
        "## Session-kNN bundles (VMIS-kNN)",
        "",
        sknn_text,
        "",
        "## Candidate policies and hybrid bundles (trained bundles)",
        "",
        policy_text,
        "",
        "### Hostile input (string-id catalog of the reference size, default Limits)",
        "",
        hostile_table(benches),
        "",
        "## Alternatives, every size and traffic kind",
        "",
        alternatives_table(benches),
        "",
        "HNSW at the reference point for several efSearch (faiss uses max(efSearch, k)):",
        "",
        hnsw_ef_table(benches),
        "",
        "Recall is the share of the exact full-catalog top-k (same query vector) that HNSW "
        "returns, over the first 200 sessions of the pool. On synthetic bundles the session "
        "vector comes from a random projection that has nothing to do with how items "
        "cluster, a hard case for a graph index over inner products; HNSW's accuracy on a "
        "trained model is in the Diginetica table.",
        "",
        "## Where the time of a call goes",
        "",
        "Each stage timed alone on inputs precomputed from the same sessions; \"kernel, hot\" "
        "repeats one query (rows in cache); the numpy gather floor is "
        "`matrix.take(rows) @ q` over the very rows the kernel scores, read at random from "
        "the mapped matrix (the cost of the reads alone, without dedupe, filters and heap); "
        "the numpy matmul floor multiplies the same rows gathered beforehand into one "
        "contiguous block per session (rotating over more blocks than fit in L3), i.e. the "
        "cost of streaming them. The stages timed alone need not add up to a whole call: "
        "inside a call each step runs on caches the other steps have just used; the second "
        "table times the same steps inside whole calls.",
        "",
    ]
    for which, traffic in (("reference", "uniform"), ("reference", "popular"),
                           ("given row order", "uniform"), ("given row order", "popular"),
                           ("float16 item matrix", "uniform"),
                           ("float16 item matrix", "popular"), ("grainrec", "test")):
        st = stages_table(benches, which, traffic)
        if st:
            label = {"reference": "reference point",
                     "given row order": "reference catalog with its rows in drawn order",
                     "float16 item matrix": "reference catalog with a float16 item matrix",
                     }.get(which, "GRAINRec bundle")
            doc += [f"### {label}, {TRAFFIC_NAME[traffic]}", "", st, ""]
    doc += ["## Memory and start-up", "", memory_section(memory), "",
            "## Reproduce", "", "```", *meta.get("commands", []), "```", ""]
    out.write_text("\n".join(doc))
    if sknn_figures:
        figures = {**figures, "sknn": sknn_figures}
    if policy_figures:
        figures = {**figures, "policies": policy_figures}
    summary = {"figures": figures, "meta": meta,
               "benchmarks": [{"name": b.name, "median_s": b.median, "p99_s": b.p99,
                               "rounds": b.rounds, **b.info} for b in benches]}
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    ap.add_argument("--results", type=Path, required=True,
                    help="directory with latency.json, memory.json, accuracy.json, meta.json")
    ap.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    ap.add_argument("--plot", type=Path, help="PNG path (default: RESULTS/latency.png)")
    args = ap.parse_args(argv)
    build(args.results, args.out, args.plot)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
