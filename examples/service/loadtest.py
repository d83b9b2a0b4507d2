"""Open-loop load test of the sessrec service on localhost: fixed offered rates, bounded.

    .venv/bin/python examples/service/loadtest.py --bundle runs/fast/bundle \
        --sessions data/diginetica/test.csv.gz --rates 250,500,1000,1500 --duration 10

Starts the service (gunicorn, ``--workers`` uvicorn workers, the bundle preloaded) on a
free 127.0.0.1 port, unless ``--url`` names a running one (localhost only). For each
offered rate it schedules ``rate x duration`` POST /recommend requests at fixed times
``t0 + i / rate``, whatever the responses do (open loop: a slow server does not slow the
client down, so queueing shows in the latencies), waits at most ``--timeout`` seconds per
request and ``duration + 20`` seconds per rate, and reports:

- offered and achieved rates (answers with status 200 per second), errors (non-200 or
  no answer);
- end-to-end latency p50/p90/p99/max, from each request's scheduled time to its last
  response byte (includes time waiting for a free connection in the client);
- the server's own view, from its Prometheus histograms before and after the step: time
  in the handler and in ``Recommender.recommend()``, mean and bucket-interpolated p50/p90;
- CPU seconds per second of the client process, of the server's workers and of the whole
  machine (everything else is other tenants), and the 1-minute load average.

Sessions: test-set sessions from ``--sessions`` (an event log; each request sends a
random prefix of a real session), else random sessions of 1-5 catalog ids.
Results go to ``--json`` and, with ``--doc``, into the table between the markers
``<!-- loadtest:SECTION:begin -->`` and ``<!-- loadtest:SECTION:end -->`` of that markdown
file (``--doc-section``, default "results").
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MAX_REQUESTS_PER_RATE = 60_000
MAX_DURATION = 60.0


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """gunicorn + uvicorn workers in its own process group; stop() ends the group."""

    def __init__(self, bundle: str, workers: int, log: Path, extra_env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prom_dir = tempfile.mkdtemp(prefix="sessrec-loadtest-prom-")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSREC_")}
        env.update(SESSREC_BUNDLE=bundle, SESSREC_BIND=f"127.0.0.1:{self.port}",
                   SESSREC_WORKERS=str(workers), PROMETHEUS_MULTIPROC_DIR=self.prom_dir,
                   **extra_env)
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(HERE / "gunicorn.conf.py"), "app:app"],
            cwd=HERE, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see its log")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


# ----------------------------------------------------------------------------- metrics


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def histogram_delta(before: dict, after: dict, name: str) -> dict[str, float] | None:
    """count, mean and bucket-interpolated p50/p90/p99 of a histogram between two scrapes."""
    def buckets(m):
        return {float(dict(lbl)["le"]): v for (n, lbl), v in m.items() if n == name + "_bucket"}
    b0, b1 = buckets(before), buckets(after)
    count = after.get((name + "_count", ()), 0.0) - before.get((name + "_count", ()), 0.0)
    total = after.get((name + "_sum", ()), 0.0) - before.get((name + "_sum", ()), 0.0)
    if count <= 0:
        return None
    edges = sorted(b1)
    cum = [b1[e] - b0.get(e, 0.0) for e in edges]

    def quantile(q: float) -> float:
        rank, lo, prev = q * count, 0.0, 0.0
        for edge, c in zip(edges, cum):
            if c >= rank:
                if edge == float("inf"):
                    return lo
                return lo + (edge - lo) * (rank - prev) / max(c - prev, 1e-12)
            lo, prev = edge, c
        return lo
    return {"count": count, "mean_ms": 1e3 * total / count, "p50_ms": 1e3 * quantile(0.5),
            "p90_ms": 1e3 * quantile(0.9), "p99_ms": 1e3 * quantile(0.99)}


def worker_pids(metrics: dict) -> list[int]:
    return sorted({int(dict(lbl)["pid"]) for (n, lbl), v in metrics.items()
                   if n == "sessrec_bundle_info" and v == 1 and "pid" in dict(lbl)})


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    try:
        parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------- sessions


def make_bodies(bundle: str, sessions_csv: str | None, n: int, k: int, seed: int) -> list:
    from sessrec_sdk import Recommender
    rng = np.random.default_rng(seed)
    if sessions_csv:
        from export_tools.data import read_events, sessionize
        sessions = [s for s in sessionize(read_events(sessions_csv)) if len(s) >= 2]
        picks = rng.integers(0, len(sessions), n)
        out = []
        for i in picks:
            s = sessions[i]
            cut = int(rng.integers(1, len(s)))  # a real prefix: what a shopper has seen
            out.append(s[:cut].tolist())
    else:
        ids = np.asarray(Recommender.load(bundle).item_ids)
        out = [ids[rng.integers(0, len(ids), int(rng.integers(1, 6)))].tolist()
               for _ in range(n)]
    return [json.dumps({"session": s, "k": k}).encode() for s in out]


# ----------------------------------------------------------------------------- client


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for POST /recommend only:
    a pool of ``connections`` sockets, one request in flight on each. It costs the client
    far less CPU per request than aiohttp or httpx (measured in docs/serving.md): on a
    2-core machine the client's CPU is taken from the server under test, so the default
    client is this one."""

    def __init__(self, url: str, connections: int):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.pool: asyncio.Queue = asyncio.Queue()
        for _ in range(connections):
            self.pool.put_nowait(None)  # opened on first use
        self.open: list = []

    async def __aenter__(self):
        conns = [await self._connect() for _ in range(min(self.pool.qsize(), 16))]
        for _ in conns:
            self.pool.get_nowait()
        for c in conns:
            self.pool.put_nowait(c)
        return self

    async def __aexit__(self, *exc):
        for _, writer in self.open:
            writer.close()

    async def _connect(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.open.append((reader, writer))
        return reader, writer

    async def post(self, path: str, body: bytes, timeout: float) -> int:
        conn = await self.pool.get()
        try:
            if conn is None:
                conn = await self._connect()
            reader, writer = conn
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\n\r\n%s"
                         % (path.encode(), self.host.encode(), len(body), body))
            status, length = await asyncio.wait_for(self._response(reader), timeout)
            self.pool.put_nowait(conn)
            return status
        except BaseException:
            if conn is not None:
                conn[1].close()
            self.pool.put_nowait(None)  # a fresh connection next time
            raise

    @staticmethod
    async def _response(reader) -> tuple[int, int]:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        i = lower.find(b"content-length:")
        if i < 0:
            raise ConnectionError("response without content-length")
        length = int(head[i + 15:head.index(b"\r\n", i)])
        await reader.readexactly(length)
        return status, length


