"""A synthetic session-kNN bundle (export_tools.synthetic.build_synthetic_sknn_bundle, the
benchmarks' sknn bundles): it loads verified, matches the export's own index builder, and
answers recommend() identically on every kernel backend."""
from __future__ import annotations

import numpy as np
import pytest

from export_tools.models.sknn import INDEX_FILES, build_index
from export_tools.synthetic import build_synthetic_sknn_bundle, synthetic_session_index
from sessrec_sdk import Recommender
from sessrec_sdk.kernels.sknn import available_sknn_backends

BACKENDS = available_sknn_backends()


@pytest.fixture(scope="module")
def sknn_bundle(tmp_path_factory):
    return build_synthetic_sknn_bundle(tmp_path_factory.mktemp("sk") / "b", 600, 3000,
                                       sample=40, neighbors=20, window=5, seed=4)


def test_index_matches_the_export_builder():
    """Same arrays as export_tools.models.sknn.build_index over the generated sessions
    (row order within a session, newest first per item, capped lists, idf weights)."""
    for idf in (True, False):
        index, counts = synthetic_session_index(300, 2000, sample=7, idf=idf, seed=3)
        ip, items = index.session_indptr, index.session_items
        sessions = [items[ip[i]:ip[i + 1]] for i in range(2000)]
        assert all(len(s) >= 1 and (np.diff(s) > 0).all() for s in sessions)
        assert max(map(len, sessions)) <= 20
        ref = build_index(sessions, 300, sample=7, idf=idf)
        for got, name in zip(index.arrays(), INDEX_FILES):
            assert got.dtype == ref[name].dtype and np.array_equal(got, ref[name]), name
        assert np.array_equal(counts, np.bincount(items, minlength=300))


def test_seeded():
    a, _ = synthetic_session_index(500, 1000, sample=10, seed=1)
    b, _ = synthetic_session_index(500, 1000, sample=10, seed=1)
    c, _ = synthetic_session_index(500, 1000, sample=10, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a.arrays(), b.arrays()))
    assert not np.array_equal(a.session_items, c.session_items)


def test_loads_verified_with_its_defaults(sknn_bundle):
    rec = Recommender.load(sknn_bundle, verify=True)
    m = rec.manifest
    assert m["scorer"] == "sknn" and m["sknn"] == {"n_sessions": 3000, "sample": 40,
                                                   "idf": True}
    assert m["defaults"]["neighbors"] == 20 and m["inference"]["max_session_length"] == 5
    out = rec.recommend(rec.item_ids[:3].tolist())
    assert len(out.item_ids) == m["defaults"]["k"] and out.fallback is None
    assert out.n_candidates > 0


def test_every_backend_answers_identically(sknn_bundle):
    assert "numpy" in BACKENDS and len(BACKENDS) >= 2
    recs = {b: Recommender.load(sknn_bundle, backend=b, verify=True) for b in BACKENDS}
    ix = recs[BACKENDS[0]].bundle.session_index
    ids = recs[BACKENDS[0]].bundle.ids
    rng = np.random.default_rng(0)
    sessions = []
    for j in rng.choice(ix.n_sessions, 60, replace=False).tolist():
        rows = np.asarray(ix.session_items[ix.session_indptr[j]:ix.session_indptr[j + 1]])
        sessions.append(ids.external(rows.astype(np.int32)).tolist())
    sessions += [recs[BACKENDS[0]].item_ids[rng.integers(0, 600, 7)].tolist() for _ in range(20)]
    for s in sessions:
        outs = [recs[b].recommend(s, k=15) for b in BACKENDS]
        for b, o in zip(BACKENDS[1:], outs[1:]):
            assert np.array_equal(o.item_ids, outs[0].item_ids), (b, s)
            assert np.array_equal(o.scores, outs[0].scores), (b, s)
            assert o.n_candidates == outs[0].n_candidates
