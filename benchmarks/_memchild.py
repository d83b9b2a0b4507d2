"""The child process of benchmarks/memory.py: imports nothing heavy before it starts its
clocks, so import time (numpy, then sessrec_sdk + onnxruntime) is measured as a user's
process would see it.

    python -m benchmarks._memchild BUNDLE [--sessions S.npy --calls N] [--verify auto|yes|no]
                                          [--prefault] [--wait]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# --------------------------------------------------------------------------- /proc


def proc_memory(pid: int | str = "self") -> dict:
    """VmRSS, VmHWM and the smaps_rollup totals of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(rest.split()[0]) / 1024
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean",
                       "Private_Dirty", "Anonymous"):
                out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return {k: round(v, 1) for k, v in out.items()}


# --------------------------------------------------------------------------- child


def child(bundle: str, sessions: str | None, calls: int, verify: str, wait: bool,
          prefault: bool = False) -> None:
    """Runs in a fresh interpreter; prints one JSON line (then waits for stdin to close)."""
    t0 = time.perf_counter()
    import numpy as np
    t_numpy = time.perf_counter() - t0

    t0 = time.perf_counter()
    from sessrec_sdk import Recommender
    t_sessrec = time.perf_counter() - t0
    mem_import = proc_memory()

    t0 = time.perf_counter()
    rec = Recommender.load(bundle, verify={"auto": None, "yes": True, "no": False}[verify],
                           prefault=prefault)
    t_load = time.perf_counter() - t0
    mem_load = proc_memory()

    result = {"import_numpy_s": t_numpy, "import_sessrec_s": t_sessrec, "load_s": t_load,
              "backend": rec.backend, "mem_after_import": mem_import,
              "mem_after_load": mem_load}
    if sessions:
        pool = np.load(sessions)
        t0 = time.perf_counter()
        rec.recommend(pool[0].tolist(), k=20)
        result["first_call_s"] = time.perf_counter() - t0
        result["mem_after_first_call"] = proc_memory()
        t0 = time.perf_counter()
        for i in range(calls):
            rec.recommend(pool[i % len(pool)].tolist(), k=20)
        result["calls"] = calls
        result["calls_s"] = time.perf_counter() - t0
        result["mem_after_calls"] = proc_memory()
    print(json.dumps(result), flush=True)
    if wait:
        sys.stdin.read()  # the parent reads /proc/<pid> of every child, then closes stdin




def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks._memchild")
    ap.add_argument("bundle")
    ap.add_argument("--sessions")
    ap.add_argument("--calls", type=int, default=0)
    ap.add_argument("--verify", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--wait", action="store_true")
    ap.add_argument("--prefault", action="store_true")
    args = ap.parse_args(argv)
    child(args.bundle, args.sessions, args.calls, args.verify, args.wait, args.prefault)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
