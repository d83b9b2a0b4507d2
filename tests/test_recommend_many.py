"""Recommender.recommend_many: sessions of one window length share an encoder run (bundle
manifest ``encoder.batch``), and the answers are exactly recommend()'s.

The neural bundles are the model-contract fixtures (tests/test_model_contract.py: each
registered model trained briefly on a real Diginetica slice and exported). The export
checks that a batched run gives each session what it gives alone within BATCH_TOLERANCE
(export_tools.onnx_export.check_batch_parity): ids are compared exactly, scores within
SCORE_TOLERANCE (a query differing by BATCH_TOLERANCE per value moves a score of these
bundles by less).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import test_model_contract as contract  # tests/ is on sys.path under pytest
from fault_injection import resign

from export_tools.synthetic import build_synthetic_bundle, build_synthetic_sknn_bundle
from sessrec_sdk import Recommender
from sessrec_sdk.errors import CorruptFileError
from sessrec_sdk.recommender import _encoder_inputs

# the model-contract fixtures, reused (pytest takes fixtures from module attributes)
one_torch_thread, real_slice, trained = (contract.one_torch_thread, contract.real_slice,
                                         contract.trained)
MODEL_NAMES = contract.MODEL_NAMES

UNKNOWN = [10**15, 10**15 + 7]  # ids no catalog here holds
SCORE_TOLERANCE = 1e-5


def assert_same(many, single, exact: bool = False) -> float:
    """Same ids, fallbacks and counts; scores equal (``exact``) or within SCORE_TOLERANCE.
    Returns the largest score difference."""
    assert len(many) == len(single)
    worst = 0.0
    for i, (a, b) in enumerate(zip(many, single)):
        assert np.array_equal(a.item_ids, b.item_ids), i
        assert a.scores.dtype == b.scores.dtype, i
        if exact:
            assert np.array_equal(a.scores, b.scores), i
        elif len(a.scores):
            worst = max(worst, float(np.abs(a.scores - b.scores).max()))
            assert worst <= SCORE_TOLERANCE, (i, worst)
        assert (a.fallback, a.unknown, a.n_candidates) == (b.fallback, b.unknown,
                                                           b.n_candidates), i
    return worst


def count_runs(rec: Recommender) -> list[int]:
    """Patch the encoder's ONNX run to record how many sessions each run held."""
    enc = rec._served.encoder
    enc = getattr(enc, "encoder", enc)  # under a CachedEncoder
    runs: list[int] = []
    inner = enc._run

    def run(names, feeds, options):
        runs.append(len(next(iter(feeds.values()))))
        return inner(names, feeds, options)

    enc._run = run
    return runs


def mixed_sessions(ids: np.ndarray, inputs: list[np.ndarray]) -> list[list]:
    """Held-out sessions of every length, longer ones (past the window), repeats, unknown
    ids within known ones, unknown-only and empty sessions, and one session twice."""
    held = [ids[x].tolist() for x in inputs if len(x)][:120]
    longer = [held[i] + held[i + 1] + held[i + 2] for i in range(0, 30, 3)]
    repeats = [[held[0][0], held[1][0], held[0][0], held[0][0]], held[2][:1] * 3]
    with_unknown = [UNKNOWN[:1] + held[3], held[4] + UNKNOWN]
    return [*held, *longer, *repeats, *with_unknown, UNKNOWN, [], held[5], [], UNKNOWN[1:]]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_equals_recommend_on_each_trained_model(name, real_slice, trained):
    _, _, catalog, inputs, _ = real_slice
    _, _, bundle, _ = trained(name)
    rec = Recommender.load(bundle)
    assert rec.manifest["encoder"]["batch"] is True
    sessions = mixed_sessions(np.asarray(catalog.item_ids), inputs)
    single = [rec.recommend(s, k=20) for s in sessions]
    runs = count_runs(rec)
    many = rec.recommend_many(sessions, k=20)
    print(f"{name}: batched vs single, largest score difference {assert_same(many, single)}")
    assert sum(r.fallback == "popularity" for r in many) == 4  # unknown-only and empty
    # one run per window length among the sessions with a known item, each encoded once
    lengths = {len(rec.session_rows(s)) for s in sessions} - {0}
    assert len(runs) == len(lengths) and max(runs) > 1
    assert sum(runs) == sum(rec.plan(s).known.size > 0 for s in sessions)
    # options reach every session alike
    options = dict(category_filter="none", exclude_session_items=False)
    assert_same(rec.recommend_many(sessions, k=7, **options),
                [rec.recommend(s, k=7, **options) for s in sessions])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_long_windows_within_the_tolerance(name, real_slice, trained, tmp_path):
    """The exported bundles read 3-item windows; with the window raised to 30 items (the
    encoders take any length) batches of long sessions may round otherwise in the last
    bits: ids stay the same, scores within SCORE_TOLERANCE."""
    from sessrec_sdk.bundle import update_manifest

    _, _, catalog, inputs, _ = real_slice
    _, _, bundle, _ = trained(name)
    path = tmp_path / "long"
    shutil.copytree(bundle, path)
    inference = json.loads((path / "manifest.json").read_text())["inference"]
    update_manifest(path, inference={**inference, "max_session_length": 30})
    rec = Recommender.load(path)
    ids = np.asarray(catalog.item_ids)
    flat = np.resize(ids[np.concatenate([x for x in inputs if len(x)])], 24 * 30)  # cycled
    sessions = [flat[i:i + n].tolist() for n in (12, 20, 30) for i in range(0, 24 * n, n)]
    runs = count_runs(rec)
    worst = assert_same(rec.recommend_many(sessions, k=20),
                        [rec.recommend(s, k=20) for s in sessions])
    print(f"{name}: 30-item windows, largest score difference {worst}")
    assert sorted(runs)[-3:] == [24, 24, 24]


