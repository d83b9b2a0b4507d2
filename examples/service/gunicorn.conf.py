"""gunicorn settings for the sessrec service: uvicorn workers, the bundle loaded before fork.

    SESSREC_BUNDLE=/srv/bundles/current gunicorn -c examples/service/gunicorn.conf.py \
        --chdir examples/service app:app

Environment: SESSREC_BIND (127.0.0.1:8000), SESSREC_WORKERS (2: one per core),
PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory if unset), plus the app's own
SESSREC_* settings (app.py).
"""
import os
import shutil
import tempfile

bind = os.environ.get("SESSREC_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SESSREC_WORKERS", "2"))
worker_class = "uvicorn_worker.UvicornWorker"  # uvloop + httptools when installed
# Import the app (and so load the bundle) in the master, before forking: the workers share
# the bundle's memory-mapped pages and start answering at once. Fork safety of what the
# master holds (the mmap'd arrays, the ONNX Runtime session): docs/serving.md.
preload_app = True
keepalive = 75          # seconds an idle client connection stays open
graceful_timeout = 20   # SIGTERM: in-flight requests get this long to finish
accesslog = None        # one log line per request costs more than the request's kernel
loglevel = os.environ.get("SESSREC_LOGLEVEL", "info")
control_socket_disable = True  # gunicorn >= 25: one fixed socket path per user otherwise

# Prometheus multiprocess mode: each worker writes its values to files in this directory,
# GET /metrics (in any worker) sums them. It must be set before prometheus_client is
# imported (the app imports it, after this file is read), and emptied at each start.
_prom_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if not _prom_dir:
    _prom_dir = tempfile.mkdtemp(prefix="sessrec-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _prom_dir
else:
    os.makedirs(_prom_dir, exist_ok=True)
    for _name in os.listdir(_prom_dir):
        _path = os.path.join(_prom_dir, _name)
        if os.path.isdir(_path):
            shutil.rmtree(_path)
        else:
            os.unlink(_path)


def when_ready(server):
    """The master imported the app (metrics included) before forking; it serves nothing,
    so its zero-valued live gauges are dropped from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())


def child_exit(server, worker):
    """A worker died or was replaced: drop its live gauges from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
