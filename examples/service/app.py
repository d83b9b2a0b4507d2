"""A host service for sessrec: FastAPI over one bundle, with hot reload and Prometheus metrics.

    SESSREC_BUNDLE=runs/fast/bundle gunicorn -c examples/service/gunicorn.conf.py \
        --chdir examples/service app:app                     # 2 workers, bundle preloaded
    SESSREC_BUNDLE=runs/fast/bundle uvicorn --app-dir examples/service app:app   # 1 process

Endpoints (docs/serving.md has the details):

- ``POST /recommend`` ``{"session": [ids, oldest first], "k": 10, "options": {...}}`` ->
  ``{"ids", "scores", "fallback", "unknown", "n_candidates", "bundle"}``. ``options`` are
  ``Recommender.recommend``'s keyword options (category_filter, neighbors,
  exclude_session_items, exclude, allow, candidates).
- ``GET /health``: the bundle served by this worker (path, version, n_items) and backend.
- ``POST /reload`` ``{"path": "..."}`` (optional): load a bundle and switch to it between two
  requests. With several workers point ``SESSREC_BUNDLE`` at a symlink: this endpoint then
  repoints the symlink and every worker follows it (each one watches the symlink).
- ``GET /metrics``: Prometheus text format (all workers' values in multiprocess mode).

Errors are JSON ``{"error": message}``: the SDK's own message for a bad call (TypeError ->
422, ValueError -> 400), 503 for a damaged bundle (BundleError), 500 without a traceback
for anything else.

Configuration (environment): ``SESSREC_BUNDLE`` (required: a bundle directory or a symlink
to one), ``SESSREC_BACKEND`` (auto), ``SESSREC_VERIFY`` (unset = the SDK's default; 0/1),
``SESSREC_PREFAULT`` (1), ``SESSREC_WATCH_SECONDS`` (1.0; 0 = no symlink watching),
``SESSREC_RELOAD_ENDPOINT`` (1; 0 disables ``POST /reload``), ``SESSREC_MAX_BODY``
(bytes, 1 MiB), ``PROMETHEUS_MULTIPROC_DIR`` (set it when running several workers;
gunicorn.conf.py does).

The bundle is loaded when this module is imported: under ``gunicorn --preload`` that is in
the master, before the workers fork, and the workers share its memory-mapped pages and
inherit its ONNX Runtime session (one thread, no thread pool: safe across fork, see
docs/serving.md "Fork safety"). Threads (the symlink watcher) start in each worker after
the fork, in the lifespan hook.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

# prometheus_client picks its single- or multi-process value store at import, from
# PROMETHEUS_MULTIPROC_DIR: that must be set before this line (gunicorn.conf.py does).
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from starlette.exceptions import HTTPException as StarletteHTTPException

from sessrec_sdk import BundleError, Recommender

log = logging.getLogger("sessrec.service")

OPTIONS = ("category_filter", "neighbors", "exclude_session_items", "exclude", "allow",
           "candidates")
FIELDS = ("session", "k", "options")


def _env_flag(name: str, default: bool | None) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise RuntimeError(f"{name} must be 0 or 1, got {value!r}")


BUNDLE = os.environ.get("SESSREC_BUNDLE", "")
BACKEND = os.environ.get("SESSREC_BACKEND", "auto")
VERIFY = _env_flag("SESSREC_VERIFY", None)
PREFAULT = bool(_env_flag("SESSREC_PREFAULT", True))
WATCH_SECONDS = float(os.environ.get("SESSREC_WATCH_SECONDS", "1.0"))
RELOAD_ENDPOINT = bool(_env_flag("SESSREC_RELOAD_ENDPOINT", True))
MAX_BODY = int(os.environ.get("SESSREC_MAX_BODY", str(1 << 20)))
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# ----------------------------------------------------------------------------- metrics

_LATENCY_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002,
                    0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
REQUEST_SECONDS = Histogram(
    "sessrec_request_seconds", "POST /recommend in the handler: body read, parse, "
    "recommend(), JSON encoding (not the HTTP server's own parsing and writing)",
    buckets=_LATENCY_BUCKETS)
RECOMMEND_SECONDS = Histogram(
    "sessrec_recommend_seconds", "Recommender.recommend() alone", buckets=_LATENCY_BUCKETS)
REQUESTS = Counter("sessrec_requests", "Requests by endpoint and HTTP status",
                   ["endpoint", "status"])
FALLBACKS = Counter("sessrec_fallbacks", "Results that are not the model's ranking, by "
                    "reason (Recommendation.fallback)", ["reason"])
UNKNOWN_IDS = Counter("sessrec_unknown_ids", "Session ids not in the catalog (skipped)")
CANDIDATES = Histogram("sessrec_candidates_scored", "Rows the kernel scored per request",
                       buckets=(0, 10, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10000))
RELOADS = Counter("sessrec_reloads", "Bundle reloads by result", ["result"])
_gauge_mode = {"multiprocess_mode": "liveall"} if MULTIPROCESS else {}
BUNDLE_INFO = Gauge("sessrec_bundle_info", "1 for the bundle this worker serves (0 for "
                    "the ones it served before)", ["path", "version", "n_items", "backend"],
                    **_gauge_mode)
BUNDLE_LOADED = Gauge("sessrec_bundle_loaded_timestamp_seconds",
                      "When this worker switched to its current bundle", **_gauge_mode)

# ----------------------------------------------------------------------------- the bundle


def bundle_version(path: str | os.PathLike) -> str:
    """A bundle's version: the first 12 hex digits of its manifest's SHA-256 (the manifest
    holds every file's checksum, so any change of any file changes it)."""
    return hashlib.sha256((Path(path) / "manifest.json").read_bytes()).hexdigest()[:12]


class Current(NamedTuple):
    """One loaded bundle and what is known about it; replaced whole on reload, so that a
    request that reads ``SERVED.current`` once never mixes two bundles (its answer and
    the version it reports come from the same one)."""

    rec: Recommender
    resolved: str       # the bundle directory (the symlink's target at load)
    version: str
    loaded_at: float


class Served:
    """The bundle this worker serves (``current``) and how to switch it."""

    def __init__(self, configured: str):
        if not configured:
            raise RuntimeError("set SESSREC_BUNDLE to a bundle directory (or a symlink to one)")
        self.configured = configured
        resolved = os.path.realpath(configured)
        # the mmap'd arrays and the encoder session, before any fork (see module doc)
        self.current = Current(_load(resolved), resolved, bundle_version(resolved),
                               time.time())
        self._lock = threading.Lock()     # one reload at a time
        self._failed: tuple[str, float] | None = None  # (target, mtime) that failed to load
        self._published: tuple[str, ...] | None = None

    @property
    def is_symlink(self) -> bool:
        return os.path.islink(self.configured)

    def info(self) -> dict[str, Any]:
        cur = self.current
        rec = cur.rec
        return {"status": "ok", "pid": os.getpid(), "backend": rec.backend,
                "bundle": {"path": self.configured, "resolved": cur.resolved,
                           "version": cur.version, "n_items": rec.n_items,
                           "format_version": rec.manifest.get("format_version"),
                           "model": rec.manifest.get("model", {}).get("kind"),
                           "loaded_at": cur.loaded_at}}

    def publish(self) -> None:
        """Set this worker's bundle gauges (call after fork: values are per process)."""
        cur = self.current
        labels = (cur.resolved, cur.version, str(cur.rec.n_items), cur.rec.backend)
        if self._published and self._published != labels:
            BUNDLE_INFO.labels(*self._published).set(0)
        BUNDLE_INFO.labels(*labels).set(1)
        BUNDLE_LOADED.set(cur.loaded_at)
        self._published = labels

    def reload(self, path: str | None = None, *, force: bool = False) -> dict[str, Any]:
        """Switch to ``path`` (else to the current target of SESSREC_BUNDLE). The new
        bundle is loaded and warmed up beside the old one, then swapped in by one
        assignment: a request reads ``SERVED.current`` once, so it runs wholly on the old or
        wholly on the new bundle, and none waits for the load. Raises BundleError (or
        OSError) and keeps the old bundle if the new one cannot be loaded.

        (``Recommender.reload`` swaps atomically too, but before the new encoder's first
        run, which takes milliseconds; loading a second Recommender lets the warm-up
        happen before the swap.)"""
        with self._lock:
            target = os.path.realpath(path if path is not None else self.configured)
            if target == self.current.resolved and not force:
                return {"changed": False, **self.info()}
            try:
                version = bundle_version(target)
                new = _load(target)
            except FileNotFoundError as exc:
                RELOADS.labels("failed").inc()
                raise BundleError(f"{exc.filename}: no such bundle (manifest.json missing)") \
                    from None
            except (BundleError, OSError):
                RELOADS.labels("failed").inc()
                raise
            old = self.current.resolved
            self.current = Current(new, target, version, time.time())  # the switch
            self._failed = None
            if path is not None and self.is_symlink:
                _repoint(self.configured, target)  # the other workers follow the link
            RELOADS.labels("ok").inc()
            self.publish()
            log.info("pid %d: reloaded %s -> %s (version %s)", os.getpid(), old, target,
                     version)
            return {"changed": True, "previous": old, **self.info()}

    def check_link(self) -> None:
        """Follow SESSREC_BUNDLE if it now points elsewhere (the watcher's step). A target
        that failed to load is retried only once its manifest changes."""
        target = os.path.realpath(self.configured)
        if target == self.current.resolved:
            return
        try:
            stamp = (target, os.stat(Path(target) / "manifest.json").st_mtime)
        except OSError:
            stamp = (target, -1.0)
        if stamp == self._failed:
            return
        try:
            self.reload()
        except (BundleError, OSError) as exc:
            self._failed = stamp
            log.error("pid %d: cannot switch to %s, still serving %s: %s", os.getpid(),
                      target, self.current.resolved, exc)


def _load(path: str) -> Recommender:
    rec = Recommender.load(path, backend=BACKEND, verify=VERIFY, prefault=PREFAULT)
    # one call through every stage: the encoder's first run allocates (milliseconds)
    rec.recommend(rec.item_ids[:1].tolist(), k=1)
    return rec


def _repoint(link: str, target: str) -> None:
    """Point the symlink ``link`` at ``target`` atomically (symlink + rename)."""
    tmp = f"{link}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


SERVED = Served(BUNDLE)

# ----------------------------------------------------------------------------- the app


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(_dumps(payload), status, media_type="application/json")


def _error(endpoint: str, status: int, message: str) -> Response:
    REQUESTS.labels(endpoint, str(status)).inc()
    return _json(status, {"error": message})


def _watch(stop: threading.Event) -> None:
    while not stop.wait(WATCH_SECONDS):
        try:
            SERVED.check_link()
        except Exception:  # noqa: BLE001 - the watcher must survive anything
            log.exception("bundle watcher")


@contextlib.asynccontextmanager
async def lifespan(api: FastAPI):
    # runs in each worker, after the fork: per-process gauges and the watcher thread
    SERVED.publish()
    stop = threading.Event()
    watcher = None
    if WATCH_SECONDS > 0 and SERVED.is_symlink:
        watcher = threading.Thread(target=_watch, args=(stop,), name="sessrec-watch",
                                   daemon=True)
        watcher.start()
    yield
    stop.set()
    if watcher is not None:
        watcher.join(timeout=5)


api = FastAPI(title="sessrec", lifespan=lifespan, docs_url="/docs", redoc_url=None)


def _decode(body: bytes, empty: Any = None) -> Any:
    if not body:
        if empty is not None:
            return empty
        raise ApiError(400, "empty body: send a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "body is not valid JSON: nested too deeply") from None


def _check_length(length: str | None) -> None:
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, f"request body of {length} bytes; at most {MAX_BODY} accepted")


async def _read_json(request: Request, empty: Any = None) -> Any:
    """The request body as JSON, read up to MAX_BODY bytes (``empty``: the value of an
    empty body, None = an error)."""
    _check_length(request.headers.get("content-length"))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
    return _decode(b"".join(chunks), empty)


def _parse(payload: Any) -> tuple[Any, Any, dict[str, Any]]:
    if not isinstance(payload, dict):
        raise ApiError(422, "body must be a JSON object with \"session\" (a list of item "
                       "ids), optional \"k\" and \"options\"")
    extra = [f for f in payload if f not in FIELDS]
    if extra:
        raise ApiError(422, f"unknown field(s) {extra}; fields are {list(FIELDS)}")
    if "session" not in payload:
        raise ApiError(422, "missing field \"session\" (a list of item ids, oldest first)")
    options = payload.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(422, "\"options\" must be a JSON object")
    bad = [o for o in options if o not in OPTIONS]
    if bad:
        raise ApiError(422, f"unknown option(s) {bad}; options are {list(OPTIONS)}")
    return payload["session"], payload.get("k"), options


def answer(body: bytes, t0: float) -> tuple[int, bytes]:
    """POST /recommend for a request body: (HTTP status, JSON bytes). Counts the request
    in the metrics. Runs on the event loop (no thread pool): recommend() takes well under
    a millisecond and one worker process uses one core, so a thread hop would cost more
    than it saves."""
    try:
        session, k, options = _parse(_decode(body))
        cur = SERVED.current  # read once: one bundle for the whole request
        t1 = time.perf_counter()
        out = cur.rec.recommend(session, k, **options)
        RECOMMEND_SECONDS.observe(time.perf_counter() - t1)
    except ApiError as exc:
        status, message = exc.status, exc.message
    except TypeError as exc:
        status, message = 422, str(exc)
    except ValueError as exc:
        status, message = 400, str(exc)
    except BundleError as exc:
        log.error("bundle error: %s", exc)
        status, message = 503, f"bundle error: {exc}"
    else:
        if out.fallback is not None:
            FALLBACKS.labels(out.fallback).inc()
        if out.unknown:
            UNKNOWN_IDS.inc(out.unknown)
        CANDIDATES.observe(out.n_candidates)
        data = _dumps({"ids": out.item_ids.tolist(), "scores": out.scores.tolist(),
                       "fallback": out.fallback, "unknown": out.unknown,
                       "n_candidates": out.n_candidates, "bundle": cur.version})
        REQUESTS.labels("recommend", "200").inc()
        REQUEST_SECONDS.observe(time.perf_counter() - t0)
        return 200, data
    REQUESTS.labels("recommend", str(status)).inc()
    return status, _dumps({"error": message})


@api.post("/recommend", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "required": ["session"],
        "properties": {"session": {"type": "array", "items": {}},
                       "k": {"type": "integer", "minimum": 1},
                       "options": {"type": "object"}}}}}}})
