"""Recommend for a few real Diginetica test sessions with an exported bundle.

    python examples/quickstart.py runs/fast/bundle [data/diginetica/test.csv.gz]
"""
from __future__ import annotations

import sys
import time

import numpy as np

from export_tools.data import read_events, sessionize
from sessrec_sdk import Recommender


def main(bundle: str, test_csv: str = "data/diginetica/test.csv.gz", n: int = 5) -> None:
    t0 = time.perf_counter()
    rec = Recommender.load(bundle)
    print(f"loaded {bundle}: {rec.n_items:,} items, backend {rec.backend}, "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms")
    sessions = [s for s in sessionize(read_events(test_csv)) if len(s) >= 2]
    rng = np.random.default_rng(7)
    for i in rng.choice(len(sessions), size=n, replace=False):
        session, target = sessions[i][:-1].tolist(), int(sessions[i][-1])
        t0 = time.perf_counter()
        out = rec.recommend(session, k=10)
        us = (time.perf_counter() - t0) * 1e6
        hit = (f"next item {target} at rank {out.item_ids.tolist().index(target) + 1}"
               if target in out.item_ids else f"next item {target} not in the top 10")
        print(f"\nsession {session[-5:]} -> {hit} ({us:.0f} us"
              f"{', fallback ' + out.fallback if out.fallback else ''})")
        for rank, (item, score) in enumerate(out.pairs(), 1):
            print(f"  {rank:2d}. item {item:<7} score {score:8.4f}"
                  f"{'   <- next item' if item == target else ''}")


if __name__ == "__main__":
    main(*sys.argv[1:])
