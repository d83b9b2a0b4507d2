#!/usr/bin/env python3
"""Hand-written mutants of the C kernels (csrc/sessrec_kernels.c, the session-kNN kernel
csrc/sessrec_sknn.c and the top-k heap both share, csrc/sessrec_heap.h), each rebuilt and
run against the kernel tests: a mutant the tests do not kill is a path no test checks.

    .venv/bin/python scripts/c_mutants.py              # all mutants, ~5-8 minutes on 2 cores
    .venv/bin/python scripts/c_mutants.py batch-drop-last fold-last-step   # some of them
    .venv/bin/python scripts/c_mutants.py --list

Everything happens in a temporary copy of the tree (as scripts/sanitize.sh does): the
repository's csrc/ and its built sessrec_sdk/_kernels*.so are never touched. For each
mutant: apply one textual replacement (it must match exactly once), build the extension
in the copy, run ``pytest -x`` on the kernel tests (TESTS) with the copy first on
sys.path, restore the source. A mutant is "killed" when the tests fail, "survived" when
they pass, "build-error" when it does not compile. The unmutated source is built and
tested first: it must pass (otherwise nothing can be concluded).
Exit status: 0 if every mutant was killed, 1 otherwise.
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

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "csrc/sessrec_kernels.c"
HEAP = "csrc/sessrec_heap.h"  # the top-k heap both kernels share
SKNN = "csrc/sessrec_sknn.c"
TESTS = ["tests/test_kernels.py", "tests/test_fuzz_kernels.py", "tests/test_sknn_kernels.py"]

# (name, what the bug is, text in csrc/sessrec_kernels.c, replacement[, file if not that])
MUTANTS = [
    ("batch-drop-last", "the last candidate of every full 512-candidate batch is not scored",
     "score_batch_typed(batch, n_batch, mat, row_bytes, is_half, hw_f16, dim, bias,\n",
     "score_batch_typed(batch, n_batch - 1, mat, row_bytes, is_half, hw_f16, dim, bias,\n"),
    ("batch-no-reset", "a full batch is scored but not emptied (rescored with the next one)",
     "                n_scored += n_batch;\n                n_batch = 0;\n",
     "                n_scored += n_batch;\n                n_batch = 1;\n"),
    ("fold-last-step", "the last lane-fold step of the vector dot product reordered",
     "return (lo[0] + lo[2]) + (lo[1] + lo[3]);",
     "return (lo[0] + lo[1]) + (lo[2] + lo[3]);"),
    ("fold-first-step", "the first vector fold adds lanes j and j+4 before j+8",
     "    v8f s = a0 + a1;\n    v4f lo = {s[0], s[1], s[2], s[3]}, hi = {s[4], s[5], s[6], s[7]};\n"
     "    lo += hi;\n",
     "    v4f lo = {a0[0] + a0[4], a0[1] + a0[5], a0[2] + a0[6], a0[3] + a0[7]},\n"
     "        hi = {a1[0] + a1[4], a1[1] + a1[5], a1[2] + a1[6], a1[3] + a1[7]};\n"
     "    lo += hi;\n"),
    ("scalar-fold-adjacent", "the scalar fold (dims not a multiple of 16) adds adjacent lanes",
     "for (int j = 0; j < half; j++) acc[j] = acc[j] + acc[j + half];",
     "for (int j = 0; j < half; j++) acc[j] = acc[2 * j] + acc[2 * j + 1];"),
    ("worse-le", "`<` turned into `<=` in worse(): equal scores always count as worse",
     "return sa < sb || (sa == sb && ra > rb);",
     "return sa <= sb || (sa == sb && ra > rb);", HEAP),
    ("tie-by-larger-row", "ties broken by the larger row",
     "return sa < sb || (sa == sb && ra > rb);",
     "return sa < sb || (sa == sb && ra < rb);", HEAP),
    ("heap-sift-right-off-by-one", "sift_down looks one slot past the heap for the right child",
     "if (r < n && sr_item_worse(scores[r], rows[r], scores[m], rows[m])) m = r;",
     "if (r <= n && sr_item_worse(scores[r], rows[r], scores[m], rows[m])) m = r;", HEAP),
    ("heap-keeps-k-minus-1", "the bounded heap holds k - 1 items",
     "if (h->size < h->k) {", "if (h->size < h->k - 1) {", HEAP),
    ("heap-sort-stops-early", "the final heap sort leaves the first two items unsorted",
     "for (int32_t n = h->size - 1; n > 0; n--) {",
     "for (int32_t n = h->size - 1; n > 1; n--) {", HEAP),
    ("category-filter-inverted", "the category filter keeps the rejected categories",
     "if (!ok) continue;", "if (ok) continue;"),
    ("allow-list-inverted", "the allow-list drops the allowed rows",
     "if (n_allowed >= 0 && allow_mark[c] != epoch) continue;",
     "if (n_allowed >= 0 && allow_mark[c] == epoch) continue;"),
    ("exclude-last-dropped", "the last excluded row is not excluded",
     "for (int32_t i = 0; i < n_excluded; i++) seen[excluded[i]] = epoch;",
     "for (int32_t i = 0; i < n_excluded - 1; i++) seen[excluded[i]] = epoch;"),
    ("exclude-seeds-ignored", "exclude_seeds=1 no longer keeps the session items out",
     "    if (exclude_seeds) {\n", "    if (0) {\n"),
    ("seed-never-candidate", "exclude_seeds=0 no longer makes the seeds candidates",
     "for (int32_t t = exclude_seeds || !from_seed ? 0 : -1; t < len; t++) {",
     "for (int32_t t = 0; t < len; t++) {"),
    ("extra-cands-last-dropped", "the last of the caller's further candidates is not merged",
     "const int32_t len = from_seed ? n_use : n_cands;",
     "const int32_t len = from_seed ? n_use : n_cands - 1;"),
    ("extra-cands-single-ignored", "a single further candidate is ignored",
     "const int32_t n_lists = n_seeds + (n_cands > 0);",
     "const int32_t n_lists = n_seeds + (n_cands > 1);"),
    ("no-dedupe", "a candidate seen before is not marked: duplicates are scored again",
     "            seen[c] = epoch;\n", "            (void)0;\n"),
    ("bias-dropped", "the bias is never added", "if (bias) score += bias[c];",
     "if (bias && 0) score += bias[c];"),
    ("range-check-off-by-one", "neighbor id == n_items passes the range check (read past the end)",
     "if (c < -1 || c >= n_items) {", "if (c < -1 || c > n_items) {"),
    ("half-subnormal-scale", "float16 subnormals widened with a rounded 2^-24",
     "out = (float)mant * 5.9604644775390625e-8f;", "out = (float)mant * 5.96e-8f;"),
    ("half-sign-lost", "the vector float16 widening drops the sign bit",
     "bits |= (h & 0x8000u) << 16;", "bits |= (h & 0x8000u) << 15;"),
    ("n-scored-last-batch", "the last (partial) batch is not counted in n_candidates",
     "score_batch_typed(batch, n_batch, mat, row_bytes, is_half, hw_f16, dim, bias, query, &h);\n"
     "    n_scored += n_batch;\n",
     "score_batch_typed(batch, n_batch, mat, row_bytes, is_half, hw_f16, dim, bias, query, &h);\n"),
    ("isa-portable-ignored", "instruction_set('portable') keeps the AVX2 instance",
     "if (request == 0) sr_isa = 0;", "if (request == 0) sr_isa = best;"),
    ("find-lower-bound-off-by-one", "the id lookup's binary search probes one slot too far",
     "base[i] = sorted_ids[base[i] + half - 1] < want[i] ? base[i] + half : base[i];",
     "base[i] = sorted_ids[base[i] + half - 1] <= want[i] ? base[i] + half : base[i];"),
    ("find-unknown-mapped", "an unknown id is mapped to the row of its neighbouring id",
     "if (pos < n && sorted_ids[pos] == want[i]) out_rows[n_found++] = order[pos];",
     "if (pos < n) out_rows[n_found++] = order[pos];"),
    ("find-clamp", "the id lookup never finds the largest id",
     "int64_t pos = base[i] + (sorted_ids[base[i]] < want[i]);",
     "int64_t pos = base[i] + (sorted_ids[base[i]] <= want[i]);"),
    ("sknn-decay-denominator", "session-kNN decay weights divided by u + 1 instead of u",
     "const float pi = (float)(n - p) / (float)u;",
     "const float pi = (float)(n - p) / (float)(u + 1);", SKNN),
    ("sknn-anchor-off-by-one", "the shared item's place in a neighbor session taken one later",
     "if (ix->session_items[t] == shared) { anchor = t; break; }",
     "if (ix->session_items[t] == shared) { anchor = t + 1; break; }", SKNN),
    ("sknn-clamp-sign", "offsets before -h clamp to +h",
     "if (d < -half) d = -half;", "if (d < -half) d = half;", SKNN),
    ("sknn-table-mirrored", "the position table read back to front",
     "wt = w * ix->position_weight[d + half];", "wt = w * ix->position_weight[half - d];",
     SKNN),
]


def tool_sections(pyproject: str) -> str:
    """The [tool.pytest.*] tables of pyproject.toml only: with the [project]
    table present, the cffi build run from the copy's root trips over setuptools' package
    discovery (several top-level packages in a flat layout)."""
    keep, out = False, []
    for line in pyproject.splitlines(keepends=True):
        if line.startswith("["):
            keep = line.startswith("[tool.pytest")
        if keep:
            out.append(line)
    return "".join(out)


def copy_tree(work: Path, with_so: bool = False) -> None:
    patterns = ["__pycache__", "*.egg-info", ".hypothesis"] + ([] if with_so else ["*.so"])
    ignore = shutil.ignore_patterns(*patterns)
    for name in ("sessrec_sdk", "csrc", "tests", "export_tools"):
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    shutil.copy2(ROOT / "README.md", work / "README.md")
    (work / "pyproject.toml").write_text(tool_sections((ROOT / "pyproject.toml").read_text()))


def build(work: Path, py: str, log: Path) -> bool:
    for so in (work / "sessrec_sdk").glob("_kernels*.so"):
        so.unlink()
    with open(log, "w") as f:
        rc = subprocess.run([py, "csrc/build_kernels.py"], cwd=work, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    return rc == 0 and any((work / "sessrec_sdk").glob("_kernels*.so"))


def run_tests(work: Path, py: str, log: Path, timeout: int) -> tuple[bool, str]:
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    check = (f"import sessrec_sdk._kernels as k; assert k.__file__.startswith({str(work)!r}),"
             " k.__file__")
    subprocess.run([py, "-c", check], cwd=work, env=env, check=True)
    cmd = [py, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS]
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        log.write_text("timeout")
        return False, "timeout"
    log.write_text(proc.stdout + proc.stderr)
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return proc.returncode == 0, (failed[0] if failed else proc.stdout.strip()[-120:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="mutants to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--keep", action="store_true", help="keep the temporary copy and logs")
    p.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    p.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = p.parse_args(argv)
    if args.list:
        for name, why, *_ in MUTANTS:
            print(f"{name:28s} {why}")
        return 0
    unknown = set(args.names) - {m[0] for m in MUTANTS}
    if unknown:
        p.error(f"unknown mutants: {sorted(unknown)}")
    chosen = [m for m in MUTANTS if not args.names or m[0] in args.names]
    chosen = [(name, why, old, new, rest[0] if rest else SOURCE)  # the file it mutates
              for name, why, old, new, *rest in chosen]
    original = {f: (ROOT / f).read_text() for f in {m[4] for m in chosen}}
    for name, _, old, _, source in chosen:  # every mutant must apply to today's source
        if original[source].count(old) != 1:
            print(f"mutant {name}: its text occurs {original[source].count(old)} times in "
                  f"{source} (the source changed: update scripts/c_mutants.py)",
                  file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="sessrec-c-mutants."))
    logs = work / "logs"
    try:
        copy_tree(work)
        logs.mkdir()
        t0 = time.time()
        if not build(work, args.python, logs / "build-original.txt"):
            print("the unmutated source does not build: see", logs / "build-original.txt")
            return 2
        ok, detail = run_tests(work, args.python, logs / "tests-original.txt", args.timeout)
        if not ok:
            print(f"the unmutated source fails the tests ({detail}): nothing to measure")
            return 2
        print(f"baseline: builds and passes ({time.time() - t0:.0f} s)", flush=True)
        results = []
        for name, why, old, new, source in chosen:
            t = time.time()
            (work / source).write_text(original[source].replace(old, new, 1))
            try:
                if not build(work, args.python, logs / f"build-{name}.txt"):
                    status, detail = "build-error", ""
                else:
                    passed, detail = run_tests(work, args.python, logs / f"tests-{name}.txt",
                                               args.timeout)
                    status = "SURVIVED" if passed else "killed"
            finally:
                (work / source).write_text(original[source])
            results.append((name, status))
            print(f"{status:11s} {name:28s} {time.time() - t:5.0f} s  {why}\n"
                  f"{'':12s}{detail}", flush=True)
        killed = sum(s == "killed" for _, s in results)
        survived = [n for n, s in results if s == "SURVIVED"]
        print(f"\nC mutants: {len(results)}, killed {killed}, survived {len(survived)}"
              f"{' (' + ', '.join(survived) + ')' if survived else ''}, build errors "
              f"{sum(s == 'build-error' for _, s in results)}; {time.time() - t0:.0f} s")
        return 0 if killed == len(results) else 1
    finally:
        if args.keep:
            print("kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
