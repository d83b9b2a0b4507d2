"""The host service (examples/service) as a real server: gunicorn with two uvicorn workers and
the bundle preloaded before fork, on 127.0.0.1, driven over HTTP with httpx.

Answers must equal ``Recommender.recommend`` on the same bundle (so the ONNX session the
workers inherit across fork gives the parent's results); bad requests get the SDK's
message with a 4xx; a damaged bundle gives 503; /metrics counts what was sent; a reload
under concurrent traffic (by POST /reload and by repointing the bundle symlink) fails no
request and every answer matches the bundle version it reports. Each server runs in its
own process group and is stopped (SIGTERM, then SIGKILL) whatever happens.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
for _mod in ("fastapi", "uvicorn", "uvicorn_worker", "gunicorn", "prometheus_client"):
    pytest.importorskip(_mod)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sessrec_sdk import Recommender  # noqa: E402
from sessrec_sdk.bundle import write_bundle  # noqa: E402

SERVICE = Path(__file__).resolve().parents[1] / "examples" / "service"
START_TIMEOUT = 40.0


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _version(bundle: Path) -> str:
    """The service's bundle version: the manifest's SHA-256, 12 hex digits."""
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:12]


def _repoint(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".tmp-test")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class Server:
    """A server subprocess in its own process group, logging to a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=SERVICE)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {START_TIMEOUT} s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._log.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SESSREC_") and k.lower() != "prometheus_multiproc_dir"}
    env.update(extra)
    return env


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    """Samples of GET /metrics by (name, sorted labels)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _same(resp: dict, ref) -> bool:
    return (resp["ids"] == ref.item_ids.tolist() and resp["scores"] == ref.scores.tolist()
            and resp["fallback"] == ref.fallback and resp["unknown"] == ref.unknown
            and resp["n_candidates"] == ref.n_candidates)


def _call(rec: Recommender, body: dict):
    return rec.recommend(body["session"], body.get("k"), **body.get("options", {}))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deploy(tmp_path_factory, small_bundle):
    """Bundle A (the shared small bundle), bundle B (A's rows under shuffled ids: the same
    id set, other answers), a damaged copy of A, and a symlink ``current`` -> A."""
    root = tmp_path_factory.mktemp("service")
    a = Path(small_bundle)
    src = Recommender.load(a).bundle
    m = src.manifest
    ids = np.asarray(src.ids.in_row_order)
    b = write_bundle(root / "b", encoder=a / "encoder.onnx",
                     item_matrix=np.asarray(src.item_matrix), neighbors=np.asarray(src.neighbors),
                     item_ids=np.random.default_rng(5).permutation(ids),
                     popularity=np.asarray(src.popularity),
                     popularity_scores=np.asarray(src.popularity_scores),
                     item_category=np.asarray(src.item_category), model=m["model"],
                     inference=m["inference"], defaults=m["defaults"], row_order=m["row_order"])
    # damaged: every row but row 0 lists an out-of-range neighbor; the checksum no longer
    # matches (a verified load refuses it), an unverified load fails at call time
    bad = root / "bad"
    shutil.copytree(a, bad)
    nbrs = np.load(bad / "neighbors.npy", mmap_mode="r+")
    nbrs[1:, 0] = len(nbrs) + 5
    nbrs.flush()
    del nbrs
    link = root / "current"
    os.symlink(a, link)
    return {"a": a, "b": Path(b), "bad": bad, "link": link, "root": root,
            "ids": ids, "refs": {_version(a): Recommender.load(a),
                                 _version(Path(b)): Recommender.load(b)}}


@pytest.fixture(scope="module")
def server(deploy):
    """gunicorn, 2 uvicorn workers, the bundle preloaded before fork, following ``current``."""
    port = _free_port()
    env = _env(SESSREC_BUNDLE=str(deploy["link"]), SESSREC_BIND=f"127.0.0.1:{port}",
               SESSREC_WORKERS="2", SESSREC_WATCH_SECONDS="0.2",
               PROMETHEUS_MULTIPROC_DIR=str(deploy["root"] / "prometheus"))
    srv = Server([sys.executable, "-m", "gunicorn", "-c", str(SERVICE / "gunicorn.conf.py"),
                  "app:app"], env, port, deploy["root"] / "gunicorn.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _sessions(ids: np.ndarray, n: int, seed: int) -> list[dict]:
    """Request bodies: known sessions of 1-5 ids, some with unknown ids, empty ones, and
    per-call options."""
    rng = np.random.default_rng(seed)
    option_sets = [{}, {"category_filter": "last"}, {"category_filter": "session"},
                   {"neighbors": 5}, {"exclude_session_items": False},
                   {"category_filter": "none", "neighbors": 20}]
    bodies = []
    for i in range(n):
        session = ids[rng.integers(0, len(ids), rng.integers(1, 6))].tolist()
        body = {"session": session}
        if i % 7 == 3:
            body["session"] = session + [-12345]           # one unknown id
        if i % 11 == 5:
            body["session"] = []                           # popularity fallback
        if i % 3 == 1:
            body["k"] = int(rng.integers(1, 30))
        opts = dict(option_sets[i % len(option_sets)])
        if i % 5 == 2:
            opts["exclude"] = ids[rng.integers(0, len(ids), 50)].tolist()
        if i % 13 == 6:
            opts["allow"] = ids[rng.integers(0, len(ids), 200)].tolist()
        if opts:
            body["options"] = opts
        bodies.append(body)
    return bodies


# --------------------------------------------------------------------------- tests


def test_health(server, deploy):
    r = httpx.get(server.url + "/health", timeout=5)
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok"
    assert h["backend"] in ("c", "numba", "numpy")
    assert h["bundle"]["path"] == str(deploy["link"])
    assert h["bundle"]["version"] in deploy["refs"]
    assert h["bundle"]["n_items"] == 2000


def test_recommend_equals_sdk(server, deploy):
    refs, fallbacks = deploy["refs"], set()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for body in _sessions(deploy["ids"], 80, seed=1):
            r = client.post("/recommend", json=body)
            assert r.status_code == 200, (body, r.text)
            got = r.json()
            ref = _call(refs[got["bundle"]], body)
            assert _same(got, ref), (body, got, ref)
            fallbacks.add(got["fallback"])
    assert fallbacks >= {None, "popularity"}


def _sdk_message(rec: Recommender, body: dict, exc_type) -> str:
    with pytest.raises(exc_type) as info:
        _call(rec, body)
    return str(info.value)


def test_bad_requests(server, deploy):
    rec = next(iter(deploy["refs"].values()))  # the SDK's messages do not depend on the bundle
    known = deploy["ids"][:3].tolist()
    sdk_cases = [  # (body, status, the SDK's exception)
        ({"session": "abc"}, 422, TypeError),
        ({"session": [1.5, 2.5]}, 422, TypeError),
        ({"session": ["x", "y"]}, 422, TypeError),
        ({"session": [[1, 2]]}, 422, TypeError),
        ({"session": None}, 422, TypeError),
        ({"session": known, "k": 0}, 400, ValueError),
        ({"session": known, "k": "ten"}, 422, TypeError),
        ({"session": known, "k": 2.0}, 422, TypeError),
        ({"session": known, "options": {"category_filter": "nearby"}}, 400, ValueError),
        ({"session": known, "options": {"neighbors": 10_000}}, 400, ValueError),
        ({"session": known, "options": {"neighbors": "many"}}, 422, TypeError),
        ({"session": known, "options": {"exclude_session_items": "yes"}}, 422, TypeError),
        ({"session": known, "options": {"candidates": "all"}}, 400, ValueError),
        ({"session": known, "options": {"exclude": list(range(100_001))}}, 400, ValueError),
    ]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for body, status, exc_type in sdk_cases:
            r = client.post("/recommend", json=body)
            assert r.status_code == status, (body, r.status_code, r.text)
            assert r.json() == {"error": _sdk_message(rec, body, exc_type)}, body
        service_cases = [  # (raw body, status, words of the message)
            (b'{"session": [1, 2', 400, "not valid JSON"),
            (b"", 400, "empty body"),
            (b"\xff\xfe", 400, "not valid JSON"),
            (b"[1, 2, 3]", 422, "JSON object"),
            (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
            (b'{"session": [1e400]}', 422, "must be integers"),
            (b'{"k": 3}', 422, 'missing field "session"'),
            (b'{"session": [1], "kk": 3}', 422, "unknown field"),
            (b'{"session": [1], "options": [1]}', 422, '"options" must be'),
            (b'{"session": [1], "options": {"exclud": [1]}}', 422, "unknown option"),
            (b'{"session": [' + b"1," * 600_000 + b"1]}", 413, "request body"),
        ]
        for raw, status, words in service_cases:
            r = client.post("/recommend", content=raw,
                            headers={"content-type": "application/json"})
            assert r.status_code == status, (raw[:40], r.status_code, r.text)
            assert words in r.json()["error"], (raw[:40], r.text)
        assert client.get("/recommend").status_code == 405
        assert client.get("/nowhere").status_code == 404
        assert "error" in client.get("/nowhere").json()
        # the service still answers after all that
        assert client.post("/recommend", json={"session": known}).status_code == 200


def test_metrics(server, deploy):
    ids = deploy["ids"]
    before = _metrics(server.url)
    bodies = ([{"session": []}] * 3                                  # popularity fallback
              + [{"session": [-1, -2] + ids[i:i + 2].tolist()} for i in (10, 20)]
              + [{"session": ids[30:33].tolist(), "k": 5}])
    n_cand = 0
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for body in bodies:
            r = client.post("/recommend", json=body)
            assert r.status_code == 200
            n_cand += r.json()["n_candidates"]
        assert client.post("/recommend", json={"session": "bad"}).status_code == 422
    after = _metrics(server.url)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("sessrec_fallbacks_total", reason="popularity") == 3
    assert delta("sessrec_unknown_ids_total") == 4
    assert delta("sessrec_candidates_scored_count") == 6
    assert delta("sessrec_candidates_scored_sum") == n_cand > 0
    assert delta("sessrec_recommend_seconds_count") == 6
    assert delta("sessrec_request_seconds_count") == 6
    assert delta("sessrec_requests_total", endpoint="recommend", status="200") == 6
    assert delta("sessrec_requests_total", endpoint="recommend", status="422") == 1
    assert after[("sessrec_recommend_seconds_bucket", (("le", "+Inf"),))] >= 6
    info = {k: v for k, v in after.items() if k[0] == "sessrec_bundle_info" and v == 1}
    assert len(info) == 2  # one line per live worker, none for the master
    for _, labels in info:
        labels = dict(labels)
        assert labels["version"] in deploy["refs"]
        assert labels["n_items"] == "2000"
        assert labels["backend"] in ("c", "numba", "numpy")


def _workers_on(url: str, version: str) -> int:
    return sum(1 for (name, labels), v in _metrics(url).items()
               if name == "sessrec_bundle_info" and v == 1 and dict(labels)["version"] == version)


def test_reload_under_load(server, deploy):
    """Switch A -> B by POST /reload and B -> A by repointing the symlink, each while 8
    clients keep sending requests: no request fails and each answer is its version's."""
    refs, url = deploy["refs"], server.url
    va, vb = _version(deploy["a"]), _version(deploy["b"])
    bodies = _sessions(deploy["ids"], 200, seed=2)
    results: list[tuple[int, dict | None, dict]] = []
    errors: list[str] = []

    async def client_loop(client, stop: asyncio.Event, seed: int):
        rng = np.random.default_rng(seed)
        for _ in range(3000):  # bounded; stop ends it sooner
            if stop.is_set():
                return
            body = bodies[int(rng.integers(len(bodies)))]
            try:
                r = await client.post("/recommend", json=body)
                results.append((r.status_code, r.json() if r.status_code == 200 else None,
                                body))
            except Exception as exc:  # noqa: BLE001 - a failed request is what we count
                errors.append(repr(exc))

    def wait_all_on(version: str, timeout: float = 15.0):  # runs in a thread
        deadline = time.monotonic() + timeout
        while _workers_on(url, version) != 2:
            assert time.monotonic() < deadline, f"workers did not all switch to {version}"
            time.sleep(0.1)

    async def main():
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            tasks = [asyncio.create_task(client_loop(client, stop, s)) for s in range(8)]
            try:
                await asyncio.sleep(0.5)
                r = await client.post("/reload", json={"path": str(deploy["b"])})
                assert r.status_code == 200, r.text
                assert r.json()["changed"] and r.json()["bundle"]["version"] == vb
                assert os.path.realpath(deploy["link"]) == str(deploy["b"].resolve())
                await asyncio.to_thread(wait_all_on, vb)
                await asyncio.sleep(0.5)
                _repoint(deploy["link"], deploy["a"])  # as a deployment would
                await asyncio.to_thread(wait_all_on, va)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)

    asyncio.run(asyncio.wait_for(main(), timeout=45))
    assert errors == []
    assert [s for s, _, _ in results if s != 200] == []
    assert len(results) >= 100
    seen = {got["bundle"] for _, got, _ in results}
    assert seen == {va, vb}
    for _, got, body in results:
        assert _same(got, _call(refs[got["bundle"]], body)), (body, got)


