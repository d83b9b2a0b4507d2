"""The learned repeat head of the model contract (export_tools.models.base.RepeatHead,
issue 13): the model's full-catalog scores, the encoder's ``repeat_scores`` output, the
export's parity check of it, the SDK's scores with it and the manifest checks of its
declaration.

The trained model is the contract suite's tiny ``grainrec+repeat_head`` run on its real
Diginetica slice (tests/test_model_contract.py fixtures, reused here)."""
# ruff: noqa: F811  (the imported fixtures are test parameters of the same names)
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_model_contract import (  # noqa: F401  (fixtures; tests/ is on sys.path under pytest)
    one_torch_thread,
    pad,
    real_slice,
    trained,
)

from export_tools.models import build_model
from export_tools.models.base import REPEAT_OUTPUT, repeat_item_scores
from sessrec_sdk import Recommender
from sessrec_sdk.errors import CorruptFileError

HEAD = "grainrec+repeat_head"
N = 40
SEQS = [[3, 5, 3, 7], [2, 2], [9], [11, 4, 11, 11, 6]]


def head_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, N, {"dim": 16, "repeat_head": True}).eval()


@pytest.mark.parametrize("name", ["grainrec", "attenmixer"])
def test_full_catalog_scores_are_explore_logit_plus_max_repeat_logit(name):
    model = head_model(name)
    items = pad(SEQS)
    with torch.no_grad():
        got = model(items)
        query, states = model.encode_states(items, model.embed(items))
        r = model.repeat_logits(items, query, states)
        explore = query @ model.item_matrix().t()
    expected = explore.clone()
    for b, seq in enumerate(SEQS):  # by hand: each session item, its best position
        for j in set(seq):
            expected[b, j] += max(float(r[b, p]) for p, item in enumerate(seq) if item == j)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the bonus is a max, not a sum, and positions of one item differ (recency)
    assert float(r[0, 0]) != float(r[0, 2])
    assert float(r[3, 0]) != float(r[3, 2]) != float(r[3, 3])
    # items outside the window keep their explore logit exactly; padding adds nothing
    outside = torch.ones(N, dtype=torch.bool)
    outside[[3, 5, 7]] = False
    torch.testing.assert_close(got[0, outside], explore[0, outside], rtol=0, atol=0)
    assert torch.all(r[items < 0] == 0)
    # encode() is the query of encode_states(): the exported query is unchanged
    torch.testing.assert_close(model.encode(items, model.embed(items)), query)


def test_repeat_item_scores_takes_the_largest_logit_of_each_item():
    items = torch.tensor([[4, 1, 4, -1], [0, 0, 2, 0]])
    repeat = torch.tensor([[-2.0, 0.5, -1.0, 9.0], [1.0, 3.0, -4.0, 2.0]])
    got = repeat_item_scores(items, repeat, 6)
    expected = torch.zeros(2, 6)
    expected[0, 4], expected[0, 1] = -1.0, 0.5  # padding's 9.0 goes nowhere
    expected[1, 0], expected[1, 2] = 3.0, -4.0  # negative logits stay (a learned penalty)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["grainrec", "attenmixer"])
def test_head_trains_and_is_off_by_default(name):
    from export_tools.models.base import Batch

    plain = build_model(name, N, {"dim": 16})
    assert plain.repeat_head is None and plain.config["repeat_head"] is False
    assert [o.name for o in plain.export_spec().outputs] == ["query"]
    model = head_model(name).train()
    assert [o.name for o in model.export_spec().outputs] == ["query", REPEAT_OUTPUT]
    total, _ = model.loss(Batch(items=pad(SEQS), targets=torch.tensor([3, 2, 1, 11])))
    total.backward()
    for p in model.repeat_head.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", ["grainrec", "attenmixer"])
def test_explore_weight_adds_the_explore_logits_own_cross_entropy(name):
    from export_tools.models.base import Batch

    torch.manual_seed(0)
    model = build_model(name, N, {"dim": 16, "repeat_head": True,
                                  "repeat_explore_weight": 0.5}).eval()
    items, targets = pad(SEQS), torch.tensor([3, 2, 1, 11])
    total, parts = model.loss(Batch(items=items, targets=targets))
    with torch.no_grad():
        full = model(items)
        explore = model.scores(model.encode(items, model.embed(items)))
    ce = torch.nn.functional.cross_entropy(full, targets)
    explore_ce = torch.nn.functional.cross_entropy(explore, targets)
    torch.testing.assert_close(parts["ce"].detach(), ce)
    torch.testing.assert_close(parts["explore_ce"].detach(), explore_ce)
    torch.testing.assert_close(total.detach(), ce + 0.5 * explore_ce)
    with pytest.raises(ValueError, match="repeat_explore_weight"):
        build_model(name, N, {"dim": 16, "repeat_explore_weight": 0.5})


