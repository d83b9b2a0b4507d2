"""The evaluation's generated tables (export_tools.report) and its test-session sampling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from export_tools.evaluate import load_test_examples, sample_sessions
from export_tools.report import fill, markdown, rows_of

COLS = {f"{m}@{k}": 0.0 for k in (10, 20) for m in ("HR", "MRR", "NDCG")}


def _result(rows: list[dict], **info) -> dict:
    return {"rows": [{**COLS, "n": 100, **r} for r in rows], "info": info}


def test_sample_sessions_is_even_and_deterministic():
    idx = sample_sessions(10, 4)
    assert idx.tolist() == [0, 2, 5, 7]  # floor(i * 10 / 4)
    assert sample_sessions(10, 4).tolist() == idx.tolist()
    assert sample_sessions(10, None).tolist() == list(range(10))
    assert sample_sessions(10, 99).tolist() == list(range(10))
    with pytest.raises(ValueError):
        sample_sessions(10, 0)


def test_prefixes_sample_keeps_every_prefix_of_the_sampled_sessions(tmp_path):
    csv = tmp_path / "test.csv"
    lines = ["session_id,item_id,timestamp"]
    for sid, items in enumerate([[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]]):
        lines += [f"{sid},{it},{t}" for t, it in enumerate(items)]
    csv.write_text("\n".join(lines) + "\n")
    inputs, targets = load_test_examples(csv, "prefixes", sample=2)  # sessions 0 and 2
    assert [x.tolist() for x in inputs] == [[1], [1, 2], [6], [6, 7], [6, 7, 8]]
    assert targets.tolist() == [2, 3, 7, 8, 9]
    inputs, targets = load_test_examples(csv, "last")
    assert targets.tolist() == [3, 5, 9, 11]
    with pytest.raises(ValueError):
        load_test_examples(csv, "first")


def test_rows_of_lists_identical_baselines_once_and_sorts_by_protocol():
    a = _result([{"method": "transition", "protocol": "prefixes", "HR@20": 0.3},
                 {"method": "transition", "protocol": "last", "HR@20": 0.5},
                 {"method": "m/sdk", "protocol": "last", "HR@20": 0.6}])
    b = _result([{"method": "transition", "protocol": "last", "HR@20": 0.5},
                 {"method": "repeat", "protocol": "last", "HR@20": 0.4},
                 {"method": "n/sdk", "protocol": "last", "HR@20": 0.7}])
    rows = rows_of([("a", a), ("b", b)])
    assert [(r["method"], r["protocol"]) for r in rows] == [
        ("transition", "last"), ("m/sdk", "last"), ("repeat", "last"), ("n/sdk", "last"),
        ("transition", "prefixes")]
    # a baseline measured differently is a different row, and is kept
    c = _result([{"method": "transition", "protocol": "last", "HR@20": 0.1}])
    assert len([r for r in rows_of([("a", a), ("c", c)]) if r["method"] == "transition"]) == 3
    kept = rows_of([("a", a), ("b", b)], methods=["*/sdk"])
    assert [r["method"] for r in kept] == ["m/sdk", "n/sdk"]


def test_markdown_formats_figures_and_the_sample():
    r = _result([{"method": "m/sdk", "protocol": "prefixes", "HR@20": 0.123456,
                  "latency_median_us": 12.34}], prefixes_sample={"sessions": 10000})
    text = markdown(rows_of([("r", r)]))
    line = text.splitlines()[2]
    assert line.startswith("| `m/sdk` | prefixes (10,000 sessions) | 100 |")
    assert "| 0.1235 |" in line and "| 12.3 |" in line


def test_fill_regenerates_only_the_marked_blocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("r.json").write_text(json.dumps(_result([{"method": "m/sdk", "protocol": "last",
                                                   "HR@20": 0.5}])))
    doc = Path("doc.md")
    doc.write_text("intro\n<!-- report: r.json -->\nstale\n<!-- /report -->\noutro\n")
    assert fill(doc) == 1
    text = doc.read_text()
    assert "stale" not in text and "| `m/sdk` | last | 100 |" in text
    assert text.startswith("intro\n") and text.endswith("<!-- /report -->\noutro\n")
    before = text
    assert fill(doc) == 1 and doc.read_text() == before  # idempotent
    doc.write_text("<!-- report: r.json -->\nno end\n")
    with pytest.raises(ValueError, match="no <!-- /report -->"):
        fill(doc)
