"""Shared pieces of the benchmark suite: profiles, cached bundles and indexes, session pools.

Everything expensive (synthetic bundles, the HNSW indexes, the full-catalog ONNX models) is
built once and cached under ``.cache/`` (``SESSREC_BENCH_CACHE`` overrides), keyed by every
parameter that changes its content, so a second run starts measuring at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


def cache_root() -> Path:
    return Path(os.environ.get("SESSREC_BENCH_CACHE", ROOT / ".cache"))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class BundleSpec:
    """The parameters of a synthetic bundle (also its cache key)."""

    n_items: int
    dim: int
    K: int
    dtype: str = "float32"
    # Synthetic bundles keep up to 20 session items (GRAINRec bundles cap at 3), so that
    # the session-length sweep measures merging 1..20 neighbor rows, not a truncation.
    max_session_length: int = 20
    seed: int = SEED
    row_order: str = "locality"  # as `sessrec synth` and `sessrec export` write by default
    # the encoder takes a batch axis (manifest encoder.batch, as `sessrec export` writes);
    # the sweeps keep the one-session encoder of their published figures
    batch: bool = False

    @property
    def key(self) -> str:
        return (f"n{self.n_items}-d{self.dim}-K{self.K}-{self.dtype}"
                f"-L{self.max_session_length}-s{self.seed}-{self.row_order}"
                + ("-batch" if self.batch else ""))

    def label(self) -> str:
        return (f"{_items(self.n_items)} items, d={self.dim}, K={self.K}, {self.dtype}, "
                f"{self.row_order} row order")


def _items(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def _items_dec(n: int) -> str:
    """6.5M, 1M, 40k: catalog sizes as the tables name them."""
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    return _items(n)


@dataclass(frozen=True)
class SknnSpec:
    """The parameters of a synthetic session-kNN bundle (export_tools.synthetic.
    build_synthetic_sknn_bundle; also its cache key): ``sample`` = each item's most recent
    sessions in the index and the candidate sessions of a call, ``neighbors`` = neighbor
    sessions, ``window`` = session items a call reads (sessions have at most 20 events)."""

    n_items: int
    n_sessions: int
    sample: int = 500
    neighbors: int = 100
    window: int = 20
    seed: int = SEED

    @property
    def key(self) -> str:
        return (f"sknn-n{self.n_items}-S{self.n_sessions}-m{self.sample}-k{self.neighbors}"
                f"-w{self.window}-s{self.seed}")

    @property
    def name(self) -> str:
        return f"synthetic {_items_dec(self.n_items)}"


@dataclass(frozen=True)
class Profile:
    """What one run measures: the reference point and one sweep per axis around it."""

    name: str
    ref: BundleSpec
    session_len: int = 3
    k: int = 20
    backend: str = "c"
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    dims: tuple[int, ...] = (64, 256)
    Ks: tuple[int, ...] = (25, 50, 100, 150)
    lengths: tuple[int, ...] = (1, 3, 10, 20)
    backends: tuple[str, ...] = ("c", "numba", "numpy")
    dtypes: tuple[str, ...] = ("float32", "float16")
    row_orders: tuple[str, ...] = ("locality", "given")
    pool_size: int = 10_000          # sessions per (bundle, length, traffic) pool
    max_rounds: int = 3000           # timed calls per benchmark (fast methods)
    min_rounds: int = 30             # ... at least (slow methods: full-catalog scoring)
    budget_s: float = 3.0            # target timed seconds per benchmark
    warmup_rounds: int = 200
    hnsw_M: int = 32
    hnsw_ef_construction: int = 40   # faiss' default
    hnsw_ef_search: int = 64         # the efSearch of the main HNSW rows
    hnsw_ef_sweep: tuple[int, ...] = (16, 64, 256)
    floor_blocks: int = 512          # gathered blocks the cold numpy floor rotates over
    memory_procs: int = 4
    memory_calls: int = 2000
    grainrec: bool = True            # benchmark the exported GRAINRec bundle if present
    many_sessions: int = 1000        # sessions per recommend_many() call (test_batch.py)
    accuracy_limit: int | None = None
    # synthetic session-kNN bundles (recommend() with their defaults); real sknn bundles
    # come from SESSREC_BENCH_SKNN_BUNDLES (real_bundles) in every profile
    sknn: tuple[SknnSpec, ...] = ()

    def spec(self, **changes) -> BundleSpec:
        return replace(self.ref, **changes)


FULL = Profile(name="full", ref=BundleSpec(n_items=1_000_000, dim=256, K=100),
               # 1M items, and 6.5M: the catalog size of Serenade's published figure
               sknn=(SknnSpec(1_000_000, 2_000_000), SknnSpec(6_500_000, 13_000_000)))

SMOKE = Profile(
    name="smoke", ref=BundleSpec(n_items=4000, dim=32, K=20), sizes=(1000, 4000),
    dims=(16, 32), Ks=(5, 10, 20, 30), pool_size=200, max_rounds=20, min_rounds=3,
    budget_s=0.02, warmup_rounds=3, hnsw_ef_sweep=(16, 64), floor_blocks=8, memory_procs=4,
    memory_calls=50, grainrec=False, accuracy_limit=300, many_sessions=64,
    sknn=(SknnSpec(4000, 8000, sample=100, neighbors=50),
          SknnSpec(20_000, 40_000, sample=100, neighbors=50)))

PROFILES = {"full": FULL, "smoke": SMOKE}


def profile_from_env() -> Profile:
    return PROFILES[os.environ.get("SESSREC_BENCH_PROFILE", "full")]


# --------------------------------------------------------------------------- caching


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock so two runs never build the same cached artefact at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def bundle_dir(spec: BundleSpec) -> Path:
    return cache_root() / "bench-bundles" / spec.key


def ensure_bundle(spec: BundleSpec) -> Path:
    """The cached synthetic bundle of ``spec``, built on first use."""
    out = bundle_dir(spec)
    if (out / "manifest.json").is_file():
        return out
    with file_lock(out.with_name(f".{out.name}.lock")):
        if (out / "manifest.json").is_file():
            return out
        from export_tools.synthetic import build_synthetic_bundle

        log(f"building synthetic bundle {spec.key} (once; cached in {out.parent})")
        t0 = time.perf_counter()
        build_synthetic_bundle(out, n_items=spec.n_items, dim=spec.dim, neighbors=spec.K,
                               seed=spec.seed, dtype=spec.dtype,
                               max_session_length=spec.max_session_length,
                               row_order=spec.row_order, batch=spec.batch,
                               progress=sys.stderr.isatty())
        log(f"built {spec.key} in {time.perf_counter() - t0:.0f} s")
    return out


def sknn_bundle_dir(spec: SknnSpec) -> Path:
    return cache_root() / "bench-bundles" / spec.key


def ensure_sknn_bundle(spec: SknnSpec) -> Path:
    """The cached synthetic session-kNN bundle of ``spec``, built on first use."""
    out = sknn_bundle_dir(spec)
    if (out / "manifest.json").is_file():
        return out
    with file_lock(out.with_name(f".{out.name}.lock")):
        if (out / "manifest.json").is_file():
            return out
        from export_tools.synthetic import build_synthetic_sknn_bundle

        log(f"building synthetic sknn bundle {spec.key} (once; cached in {out.parent})")
        t0 = time.perf_counter()
        build_synthetic_sknn_bundle(out, spec.n_items, spec.n_sessions, sample=spec.sample,
                                    neighbors=spec.neighbors, window=spec.window,
                                    seed=spec.seed, progress=True)
        log(f"built {spec.key} in {time.perf_counter() - t0:.0f} s")
    return out


#: Real session-kNN bundles and their test sessions: NAME=BUNDLE:TEST_CSV, comma-separated
#: (relative paths from the repository root). Overridden by SESSREC_BENCH_SKNN_BUNDLES; an
#: empty value times none.
SKNN_BUNDLES_DEFAULT = ("retailrocket=runs/sknn-rr-bundle:data/retailrocket/test.csv.gz,"
                        "diginetica=runs/sknn-dg-bundle:data/diginetica/test.csv.gz")


def _repo_path(p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() or path.exists() else ROOT / path


#: Trained bundles of the candidate-policy rows (benchmarks/test_policy_latency.py), each
#: NAME=BUNDLE:TEST_CSV, comma-separated, relative paths from the repository root; an
#: environment variable of the same name overrides each list (an empty value times none).
#: HierSRec bundles (an encoder that predicts categories) for the category policies:
HIERSREC_BUNDLES_DEFAULT = "hiersrec-dg=runs/hiersrec-e6-bundle:data/diginetica/test.csv.gz"
#: Hybrid bundles (an encoder and a session index) for the "sessions" policy (the
#: Retailrocket GRAINRec export keeps its auto-tuned index: validation chose the hybrid):
HYBRID_BUNDLES_DEFAULT = (
    "grainrec-rr-hybrid=runs/grainrec-rr-bundle:data/retailrocket/test.csv.gz,"
    "attenmixer-dg-hybrid=runs/attenmixer-dg-hybrid-bundle:data/diginetica/test.csv.gz")
#: What the hybrid rows are compared with, each timed with its own defaults: the
#: session-kNN bundles trained on the same data (the plain neural policy is each hybrid's
#: candidates="neighbors" row).
HYBRID_BASELINES_DEFAULT = (
    "sknn-rr=runs/sknn-rr-bundle:data/retailrocket/test.csv.gz,"
    "sknn-dg=runs/sknn-dg-bundle:data/diginetica/test.csv.gz")


@dataclass(frozen=True)
class RealBundle:
    """A trained bundle named by an environment variable (``var``), and its test sessions."""

    name: str
    bundle: Path
    test_csv: Path
    var: str

    @property
    def dataset(self) -> str:
        return self.test_csv.parent.name

    def missing(self) -> str | None:
        """Why this bundle cannot be timed (None: it can)."""
        if not (self.bundle / "manifest.json").is_file():
            return (f"no bundle at {str(self.bundle)!r} for {self.name!r} (set {self.var}="
                    "NAME=BUNDLE:TEST_CSV,..., or train and export one: sessrec train, then "
                    "sessrec export); row skipped")
        if not self.test_csv.is_file():
            return (f"no test sessions at {str(self.test_csv)!r} for {self.name!r} "
                    f"({self.var}); row skipped")
        return None


def real_bundles(var: str, default: str) -> list[RealBundle]:
    """The bundles named by the environment variable ``var`` (NAME=BUNDLE:TEST_CSV,...;
    ``default`` when unset), present or not (a missing one is skipped by name)."""
    out = []
    for entry in filter(None, (e.strip() for e in os.environ.get(var, default).split(","))):
        name, sep, rest = entry.partition("=")
        bundle, sep2, test = rest.rpartition(":")
        if not (sep and sep2 and name and bundle and test):
            raise ValueError(f"{var}: {entry!r} is not NAME=BUNDLE:TEST_CSV")
        out.append(RealBundle(name.strip(), _repo_path(bundle), _repo_path(test), var))
    return out


def warm_page_cache(path: Path) -> float:
    """Put a bundle in the OS page cache as ``sessrec warm`` does (in 2 MB pages where the
    kernel allows): latency is measured on a server in steady state, never on disk reads.
    Returns the seconds it took."""
    from sessrec_sdk.pages import warm

    t0 = time.perf_counter()
    for f in warm(path):
        if f.dropped:
            log(f"{Path(path).name}/{f.name}: 4 KB pages dropped and read again, now "
                f"{f.huge_page_share or 0:.0%} in 2 MB pages")
    return time.perf_counter() - t0


def small_page_dir(spec: BundleSpec) -> Path:
    return cache_root() / "bench-bundles-4k" / spec.key


def small_page_copy(spec: BundleSpec) -> Path:
    """A copy of the cached bundle of ``spec`` written by a plain file copy, so that its page
    cache holds 4 KB pages (a bundle deployed with ``cp`` and never warmed). Rewritten on
    every call: pages of an older copy may since have been evicted and read back in 2 MB."""
    src = ensure_bundle(spec)
    out = small_page_dir(spec)
    with file_lock(out.with_name(f".{out.name}.lock")):
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out)
    return out


def all_specs(p: Profile) -> list[BundleSpec]:
    """Every synthetic bundle a profile's latency sweeps use (reference first)."""
    specs = [p.ref]
    specs += [p.spec(n_items=n) for n in p.sizes]
    specs += [p.spec(dim=d) for d in p.dims]
    specs += [p.spec(K=k) for k in p.Ks]
    specs += [p.spec(dtype=t) for t in p.dtypes]
    specs += [p.spec(row_order=o) for o in p.row_orders]
    specs += [p.spec(batch=True)]
    seen, out = set(), []
    for s in specs:
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out


