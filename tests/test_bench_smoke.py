"""The benchmark suite must keep running: its smoke profile end to end (small synthetic
bundles, a few rounds per benchmark, memory children, the report), in a subprocess, so a
rotting benchmark fails CI. Its timings mean nothing and are not checked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("pytest_benchmark")
pytest.importorskip("faiss")


def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, SESSREC_BENCH_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    latency = json.loads((out / "latency.json").read_text())
    names = {b["name"] for b in latency["benchmarks"]}
    for expected in ("test_reference[uniform]", "test_reference[popular]",
                     "test_alternative[1000-onnx-uniform]", "test_alternative[4000-hnsw-popular]",
                     "test_stage[reference-uniform-kernel]", "test_backend[numba-popular]",
                     "test_dtype[float16-uniform]", "test_session_length[20-popular]",
                     "test_row_order[given-uniform]",
                     "test_stage[given row order-popular-kernel]",
                     "test_stage[float16 item matrix-uniform-kernel]"):
        assert any(n.endswith(expected) for n in names), (expected, sorted(names))
    assert all(b["stats"]["data"] for b in latency["benchmarks"])  # raw rounds for p99

    memory = json.loads((out / "memory.json").read_text())
    assert [s["processes"] for s in memory["shared"]] == [1, 4]
    assert "skipped" in json.loads((out / "accuracy.json").read_text())

    report = (out / "BENCHMARKS.md").read_text()
    for section in ("## Headline", "## Latency sweeps", "## Where the time of a call goes",
                    "## Memory and start-up", "p99", "### Row order",
                    "rows in drawn order", "float16 item matrix"):
        assert section in report
    assert (out / "latency.png").stat().st_size > 10_000
    assert elapsed < 60, f"the smoke run took {elapsed:.0f} s (budget 60 s)"