def test_category_options_on_a_batched_category_head(real_slice, trained):
    """The category head's output (category_scores) is split per session too."""
    _, _, catalog, inputs, _ = real_slice
    _, _, bundle, _ = trained("hiersrec")
    rec = Recommender.load(bundle)
    sessions = mixed_sessions(np.asarray(catalog.item_ids), inputs)
    for options in (dict(category_filter="predicted"), dict(candidates="categories")):
        assert_same(rec.recommend_many(sessions, k=10, **options),
                    [rec.recommend(s, k=10, **options) for s in sessions])


def test_chunks_of_at_most_batch_sessions(real_slice, trained, monkeypatch):
    from sessrec_sdk import recommender

    _, _, catalog, inputs, _ = real_slice
    _, _, bundle, _ = trained("grainrec")
    rec = Recommender.load(bundle)
    ids = np.asarray(catalog.item_ids)
    sessions = [ids[x[-1:]].tolist() for x in inputs if len(x)][:50]  # window length 1
    monkeypatch.setattr(recommender, "BATCH_SESSIONS", 16)
    runs = count_runs(rec)
    assert_same(rec.recommend_many(sessions, k=10), [rec.recommend(s, k=10) for s in sessions])
    assert runs[:4] == [16, 16, 16, 2] and len(runs) == 4 + len(sessions)


def test_cached_encoder_skips_hits(real_slice, trained):
    _, _, catalog, inputs, _ = real_slice
    _, _, bundle, _ = trained("attenmixer")
    rec = Recommender.load(bundle, encoder_cache=1000)
    sessions = mixed_sessions(np.asarray(catalog.item_ids), inputs)
    single = [Recommender.load(bundle).recommend(s, k=20) for s in sessions]
    runs = count_runs(rec)
    assert_same(rec.recommend_many(sessions, k=20), single)
    encoded = {rec.session_rows(s).tobytes() for s in sessions} - {b""}
    assert sum(runs) == len(encoded)  # a window listed twice is encoded once
    runs.clear()
    rec.recommend(sessions[0], k=20)
    assert_same(rec.recommend_many(sessions, k=20), single)
    assert runs == []  # every window from the cache


