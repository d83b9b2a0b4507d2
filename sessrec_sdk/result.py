"""What recommend() returns: a small immutable result, best item first."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Recommendation:
    """Top items and their scores, best first (read-only numpy arrays):
    ``item_ids, scores = rec.recommend(session)``; ``len(result)`` items.

    ``fallback`` says why the model's ranking is not what came back, else None:
    "popularity" (an empty or all-unknown session: the most popular items),
    "nonfinite_query" (the encoder gave NaN, inf or a vector too large to score: popular
    items), "nonfinite_scores" (a damaged, unverified bundle gave NaN/inf scores: popular
    items), "nothing_allowed" (``allow`` holds no known item that is not excluded: empty),
    "no_candidates" (no candidate passed the filters and rules: empty). An empty result
    always has a reason;
    ``unknown`` counts the session ids not in the catalog; ``n_candidates`` counts the
    rows the kernel scored.
    """

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: str | None = None
    unknown: int = 0
    n_candidates: int = 0

    def __post_init__(self) -> None:
        # setflags: a few tenths of a µs cheaper per call than assigning flags.writeable
        self.item_ids.setflags(write=False)
        self.scores.setflags(write=False)

    def __len__(self) -> int:
        """The number of items returned."""
        return len(self.item_ids)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Unpacks as ``item_ids, scores = rec.recommend(...)``, whatever k is (as
        implicit's ``recommend`` does); :meth:`pairs` gives (item, score) tuples."""
        return iter((self.item_ids, self.scores))

    def pairs(self) -> list[tuple[Any, float]]:
        """[(item id, score), ...] as Python values, best first."""
        return list(zip(self.item_ids.tolist(), self.scores.tolist()))

    def __repr__(self) -> str:
        head = ", ".join(f"{i!r}: {s:.4g}" for i, s in self.pairs()[:5])
        more = ", ..." if len(self) > 5 else ""
        return (f"Recommendation([{head}{more}], n={len(self)}, fallback={self.fallback!r}, "
                f"unknown={self.unknown})")
