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
