"""Markdown tables from ``sessrec evaluate --json`` files: the tables of docs/evaluation.md
are generated with this, not typed.

    python -m export_tools.report runs/grainrec-fast-eval.json runs/attenmixer-fast-eval.json

One table of every row of every file, both protocols (rows sorted by protocol, then in
file order); a baseline row (``popularity``, ``transition``) that several files measured
identically on the same examples is listed once (also ``repeat``, ``vsknn``). ``--methods`` keeps only rows whose
method matches one of the given shell patterns (e.g. ``'*/full*' '*/sdk'``).

    python -m export_tools.report --fill docs/evaluation.md

regenerates, in place, every block of a markdown file between a line
``<!-- report: JSON... [--methods PATTERN...] -->`` and the next ``<!-- /report -->``
(paths relative to the repository root, the current directory).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

from .metrics import KS

COLUMNS = [f"{m}@{k}" for k in KS for m in ("HR", "MRR", "NDCG")]
BASELINES = ("popularity", "transition", "repeat", "vsknn")


def load(paths) -> list[tuple[str, dict]]:
    return [(Path(p).stem, json.loads(Path(p).read_text())) for p in paths]


def rows_of(results: list[tuple[str, dict]], methods: list[str] | None = None) -> list[dict]:
    """Every row, tagged with its file's info; duplicate baselines dropped."""
    out, seen = [], set()
    for _, result in results:
        info = result.get("info", {})
        for row in result["rows"]:
            protocol = row.get("protocol", "last")
            if methods and not any(fnmatch.fnmatch(row["method"], m) for m in methods):
                continue
            if row["method"] in BASELINES:
                key = (row["method"], protocol, row["n"],
                       tuple(round(row[c], 6) for c in COLUMNS))
                if key in seen:
                    continue
                seen.add(key)
            out.append({**row, "protocol": protocol,
                        "_sample": (info.get("prefixes_sample") or {}).get("sessions")
                        if protocol == "prefixes" else None})
    order = {"last": 0, "prefixes": 1}
    return sorted(out, key=lambda r: order.get(r["protocol"], 2))  # stable: file order


def markdown(rows: list[dict]) -> str:
    head = ["method", "protocol", "examples", *COLUMNS, "median µs", "p99 µs"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        protocol = r["protocol"]
        if r.get("_sample"):
            protocol += f" ({r['_sample']:,} sessions)"
        lat = r.get("latency_median_us")
        p99 = r.get("latency_p99_us")
        cells = [f"`{r['method']}`", protocol, f"{r['n']:,}",
                 *(f"{r[c]:.4f}" for c in COLUMNS),
                 "" if lat is None else f"{lat:.1f}", "" if p99 is None else f"{p99:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="python -m export_tools.report",
                                description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="sessrec evaluate --json outputs")
    p.add_argument("--methods", nargs="*", help="shell patterns of the methods to keep")
    args = p.parse_args(argv)
    return markdown(rows_of(load(args.json), args.methods))


def fill(path: str | Path) -> int:
    """Regenerate the report blocks of a markdown file; returns how many."""
    import shlex

    lines = Path(path).read_text().splitlines()
    out, n, i = [], 0, 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.startswith("<!-- report:") and line.rstrip().endswith("-->"):
            argv = shlex.split(line.strip()[len("<!-- report:"):-len("-->")])
            while i < len(lines) and lines[i].strip() != "<!-- /report -->":
                i += 1
            if i == len(lines):
                raise ValueError(f"{path}: block {line!r} has no <!-- /report --> line")
            out.extend(table(argv).splitlines())
            n += 1
    Path(path).write_text("\n".join(out) + "\n")
    return n


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--fill"]:
        for path in argv[1:]:
            print(f"{path}: {fill(path)} tables regenerated")
        return 0
    print(table(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