def grainrec_bundle() -> Path | None:
    """The exported GRAINRec bundle (``SESSREC_BENCH_BUNDLE``, default runs/fast/bundle)."""
    p = Path(os.environ.get("SESSREC_BENCH_BUNDLE", "runs/fast/bundle"))
    if not p.is_absolute() and not p.exists():
        p = ROOT / p
    return p if (p / "manifest.json").is_file() else None


def grainrec_missing_message() -> str:
    p = os.environ.get("SESSREC_BENCH_BUNDLE", "runs/fast/bundle")
    return (f"no exported GRAINRec bundle at {p!r} (set SESSREC_BENCH_BUNDLE, or train and "
            "export one: see README 'Train and export'); GRAINRec rows skipped")


def bundle_fingerprint(path: Path) -> str:
    """Content key of a bundle: the sha256 of its item matrix from the manifest."""
    m = json.loads((Path(path) / "manifest.json").read_text())
    return m["files"]["item_matrix.npy"]["sha256"][:16]


# --------------------------------------------------------------------------- sessions


TRAFFIC = ("uniform", "popular")
TRAFFIC_LABEL = {
    "uniform": "uniform-random items (cache-cold, worst case)",
    "popular": "popularity-weighted items (realistic traffic)",
    "test": "Diginetica test sessions (real traffic)",
}


