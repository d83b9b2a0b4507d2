#!/usr/bin/env python3
"""Replay the deliberate bugs of issue 15 that the suite once missed, one at a time, each
in a temporary copy of the tree, and list the tests that now fail on each.

    .venv/bin/python scripts/mutation.py            # all seven, ~6-8 minutes on 2 cores
    .venv/bin/python scripts/mutation.py metrics-hit-le ids-hit-any
    .venv/bin/python scripts/mutation.py --list

(the popularity bug of the issue comes in two variants: order reversed, ties reversed).
Nothing in the repository is modified; C bugs are rebuilt in the copy (see
scripts/c_mutants.py for the larger set of C mutants, scripts/mutation.sh for mutmut).
Exit status 0 when every bug fails at least one test.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c_mutants import copy_tree  # noqa: E402  (same directory)

ROOT = Path(__file__).resolve().parents[1]
EE = "tests/test_export_evaluate.py"

# (name, the bug as the issue describes it, file, text, replacement, tests to run)
BUGS = [
    ("c-batch-drop-last", "C kernel drops the last candidate of every full 512-candidate batch",
     "csrc/sessrec_kernels.c",
     "score_batch_typed(batch, n_batch, mat, row_bytes, is_half, hw_f16, dim, bias,\n",
     "score_batch_typed(batch, n_batch - 1, mat, row_bytes, is_half, hw_f16, dim, bias,\n",
     ["tests/test_kernels.py"]),
    ("c-fold-last-step", "the last lane-fold step of the dot product reordered",
     "csrc/sessrec_kernels.c",
     "return (lo[0] + lo[2]) + (lo[1] + lo[3]);", "return (lo[0] + lo[1]) + (lo[2] + lo[3]);",
     ["tests/test_kernels.py"]),
    ("metrics-hit-le", "hit = ranks <= k (off by one at the cutoff) in HR/MRR/NDCG",
     "export_tools/metrics.py", "        hit = ranks < k\n", "        hit = ranks <= k\n",
     ["tests/test_metrics.py", f"{EE}::test_ranking_metrics_hand_computed"]),
    ("parity-min", "the export's parity check measures the closest score (.min())",
     "export_tools/export.py",
     "worst_score = max(worst_score, float(np.abs(out.scores - expected).max()))",
     "worst_score = max(worst_score, float(np.abs(out.scores - expected).min()))",
     [f"{EE}::test_parity_check_fires_at_the_documented_tolerance"]),
    ("popularity-reversed", "the export's popularity order reversed (least popular first)",
     "export_tools/defaults.py",
     "order = np.lexsort((np.arange(n_items), -counts))",
     "order = np.lexsort((np.arange(n_items), counts))",
     ["tests/test_defaults.py", f"{EE}::test_popularity_order_and_ties_hand_counted"]),
    ("popularity-ties-reversed", "the export's popularity ties broken the other way",
     "export_tools/defaults.py",
     "order = np.lexsort((np.arange(n_items), -counts))",
     "order = np.lexsort((-np.arange(n_items), -counts))",
     ["tests/test_defaults.py", f"{EE}::test_popularity_order_and_ties_hand_counted"]),
    ("ids-hit-any", "numpy id lookup (string ids) with hit.all() turned into hit.any()",
     "sessrec_sdk/ids.py", "        if hit.all():\n", "        if hit.any():\n",
     [f"{EE}::test_string_ids_each_result_is_the_reference_kernels",
      f"{EE}::test_string_ids_unknown_are_counted_never_mapped",
      "tests/test_recommender.py", "tests/test_bad_input.py"]),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*")
    p.add_argument("--list", action="store_true")
    p.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = p.parse_args(argv)
    if args.list:
        for name, why, path, *_ in BUGS:
            print(f"{name:26s} {path:26s} {why}")
        return 0
    chosen = [b for b in BUGS if not args.names or b[0] in args.names]
    if args.names and len(chosen) != len(set(args.names)):
        p.error("unknown bug names; see --list")
    for name, _, path, old, _, _ in chosen:
        n = (ROOT / path).read_text().count(old)
        if n != 1:
            print(f"{name}: its text occurs {n} times in {path}: update {__file__}")
            return 2
    work = Path(tempfile.mkdtemp(prefix="sessrec-known-bugs."))
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    all_caught = True
    try:
        copy_tree(work, with_so=True)
        (work / "data").symlink_to(ROOT / "data")
        for name, why, path, old, new, tests in chosen:
            t0 = time.time()
            original = (work / path).read_text()
            (work / path).write_text(original.replace(old, new, 1))
            try:
                if path.endswith(".c"):
                    subprocess.run([args.python, "csrc/build_kernels.py"], cwd=work, check=True,
                                   capture_output=True)
                proc = subprocess.run([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                       *tests], cwd=work, env=env, capture_output=True, text=True)
            finally:
                (work / path).write_text(original)
                if path.endswith(".c"):
                    subprocess.run([args.python, "csrc/build_kernels.py"], cwd=work, check=True,
                                   capture_output=True)
            failed = sorted({ln.split(" ")[1].split("[")[0] for ln in proc.stdout.splitlines()
                             if ln.startswith("FAILED ")})
            caught = proc.returncode != 0 and bool(failed)
            all_caught &= caught
            print(f"{'caught' if caught else 'MISSED':7s} {name:26s} {time.time() - t0:4.0f} s  "
                  f"{why}", flush=True)
            for f in failed:
                print(f"{'':9s}{f}")
            if not caught and proc.returncode != 0:
                print(proc.stdout[-2000:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all_caught else 1


if __name__ == "__main__":
    raise SystemExit(main())
