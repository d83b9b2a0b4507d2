"""The runtime commands of ``sessrec``: synth, inspect, recommend."""
from __future__ import annotations

import json

import numpy as np

from sessrec_sdk import Recommender, cli


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
    import pytest

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
    import shutil

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