ZIPF_EXPONENT = 1.0


def popularity_weights(rec) -> np.ndarray:
    """Draw weights of the items of popularity.npy, in its order (most popular first).

    A trained bundle's popularity_scores.npy holds real training frequencies: used as they
    are. Synthetic bundles rank their items by a Zipf(1.5) *sample*, whose scores are
    degenerate (the top item holds ~99.99% of the mass in the 1M bundle: every session would
    be the same few items), so their ranking is used with Zipf's law, weight 1/rank
    (``ZIPF_EXPONENT``), instead: the top 1% of a 1M catalog draws ~70% of the traffic.
    """
    b = rec.bundle
    if rec.manifest["model"]["kind"] != "synthetic":
        return np.asarray(b.popularity_scores, dtype=np.float64)
    ranks = np.arange(1, len(b.popularity) + 1, dtype=np.float64)
    return ranks ** -ZIPF_EXPONENT


def session_pool(rec, length: int, traffic: str, size: int, seed: int = SEED) -> list[list]:
    """``size`` sessions of ``length`` distinct items as external ids (Python lists, what a
    web host passes), drawn with a fixed seed: uniformly over the catalog, or by popularity
    (:func:`popularity_weights`)."""
    b = rec.bundle
    n = rec.n_items
    rng = np.random.default_rng([seed, length, TRAFFIC.index(traffic), n])
    if traffic == "uniform":
        def draw(m: int) -> np.ndarray:
            return rng.integers(0, n, size=m)
    elif traffic == "popular":
        pop = np.asarray(b.popularity)
        p = popularity_weights(rec)
        cdf = np.cumsum(p / p.sum())

        def draw(m: int) -> np.ndarray:
            return pop[np.minimum(np.searchsorted(cdf, rng.random(m)), len(pop) - 1)]
    else:
        raise ValueError(traffic)
    rows = np.empty((size, length), dtype=np.int64)
    for i in range(size):  # distinct items within a session, in order of first draw
        got: list[int] = []
        while len(got) < length:
            for r in draw(4 * length).tolist():
                if r not in got:
                    got.append(r)
                    if len(got) == length:
                        break
        rows[i] = got
    ext = b.ids.external(rows.reshape(-1).astype(np.int32)).reshape(size, length)
    return [s.tolist() for s in ext]


