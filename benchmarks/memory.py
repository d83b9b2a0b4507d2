"""Start-up and memory: import time, load time and resident memory per catalog size, and the
memory of several processes serving one bundle (the mmap'd arrays are shared, not copied).

Every figure comes from a fresh child process (``python -m benchmarks._memchild``), so
nothing is warm in the interpreter: import time (numpy, then sessrec_sdk with onnxruntime)
is reported apart from ``Recommender.load`` time. The bundle files themselves are in the OS
page cache (they were just built or benchmarked); a cold disk read is not measured.

Resident memory is read from /proc: VmRSS counts every page a process maps, shared or not;
PSS (``/proc/PID/smaps_rollup``) divides each shared page among the processes that map it,
so the PSS of N processes adds up to what they really cost together.

    python -m benchmarks.memory --profile full --out memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as C
from benchmarks._memchild import proc_memory

REPEATS = 3  # load measurements per size (median reported)


def _spawn(bundle: Path, sessions: Path | None, calls: int, verify: str, wait: bool,
           prefault: bool = False):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks._memchild", str(bundle),
           "--calls", str(calls), "--verify", verify]
    if prefault:
        cmd.append("--prefault")
    if sessions:
        cmd += ["--sessions", str(sessions)]
    if wait:
        cmd.append("--wait")
    return subprocess.Popen(cmd, cwd=C.ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _run_child(bundle: Path, sessions: Path | None, calls: int, verify: str,
               prefault: bool = False) -> dict:
    t0 = time.perf_counter()
    proc = _spawn(bundle, sessions, calls, verify, wait=False, prefault=prefault)
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"memory child failed ({proc.returncode}) on {bundle}")
    result = json.loads(out.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def _write_sessions(bundle: Path, n: int, out: Path) -> Path:
    """A uniform-random pool of 3-item sessions (external ids) for the children."""
    import numpy as np

    from sessrec_sdk import Recommender

    rec = Recommender.load(bundle, verify=False)
    pool = C.session_pool(rec, 3, "uniform", n)
    np.save(out, np.asarray(pool, dtype=np.int64))
    return out


# --------------------------------------------------------------------------- measurements


def load_per_size(p: C.Profile, tmp: Path) -> list[dict]:
    rows = []
    for n in p.sizes:
        spec = p.spec(n_items=n)
        bundle = C.ensure_bundle(spec)
        C.warm_page_cache(bundle)
        size_mib = sum(f.stat().st_size for f in bundle.iterdir()) / 2**20
        sessions = _write_sessions(bundle, 1000, tmp / f"sessions-{spec.key}.npy")
        for verify, prefault in (("auto", False), ("no", False), ("no", True)):
            runs = [_run_child(bundle, sessions, 0, verify, prefault) for _ in range(REPEATS)]
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("import_numpy_s", "import_sessrec_s", "load_s", "first_call_s",
                             "process_wall_s")}
            last = runs[-1]
            rows.append({
                "n_items": n, "dim": spec.dim, "K": spec.K, "dtype": spec.dtype,
                "bundle_mib": round(size_mib, 1), "verify": verify, "prefault": prefault,
                "repeats": REPEATS,
                **{k: round(v, 4) for k, v in med.items()},
                "rss_after_import_mib": last["mem_after_import"]["VmRSS"],
                "rss_after_load_mib": last["mem_after_load"]["VmRSS"],
                "rss_after_first_call_mib": last["mem_after_first_call"]["VmRSS"],
                "file_rss_after_first_call_mib": last["mem_after_first_call"].get("RssFile"),
                "pss_after_load_mib": last["mem_after_load"].get("Pss"),
            })
            C.log(f"load {C._items(n)} verify={verify} prefault={prefault}: "
                  f"{med['load_s'] * 1e3:.1f} ms, RSS "
                  f"{last['mem_after_load']['VmRSS']:.0f} MiB")
    return rows


def shared_serving(p: C.Profile, tmp: Path) -> list[dict]:
    """1 process, then ``p.memory_procs`` processes, each loading the reference bundle and
    serving ``p.memory_calls`` uniform-random calls; memory read while all are alive."""
    bundle = C.ensure_bundle(p.ref)
    C.warm_page_cache(bundle)
    sessions = _write_sessions(bundle, max(p.memory_calls, 1000), tmp / "sessions-ref.npy")
    out = []
    for n_procs in sorted({1, p.memory_procs}):
        procs = [_spawn(bundle, sessions, p.memory_calls, "no", wait=True)
                 for _ in range(n_procs)]
        reports = [json.loads(pr.stdout.readline()) for pr in procs]  # all loaded + served
        mems = [proc_memory(pr.pid) for pr in procs]
        for pr in procs:
            pr.stdin.close()
            pr.wait()
        total = {k: round(sum(m.get(k, 0.0) for m in mems), 1)
                 for k in ("VmRSS", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean",
                           "RssAnon", "RssFile")}
        out.append({"processes": n_procs, "calls_each": p.memory_calls,
                    "bundle": p.ref.label(), "per_process": mems, "total": total,
                    "calls_s": [r["calls_s"] for r in reports]})
        C.log(f"{n_procs} process(es): total RSS {total['VmRSS']:.0f} MiB, total PSS "
              f"{total['Pss']:.0f} MiB")
    return out


def run(p: C.Profile) -> dict:
    with tempfile.TemporaryDirectory(prefix="sessrec-mem-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        result = {"profile": p.name, "loadavg_before": C.loadavg(),
                  "load": load_per_size(p, tmp), "shared": shared_serving(p, tmp)}
        result["loadavg_after"] = C.loadavg()
        result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    ap.add_argument("--profile", choices=sorted(C.PROFILES), default="full")
    ap.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = ap.parse_args(argv)
    result = run(C.PROFILES[args.profile])
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
