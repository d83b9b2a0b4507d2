"""pytest-benchmark fixtures of the sessrec suite.

Run: ``python -m pytest benchmarks --benchmark-json=out.json`` (``--bench-profile smoke`` for
a seconds-long run on small bundles). ``python -m benchmarks.run`` does this and the memory
and accuracy scripts, then writes BENCHMARKS.md.

Every timed benchmark calls one function once per round on the next session of a fixed,
seeded pool (10,000 sessions in the full profile), so consecutive calls touch different
rows, as live traffic does; choosing the session happens in pytest-benchmark's untimed
``setup``. Rounds: as many as fit a time budget, between ``min_rounds`` and ``max_rounds``
(p99 comes from the raw per-round times).
"""
from __future__ import annotations

import os

# One thread per call for every contender: OpenBLAS (numpy's matmul), OpenMP (faiss).
# Must happen before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from benchmarks import common as C  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("sessrec benchmarks")
    group.addoption("--bench-profile", choices=sorted(C.PROFILES), default=None,
                    help="full (default; 1M-item bundles) or smoke (small bundles, seconds); "
                         "also env SESSREC_BENCH_PROFILE")


def pytest_configure(config):
    name = config.getoption("--bench-profile", default=None)
    if name:
        os.environ["SESSREC_BENCH_PROFILE"] = name
    config.addinivalue_line(
        "markers", "bundle_missing(reason): a row whose trained bundle (or test file) is "
                   "absent: skipped with the reason in the full profile, deselected in smoke")


def pytest_collection_modifyitems(config, items):
    """In the smoke profile (what CI runs, where runs/ holds no trained bundles), rows
    marked ``bundle_missing`` are deselected rather than skipped; the full profile keeps
    them, and each skips saying which bundle is missing."""
    if C.profile_from_env().name != "smoke":
        return
    drop = [it for it in items if it.get_closest_marker("bundle_missing")]
    if drop:
        reasons: dict[str, int] = {}
        for it in drop:
            why = it.get_closest_marker("bundle_missing").args[0].removesuffix("; row skipped")
            reasons[why] = reasons.get(why, 0) + 1
        for why, n in reasons.items():
            C.log(f"smoke profile: {n} row(s) deselected: {why}")
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if not it.get_closest_marker("bundle_missing")]


@pytest.fixture(scope="session")
def profile() -> C.Profile:
    return C.profile_from_env()


