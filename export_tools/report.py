"""Markdown tables from ``sessrec evaluate --json`` files: the tables of docs/evaluation.md
are generated with this, not typed.

    python -m export_tools.report runs/grainrec-fast-eval.json runs/attenmixer-fast-eval.json

One table of every row of every file, both protocols (rows sorted by protocol, then in
file order); a baseline row (``popularity``, ``transition``) that several files measured
identically on the same examples is listed once (also ``repeat``, ``vsknn``).
``--methods`` keeps only rows whose method matches one of the given shell patterns (e.g.
``'*/full*' '*/sdk'``).

    python -m export_tools.report --fill docs/evaluation.md

regenerates, in place, every block of a markdown file between a line
``<!-- report: JSON... [--methods PATTERN...] -->`` and the next ``<!-- /report -->``
(paths relative to the repository root, the current directory).

``--columns COL...`` appends further row columns to the table, e.g. ``candidates_mean``
(rows scored per call), ``catalog_share`` (that over the catalog, shown in %) and
``target_category_hit`` (share of examples whose target's category is among the top K
predicted, on ``categories=K`` rows); a row without the column leaves its cell empty.
``--category-accuracy`` prints instead the category-prediction accuracy of each file
(``info["category_accuracy"]``: top-K hit rate of the target's category, per protocol).
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


#: headers and formats of the columns ``--columns`` may append
EXTRA = {"candidates_mean": ("candidates", lambda v: f"{v:,.1f}"),
         "catalog_share": ("catalog %", lambda v: f"{100 * v:.2f}"),
         "target_category_hit": ("target category in top K", lambda v: f"{v:.4f}")}


def _extra_cell(row: dict, col: str) -> str:
    v = row.get(col)
    if v is None:
        return ""
    fmt = EXTRA.get(col, (col, lambda x: f"{x:.4f}" if isinstance(x, float) else str(x)))[1]
    return fmt(v)


def markdown(rows: list[dict], extra: list[str] | None = None) -> str:
    extra = list(extra or [])
    head = ["method", "protocol", "examples", *COLUMNS, "median µs", "p99 µs",
            *(EXTRA.get(c, (c,))[0] for c in extra)]
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
                 "" if lat is None else f"{lat:.1f}", "" if p99 is None else f"{p99:.1f}",
                 *(_extra_cell(r, c) for c in extra)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def category_accuracy_markdown(results: list[tuple[str, dict]]) -> str:
    """One line per file and protocol: the top-K hit rates of the target's category."""
    entries = [(name, protocol, acc, result.get("info", {}))
               for name, result in results
               for protocol, acc in result.get("info", {}).get("category_accuracy", {}).items()]
    if not entries:
        raise ValueError("no category_accuracy in the given files (a bundle whose encoder "
                         "predicts categories, evaluated with this version)")
    ks = sorted({int(key[len("category_top"):]) for *_, acc, _ in entries
                 for key in acc if key.startswith("category_top")})
    head = ["file", "protocol", "examples", *(f"top-{k}" for k in ks)]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    order = {"last": 0, "prefixes": 1}
    for name, protocol, acc, info in sorted(entries, key=lambda e: order.get(e[1], 2)):
        sample = (info.get("prefixes_sample") or {}).get("sessions")
        label = protocol + (f" ({sample:,} sessions)" if sample and protocol == "prefixes"
                            else "")
        cells = [f"`{name}`", label, f"{acc['n']:,}",
                 *("" if acc.get(f"category_top{k}") is None
                   else f"{acc[f'category_top{k}']:.4f}" for k in ks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="python -m export_tools.report",
                                description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="sessrec evaluate --json outputs")
    p.add_argument("--methods", nargs="*", help="shell patterns of the methods to keep")
    p.add_argument("--columns", nargs="*", help="further row columns to append, e.g. "
                   "candidates_mean catalog_share target_category_hit")
    p.add_argument("--category-accuracy", action="store_true",
                   help="the category-prediction accuracy of each file instead of the rows")
    args = p.parse_args(argv)
    if args.category_accuracy:
        return category_accuracy_markdown(load(args.json))
    return markdown(rows_of(load(args.json), args.methods), args.columns)


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
