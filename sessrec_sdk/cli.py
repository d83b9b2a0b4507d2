"""The ``sessrec`` command line (also ``python -m sessrec_sdk``).

Runtime commands (``inspect``, ``warm``, ``recommend``) need only the runtime; ``synth``, ``train``,
``export`` and ``evaluate`` import the export tools lazily, and ``bench`` runs the
benchmark suite, so ``sessrec --help`` stays fast and light.

Exit codes: 0 done; 2 a usage error or bad input (wrong option, missing file, invalid
value); 3 the bundle is missing or damaged (a ``BundleError``); 4 an extra is not
installed; 1 anything unexpected (with its traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._version import __version__

EXIT_USAGE, EXIT_BUNDLE, EXIT_MISSING_EXTRA = 2, 3, 4


class MissingExtra(Exception):
    """A command needs an optional dependency group that is not installed."""


# options of `synth` that only one kind of bundle reads, with their defaults: a value set
# away from its default for the other kind is refused, not ignored
ENCODER_SYNTH = {"dim": 64, "dtype": "float32", "string_ids": False, "row_order": "locality"}
SKNN_SYNTH = {"sample": 500, "window": 20}


def _set_options(args: argparse.Namespace, defaults: dict) -> list[str]:
    return ["--" + name.replace("_", "-") for name, default in defaults.items()
            if getattr(args, name) != default]


def _synth(args: argparse.Namespace) -> int:
    try:
        from export_tools.synthetic import build_synthetic_bundle, build_synthetic_sknn_bundle
    except ImportError as exc:
        raise MissingExtra(f"needs the export extra ({exc}): "
                           "pip install 'sessrec[export]'") from None
    t0 = time.perf_counter()
    if args.sknn:
        if args.sessions is None:
            raise ValueError("--sknn needs --sessions N (the sessions to index)")
        if wrong := _set_options(args, ENCODER_SYNTH):
            raise ValueError(f"{', '.join(wrong)}: not for --sknn bundles")
        neighbors = 100 if args.neighbors is None else args.neighbors
        path = build_synthetic_sknn_bundle(
            args.out, args.items, args.sessions, sample=args.sample, neighbors=neighbors,
            window=args.window, seed=args.seed, overwrite=args.overwrite,
            progress=sys.stderr.isatty())
        print(f"wrote {path} (session-kNN: {args.items:,} items, {args.sessions:,} sessions, "
              f"sample {args.sample}, {neighbors} neighbor sessions, window {args.window}) "
              f"in {time.perf_counter() - t0:.1f} s")
        return 0
    if args.sessions is not None:
        raise ValueError("--sessions is for --sknn bundles")
    if wrong := _set_options(args, SKNN_SYNTH):
        raise ValueError(f"{', '.join(wrong)}: only for --sknn bundles")
    neighbors = 100 if args.neighbors is None else args.neighbors
    path = build_synthetic_bundle(
        args.out, n_items=args.items, dim=args.dim, neighbors=neighbors, seed=args.seed,
        dtype=args.dtype, string_ids=args.string_ids, row_order=args.row_order,
        overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(f"wrote {path} ({args.items:,} items, d={args.dim}, K={neighbors}, "
          f"{args.dtype}, {args.row_order} row order) in {time.perf_counter() - t0:.1f} s")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from . import Recommender

    t0 = time.perf_counter()
    rec = Recommender.load(args.bundle, backend=args.backend, verify=args.verify)
    load_ms = (time.perf_counter() - t0) * 1e3
    m = rec.manifest
    size = sum(f["bytes"] for f in m["files"].values())
    print(f"bundle       {Path(args.bundle).resolve()}")
    print(f"format       v{m['format_version']}, model {m['model']['kind']}")
    if m.get("scorer") == "sknn":
        print(f"items        {m['n_items']:,} ({m['id_kind']} ids); session-kNN over "
              f"{m['sknn']['n_sessions']:,} sessions, sample {m['sknn']['sample']}")
    else:
        print(f"items        {m['n_items']:,} ({m['id_kind']} ids), d={m['dim']} "
              f"{m['item_dtype']}, K={m['neighbors_per_item']}, "
              f"{m.get('row_order', 'given')} row order"
              + (", session index" if "sknn" in m else ""))
    print(f"size         {size / 2**20:,.1f} MiB in {len(m['files'])} files")
    print(f"inference    {json.dumps(m['inference'])}")
    print(f"defaults     {json.dumps(m['defaults'])}")
    if m.get("data_stats"):
        print(f"data stats   {json.dumps(m['data_stats'])}")
    v = m.get("validation")
    if isinstance(v, dict):  # how the defaults were chosen, and every trial's figures
        print(f"validation   {v.get('split', '?')} ({v.get('n_sessions', '?')} sessions), "
              f"by {v.get('metric', '?')}: chosen {json.dumps(v.get('chosen'))}")
        for trial in v.get("trials", []):
            print(f"  trial      {json.dumps(trial)}")
    print(f"written by   {json.dumps(m['created_by'])}")
    isa = ""
    if rec.backend == "c":
        from .kernels.c_backend import instruction_set

        isa = f" ({instruction_set()})"
    print(f"backend      {rec.backend}{isa}")
    print(f"load         {load_ms:.1f} ms")
    return 0


def _warm(args: argparse.Namespace) -> int:
    from .pages import warm

    if not (args.bundle / "manifest.json").is_file():
        raise ValueError(f"{args.bundle}: not a sessrec bundle (no manifest.json)")
    t0 = time.perf_counter()
    for f in warm(args.bundle):  # one line per file as it is done
        share = "" if f.huge_page_share is None else f"  2 MB pages {f.huge_page_share:4.0%}"
        note = "  (4 KB pages dropped, read again)" if f.dropped else ""
        print(f"{f.name:24s} {f.bytes / 2**20:10,.1f} MiB{share}{note}", flush=True)
    print(f"warmed in {time.perf_counter() - t0:.1f} s")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from . import Recommender

    rec = Recommender.load(args.bundle, backend=args.backend)
    kind = rec.manifest["id_kind"]
    session = args.items if kind == "str" else [int(x) for x in args.items]
    result = rec.recommend(session, k=args.k, category_filter=args.category_filter)
    if result.fallback:
        print(f"(fallback: {result.fallback}; {result.unknown} unknown ids)")
    for rank, (item, score) in enumerate(result.pairs(), 1):
        print(f"{rank:3d}  {item}  {score:.5f}")
    return 0


def _delegate(module: str):
    """A subcommand implemented in export_tools or benchmarks: ``main(argv) -> int``."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        if module.startswith("benchmarks."):
            # the suite lives in the source tree, next to the package (not installed)
            root = Path(__file__).resolve().parents[1]
            if not (root / "benchmarks").is_dir():
                raise MissingExtra("the benchmark suite runs from a source checkout of "
                                   "sessrec (it is not part of the installed package): "
                                   "clone the repository and run 'sessrec bench' there, "
                                   "with pip install -e '.[bench]' --group dev")
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            extra = "bench" if module.startswith("benchmarks.") else "export"
            raise MissingExtra(f"needs the {extra} extra ({exc}): "
                               f"pip install 'sessrec[{extra}]'") from None
        return mod.main(args.rest)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sessrec", description=__doc__.split("\n")[0],
                                epilog="Exit codes: 0 done, 2 usage or input error, 3 missing "
                                "or damaged bundle, 4 extra not installed, 1 unexpected.")
    p.add_argument("--version", action="version", version=f"sessrec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write a synthetic bundle (tests, benchmarks)")
    s.add_argument("out", type=Path, help="directory to write the bundle to")
    s.add_argument("--items", type=int, required=True, help="number of items")
    s.add_argument("--dim", type=int, default=ENCODER_SYNTH["dim"],
                   help="vector dimension (default 64)")
    s.add_argument("--neighbors", type=int, default=None,
                   help="neighbors per item K (default 100); with --sknn: neighbor sessions "
                   "(default 100)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--dtype", choices=["float32", "float16"], default=ENCODER_SYNTH["dtype"],
                   help="item matrix dtype (default float32)")
    s.add_argument("--string-ids", action="store_true",
                   help="string item ids ('sku-N') instead of integers")
    s.add_argument("--row-order", choices=["locality", "given"],
                   default=ENCODER_SYNTH["row_order"],
                   help="number rows along the neighbor graph (default) or keep the drawn "
                   "order (docs/kernels.md)")
    s.add_argument("--sknn", action="store_true",
                   help="a session-kNN bundle (scorer sknn, no encoder): a seeded index of "
                   "--sessions sessions of 2-20 events over Zipf-like item popularity")
    s.add_argument("--sessions", type=int, help="with --sknn: sessions to index (required)")
    s.add_argument("--sample", type=int, default=SKNN_SYNTH["sample"],
                   help="with --sknn: most recent sessions kept per item, also the candidate "
                   "sessions of a call (default 500)")
    s.add_argument("--window", type=int, default=SKNN_SYNTH["window"],
                   help="with --sknn: session items a call reads (default 20)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    s.set_defaults(func=_synth)

    i = sub.add_parser("inspect", help="load a bundle, check it, print what it holds")
    i.add_argument("bundle", type=Path, help="bundle directory")
    i.add_argument("--backend", default="auto", choices=["auto", "c", "numba", "numpy"],
                   help="kernel backend (default auto: C, else Numba, else numpy)")
    i.add_argument("--verify", action="store_true", default=None,
                   help="check every sha256 and id range, whatever the size")
    i.set_defaults(func=_inspect)

    w = sub.add_parser("warm", help="read a bundle into the page cache in 2 MB pages "
                                    "(after copying it into place, before servers start)")
    w.add_argument("bundle", type=Path, help="bundle directory")
    w.set_defaults(func=_warm)

    r = sub.add_parser("recommend", help="recommend for one session given on the command line")
    r.add_argument("bundle", type=Path, help="bundle directory")
    r.add_argument("items", nargs="+", help="session item ids, oldest first")
    r.add_argument("-k", type=int, default=None, help="how many items (default: the bundle's)")
    r.add_argument("--category-filter", choices=["last", "session", "none", "predicted"],
                   default=None, help="category filter (default: the bundle's; 'predicted' "
                   "needs a bundle whose encoder predicts categories)")
    r.add_argument("--backend", default="auto", choices=["auto", "c", "numba", "numpy"],
                   help="kernel backend (default auto)")
    r.set_defaults(func=_recommend)

    for name, text in (("train", "train a model (sessrec train --help)"),
                       ("export", "export a checkpoint to a bundle (sessrec export --help)"),
                       ("evaluate", "evaluate a bundle on test sessions"),
                       ("bench", "run the benchmark suite (sessrec bench --help)")):
        sub.add_parser(name, help=text, add_help=False)  # listed here, parsed in main()
    return p


DELEGATED = {"train": "export_tools.train", "export": "export_tools.export",
             "evaluate": "export_tools.evaluate", "bench": "benchmarks.run"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:  # their own parsers take every remaining option
        command, run = argv[0], _delegate(DELEGATED[argv[0]])
        args = argparse.Namespace(rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
        command, run = args.command, args.func
    try:
        return run(args)
    except Exception as exc:  # a clean one-line error for users, not a traceback
        code = exit_code(exc)
        if code is None:
            raise
        print(f"sessrec {command}: error: {exc}", file=sys.stderr)
        return code


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an error a user can fix (None: unexpected, show the traceback)."""
    from .errors import BundleError

    if isinstance(exc, BundleError):
        return EXIT_BUNDLE
    if isinstance(exc, MissingExtra):
        return EXIT_MISSING_EXTRA
    if isinstance(exc, (ValueError, TypeError, FileExistsError, FileNotFoundError,
                        NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_USAGE
    return None
