"""The shared contract every registered session model must pass (docs/models.md).

In the style of implicit's recommender mixin tests: every test below is parametrized over
``export_tools.models.REGISTRY``, so registering a model (one module + one ``register``
line) puts it under all of them. Each model is built from its ``fast`` preset, shrunk for
test speed (:data:`SHRINK`), and trained briefly on a small real slice of the bundled
Diginetica split:

* the events of ``data/diginetica/train.csv.gz`` on its :data:`N_ITEMS` most popular
  items; of the sessions keeping two or more of them, the first :data:`N_TRAIN` (file
  order) are the training slice (the trainer holds out 10% of them for validation, as
  ``sessrec train`` does);
* the next :data:`N_HELDOUT` such sessions are the held-out slice: each session's last
  item is the target, the events before it the input.

Checked per model: build from a config, forward/backward shapes and padding, loss with
named parts, loss decreasing over a few steps, beating popularity on the held-out slice,
ONNX encoder parity against torch, the bundle round trip, and the SDK ranking equal to the
model's own scores on the SDK's candidates. The models that offer the learned repeat head
(``repeat_head``, export_tools.models.base.RepeatHead) run every test a second time with
it on, as ``<name>+repeat_head``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export_tools import data as D
from export_tools.models import PRESETS, REGISTRY, build_model, split_config
from export_tools.models.base import Batch, SessionModel
from export_tools.onnx_export import BATCH_TOLERANCE

DATA = Path(__file__).resolve().parent.parent / "data" / "diginetica"
N_ITEMS = 500  # the slice keeps events on the most popular training items
N_TRAIN = 2000  # sessions of the training slice
N_HELDOUT = 500  # the following sessions: the held-out slice
#: The fast preset, shrunk for test speed (applied to every model; a model whose fast
#: preset cannot take these values would say so here).
SHRINK = {"dim": 32, "batch_size": 128, "epochs": 2, "patience": 2}
NEIGHBORS = 20
#: suffix of a parametrized name: the model with its repeat head on
REPEAT_HEAD = "+repeat_head"
REPEAT_HEAD_MODELS = ("attenmixer", "grainrec")
MODEL_NAMES = sorted(REGISTRY) + [name + REPEAT_HEAD for name in REPEAT_HEAD_MODELS]


def variant(name: str) -> tuple[str, dict]:
    """(registry name, settings over its preset) of a parametrized model name."""
    if name.endswith(REPEAT_HEAD):
        return name[:-len(REPEAT_HEAD)], {"repeat_head": True}
    return name, {}




@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: tiny models on a shared 2-core machine run several times faster
    than with two (no thread hand-offs between the steps)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ------------------------------------------------------------------------ data slices


def write_slices(root: Path) -> tuple[Path, Path]:
    """Write the training and held-out slices (CSV) of the Diginetica split: its events on
    the :data:`N_ITEMS` most popular training items (a dense slice that a tiny model learns
    from in seconds), sessions that keep >= 2 such events, in file order: the first
    :data:`N_TRAIN` for training, the next :data:`N_HELDOUT` held out."""
    events = D.read_events(DATA / "train.csv.gz")
    counts = events["item_id"].value_counts(sort=True)
    top = counts.index[:N_ITEMS].to_numpy()  # ties: pandas' stable order, deterministic
    kept = events[events["item_id"].isin(top)]
    size = kept.groupby("session_id", sort=False)["item_id"].transform("size")
    kept = kept[size >= 2]
    sids = kept["session_id"].drop_duplicates().to_numpy()
    train_ids, held_ids = sids[:N_TRAIN], sids[N_TRAIN:N_TRAIN + N_HELDOUT]
    paths = root / "train.csv", root / "heldout.csv"
    for path, ids in zip(paths, (train_ids, held_ids)):
        kept[kept["session_id"].isin(ids)].to_csv(path, index=False)
    return paths


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory):
    """(root, training sessions as rows, catalog, held-out inputs (rows), targets (rows))."""
    from export_tools.train import load_training_data

    root = tmp_path_factory.mktemp("contract")
    train_csv, held_csv = write_slices(root)
    sessions, catalog = load_training_data(train_csv, DATA / "items.csv.gz")
    held = [s for s in D.clean_sessions(D.sessionize(D.read_events(held_csv)))
            if len(s) >= 2]
    inputs = [catalog.rows(np.asarray(s[:-1])) for s in held]
    inputs = [x[x >= 0] for x in inputs]
    targets = np.array([catalog.rows(np.asarray(s[-1:]))[0] for s in held], dtype=np.int64)
    return root, sessions, catalog, inputs, targets


N_CATEGORIES = 8  # the category vocabulary of untrained models that take one


def shrunk_config(name: str) -> tuple[dict, dict]:
    model, extra = variant(name)
    model_cfg, train_cfg = split_config(model, {**PRESETS[model]["fast"], **SHRINK, **extra})
    return model_cfg, train_cfg


def fresh_model(name: str, n_items: int, seed: int = 0) -> SessionModel:
    torch.manual_seed(seed)
    model_cfg, _ = shrunk_config(name)
    return build_model(variant(name)[0], n_items, model_cfg, n_categories=N_CATEGORIES)


def pad(seqs, width=None) -> torch.Tensor:
    width = width or max(len(s) for s in seqs)
    out = np.full((len(seqs), width), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


# ------------------------------------------------------------------------ trained models

_TRAINED: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def trained(real_slice, tmp_path_factory):
    """name -> (checkpoint dir, model in eval mode, bundle dir, export report); each model
    is trained and exported once per module, on first use."""
    from export_tools.checkpoint import load_checkpoint
    from export_tools.export import export_bundle
    from export_tools.train import train

    root, sessions, catalog, _, _ = real_slice

    def get(name: str):
        if name not in _TRAINED:
            model_name, extra = variant(name)
            out = tmp_path_factory.mktemp(f"ckpt-{name}")
            ckpt = train(model_name, "fast", sessions, catalog, out / "ckpt",
                         overrides={**SHRINK, **extra},
                         progress=False, threads=1,
                         data_info={"train": str(root / "train.csv"),
                                    "items": str(DATA / "items.csv.gz")})
            model, _, _ = load_checkpoint(ckpt)
            bundle, report = export_bundle(ckpt, out / "bundle", neighbors=NEIGHBORS,
                                           n_parity=40, progress=False)
            _TRAINED[name] = (ckpt, model.eval(), bundle, report)
        return _TRAINED[name]

    yield get
    _TRAINED.clear()


# ------------------------------------------------------------------------ registry, build


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_entry_and_presets(name):
    entry = REGISTRY[name]
    assert issubclass(entry.cls, SessionModel) and entry.cls.name == name
    assert {"fast", "paper"} <= set(entry.presets)
    for preset in entry.presets.values():
        model_cfg, train_cfg = split_config(name, preset)
        assert set(train_cfg) >= {"lr", "batch_size", "epochs", "same_category"}
        model = build_model(name, 50, model_cfg, n_categories=N_CATEGORIES)  # every preset
        assert model.config["n_items"] == 50


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builds_from_config_and_rebuilds_identically(name):
    model = fresh_model(name, 60).eval()
    config = json.loads(json.dumps(model.config))  # the checkpoint stores it as JSON
    again = type(model).from_config(config)
    again.load_state_dict(model.state_dict())
    again.eval()
    items = pad([[1, 2, 3], [4], [5, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(items), again(items), rtol=0, atol=0)
    assert model.query_dim == model.item_matrix().shape[1]
    assert model.score_transform == "dot"


# ------------------------------------------------------------------------ shapes, loss


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_shapes_and_padding(name):
    n = 60
    model = fresh_model(name, n).train()
    seqs = [[1, 2, 3], [4], [5, 5, 6, 7, 5], [8, 9]]
    items = pad(seqs)
    emb = model.embed(items)
    assert emb.shape == (4, items.shape[1], model.input_dim)
    assert torch.all(emb[items < 0] == 0)
    query = model.encode(items, emb)
    assert query.shape == (4, model.query_dim)
    scores = model(items)
    assert scores.shape == (4, n) and torch.isfinite(scores).all()
    total, parts = model.loss(Batch(items=items, targets=torch.tensor([4, 5, 8, 10])))
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    # extra padding columns and batch company change nothing (eval mode: no dropout)
    model.eval()
    with torch.no_grad():
        base = model(items)
        torch.testing.assert_close(model(pad(seqs, items.shape[1] + 3)), base,
                                   rtol=1e-5, atol=1e-5)
        for i, s in enumerate(seqs):
            torch.testing.assert_close(model(pad([s]))[0], base[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loss_returns_total_and_named_parts(name):
    model = fresh_model(name, 60)
    total, parts = model.loss(Batch(items=pad([[1, 2], [3, 4, 5]]),
                                    targets=torch.tensor([3, 6])))
    assert total.dim() == 0 and torch.isfinite(total)
    assert parts and all(isinstance(k, str) for k in parts)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in parts.values())
    if len(parts) == 1:
        torch.testing.assert_close(next(iter(parts.values())), total)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loss_decreases_on_a_real_slice(name, real_slice):
    from export_tools.examples import make_batch, make_train_examples
    from export_tools.trainer import make_optimizer

    _, sessions, catalog, _, _ = real_slice
    _, train_cfg = shrunk_config(name)
    x, y = make_train_examples(sessions[:300], catalog, train_cfg)
    rng = np.random.default_rng(0)
    batches = [make_batch(x, y, rng.choice(len(y), 128, replace=False)) for _ in range(4)]
    model = fresh_model(name, catalog.n_items)
    opt = make_optimizer(model, train_cfg)

    def mean_loss():
        model.eval()
        with torch.no_grad():
            return float(np.mean([model.loss(b)[0].item() for b in batches]))

    before = mean_loss()
    model.train()
    for step in range(12):
        total, _ = model.loss(batches[step % len(batches)])
        opt.zero_grad()
        total.backward()
        opt.step()
    after = mean_loss()
    assert after < 0.9 * before, (before, after)


# ------------------------------------------------------------------------ trained on a slice


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_beats_popularity_on_heldout_sessions(name, real_slice, trained):
    from export_tools.examples import prepare_inputs
    from export_tools.metrics import rank_targets, ranking_metrics

    _, sessions, catalog, inputs, targets = real_slice
    ckpt, model, _, _ = trained(name)
    train_cfg = json.loads((ckpt / "config.json").read_text())["train_config"]
    ranks = rank_targets(model, prepare_inputs(inputs, catalog, train_cfg), targets)
    hr_model = ranking_metrics(ranks)["HR@20"]
    counts = np.bincount(np.concatenate(sessions), minlength=catalog.n_items)
    top20 = np.argsort(-counts, kind="stable")[:20]
    hr_pop = float(np.isin(targets, top20).mean())
    print(f"{name}: HR@20 {hr_model:.4f} vs popularity {hr_pop:.4f}")
    assert hr_model > max(2 * hr_pop, hr_pop + 0.05), (hr_model, hr_pop)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_encoder_matches_torch(name, real_slice, trained):
    import onnxruntime as ort

    _, _, catalog, inputs, _ = real_slice
    _, model, bundle, report = trained(name)
    assert report["parity"]["max_abs_score_diff"] <= 1e-4
    sess = ort.InferenceSession(str(bundle / "encoder.onnx"),
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    spec = model.export_spec()
    assert names == spec.input_names and [o.name for o in sess.get_outputs()] == \
        spec.output_names
    tables = model.item_tables()
    rows = tables.encoder_rows
    seqs = [x for x in inputs if len(x)][:40]
    seqs += [np.array([3, 7, 3, 9, 7, 3]), np.array([5]), np.arange(25) % catalog.n_items]
    worst = worst_repeat = 0.0
    for s in seqs:
        items = torch.as_tensor(np.asarray(s, dtype=np.int64)[None])
        with torch.no_grad():
            expected = model.encode(items, model.embed(items))[0].numpy()
        got = sess.run(None, {"items": items.numpy(), "item_emb": rows[items.numpy()]})
        worst = max(worst, float(np.abs(got[0][0] - expected).max()))
        if model.repeat_head is not None:  # the second output: a repeat logit per position
            with torch.no_grad():
                q, states = model.encode_states(items, model.embed(items))
                r = model.repeat_logits(items, q, states)[0].numpy()
            assert got[1].shape == (1, len(s))
            worst_repeat = max(worst_repeat, float(np.abs(got[1][0] - r).max()))
    assert worst <= 1e-5, worst
    assert worst_repeat <= 1e-5, worst_repeat
    # the batch axis is dynamic: a batch of ten 6-item sessions (cut from the sessions
    # above), each row that session's query
    assert all(isinstance(i.shape[0], str) for i in sess.get_inputs())
    batch = np.concatenate(seqs)[:60].astype(np.int64).reshape(10, 6)
    got = sess.run(None, {"items": batch, "item_emb": rows[batch]})[0]
    items = torch.as_tensor(batch)
    with torch.no_grad():
        expected = model.encode(items, model.embed(items)).numpy()
    assert got.shape == expected.shape and float(np.abs(got - expected).max()) <= 1e-5
    assert 0 <= report["batch_max_abs_diff"] <= BATCH_TOLERANCE


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bundle_round_trip(name, real_slice, trained):
    from sessrec_sdk import Recommender

    _, _, catalog, inputs, _ = real_slice
    ckpt, model, bundle, _ = trained(name)
    rec = Recommender.load(bundle, verify=True)
    m = rec.manifest
    assert m["model"]["kind"] == variant(name)[0] and m["model"]["config"] == model.config
    assert m["encoder"]["batch"] is True and rec._served.encoder.batch
    assert m["neighbors_per_item"] == NEIGHBORS
    np.testing.assert_array_equal(np.sort(rec.item_ids), np.asarray(catalog.item_ids))
    ids = np.asarray(catalog.item_ids)
    tables = model.item_tables()
    # the bundle's rows are the model's tables, renumbered (row order) only
    rows = catalog.rows(rec.item_ids)
    np.testing.assert_array_equal(np.asarray(rec._served.bundle.item_matrix),
                                  tables.item_matrix[rows])
    session = next(x for x in inputs if len(x) >= 2)
    out = rec.recommend(ids[session].tolist(), k=10, category_filter="none")
    assert 0 < len(out) <= 10 and out.fallback is None
    assert np.all(np.diff(out.scores) <= 0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sdk_ranking_equals_model_scores_on_its_candidates(name, real_slice, trained):
    """Every candidate the SDK scores gets the torch model's own full-catalog score
    (``forward``: query . row (+ bias), plus the repeat head's bonus of the window's items
    when it is on), and the SDK's order is the model's order."""
    from sessrec_sdk import Recommender

    _, _, catalog, inputs, _ = real_slice
    _, model, bundle, _ = trained(name)
    rec = Recommender.load(bundle)
    ids = np.asarray(catalog.item_ids)
    checked = 0
    # an export that kept the hybrid: its candidates, without the kNN blend (the blend
    # itself: tests/test_sknn_model.py::test_hybrid_scores_are_the_models_plus_the_blend)
    model_only = {"knn_weight": 0.0} if rec.manifest.get("sknn") else {}
    for x in (x for x in inputs if len(x)):
        if checked == 60:
            break
        session = ids[x]
        out = rec.recommend(session, k=1000, category_filter="none",
                            exclude_session_items=False, **model_only)
        assert out.fallback is None and len(out) == out.n_candidates  # all candidates
        enc_rows = catalog.rows(rec.item_ids[rec.session_rows(session)])
        items = torch.as_tensor(enc_rows[None].astype(np.int64))
        with torch.no_grad():
            full = model(items)[0].numpy()
        expected = full[catalog.rows(out.item_ids)]
        np.testing.assert_allclose(out.scores, expected, rtol=0, atol=1e-4)
        # ranking identical: the model's scores fall along the SDK's order (up to float
        # noise at near-ties), and the SDK's best is the model's best candidate
        assert np.all(np.diff(expected) <= 1e-4)
        assert expected[0] >= expected.max() - 1e-4
        checked += 1
    assert checked == 60
