"""What a hostile or careless caller costs: recommend() with a 10 KB or 1 MB string id in
the session (or in ``exclude``), a session of a million ids, and an exclude list over the
limit, against the same call with short ids. On a string-id catalog the size of the
reference point's (full profile: 1M items; smoke: 4,000), C backend, default ``Limits``.

Without the bounds of sessrec_sdk/limits.py and ids.py, numpy would widen every sorted id
to the longest query id's width on every call (docs/robustness.md)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import common as C

P = C.profile_from_env()
CASES = ("short ids", "10 KB id in session", "1 MB id in session", "1 MB id in exclude",
         "1M-id session", "exclude over the limit (refused)")


@pytest.fixture(scope="module")
def str_rec():
    out = C.cache_root() / f"hostile-str-{P.ref.n_items}"
    if not (out / "manifest.json").is_file():
        from export_tools.synthetic import build_synthetic_bundle

        build_synthetic_bundle(out, n_items=P.ref.n_items, dim=64, neighbors=50, seed=5,
                               string_ids=True, overwrite=True)
    from sessrec_sdk import Recommender

    return Recommender.load(out, backend="c" if "c" in P.backends else "auto")


def _pool(rec, case: str) -> tuple[list, dict]:
    rng = np.random.default_rng(0)
    ids = rec.item_ids
    sessions = [ids[rng.integers(0, len(ids), 3)].tolist() for _ in range(200)]
    if case == "10 KB id in session":
        sessions = [s + ["x" * 10_000] for s in sessions]
    elif case == "1 MB id in session":
        sessions = [s + ["x" * 1_000_000] for s in sessions]
    elif case == "1M-id session":
        filler = ids[rng.integers(0, len(ids), 1_000_000)].tolist()
        sessions = [filler + s for s in sessions[:20]]
    kwargs = {}
    if case == "1 MB id in exclude":
        kwargs = {"exclude": ["x" * 1_000_000]}
    elif case.startswith("exclude over the limit"):
        kwargs = {"exclude": ids[rng.integers(0, len(ids), 10_000_000)].tolist()}
    return sessions, kwargs


@pytest.mark.parametrize("case", CASES)
def test_hostile_input(measure, str_rec, case):
    pool, kwargs = _pool(str_rec, case)

    def call(s):
        try:
            return str_rec.recommend(s, k=20, **kwargs)
        except ValueError:  # the documented refusal of a list over Limits.rule_ids
            if not case.startswith("exclude over the limit"):
                raise
            return None

    measure(call, pool, group="hostile input", suite="hostile", method="sessrec", case=case,
            n_items=P.ref.n_items, backend=str_rec.backend)
