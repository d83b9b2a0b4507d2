"""Bounds on the work one recommend() call may do, set by the host at load.

A host serves requests it does not control: without bounds, a session of ten million ids
or an exclude list of the whole catalog would make one call take seconds and gigabytes.
These are safety limits, not model settings: no accuracy default depends on them (the
encoder reads at most the bundle's ``max_session_length`` items in any case).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Pass to ``Recommender.load(path, limits=Limits(...))``.

    ``session_history``: only the most recent N ids of a session are read. Older ids are
    neither encoded (the encoder sees the last ``max_session_length``), nor excluded by
    ``exclude_session_items``, nor counted in ``unknown``.
    ``rule_ids``: ``exclude=`` and ``allow=`` take at most N ids each; a longer list raises
    ValueError (a silent cut would return items a business rule forbids).
    """

    session_history: int = 200
    rule_ids: int = 100_000

    def __post_init__(self) -> None:
        for name in ("session_history", "rule_ids"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Limits.{name} must be an int >= 1, got {v!r}")
