"""Is a Recommender loaded before fork() usable in the children? (docs/serving.md)

    .venv/bin/python examples/service/fork_check.py BUNDLE [--threads 4] [--intra-op 1]

Loads the bundle and answers some sessions in the parent (so the ONNX Runtime session has
run), forks two children, and has each answer the same sessions five times from
``--threads`` threads at once, comparing every answer with the parent's. A child that
hangs is killed after 60 s and counts as a failure. Exit status 0: every child agreed.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

import numpy as np

from sessrec_sdk import Recommender


def child(rec: Recommender, sessions: list, ref: list, threads: int) -> int:
    ok = [True] * threads

    def work(t: int) -> None:
        for _ in range(5):
            for s, r in zip(sessions, ref):
                o = rec.recommend(s, k=20)
                if not (np.array_equal(o.item_ids, r.item_ids)
                        and np.array_equal(o.scores, r.scores)):
                    ok[t] = False

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return 0 if all(ok) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=4, help="threads per child")
    ap.add_argument("--intra-op", type=int, default=1,
                    help="ONNX Runtime intra_op_num_threads (the SDK's default: 1)")
    args = ap.parse_args()
    opts = None if args.intra_op == 1 else {"intra_op_num_threads": args.intra_op}
    rec = Recommender.load(args.bundle, ort_options=opts)
    ids = np.asarray(rec.item_ids)
    rng = np.random.default_rng(0)
    sessions = [ids[rng.integers(0, len(ids), int(rng.integers(1, 6)))].tolist()
                for _ in range(200)]
    ref = [rec.recommend(s, k=20) for s in sessions]  # the session has run before fork
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os._exit(child(rec, sessions, ref, args.threads))
        pids.append(pid)
    failed = 0
    deadline = time.monotonic() + 60
    for pid in pids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                code = "hung (killed)"
                break
            time.sleep(0.05)
        calls = 5 * len(sessions) * args.threads
        print(f"child {pid}: {calls} calls from {args.threads} threads, "
              f"{'all equal to the parent' if code == 0 else f'FAILED ({code})'}")
        failed += code != 0
    print(f"backend {rec.backend}, intra_op_num_threads {args.intra_op}: "
          f"{'OK' if not failed else 'NOT fork-safe'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
