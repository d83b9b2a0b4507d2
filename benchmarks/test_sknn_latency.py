"""Per-call latency of ``Recommender.recommend()`` on session-kNN (VMIS-kNN) bundles, with
each bundle's defaults (k, neighbor sessions, window, repeat handling), C backend.

- real bundles named by ``SESSREC_BENCH_SKNN_BUNDLES`` (NAME=BUNDLE:TEST_CSV,...; default:
  the Retailrocket and Diginetica bundles under runs/), on their test sessions: each
  input is a test session's events but the last (a seeded sample of the pool size); a
  bundle or test file that is missing skips its row, saying which;
- synthetic bundles (export_tools.synthetic.build_synthetic_sknn_bundle; full profile: 1M
  and 6.5M items, smoke: small ones), on sessions drawn from their own index.

Rows carry median, p90 and p99 (report.py, from the raw per-round times), the backend,
the rows scored per call and the host probes, like every other latency row.
"""
from __future__ import annotations

import pytest

from benchmarks import common as C
from benchmarks.conftest import mean_candidates

P = C.profile_from_env()
REAL = C.real_bundles("SESSREC_BENCH_SKNN_BUNDLES", C.SKNN_BUNDLES_DEFAULT)


def _bench(measure, rec, pool, *, bundle: str, traffic: str):
    m = rec.manifest
    d = m["defaults"]
    k = d["k"]
    measure(lambda s: rec.recommend(s), pool, group="session-kNN bundles",
            suite="sknn bundle", method="sessrec sknn", axis="sknn bundle", bundle=bundle,
            traffic=traffic, n_items=m["n_items"], n_sessions=m["sknn"]["n_sessions"],
            sample=m["sknn"]["sample"], idf=m["sknn"].get("idf"), neighbors=d["neighbors"],
            position="table" if "position_weight" in m["sknn"] else "none",
            window=m["inference"]["max_session_length"],
            exclude_session_items=d["exclude_session_items"],
            repeat_bonus=d.get("repeat_bonus", 0.0), backend=rec.backend, k=k,
            mean_session_len=sum(map(len, pool)) / len(pool),
            candidates=lambda: mean_candidates(rec, pool, k))


@pytest.mark.parametrize("real", REAL, ids=[r.name for r in REAL])
def test_sknn_real(measure, suite, real):
    """A trained sknn bundle on its own test sessions."""
    why = real.missing()
    if why:
        pytest.skip(why)
    rec = suite.sknn(real.bundle)
    pool = suite.sknn_pool(rec, real.test_csv)
    _bench(measure, rec, pool, bundle=real.name, traffic="test")


@pytest.mark.parametrize("spec", P.sknn, ids=[s.name.replace(" ", "-") for s in P.sknn])
def test_sknn_synthetic(measure, suite, spec):
    """A synthetic sknn bundle on sessions of its own index."""
    rec = suite.sknn(C.ensure_sknn_bundle(spec))
    pool = suite.sknn_pool(rec)
    _bench(measure, rec, pool, bundle=spec.name, traffic="index")
