"""Hypothesis fuzz of the C kernel (sr_top_k, both instruction sets) and the C id lookup
(sr_find_int64), against the numpy reference and np.searchsorted.

Neighbor ids and the seed / excluded / allowed rows may be anything: the kernel must
report those (SR_ERR_NEIGHBOR_RANGE, SR_ERR_ROW_RANGE), never read or write through them.
Under the sanitizer build (scripts/sanitize.sh) any out-of-bounds access or undefined
behaviour aborts the process with a report.

    python tests/fuzz_kernels.py --calls 12000     # prints how many C calls were made

tests/test_fuzz_kernels.py runs a few hundred of the same calls in the normal suite.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessrec_sdk import _kernels
from sessrec_sdk.kernels import (
    CatalogArrays,
    KernelQuery,
    NeighborRangeError,
    RowRangeError,
    Scratch,
    reference,
)
from sessrec_sdk.kernels.c_backend import CKernel, instruction_set

ffi, lib = _kernels.ffi, _kernels.lib
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
CALLS = {"top_k": 0, "find": 0}


@st.composite
def catalog_queries(draw):
    """A random catalog and one query within the kernel's contract."""
    n = draw(st.integers(1, 300))
    dim = draw(st.sampled_from([1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100]))
    width = draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    half = draw(st.booleans())
    if draw(st.booleans()):
        matrix = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    else:
        matrix = rng.standard_normal((n, dim)).astype(np.float32)
    if half:
        matrix = matrix.astype(np.float16)
    neighbors = rng.integers(-1, n, size=(n, width)).astype(np.int32)
    if draw(st.integers(0, 9)) == 0:  # damaged neighbor ids: reported, never read
        bad = draw(st.sampled_from([n, n + 1, -2, 2**31 - 1, -(2**31), 2**30]))
        neighbors[rng.integers(0, n), rng.integers(0, width)] = bad
    categories = rng.integers(-1, 5, size=n).astype(np.int32)
    bias = rng.standard_normal(n).astype(np.float32) if draw(st.booleans()) else None
    cat = CatalogArrays(np.ascontiguousarray(matrix), neighbors, categories, bias)
    seeds = rng.integers(0, n, size=draw(st.integers(1, 12))).astype(np.int32)
    excluded = rng.integers(0, n, size=draw(st.integers(0, 40))).astype(np.int32)
    allowed = (rng.integers(0, n, size=draw(st.integers(0, 2 * n))).astype(np.int32)
               if draw(st.booleans()) else None)
    cats = (np.unique(rng.integers(-1, 5, size=draw(st.integers(0, 4)))).astype(np.int32)
            if draw(st.booleans()) else None)
    query = (rng.standard_normal(dim) * draw(st.sampled_from([1.0, 1e-3, 1e3]))
             ).astype(np.float32)
    if draw(st.integers(0, 9)) == 0:  # a row outside the catalog: refused before any write
        bad = draw(st.sampled_from([n, n + 64, -1, -(2**31), 2**31 - 1]))
        which = draw(st.sampled_from(["seeds", "excluded", "allowed"]))
        arr = {"seeds": seeds, "excluded": excluded, "allowed": allowed}[which]
        arr = np.append(arr if arr is not None else np.empty(0, np.int32), np.int32(bad))
        seeds, excluded, allowed = ((arr if w == which else a) for w, a in
                                    (("seeds", seeds), ("excluded", excluded),
                                     ("allowed", allowed)))
    q = KernelQuery(seeds=seeds, query=query, k=draw(st.integers(1, 2 * n + 3)),
                    n_use=draw(st.integers(1, width)), exclude_seeds=draw(st.booleans()),
                    excluded=excluded, allowed=allowed, allowed_cats=cats)
    return cat, q


def _top_k(cat, q, scratch):
    CALLS["top_k"] += 1
    try:
        return CKernel(cat).top_k(q, scratch)
    except NeighborRangeError as exc:
        return ("range", exc.item_row)
    except RowRangeError as exc:
        return ("rows", exc.row)


def _is_range(result) -> bool:
    return isinstance(result[0], str)


