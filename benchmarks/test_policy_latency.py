"""Per-call latency of ``Recommender.recommend()`` under each candidate policy, on trained
bundles and their own test sessions (each input is a test session's events but the last, a
seeded sample of the pool size, the same sessions for every bundle of one data set), C
backend, one thread:

- HierSRec bundles (``SESSREC_BENCH_HIERSREC_BUNDLES``, an encoder that predicts
  categories): the bundle's defaults; ``candidates="neighbors"`` (the neighbor rows of the
  session items) with the bundle's category filter, with none, and with the predicted
  categories (``category_filter="predicted"``); ``candidates="categories"`` with the top
  1, 5 and 10 predicted categories (``categories=K``), with the bundle's category filter
  and with none;
- hybrid bundles (``SESSREC_BENCH_HYBRID_BUNDLES``, an encoder and a session index): their
  defaults (``candidates="sessions"``, the kNN score blended in with ``knn_weight``) and
  the same bundle with ``candidates="neighbors"``;
- what the hybrids are compared with (``SESSREC_BENCH_HYBRID_BASELINES``): the
  session-kNN bundles of the same data, with their defaults.

Every option a row does not name takes the bundle's default; each row records the options
in effect (from ``Recommender.plan``). A bundle or test file that is missing skips its row
saying which (full profile) or deselects it (smoke profile: CI has no trained bundles).

Rows carry median, p90 and p99 (report.py, from the raw per-round times), the host probes,
the rows the model (or the session-kNN kernel, on a session-kNN bundle) scored per call
(``candidates``, mean over the first 500 sessions of the pool) and that count over the
catalog size (``catalog_share``); on the "sessions" policy of a hybrid bundle also the
items the session-kNN stage scored before it (``knn_items``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from benchmarks import common as C
from benchmarks.conftest import mean_candidates

HIERSREC = C.real_bundles("SESSREC_BENCH_HIERSREC_BUNDLES", C.HIERSREC_BUNDLES_DEFAULT)
HYBRID = C.real_bundles("SESSREC_BENCH_HYBRID_BUNDLES", C.HYBRID_BUNDLES_DEFAULT)
BASELINES = C.real_bundles("SESSREC_BENCH_HYBRID_BASELINES", C.HYBRID_BASELINES_DEFAULT)
GROUP = "candidate policies"
SUITE = "candidate policy"


@dataclass(frozen=True)
class Row:
    real: C.RealBundle
    role: str                           # "hiersrec", "hybrid" or "baseline"
    label: str                          # what the row varies, as the report names it
    options: tuple[tuple[str, object], ...] = ()  # recommend() options; () = defaults

    @property
    def id(self) -> str:
        return f"{self.real.name}-{self.label}".replace(" ", "-").replace("=", "")


HIERSREC_POLICIES = (
    ("defaults", ()),
    ("neighbors", (("candidates", "neighbors"),)),
    ("neighbors, no filter", (("candidates", "neighbors"), ("category_filter", "none"))),
    ("neighbors, predicted filter", (("candidates", "neighbors"),
                                     ("category_filter", "predicted"))),
    *((f"categories K={n}", (("candidates", "categories"), ("categories", n)))
      for n in (1, 5, 10)),
    *((f"categories K={n}, no filter", (("candidates", "categories"), ("categories", n),
                                        ("category_filter", "none")))
      for n in (1, 5, 10)),
)
HYBRID_POLICIES = (("defaults", ()), ("neighbors", (("candidates", "neighbors"),)))

ROWS = ([Row(r, "hiersrec", label, opts) for r in HIERSREC for label, opts in HIERSREC_POLICIES]
        + [Row(r, "hybrid", label, opts) for r in HYBRID for label, opts in HYBRID_POLICIES]
        + [Row(r, "baseline", "defaults") for r in BASELINES])


def _param(row: Row):
    why = row.real.missing()
    return pytest.param(row, id=row.id, marks=[pytest.mark.bundle_missing(why)] if why else [])


def _knn_items(rec, pool, **opts) -> float:
    """Mean items the session-kNN stage of the "sessions" policy scored per call (the
    same query as ``Recommender.knn_candidates``) over the first 500 sessions."""
    counts = []
    for s in pool[:500]:
        plan = rec.plan(s, **opts)
        if plan.known.size == 0:
            continue
        q = rec.knn_query(plan)._replace(k=plan.max_candidates, exclude_session=False,
                                         session_bonus=0.0)
        counts.append(rec.score(plan, q)[2])
    return float(np.mean(counts)) if counts else 0.0


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_policy(measure, suite, row):
    """recommend() on a trained bundle's test sessions under one candidate policy."""
    why = row.real.missing()
    if why:
        pytest.skip(why)
    rec = suite.real(row.real.bundle)
    pool = suite.csv_pool(row.real.test_csv)
    opts = dict(row.options)
    m = rec.manifest
    plan = rec.plan(pool[0], **opts)  # the options in effect
    knn_only = m.get("scorer") == "sknn"
    policy = plan.candidates
    n_items = int(m["n_items"])
    uses_cats = policy == "categories" or plan.category_filter == "predicted"
    got: dict[str, float] = {}

    def candidates() -> float:
        got["candidates"] = mean_candidates(rec, pool, plan.k, **opts)
        return got["candidates"]

    extra = {}
    if policy == "sessions" and not knn_only:
        extra["knn_items"] = lambda: _knn_items(rec, pool, **opts)
    measure(lambda s: rec.recommend(s, **opts), pool, group=GROUP, suite=SUITE,
            method="sessrec", axis=row.role, role=row.role, bundle=row.real.name,
            dataset=row.real.dataset, model=m["model"]["kind"], row_label=row.label,
            options=opts, traffic="test", n_items=n_items, backend=rec.backend, k=plan.k,
            policy=policy, categories=plan.categories if uses_cats else None,
            category_filter=plan.category_filter,
            max_candidates=(plan.max_candidates
                            if policy in ("categories", "sessions") and not knn_only
                            else None),
            neighbors=plan.neighbors,
            knn_weight=plan.knn_weight if policy == "sessions" and not knn_only else None,
            exclude_session_items=plan.exclude_session_items,
            repeat_bonus=plan.repeat_bonus,
            window=m["inference"]["max_session_length"],
            session_index=(m.get("sknn") or {}).get("n_sessions"),
            mean_session_len=sum(map(len, pool)) / len(pool),
            candidates=candidates,
            catalog_share=lambda: got["candidates"] / n_items, **extra)
