"""Export (ONNX parity, neighbor matrix, defaults) and evaluation (metrics, baselines)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from export_tools import data as D
from export_tools.evaluate import (
    TransitionBaseline,
    evaluate,
    evaluate_lists,
    list_rank,
    load_test_examples,
    plot,
    ranking_metrics,
)
from export_tools.export import (
    ParityError,
    choose_defaults,
    export_bundle,
    nearest_neighbors,
    parity_sessions,
)
from sessrec_sdk import Recommender

DATA = Path(__file__).resolve().parents[1] / "data" / "diginetica"


# ------------------------------------------------------------------ metrics


def test_ranking_metrics_hand_computed():
    # ranks 0, 4, 12, miss; K=10: hits at 0 and 4
    m = ranking_metrics(np.array([0, 4, 12, 10**9]))
    assert m["HR@10"] == pytest.approx(2 / 4)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 5) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / np.log2(6)) / 4)
    assert m["HR@20"] == pytest.approx(3 / 4)
    assert m["MRR@20"] == pytest.approx((1 + 1 / 5 + 1 / 13) / 4)
    assert m["NDCG@20"] == pytest.approx((1 + 1 / np.log2(6) + 1 / np.log2(14)) / 4)


def test_list_rank():
    assert list_rank(np.array([5, 7, 9]), 9) == 2
    assert list_rank(np.array([5, 7, 9]), 4) >= 10**9


def test_transition_baseline_hand_example():
    train = [np.array([1, 2, 3]), np.array([1, 3]), np.array([1, 3, 2]), np.array([4, 1])]
    base = TransitionBaseline(train)
    # successors of 1: 3 (twice), 2 (once); fill by popularity: 1 (4x), 3 (3x), 2, 4
    assert base.recommend(np.array([9, 1]), 4).tolist() == [3, 2, 1, 4]
    # unknown last item: popularity only
    assert base.recommend(np.array([99]), 3).tolist() == [1, 3, 2]


@pytest.mark.slow
def test_transition_baseline_reproduces_the_dataset_readme():
    """The protocol check: README figures HR@20 0.3775, MRR@20 0.1945 on this split."""
    train = D.sessionize(D.read_events(DATA / "train.csv.gz"))
    inputs, targets = load_test_examples(DATA / "test.csv.gz")
    assert len(targets) == 51_953
    base = TransitionBaseline(train)
    ranks = np.array([list_rank(base.recommend(x, 20), t) for x, t in zip(inputs, targets)])
    m = ranking_metrics(ranks)
    assert round(m["HR@20"], 4) == 0.3775
    assert round(m["MRR@20"], 4) == 0.1945


# ------------------------------------------------------------------ export pieces


def test_nearest_neighbors_exact_against_brute_force():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((57, 8)).astype(np.float32)
    for sim in ("cosine", "inner"):
        got = nearest_neighbors(m, 5, sim, block=10)
        x = m / np.linalg.norm(m, axis=1, keepdims=True) if sim == "cosine" else m
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        expected = np.argsort(-s, axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(got, expected)
    # model similarity: row i ranked by queries[i] . matrix
    q = rng.standard_normal((57, 8)).astype(np.float32)
    got = nearest_neighbors(m, 5, "inner", block=16, queries=q)
    s = q @ m.T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_array_equal(got, np.argsort(-s, axis=1, kind="stable")[:, :5])
    # fewer items than K: padded with -1
    small = nearest_neighbors(m[:4], 6)
    assert (small[:, 3:] == -1).all() and (small[:, :3] >= 0).all()


def test_choose_defaults_follow_the_data():
    d = choose_defaults({"next_same_last_category": 0.97, "next_in_session_categories": 0.99,
                         "next_repeats_session_item": 0.0}, 150)
    assert d["category_filter"] == "last" and d["exclude_session_items"] and d["neighbors"] == 100
    d = choose_defaults({"next_same_last_category": 0.80, "next_in_session_categories": 0.96,
                         "next_repeats_session_item": 0.2}, 50)
    assert d["category_filter"] == "session" and not d["exclude_session_items"]
    d = choose_defaults({"next_same_last_category": 0.80, "next_in_session_categories": 0.92,
                         "next_repeats_session_item": 0.0}, 100)
    assert d["category_filter"] == "none"


def test_parity_sessions_include_repeats():
    sessions = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    out = parity_sessions(sessions, 2)
    assert any(len(np.unique(s)) < len(s) for s in out)


# ------------------------------------------------------------------ end to end (tiny)


def _slice_csv(src: Path, dst: Path, n_sessions: int) -> None:
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines()
    header, rows = lines[0], lines[1:]
    keep = set()
    out = [header]
    for line in rows:
        sid = line.split(",", 1)[0]
        if sid not in keep and len(keep) >= n_sessions:
            continue
        keep.add(sid)
        out.append(line)
    dst.write_text("\n".join(out) + "\n")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from export_tools.train import load_training_data, train

    root = tmp_path_factory.mktemp("run")
    _slice_csv(DATA / "train.csv.gz", root / "train.csv", 1500)
    _slice_csv(DATA / "test.csv.gz", root / "test.csv", 300)
    sessions, catalog = load_training_data(root / "train.csv", DATA / "items.csv.gz")
    ckpt = train("grainrec", "fast", sessions, catalog, root / "ckpt",
                 overrides={"dim": 16, "epochs": 1, "batch_size": 256}, progress=False,
                 data_info={"train": str(root / "train.csv"),
                            "items": str(DATA / "items.csv.gz")})
    bundle, report = export_bundle(ckpt, root / "bundle", neighbors=20, n_parity=60,
                                   progress=False)
    return root, ckpt, bundle, report


def test_export_parity_and_round_trip(tiny_run):
    root, ckpt, bundle, report = tiny_run
    assert report["parity"]["max_abs_score_diff"] <= 1e-4
    assert report["parity"]["sessions"] >= 60
    rec = Recommender.load(bundle, verify=True)
    m = rec.manifest
    assert m["model"]["kind"] == "grainrec" and m["neighbors_per_item"] == 20
    trained_filtered = json.loads((ckpt / "config.json").read_text())["train_config"][
        "same_category"]
    assert m["inference"] == {"max_session_length": 3, "session_filter":
                              "last_category" if trained_filtered else "none"}
    assert 0 < m["data_stats"]["next_same_last_category"] <= 1
    # the default category filter is the most accurate one on the validation sessions
    hr = m["data_stats"]["validation_hr20_by_category_filter"]
    assert set(hr) == {"none", "last", "session"} and all(0 <= v <= 1 for v in hr.values())
    assert m["defaults"]["category_filter"] == max(hr, key=hr.get)
    assert report["category_filter_choice"] == "best validation HR@20"
    catalog_ids = np.load(ckpt / "item_ids.npy")
    # rows are renumbered along the neighbor graph: the same catalog in another order
    assert m["row_order"] == "locality"
    np.testing.assert_array_equal(np.sort(rec.item_ids), np.sort(catalog_ids))
    assert not np.array_equal(rec.item_ids, catalog_ids)
    out = rec.recommend(catalog_ids[:3].tolist(), k=10)
    assert len(out) == 10 and out.fallback is None


def test_export_row_order_does_not_change_answers(tiny_run, tmp_path):
    """A bundle in the model's row order answers exactly like the default (locality) one."""
    root, ckpt, bundle, _ = tiny_run
    given, report = export_bundle(ckpt, tmp_path / "given", neighbors=20, n_parity=20,
                                  category_filter="session", row_order="given",
                                  progress=False)
    assert report["parity"]["max_abs_score_diff"] <= 1e-4
    a, b = Recommender.load(bundle), Recommender.load(given)
    assert b.manifest["row_order"] == "given"
    np.testing.assert_array_equal(b.item_ids, np.load(ckpt / "item_ids.npy"))
    sessions = [x for x, _ in zip(*load_test_examples(root / "test.csv"))][:150]
    assert len(sessions) >= 100
    for x in sessions:
        for f in ("none", "last", "session"):
            ra, rb = a.recommend(x, k=20, category_filter=f), b.recommend(x, k=20,
                                                                          category_filter=f)
            np.testing.assert_array_equal(ra.item_ids, rb.item_ids)
            np.testing.assert_allclose(ra.scores, rb.scores, rtol=0, atol=1e-6)
            assert ra.fallback == rb.fallback


