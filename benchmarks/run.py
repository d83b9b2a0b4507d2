"""Run the whole benchmark suite end to end and write BENCHMARKS.md.

    python -m benchmarks.run            # full run (1M-item bundles; ~20-30 min the first
                                        # time, building bundles and HNSW indexes)
    python -m benchmarks.run --smoke    # seconds: small bundles only (what CI runs)
    sessrec bench [same options]

Steps: build/cached bundles and HNSW indexes -> the pytest-benchmark suite in a fresh
process (latency, stages, alternatives) -> memory and start-up (fresh processes) ->
HR@20 on the GRAINRec bundle (if present) -> BENCHMARKS.md and the PNG plot.
Results (JSON, PNG) go to ``--out`` (full run: benchmarks/results/, report BENCHMARKS.md
at the repository root; smoke: .cache/bench-results/smoke/, report inside it).
Arguments after ``--`` go to pytest (e.g. ``-- -k catalog --benchmark-autosave``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import common as C


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")


def wait_quiet(threshold: float, deadline: str | None) -> None:
    """Wait until the 1-minute load average drops below ``threshold`` (or HH:MM UTC)."""
    stop = None
    if deadline:
        hh, mm = map(int, deadline.split(":"))
        now = dt.datetime.now(dt.UTC)
        stop = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    while os.getloadavg()[0] >= threshold:
        if stop and dt.datetime.now(dt.UTC) >= stop:
            C.log(f"load still {os.getloadavg()[0]:.2f} at {deadline} UTC: running anyway")
            return
        C.log(f"load {os.getloadavg()[0]:.2f} >= {threshold}: waiting for a quiet machine")
        time.sleep(60)


def prebuild(p: C.Profile) -> None:
    """Every cached artefact, before anything is timed (and outside pytest's output)."""
    from benchmarks.alternatives import ensure_hnsw

    for spec in C.all_specs(p):
        C.ensure_bundle(spec)
    for spec in p.sknn:
        C.ensure_sknn_bundle(spec)
    for n in p.sizes:
        ensure_hnsw(C.ensure_bundle(p.spec(n_items=n)), p.hnsw_M, p.hnsw_ef_construction)
    if p.grainrec and C.grainrec_bundle() is not None:
        ensure_hnsw(C.grainrec_bundle(), p.hnsw_M, p.hnsw_ef_construction)


def bench_env() -> dict:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(C.ROOT), env.get("PYTHONPATH")]))
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `sessrec bench -- --smoke` hands the separator on
        argv = argv[1:]
    pytest_extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                 description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--smoke", action="store_true", help="small bundles, seconds")
    ap.add_argument("--out", type=Path, help="results directory")
    ap.add_argument("--report", type=Path, help="Markdown report to write")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="only rebuild the report from the JSON already in --out")
    ap.add_argument("--wait-quiet", type=float, metavar="LOAD",
                    help="first wait until the 1-minute load average is below LOAD")
    ap.add_argument("--wait-until", metavar="HH:MM",
                    help="with --wait-quiet: stop waiting at this UTC time")
    args = ap.parse_args(argv)

    p = C.SMOKE if args.smoke else C.FULL
    os.environ["SESSREC_BENCH_PROFILE"] = p.name
    out = args.out or (C.cache_root() / "bench-results" / "smoke" if args.smoke
                       else C.ROOT / "benchmarks" / "results")
    report = args.report or (out / "BENCHMARKS.md" if args.smoke else C.ROOT / "BENCHMARKS.md")
    out.mkdir(parents=True, exist_ok=True)
    from benchmarks import report as R

    if args.report_only:
        R.build(out, report, out / "latency.png")
        C.log(f"wrote {report}")
        return 0

    cmd_line = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None
                                                         else (argv + (["--", *pytest_extra]
                                                                       if pytest_extra else [])))
    t_start = time.perf_counter()
    C.log(f"profile {p.name}: building/reusing cached bundles and indexes")
    prebuild(p)
    if args.wait_quiet is not None:
        wait_quiet(args.wait_quiet, args.wait_until)
    meta = {"profile": {**asdict(p), "ref": asdict(p.ref)}, "command": cmd_line.strip(),
            "started": _now(), "loadavg_before": C.loadavg(), "machine": C.machine_info(),
            "grainrec_bundle": str(C.grainrec_bundle()) if C.grainrec_bundle() else None}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    rc = 0
    other = C.OtherLoad().__enter__()
    pytest_cmd = [sys.executable, "-m", "pytest", str(C.ROOT / "benchmarks"), "-p",
                  "no:cacheprovider", "--bench-profile", p.name,
                  f"--benchmark-json={out / 'latency.json'}",
                  "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name", "-q",
                  *pytest_extra]
    if not args.skip_latency:
        C.log("latency suite: " + shlex.join(pytest_cmd))
        rc = subprocess.call(pytest_cmd, cwd=C.ROOT, env=bench_env())
        if rc not in (0, 5):
            C.log(f"pytest exited with {rc}")
    if not args.skip_memory:
        from benchmarks import memory

        C.log("memory and start-up")
        (out / "memory.json").write_text(json.dumps(memory.run(p), indent=2) + "\n")
    if not args.skip_accuracy:
        from benchmarks import accuracy

        if not p.grainrec:
            res = {"skipped": f"the {p.name} profile does not use the GRAINRec bundle"}
        else:
            C.log("accuracy on Diginetica")
            res = accuracy.run(p, limit=p.accuracy_limit)
        if "skipped" in res:
            C.log(res["skipped"])
        (out / "accuracy.json").write_text(json.dumps(res, indent=2) + "\n")

    other.__exit__(None, None, None)
    meta.update(finished=_now(), loadavg_after=C.loadavg(), other_cpu_cores=other.cores,
                seconds=round(time.perf_counter() - t_start, 1),
                commands=[f"cd {C.ROOT.name}  # repository root, venv active",
                          meta["command"],
                          "# which ran, among other steps:",
                          shlex.join(["python", *pytest_cmd[1:]]).replace(str(C.ROOT) + "/",
                                                                           ""),
                          f"python -m benchmarks.memory --profile {p.name}",
                          f"python -m benchmarks.accuracy --profile {p.name}",
                          f"python -m benchmarks.report --results {_rel(out)} "
                          f"--out {_rel(report)}"])
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    R.build(out, report, out / "latency.png")
    C.log(f"wrote {report} ({meta['seconds']:.0f} s)")
    return 0 if rc in (0, 5) else rc


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(C.ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