class HttpxClient:
    def __init__(self, url: str, connections: int):
        import httpx
        limits = httpx.Limits(max_connections=connections,
                              max_keepalive_connections=connections)
        self.client = httpx.AsyncClient(base_url=url, limits=limits)
        self.n = connections

    async def __aenter__(self):
        await self.client.__aenter__()
        await asyncio.gather(*(self.client.get("/health") for _ in range(min(self.n, 16))))
        return self

    async def __aexit__(self, *exc):
        await self.client.__aexit__(*exc)

    async def post(self, path: str, body: bytes, timeout: float) -> int:
        r = await self.client.post(path, content=body, timeout=timeout,
                                   headers={"content-type": "application/json"})
        return r.status_code


class AiohttpClient:
    def __init__(self, url: str, connections: int):
        self.url, self.n = url, connections

    async def __aenter__(self):
        import aiohttp
        self.aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.n))
        for _ in range(min(self.n, 16)):
            async with self.session.get(self.url + "/health") as r:
                await r.read()
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    async def post(self, path: str, body: bytes, timeout: float) -> int:
        async with self.session.post(self.url + path, data=body,
                                     headers={"content-type": "application/json"},
                                     timeout=self.aiohttp.ClientTimeout(total=timeout)) as r:
            await r.read()
            return r.status


CLIENTS = {"raw": RawClient, "aiohttp": AiohttpClient, "httpx": HttpxClient}


async def run_rate(url: str, bodies: list[bytes], rate: float, duration: float,
                   timeout: float, connections: int, client_kind: str = "raw") -> dict:
    """Offer ``rate`` requests/s for ``duration`` s, open loop; per-request timings."""
    n = min(int(round(rate * duration)), MAX_REQUESTS_PER_RATE)
    due_t = np.zeros(n)
    start_t = np.full(n, np.nan)
    end_t = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)   # 0: no answer (timeout, connection error)
    errors: dict[str, int] = {}
    async with CLIENTS[client_kind](url, connections) as client:

        async def one(i: int) -> None:
            start_t[i] = time.perf_counter()
            try:
                code = await client.post("/recommend", bodies[i % len(bodies)], timeout)
                end_t[i] = time.perf_counter()
                status[i] = code
                if code != 200:
                    errors[f"HTTP {code}"] = errors.get(f"HTTP {code}", 0) + 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                end_t[i] = time.perf_counter()
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1

        tasks = []
        t0 = time.perf_counter() + 0.05
        for i in range(n):
            due = t0 + i / rate
            due_t[i] = due
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        done, pending = await asyncio.wait(tasks, timeout=timeout + 20)
        for task in pending:
            task.cancel()
        if pending:
            errors["unfinished"] = len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
    ok = status == 200
    e2e = (end_t - due_t)[ok] * 1e3
    send = (end_t - start_t)[ok] * 1e3
    lag = (start_t - due_t)[~np.isnan(start_t)] * 1e3
    span = (np.nanmax(end_t) - t0) if ok.any() else duration

    def pct(a, q):
        return float(np.percentile(a, q)) if a.size else float("nan")
    return {"offered_rps": rate, "requests": n, "ok": int(ok.sum()),
            "errors": int(n - ok.sum()), "error_kinds": errors,
            "achieved_rps": float(ok.sum() / span),
            "p50_ms": pct(e2e, 50), "p90_ms": pct(e2e, 90), "p99_ms": pct(e2e, 99),
            "max_ms": float(e2e.max()) if e2e.size else float("nan"),
            "from_send_p50_ms": pct(send, 50), "from_send_p90_ms": pct(send, 90),
            "dispatch_lag_p90_ms": pct(lag, 90)}


