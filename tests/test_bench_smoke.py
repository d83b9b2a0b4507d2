"""The benchmark suite must keep running: its smoke profile end to end (small synthetic
bundles, a few rounds per benchmark, memory children, the report), in a subprocess, so a
rotting benchmark fails CI. Its timings mean nothing and are not checked against any
budget; what is checked is that the figures it reports are consistent (positive timings,
min <= median <= max, one raw time per round, candidate counts within what the bundle
allows) and that the report quotes the JSON's figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("pytest_benchmark")
pytest.importorskip("faiss")


def _seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, SESSREC_BENCH_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    latency = json.loads((out / "latency.json").read_text())
    names = {b["name"] for b in latency["benchmarks"]}
    for expected in ("test_reference[uniform]", "test_reference[popular]",
                     "test_alternative[1000-onnx-uniform]", "test_alternative[4000-hnsw-popular]",
                     "test_stage[reference-uniform-kernel]", "test_backend[numba-popular]",
                     "test_dtype[float16-uniform]", "test_session_length[20-popular]",
                     "test_row_order[given-uniform]",
                     "test_stage[given row order-popular-kernel]",
                     "test_stage[float16 item matrix-uniform-kernel]",
                     "test_sknn_synthetic[synthetic-4k]", "test_sknn_synthetic[synthetic-20k]",
                     "test_sknn_top_k[c-none]", "test_sknn_top_k[c-table]",
                     "test_recommend_many[recommend_many-uniform]",
                     "test_recommend_many[recommend loop-popular]"):
        assert any(n.endswith(expected) for n in names), (expected, sorted(names))
    assert all(b["stats"]["data"] for b in latency["benchmarks"])  # raw rounds for p99

    memory = json.loads((out / "memory.json").read_text())
    assert [s["processes"] for s in memory["shared"]] == [1, 4]
    assert "skipped" in json.loads((out / "accuracy.json").read_text())

    report = (out / "BENCHMARKS.md").read_text()
    for section in ("## Headline", "## Latency sweeps", "## Where the time of a call goes",
                    "## Memory and start-up", "p99", "### Row order",
                    "rows in drawn order", "float16 item matrix",
                    "## Session-kNN bundles (VMIS-kNN)", "| synthetic 20k |"):
        assert section in report
    assert (out / "latency.png").stat().st_size > 10_000

    # the figures are consistent with each other
    checked = 0
    for b in latency["benchmarks"]:
        st, info = b["stats"], b["extra_info"]
        assert 0 < st["min"] <= st["median"] <= st["max"], b["name"]
        assert st["min"] <= st["mean"] <= st["max"], b["name"]
        assert len(st["data"]) == st["rounds"] > 0, b["name"]
        assert min(st["data"]) == st["min"] and max(st["data"]) == st["max"], b["name"]
        cand, K, length = info.get("candidates"), info.get("K"), info.get("session_len")
        if isinstance(cand, float) and isinstance(K, int) and isinstance(length, int):
            # rows scored per call: at most K neighbors (+ the item) per session item
            assert 0 < cand <= (K + 1) * length, (b["name"], cand, K, length)
            checked += 1
    assert checked >= 10
    # the headline table quotes the JSON: medians, p99 and candidates of the reference point
    ref = {traffic: next(b for b in latency["benchmarks"]
                         if b["name"].endswith(f"test_reference[{traffic}]"))
           for traffic in ("uniform", "popular")}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in report.splitlines() if line.startswith("| sessrec recommend()")
            or line.startswith("| candidates scored per call")}
    for i, traffic in enumerate(("uniform", "popular")):
        data = ref[traffic]["stats"]["data"]
        assert _seconds(rows["sessrec recommend(): median"][i]) == pytest.approx(
            ref[traffic]["stats"]["median"], rel=0.01)
        assert _seconds(rows["sessrec recommend(): p99"][i]) == pytest.approx(
            float(np.percentile(data, 99)), rel=0.01)
        assert float(rows["candidates scored per call (mean)"][i]) == pytest.approx(
            ref[traffic]["extra_info"]["candidates"], abs=0.5)
    # the session-kNN rows: p90 between median and p99, candidates within the catalog
    sknn = [b for b in latency["benchmarks"] if b["extra_info"].get("suite") == "sknn bundle"]
    assert {b["extra_info"]["bundle"] for b in sknn} >= {"synthetic 4k", "synthetic 20k"}
    for b in sknn:
        data, info = b["stats"]["data"], b["extra_info"]
        assert np.median(data) <= np.percentile(data, 90) <= np.percentile(data, 99)
        assert 0 < info["candidates"] <= info["n_items"], b["name"]
        assert info["backend"] == "c" and info["host_probe_us"], b["name"]
        if info["bundle"] == "synthetic 20k":
            row = next(line for line in report.splitlines()
                       if line.startswith("| synthetic 20k |"))
            cells = [c.strip() for c in row.split("|")[1:-1]]
            assert _seconds(cells[8]) == pytest.approx(np.percentile(data, 90), rel=0.01)
    for entry in memory["load"]:
        assert entry["bundle_mib"] > 0 and entry["load_s"] > 0, entry
        assert entry["rss_after_load_mib"] > 0 and entry["rss_after_import_mib"] > 0, entry
