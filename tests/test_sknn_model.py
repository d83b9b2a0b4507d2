"""Session-kNN as a model: the index, the validation search, the bundle, serving, and the
repeat-aware baselines, on a slice of the bundled Retailrocket data (no items file)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_export_evaluate import _slice_csv  # tests/ is on sys.path under pytest

from export_tools import data as D
from export_tools.evaluate import RepeatBaseline, TransitionBaseline, VsknnBaseline, evaluate
from export_tools.export import export_bundle
from export_tools.models.sknn import (
    KnnRecommender,
    build_index,
    load_sknn,
    position_table,
)
from export_tools.train import load_training_data
from export_tools.train import main as train_main
from sessrec_sdk import Recommender
from sessrec_sdk.errors import CorruptFileError

RR = Path(__file__).resolve().parents[1] / "data" / "retailrocket"


# ------------------------------------------------------------------ the index


def test_build_index_hand_example():
    # 3 items, sessions in time order (0 oldest); item 1 repeats inside session 0
    sessions = [np.array([0, 1, 1, 2]), np.array([1, 0]), np.array([1])]
    ix = build_index(sessions, 3, sample=2, idf=False)
    # each session's distinct items in first-occurrence order
    assert ix["session_indptr"].tolist() == [0, 3, 5, 6]
    assert ix["session_items"].tolist() == [0, 1, 2, 1, 0, 1]
    # each item's most recent sessions first, at most `sample` of them
    assert ix["item_indptr"].tolist() == [0, 2, 4, 5]
    assert ix["item_sessions"].tolist() == [1, 0, 2, 1, 0]
    assert ix["item_weight"].tolist() == [1.0, 1.0, 1.0]
    idf = build_index(sessions, 3, sample=2, idf=True)["item_weight"]
    # 6 distinct (session, item) pairs; item 0 in 2 sessions, item 1 in 3, item 2 in 1
    np.testing.assert_allclose(idf, np.float32([math.log(6 / 2), math.log(6 / 3),
                                                math.log(6 / 1)]))


def test_knn_recommender_counts_neighbors_and_repeats():
    sessions = [np.array([0, 1]), np.array([0, 2]), np.array([0, 2]), np.array([3, 4])]
    ix = build_index(sessions, 5, sample=10, idf=False)
    rec = KnnRecommender(ix, sample=10, neighbors=10, window=10)
    rows, scores = rec.top(np.array([0]), k=5, exclude_session=True)
    # item 2 follows item 0 in two sessions, item 1 in one; item 0 itself is excluded
    assert rows.tolist() == [2, 1]
    assert scores[0] == pytest.approx(2 * scores[1])
    rows, scores = rec.top(np.array([0]), k=5, exclude_session=False, bonus=100.0)
    assert rows[0] == 0 and scores[0] > 100  # the session item, with the bonus
    assert rec.top(np.array([-1]), k=5)[0].size == 0  # nothing known: nothing to say


# ------------------------------------------------------------------ training and export


@pytest.fixture(scope="module")
def knn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sknn")
    _slice_csv(RR / "train.csv.gz", root / "train.csv", 6000)
    code = train_main(["--model", "sknn", "--preset", "fast", "--train",
                       str(root / "train.csv"), "--keep-repeats", "--out", str(root / "ckpt")])
    assert code == 0
    bundle, report = export_bundle(root / "ckpt", root / "bundle")
    return root, bundle, report


def test_train_chooses_the_best_validation_trial(knn_run):
    root, _, _ = knn_run
    config, index = load_sknn(root / "ckpt")
    v = config["validation"]
    best = max(v["trials"], key=lambda t: (t["HR@20"], t["MRR@20"]))
    assert (best["HR@20"], best["MRR@20"]) == (v["chosen"]["HR@20"], v["chosen"]["MRR@20"])
    chosen = config["model_config"]
    assert {k: best[k] for k in chosen} == chosen
    assert config["valid_split"] == "recent" and config["data"]["items"] is None
    # repeats are a signal on this data: the search must have found that
    assert not chosen["exclude_session_items"]
    # the final index holds every training session, validation included
    sessions, catalog = load_training_data(root / "train.csv", keep_repeats=True)
    assert config["n_sessions"] == len(sessions) == len(index["session_indptr"]) - 1
    assert catalog.n_categories == 0


def test_bundle_serves_what_the_index_answers(knn_run):
    root, bundle, report = knn_run
    rec = Recommender.load(bundle, verify=True)
    m = rec.manifest
    assert m["scorer"] == "sknn" and "encoder" not in m and not m["has_categories"]
    assert m["defaults"]["candidates"] == "sessions"
    assert m["validation"]["chosen"] == report["validation"]
    config, index = load_sknn(root / "ckpt")
    s = config["model_config"]
    knn = KnnRecommender(index, sample=s["sample"], neighbors=s["neighbors"],
                         window=s["window"], position=position_table(s))
    sessions, catalog = load_training_data(root / "train.csv", keep_repeats=True)
    ids = np.asarray(catalog.item_ids)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(sessions), 50, replace=False):
        x = sessions[i][: rng.integers(1, len(sessions[i]) + 1)]
        out = rec.recommend(ids[x], k=20)
        rows, scores = knn.top(x, 20, s["exclude_session_items"], s["repeat_bonus"])
        assert out.item_ids.tolist() == ids[rows].tolist()
        assert out.scores.view(np.uint32).tolist() == scores.view(np.uint32).tolist()
        assert out.n_candidates >= len(out)
    assert rec.recommend([], k=5).fallback == "popularity"


def test_position_table_hand_values():
    assert position_table({}) is None  # V-SKNN: every place weighs 1
    assert position_table({"position_after": 0.0, "position_before": 1.0}) is None
    t = position_table({"position_after": 3.0, "position_decay": 2.0, "position_before": 0.5})
    assert t.dtype == np.float32 and t.shape == (17,)
    # offsets -8..8: 0.5 ahead of the shared item, 1 on it, 1 + 3 exp(-(d - 1) / 2) after
    assert t[:8].tolist() == [0.5] * 8 and t[8] == 1.0
    np.testing.assert_array_equal(t[9:], np.float32(1 + 3 * np.exp(-np.arange(8) / 2.0)))
    assert t[9] == 4.0


def test_bundle_carries_the_position_table(knn_run, tmp_path):
    """A setting with a neighbor-position table: the checkpoint records it, the bundle's
    manifest holds the table's float32 values, and the SDK answers what the training-side
    kernel with that table answers, bit for bit."""
    root, _, _ = knn_run
    setting = {"position_after": 3.0, "position_decay": 2.0, "position_before": 0.25}
    code = train_main(["--model", "sknn", "--preset", "fast", "--train",
                       str(root / "train.csv"), "--keep-repeats", "--out",
                       str(tmp_path / "ckpt"), "--set", "tune=false",
                       *(a for k, v in setting.items() for a in ("--set", f"{k}={v}"))])
    assert code == 0
    config, index = load_sknn(tmp_path / "ckpt")
    s = config["model_config"]
    assert {k: s[k] for k in setting} == setting
    bundle, _ = export_bundle(tmp_path / "ckpt", tmp_path / "bundle")
    rec = Recommender.load(bundle, verify=True)
    table = position_table(s)
    assert rec.manifest["sknn"]["position_weight"] == table.tolist()
    assert rec.manifest["format_version"] == 3
    assert np.array_equal(rec._served.knn_index.position_weight, table)
    knn = KnnRecommender(index, sample=s["sample"], neighbors=s["neighbors"],
                         window=s["window"], position=table)
    plain = KnnRecommender(index, sample=s["sample"], neighbors=s["neighbors"],
                           window=s["window"])
    sessions, catalog = load_training_data(root / "train.csv", keep_repeats=True)
    ids = np.asarray(catalog.item_ids)
    differ = 0
    for x in sessions[:60]:
        out = rec.recommend(ids[x[:-1]] if len(x) > 1 else ids[x], k=20)
        q = x[:-1] if len(x) > 1 else x
        rows, scores = knn.top(q, 20, s["exclude_session_items"], s["repeat_bonus"])
        assert out.item_ids.tolist() == ids[rows].tolist()
        assert out.scores.view(np.uint32).tolist() == scores.view(np.uint32).tolist()
        differ += not np.array_equal(plain.top(q, 20)[1], scores)
    assert differ > 0  # the table changed some answers: it is not silently dropped


def test_bad_position_settings_are_refused(knn_run, tmp_path):
    root, _, _ = knn_run
    for bad in ("position_decay=0", "position_after=-1", "position_before=\"x\""):
        with pytest.raises(ValueError, match="position_decay > 0"):
            train_main(["--model", "sknn", "--train", str(root / "train.csv"),
                        "--keep-repeats", "--out", str(tmp_path / "x"), "--set", bad])


def test_sknn_bundle_refuses_what_it_cannot_do(knn_run):
    _, bundle, _ = knn_run
    rec = Recommender.load(bundle)
    item = int(rec.item_ids[0])
    with pytest.raises(ValueError, match="session-kNN bundle takes its candidates"):
        rec.recommend([item], candidates="neighbors")
    with pytest.raises(ValueError, match="needs item categories"):
        rec.recommend([item], category_filter="last")
    with pytest.raises(ValueError, match="no encoder"):
        rec.query([item])
    with pytest.raises(ValueError, match="neighbors must be in"):
        rec.recommend([item], neighbors=10**6)


def test_damaged_session_index_is_a_bundle_error(knn_run, tmp_path):
    import shutil

    from fault_injection import resign

    _, bundle, _ = knn_run
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    arr = np.load(bad / "sknn_item_sessions.npy")
    arr[: len(arr)] = 2**31 - 1  # every session number out of range
    np.save(bad / "sknn_item_sessions.npy", arr)
    resign(bad, "sknn_item_sessions.npy")
    with pytest.raises(CorruptFileError, match="sknn_item_sessions"):
        Recommender.load(bad, verify=True)
    rec = Recommender.load(bad, verify=False)  # unverified: the call finds it, named
    ids = rec.item_ids
    with pytest.raises(CorruptFileError, match="sknn_item_sessions"):
        for i in range(50):
            rec.recommend([int(ids[i])])
    indptr = np.load(bad / "sknn_session_items_indptr.npy")
    indptr[1] = indptr[-1] + 5  # not rising to the data's length
    np.save(bad / "sknn_session_items_indptr.npy", indptr)
    resign(bad, "sknn_session_items_indptr.npy")
    with pytest.raises(CorruptFileError, match="sknn_session_items_indptr"):
        Recommender.load(bad, verify=False)


def test_inspect_prints_the_validation_trials(knn_run, capsys):
    from sessrec_sdk.cli import main

    _, bundle, _ = knn_run
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "session-kNN over" in out and "validation   recent 10%" in out
    assert out.count("  trial      ") == len(
        json.loads((bundle / "manifest.json").read_text())["validation"]["trials"])


# ------------------------------------------------------------------ evaluation


def test_repeat_baseline_hand_example():
    train = [np.array([1, 2, 3]), np.array([1, 3]), np.array([4, 1])]
    base = RepeatBaseline(TransitionBaseline(train))
    # the session's items most recent first (each once), then 1's successors, popularity
    assert base.recommend(np.array([2, 5, 2]), 4).tolist() == [2, 5, 3, 1]
    assert base.recommend(np.array([7, 8, 9]), 2).tolist() == [9, 8]


def test_evaluate_an_sknn_bundle_beats_popularity(knn_run):
    root, bundle, _ = knn_run
    _slice_csv(RR / "test.csv.gz", root / "test.csv", 300)
    result = evaluate(bundle, root / "test.csv", train_csv=root / "train.csv",
                      protocols=("last",), latency_sessions=20, progress=False,
                      log=lambda _: None)
    rows = {r["method"]: r for r in result["rows"]}
    assert {"popularity", "transition", "repeat", "vsknn", "sknn/sdk", "sknn/sdk/exclude",
            "sknn/sdk/no-bonus"} <= set(rows)
    assert rows["sknn/sdk"]["HR@20"] > rows["popularity"]["HR@20"] + 0.1
    # on repeat-heavy data recommending session items must beat never doing so
    assert rows["sknn/sdk"]["HR@20"] > rows["sknn/sdk/exclude"]["HR@20"]
    assert rows["repeat"]["HR@20"] > rows["transition"]["HR@20"]


def test_vsknn_baseline_maps_external_ids():
    train = [np.array([10, 20]), np.array([10, 30]), np.array([10, 30])]
    base = VsknnBaseline(train)
    assert base.recommend(np.array([10]), 3)[:1].tolist() == [10]
    assert set(base.recommend(np.array([10]), 3).tolist()) == {10, 20, 30}
    assert base.recommend(np.array([99]), 3).size == 0
    assert D.split_validation([1, 2, 3, 4, 5], 0.4, how="recent") == ([1, 2, 3], [4, 5])


# ------------------------------------------------------------------ the hybrid bundle


@pytest.fixture(scope="module")
def hybrid_run(knn_run):
    from export_tools.trainer import train

    root, _, _ = knn_run
    sessions, catalog = load_training_data(root / "train.csv", keep_repeats=True)
    ckpt = train("grainrec", "fast", sessions, catalog, root / "gckpt",
                 overrides={"dim": 16, "epochs": 1, "batch_size": 256,
                            "same_category": False},
                 valid_split="recent", progress=False,
                 data_info={"train": str(root / "train.csv"), "items": None,
                            "keep_repeats": True})
    bundle, report = export_bundle(ckpt, root / "hybrid", neighbors=20, n_parity=20,
                                   progress=False, session_index=root / "ckpt")
    return root, bundle, report


def test_hybrid_bundle_records_its_search(hybrid_run):
    _, bundle, report = hybrid_run
    rec = Recommender.load(bundle, verify=True)
    m = rec.manifest
    assert m.get("scorer", "encoder") == "encoder" and "sknn" in m
    v = m["validation"]
    assert {t["candidates"] for t in v["trials"]} == {"neighbors", "sessions"}
    assert any(t["knn_weight"] > 0 for t in v["trials"])
    best = max(v["trials"], key=lambda t: (t["HR@20"], t["MRR@20"]))
    assert (best["HR@20"], best["MRR@20"]) == (v["chosen"]["HR@20"], v["chosen"]["MRR@20"])
    for key in ("candidates", "knn_weight", "repeat_bonus", "exclude_session_items"):
        assert m["defaults"][key] == v["chosen"][key]
    # the bundle serves the index of every training session, not of the training part
    config, _ = load_sknn(bundle.parent / "ckpt")
    assert m["sknn"]["n_sessions"] == config["n_sessions"] == report["session_index"][
        "n_sessions"]


def test_hybrid_scores_are_the_models_plus_the_blend(hybrid_run):
    _, bundle, _ = hybrid_run
    rec = Recommender.load(bundle)
    served = rec._served
    matrix = np.asarray(served.bundle.item_matrix, np.float32)
    rng = np.random.default_rng(1)
    checked = 0
    for i in rng.choice(rec.n_items, 40, replace=False):
        session = rec.item_ids[[i, (i * 7 + 3) % rec.n_items]]
        plan = rec.plan(session, k=20, candidates="sessions", knn_weight=0.0,
                        exclude_session_items=True)
        knn_rows, knn_scores = rec.knn_candidates(plan)
        q = rec.query(session)
        out = rec.recommend(session, k=20, candidates="sessions", knn_weight=0.0,
                            exclude_session_items=True)
        rows = rec._served.bundle.ids.rows(out.item_ids)
        # only kNN candidates, never the session's items, scored by the model itself
        assert set(rows.tolist()) <= set(knn_rows.tolist())
        assert not set(rows.tolist()) & set(plan.known.tolist())
        np.testing.assert_allclose(out.scores, matrix[rows] @ q, rtol=0, atol=1e-5)
        # with a weight: model score + weight * kNN score / the call's top kNN score
        w = 3.0
        blended = rec.recommend(session, k=20, candidates="sessions", knn_weight=w,
                                exclude_session_items=True)
        cand = np.setdiff1d(knn_rows, plan.known)
        if cand.size == 0:
            continue
        knn_of = dict(zip(knn_rows.tolist(), (knn_scores / knn_scores.max()).tolist()))
        expect = matrix[cand] @ q + w * np.array([knn_of[r] for r in cand])
        top = cand[np.lexsort((cand, -expect))][:20]
        got = rec._served.bundle.ids.rows(blended.item_ids)
        assert got.tolist() == top.tolist() or np.allclose(
            np.sort(expect)[::-1][:20], blended.scores, atol=1e-4)
        checked += 1
    assert checked >= 10


def test_damaged_sknn_manifest_and_weights_are_refused_at_load(knn_run, hybrid_run, tmp_path):
    import shutil

    from fault_injection import read_manifest, resign, write_manifest

    _, bundle, _ = knn_run
    _, hybrid, _ = hybrid_run

    def damaged(src, name, edit):
        out = tmp_path / name
        shutil.copytree(src, out)
        edit(out)
        return out

    def manifest(fn):
        def edit(b):
            m = read_manifest(b)
            fn(m)
            write_manifest(b, m)
        return edit

    def weights(b):
        w = np.load(b / "sknn_item_weight.npy")
        w[3] = np.nan
        np.save(b / "sknn_item_weight.npy", w)
        resign(b, "sknn_item_weight.npy")

    cases = {
        # a count no kernel call could take: refused at load, naming the manifest
        "sample": (bundle, manifest(lambda m: m["sknn"].update(sample=2**31)), "sknn"),
        "position": (bundle, manifest(lambda m: (m.update(format_version=3), m["sknn"].update(
            position_weight=[1.0, -1.0, 1.0]))), "position_weight must be"),
        "position-even": (bundle, manifest(lambda m: (m.update(format_version=3), m[
            "sknn"].update(position_weight=[1.0, 1.0]))), "position_weight must be"),
        # a format-2 reader would ignore the table: a format-2 manifest may not hold one
        "position-v2": (bundle, manifest(lambda m: (m.update(format_version=2), m[
            "sknn"].update(position_weight=[1.0]))), "needs format_version >= 3"),
        "max_candidates": (hybrid, manifest(lambda m: m["defaults"].update(
            max_candidates=10**12)), "max_candidates"),
        # an encoder bundle relabelled as session-kNN must not silently drop its encoder
        "scorer": (hybrid, manifest(lambda m: m.update(scorer="sknn")), "scorer 'sknn'"),
        # NaN weights would rank differently per backend: refused on every load
        "weights": (bundle, weights, "sknn_item_weight"),
    }
    for name, (src, edit, match) in cases.items():
        bad = damaged(src, name, edit)
        for verify in (False, True):
            with pytest.raises(CorruptFileError, match=match):
                Recommender.load(bad, verify=verify)