async def measure(url: str, bodies: list[bytes], rate: float, args) -> dict:
    before = scrape(url)
    pids = worker_pids(before)
    per0 = [proc_cpu(p) for p in pids]
    cpu0 = (self_cpu(), sum(per0), machine_cpu(), time.perf_counter())
    load0 = os.getloadavg()
    row = await run_rate(url, bodies, rate, args.duration, args.timeout, args.connections,
                         args.client)
    per1 = [proc_cpu(p) for p in pids]
    cpu1 = (self_cpu(), sum(per1), machine_cpu(), time.perf_counter())
    load1 = os.getloadavg()
    after = scrape(url)
    wall = cpu1[3] - cpu0[3]
    row.update({
        "server_handler": histogram_delta(before, after, "sessrec_request_seconds"),
        "server_recommend": histogram_delta(before, after, "sessrec_recommend_seconds"),
        "cpu_client": (cpu1[0] - cpu0[0]) / wall, "cpu_workers": (cpu1[1] - cpu0[1]) / wall,
        "cpu_machine": (cpu1[2] - cpu0[2]) / wall, "wall_s": wall,
        "loadavg_1m_before": load0[0], "loadavg_1m_after": load1[0],
        "worker_pids": pids,
        "cpu_per_worker": [(b - a) / wall for a, b in zip(per0, per1)],
    })
    row["cpu_others"] = max(row["cpu_machine"] - row["cpu_client"] - row["cpu_workers"], 0.0)
    row["worker_cpu_ms_per_request"] = (1e3 * row["cpu_workers"] * wall
                                        / max(row["ok"] + row["errors"], 1))
    row["held"] = bool(row["errors"] == 0 and row["achieved_rps"] >= 0.97 * rate
                       and row["p90_ms"] <= args.p90_target_ms)
    return row


# ----------------------------------------------------------------------------- report


