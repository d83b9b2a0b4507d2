"""Shared fixtures: small synthetic bundles built once per session."""
from __future__ import annotations

import numpy as np
import pytest

from export_tools.synthetic import build_synthetic_bundle


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory):
    """2,000 items, d=32, K=20, int ids, categories."""
    return build_synthetic_bundle(tmp_path_factory.mktemp("b") / "small", n_items=2000, dim=32,
                                  neighbors=20, seed=1)


@pytest.fixture(scope="session")
def str_bundle(tmp_path_factory):
    """Like small_bundle but with string ids and a float16 item matrix."""
    return build_synthetic_bundle(tmp_path_factory.mktemp("b") / "str", n_items=500, dim=24,
                                  neighbors=10, seed=2, string_ids=True, dtype="float16")


@pytest.fixture(scope="session")
def small_ids(small_bundle):
    return np.load(small_bundle / "item_ids.npy")


def pytest_sessionfinish(session, exitstatus):
    """In CI (CI=true), where every extra is installed, a skipped test is a failure: a
    missing optional dependency must fail loudly, not hide the tests that need it."""
    import os

    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for rep in skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else rep.longrepr
            reporter.write_line(f"SKIPPED IN CI (counts as a failure): {rep.nodeid}: {reason}",
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
