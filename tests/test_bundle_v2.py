"""Bundle format v2: the declared encoder (named inputs and outputs with kinds), v1 bundles
still loading, and the request path's public stages (plan / encode / kernel_query / score /
run) giving exactly what recommend() gives."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from sessrec_sdk import CorruptFileError, Recommender
from sessrec_sdk.bundle import FORMAT_VERSION, read_bundle, write_bundle


def _answer(r):
    return r.item_ids.tolist(), r.scores.view(np.uint32).tolist(), r.fallback, r.unknown


@pytest.fixture(scope="module")
def rec(small_bundle):
    return Recommender.load(small_bundle)


def test_written_bundles_are_v2_and_declare_their_encoder(small_bundle):
    m = json.loads((small_bundle / "manifest.json").read_text())
    # format 3 only adds the session-kNN position table: other bundles stay readable by
    # format-2 readers
    assert m["format_version"] == 2 and FORMAT_VERSION == 3
    assert m["encoder"] == {"inputs": [{"name": "items", "kind": "items"},
                                       {"name": "item_emb", "kind": "item_rows"}],
                            "outputs": [{"name": "query", "kind": "query"}]}


def test_v1_bundle_still_loads_and_answers_the_same(small_bundle, tmp_path, rec, small_ids):
    v1 = tmp_path / "v1"
    shutil.copytree(small_bundle, v1)
    m = json.loads((v1 / "manifest.json").read_text())
    m["format_version"] = 1
    m["encoder"] = {"inputs": ["items", "item_emb"], "output": "query"}  # as v1 wrote it
    (v1 / "manifest.json").write_text(json.dumps(m))
    old = Recommender.load(v1)
    for session in (small_ids[:3].tolist(), small_ids[10:11].tolist(), []):
        assert _answer(old.recommend(session)) == _answer(rec.recommend(session))


@pytest.mark.parametrize("encoder", [
    {"inputs": [], "outputs": [{"name": "query", "kind": "query"}]},
    {"inputs": [{"name": "items", "kind": "items"}], "outputs": []},
    {"inputs": [{"name": "items", "kind": "pictures"}],
     "outputs": [{"name": "query", "kind": "query"}]},
    {"inputs": [{"name": "items", "kind": "items"}, {"name": "b", "kind": "items"}],
     "outputs": [{"name": "query", "kind": "query"}]},
    {"inputs": [{"name": "items", "kind": "items"}],
     "outputs": [{"name": "q", "kind": "extra"}]},
    "query",
])
def test_bad_encoder_declarations_fail_at_load(small_bundle, tmp_path, encoder):
    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["encoder"] = encoder
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptFileError, match="manifest.json: encoder"):
        Recommender.load(b)


def _v2_encoder(d: int, n_cats: int) -> bytes:
    """query = tanh(sum over the window of item_emb * (1 + position) / (1 + recency) @ W),
    plus category_scores = query @ C and an extra output: a model that needs every
    per-position input kind, so a wrong feed changes the answer."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    c = rng.standard_normal((d, n_cats)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["pos"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["rec"], ["rec_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["pos_f", "one"], ["p1"]),
        helper.make_node("Add", ["rec_f", "one"], ["r1"]),
        helper.make_node("Div", ["p1", "r1"], ["wt"]),
        helper.make_node("Unsqueeze", ["wt", "axis2"], ["wt3"]),
        helper.make_node("Mul", ["emb", "wt3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["session_vector"]),
        helper.make_node("MatMul", ["session_vector", "C"], ["cat_scores"]),
        helper.make_node("ReduceSum", ["items_f", "axis1"], ["n_items_sum"], keepdims=1),
        helper.make_node("Cast", ["items"], ["items_f"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "v2",
        [helper.make_tensor_value_info("items", TensorProto.INT64, [1, "L"]),
         helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, "L", d]),
         helper.make_tensor_value_info("pos", TensorProto.INT64, [1, "L"]),
         helper.make_tensor_value_info("rec", TensorProto.INT64, [1, "L"])],
        [helper.make_tensor_value_info("session_vector", TensorProto.FLOAT, [1, d]),
         helper.make_tensor_value_info("cat_scores", TensorProto.FLOAT, [1, n_cats]),
         helper.make_tensor_value_info("n_items_sum", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1"),
         numpy_helper.from_array(np.array([2], np.int64), "axis2")])
    # Cast of items is defined after its use above: sort topologically
    graph.node.sort(key=lambda n: 0 if n.op_type == "Cast" else 1)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


V2_IO = {"inputs": [{"name": "items", "kind": "items"}, {"name": "emb", "kind": "item_rows"},
                    {"name": "pos", "kind": "positions"}, {"name": "rec", "kind": "recency"}],
         "outputs": [{"name": "session_vector", "kind": "query"},
                     {"name": "cat_scores", "kind": "category_scores"},
                     {"name": "n_items_sum", "kind": "extra"}]}


@pytest.fixture(scope="module")
def v2_bundle(small_bundle, tmp_path_factory):
    b = read_bundle(small_bundle)
    d = b.item_matrix.shape[1]
    return write_bundle(
        tmp_path_factory.mktemp("v2") / "b", encoder=_v2_encoder(d, 5),
        item_matrix=np.asarray(b.item_matrix), neighbors=np.asarray(b.neighbors),
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity),
        popularity_scores=np.asarray(b.popularity_scores),
        item_category=np.asarray(b.item_category), model={"kind": "test", "config": {}},
        inference={"max_session_length": 3, "session_filter": "none"},
        defaults={"category_filter": "none", "exclude_session_items": True},
        encoder_io=V2_IO)


def test_v2_encoder_gets_every_input_kind_and_returns_named_outputs(v2_bundle):
    r = Recommender.load(v2_bundle)
    b = r.bundle
    ids = r.item_ids
    session = ids[[4, 9, 4, 17]].tolist()
    plan = r.plan(session)
    out = r.encode(plan)
    assert set(out) == {"session_vector", "cat_scores", "n_items_sum"}
    window = plan.window  # the last 3 known rows
    emb = np.asarray(b.input_embedding)[window].astype(np.float32)
    L = len(window)
    wt = (np.arange(L) + 1.0) / (np.arange(L - 1, -1, -1) + 1.0)
    rng = np.random.default_rng(7)
    d = emb.shape[1]
    w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    want = np.tanh((emb * wt[:, None].astype(np.float32)).sum(0) @ w)
    np.testing.assert_allclose(out["session_vector"], want, rtol=1e-5, atol=1e-6)
    assert out["cat_scores"].shape == (5,)
    assert out["n_items_sum"][0] == float(window.sum())
    # recommend() scores candidates against the output of kind "query"
    top = r.recommend(session, k=5)
    cand_scores = np.asarray(b.item_matrix)[r.bundle.ids.rows(
        r.bundle.ids.coerce(top.item_ids))] @ out["session_vector"]
    np.testing.assert_allclose(top.scores, cand_scores, rtol=1e-5, atol=1e-6)


def test_v2_declaration_must_match_the_onnx_model(v2_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(v2_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["encoder"]["inputs"][2]["name"] = "position"  # the model calls it "pos"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptFileError, match="encoder.onnx: the manifest declares inputs"):
        Recommender.load(b)
    m["encoder"]["inputs"][2].update(name="pos", kind="item_rows")  # kind given twice
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptFileError, match="declares a kind twice"):
        Recommender.load(b)
    m["encoder"]["inputs"][2]["kind"] = "positions"
    m["encoder"]["inputs"][1]["kind"] = "positions"  # emb is float [1, L, d]
    m["encoder"]["inputs"][2]["kind"] = "item_rows"  # pos is int64 [1, L]
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptFileError, match="encoder input 'emb' \\(kind positions\\)"):
        Recommender.load(b)


def test_stages_reproduce_recommend(rec, small_ids):
    rng = np.random.default_rng(0)
    for _ in range(30):
        session = rng.choice(small_ids, size=int(rng.integers(0, 6))).tolist()
        kwargs = {"k": int(rng.integers(1, 30)),
                  "category_filter": str(rng.choice(["none", "last", "session"])),
                  "exclude": rng.choice(small_ids, size=3).tolist()}
        plan = rec.plan(session, **kwargs)
        whole = rec.recommend(session, **kwargs)
        assert _answer(rec.run(plan)) == _answer(whole)
        outputs = rec.encode(plan)
        if outputs is None:
            assert whole.fallback == "popularity"
            continue
        rows, scores, n = rec.score(plan, rec.kernel_query(plan, outputs))
        assert rec.item_ids[rows].tolist() == whole.item_ids.tolist()
        assert scores.view(np.uint32).tolist() == whole.scores.view(np.uint32).tolist()
        assert n == whole.n_candidates
        assert _answer(rec.run(plan, outputs)) == _answer(whole)


def test_plan_stays_on_its_bundle_across_reload(small_bundle, str_bundle, small_ids):
    r = Recommender.load(small_bundle)
    plan = r.plan(small_ids[:3].tolist())
    before = _answer(r.run(plan))
    r.reload(str_bundle)
    assert _answer(r.run(plan)) == before  # the plan's own bundle answers it


def test_encoder_cache_gives_the_same_answers(small_bundle, rec, small_ids):
    cached = Recommender.load(small_bundle, encoder_cache=2)
    sessions = [small_ids[i:i + 3].tolist() for i in range(0, 30, 3)] * 2
    for s in sessions:
        assert _answer(cached.recommend(s)) == _answer(rec.recommend(s))
    q = cached.query(sessions[0])
    with pytest.raises(ValueError):
        q[0] = 1.0  # cached outputs are shared: read-only
    with pytest.raises(ValueError, match="encoder_cache"):
        Recommender.load(small_bundle, encoder_cache=-1)


def test_onnxruntime_options_at_load(small_bundle, rec, small_ids):
    r = Recommender.load(small_bundle, ort_options={"enable_mem_pattern": False})
    assert _answer(r.recommend(small_ids[:3].tolist())) == _answer(
        rec.recommend(small_ids[:3].tolist()))
    with pytest.raises(ValueError, match="no attribute 'threads'"):
        Recommender.load(small_bundle, ort_options={"threads": 4})