class Suite:
    """Session-wide caches: loaded recommenders, session pools, alternatives."""

    def __init__(self, profile: C.Profile):
        self.p = profile
        self._recs: dict = {}
        self._pools: dict = {}
        self._alts: dict = {}

    def rec(self, spec: C.BundleSpec, backend: str | None = None, pages: str = "steady"):
        """A recommender on the cached bundle of ``spec``. ``pages``: "steady" (a server
        that has been up a while: page cache in 2 MB pages where the kernel allows, every
        page mapped), "lazy" (same cache, pages mapped on first touch, as right after
        ``load()``) or "4k" (a copy whose cache holds 4 KB pages, as after ``cp``)."""
        backend = backend or self.p.backend
        key = (spec.key, backend, pages)
        if pages == "4k":
            if key not in self._recs:
                self._recs[key] = self._load(C.small_page_copy(spec), backend, prefault=True)
            return self._recs[key]
        return self._steady(key, C.ensure_bundle(spec), backend, prefault=pages == "steady")

    def grainrec(self, backend: str | None = None):
        path = C.grainrec_bundle()
        if path is None:
            pytest.skip(C.grainrec_missing_message())
        backend = backend or self.p.backend
        return self._steady(("grainrec", backend), path, backend, prefault=True)

    def sknn(self, path, backend: str | None = None):
        """A recommender on a session-kNN bundle (synthetic or real), in steady state."""
        backend = backend or self.p.backend
        return self._steady(("sknn", str(path), backend), path, backend, prefault=True)

    def sknn_pool(self, rec, test_csv=None) -> list:
        """Test-session inputs of ``test_csv``, or (None) sessions of the bundle's index."""
        key = (str(rec.bundle.path), "sknn", str(test_csv))
        if key not in self._pools:
            self._pools[key] = (C.csv_session_pool(test_csv, self.p.pool_size) if test_csv
                                else C.index_session_pool(rec, self.p.pool_size))
        return self._pools[key]

    def real(self, path, backend: str | None = None):
        """A recommender on a trained bundle of any kind, in steady state."""
        backend = backend or self.p.backend
        return self._steady(("real", str(path), backend), path, backend, prefault=True)

    def csv_pool(self, test_csv) -> list:
        """Test-session inputs of ``test_csv`` (the same sessions for every bundle)."""
        key = ("csv", str(test_csv))
        if key not in self._pools:
            self._pools[key] = C.csv_session_pool(test_csv, self.p.pool_size)
        return self._pools[key]

    def _steady(self, key, path, backend: str, prefault: bool):
        """Warm the page cache (and map every page) again before *each* benchmark: a busy
        server keeps its bundle hot, but between benchmarks a bundle sits idle and the OS
        may reclaim it (this VM runs DAMON proactive reclaim)."""
        from sessrec_sdk.pages import prefault as map_every_page

        C.warm_page_cache(path)
        if key not in self._recs:
            self._recs[key] = self._load(path, backend, prefault)
        elif prefault:
            map_every_page(self._recs[key].bundle.arrays())
        return self._recs[key]

    @staticmethod
    def _load(path, backend: str, prefault: bool):
        from sessrec_sdk import Recommender

        return Recommender.load(path, backend=backend, verify=False, prefault=prefault)

    def pool(self, rec, length: int, traffic: str) -> list:
        """The session pool of a bundle; the same rows for every bundle of one size."""
        key = (str(rec.bundle.path), 0 if traffic == "test" else length, traffic)
        if key not in self._pools:
            if traffic == "test":
                self._pools[key] = C.diginetica_pool(rec)
            else:
                self._pools[key] = C.session_pool(rec, length, traffic, self.p.pool_size)
        return self._pools[key]

    def alternative(self, rec, kind: str, **kw):
        from benchmarks import alternatives as A

        key = (str(rec.bundle.path), kind)
        if key not in self._alts:
            if kind == "onnx":
                self._alts[key] = A.FullCatalogOnnx(rec)
            elif kind == "numpy":
                self._alts[key] = A.FullCatalogNumpy(rec)
            elif kind == "hnsw":
                self._alts[key] = A.Hnsw(rec, self.p.hnsw_M, self.p.hnsw_ef_construction,
                                         self.p.hnsw_ef_search)
            else:
                raise ValueError(kind)
        return self._alts[key]


@pytest.fixture(scope="session")
def suite(profile) -> Suite:
    return Suite(profile)


@pytest.fixture
def measure(benchmark, profile):
    """``measure(fn, pool, **info)``: time ``fn(item)`` over the rotating pool. A callable
    info value is called after the timed rounds (so its own calls do not warm them)."""

    def run(fn, pool, *, group: str, warmup: int | None = None, **info):
        rot = C.Rotation(pool)
        warmup = profile.warmup_rounds if warmup is None else warmup
        # warm-up (also JIT, first-touch of code paths) and a per-call estimate for rounds
        n_est = max(3, min(warmup, len(pool)))
        t0 = time.perf_counter()
        for _ in range(n_est):
            fn(rot.next())
        per_call = (time.perf_counter() - t0) / n_est
        rounds = int(np.clip(profile.budget_s / max(per_call, 1e-9), profile.min_rounds,
                             profile.max_rounds))
        benchmark.group = group
        later = {key: v for key, v in info.items() if callable(v)}  # computed after timing
        benchmark.extra_info.update({key: v for key, v in info.items() if key not in later})
        benchmark.extra_info.update(profile=profile.name, rounds=rounds,
                                    loadavg_before=C.loadavg())
        probes: list[float] = []
        n_setup = 0

        def setup():  # untimed: the next session, and every PROBE_EVERY rounds a host probe
            nonlocal n_setup
            if n_setup % C.PROBE_EVERY == 0:
                probes.append(C.host_probe())
            n_setup += 1
            return (rot.next(),), {}

        with C.OtherLoad() as other:
            result = benchmark.pedantic(fn, setup=setup, rounds=rounds,
                                        iterations=1, warmup_rounds=0)
        benchmark.extra_info["loadavg_after"] = C.loadavg()
        benchmark.extra_info["host_probe_us"] = [round(x, 2) for x in probes]
        benchmark.extra_info["probe_every"] = C.PROBE_EVERY
        benchmark.extra_info.update({key: v() for key, v in later.items()})
        benchmark.extra_info["other_cpu_cores"] = other.cores
        return result

    return run


def mean_candidates(rec, pool, k: int, **kw) -> float:
    """Mean rows the kernel scored per call over (up to) the first 500 sessions."""
    return float(np.mean([rec.recommend(s, k=k, **kw).n_candidates for s in pool[:500]]))
