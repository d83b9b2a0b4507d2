"""The ``sessrec`` command line: synth, inspect, warm, recommend word for word (measured
times masked), options reaching the SDK and the builders, the delegated commands, the
parser's defaults and choices, exit codes."""
from __future__ import annotations

import importlib
import io
import json
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from export_tools.synthetic import build_synthetic_bundle, build_synthetic_sknn_bundle
from sessrec_sdk import Recommender, cli
from sessrec_sdk.bundle import CATEGORY_FILTERS, ROW_ORDERS, read_bundle, write_bundle
from sessrec_sdk.errors import BundleError, ChecksumError
from sessrec_sdk.kernels.common import BACKENDS
from sessrec_sdk.pages import Warmed


def test_synth_inspect_recommend(tmp_path, capsys):
    out = tmp_path / "b"
    assert cli.main(["synth", str(out), "--items", "300", "--dim", "8", "--neighbors", "5",
                     "--dtype", "float16", "--row-order", "given"]) == 0
    assert "300 items" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["row_order"] == "given" and manifest["item_dtype"] == "float16"

    assert cli.main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "300 (int ids), d=8 float16, K=5, given row order" in text
    rec = Recommender.load(out)
    assert f"backend      {rec.backend}" in text

    ids = np.load(out / "item_ids.npy")
    assert cli.main(["recommend", str(out), str(ids[0]), str(ids[1]), "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    want = rec.recommend([int(ids[0]), int(ids[1])], k=3)
    assert [line.split()[1] for line in lines] == [str(i) for i in want.item_ids]


def test_synth_refuses_an_existing_bundle(small_bundle, capsys):
    assert cli.main(["synth", str(small_bundle), "--items", "50"]) == 2
    assert "exists" in capsys.readouterr().err


def test_version_and_help_on_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    from sessrec_sdk import __version__

    assert capsys.readouterr().out.strip() == f"sessrec {__version__}"
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        if name in cli.DELEGATED:
            continue
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"sessrec {name}: {action.dest} has no help text"


def test_exit_codes_and_one_line_errors(small_bundle, tmp_path, capsys):
    assert cli.main(["recommend", str(tmp_path / "none"), "1"]) == cli.EXIT_BUNDLE
    err = capsys.readouterr().err.strip()
    assert err.startswith("sessrec recommend: error:") and "\n" not in err
    broken = tmp_path / "broken"
    shutil.copytree(small_bundle, broken)
    (broken / "manifest.json").write_text("{")
    assert cli.main(["inspect", str(broken)]) == cli.EXIT_BUNDLE
    assert "manifest.json: not valid JSON" in capsys.readouterr().err
    ids = np.load(small_bundle / "item_ids.npy")
    assert cli.main(["recommend", str(small_bundle), str(ids[0]), "-k", "0"]) == cli.EXIT_USAGE
    assert "k must be >= 1" in capsys.readouterr().err
    # delegated commands: a wrong path is one line and exit code 2, not a traceback
    code = cli.main(["export", str(tmp_path / "no-checkpoint"), "--out", str(tmp_path / "o")])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("sessrec export: error:") and "\n" not in err
    assert cli.exit_code(RuntimeError("bug")) is None  # unexpected: traceback


def test_load_logs_and_warns_about_a_slower_backend(small_bundle, caplog, monkeypatch):
    import logging

    from sessrec_sdk import kernels

    with caplog.at_level(logging.INFO, logger="sessrec"):
        rec = Recommender.load(small_bundle, backend="numpy")
    assert any("backend numpy" in r.message and "verify=None" in r.message
               for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # asked for it
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sessrec"):
        assert Recommender.load(small_bundle).backend == "c"  # auto, and C is built here
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    real = kernels._load

    def no_c(name):
        if name == "c":
            raise ImportError("no C extension")
        return real(name)

    monkeypatch.setattr(kernels, "_load", no_c)
    with caplog.at_level(logging.INFO, logger="sessrec"):
        rec = Recommender.load(small_bundle)
    assert rec.backend in ("numba", "numpy")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"the C kernel extension is not built: serving with the {rec.backend} "
                        "backend, several times slower (reinstall sessrec with a C compiler)"]


def test_recommend_many_equals_recommend(small_bundle):
    rec = Recommender.load(small_bundle)
    ids = np.load(small_bundle / "item_ids.npy")
    sessions = [ids[i:i + 3].tolist() for i in range(0, 60, 3)] + [[], [-1]]
    many = rec.recommend_many(sessions, k=7, category_filter="none")
    assert len(many) == len(sessions)
    for s, got in zip(sessions, many):
        want = rec.recommend(s, k=7, category_filter="none")
        assert got.item_ids.tolist() == want.item_ids.tolist()
        assert got.scores.tolist() == want.scores.tolist() and got.fallback == want.fallback


# ---------------------------------------------------------------------------------------
# Word-for-word output of the runtime commands, options reaching the SDK, the delegated
# commands and the parser (kills the mutation survivors of sessrec_sdk/cli.py).

SECONDS = r"\d+\.\d s"  # a measured time, masked


class _Clock:
    """A perf_counter for cli.time: every call 1.5 s after the previous one."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        self.now += 1.5
        return self.now


def _manifest(path):
    return json.loads((Path(path) / "manifest.json").read_text())


def _edit_manifest(src, dst, edit):
    """A copy of bundle ``src`` at ``dst`` with its manifest edited by ``edit(manifest)``
    (manifest.json is not itself checksummed)."""
    shutil.copytree(src, dst)
    m = _manifest(dst)
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _size_line(m):
    size = sum(f["bytes"] for f in m["files"].values())
    return f"size         {size / 2**20:,.1f} MiB in {len(m['files'])} files"


def _backend_line(rec):
    if rec.backend == "c":
        from sessrec_sdk.kernels.c_backend import instruction_set

        return f"backend      c ({instruction_set()})"
    return f"backend      {rec.backend}"


def _inspect_out(capsys, *argv):
    assert cli.main(["inspect", *map(str, argv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"load         \d+\.\d ms", lines[-1]), lines[-1]
    return lines[:-1]


@pytest.fixture(scope="module")
def sknn_bundle(tmp_path_factory):
    """``sessrec synth --sknn`` of 300 items, 1,200 sessions."""
    out = tmp_path_factory.mktemp("cli") / "knn"
    assert cli.main(["synth", str(out), "--items", "300", "--sknn", "--sessions", "1200",
                     "--sample", "50", "--neighbors", "20", "--window", "7"]) == 0
    return out


def test_inspect_an_encoder_bundle_line_by_line(small_bundle, capsys):
    m = _manifest(small_bundle)
    assert m["row_order"] == "locality" and not m.get("data_stats") and "validation" not in m
    lines = _inspect_out(capsys, small_bundle)
    rec = Recommender.load(small_bundle)
    assert rec.backend == "c"
    assert lines == [
        f"bundle       {small_bundle.resolve()}",
        f"format       v{m['format_version']}, model {m['model']['kind']}",
        f"items        {m['n_items']:,} (int ids), d={m['dim']} {m['item_dtype']}, "
        f"K={m['neighbors_per_item']}, locality row order",
        _size_line(m),
        f"inference    {json.dumps(m['inference'])}",
        f"defaults     {json.dumps(m['defaults'])}",
        f"written by   {json.dumps(m['created_by'])}",
        _backend_line(rec),
    ]
    assert m["n_items"] == 2000 and "2,000 (int ids)" in lines[2]
    assert sum(f["bytes"] for f in m["files"].values()) >= 0.15 * 2**20  # the figure shows
    # another backend: the line has no instruction set
    lines = _inspect_out(capsys, small_bundle, "--backend", "numpy", "--verify")
    assert lines[-1] == "backend      numpy"


def test_inspect_a_session_knn_bundle_line_by_line(sknn_bundle, capsys):
    m = _manifest(sknn_bundle)
    lines = _inspect_out(capsys, sknn_bundle)
    rec = Recommender.load(sknn_bundle)
    assert lines == [
        f"bundle       {sknn_bundle.resolve()}",
        f"format       v{m['format_version']}, model {m['model']['kind']}",
        "items        300 (int ids); session-kNN over 1,200 sessions, sample 50",
        _size_line(m),
        f"inference    {json.dumps(m['inference'])}",
        f"defaults     {json.dumps(m['defaults'])}",
        f"written by   {json.dumps(m['created_by'])}",
        _backend_line(rec),
    ]
    assert m["scorer"] == "sknn" and m["sknn"]["n_sessions"] == 1200


def test_inspect_a_hybrid_bundle_says_session_index(sknn_bundle, tmp_path, capsys):
    """An encoder bundle with a session index: its items line ends ", session index"."""
    base = build_synthetic_bundle(tmp_path / "base", n_items=300, dim=8, neighbors=5,
                                  seed=3, row_order="given")
    b, k = read_bundle(base), read_bundle(sknn_bundle)
    out = write_bundle(
        tmp_path / "hybrid", encoder=b.path / "encoder.onnx",
        item_matrix=np.asarray(b.item_matrix), neighbors=np.asarray(b.neighbors),
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity),
        popularity_scores=np.asarray(b.popularity_scores),
        item_category=np.asarray(b.item_category), model=b.manifest["model"],
        inference=b.manifest["inference"], defaults=b.manifest["defaults"],
        session_index=k.session_index, sknn=k.manifest["sknn"])
    m = _manifest(out)
    lines = _inspect_out(capsys, out)
    assert lines[2] == (f"items        300 (int ids), d=8 {m['item_dtype']}, K=5, given row order, "
                        "session index")
    assert lines[3] == _size_line(m)


def test_inspect_prints_data_stats_and_every_validation_trial(small_bundle, tmp_path, capsys):
    stats = {"n_examples": 1234, "next_repeats_session_item": 0.25}
    trials = [{"setting": {"k": 10}, "HR@20": 0.5, "MRR@20": 0.25},
              {"setting": {"k": 20}, "HR@20": 0.625, "MRR@20": 0.125}]
    validation = {"split": "recent", "n_sessions": 321, "metric": "MRR@20",
                  "chosen": {"k": 10, "MRR@20": 0.25}, "trials": trials}

    def edit(m):
        m["data_stats"] = stats
        m["validation"] = validation

    path = _edit_manifest(small_bundle, tmp_path / "v", edit)
    m = _manifest(path)
    lines = _inspect_out(capsys, path)
    written = lines.index(f"written by   {json.dumps(m['created_by'])}")
    assert lines[written - 4:written] == [
        f"data stats   {json.dumps(stats)}",
        'validation   recent (321 sessions), by MRR@20: chosen {"k": 10, "MRR@20": 0.25}',
        f"  trial      {json.dumps(trials[0])}",
        f"  trial      {json.dumps(trials[1])}",
    ]
    assert lines[written - 5] == f"defaults     {json.dumps(m['defaults'])}"


def test_inspect_without_validation_keys_or_row_order(small_bundle, tmp_path, capsys):
    """A validation dict without its keys prints '?'s and no trial; a manifest without
    row_order (older writers) says "given"; a validation that is not a dict is skipped."""
    def edit(m):
        del m["row_order"]
        m["validation"] = {}

    path = _edit_manifest(small_bundle, tmp_path / "v", edit)
    m = _manifest(path)
    lines = _inspect_out(capsys, path)
    assert lines[2].endswith(f"K={m['neighbors_per_item']}, given row order")
    assert lines[6:8] == ["validation   ? (? sessions), by ?: chosen null",
                          f"written by   {json.dumps(m['created_by'])}"]

    def not_a_dict(m):
        m["validation"] = ["not", "a", "dict"]

    path = _edit_manifest(small_bundle, tmp_path / "w", not_a_dict)
    lines = _inspect_out(capsys, path)
    assert not [line for line in lines if line.startswith("validation")]


def test_inspect_reports_the_load_time_in_milliseconds(small_bundle, monkeypatch, capsys):
    monkeypatch.setattr(cli, "time", _Clock())
    assert cli.main(["inspect", str(small_bundle)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "load         1500.0 ms"


@pytest.fixture
def load_calls(monkeypatch):
    """The keyword arguments of every Recommender.load call (the real load still runs)."""
    calls = []
    real = Recommender.load

    def load(cls, path, **kwargs):
        calls.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(Recommender, "load", classmethod(load))
    return calls


def test_inspect_and_recommend_pass_backend_and_verify_on(small_bundle, small_ids, load_calls,
                                                           capsys):
    assert cli.main(["inspect", str(small_bundle)]) == 0
    assert cli.main(["inspect", str(small_bundle), "--backend", "numpy", "--verify"]) == 0
    one = str(small_ids[0])
    assert cli.main(["recommend", str(small_bundle), one]) == 0
    assert cli.main(["recommend", str(small_bundle), one, "--backend", "numpy"]) == 0
    assert load_calls == [{"backend": "auto", "verify": None},
                          {"backend": "numpy", "verify": True},
                          {"backend": "auto"}, {"backend": "numpy"}]
    capsys.readouterr()


def test_a_damaged_bundle_is_found_by_inspect_verify(small_bundle, tmp_path, capsys):
    """--verify reaches the load: a flipped byte in a checksummed array is exit code 3."""
    path = tmp_path / "flipped"
    shutil.copytree(small_bundle, path)
    f = path / "item_matrix.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert cli.main(["inspect", str(path), "--verify"]) == cli.EXIT_BUNDLE
    err = capsys.readouterr().err
    with pytest.raises(ChecksumError) as e:
        Recommender.load(path, verify=True)
    assert err == f"sessrec inspect: error: {e.value}\n"


def _lines(result):
    return [f"{rank:3d}  {item}  {score:.5f}" for rank, (item, score)
            in enumerate(result.pairs(), 1)]


def test_recommend_prints_the_sdk_answer(small_bundle, small_ids, capsys):
    rec = Recommender.load(small_bundle)
    session = [int(i) for i in small_ids[:4]]
    want = rec.recommend(session, k=7, category_filter="last")
    # both options change the answer here, so each must reach the SDK
    assert _lines(want) != _lines(rec.recommend(session, k=7))
    assert len(rec.recommend(session, category_filter="last").item_ids) != 7
    assert cli.main(["recommend", str(small_bundle), *map(str, session), "-k", "7",
                     "--category-filter", "last"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == _lines(want) and want.fallback is None
    assert out.splitlines()[0].startswith("  1  ")
    for name in ("session", "none"):
        assert cli.main(["recommend", str(small_bundle), *map(str, session),
                         "--category-filter", name]) == 0
        assert capsys.readouterr().out.splitlines() == _lines(
            rec.recommend(session, category_filter=name))


def test_recommend_predicted_filter_reaches_the_sdk(small_bundle, small_ids, capsys):
    """"predicted" is offered; on a bundle without a category head the SDK's own refusal
    is printed as a usage error, word for word."""
    session = [int(i) for i in small_ids[:2]]
    with pytest.raises(ValueError) as e:
        Recommender.load(small_bundle).recommend(session, category_filter="predicted")
    assert cli.main(["recommend", str(small_bundle), *map(str, session),
                     "--category-filter", "predicted"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == f"sessrec recommend: error: {e.value}\n"


def test_recommend_unknown_ids_prints_the_fallback(small_bundle, capsys):
    rec = Recommender.load(small_bundle)
    want = rec.recommend([-5, -7], k=3)
    assert want.fallback and want.unknown == 2
    assert cli.main(["recommend", str(small_bundle), "-5", "-7", "-k", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"(fallback: {want.fallback}; 2 unknown ids)", *_lines(want)]


def test_recommend_on_string_ids(str_bundle, capsys):
    rec = Recommender.load(str_bundle)
    ids = np.load(str_bundle / "item_ids.npy", allow_pickle=False).tolist()
    session = [str(i) for i in ids[:2]]
    want = rec.recommend(session)
    assert want.fallback is None and isinstance(want.pairs()[0][0], str)
    assert cli.main(["recommend", str(str_bundle), *session]) == 0
    assert capsys.readouterr().out.splitlines() == _lines(want)


def test_synth_prints_what_it_wrote_and_passes_every_option(tmp_path, monkeypatch, capsys):
    """The bundle written by ``sessrec synth`` is file for file the one the builder writes
    with the same arguments (defaults: dim 64, K 100, seed 0, float32, locality)."""
    out = tmp_path / "cli"
    assert cli.main(["synth", str(out), "--items", "300", "--dim", "8", "--neighbors", "5",
                     "--seed", "3", "--dtype", "float16", "--string-ids",
                     "--row-order", "given"]) == 0
    line = capsys.readouterr().out
    assert re.fullmatch(rf"wrote {re.escape(str(out))} \(300 items, d=8, K=5, float16, given "
                        rf"row order\) in {SECONDS}\n", line), line
    ref = build_synthetic_bundle(tmp_path / "ref", n_items=300, dim=8, neighbors=5, seed=3,
                                 dtype="float16", string_ids=True, row_order="given")
    assert _manifest(out)["files"] == _manifest(ref)["files"]
    assert _manifest(out)["id_kind"] == "str"

    monkeypatch.setattr(cli, "time", _Clock())
    assert cli.main(["synth", str(tmp_path / "d"), "--items", "300", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out == (f"wrote {tmp_path / 'd'} (300 items, d=64, K=100, "
                                       "float32, locality row order) in 1.5 s\n")
    ref = build_synthetic_bundle(tmp_path / "dref", n_items=300)
    assert _manifest(tmp_path / "d")["files"] == _manifest(ref)["files"]


def test_synth_seed_and_overwrite(tmp_path, capsys):
    def matrix(path):
        return np.load(path / "item_matrix.npy")

    for name, seed in (("a", "1"), ("b", "2"), ("c", "1")):
        assert cli.main(["synth", str(tmp_path / name), "--items", "100", "--dim", "4",
                         "--neighbors", "3", "--seed", seed]) == 0
    assert np.array_equal(matrix(tmp_path / "a"), matrix(tmp_path / "c"))
    assert not np.array_equal(matrix(tmp_path / "a"), matrix(tmp_path / "b"))
    assert cli.main(["synth", str(tmp_path / "a"), "--items", "100", "--dim", "4",
                     "--neighbors", "3", "--seed", "2", "--overwrite"]) == 0
    assert np.array_equal(matrix(tmp_path / "a"), matrix(tmp_path / "b"))
    for _ in range(2):  # the default seed is 0, every time
        assert cli.main(["synth", str(tmp_path / "z"), "--items", "100", "--dim", "4",
                         "--neighbors", "3", "--overwrite"]) == 0
        ref = build_synthetic_bundle(tmp_path / "zref", n_items=100, dim=4, neighbors=3,
                                     seed=0, overwrite=True)
        assert np.array_equal(matrix(tmp_path / "z"), matrix(ref))
    capsys.readouterr()


def test_synth_sknn_prints_what_it_wrote_and_passes_every_option(sknn_bundle, tmp_path,
                                                                 monkeypatch, capsys):
    ref = build_synthetic_sknn_bundle(tmp_path / "ref", 300, 1200, sample=50, neighbors=20,
                                      window=7)
    assert _manifest(sknn_bundle)["files"] == _manifest(ref)["files"]

    out = tmp_path / "s"
    assert cli.main(["synth", str(out), "--items", "300", "--sknn", "--sessions", "1200",
                     "--seed", "4", "--sample", "60", "--neighbors", "30", "--window",
                     "9"]) == 0
    line = capsys.readouterr().out
    assert re.fullmatch(rf"wrote {re.escape(str(out))} \(session-kNN: 300 items, 1,200 "
                        rf"sessions, sample 60, 30 neighbor sessions, window 9\) in "
                        rf"{SECONDS}\n", line), line
    ref = build_synthetic_sknn_bundle(tmp_path / "ref4", 300, 1200, sample=60, neighbors=30,
                                      window=9, seed=4)
    assert _manifest(out)["files"] == _manifest(ref)["files"]
    m = _manifest(out)
    assert m["inference"]["max_session_length"] == 9 and m["sknn"]["sample"] == 60
    assert m["defaults"]["neighbors"] == 30

    # defaults: sample 500, 100 neighbor sessions, window 20, seed 0; --overwrite replaces
    monkeypatch.setattr(cli, "time", _Clock())
    assert cli.main(["synth", str(out), "--items", "300", "--sknn", "--sessions", "400",
                     "--overwrite"]) == 0
    assert capsys.readouterr().out == (
        f"wrote {out} (session-kNN: 300 items, 400 sessions, sample 500, 100 neighbor "
        "sessions, window 20) in 1.5 s\n")
    ref = build_synthetic_sknn_bundle(tmp_path / "ref0", 300, 400, sample=500, neighbors=100,
                                      window=20, seed=0)
    assert _manifest(out)["files"] == _manifest(ref)["files"]


def test_synth_shows_progress_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    args = ["--items", "300", "--sknn", "--sessions", "200", "--sample", "20", "--neighbors",
            "5"]
    assert cli.main(["synth", str(tmp_path / "a"), *args]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["synth", str(tmp_path / "b"), *args]) == 0
    assert capsys.readouterr().err.startswith("synthetic session index: 300 items, 200 sessions")
    assert cli.main(["synth", str(tmp_path / "c"), "--items", "300", "--dim", "4",
                     "--neighbors", "3"]) == 0
    assert "neighbors" in capsys.readouterr().err  # the builder's progress bar


@pytest.mark.parametrize("argv, message", [
    (["--sknn"], "--sknn needs --sessions N (the sessions to index)"),
    (["--sessions", "50"], "--sessions is for --sknn bundles"),
    # an option one kind of bundle does not read is refused, not ignored
    (["--sknn", "--sessions", "50", "--dim", "8"], "--dim: not for --sknn bundles"),
    (["--sknn", "--sessions", "50", "--dtype", "float16", "--string-ids", "--row-order",
      "given"], "--dtype, --string-ids, --row-order: not for --sknn bundles"),
    (["--sample", "50"], "--sample: only for --sknn bundles"),
    (["--window", "5", "--sample", "499"], "--sample, --window: only for --sknn bundles"),
])
def test_synth_refuses_options_the_bundle_kind_does_not_read(tmp_path, capsys, argv, message):
    out = tmp_path / "x"
    assert cli.main(["synth", str(out), "--items", "100", *argv]) == cli.EXIT_USAGE
    assert capsys.readouterr() == ("", f"sessrec synth: error: {message}\n")
    assert not out.exists()


def test_synth_without_the_export_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "export_tools.synthetic", None)
    with pytest.raises(ImportError) as e:
        importlib.import_module("export_tools.synthetic")
    assert cli.main(["synth", str(tmp_path / "x"), "--items", "100"]) == cli.EXIT_MISSING_EXTRA
    assert capsys.readouterr().err == (f"sessrec synth: error: needs the export extra "
                                       f"({e.value}): pip install 'sessrec[export]'\n")


def _warm_line(name, size):
    return f"{name:24s} {size / 2**20:10,.1f} MiB"


def test_warm_prints_one_line_per_file(small_bundle, monkeypatch, capsys):
    monkeypatch.setattr(cli, "time", _Clock())
    assert cli.main(["warm", str(small_bundle)]) == 0
    files = sorted(p for p in small_bundle.iterdir() if p.is_file())
    assert max(p.stat().st_size for p in files) < 64 * 2**20  # small: no 2 MB page share
    assert capsys.readouterr().out.splitlines() == [
        *(_warm_line(p.name, p.stat().st_size) for p in files), "warmed in 1.5 s"]
    assert any(p.stat().st_size >= 0.15 * 2**20 for p in files)  # a figure that shows


def test_warm_prints_the_page_share_and_drops(small_bundle, monkeypatch):
    """The 2 MB page share and the drop note, each line flushed before the next file."""
    stream = io.StringIO()
    seen = []  # what a reader of stdout had when each next file was started

    def flush():
        seen.append(stream.getvalue())

    stream.flush = flush
    done = [Warmed("a.npy", 3 * 2**20 + 2**19, False, None),
            Warmed("items.npy", 1536 * 2**20, True, 0.5),
            Warmed("neighbors.npy", 100 * 2**20, False, 1.0)]
    printed = []

    def warm(bundle):
        assert Path(bundle) == small_bundle
        for w in done:
            printed.append(seen[-1] if seen else "")
            yield w

    import sessrec_sdk.pages

    monkeypatch.setattr(sessrec_sdk.pages, "warm", warm)
    monkeypatch.setattr(sys, "stdout", stream)
    assert cli.main(["warm", str(small_bundle)]) == 0
    lines = stream.getvalue().splitlines()
    assert lines[:3] == [
        "a.npy                           3.5 MiB",
        "items.npy                   1,536.0 MiB  2 MB pages  50%  (4 KB pages dropped, "
        "read again)",
        "neighbors.npy                 100.0 MiB  2 MB pages 100%",
    ]
    assert re.fullmatch(rf"warmed in {SECONDS}", lines[3])
    assert printed == ["", lines[0] + "\n", "\n".join(lines[:2]) + "\n"]


def test_warm_refuses_a_directory_that_is_not_a_bundle(tmp_path, capsys):
    assert cli.main(["warm", str(tmp_path)]) == cli.EXIT_USAGE
    assert capsys.readouterr() == (
        "", f"sessrec warm: error: {tmp_path}: not a sessrec bundle (no manifest.json)\n")


@pytest.fixture
def fake_delegate(monkeypatch):
    """A delegated module ``fake_sessrec_cmd`` for ``train`` that records its argv."""
    calls = []
    mod = types.ModuleType("fake_sessrec_cmd")

    def main(argv):
        calls.append(list(argv))
        return 5

    mod.main = main
    monkeypatch.setitem(sys.modules, "fake_sessrec_cmd", mod)
    monkeypatch.setitem(cli.DELEGATED, "train", "fake_sessrec_cmd")
    return calls


def test_delegated_commands_get_every_later_argument(fake_delegate, monkeypatch):
    assert cli.main(["train", "--help", "train", "-k", "3"]) == 5
    monkeypatch.setattr(sys, "argv", ["sessrec", "train", "--out", "x"])
    assert cli.main() == 5
    assert fake_delegate == [["--help", "train", "-k", "3"], ["--out", "x"]]


def test_main_reads_sys_argv(small_bundle, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sessrec", "recommend", str(small_bundle), "-1"])
    assert cli.main() == 0
    assert capsys.readouterr().out.startswith("(fallback: ")


def _import_fails(monkeypatch, module: str, message: str) -> None:
    """importlib.import_module(module) raises ImportError(message); others import."""
    real = importlib.import_module

    def import_module(name, *args):
        if name == module:
            raise ImportError(message)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)


def test_delegated_command_without_its_extra(monkeypatch, capsys):
    _import_fails(monkeypatch, "export_tools.train", "No module named 'torch'")
    assert cli.main(["train", "--help"]) == cli.EXIT_MISSING_EXTRA
    assert capsys.readouterr() == ("", "sessrec train: error: needs the export extra (No module "
                                       "named 'torch'): pip install 'sessrec[export]'\n")


@pytest.fixture
def source_tree(tmp_path, monkeypatch):
    """cli.py seen at tmp_path/tree/sessrec_sdk/cli.py, with tree/benchmarks/run.py a fake
    suite that records its argv; the real checkout is taken off sys.path."""
    real_root = Path(cli.__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True)
    (tree / "benchmarks" / "__init__.py").write_text("")
    (tree / "benchmarks" / "run.py").write_text(
        "CALLS = []\n\ndef main(argv):\n    CALLS.append(list(argv))\n    return 7\n")
    monkeypatch.setattr(cli, "__file__", str(tree / "sessrec_sdk" / "cli.py"))
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if Path(p or ".").resolve() != real_root])
    saved = {k: sys.modules.pop(k) for k in list(sys.modules)
             if k == "benchmarks" or k.startswith("benchmarks.")}
    importlib.invalidate_caches()
    yield tree
    for k in [k for k in sys.modules if k == "benchmarks" or k.startswith("benchmarks.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_bench_runs_the_suite_of_the_source_tree(source_tree, capsys):
    assert cli.main(["bench", "--smoke"]) == 7
    assert cli.main(["bench"]) == 7
    assert sys.modules["benchmarks.run"].CALLS == [["--smoke"], []]
    assert sys.modules["benchmarks.run"].__file__ == str(source_tree / "benchmarks" / "run.py")
    assert sys.path[0] == str(source_tree) and sys.path.count(str(source_tree)) == 1
    assert capsys.readouterr() == ("", "")


def test_bench_needs_a_source_checkout(source_tree, capsys):
    shutil.rmtree(source_tree / "benchmarks")
    assert cli.main(["bench"]) == cli.EXIT_MISSING_EXTRA
    assert capsys.readouterr() == ("", (
        "sessrec bench: error: the benchmark suite runs from a source checkout of sessrec "
        "(it is not part of the installed package): clone the repository and run 'sessrec "
        "bench' there, with pip install -e '.[bench]' --group dev\n"))
    assert str(source_tree) not in sys.path


def test_bench_without_the_bench_extra(source_tree, monkeypatch, capsys):
    _import_fails(monkeypatch, "benchmarks.run", "No module named 'pytest_benchmark'")
    assert cli.main(["bench"]) == cli.EXIT_MISSING_EXTRA
    assert capsys.readouterr() == ("", "sessrec bench: error: needs the bench extra (No module "
                                       "named 'pytest_benchmark'): pip install "
                                       "'sessrec[bench]'\n")


@pytest.mark.parametrize("exc, code", [
    (BundleError("x"), cli.EXIT_BUNDLE), (ChecksumError("x"), cli.EXIT_BUNDLE),
    (cli.MissingExtra("x"), cli.EXIT_MISSING_EXTRA),
    *((cls("x"), cli.EXIT_USAGE) for cls in (ValueError, TypeError, FileExistsError,
                                               FileNotFoundError, NotADirectoryError,
                                               IsADirectoryError, PermissionError)),
    (RuntimeError("x"), None), (KeyError("x"), None), (OSError("x"), None),
])
def test_exit_code_of_each_error(exc, code):
    assert cli.exit_code(exc) == code


def test_an_unexpected_error_is_raised_with_its_traceback(fake_delegate, monkeypatch, capsys):
    def main(argv):
        raise RuntimeError("bug")

    monkeypatch.setattr(sys.modules["fake_sessrec_cmd"], "main", main)
    with pytest.raises(RuntimeError, match="bug"):
        cli.main(["train"])
    assert capsys.readouterr().err == ""


def _subparsers(parser):
    return next(a for a in parser._actions if a.dest == "command")


def test_documented_defaults_are_the_parser_defaults():
    """Every "(default X)" in an option's help is its parser default (--neighbors: None,
    resolved to 100 in _synth, tested above)."""
    checked = []
    for name, p in _subparsers(cli.build_parser()).choices.items():
        for action in p._actions:
            for said in re.findall(r"\(default ([^:;)]+)", action.help or ""):
                if action.dest == "neighbors":  # K, and neighbor sessions with --sknn
                    assert action.default is None and said == "100"
                else:
                    assert str(action.default) == said, f"sessrec {name} {action.dest}"
                checked.append(action.dest)
    assert sorted(checked) == ["backend", "backend", "dim", "dtype", "neighbors", "neighbors",
                               "sample", "seed", "window"]
    args = cli.build_parser().parse_args(["synth", "x", "--items", "5"])
    assert (args.row_order, args.neighbors, args.sessions, args.sknn, args.string_ids,
            args.overwrite) == ("locality", None, None, False, False, False)
    assert isinstance(args.out, Path)
    args = cli.build_parser().parse_args(["recommend", "b", "1"])
    assert (args.k, args.category_filter, args.backend) == (None, None, "auto")


def test_choices_are_the_sdk_values(capsys):
    subs = _subparsers(cli.build_parser()).choices
    for name in ("inspect", "recommend"):
        backend = next(a for a in subs[name]._actions if a.dest == "backend")
        assert tuple(backend.choices) == BACKENDS
    cf = next(a for a in subs["recommend"]._actions if a.dest == "category_filter")
    assert sorted(cf.choices) == sorted(CATEGORY_FILTERS)
    ro = next(a for a in subs["synth"]._actions if a.dest == "row_order")
    assert sorted(ro.choices) == sorted(ROW_ORDERS)
    for argv in (["synth", "x", "--items", "5", "--dtype", "float64"],
                 ["inspect", "x", "--backend", "gpu"],
                 ["recommend", "x", "1", "--backend", "gpu"],
                 ["recommend", "x", "1", "--category-filter", "latest"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert f"usage: sessrec {argv[0]} " in err and "invalid choice" in err, err


def test_usage_errors_of_the_parser(capsys):
    for argv, message in (([], "the following arguments are required: COMMAND"),
                          (["synth", "x"], "the following arguments are required: --items")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("usage: sessrec") and err.endswith(f": error: {message}\n"), err


def test_help_lists_every_command_with_the_exit_codes(capsys):
    parser = cli.build_parser()
    assert parser.prog == "sessrec"
    assert parser.description == cli.__doc__.splitlines()[0] and parser.description
    codes = {int(c) for c in re.findall(r"(\d) [a-z]", parser.epilog)}
    assert codes == {0, 1, cli.EXIT_USAGE, cli.EXIT_BUNDLE, cli.EXIT_MISSING_EXTRA}
    sub = _subparsers(parser)
    listed = {a.dest: a.help for a in sub._choices_actions}
    assert set(listed) == {"synth", "inspect", "warm", "recommend", *cli.DELEGATED}
    assert all(listed.values())
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: sessrec [-h] [--version] COMMAND ...")
    assert parser.epilog in " ".join(out.split())