def test_validation_sessions_only_from_the_checkpoint_data(tiny_run, tmp_path):
    from export_tools.export import validation_sessions
    from export_tools.train import load_training_data

    root, ckpt, _, _ = tiny_run
    config = json.loads((ckpt / "config.json").read_text())
    sessions, _ = load_training_data(root / "train.csv", DATA / "items.csv.gz")
    valid, why = validation_sessions(sessions, config, root / "train.csv")
    assert valid and why == "" and all(len(s) >= 2 and (s >= 0).all() for s in valid)
    # another CSV: its re-split sessions were not held out from training
    other = tmp_path / "other.csv"
    other.write_bytes((root / "train.csv").read_bytes())
    valid, why = validation_sessions(sessions, config, other)
    assert valid == [] and "not the checkpoint's training data" in why
    valid, why = validation_sessions(sessions, {**config, "valid_fraction": 0},
                                     root / "train.csv")
    assert valid == [] and "without a validation split" in why


def test_export_refuses_when_parity_fails(tiny_run, monkeypatch, tmp_path):
    import export_tools.export as E

    _, ckpt, _, _ = tiny_run
    monkeypatch.setattr(E, "PARITY_TOLERANCE", 0.0)  # nothing passes a zero tolerance...
    with pytest.raises(ParityError):
        export_bundle(ckpt, tmp_path / "b", neighbors=5, n_parity=5, progress=False)
    assert not (tmp_path / "b").exists()  # ...and no bundle is left behind
    assert list(tmp_path.iterdir()) == []