def diginetica_pool(rec, limit: int | None = None) -> list[list]:
    """Diginetica test-session inputs (all events but the last) as external ids."""
    from export_tools.data import load_diginetica

    _, test, _ = load_diginetica()
    pool = [s[:-1].tolist() for s in test if len(s) >= 2]
    return pool[:limit] if limit else pool


def csv_session_pool(test_csv: Path, size: int, seed: int = SEED) -> list[list]:
    """Inputs of test sessions (all events but the last, sessions of >= 2 events) as
    external ids: a seeded sample of ``size`` of them (all if fewer), in a seeded order."""
    from export_tools.data import read_events, sessionize

    inputs = [s[:-1].tolist() for s in sessionize(read_events(test_csv)) if len(s) >= 2]
    rng = np.random.default_rng([seed, len(inputs)])
    take = rng.permutation(len(inputs))[:size]
    return [inputs[i] for i in take.tolist()]


def index_session_pool(rec, size: int, seed: int = SEED) -> list[list]:
    """Sessions of a session-kNN bundle's own index (a seeded sample of ``size``): each
    session's distinct items in stored order, as external ids."""
    ix = rec.bundle.session_index
    rng = np.random.default_rng([seed, ix.n_sessions])
    ids = rng.choice(ix.n_sessions, size=min(size, ix.n_sessions), replace=False)
    indptr = np.asarray(ix.session_indptr)
    pool = []
    for j in ids.tolist():
        rows = np.asarray(ix.session_items[indptr[j]:indptr[j + 1]], dtype=np.int32)
        pool.append(rec.bundle.ids.external(rows).tolist())
    return pool


