"""The ONNX session encoder at its edges: the ONNX Runtime options it runs with, every
refusal of the load-time declaration check word for word, the messages of a failing or
mistyped run, the route of a run to ONNX Runtime's C++ session, and the cache's answers
from memory.

Mutation testing (scripts/mutation.sh, see docs/testing.md) found these unchecked: the
declaration check was reached by bundles that pass it or by messages matched on a word,
so a dropped output check, a kind name misspelt or a shape rule loosened survived.
Tiny encoders built with the onnx helper API and loaded by ``SessionEncoder`` directly,
no bundle, no training.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sessrec_sdk.encoder import CachedEncoder, SessionEncoder, session_options
from sessrec_sdk.errors import CorruptFileError

D = 4  # input_dim = output_dim of every encoder here
F, I64 = TensorProto.FLOAT, TensorProto.INT64
SINGLE = [("items", I64, [1, "L"]), ("item_emb", F, [1, "L", D])]
BATCHED = [("items", I64, ["B", "L"]), ("item_emb", F, ["B", "L", D])]
MEAN = helper.make_node("ReduceMean", ["item_emb"], ["query"], axes=[1], keepdims=0)
AS_FLOAT = helper.make_node("Cast", ["items"], ["items_f"], to=F)


def encoder(path, outputs, nodes=(), inputs=SINGLE, consts=()):
    """Writes a model whose query is the mean of the item rows, plus ``nodes``; inputs and
    outputs given as (name, element type, declared shape)."""
    graph = helper.make_graph(
        [MEAN, *nodes], "edges",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs], list(consts))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def spec(*outputs, batch=None):
    """The manifest's encoder entry: items + item_rows in, ``outputs`` (name, kind) out."""
    out = {"inputs": [{"name": "items", "kind": "items"},
                      {"name": "item_emb", "kind": "item_rows"}],
           "outputs": [{"name": n, "kind": k} for n, k in (("query", "query"), *outputs)]}
    if batch is not None:
        out["batch"] = batch
    return out


def window(rows):
    rows = np.asarray(rows, dtype=np.int64)
    emb = (rows[:, None] + np.arange(D, dtype=np.float32)[None, :]).astype(np.float32)
    return rows, emb


def refusal(path, spec_, **kw) -> str:
    with pytest.raises(CorruptFileError) as err:
        SessionEncoder(path, spec_, D, D, **kw)
    return str(err.value)


def test_session_options_one_thread_no_spinning_and_overrides():
    """One intra-op and one inter-op thread, run sequentially with every graph
    optimisation and no spinning thread (a host runs calls in parallel, one core each);
    ``overrides`` set attributes by name, an unknown name is the caller's ValueError."""
    opts = session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    opts = session_options({"intra_op_num_threads": 3, "enable_profiling": False})
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    with pytest.raises(ValueError) as err:
        session_options({"threads": 2})
    assert str(err.value) == "onnxruntime.SessionOptions has no attribute 'threads'"


def test_a_manifest_without_the_batch_key_is_one_session_per_run(tmp_path):
    """``batch`` defaults to False (a bool, as the manifest's optional key); outputs come
    back flattened to 1-D, each window as encoded alone."""
    path = encoder(tmp_path / "e.onnx", [("query", F, [1, D]), ("rep", F, [1, "L"])],
                   [AS_FLOAT, helper.make_node("Identity", ["items_f"], ["rep"])])
    enc = SessionEncoder(path, spec(("rep", "repeat_scores")), D, D)
    assert enc.batch is False
    assert SessionEncoder(path, spec(("rep", "repeat_scores"), batch=False), D, D).batch is False
    rows, emb = window([3, 5, 9])
    out = enc(rows, emb)
    assert out["query"].shape == (D,) and np.allclose(out["query"], emb.mean(axis=0))
    assert out["rep"].tolist() == [3.0, 5.0, 9.0]
    assert [o["rep"].tolist() for o in enc.run_batch([window([1, 2]), window([4, 7])])] == [
        [1.0, 2.0], [4.0, 7.0]]


def test_an_output_the_model_lacks_is_refused(tmp_path):
    """The inputs match but a declared output is not in the model: refused at load with
    both declarations, not a KeyError later."""
    path = encoder(tmp_path / "e.onnx", [("query", F, [1, D])])
    assert refusal(path, spec(("cats", "category_scores"))) == (
        f"{path}: the manifest declares inputs ['item_emb', 'items'] and outputs "
        f"['query', 'cats']; the encoder takes ['item_emb', 'items'] and gives ['query']")


