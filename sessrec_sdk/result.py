"""What recommend() returns: a small immutable result, best item first."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class Recommendation:
    """Top items and their scores, best first (read-only numpy arrays).

    ``fallback`` says why the model was not used ("popularity" for an empty or
    all-unknown session, "nonfinite_query" if the encoder gave NaN/inf), else None;
    ``unknown`` counts the session ids not in the catalog; ``n_candidates`` counts the
    rows the kernel scored.
    """

    __slots__ = ("item_ids", "scores", "fallback", "unknown", "n_candidates")

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: str | None
    unknown: int
    n_candidates: int

    def __init__(self, item_ids: np.ndarray, scores: np.ndarray, fallback: str | None = None,
                 unknown: int = 0, n_candidates: int = 0) -> None:
        # a slotted class instead of a frozen dataclass: same read-only surface, a few µs
        # less per call (frozen dataclasses set each field through object.__setattr__)
        item_ids.setflags(write=False)
        scores.setflags(write=False)
        _set = object.__setattr__
        _set(self, "item_ids", item_ids)
        _set(self, "scores", scores)
        _set(self, "fallback", fallback)
        _set(self, "unknown", unknown)
        _set(self, "n_candidates", n_candidates)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Recommendation is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Recommendation is read-only (cannot delete {name!r})")

    def __reduce__(self):  # pickle / copy rebuild through __init__, not setattr
        return (Recommendation, (self.item_ids, self.scores, self.fallback, self.unknown,
                                 self.n_candidates))

    def __len__(self) -> int:
        return len(self.item_ids)

    def __iter__(self) -> Iterator[tuple[Any, float]]:
        return zip(self.item_ids.tolist(), self.scores.tolist())

    def __repr__(self) -> str:
        head = ", ".join(f"{i!r}: {s:.4g}" for i, s in list(self)[:5])
        more = ", ..." if len(self) > 5 else ""
        return (f"Recommendation([{head}{more}], n={len(self)}, fallback={self.fallback!r}, "
                f"unknown={self.unknown})")