class Rotation:
    """Hands out the pool's items in turn, so consecutive timed calls differ."""

    def __init__(self, pool):
        self.pool = pool
        self.i = 0

    def next(self):
        item = self.pool[self.i]
        self.i = (self.i + 1) % len(self.pool)
        return item


# --------------------------------------------------------------------------- machine


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict:
    """CPU model, cores, RAM, caches, Python and library versions, load average."""
    import numpy
    import onnxruntime

    lscpu = {}
    for line in _run(["lscpu"]).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu[k.strip()] = v.strip()
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions = {"python": platform.python_version(), "numpy": numpy.__version__,
                "onnxruntime": onnxruntime.__version__}
    for mod in ("numba", "faiss", "pytest_benchmark"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    from sessrec_sdk._version import __version__ as sessrec_version

    versions["sessrec"] = sessrec_version
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip()
    dirty = bool(_run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                       "--", "sessrec_sdk", "csrc"]).strip())
    return {
        "cpu_model": lscpu.get("Model name", platform.processor()),
        "cpus": os.cpu_count(),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "l2": lscpu.get("L2 cache"), "l3": lscpu.get("L3 cache"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "ram_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "transparent_hugepage": _read_first(
            "/sys/kernel/mm/transparent_hugepage/enabled"),
        "versions": versions,
        "git_commit": commit + (" (sessrec_sdk/csrc modified)" if dirty else ""),
    }


def _read_first(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# A shared VM's core can be slowed by another tenant (an SMT sibling, the host): every step
# of a call then slows together, by ~1.7x here, in stretches of a fraction of a second that
# the load average cannot see. The suite times a fixed pure-Python loop every PROBE_EVERY
# rounds (untimed, in pytest-benchmark's setup), so the report can say how contended the
# host was during each benchmark.
PROBE_EVERY = 25


def host_probe() -> float:
    """µs for a fixed pure-Python loop (~50 µs uncontended here): same work every time."""
    t0 = time.perf_counter_ns()
    sum(range(3000))
    return (time.perf_counter_ns() - t0) / 1e3


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy so far (/proc/stat: user, nice,
    system, irq, softirq; not idle, iowait or steal)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and its finished children."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class OtherLoad:
    """Cores that *other* processes kept busy while a block ran: the machine's busy CPU
    time minus this process's own, over the wall time (0 on a quiet machine). The load
    average cannot tell this, since the benchmark itself adds 1 to it."""

    def __enter__(self):
        self._t = (time.perf_counter(), cpu_busy_seconds(), own_cpu_seconds())
        return self

    def __exit__(self, *exc):
        wall, busy, own = (a - b for a, b in zip(
            (time.perf_counter(), cpu_busy_seconds(), own_cpu_seconds()), self._t))
        # /proc/stat ticks are 10 ms: too coarse for blocks shorter than half a second
        self.cores = (None if wall < 0.5 else
                      round(min(max(busy - own, 0.0) / wall, float(os.cpu_count() or 1)), 3))


def digest(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


@dataclass
class Timer:
    """Wall-clock seconds of a block."""

    seconds: float = field(default=0.0)

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