def check_top_k(cat: CatalogArrays, q: KernelQuery) -> None:
    try:
        want = reference.top_k(cat, q)
    except NeighborRangeError as exc:
        want = ("range", exc.item_row)
    except RowRangeError as exc:
        want = ("rows", exc.row)
    scratch = Scratch(cat.n_items)
    best = instruction_set()
    for isa in ("portable", "best"):
        instruction_set(isa)
        try:
            got = _top_k(cat, q, scratch)
        finally:
            instruction_set("best")
        if _is_range(want) or _is_range(got):
            # both must report the same kind of damage (a bad row, or a bad neighbor id)
            assert _is_range(want) and _is_range(got) and got[0] == want[0], (isa, want, got)
            if want[0] == "rows":
                assert got == want, (isa, want, got)
                assert not scratch.seen.any() and not scratch.allow_mark.any()
            continue
        np.testing.assert_array_equal(got[0], want[0], err_msg=isa)
        np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32),
                                      err_msg=isa)  # bit-identical scores
        assert got[2] == want[2], isa
    assert instruction_set() == best


@st.composite
def id_lookups(draw):
    n = draw(st.integers(0, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["small", "wide", "extremes"]))
    if style == "small":
        pool = rng.choice(4 * n + 8, size=n, replace=False).astype(np.int64) - 2 * n
    elif style == "wide":
        pool = np.unique(rng.integers(INT64_MIN + 1, INT64_MAX, size=n, dtype=np.int64))
    else:
        pool = np.unique(np.concatenate([
            np.array([INT64_MIN + 1, INT64_MAX, INT64_MAX - 1, -1, 0, 1], np.int64),
            rng.integers(-50, 50, size=n, dtype=np.int64)]))[:max(n, 1)]
    ids = rng.permutation(pool).astype(np.int64)
    order = np.argsort(ids, kind="stable").astype(np.int32)
    sorted_ids = np.ascontiguousarray(ids[order])
    m = draw(st.integers(0, 300))
    queries = np.concatenate([
        rng.choice(ids, size=m // 2) if len(ids) else np.empty(0, np.int64),
        rng.integers(INT64_MIN, INT64_MAX, size=m - m // 2, dtype=np.int64),
        np.array(draw(st.lists(st.sampled_from([INT64_MIN, INT64_MAX, 0, -1]), max_size=3)),
                 dtype=np.int64)]).astype(np.int64)
    rng.shuffle(queries)
    return ids, sorted_ids, order, queries


def check_find(ids, sorted_ids, order, queries) -> None:
    out = np.full(len(queries) + 1, -7, dtype=np.int32)  # one guard slot past the end
    CALLS["find"] += 1
    n_found = lib.sr_find_int64(
        ffi.cast("int64_t *", ffi.from_buffer(sorted_ids)),
        ffi.cast("int32_t *", ffi.from_buffer(order)), len(sorted_ids),
        ffi.from_buffer("int64_t[]", queries), len(queries),
        ffi.from_buffer("int32_t[]", out, require_writable=True))
    lookup = {int(v): r for r, v in enumerate(ids.tolist())}
    want = [lookup[int(v)] for v in queries.tolist() if int(v) in lookup]
    assert n_found == len(want), (n_found, len(want))
    assert out[:n_found].tolist() == want
    assert out[-1] == -7 or len(queries) == n_found == len(out) - 1 and out[-1] == -7


def fuzz(calls: int, seed: int = 0) -> dict:
    """About ``calls`` C calls: each example is 2 sr_top_k calls (both instruction sets)
    and 1 sr_find_int64 call."""
    examples = max(1, calls // 3 + 1)
    cfg = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))

    @cfg
    @given(catalog_queries(), id_lookups())
    def run(problem, lookup):
        check_top_k(*problem)
        check_find(*lookup)

    run()
    return dict(CALLS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=12_000)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    counts = fuzz(args.calls)
    total = counts["top_k"] + counts["find"]
    print(f"fuzz: {total} C calls ({counts['top_k']} sr_top_k, {counts['find']} "
          f"sr_find_int64) in {time.monotonic() - t0:.1f} s, all matching the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