def test_old_format_bundle_without_the_batch_key(real_slice, trained, small_bundle,
                                                 tmp_path):
    """A bundle written before the key (here: a batched export with the key removed, and
    a synthetic bundle whose encoder has a fixed batch axis of 1) runs one session per
    encoder run and answers as before."""
    _, _, catalog, inputs, _ = real_slice
    _, _, bundle, _ = trained("grainrec")
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["encoder"]["batch"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    ids = np.asarray(catalog.item_ids)
    rows = np.load(small_bundle / "item_ids.npy")
    for path, sessions in ((old, mixed_sessions(ids, inputs)),
                           (small_bundle, [rows[i:i + n].tolist() for n in (1, 2, 3)
                                           for i in range(0, 60, 7)] + [UNKNOWN, []])):
        rec = Recommender.load(path)
        assert rec._served.encoder.batch is False
        single = [rec.recommend(s, k=15) for s in sessions]
        runs = count_runs(rec)
        assert_same(rec.recommend_many(sessions, k=15), single, exact=True)
        assert runs and set(runs) == {1}


def test_session_knn_bundle_skips_the_encoder(tmp_path):
    path = build_synthetic_sknn_bundle(tmp_path / "sknn", 500, 2000, sample=50,
                                       neighbors=20, seed=3)
    rec = Recommender.load(path)
    ids = rec.item_ids
    sessions = [ids[i:i + n].tolist() for n in (1, 3, 8) for i in range(0, 100, 9)]
    sessions += [UNKNOWN, []]
    assert_same(rec.recommend_many(sessions, k=10), [rec.recommend(s, k=10) for s in sessions],
                exact=True)


@pytest.fixture(scope="module")
def batched_synthetic(tmp_path_factory):
    return build_synthetic_bundle(tmp_path_factory.mktemp("batch") / "b", n_items=1500,
                                  dim=16, neighbors=10, seed=4, batch=True,
                                  max_session_length=4)


def test_bad_input_in_one_session_raises_what_recommend_raises(batched_synthetic):
    rec = Recommender.load(batched_synthetic)
    good = rec.item_ids[:3].tolist()
    for bad in ([1.5, 2.5], [[1, 2]], "not a session", [None], [True]):
        with pytest.raises(Exception) as single:
            rec.recommend(bad, k=5)
        with pytest.raises(type(single.value)) as many:
            rec.recommend_many([good, good, bad, good], k=5)
        assert str(many.value) == str(single.value)
    with pytest.raises(ValueError, match="k must be >= 1"):
        rec.recommend_many([good], k=0)
    with pytest.raises(ValueError, match="category_filter"):
        rec.recommend_many([good], category_filter="nope")
    assert rec.recommend_many([], k=5) == []


def test_batched_synthetic_equals_recommend(batched_synthetic):
    rec = Recommender.load(batched_synthetic)
    ids = rec.item_ids
    rng = np.random.default_rng(0)
    sessions = [ids[rng.integers(0, len(ids), int(n))].tolist()
                for n in rng.integers(0, 9, 300)] + [UNKNOWN]
    runs = count_runs(rec)
    assert_same(rec.recommend_many(sessions, k=10), [rec.recommend(s, k=10) for s in sessions])
    assert max(runs) > 50


@pytest.mark.parametrize("value", ["true", 1, 0, None, [True], {"b": True}])
def test_a_bad_batch_value_is_refused(batched_synthetic, tmp_path, value):
    path = tmp_path / "bad"
    shutil.copytree(batched_synthetic, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["encoder"]["batch"] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError,
                       match=r"manifest.json: encoder.batch must be true or false"):
        Recommender.load(path)


def test_batch_key_must_match_the_encoder(small_bundle, batched_synthetic, tmp_path):
    """"batch": true over an encoder with a fixed batch axis of 1 is refused at load; a
    batched encoder without the key is run one session at a time."""
    path = tmp_path / "claims_batch"
    shutil.copytree(small_bundle, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["encoder"]["batch"] = True
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match=r"encoder.onnx: encoder input 'items' \(kind "
                                               r"items\) must be tensor\(int64\) \['B', None\]"):
        Recommender.load(path)


def _one_from_the_data(out: str) -> tuple[list, list]:
    """(nodes, constants) computing ``out`` = [1] as 0 * min(items) + 1: a size ONNX Runtime
    cannot know before a run, so a shape built on it shows only when the encoder runs."""
    from onnx import TensorProto, helper

    consts = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
              helper.make_tensor("one", TensorProto.INT64, [1], [1])]
    return [helper.make_node("ReduceMin", ["items"], ["low"], axes=[0, 1], keepdims=0),
            helper.make_node("Mul", ["low", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "one"], [out])], consts


