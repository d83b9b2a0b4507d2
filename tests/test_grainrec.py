"""GRAINRec model, dense session graph, training loop, checkpoints and ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export_tools.models import MODELS, PRESETS, split_config
from export_tools.models.grainrec import (
    EncoderForExport,
    GRAINRec,
    eop_messages,
    session_graph,
    shortcut_adjacency,
)

LAYER_ORDERS = ["GA", "GGGG", "AAAA", "GAGA", "AGAG"]
N_ITEMS = 40


def pad(seqs, length=None):
    length = length or max(len(s) for s in seqs)
    out = np.full((len(seqs), length), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


def random_sessions(rng, n, max_len=8, vocab=6):
    # small vocabulary: many repeated items
    return [rng.integers(0, vocab, size=rng.integers(1, max_len + 1)).tolist() for _ in range(n)]


def make_model(layers="GA", dim=16, seed=0, **kw):
    torch.manual_seed(seed)
    return GRAINRec(N_ITEMS, dim=dim, layers=layers, dropout=0.1, **kw).eval()


# ---------------------------------------------------------------------------------------
# graph construction
# ---------------------------------------------------------------------------------------
def reference_graph(seq):
    nodes, alias = [], []
    for it in seq:
        if it not in nodes:
            nodes.append(it)
        alias.append(nodes.index(it))
    edges = [(alias[t], alias[t + 1]) for t in range(len(seq) - 1)]  # in order
    shortcut = {(alias[p], alias[q]) for p in range(len(seq)) for q in range(p + 1, len(seq))
                if alias[p] != alias[q]}
    return nodes, alias, edges, shortcut


def test_unique_nodes_and_alias_match_python_reference():
    rng = np.random.default_rng(1)
    sessions = random_sessions(rng, 200, max_len=12) + [[5], [1, 2, 1, 2, 3], [4, 4, 4]]
    items = pad(sessions, 14)
    g = session_graph(items)
    adj = shortcut_adjacency(g)
    for b, seq in enumerate(sessions):
        nodes, alias, _, shortcut = reference_graph(seq)
        L = len(seq)
        assert g["alias"][b, :L].tolist() == alias
        assert g["valid"][b].tolist() == [True] * L + [False] * (14 - L)
        assert g["first"][b, :L].tolist() == [seq.index(x) == p for p, x in enumerate(seq)]
        assert g["node_mask"][b].tolist() == [n < len(nodes) for n in range(14)]
        assert int(g["last_node"][b].argmax()) == alias[-1]
        assert float(g["last_node"][b].sum()) == 1.0
        got = {(i, j) for i, j in zip(*torch.nonzero(adj[b], as_tuple=True)) }
        assert {(int(i), int(j)) for i, j in got} == shortcut


def test_gru_aggregation_in_edge_order_matches_per_node_loop():
    rng = np.random.default_rng(2)
    model = make_model("G", dim=8)
    layer = model.layers[0]
    sessions = random_sessions(rng, 25, max_len=10, vocab=4) + [[1], [1, 2, 1, 2, 3]]
    items = pad(sessions)
    B, L = items.shape
    h = torch.randn(B, L, 8)
    g = session_graph(items)
    with torch.no_grad():
        dense = layer.aggregate(h, g)  # L slots (the exported path)
        trimmed = layer.aggregate(h, g, GRAINRec.gru_slots_needed(items))  # training path
        msgs, deg = eop_messages(h, g)
        for b, seq in enumerate(sessions):
            nodes, alias, edges, _ = reference_graph(seq)
            for v in range(L):
                incoming = [h[b, s] for s, d in edges if d == v]
                assert int(deg[b, v]) == len(incoming)
                if incoming:
                    m = torch.stack(incoming)[None]  # [1, deg, d], in edge order
                    assert torch.equal(msgs[b, v, : len(incoming)], m[0])
                    _, hn = layer.gru(m)
                    want = hn[0, 0]
                else:
                    want = torch.zeros(8)
                torch.testing.assert_close(dense[b, v], want, atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(trimmed[b, v], want, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", LAYER_ORDERS)
def test_forward_backward_shapes_every_layer_order(layers):
    model = make_model(layers).train()
    items = pad([[1, 2, 3], [4], [5, 6, 5, 6, 7], [8, 8]])
    logits = model(items)
    assert logits.shape == (4, N_ITEMS)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3, 4]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    q = model.encode(items, model.embed(items))
    assert q.shape == (4, 16)
    assert model.item_matrix().shape == (N_ITEMS, 16)
    e = model.embed(items)
    assert e.shape == (4, 5, 16) and float(e[1, 1:].abs().sum().detach()) == 0.0


@pytest.mark.parametrize("layers", LAYER_ORDERS)
def test_padding_invariance_and_edge_cases(layers):
    model = make_model(layers)
    sessions = [[3], [1, 2, 1, 2, 3], [7, 7, 7], [4, 5], [9, 1, 9, 9, 2, 3, 2]]
    with torch.no_grad():
        base = model.encode(pad(sessions), model.embed(pad(sessions)))
        wide = model.encode(pad(sessions, 12), model.embed(pad(sessions, 12)))
        assert torch.isfinite(base).all()
        torch.testing.assert_close(base, wide, atol=1e-5, rtol=1e-5)
        for b, s in enumerate(sessions):  # one at a time, no padding at all
            single = model.encode(pad([s]), model.embed(pad([s])))
            torch.testing.assert_close(single[0], base[b], atol=1e-5, rtol=1e-5)
        logits = model(pad(sessions))
        assert torch.isfinite(logits).all()


def test_forward_uses_item_emb_for_features():
    model = make_model("GA")
    items = pad([[1, 2, 1]])
    emb = model.embed(items)
    with torch.no_grad():
        a = model.encode(items, emb)
        b = model.encode(items + 10, emb)  # same structure, other ids: same query
        c = model.encode(items, emb * 2)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(model(items), a @ model.item_matrix().t())


def test_config_rebuilds_module_and_presets_are_valid():
    model = make_model("GAGA", emb_max_norm=1.0)
    clone = GRAINRec.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config
    items = pad([[1, 2, 3]])
    torch.testing.assert_close(clone.eval()(items), model(items))
    assert MODELS["grainrec"] is GRAINRec
    for preset in PRESETS["grainrec"].values():
        mcfg, tcfg = split_config("grainrec", preset)
        assert set(mcfg) <= {"dim", "layers", "dropout", "dense", "emb_max_norm"}
    paper = PRESETS["grainrec"]["paper"]
    assert (paper["dim"], paper["layers"], paper["dropout"], paper["lr"],
            paper["batch_size"], paper["weight_decay"]) == (256, "GA", 0.146, 0.00045, 1024, 1e-4)
    with pytest.raises(ValueError):
        GRAINRec(10, layers="GX")


# ---------------------------------------------------------------------------------------
# ONNX export of the encoder
# ---------------------------------------------------------------------------------------
def test_onnx_export_dynamic_length_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = make_model("GA", dim=16)  # the default architecture (GAGA: same ops, slower export)
    wrapper = EncoderForExport(model).eval()
    items = torch.tensor([[1, 2, 1, 3, 2]])
    emb = model.embed(items).detach()
    L = torch.export.Dim("L", min=1, max=64)
    f = tmp_path / "encoder.onnx"
    torch.onnx.export(wrapper, (items, emb), str(f), dynamo=True,
                      dynamic_shapes=({1: L}, {1: L}), output_names=["query"], verbose=False)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == ["items", "item_emb"]  # the SDK's encoder input names
    assert [o.name for o in sess.get_outputs()] == ["query"]
    rng = np.random.default_rng(0)
    cases = [[7], [3, 3], [1, 2, 1], [1, 2, 1, 2, 3], [4, 5, 6, 7, 8],
             rng.integers(0, 5, size=20).tolist(), rng.integers(0, 40, size=20).tolist()]
    for seq in cases:
        it = torch.tensor([seq])
        e = model.embed(it).detach()
        with torch.no_grad():
            want = wrapper(it, e).numpy()
        got = sess.run(None, {names[0]: it.numpy(), names[1]: e.numpy()})[0]
        assert got.shape == want.shape == (1, 16)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------
# training, checkpoints, resume
# ---------------------------------------------------------------------------------------
def tiny_dataset(n_items=30, n_sessions=80, seed=0):
    """Sessions following a noisy cycle through the catalog rows, 3 categories."""
    from export_tools.data import Catalog

    rng = np.random.default_rng(seed)
    sessions = []
    for _ in range(n_sessions):
        start, n = int(rng.integers(n_items)), int(rng.integers(2, 7))
        s = [(start + k) % n_items for k in range(n)]
        if rng.random() < 0.2:  # some repeated items
            s.insert(int(rng.integers(1, len(s))), s[0])
        sessions.append(np.asarray(s, dtype=np.int32))
    catalog = Catalog(item_ids=np.arange(100, 100 + n_items, dtype=np.int64),
                      categories=(np.arange(n_items) // 10).astype(np.int32),
                      category_ids=np.array([7, 8, 9], dtype=np.int64))
    return sessions, catalog


TINY = {"dim": 8, "dropout": 0.1, "batch_size": 32, "epochs": 2, "patience": 5, "lr": 0.01,
        "eval_batch_size": 64}


def test_train_writes_checkpoint_that_restores_identical_outputs(tmp_path):
    from export_tools.train import load_checkpoint, train

    sessions, catalog = tiny_dataset()
    out = train("grainrec", "fast", sessions, catalog, tmp_path / "ck", overrides=TINY,
                progress=False, threads=1, seed=3)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "grainrec" and cfg["n_items"] == 30
    assert [h["epoch"] for h in cfg["history"]] == [1, 2]
    assert all(0 <= h["HR@20"] <= 1 and 0 <= h["MRR@20"] <= h["HR@20"] for h in cfg["history"])
    assert cfg["model_config"]["dim"] == 8
    assert cfg["train_config"]["same_category"] is PRESETS["grainrec"]["fast"]["same_category"]
    model, cat, cfg2 = load_checkpoint(out)
    assert cfg2 == cfg
    np.testing.assert_array_equal(cat.item_ids, catalog.item_ids)
    np.testing.assert_array_equal(cat.categories, catalog.categories)
    np.testing.assert_array_equal(cat.category_ids, catalog.category_ids)
    # the saved weights are the best epoch's: compare against an independent reload
    best = torch.load(out / "model.pt", weights_only=True)
    fresh = GRAINRec.from_config(cfg["model_config"])
    fresh.load_state_dict(best)
    items = pad([[1, 2, 3], [4, 4, 5], [9]])
    with torch.no_grad():
        torch.testing.assert_close(model(items), fresh.eval()(items), rtol=0, atol=0)
    # deterministic: the same seed gives bit-identical weights
    out2 = train("grainrec", "fast", sessions, catalog, tmp_path / "ck2", overrides=TINY,
                 progress=False, threads=1, seed=3)
    model2, _, cfg3 = load_checkpoint(out2)
    assert [h["loss"] for h in cfg3["history"]] == [h["loss"] for h in cfg["history"]]
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_continues_to_the_same_result(tmp_path):
    from export_tools.train import load_checkpoint, train

    sessions, catalog = tiny_dataset(seed=1)
    full = train("grainrec", "fast", sessions, catalog, tmp_path / "full",
                 overrides=dict(TINY, lr_schedule="constant"), progress=False, threads=1)
    part = tmp_path / "part"
    train("grainrec", "fast", sessions, catalog, part,
          overrides=dict(TINY, lr_schedule="constant", epochs=1), progress=False, threads=1)
    assert len(json.loads((part / "config.json").read_text())["history"]) == 1
    train("grainrec", "fast", sessions, catalog, part,
          overrides=dict(TINY, lr_schedule="constant"), progress=False, threads=1, resume=True)
    cfg_full = json.loads((full / "config.json").read_text())
    cfg_part = json.loads((part / "config.json").read_text())

    def strip(hs):  # timings differ between runs
        return [{k: v for k, v in h.items() if "second" not in k} for h in hs]

    assert strip(cfg_part["history"]) == strip(cfg_full["history"])
    a = torch.load(full / "train_state.pt", weights_only=True)["model"]
    b = torch.load(part / "train_state.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match="cannot resume"):
        train("grainrec", "fast", sessions, catalog, part,
              overrides=dict(TINY, lr_schedule="constant", dim=16), progress=False, threads=1,
              resume=True)
    load_checkpoint(part)


def test_train_without_validation_split_keeps_last_epoch(tmp_path):
    from export_tools.train import load_checkpoint, train

    sessions, catalog = tiny_dataset(n_sessions=30)
    out = train("grainrec", "fast", sessions, catalog, tmp_path / "ck",
                overrides=dict(TINY, patience=1), valid_fraction=0.0, progress=False, threads=1)
    cfg = json.loads((out / "config.json").read_text())
    assert len(cfg["history"]) == 2 and cfg["best_epoch"] == 2
    load_checkpoint(out)


def test_cli_main_trains_from_csv(tmp_path):
    from export_tools.train import main

    sessions, catalog = tiny_dataset(seed=2)
    rows = [(sid, int(catalog.item_ids[r]), t) for sid, s in enumerate(sessions)
            for t, r in enumerate(s)]
    ev = tmp_path / "events.csv"
    ev.write_text("session_id,item_id,timestamp\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    it = tmp_path / "items.csv"
    it.write_text("item_id,category_id\n" + "".join(
        f"{i},{catalog.category_ids[c]}\n" for i, c in zip(catalog.item_ids, catalog.categories)))
    out = tmp_path / "ck"
    rc = main(["--model", "grainrec", "--preset", "fast", "--train", str(ev), "--items", str(it),
               "--out", str(out), "--epochs", "1", "--dim", "8", "--batch-size", "64",
               "--no-progress", "--no-same-category", "--threads", "1"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_config"]["same_category"] is False and cfg["model_config"]["dim"] == 8
    assert cfg["data"]["train"].endswith("events.csv")