def test_repeat_scores_must_be_one_symbolic_width(tmp_path):
    """The repeat scores are one per window item: a fixed width (right for one length
    only) or a rank other than 2 is refused, naming the shape it must have."""
    fixed = encoder(tmp_path / "fixed.onnx", [("query", F, [1, D]), ("rep", F, [1, 5])],
                    [AS_FLOAT, helper.make_node("Identity", ["items_f"], ["rep"])])
    assert refusal(fixed, spec(("rep", "repeat_scores"))) == (
        f"{fixed}: encoder output 'rep' (kind repeat_scores) must be float32 [1, 'L'], "
        "it is declared tensor(float) [1, 5]")
    flat = encoder(tmp_path / "flat.onnx", [("query", F, [1, D]), ("rep", F, [1])],
                   [AS_FLOAT, helper.make_node("ReduceMean", ["items_f"], ["rep"], axes=[1],
                                               keepdims=0)])
    assert refusal(flat, spec(("rep", "repeat_scores"))) == (
        f"{flat}: encoder output 'rep' (kind repeat_scores) must be float32 [1, 'L'], "
        "it is declared tensor(float) [1]")


def test_a_query_of_two_rows_is_refused_without_a_batch_axis(tmp_path):
    """An encoder without a batch axis is run with one session: a query declared with a
    leading 2 (its width right, its inputs symbolic) is refused."""
    path = encoder(tmp_path / "e.onnx", [("query", F, [2, D])],
                   inputs=[("items", I64, ["N", "L"]), ("item_emb", F, ["N", "L", D])])
    assert refusal(path, spec()) == (
        f"{path}: encoder output 'query' (kind query) must be float32 [1, {D}], "
        f"it is declared tensor(float) [2, {D}]")


def test_a_batched_encoder_output_needs_a_symbolic_leading_axis(tmp_path):
    """run_batch hands row b of every output to session b: on a batch encoder even an
    output of kind extra (whose shape is otherwise free) must lead with a symbolic axis."""
    path = encoder(tmp_path / "e.onnx", [("query", F, ["B", D]), ("extra", F, [1, D])],
                   [helper.make_node("Identity", ["query"], ["extra"])], inputs=BATCHED)
    assert refusal(path, spec(("extra", "extra"), batch=True)) == (
        f"{path}: encoder output 'extra' (kind extra) must be float32 ['B', None], "
        f"it is declared tensor(float) [1, {D}]")
    ok = encoder(tmp_path / "ok.onnx", [("query", F, ["B", D]), ("extra", F, ["B", D])],
                 [helper.make_node("Identity", ["query"], ["extra"])], inputs=BATCHED)
    assert SessionEncoder(ok, spec(("extra", "extra"), batch=True), D, D).batch is True


def test_a_failing_run_names_the_session_and_keeps_300_characters(tmp_path):
    """A run that fails (a reshape right for two items only) raises CorruptFileError naming
    the file and the session's length, with ONNX Runtime's message cut to 300 characters
    (its node name alone is longer here)."""
    path = encoder(
        tmp_path / "e.onnx", [("query", F, [1, D]), ("extra", F, [1, 2])],
        [AS_FLOAT, helper.make_node("Reshape", ["items_f", "two"], ["extra"], name="n" * 400)],
        consts=[helper.make_tensor("two", I64, [2], [1, 2])])
    enc = SessionEncoder(path, spec(("extra", "extra")), D, D)
    assert enc(*window([1, 2]))["extra"].tolist() == [1.0, 2.0]
    with pytest.raises(CorruptFileError) as err:
        enc(*window([1, 2, 3]))
    head = f"{path}: the encoder failed on a session of 3 items ("
    msg = str(err.value)
    assert msg.startswith(head) and msg.endswith(")")
    cause = msg[len(head):-1]
    assert len(cause) == 300 and cause.startswith("[ONNXRuntimeError]")
    assert cause.endswith("n" * 20)


class StandIn:
    """An ``InferenceSession`` stand-in around a real one: it records whether a run went
    to the C++ session (``_sess.run``, exposed when ``fast``) or to the wrapper's ``run``,
    can hand back other ``results`` than ONNX Runtime's, and can declare ``shapes`` None
    (what the NodeArg API's shape may be: "no shape")."""

    def __init__(self, real, fast=True, results=None, shapes=()):
        self.real, self.routes, self.results, self.shapes = real, [], results, set(shapes)
        if fast:
            self._sess = SimpleNamespace(run=lambda *a: self._log("_sess", *a))

    def _declared(self, args):
        return [SimpleNamespace(name=a.name, type=a.type,
                                shape=None if a.name in self.shapes else a.shape)
                for a in args]

    def get_inputs(self):
        return self._declared(self.real.get_inputs())

    def get_outputs(self):
        return self._declared(self.real.get_outputs())

    def run(self, *args):
        return self._log("run", *args)

    def _log(self, route, *args):
        self.routes.append(route)
        out = self.real.run(*args)
        return out if self.results is None else self.results(out)


