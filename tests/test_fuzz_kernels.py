"""A short run of tests/fuzz_kernels.py (the sanitizer build runs >= 10,000 calls)."""
from __future__ import annotations

import pytest

pytest.importorskip("sessrec_sdk._kernels")

import fuzz_kernels  # noqa: E402  (tests/ is on sys.path under pytest)


def test_fuzz_c_kernel_and_id_lookup_short():
    counts = fuzz_kernels.fuzz(600)
    assert counts["top_k"] >= 400 and counts["find"] >= 200