def test_a_batched_run_that_loses_sessions_is_refused(batched_synthetic, tmp_path):
    """An encoder declared [B, dim] that returns only the first session's row (cut at a
    data-dependent end, so that only a run shows it): the batched run's result check names
    the file (a single-session run cannot see this)."""
    from onnx import TensorProto, helper

    path = tmp_path / "merged"
    shutil.copytree(batched_synthetic, path)
    dim = json.loads((path / "manifest.json").read_text())["dim"]
    end, const = _one_from_the_data("end")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["item_emb"], ["pooled"], axes=[1], keepdims=0),
         *end, helper.make_node("Slice", ["pooled", "zero", "end", "zero"], ["query"])],
        "merged",
        [helper.make_tensor_value_info("items", TensorProto.INT64, ["B", "L"]),
         helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, ["B", "L", dim])],
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["B", dim])], const)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (path / "encoder.onnx").write_bytes(model.SerializeToString())
    resign(path, "encoder.onnx")
    rec = Recommender.load(path)
    ids = rec.item_ids
    rec.recommend(ids[:2].tolist(), k=5)  # alone it is a fine encoder
    with pytest.raises(CorruptFileError, match=rf"encoder.onnx: the encoder returned float32 "
                                               rf"\(1, {dim}\) for 'query' on 3 sessions"):
        rec.recommend_many([ids[:2].tolist(), ids[2:4].tolist(), ids[4:6].tolist()], k=5)


def test_export_refuses_an_encoder_whose_rows_mix(tmp_path):
    """The export's batch check (check_batch_parity) fires on an encoder declared [B, ...]
    whose rows depend on the other sessions of the batch, and passes one whose rows do
    not."""
    from onnx import TensorProto, helper

    from export_tools.onnx_export import BATCH_TOLERANCE, check_batch_parity

    model = contract.fresh_model("grainrec", 50).eval()
    d = model.input_dim

    def encoder(mixing: bool) -> str:
        nodes = [helper.make_node("ReduceMean", ["item_emb"], ["mean"], axes=[1], keepdims=0)]
        if mixing:  # + the mean over the batch
            nodes += [helper.make_node("ReduceMean", ["mean"], ["all"], axes=[0], keepdims=1),
                      helper.make_node("Add", ["mean", "all"], ["query"])]
        else:
            nodes += [helper.make_node("Add", ["mean", "mean"], ["query"])]
        graph = helper.make_graph(
            nodes, "mixing",
            [helper.make_tensor_value_info("items", TensorProto.INT64, ["B", "L"]),
             helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, ["B", "L", d])],
            [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["B", d])])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        path = tmp_path / f"{mixing}.onnx"
        path.write_bytes(m.SerializeToString())
        return path

    assert check_batch_parity(model, encoder(False)) <= BATCH_TOLERANCE
    with pytest.raises(RuntimeError, match="from the same session run alone"):
        check_batch_parity(model, encoder(True))


def test_cached_encoder_batches_on_a_synthetic_bundle(batched_synthetic):
    """CachedEncoder.run_batch: a window listed twice is encoded once; windows already in
    the cache are not encoded again; the cache keeps the last ``size`` windows (LRU, a
    hit refreshes); every answer is recommend()'s on an uncached Recommender, and the
    cached outputs are read-only."""
    plain = Recommender.load(batched_synthetic)
    rec = Recommender.load(batched_synthetic, encoder_cache=4)
    ids = rec.item_ids
    a, b, c, d, e = (ids[i:i + 2].tolist() for i in range(0, 10, 2))
    single = {tuple(s): plain.recommend(s, k=7) for s in (a, b, c, d, e)}
    runs = count_runs(rec)

    def check(sessions, encoded):
        runs.clear()
        assert_same(rec.recommend_many(sessions, k=7), [single[tuple(s)] for s in sessions],
                    exact=True)
        assert runs == encoded, (sessions, runs)

    check([a, b, a, c], [3])     # a twice: one run of 3 windows; held: a b c
    check([b, a, c], [])         # all from the cache; held, oldest first: b a c
    check([d, e, a], [2])        # a refreshed, d e new: b (least recent) out; c a d e
    check([b], [1])              # b is encoded again; c out: a d e b
    check([a, e, d, b], [])      # all held
    check([c], [1])              # c is encoded again, a out: e d b c
    # one at a time: c held; a in, e out; e in, d out; b held; d in
    for s, encoded in ((c, []), (a, [1]), (e, [1]), (b, []), (d, [1])):
        runs.clear()
        assert_same([rec.recommend(s, k=7)], [single[tuple(s)]], exact=True)
        assert runs == encoded, (s, runs)
    memo = rec._served.encoder._memo
    assert len(memo) == 4
    out = next(iter(memo.values()))
    for v in out.values():
        assert not v.flags.writeable


