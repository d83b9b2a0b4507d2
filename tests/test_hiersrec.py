"""HierSRec: the model trains (item and category losses), its encoder exports to ONNX with
two outputs (query, category_scores) that match torch, and a bundle written from it serves
the "categories" candidate policy and the "predicted" filter with the model's own scores."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export_tools.models.base import Batch, TrainingData
from export_tools.models.hiersrec import HierSRec
from export_tools.onnx_export import export_encoder
from sessrec_sdk import Recommender
from sessrec_sdk.bundle import write_bundle

N_ITEMS, N_CATS = 400, 9


def _model(seed: int = 0) -> HierSRec:
    torch.manual_seed(seed)
    m = HierSRec(N_ITEMS, N_CATS, dim=16, cat_dim=8, width=16, layers=2, heads=4,
                 proj_dim=8, dropout=0.0)
    cats = (np.arange(N_ITEMS) % N_CATS).astype(np.int32)
    cats[::37] = -1  # some items of unknown category
    m.prepare(TrainingData(sessions=[], catalog=SimpleNamespace(categories=cats)))
    return m


@pytest.fixture(scope="module")
def trained():
    m = _model()
    rng = np.random.default_rng(0)
    # sessions walk within a category: the next item's category is predictable
    starts = rng.integers(0, N_ITEMS - 4 * N_CATS, 256)
    items = torch.tensor(np.stack([starts + N_CATS * j for j in range(4)], axis=1))
    items[::5, -1] = -1  # some sessions of 3 items (left-aligned, padded)
    targets = torch.tensor(starts + 4 * N_CATS)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    first = None
    for _ in range(60):
        loss, parts = m.loss(Batch(items, targets))
        first = first or {k: float(v.detach()) for k, v in parts.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    return m, first, {k: float(v.detach()) for k, v in parts.items()}


def test_both_losses_fall(trained):
    _, first, last = trained
    assert set(first) == {"item_ce", "category_ce"}
    assert last["item_ce"] < 0.5 * first["item_ce"]
    assert last["category_ce"] < 0.5 * first["category_ce"]


def test_shapes_and_embed_matches_input_rows(trained):
    m, _, _ = trained
    items = torch.tensor([[3, 8, -1], [5, 5, 7]])
    q, c = m.encode_all(items, m.embed(items))
    assert q.shape == (2, 16) and c.shape == (2, N_CATS)
    assert m(items).shape == (2, N_ITEMS)
    valid = items >= 0
    assert torch.equal(m.embed(items)[valid], m.input_rows()[items[valid]])
    assert not m.embed(items)[~valid].any()


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    m, _, _ = trained
    path = tmp_path_factory.mktemp("hs") / "encoder.onnx"
    export_encoder(m, path)
    return m, path


def test_onnx_encoder_matches_torch_for_every_length(exported):
    m, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["query", "category_scores"]
    for session in ([1], [4, 13, 22], [5, 5, 9, 30, 31, 2, 8]):
        items = torch.tensor([session])
        emb = m.input_rows()[items].detach()
        with torch.no_grad():
            q, c = m.encode_all(items, emb)
        oq, oc = sess.run(None, {"items": items.numpy(), "item_emb": emb.numpy()})
        np.testing.assert_allclose(oq, q.numpy(), atol=1e-5)
        np.testing.assert_allclose(oc, c.numpy(), atol=1e-5)


def test_bundle_serves_the_category_policies_with_the_models_scores(exported, tmp_path):
    m, path = exported
    with torch.no_grad():
        tables = m.item_tables()
    cats = m.item_category.numpy().astype(np.int32)
    cats[cats == N_CATS] = -1
    bundle = write_bundle(
        tmp_path / "b", encoder=path, item_matrix=tables.item_matrix,
        input_embedding=tables.input_embedding,
        neighbors=np.stack([(np.arange(N_ITEMS) + j) % N_ITEMS for j in range(1, 11)],
                           axis=1).astype(np.int32),
        item_ids=np.arange(N_ITEMS) * 10, popularity=np.arange(N_ITEMS, dtype=np.int32),
        popularity_scores=np.linspace(1, 0, N_ITEMS, dtype=np.float32), item_category=cats,
        model={"kind": "hiersrec", "config": m.config},
        inference={"max_session_length": 8, "session_filter": "none"},
        defaults={"category_filter": "none", "exclude_session_items": True},
        encoder_io={"inputs": [{"name": "items", "kind": "items"},
                               {"name": "item_emb", "kind": "item_rows"}],
                    "outputs": [{"name": "query", "kind": "query"},
                                {"name": "category_scores", "kind": "category_scores"}]},
        n_categories=N_CATS)
    rec = Recommender.load(bundle)
    session_rows = [4, 13, 22]
    out = rec.recommend([r * 10 for r in session_rows], k=10, candidates="categories",
                        categories=2)
    with torch.no_grad():
        items = torch.tensor([session_rows])
        q, c = m.encode_all(items, m.embed(items))
        full = m.scores(q)[0].numpy()
    top_cats = np.argsort(-c[0].numpy(), kind="stable")[:2]
    members = [r for r in range(N_ITEMS) if cats[r] in top_cats and r not in session_rows]
    assert out.n_candidates == len(members)
    # the SDK ranks exactly those items as the model's own full-catalog scores do
    want = sorted(members, key=lambda r: (-full[r], r))[:10]
    assert (out.item_ids // 10).tolist() == want
    np.testing.assert_allclose(out.scores, full[want], atol=1e-4)
    pred = rec.recommend([r * 10 for r in session_rows], k=10, category_filter="predicted",
                         categories=2)
    assert set(cats[pred.item_ids // 10].tolist()) <= set(top_cats.tolist())


# ------------------------------------------------ export search and evaluation rows
# A tiny HierSRec trained on a slice of Diginetica and exported with the validation search:
# the K stage of defaults_by_validation and the category rows of the evaluation.

import gzip  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "diginetica"


def _slice_csv(src: Path, dst: Path, n_sessions: int) -> None:
    with gzip.open(src, "rt") as f:
        header, *rows = f.read().splitlines()
    keep, out = set(), [header]
    for line in rows:
        sid = line.split(",", 1)[0]
        if sid not in keep and len(keep) >= n_sessions:
            continue
        keep.add(sid)
        out.append(line)
    dst.write_text("\n".join(out) + "\n")


@pytest.fixture(scope="module")
def hier_run(tmp_path_factory):
    from export_tools.export import export_bundle
    from export_tools.train import load_training_data, train

    root = tmp_path_factory.mktemp("hier_run")
    _slice_csv(DATA / "train.csv.gz", root / "train.csv", 1000)
    _slice_csv(DATA / "test.csv.gz", root / "test.csv", 80)
    sessions, catalog = load_training_data(root / "train.csv", DATA / "items.csv.gz")
    ckpt = train("hiersrec", "fast", sessions, catalog, root / "ckpt",
                 overrides={"dim": 16, "cat_dim": 8, "width": 16, "heads": 4,
                            "proj_dim": 8, "epochs": 1, "batch_size": 256},
                 progress=False, threads=1,
                 data_info={"train": str(root / "train.csv"),
                            "items": str(DATA / "items.csv.gz")})
    bundle, report = export_bundle(ckpt, root / "bundle", neighbors=20, n_parity=10,
                                   progress=False)
    return root, ckpt, bundle, report


def test_export_search_tries_category_candidates_and_k(hier_run):
    from export_tools.export import CATEGORY_KS

    _, _, bundle, report = hier_run
    assert report["defaults_choice"] == "best validation HR@20 (then MRR@20)"
    m = Recommender.load(bundle).manifest
    v = m["validation"]
    trials = v["trials"]
    assert all({"candidates", "categories"} <= set(t) for t in trials)
    assert {"neighbors", "categories"} <= {t["candidates"] for t in trials}
    assert "predicted" in {t["category_filter"] for t in trials}
    ks = {t["categories"] for t in trials if t["candidates"] == "categories"
          or t["category_filter"] == "predicted"}
    assert set(CATEGORY_KS) <= ks
    best = max(trials, key=lambda t: (t["HR@20"], t["MRR@20"]))
    assert (best["HR@20"], best["MRR@20"]) == (v["chosen"]["HR@20"], v["chosen"]["MRR@20"])
    assert {"candidates", "categories"} <= set(v["chosen"])
    assert m["defaults"]["candidates"] == v["chosen"]["candidates"]


def test_evaluate_category_rows_candidates_and_accuracy(hier_run):
    from export_tools.evaluate import (
        RandomCandidates,
        evaluate,
        evaluate_lists,
        load_test_examples,
    )

    root, ckpt, bundle, _ = hier_run
    ks = (1, 2, 5)
    result = evaluate(bundle, root / "test.csv", checkpoint=ckpt, progress=False,
                      log=lambda s: None, sweep=(10, 20), latency_sessions=20,
                      prefixes_sample=25, category_sweep=ks)
    rows = {(r["method"], r["protocol"]): r for r in result["rows"]}
    rec = Recommender.load(bundle)
    n_items = rec.n_items
    for protocol in ("last", "prefixes"):
        for name in ("hiersrec/full", "hiersrec/sdk", "hiersrec/sdk/neighbors",
                     "hiersrec/sdk/predicted", *(f"hiersrec/sdk/categories={c}" for c in ks),
                     *(f"hiersrec/sdk/random={c}" for c in ks)):
            assert (name, protocol) in rows, (name, protocol)
        sdk_rows = [r for (m, p), r in rows.items() if p == protocol and "/sdk" in m]
        for r in sdk_rows:  # every SDK row says how much of the catalog it scored
            assert r["candidates_mean"] >= 0
            assert r["catalog_share"] == pytest.approx(  # candidates_mean: 0.1 rounding
                r["candidates_mean"] / n_items, abs=0.05 / n_items + 1e-6)
        acc = result["info"]["category_accuracy"][protocol]
        tops = [acc[f"category_top{c}"] for c in ks]
        assert tops == sorted(tops) and 0 <= tops[0] and tops[-1] <= 1
        means = [rows[(f"hiersrec/sdk/categories={c}", protocol)]["candidates_mean"]
                 for c in ks]
        assert means == sorted(means) and means[0] > 0
        for c in ks:
            cat_row = rows[(f"hiersrec/sdk/categories={c}", protocol)]
            assert cat_row["target_category_hit"] == acc[f"category_top{c}"]
            rnd = rows[(f"hiersrec/sdk/random={c}", protocol)]
            # as many rows scored as the category call (less the session items it drops)
            assert abs(rnd["candidates_mean"] - cat_row["candidates_mean"]) <= 20
    # the memoised encoder changes nothing: the same row from plain recommend() calls
    inputs, targets = load_test_examples(root / "test.csv")
    plain = evaluate_lists("x", lambda x: rec.recommend(
        x, k=20, candidates="categories", categories=2, category_filter="none").item_ids,
        inputs, targets, progress=False)
    row = rows[("hiersrec/sdk/categories=2", "last")]
    assert {c: row[c] for c in ("HR@20", "MRR@20", "n")} == \
        {c: plain[c] for c in ("HR@20", "MRR@20", "n")}
    # the neighbors sweep runs on neighbor candidates whatever the default policy
    plain = evaluate_lists("x", lambda x: rec.recommend(
        x, k=20, candidates="neighbors", neighbors=10).item_ids, inputs, targets,
        progress=False)
    row = rows[("hiersrec/sdk/neighbors=10", "last")]
    assert {c: row[c] for c in ("HR@20", "MRR@20", "n")} == \
        {c: plain[c] for c in ("HR@20", "MRR@20", "n")}
    # category accuracy by hand: top-1 = argmax of the encoder's category scores
    cats = np.asarray(rec.bundle.item_category)
    hits = 0
    for x, t in zip(inputs, targets):
        plan = rec.plan(x)
        out = rec.encode(plan)
        row_t = rec.bundle.ids.rows(rec.bundle.ids.coerce(np.array([t])))[0]
        if out is not None and row_t >= 0 and cats[row_t] >= 0:
            hits += int(np.argmax(out["category_scores"].ravel()) == cats[row_t])
    assert result["info"]["category_accuracy"]["last"]["category_top1"] == \
        pytest.approx(hits / len(targets), abs=1e-6)
    # the random control: seeded (same lists again), each call as many random rows as the
    # category policy's candidates, scored by the serving kernel
    opts = {"category_filter": "none", "exclude_session_items": True}
    a, b = RandomCandidates(rec, 2, 20, **opts), RandomCandidates(rec, 2, 20, **opts)
    for x in inputs[:15]:
        ra, rb = a(x), b(x)
        np.testing.assert_array_equal(ra, rb)
        plan = rec.plan(x, k=20, candidates="categories", categories=2, **opts)
        if plan.known.size:
            q = rec.kernel_query(plan, rec.encode(plan))
            rows_scored = a.counts[-1]
            assert rows_scored <= len(q.candidates)
            assert rows_scored >= len(q.candidates) - len(plan.known)
    assert a.counts == b.counts