def test_export_parity_covers_the_repeat_output(real_slice, trained):
    """The export compares the encoder's repeat scores with the torch logits: a model whose
    repeat head differs from the exported one fails the check."""
    from export_tools.export import ParityError, check_parity, parity_sessions

    _, sessions, catalog, _, _ = real_slice
    ckpt, model, bundle, report = trained(HEAD)
    assert report["parity"]["max_abs_repeat_diff"] <= 1e-4
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"name": REPEAT_OUTPUT, "kind": "repeat_scores"} in manifest["encoder"]["outputs"]
    picks = parity_sessions(sessions, 10)
    check_parity(bundle, model, catalog, picks)  # the exported model itself: passes
    other = type(model).from_config(model.config)
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        other.repeat_head.gate.bias += 0.01  # only the repeat logits move
    with pytest.raises(ParityError, match="repeat scores"):
        check_parity(bundle, other, catalog, picks)


def _session_with_repeats(inputs, catalog, served_window: int):
    """Held-out inputs with a repeated item in the encoded window, plus made-up ones."""
    out = [x for x in inputs if len(x) >= 2
           and len(np.unique(x[-served_window:])) < len(x[-served_window:])][:20]
    n = catalog.n_items
    out += [np.array([3, 7, 3]) % n, np.array([5, 5]) % n, np.array([1, 2, 3, 4, 5, 6, 2]) % n]
    return out


def test_sdk_scores_equal_model_full_catalog_scores_with_repeats(real_slice, trained):
    """On sessions with repeated items, every candidate of the SDK (the session's items
    included) gets the model's own full-catalog score of the encoded window (explore logit
    + learned bonus R_j), in the model's order; session items outside the window get no
    learned bonus."""
    _, _, catalog, inputs, _ = real_slice
    _, model, bundle, _ = trained(HEAD)
    rec = Recommender.load(bundle)
    assert rec._served.repeat_name == REPEAT_OUTPUT
    ids = np.asarray(catalog.item_ids)
    bonus_seen = 0
    # a bundle whose export kept the hybrid: its candidates, without the kNN blend
    model_only = {"knn_weight": 0.0} if rec.manifest.get("sknn") else {}
    for x in _session_with_repeats(inputs, catalog, rec._served.max_length):
        session = ids[x]
        out = rec.recommend(session, k=1000, category_filter="none",
                            exclude_session_items=False, repeat_bonus=0.0, **model_only)
        assert out.fallback is None and len(out) == out.n_candidates
        enc_rows = catalog.rows(rec.item_ids[rec.session_rows(session)])
        items = torch.as_tensor(enc_rows[None].astype(np.int64))
        with torch.no_grad():
            full = model(items)[0].numpy()
            explore = model.scores(model.encode(items, model.embed(items)))[0].numpy()
        rows = catalog.rows(out.item_ids)
        np.testing.assert_allclose(out.scores, full[rows], rtol=0, atol=1e-4)
        assert np.all(np.diff(full[rows]) <= 1e-4)
        in_session = np.isin(rows, x)
        assert in_session.any()  # the session's items are candidates
        outside = in_session & ~np.isin(rows, enc_rows)
        np.testing.assert_allclose(out.scores[outside], explore[rows[outside]], atol=1e-4)
        bonus_seen += int((np.abs(full - explore)[rows[np.isin(rows, enc_rows)]] > 1e-3).sum())
    assert bonus_seen > 0  # the learned bonus did change scores


def test_a_repeating_head_makes_both_paths_recommend_repeats(real_slice, trained, tmp_path):
    """A head pushed to repeat (gate bias +100): the full-catalog model and the SDK both put
    the encoded window's items first, in the same order."""
    from export_tools.checkpoint import MODEL_FILE, atomic_torch_save, load_checkpoint
    from export_tools.export import export_bundle

    _, _, catalog, inputs, _ = real_slice
    ckpt, _, _, _ = trained(HEAD)
    pushed = tmp_path / "ckpt"
    shutil.copytree(ckpt, pushed)
    state = torch.load(pushed / MODEL_FILE, weights_only=True)
    state["repeat_head.gate.bias"] = state["repeat_head.gate.bias"] + 100.0
    atomic_torch_save(state, pushed / MODEL_FILE)
    model, _, _ = load_checkpoint(pushed)
    model.eval()
    bundle, _ = export_bundle(pushed, tmp_path / "bundle", neighbors=20, n_parity=10,
                              progress=False, tune_defaults=False)
    rec = Recommender.load(bundle)
    ids = np.asarray(catalog.item_ids)
    for x in [x for x in inputs if len(x) >= 2][:30]:
        session = ids[x]
        enc_rows = catalog.rows(rec.item_ids[rec.session_rows(session)])
        n_window = len(np.unique(enc_rows))
        items = torch.as_tensor(enc_rows[None].astype(np.int64))
        with torch.no_grad():
            full = model(items)[0].numpy()
        model_top = np.argsort(-full, kind="stable")[:n_window]
        assert set(model_top) == set(enc_rows)  # the model recommends the repeats first
        out = rec.recommend(session, k=n_window, category_filter="none",
                            exclude_session_items=False, repeat_bonus=0.0)
        assert set(catalog.rows(out.item_ids)) == set(enc_rows)
        np.testing.assert_allclose(out.scores, np.sort(full)[::-1][:n_window], atol=1e-3)


