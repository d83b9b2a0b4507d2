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