def _swap_encoder(bundle, out, nodes, extra_shape, consts=()):
    """A copy of the batched ``bundle`` whose encoder gives the mean of the item rows as
    its query (the same as the synthetic encoder's run) plus an output "extra" of kind
    extra, computed by ``nodes`` from "pooled" ([B, dim]) and declared ``extra_shape``."""
    from onnx import TensorProto, helper

    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    dim = manifest["dim"]
    manifest["encoder"]["outputs"].append({"name": "extra", "kind": "extra"})
    (out / "manifest.json").write_text(json.dumps(manifest))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["item_emb"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("Identity", ["pooled"], ["query"]), *nodes],
        "extra",
        [helper.make_tensor_value_info("items", TensorProto.INT64, ["B", "L"]),
         helper.make_tensor_value_info("item_emb", TensorProto.FLOAT, ["B", "L", dim])],
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["B", dim]),
         helper.make_tensor_value_info("extra", TensorProto.FLOAT, extra_shape)],
        list(consts))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (out / "encoder.onnx").write_bytes(model.SerializeToString())
    resign(out, "encoder.onnx")
    return out


def test_extra_outputs_of_a_batched_run(batched_synthetic, tmp_path):
    """Every output of a batched run is split by session: a 1-D output [B] gives each
    session its own value; an output that is not one row per session (here one value for
    the whole batch) is refused, naming the file and the output; windows of two lengths
    are not one batch."""
    from onnx import helper

    one_d = _swap_encoder(batched_synthetic, tmp_path / "one_d",
                          [helper.make_node("ReduceMean", ["pooled"], ["extra"], axes=[1],
                                            keepdims=0)], ["B"])
    rec = Recommender.load(one_d)
    enc = rec._served.encoder
    ids = rec.item_ids
    windows = [_encoder_inputs(rec._served, rec.session_rows(ids[i:i + 2].tolist()))
               for i in (0, 2, 4)]
    for n in (2, 3):  # a batch of two is one run too
        runs = count_runs(rec)
        out = enc.run_batch(windows[:n])
        assert runs == [n]
        for (rows, emb), got in zip(windows, out):  # each session its own row
            alone = enc(rows, emb)
            assert got["extra"].shape == (1,) and alone["extra"].shape == (1,)
            assert np.isclose(got["extra"][0], emb.mean(), rtol=1e-5)
            assert np.allclose(got["query"], alone["query"], rtol=1e-6)
    with pytest.raises(ValueError, match="^run_batch takes windows of one length$"):
        enc.run_batch([windows[0], (windows[1][0][:1], windows[1][1][:1])])

    dim = rec.bundle.manifest["dim"]
    end, const = _one_from_the_data("end")
    whole = _swap_encoder(  # the first session's row only, cut at a data-dependent end
        batched_synthetic, tmp_path / "whole",
        [*end, helper.make_node("Slice", ["pooled", "zero", "end", "zero"], ["extra"])],
        ["B", dim], const)
    rec = Recommender.load(whole)
    sessions = [ids[i:i + 2].tolist() for i in (0, 2, 4)]
    rec.recommend(sessions[0], k=5)  # one session: one row, fine
    with pytest.raises(CorruptFileError) as err:
        rec.recommend_many(sessions, k=5)
    assert str(err.value) == (f"{whole / 'encoder.onnx'}: the encoder returned (1, {dim}) for "
                              f"'extra' on 3 sessions, not one row per session")


def test_a_batched_run_that_fails_names_the_batch(batched_synthetic, tmp_path):
    """An encoder declared [B, ...] that fails on more than one session (a reshape to one
    row): the error names the file and what was encoded; one session alone is fine."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    dim = json.loads((batched_synthetic / "manifest.json").read_text())["dim"]
    rows, const = _one_from_the_data("rows")
    const.append(helper.make_tensor("width", TensorProto.INT64, [1], [dim]))
    path = _swap_encoder(  # reshaped to [1, dim], the 1 from the data (unknown at load)
        batched_synthetic, tmp_path / "fails",
        [*rows, helper.make_node("Concat", ["rows", "width"], ["shape"], axis=0),
         helper.make_node("Reshape", ["pooled", "shape"], ["extra"])],
        ["B", dim], const)
    # graph optimizations off: with them ONNX Runtime rewrites this reshape so that it runs
    rec = Recommender.load(path, ort_options={
        "graph_optimization_level": ort.GraphOptimizationLevel.ORT_DISABLE_ALL})
    ids = rec.item_ids
    rec.recommend(ids[:2].tolist(), k=5)
    with pytest.raises(CorruptFileError, match=rf"^{path / 'encoder.onnx'}: the encoder "
                                               rf"failed on a batch of 2 sessions of 2 items "
                                               rf"\(.+\)$"):
        rec.recommend_many([ids[:2].tolist(), ids[2:4].tolist()], k=5)