@pytest.mark.parametrize("damage,match", [
    ("second_repeat_kind", "declares a kind twice"),
    ("misspelled_kind", "must be a non-empty list"),
    ("kinds_swapped", "must be float32"),
    ("unknown_name", "the manifest declares"),
])
def test_damaged_repeat_output_declaration_is_refused(trained, tmp_path, damage, match):
    _, _, bundle, _ = trained(HEAD)
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    mpath = copy / "manifest.json"
    m = json.loads(mpath.read_text())
    outs = m["encoder"]["outputs"]
    rep = next(e for e in outs if e["kind"] == "repeat_scores")
    if damage == "second_repeat_kind":
        next(e for e in outs if e["kind"] == "query")["kind"] = "repeat_scores"
        outs.append({"name": "q2", "kind": "query"})
    elif damage == "misspelled_kind":
        rep["kind"] = "repeat_score"
    elif damage == "kinds_swapped":
        next(e for e in outs if e["kind"] == "query")["kind"] = "repeat_scores"
        rep["kind"] = "query"
    else:
        rep["name"] = "repeat"
    mpath.write_text(json.dumps(m, indent=2))
    with pytest.raises(CorruptFileError, match=match):
        Recommender.load(copy)


@pytest.mark.parametrize("defaults", [{}, {"exclude_session_items": False,
                                           "repeat_bonus": 0.5}])
def test_full_sdk_rankings_add_the_learned_bonus(real_slice, trained, tmp_path, defaults):
    """``sessrec evaluate``'s full-sdk rows on a bundle with the head: the plain ranking is
    the model's own full-catalog ranking of the SDK's window (learned bonus included); the
    post-processed one then drops the known session items (the exported default) or adds
    the bundle's scalar repeat bonus to them (``defaults`` changed so), and applies the
    default category filter."""
    from export_tools.evaluate import full_catalog_ranks_sdk
    from export_tools.metrics import MISS
    from sessrec_sdk.bundle import update_manifest

    _, _, catalog, inputs, targets = real_slice
    _, model, bundle, _ = trained(HEAD)
    if defaults:
        shutil.copytree(bundle, tmp_path / "bundle")
        bundle = tmp_path / "bundle"
        m = json.loads((bundle / "manifest.json").read_text())
        update_manifest(bundle, defaults={**m["defaults"], **defaults})
    rec = Recommender.load(bundle)
    defaults = rec.manifest["defaults"]
    cat_filter, exclude = defaults["category_filter"], defaults["exclude_session_items"]
    cats = np.asarray(catalog.categories)
    bonus = np.float32(defaults.get("repeat_bonus", 0.0))
    ids = np.asarray(catalog.item_ids)
    xs = [ids[x] for x in inputs[:150]]
    plain, post = full_catalog_ranks_sdk(rec, xs, ids[targets[:150]], progress=False)
    expected_plain, expected_post = [], []
    for x, t in zip(inputs[:150], targets[:150]):
        if not len(x):
            expected_plain.append(MISS)
            expected_post.append(MISS)
            continue
        enc_rows = catalog.rows(rec.item_ids[rec.session_rows(ids[x])])
        with torch.no_grad():
            full = model(torch.as_tensor(enc_rows[None].astype(np.int64)))[0].numpy()
        expected_plain.append(int((full > full[t]).sum()))
        if exclude:
            full[np.unique(x)] = -np.inf
        else:
            full[np.unique(x)] += bonus
        if cat_filter != "none":
            window = x[-rec._served.max_length:]
            kept = cats[window[-1:]] if cat_filter == "last" else cats[window]
            full[~np.isin(cats, kept)] = -np.inf
        expected_post.append(int((full > full[t]).sum()) if np.isfinite(full[t]) else MISS)
    assert np.mean(plain == np.array(expected_plain)) >= 0.98  # float near-ties aside
    assert np.mean(post == np.array(expected_post)) >= 0.98