async def recommend(request: Request) -> Response:
    """The session's top k items (see the module doc). In the served app, ``app`` below
    answers this path before FastAPI sees it; this route documents it in /docs and
    answers the same when ``api`` is mounted on its own."""
    t0 = time.perf_counter()
    try:
        _check_length(request.headers.get("content-length"))
        body = await request.body()
        if len(body) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
    except ApiError as exc:
        return _error("recommend", exc.status, exc.message)
    status, data = answer(body, t0)
    return Response(data, status, media_type="application/json")


class _Disconnected(Exception):
    pass


async def _asgi_body(scope, receive) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            _check_length(value.decode("latin-1"))
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_JSON_HEADER = (b"content-type", b"application/json")


async def app(scope, receive, send) -> None:
    """The ASGI app: POST /recommend straight to :func:`answer`, the rest to FastAPI.

    Going around FastAPI and Starlette (routing, middleware, Request and Response objects)
    saves about a third of the service's own CPU per request here (docs/serving.md, "Where
    the time goes"), which on a 2-core machine is throughput. The answers, status codes
    and metrics are those of the FastAPI route above (the same function makes them)."""
    if scope["type"] == "http" and scope["path"] == "/recommend" \
            and scope["method"] == "POST":
        t0 = time.perf_counter()
        try:
            status, data = answer(await _asgi_body(scope, receive), t0)
        except _Disconnected:
            return
        except ApiError as exc:
            REQUESTS.labels("recommend", str(exc.status)).inc()
            status, data = exc.status, _dumps({"error": exc.message})
        except Exception as exc:  # noqa: BLE001 - a bug: logged, a 500 without traceback
            log.exception("unhandled error on /recommend")
            REQUESTS.labels("recommend", "500").inc()
            status, data = 500, _dumps({"error": f"internal error ({type(exc).__name__})"})
        await send({"type": "http.response.start", "status": status,
                    "headers": [_JSON_HEADER, (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})
        return
    await api(scope, receive, send)


@api.get("/health")
async def health() -> Response:
    return _json(200, SERVED.info())


@api.post("/reload")
async def reload(request: Request) -> Response:
    """``{"path": P}``: load P and switch to it (and repoint SESSREC_BUNDLE if it is a
    symlink, so that every worker follows); no body: follow SESSREC_BUNDLE's current
    target now (``{"force": true}`` reloads it even if unchanged)."""
    if not RELOAD_ENDPOINT:
        return _error("reload", 403, "POST /reload is disabled (SESSREC_RELOAD_ENDPOINT=0)")
    try:
        payload = await _read_json(request, empty={})
        if not isinstance(payload, dict) or set(payload) - {"path", "force"}:
            raise ApiError(422, "body must be {\"path\": \"...\"} and/or {\"force\": true}")
        path, force = payload.get("path"), payload.get("force", False)
        if path is not None and not isinstance(path, str):
            raise ApiError(422, "\"path\" must be a string")
        if not isinstance(force, bool):
            raise ApiError(422, "\"force\" must be true or false")
        # loading takes milliseconds (longer with prefault): off the event loop, so that
        # this worker keeps answering on the old bundle meanwhile
        result = await asyncio.to_thread(SERVED.reload, path, force=force)
    except ApiError as exc:
        return _error("reload", exc.status, exc.message)
    except (BundleError, OSError) as exc:
        # the old bundle is still served: the request, not the service, failed
        cur = SERVED.current
        return _error("reload", 422, f"cannot load bundle ({exc}); still serving "
                      f"{cur.resolved} (version {cur.version})")
    REQUESTS.labels("reload", "200").inc()
    return _json(200, result)


@api.get("/metrics")
async def metrics() -> Response:
    if MULTIPROCESS:
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        data = generate_latest(registry)
    else:
        data = generate_latest()
    return Response(data, media_type=CONTENT_TYPE_LATEST)


# Every error is JSON with a message; none shows a traceback.
@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return _json(exc.status_code, {"error": str(exc.detail)})


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return _json(422, {"error": str(exc.errors())})


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return _json(500, {"error": f"internal error ({type(exc).__name__})"})