def table(rows: list[dict]) -> str:
    head = ("| offered req/s | achieved req/s | p50 ms | p90 ms | p99 ms | errors "
            "| server handler p50 / p90 ms | recommend() mean / p90 ms "
            "| CPU client / workers / others (cores) | worker CPU ms/request "
            "| load avg 1m | held |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        h, rc = r["server_handler"] or {}, r["server_recommend"] or {}
        lines.append(
            f"| {r['offered_rps']:,.0f} | {r['achieved_rps']:,.0f} | {r['p50_ms']:.2f} "
            f"| {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} "
            f"| {h.get('p50_ms', float('nan')):.2f} / {h.get('p90_ms', float('nan')):.2f} "
            f"| {rc.get('mean_ms', float('nan')):.3f} / {rc.get('p90_ms', float('nan')):.2f} "
            f"| {r['cpu_client']:.2f} / {r['cpu_workers']:.2f} / {r['cpu_others']:.2f} "
            f"| {r['worker_cpu_ms_per_request']:.2f} "
            f"| {r['loadavg_1m_before']:.2f} -> {r['loadavg_1m_after']:.2f} "
            f"| {'yes' if r['held'] else 'no'} |")
    return "\n".join(lines)


def held_text(result: dict) -> str:
    held = result["highest_rate_held"]
    return "none" if held is None else f"{held:,.0f} requests/s"


def update_doc(doc: Path, text: str, name: str) -> None:
    content = doc.read_text()
    begin, end = f"<!-- loadtest:{name}:begin -->", f"<!-- loadtest:{name}:end -->"
    pattern = re.compile(f"({re.escape(begin)}\n).*?({re.escape(end)})", re.S)
    if not pattern.search(content):
        raise SystemExit(f"{doc}: no {begin} / {end} markers")
    doc.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), content))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="bundle to serve (and to draw random sessions from)")
    ap.add_argument("--url", help="a running service on localhost instead of starting one")
    ap.add_argument("--sessions", help="event log of real sessions (e.g. the test split)")
    ap.add_argument("--rates", default="250,500,750,1000,1250,1500",
                    help="offered rates, requests/s, comma-separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate (<= 60)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds at 200 req/s first")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32, help="client connection pool")
    ap.add_argument("--client", choices=sorted(CLIENTS), default="raw",
                    help="raw: minimal asyncio HTTP/1.1 client (least client CPU); "
                         "aiohttp; httpx")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--p90-target-ms", type=float, default=5.0)
    ap.add_argument("--keep-going", action="store_true",
                    help="run every rate even after one saturated the server")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--doc", help="markdown file whose loadtest markers get the table")
    ap.add_argument("--doc-section", default="results",
                    help="the markers are <!-- loadtest:SECTION:begin/end -->")
    ap.add_argument("--label", default="", help="a note stored with the results")
    args = ap.parse_args(argv)
    if not args.bundle and not args.url:
        ap.error("give --bundle (start a server) or --url (a running one)")
    if not 0 < args.duration <= MAX_DURATION:
        ap.error(f"--duration must be in (0, {MAX_DURATION}]")
    if args.doc:  # fail now rather than after the run
        text = Path(args.doc).read_text()
        if f"<!-- loadtest:{args.doc_section}:begin -->" not in text:
            ap.error(f"{args.doc} has no <!-- loadtest:{args.doc_section}:begin --> marker")
    rates = [float(r) for r in args.rates.split(",")]
    if args.url:
        host = urllib.parse.urlsplit(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            ap.error("--url must be on localhost")

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    # SIGTERM (e.g. from `timeout`) ends the run through the finally below, which stops
    # the server's process group instead of leaving it running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = None
    log = Path(tempfile.mkdtemp(prefix="sessrec-loadtest-")) / "server.log"
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            server = ServerProcess(str(Path(args.bundle).resolve()), args.workers, log, {})
            server.wait_ready()
            url = server.url
        bundle = args.bundle
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            info = json.load(r)
        if bundle is None:
            bundle = info["bundle"]["resolved"]
        bodies = make_bodies(bundle, args.sessions, 20_000, args.k, seed=0)
        print(f"serving {info['bundle']['resolved']} ({info['bundle']['n_items']:,} items, "
              f"backend {info['backend']}) at {url}; load average {os.getloadavg()}",
              flush=True)
        if args.warmup > 0:
            asyncio.run(run_rate(url, bodies, 200.0, args.warmup, args.timeout,
                                 args.connections, args.client))
        rows = []
        for rate in rates:
            row = asyncio.run(measure(url, bodies, rate, args))
            rows.append(row)
            print(f"offered {rate:7.0f}/s achieved {row['achieved_rps']:7.0f}/s  p50 "
                  f"{row['p50_ms']:6.2f} p90 {row['p90_ms']:6.2f} p99 {row['p99_ms']:7.2f} ms "
                  f"errors {row['errors']}  cpu client {row['cpu_client']:.2f} workers "
                  f"{row['cpu_workers']:.2f} others {row['cpu_others']:.2f}  load "
                  f"{row['loadavg_1m_after']:.2f}", flush=True)
            if row["achieved_rps"] < 0.9 * rate and not args.keep_going:
                print("under 90% of the offered rate achieved: the server is saturated, "
                      "higher rates skipped (--keep-going runs them)", flush=True)
                break
    finally:
        if server is not None:
            server.stop()
    held = [r["offered_rps"] for r in rows if r["held"]]
    result = {
        "label": args.label, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "bundle": info["bundle"], "backend": info["backend"], "workers": args.workers,
        "sessions": args.sessions or "random 1-5 catalog ids", "k": args.k,
        "duration_s": args.duration, "connections": args.connections,
        "client": args.client, "cpus": os.cpu_count(),
        "python": platform.python_version(), "p90_target_ms": args.p90_target_ms,
        "highest_rate_held": max(held) if held else None, "rows": rows,
    }
    text = table(rows)
    print("\n" + text)
    print(f"\nhighest offered rate held (no errors, >= 97% achieved, p90 <= "
          f"{args.p90_target_ms} ms): {result['highest_rate_held']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.doc:
        update_doc(Path(args.doc), f"Run {result['date_utc']} UTC, {args.label}\n\n" + text
                   + f"\n\nHighest offered rate held: {held_text(result)}.\n",
                   args.doc_section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