@pytest.fixture
def stand_in(monkeypatch):
    """``stand_in(**kw)``: the next SessionEncoders load a StandIn(**kw) (its ``providers``:
    the ones the session was asked for); returns the list of the stand-ins made."""
    real, made = ort.InferenceSession, []

    def install(**kw):
        def make(*args, **kwargs):
            made.append(StandIn(real(*args, **kwargs), **kw))
            made[-1].providers = kwargs.get("providers")
            return made[-1]
        monkeypatch.setattr(ort, "InferenceSession", make)
        return made
    return install


def test_runs_go_to_the_c_session_when_onnxruntime_exposes_it(tmp_path, stand_in):
    """Every run skips the wrapper's per-call feed check (the names were checked at load)
    by calling the C++ session's run; an onnxruntime without it gets the wrapper's run,
    with the same outputs."""
    path = encoder(tmp_path / "e.onnx", [("query", F, [1, D])])
    rows, emb = window([2, 6])
    made = stand_in(fast=True)
    fast = SessionEncoder(path, spec(), D, D)
    stand_in(fast=False)
    slow = SessionEncoder(path, spec(), D, D)
    got = [e(rows, emb)["query"] for e in (fast, slow)]
    assert [s.routes for s in made] == [["_sess"], ["run"]]
    assert np.array_equal(got[0], got[1]) and np.allclose(got[0], emb.mean(axis=0))


def test_the_cpu_provider_is_pinned(tmp_path, stand_in):
    """The session is asked for ONNX Runtime's CPU provider by name: on a build with
    further providers (a GPU build) the encoder still runs on one CPU core, as the
    reference answers were computed, rather than on whichever provider comes first."""
    path = encoder(tmp_path / "e.onnx", [("query", F, [1, D])])
    made = stand_in()
    SessionEncoder(path, spec(), D, D)
    assert made[0].providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("results, named", [
    (lambda out: [out[0].astype(np.float64)], "float64"),
    (lambda out: [out[0].tolist()], "<class 'list'>")], ids=["float64", "list"])
def test_a_result_that_is_not_a_float32_array_is_refused(tmp_path, stand_in, results, named):
    """Each result is checked before a kernel reads it: another dtype, or no array at all,
    raises CorruptFileError naming the file, what came back and the output."""
    path = encoder(tmp_path / "e.onnx", [("query", F, [1, D])])
    stand_in(results=results)
    enc = SessionEncoder(path, spec(), D, D)
    with pytest.raises(CorruptFileError) as err:
        enc(*window([1, 2]))
    assert str(err.value) == f"{path}: the encoder returned {named} for 'query', not float32"


def test_shapes_declared_none_are_accepted(tmp_path, stand_in):
    """A shape the session declares as None (no shape) can be any: an input, the repeat
    scores and a batched output without one all load, and the encoder runs."""
    path = encoder(tmp_path / "e.onnx", [("query", F, ["B", D]), ("rep", F, ["B", "L"])],
                   [AS_FLOAT, helper.make_node("Identity", ["items_f"], ["rep"])],
                   inputs=BATCHED)
    stand_in(shapes=("items", "rep"))
    enc = SessionEncoder(path, spec(("rep", "repeat_scores"), batch=True), D, D)
    out = enc.run_batch([window([1, 2]), window([3, 4])])
    assert [o["rep"].tolist() for o in out] == [[1.0, 2.0], [3.0, 4.0]]


def test_cached_run_batch_answers_hits_from_memory(tmp_path):
    """CachedEncoder.run_batch: a window already encoded is answered with the kept
    outputs (the same read-only arrays), the others are encoded; the least recently used
    window is the one dropped past ``size``."""
    path = encoder(tmp_path / "e.onnx", [("query", F, ["B", D])], inputs=BATCHED)
    enc = SessionEncoder(path, spec(batch=True), D, D)
    cached = CachedEncoder(enc, 2)
    a, b, c = window([1, 2]), window([3, 4]), window([5, 6])
    first = cached.run_batch([a, b])
    again = cached.run_batch([b, c])
    assert again[0] is first[1] and not again[0]["query"].flags.writeable
    for w, got in zip((b, c), again):
        assert np.array_equal(got["query"], enc(*w)["query"])
    assert list(cached._memo) == [b[0].tobytes(), c[0].tobytes()]  # a, the oldest, dropped