def test_reload_refused_keeps_serving(server, deploy):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        version = client.get("/health").json()["bundle"]["version"]
        for path, words in ((str(deploy["root"] / "missing"), "no such bundle"),
                            (str(deploy["bad"]), "sha256")):
            r = client.post("/reload", json={"path": path})
            assert r.status_code == 422, r.text
            assert words in r.json()["error"] and "still serving" in r.json()["error"]
        assert os.path.realpath(deploy["link"]) == str(deploy["a"].resolve())
        assert client.post("/reload", json={"path": 3}).status_code == 422
        assert client.post("/reload", content=b"[").status_code == 400
        r = client.post("/recommend", json={"session": deploy["ids"][:2].tolist()})
        assert r.status_code == 200 and r.json()["bundle"] == version
        assert client.post("/reload").json()["changed"] is False  # link unchanged


def test_damaged_bundle_is_503(deploy, tmp_path):
    """uvicorn, one process, an unverified damaged bundle: a call that reads a damaged row
    gets 503 with the SDK's message; the others are answered."""
    port = _free_port()
    env = _env(SESSREC_BUNDLE=str(deploy["bad"]), SESSREC_VERIFY="0")
    srv = Server([sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                  "--no-access-log", "app:app"], env, port, tmp_path / "uvicorn.log")
    try:
        srv.wait_ready()
        rec = Recommender.load(deploy["bad"], verify=False)
        ids = deploy["ids"]
        with httpx.Client(base_url=srv.url, timeout=5) as client:
            r = client.post("/recommend", json={"session": [int(ids[0])]})
            assert r.status_code == 200 and _same(r.json(), rec.recommend([int(ids[0])]))
            r = client.post("/recommend", json={"session": [int(ids[5])]})
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert "neighbors.npy" in err and "out of range" in err
            assert "Traceback" not in r.text
            assert client.get("/health").status_code == 200
            m = client.get("/metrics").text
            assert 'sessrec_requests_total{endpoint="recommend",status="503"} 1.0' in m
            assert "sessrec_bundle_info{" in m and "pid=" not in m  # single-process mode
    finally:
        srv.stop()


def test_response_is_json_for_every_status(server):
    r = httpx.post(server.url + "/recommend", content=b"{}", timeout=5)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/json")
    json.loads(r.text)
