"""The bounded run of the fault-injection matrix (tests/fault_injection.py).

About 150 cases of the full matrix on the first three base bundles (deterministic: every
file x mutation family of every base bundle once, plus the known crash classes) and about
16 on the session-kNN and hybrid bases (every session-index and category-index file at
least once, plus known cases), each run in a forked child under verify=None and
verify=False. The full matrix is one command:

    .venv/bin/python -m tests.fault_injection --full

The checks are the issue's: no crash, no hang, every refusal a BundleError naming a file,
and under verify=None no answer that differs from the intact bundle's.
"""
from __future__ import annotations

import fault_injection as fi  # tests/ is on sys.path under pytest
import pytest

SAMPLE = 150


@pytest.fixture(scope="module")
def matrix():
    results, summary, meta = fi.run_matrix(sample=SAMPLE, jobs=2, timeout=10.0)
    print("\n" + fi.table(summary))
    return results


def _show(runs):
    return "\n".join(f"{r['mode']} {r['case']}: {fi.signature(r)} -- {fi.example_message(r)}"
                     for r in runs[:25])


def test_sample_covers_every_file_and_both_modes(matrix):
    files = {r["file"] for r in matrix}
    assert set(fi.ALL_FILES) <= files
    # the session-kNN and hybrid bases: their intact bundles and damaged index files
    cases = {r["case"] for r in matrix}
    assert {"sknn/intact", "hyb/intact"} <= cases
    for base, names in (("sknn", fi.SKNN_FILES),
                        ("hyb", (*fi.SKNN_FILES, fi.CATEGORY_INDPTR, fi.CATEGORY_INDICES))):
        for name in names:
            assert any(c.startswith(f"{base}/{name}/") for c in cases), (base, name)
    assert {r["mode"] for r in matrix} == {"verify=None", "verify=False"}
    assert not [r for r in matrix if r["outcome"] == "harness_error"], _show(
        [r for r in matrix if r["outcome"] == "harness_error"])


def test_no_crash(matrix):
    bad = [r for r in matrix if r["outcome"] == "crashed"]
    assert not bad, _show(bad)


def test_no_hang(matrix):
    bad = [r for r in matrix if r["outcome"] == "hung"]
    assert not bad, _show(bad)


def test_every_refusal_is_a_bundle_error(matrix):
    bad = [r for r in matrix if r["outcome"] == "wrong_family"]
    assert not bad, _show(bad)


def test_every_refusal_names_a_file(matrix):
    bad = [r for r in matrix if r["outcome"] == "refused" and not fi._names_file(r)]
    assert not bad, _show(bad)


def test_no_silent_difference_when_verified(matrix):
    bad = [r for r in matrix if r["mode"] == "verify=None" and r["outcome"] == "differing"]
    assert not bad, _show(bad)