def test_evaluate_rows_json_and_plot(tiny_run, tmp_path):
    root, ckpt, bundle, _ = tiny_run
    result = evaluate(bundle, root / "test.csv", train_csv=root / "train.csv",
                      checkpoint=ckpt, progress=False, log=lambda s: None,
                      sweep=(5, 10, 20, 25))
    names = [r["method"] for r in result["rows"]]
    for name in ("popularity", "transition", "grainrec/full", "grainrec/full-sdk-query",
                 "grainrec/sdk", "grainrec/sdk/last", "grainrec/sdk/session",
                 "grainrec/sdk/none", "grainrec/sdk/neighbors=5",
                 "grainrec/sdk/neighbors=20"):
        assert name in names
    assert "grainrec/sdk/neighbors=25" not in names  # above the bundle's K
    for r in result["rows"]:
        assert 0 <= r["MRR@20"] <= r["HR@20"] <= 1 and r["HR@10"] <= r["HR@20"]
    sdk = next(r for r in result["rows"] if r["method"] == "grainrec/sdk")
    assert sdk["latency_median_us"] > 0 and sdk["latency_calls"] > 0
    # the memoised encoder changes nothing: the same rows from plain recommend() calls
    inputs, targets = load_test_examples(root / "test.csv")
    rec = Recommender.load(bundle)
    for name, options in (("grainrec/sdk/session", {"category_filter": "session"}),
                          ("grainrec/sdk/neighbors=5", {"neighbors": 5})):
        plain = evaluate_lists(name, lambda x, o=options: rec.recommend(x, k=20, **o).item_ids,
                               inputs, targets, progress=False)
        row = next(r for r in result["rows"] if r["method"] == name)
        assert {c: row[c] for c in plain if c != "method"} == \
            {c: v for c, v in plain.items() if c != "method"}
    png = tmp_path / "e.png"
    plot(result, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    json.dumps(result)  # serialisable


def test_evaluate_cli(tiny_run, tmp_path, capsys):
    from sessrec_sdk.cli import main

    root, ckpt, bundle, _ = tiny_run
    out = tmp_path / "e.json"
    assert main(["evaluate", str(bundle), "--test", str(root / "test.csv"), "--checkpoint",
                 str(ckpt), "--json", str(out), "--limit", "50", "--no-progress"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {"method", "HR@20", "MRR@20", "NDCG@20"} <= set(rows[0])
    assert "transition" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "export", "evaluate"])
def test_cli_delegates_options_to_the_subcommand(command, capsys):
    from sessrec_sdk.cli import main

    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"sessrec {command}" in capsys.readouterr().out


def test_export_float16_rows(tiny_run, tmp_path):
    """--item-dtype float16: half-precision scored rows, float32 encoder inputs, parity
    checked against the rounded rows, nearly the same lists as the float32 bundle."""
    root, ckpt, bundle, _ = tiny_run
    half, report = export_bundle(ckpt, tmp_path / "half", neighbors=20, n_parity=20,
                                 category_filter="session", item_dtype="float16",
                                 progress=False)
    parity = report["parity"]
    assert parity["max_abs_score_diff"] <= 1e-4 and parity["max_abs_query_diff"] <= 1e-4
    assert 0 < parity["max_abs_float16_rounding"] < 0.05
    a, b = Recommender.load(bundle), Recommender.load(half, verify=True)
    assert b.manifest["item_dtype"] == "float16" and (half / "input_embedding.npy").is_file()
    assert np.load(half / "input_embedding.npy").dtype == np.float32
    sessions = [x for x, _ in zip(*load_test_examples(root / "test.csv"))][:100]
    overlap = []
    for x in sessions:
        np.testing.assert_array_equal(a.query(x), b.query(x))  # same encoder inputs
        ra = a.recommend(x, k=20, category_filter="session")
        rb = b.recommend(x, k=20, category_filter="session")
        assert len(ra) == len(rb) and ra.fallback == rb.fallback
        if len(ra):  # (a session whose candidates all fail the filter gets no items)
            overlap.append(len(set(ra.item_ids) & set(rb.item_ids)) / len(ra))
            np.testing.assert_allclose(rb.scores, ra.scores, rtol=0, atol=0.05)
    assert len(overlap) >= 30 and np.mean(overlap) > 0.9
    with pytest.raises(ValueError, match="item_dtype"):
        export_bundle(ckpt, tmp_path / "bad", item_dtype="int8", progress=False)
