"""Recommender: load a bundle, answer ``recommend(session)`` in microseconds.

A request flows top to bottom through :meth:`Recommender.recommend`, which is
:meth:`Recommender.plan` followed by :meth:`Recommender.run`:

1. ``plan``: validate the options (defaults come from the bundle's manifest);
2. ``plan``: map external ids to catalog rows (ids.py), skipping and counting unknown
   ones; only the most recent ``Limits.session_history`` ids are read (limits.py);
3. ``plan``: keep the last ``max_session_length`` known items: the window;
4. ``run``: an empty or all-unknown session gets the popularity fallback; otherwise the
   ONNX encoder turns the window (after the model's session filter) into a query vector
   and any further named outputs the bundle declares (:meth:`encode`, encoder.py);
5. ``run``: one kernel call merges the neighbor rows of the window's items, filters them
   and keeps the top k by query . row (:meth:`kernel_query`, :meth:`score`, kernels/);
   when session items may be returned, a second call scores them (:meth:`repeat_query`)
   and they get the repeat bonus, plus, if the encoder has a ``repeat_scores`` output (a
   model with the learned repeat head), each window item's learned bonus
   (:meth:`learned_repeats`), before the two lists are merged (:meth:`add_repeats`);
6. ``run``: rows go back to external ids in a read-only :class:`Recommendation`
   (result.py).

A session-kNN bundle (manifest ``scorer`` "sknn") has no encoder: stages 4-5 are one call
of the session-kNN kernel over the window (:meth:`knn_query`, kernels/sknn.py), which
finds the most similar recent training sessions and scores their items. An encoder bundle
that carries the session index can take its candidates from it (``candidates="sessions"``:
the kNN kernel's top items, scored by the model).

The stages are public so that benchmarks and the evaluation time or reuse them without a
second implementation of the request path. A damaged bundle raises a ``BundleError``
naming the file (errors.py), bad arguments raise ``TypeError``/``ValueError`` naming the
argument, and an empty result carries a ``fallback`` reason saying why.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from . import pages
from .bundle import (
    CANDIDATE_POLICIES,
    CATEGORY_FILTERS,
    INT32_MAX,
    ITEM_IDS_ORDER,
    NEIGHBORS,
    SKNN_FILES,
    Bundle,
    encoder_spec,
    read_bundle,
    scorer,
)
from .encoder import CachedEncoder, EncoderOutputs, SessionEncoder
from .errors import CorruptFileError
from .kernels import (
    CatalogArrays,
    KernelQuery,
    NeighborRangeError,
    RowRangeError,
    Scratch,
    make_kernel,
)
from .kernels.sknn import (
    INDEX_ARRAYS,
    IndexRangeError,
    SknnIndex,
    SknnQuery,
    SknnScratch,
    make_sknn_kernel,
)
from .limits import Limits
from .result import Recommendation

log = logging.getLogger("sessrec")

Backend = Literal["auto", "c", "numba", "numpy"]
CategoryFilter = Literal["last", "session", "none", "predicted"]
CandidatePolicy = Literal["neighbors", "categories", "sessions"]
Ids = Sequence[Any] | np.ndarray

_NO_ROWS = np.empty(0, dtype=np.int32)
#: sessions per encoder run in recommend_many: one run's inputs stay small (this many
#: windows of one length), and the run's fixed overhead is shared by many sessions
BATCH_SESSIONS = 256
# q . q above this (or NaN) means the encoder's output cannot be scored safely: with rows
# verified to |x| <= 2**20 every dot product with such a query stays finite.
_MAX_QUERY_SQUARED = 2.0**100


class _Served:
    """Everything one loaded bundle needs to answer calls; replaced whole on reload."""

    def __init__(self, bundle: Bundle, backend: str, limits: Limits, encoder_cache: int,
                 ort_options: dict[str, Any] | None):
        m = bundle.manifest
        self.bundle = bundle
        self.limits = limits
        self.load_options = (encoder_cache, ort_options)
        self._popularity_rank: np.ndarray | None = None
        self.knn_only = scorer(m) == "sknn"
        self.encoder = self.kernel = self.query_name = self.category_name = None
        self.repeat_name: str | None = None  # the output of kind "repeat_scores", if any
        if not self.knn_only:
            encoder = SessionEncoder(bundle.encoder_path, encoder_spec(m), m["input_dim"],
                                     m["dim"], ort_options)
            self.encoder = CachedEncoder(encoder, encoder_cache) if encoder_cache else encoder
            self.query_name = encoder.query_name  # the output of kind "query"
            self.category_name = next((name for name, kind in encoder.output_kinds.items()
                                       if kind == "category_scores"), None)
            self.repeat_name = next((name for name, kind in encoder.output_kinds.items()
                                     if kind == "repeat_scores"), None)
            self.kernel = make_kernel(CatalogArrays(bundle.item_matrix, bundle.neighbors,
                                                    bundle.item_category, bundle.item_bias),
                                      backend)
        self.knn_kernel = self.knn_sample = None
        if bundle.session_index is not None:
            ix, info = bundle.session_index, m["sknn"]
            table = info.get("position_weight")  # None in bundles from before the table
            self.knn_index = SknnIndex(ix.item_indptr, ix.item_sessions, ix.session_indptr,
                                       ix.session_items, ix.item_weight, bundle.item_category,
                                       None if table is None else np.asarray(table, np.float32))
            self.knn_kernel = make_sknn_kernel(self.knn_index, backend)
            self.knn_sample: int = info["sample"]
            self.knn_neighbors: int = min(info.get("neighbors", 100), self.knn_sample)
            self.knn_window: int = info.get("window", m["inference"]["max_session_length"])
        self.n_categories: int = m.get("n_categories", 0)
        self.max_length: int = m["inference"]["max_session_length"]
        self.session_filter: str = m["inference"]["session_filter"]
        self.defaults: dict[str, Any] = m["defaults"]
        self.n_items: int = m["n_items"]
        # neighbors= bound: neighbor rows per item, or neighbor sessions within the sample
        self.width: int = self.knn_sample if self.knn_only else m["neighbors_per_item"]
        self.backend = (self.knn_kernel if self.knn_only else self.kernel).name
        self._local = threading.local()
        k, *rest = _options(self, None, None, None, None, None, None, None, None, None)
        self.default_options_k, self.default_options = k, tuple(rest)

    def popularity_rank(self) -> np.ndarray:
        """Rank of each row in the popularity list (n_items = not listed), built on the
        first fallback with an allow list so that such a call costs O(len(allow))."""
        rank = self._popularity_rank
        if rank is None:
            pop = self.bundle.popularity
            rank = np.full(self.n_items, self.n_items, dtype=np.int32)
            rank[pop] = np.arange(len(pop), dtype=np.int32)
            self._popularity_rank = rank  # a racing thread builds the same array
        return rank

    def scratch(self) -> Scratch:
        """This thread's visited-stamp arrays (created on the thread's first call)."""
        s = getattr(self._local, "scratch", None)
        if s is None:
            s = self._local.scratch = Scratch(self.n_items)
        return s

    def knn_scratch(self) -> SknnScratch:
        """This thread's session-kNN scratch (created on the thread's first kNN call)."""
        s = getattr(self._local, "knn_scratch", None)
        if s is None:
            s = self._local.knn_scratch = SknnScratch(self.n_items, self.knn_index.n_sessions,
                                                       self.knn_sample)
        return s


class CallPlan(NamedTuple):
    """One call with its options resolved and its ids mapped (stages 1-3); made by
    :meth:`Recommender.plan`, carried out by :meth:`Recommender.run`. A plan stays bound
    to the bundle it was made on, even across a reload."""

    k: int
    category_filter: str
    neighbors: int
    exclude_session_items: bool
    candidates: str                # the candidate policy
    categories: int                # top predicted categories used (0: no category head)
    max_candidates: int            # cap on the "categories"/"sessions" policies' candidates
    repeat_bonus: float            # added to a session item's score when it may be returned
    knn_weight: float              # "sessions" candidates: weight of the kNN score blended in
    known: np.ndarray              # int32 rows of the known session ids, oldest first
    unknown: int                   # session ids not in the catalog
    window: np.ndarray             # the last max_session_length rows of ``known``
    excluded: np.ndarray           # int32 rows of ``exclude=``
    allowed: np.ndarray | None     # int32 rows of ``allow=`` (None: no allow list)
    served: _Served


class Recommender:
    """Session-based next-item recommender serving one bundle.

    >>> rec = Recommender.load("bundle/")
    >>> rec.recommend([1057, 822, 90], k=10)

    Thread-safe: many threads may call :meth:`recommend` at once (each keeps its own
    scratch arrays); :meth:`reload` swaps in a new bundle atomically under live traffic.
    """

    def __init__(self, served: _Served):
        self._served = served

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: Backend = "auto",
             verify: bool | None = None, prefault: bool = False,
             limits: Limits | None = None, encoder_cache: int = 0,
             ort_options: dict[str, Any] | None = None) -> Recommender:
        """Memory-map a bundle and open its encoder.

        ``backend``: "auto" (C, else Numba, else numpy), "c", "numba" or "numpy".
        ``verify``: see :func:`sessrec_sdk.bundle.read_bundle` (None = verify small bundles).
        ``prefault``: map every page of the bundle now, so that early requests pay no
        page faults. Load then takes as long as reading the bundle (from the page cache
        or disk), and RSS counts the whole bundle (shared page cache).
        See :mod:`sessrec_sdk.pages`.
        ``limits``: bounds on one call's work (:class:`sessrec_sdk.Limits`; defaults).
        ``encoder_cache``: keep the encoder's outputs for this many distinct windows (LRU;
        0 = none): for evaluations and traffic that repeats sessions.
        ``ort_options``: further ``onnxruntime.SessionOptions`` attributes by name (the
        defaults: one intra- and one inter-op thread, all graph optimisations).
        """
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a sessrec_sdk.Limits, got {type(limits).__name__}")
        if isinstance(encoder_cache, bool) or not isinstance(encoder_cache, int) \
                or encoder_cache < 0:
            raise ValueError(f"encoder_cache must be an int >= 0, got {encoder_cache!r}")
        served = _Served(_read(path, verify, prefault), backend, limits or Limits(),
                         encoder_cache, ort_options)
        _log_load(served, verify, prefault, backend)
        return cls(served)

    def reload(self, path: str | os.PathLike, *, verify: bool | None = None,
               prefault: bool = False) -> None:
        """Load another bundle with the same backend and load options and switch to it in
        one assignment."""
        s = self._served
        served = _Served(_read(path, verify, prefault), self.backend, s.limits,
                         *s.load_options)
        _log_load(served, verify, prefault, self.backend)
        self._served = served

    @property
    def backend(self) -> str:
        """The kernel backend in use: "c", "numba" or "numpy"."""
        return self._served.backend

    @property
    def manifest(self) -> dict[str, Any]:
        return self._served.bundle.manifest

    @property
    def bundle(self) -> Bundle:
        """The loaded bundle (memory-mapped arrays, read-only)."""
        return self._served.bundle

    @property
    def item_ids(self) -> np.ndarray:
        """The catalog's external ids in row order (read-only, memory-mapped)."""
        return self._served.bundle.ids.in_row_order

    @property
    def n_items(self) -> int:
        return self._served.n_items

    def recommend(
        self,
        session: Ids,
        k: int | None = None,
        *,
        category_filter: CategoryFilter | None = None,
        neighbors: int | None = None,
        exclude_session_items: bool | None = None,
        exclude: Ids | None = None,
        allow: Ids | None = None,
        candidates: CandidatePolicy | None = None,
        categories: int | None = None,
        max_candidates: int | None = None,
        repeat_bonus: float | None = None,
        knn_weight: float | None = None,
    ) -> Recommendation:
        """The top ``k`` next items for ``session`` (external ids, oldest first).

        Options left as None take the bundle's defaults (``rec.manifest["defaults"]``):
        ``category_filter``: "last" (same category as the last item), "session" (as any
        session item), "predicted" (the top ``categories`` predicted categories) or "none";
        ``neighbors``: neighbors per session item merged into the candidates (<= the
        bundle's K); ``exclude_session_items``: never return items of the session; when
        False, every session item (of the last ``Limits.session_history`` ids) is a
        candidate too, scored by the model plus ``repeat_bonus`` (the bundle's default,
        chosen at export on validation sessions; 0 if it has none);
        ``exclude``/``allow``: business rules, ids never to return / the only ids that may
        be returned (unknown ids in them are ignored); ``candidates``: "neighbors" (the
        neighbor rows of the session items) or "categories" (the items of the top
        ``categories`` predicted categories, at most ``max_candidates`` of them, most
        popular first within a category) or "sessions" (the items of the nearest training
        sessions: the session-kNN kernel's top ``max_candidates``, scored by the model, with
        ``knn_weight`` times the normalised kNN score added; needs a bundle with a session
        index). The category options need a bundle whose encoder predicts categories;
        ``result.n_candidates`` says how many rows were scored. On a session-kNN bundle
        (scorer "sknn") ``neighbors`` is the number of neighbor sessions.
        """
        return self.run(self.plan(session, k, category_filter=category_filter,
                                  neighbors=neighbors,
                                  exclude_session_items=exclude_session_items,
                                  exclude=exclude, allow=allow, candidates=candidates,
                                  categories=categories, max_candidates=max_candidates,
                                  repeat_bonus=repeat_bonus, knn_weight=knn_weight))

    def recommend_many(self, sessions: Iterable[Ids], k: int | None = None,
                       **options: Any) -> list[Recommendation]:
        """``recommend`` for each session, in order, with the same options (offline
        scoring, evaluation, a host answering many sessions at once). Sessions whose
        encoder windows have the same length are encoded together, up to
        :data:`BATCH_SESSIONS` per encoder run, so the encoder's per-run overhead is
        shared; an encoder without a batch axis (manifest ``encoder.batch`` absent or
        false: bundles written before it) runs once per session. Sessions that need no
        encoder (no known item, a session-kNN bundle) skip it.

        The answers are recommend()'s, except that a batched encoder run may round in the
        last bits otherwise than a run of one session (ONNX Runtime's kernels may sum in
        another order when a run holds more rows); the export bounds that by 1e-5 per
        output value
        (export_tools.onnx_export.BATCH_TOLERANCE), so scores may differ by about as
        much, and items whose scores are that close may swap.

        Every session is planned before any is encoded: bad input in any session raises
        what ``recommend`` raises for it, and the whole call raises (no partial list).
        One bundle answers them all even if ``reload`` runs meanwhile."""
        one = Recommender(self._served)
        plans = [one.plan(session, k, **options) for session in sessions]
        s = one._served
        results: list[Recommendation | None] = [None] * len(plans)
        by_length: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, plan in enumerate(plans):
            # the plans run() answers without the encoder (see run)
            if s.knn_only or plan.known.size == 0 or (plan.allowed is not None
                                                      and plan.allowed.size == 0):
                results[i] = one.run(plan)
            else:
                rows = _encoder_rows(s, plan.window)
                by_length.setdefault(len(rows), []).append((i, rows))
        for group in by_length.values():
            for start in range(0, len(group), BATCH_SESSIONS):
                chunk = group[start:start + BATCH_SESSIONS]
                outputs = s.encoder.run_batch([_encoder_inputs(s, rows) for _, rows in chunk])
                for (i, _), out in zip(chunk, outputs):
                    results[i] = one.run(plans[i], out)
        return results

    # ------------------------------------------------------------------ the stages

    def plan(
        self,
        session: Ids,
        k: int | None = None,
        *,
        category_filter: CategoryFilter | None = None,
        neighbors: int | None = None,
        exclude_session_items: bool | None = None,
        exclude: Ids | None = None,
        allow: Ids | None = None,
        candidates: CandidatePolicy | None = None,
        categories: int | None = None,
        max_candidates: int | None = None,
        repeat_bonus: float | None = None,
        knn_weight: float | None = None,
    ) -> CallPlan:
        """Stages 1-3 of :meth:`recommend` (same arguments): options checked, ids mapped,
        the window chosen. Raises what ``recommend`` raises for bad arguments."""
        s = self._served  # read once: a concurrent reload() never mixes two bundles
        if (category_filter is None and neighbors is None and exclude_session_items is None
                and candidates is None and categories is None and max_candidates is None
                and repeat_bonus is None and knn_weight is None):
            options = s.default_options  # the common call: defaults validated at load
            k = s.default_options_k if k is None else _check_k(s, k)
        else:
            k, *options = _options(s, k, category_filter, neighbors, exclude_session_items,
                                   candidates, categories, max_candidates, repeat_bonus,
                                   knn_weight)
        ids = s.bundle.ids
        known, unknown = ids.known(ids.coerce(session, keep_last=s.limits.session_history))
        excluded = _rows(s, exclude, "exclude")
        allowed = None if allow is None else _rows(s, allow, "allow")
        return CallPlan(k, *options, known, unknown, known[-s.max_length:], excluded, allowed,
                        s)

    def run(self, plan: CallPlan, outputs: EncoderOutputs | None = None) -> Recommendation:
        """Stages 4-6 of :meth:`recommend` for a plan; ``outputs``: the encoder's outputs
        for the plan's window if already computed (:meth:`encode`)."""
        s = plan.served
        if plan.allowed is not None and plan.allowed.size == 0:  # nothing may be returned
            return _empty(s, plan.unknown, "nothing_allowed")
        if plan.known.size == 0:
            return _popular(s, plan, "popularity")
        if s.knn_only:  # session-kNN: one kernel call scores the neighbor sessions' items
            top_rows, scores, n_cand = self.score(plan, self.knn_query(plan))
            return _result(s, plan, top_rows, scores, n_cand)
        if outputs is None:
            outputs = _encode(s, plan.window)
        query = outputs[s.query_name]
        if not float(query.dot(query)) <= _MAX_QUERY_SQUARED:  # also False for NaN
            return _popular(s, plan, "nonfinite_query")
        knn = self.knn_candidates(plan) if plan.candidates == "sessions" else None
        q = self.kernel_query(plan, outputs, knn)
        top_rows, scores, n_cand = self.score(plan, q)
        if not plan.exclude_session_items:  # the session's own items, with the repeat bonus
            top_rows, scores, n_cand = self.add_repeats(plan, outputs, q, top_rows, scores,
                                                        n_cand)
        if knn is not None and plan.knn_weight:
            top_rows, scores = _blend(top_rows, scores, *knn, plan.knn_weight, plan.k)
        return _result(s, plan, top_rows, scores, n_cand)

    def encode(self, plan: CallPlan) -> EncoderOutputs | None:
        """Stage 4: the encoder's named outputs for the plan's window (the query vector
        under the output of kind "query"); None for a session with no known item and on a
        session-kNN bundle (no encoder)."""
        if plan.known.size == 0 or plan.served.knn_only:
            return None
        return _encode(plan.served, plan.window)

    def kernel_query(self, plan: CallPlan, outputs: EncoderOutputs,
                     knn: tuple[np.ndarray, np.ndarray] | None = None) -> KernelQuery:
        """Stage 5's input: what the kernel merges, filters and scores for this plan. The
        session's items are never among its candidates: when they may be returned,
        :meth:`repeat_query` scores them in a second kernel call. ``knn``: the
        :meth:`knn_candidates` of a "sessions" plan (when blending, every candidate is
        returned, so that the blend can re-rank them all)."""
        s, window = plan.served, plan.window
        excluded = (np.concatenate([plan.excluded, plan.known]) if plan.excluded.size
                    else plan.known)
        allowed_cats = top_cats = None
        if plan.category_filter == "predicted" or plan.candidates == "categories":
            top_cats = _top_categories(s, outputs, plan.categories)
        if plan.category_filter == "last":
            allowed_cats = s.bundle.item_category[window[-1:]]
        elif plan.category_filter == "session":
            allowed_cats = np.unique(s.bundle.item_category[window])
        elif plan.category_filter == "predicted":
            allowed_cats = top_cats
        n_use, cands = plan.neighbors, None
        if plan.candidates == "categories":
            n_use, cands = 0, _category_items(s, top_cats, plan.max_candidates)
        elif plan.candidates == "sessions":  # the kNN kernel's top items, model-scored
            cands = (knn if knn is not None else self.knn_candidates(plan))[0]
            n_use = 0
        k = plan.k
        if plan.candidates == "sessions" and plan.knn_weight:
            k = max(1, len(cands) + (0 if plan.exclude_session_items else len(plan.known)))
        return KernelQuery(seeds=window, query=outputs[s.query_name], k=k, n_use=n_use,
                           exclude_seeds=True, excluded=excluded, allowed=plan.allowed,
                           allowed_cats=allowed_cats, candidates=cands)

    def repeat_query(self, plan: CallPlan, main: KernelQuery) -> KernelQuery:
        """The session's own items as candidates (when ``exclude_session_items`` is False),
        under the rules and category filter of ``main`` (the plan's :meth:`kernel_query`);
        ``run`` adds the repeat bonus to their scores and merges them with the main
        call's. With a learned repeat output the bonus differs per item, so the call keeps
        every session item (k = their number) instead of cutting to ``main.k`` first."""
        k = main.k if plan.served.repeat_name is None else max(1, len(plan.known))
        return main._replace(seeds=plan.known, n_use=0, exclude_seeds=False,
                             excluded=plan.excluded, candidates=None, k=k)

    def add_repeats(self, plan: CallPlan, outputs: EncoderOutputs, main: KernelQuery,
                    rows: np.ndarray, scores: np.ndarray, n_cand: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The main call's (rows, scores, rows scored) merged with the session's own items
        (:meth:`repeat_query`), each scored by the model plus the plan's repeat bonus plus
        its learned bonus (:meth:`learned_repeats`); the top ``main.k``."""
        r_rows, r_scores, r_cand = self.score(plan, self.repeat_query(plan, main))
        r_scores = r_scores + np.float32(plan.repeat_bonus)
        if plan.served.repeat_name is not None:
            r_scores = r_scores + _lookup(r_rows, *self.learned_repeats(plan, outputs))
        rows, scores = _merge(rows, scores, r_rows, r_scores, main.k)
        return rows, scores, n_cand + r_cand

    def learned_repeats(self, plan: CallPlan, outputs: EncoderOutputs
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, bonus): the distinct rows the encoder saw for the plan's window and the
        learned repeat bonus of each, the largest of its positions' ``repeat_scores``
        (float32). Session items outside the encoded window get none (0). Empty for a
        bundle whose encoder has no repeat output."""
        s = plan.served
        if s.repeat_name is None:
            return _NO_ROWS, np.empty(0, np.float32)
        enc_rows = _encoder_rows(s, plan.window)
        r = outputs[s.repeat_name]
        if r.size != enc_rows.size:
            raise CorruptFileError(f"{s.bundle.encoder_path}: the encoder returned {r.size} "
                                   f"repeat scores for {s.repeat_name!r} on a window of "
                                   f"{enc_rows.size} items")
        rows = np.unique(enc_rows)
        at = rows[:, None] == enc_rows[None, :]
        bonus = np.where(at, r[None, :], np.float32(-np.inf)).max(axis=1)
        return rows.astype(np.int32), bonus.astype(np.float32, copy=False)

    def knn_candidates(self, plan: CallPlan) -> tuple[np.ndarray, np.ndarray]:
        """(rows, kNN scores) of the "sessions" policy on an encoder bundle: the session-kNN
        kernel's top ``max_candidates`` items (session items included, without bonus)."""
        q = self.knn_query(plan)._replace(k=plan.max_candidates, exclude_session=False,
                                          session_bonus=0.0)
        rows, scores, _ = self.score(plan, q)
        return rows, scores

    def knn_query(self, plan: CallPlan) -> SknnQuery:
        """The session-kNN kernel's input for a plan (kernels/sknn.py): on a session-kNN
        bundle the whole call (stages 4-5); on an encoder bundle with a session index the
        candidates of the "sessions" policy (the index's own window and neighbors). The
        category filter takes its categories from the plan's window, as the model's call
        does, so no kNN candidate is one that call would drop."""
        s, window = plan.served, plan.window
        allowed_cats = None
        if plan.category_filter == "last":
            allowed_cats = s.bundle.item_category[window[-1:]]
        elif plan.category_filter == "session":
            allowed_cats = np.unique(s.bundle.item_category[window])
        if not s.knn_only:
            window = plan.known[-s.knn_window:]
        neighbors = plan.neighbors if s.knn_only else s.knn_neighbors
        return SknnQuery(session=window, sample=s.knn_sample, neighbors=neighbors, k=plan.k,
                         exclude_session=plan.exclude_session_items,
                         session_bonus=plan.repeat_bonus, excluded=plan.excluded,
                         allowed=plan.allowed, allowed_cats=allowed_cats)

    def score(self, plan: CallPlan, q: KernelQuery | SknnQuery
              ) -> tuple[np.ndarray, np.ndarray, int]:
        """Stage 5: (top rows, their scores, rows scored) from the plan's bundle's kernel
        (the session-kNN kernel for an :class:`SknnQuery`)."""
        s = plan.served
        try:
            if isinstance(q, SknnQuery):
                return s.knn_kernel.top_k(q, s.knn_scratch())
            return s.kernel.top_k(q, s.scratch())
        except NeighborRangeError as exc:
            raise CorruptFileError(f"{s.bundle.path / NEIGHBORS}: row {exc.item_row} holds an "
                                   "item id out of range (damaged bundle?)") from None
        except RowRangeError as exc:  # only a damaged id order can produce such a row
            raise CorruptFileError(f"{s.bundle.path / ITEM_IDS_ORDER}: maps an id to row "
                                   f"{exc.row}, outside the catalog (damaged bundle?)") from None
        except IndexRangeError as exc:  # a list of an unverified session index
            name = dict(zip(INDEX_ARRAYS, SKNN_FILES)).get(exc.array_name, exc.array_name)
            raise CorruptFileError(f"{s.bundle.path / name}: {exc} (damaged bundle?)") from None

    # ------------------------------------------------------------------ shortcuts

    def session_rows(self, session: Ids) -> np.ndarray:
        """The catalog rows the encoder sees for ``session``: known ids, the last
        ``max_session_length`` of them, after the model's session filter."""
        plan = self.plan(session)
        return _encoder_rows(plan.served, plan.window)

    def query(self, session: Ids) -> np.ndarray | None:
        """The session vector the candidates are scored against (None: no known item)."""
        plan = self.plan(session)
        if plan.served.knn_only:
            raise ValueError("a session-kNN bundle has no encoder and no query vector")
        outputs = self.encode(plan)
        return None if outputs is None else outputs[plan.served.query_name]


# ---------------------------------------------------------------------- helpers


def _log_load(s: _Served, verify: bool | None, prefault: bool, asked: str) -> None:
    m = s.bundle.manifest
    shape = (f"{m['sknn']['n_sessions']} sessions, sample {s.knn_sample}" if s.knn_only
             else f"d={m['dim']}, K={m['neighbors_per_item']}")
    log.info("loaded %s: %s v%d, %d items, %s; backend %s, verify=%s, prefault=%s",
             s.bundle.path, m["model"].get("kind", "?"), m["format_version"], m["n_items"],
             shape, s.backend, verify, prefault)
    if asked == "auto" and s.backend != "c":
        log.warning("the C kernel extension is not built: serving with the %s backend, "
                    "several times slower (reinstall sessrec with a C compiler)", s.backend)


def _read(path: str | os.PathLike, verify: bool | None, prefault: bool) -> Bundle:
    bundle = read_bundle(path, verify=verify)
    if prefault:
        pages.prefault(bundle.arrays())
    return bundle


def _check_k(s: _Served, k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(min(k, s.n_items))


def _options(s: _Served, k, category_filter, neighbors, exclude_session_items, candidates,
             categories, max_candidates, repeat_bonus, knn_weight):
    d = s.defaults
    k = _check_k(s, d["k"] if k is None else k)
    cat_filter = d["category_filter"] if category_filter is None else category_filter
    if cat_filter not in CATEGORY_FILTERS:
        raise ValueError(f"category_filter must be one of {CATEGORY_FILTERS}, "
                         f"got {cat_filter!r}")
    if cat_filter != "none" and s.bundle.item_category is None:
        raise ValueError(f"category_filter={cat_filter!r} needs item categories, and this "
                         "bundle has none")
    n_use = d["neighbors"] if neighbors is None else neighbors
    if isinstance(n_use, bool) or not isinstance(n_use, (int, np.integer)):
        raise TypeError(f"neighbors must be an int, got {type(n_use).__name__}")
    if not 1 <= n_use <= s.width:
        raise ValueError(f"neighbors must be in [1, {s.width}] for this bundle, got {n_use}")
    exclude_seen = (d["exclude_session_items"] if exclude_session_items is None
                    else exclude_session_items)
    if not isinstance(exclude_seen, (bool, np.bool_)):
        raise TypeError("exclude_session_items must be True or False")
    policy = d["candidates"] if candidates is None else candidates
    if policy not in CANDIDATE_POLICIES:
        raise ValueError(f"candidates must be one of {CANDIDATE_POLICIES} for this bundle, "
                         f"got {policy!r}")
    if s.knn_only and policy != "sessions":
        raise ValueError(f"a session-kNN bundle takes its candidates from sessions only, "
                         f"got candidates={policy!r}")
    if policy == "sessions" and s.knn_kernel is None:
        raise ValueError("candidates='sessions' needs a bundle with a session index "
                         "(sknn_*.npy), which this one does not have")
    n_cats = 0
    if s.category_name is None:
        if cat_filter == "predicted" or policy == "categories" or categories is not None:
            raise ValueError("category_filter='predicted', candidates='categories' and "
                             "categories= need a bundle whose encoder predicts categories "
                             "(an output of kind category_scores); this one does not")
    else:
        n_cats = _int_option("categories", d["categories"] if categories is None else categories,
                             1, s.n_categories)
        if policy == "categories" and s.bundle.category_indptr is None:
            raise ValueError("candidates='categories' needs the bundle's category index "
                             "(category_items_*.npy), which this bundle does not have")
    # the cap of "sessions" on a hybrid bundle and of the other policies on a bundle that
    # predicts categories (whose manifest must name it); checked even where unused
    capped = not s.knn_only if policy == "sessions" else s.category_name is not None
    cap = _int_option("max_candidates", d.get("max_candidates", 500) if max_candidates is None
                      else max_candidates, 1, INT32_MAX)
    cap = cap if capped else 0
    bonus = d.get("repeat_bonus", 0.0) if repeat_bonus is None else repeat_bonus
    if isinstance(bonus, bool) or not isinstance(bonus, (int, float, np.integer, np.floating)):
        raise TypeError(f"repeat_bonus must be a number, got {type(bonus).__name__}")
    if not (math.isfinite(bonus) and abs(bonus) <= 1e6):
        raise ValueError(f"repeat_bonus must be finite with abs(x) <= 1e6, got {bonus}")
    weight = d.get("knn_weight", 0.0) if knn_weight is None else knn_weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer,
                                                           np.floating)):
        raise TypeError(f"knn_weight must be a number, got {type(weight).__name__}")
    if not (math.isfinite(weight) and 0 <= weight <= 1e6):
        raise ValueError(f"knn_weight must be finite and in [0, 1e6], got {weight}")
    return (k, cat_filter, int(n_use), bool(exclude_seen), policy, n_cats, cap, float(bonus),
            float(weight))


def _merge(rows_a: np.ndarray, scores_a: np.ndarray, rows_b: np.ndarray,
           scores_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of two candidate lists, by score, ties by the smaller row (the
    kernels' order, so every backend merges alike)."""
    rows = np.concatenate([rows_a, rows_b])
    scores = np.concatenate([scores_a, scores_b]).astype(np.float32, copy=False)
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


def _lookup(rows: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float32 value of each of ``rows`` in the sorted ``keys`` (0 where absent)."""
    out = np.zeros(len(rows), np.float32)
    if keys.size:
        pos = np.minimum(np.searchsorted(keys, rows), len(keys) - 1)
        hit = keys[pos] == rows
        out[hit] = values[pos[hit]]
    return out


def _result(s: _Served, plan: CallPlan, top_rows: np.ndarray, scores: np.ndarray,
            n_cand: int) -> Recommendation:
    if not math.isfinite(scores.sum()):  # rows of an unverified, damaged bundle
        return _popular(s, plan, "nonfinite_scores")
    if top_rows.size == 0:
        return _empty(s, plan.unknown, "no_candidates", n_cand)
    return Recommendation(s.bundle.ids.external(top_rows), scores, None, plan.unknown, n_cand)


def _blend(rows: np.ndarray, scores: np.ndarray, knn_rows: np.ndarray,
           knn_scores: np.ndarray, weight: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Model scores plus ``weight`` x the kNN score scaled to [0, 1] (0 for rows the kNN
    kernel did not list); the top ``k`` by the blend, ties by the smaller row. float32
    throughout, so every backend blends alike."""
    knn = np.zeros(len(rows), np.float32)
    top = knn_scores.max() if knn_scores.size else 0
    if top > 0:
        order = np.argsort(knn_rows, kind="stable")
        knn = _lookup(rows, knn_rows[order], knn_scores[order] / np.float32(top))
    blended = (scores + np.float32(weight) * knn).astype(np.float32, copy=False)
    pick = np.lexsort((rows, -blended))[:k]
    return rows[pick], blended[pick]


def _int_option(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}] for this bundle, got {v}")
    return int(v)


def _top_categories(s: _Served, outputs: EncoderOutputs, n: int) -> np.ndarray:
    """The ``n`` categories with the highest predicted scores (ties: the smaller id)."""
    scores = outputs[s.category_name]
    if scores.size != s.n_categories:
        raise CorruptFileError(f"{s.bundle.encoder_path}: the encoder returned "
                               f"{scores.size} category scores for {s.category_name!r}; the "
                               f"bundle has n_categories={s.n_categories}")
    return np.argsort(-scores, kind="stable")[:n].astype(np.int32)


def _category_items(s: _Served, cats: np.ndarray, cap: int) -> np.ndarray:
    """The rows of ``cats`` in that order, most popular first within each, at most ``cap``
    (the work of a call stays bounded whatever the categories hold)."""
    indptr, items = s.bundle.category_indptr, s.bundle.category_items
    parts, total = [], 0
    for c in cats.tolist():
        take = min(int(indptr[c + 1] - indptr[c]), cap - total)
        if take > 0:
            parts.append(items[indptr[c]:indptr[c] + take])
            total += take
        if total >= cap:
            break
    return np.concatenate(parts) if parts else _NO_ROWS


def _encoder_rows(s: _Served, window: np.ndarray) -> np.ndarray:
    if s.session_filter == "last_category":
        cats = s.bundle.item_category[window]
        return window[cats == cats[-1]]
    return window


def _encode(s: _Served, window: np.ndarray) -> EncoderOutputs:
    return s.encoder(*_encoder_inputs(s, _encoder_rows(s, window)))


def _encoder_inputs(s: _Served, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's inputs for the rows it sees: rows int64 [L], item_emb float32
    [L, d_in]."""
    item_emb = s.bundle.input_embedding.take(rows, axis=0)
    return rows.astype(np.int64), item_emb.astype(np.float32, copy=False)


def _rows(s: _Served, ids, what: str) -> np.ndarray:
    if ids is None:
        return _NO_ROWS
    ids_map = s.bundle.ids
    return ids_map.known(ids_map.coerce(ids, what, max_len=s.limits.rule_ids))[0]


def _empty(s: _Served, unknown: int, reason: str, n_candidates: int = 0) -> Recommendation:
    """No item: ids in the catalog's own dtype (int64 or its str width), as a full result."""
    return Recommendation(s.bundle.ids.external(_NO_ROWS), np.empty(0, dtype=np.float32),
                          reason, unknown, n_candidates)


def _popular(s: _Served, plan: CallPlan, reason: str) -> Recommendation:
    """The most popular items, after the caller's exclude/allow rules. The work is bounded
    by the rules' sizes, not by the catalog's."""
    k, excluded, allowed, unknown = plan.k, plan.excluded, plan.allowed, plan.unknown
    pop, pop_scores = s.bundle.popularity, s.bundle.popularity_scores
    if allowed is not None:  # rank the allowed rows directly
        cand = np.unique(allowed)
        cand = cand[~np.isin(cand, excluded)]
        rank = s.popularity_rank()[cand]
        rank = rank[rank < len(pop)]
        if rank.size == 0:
            return _empty(s, unknown, "nothing_allowed")
        top = np.sort(rank)[:k]
        return Recommendation(s.bundle.ids.external(pop[top]),
                              np.asarray(pop_scores[top], dtype=np.float32), reason, unknown)
    rows, scores = [], []
    found, chunk = 0, max(4 * k + len(excluded), 1024)
    for start in range(0, len(pop), chunk):  # ends after len(excluded) + k listed rows
        block = np.asarray(pop[start:start + chunk])
        keep = ~np.isin(block, excluded)
        rows.append(block[keep][:k - found])
        scores.append(np.asarray(pop_scores[start:start + chunk])[keep][:k - found])
        found += len(rows[-1])
        if found >= k:
            break
    top = np.concatenate(rows) if rows else _NO_ROWS
    top_scores = np.concatenate(scores) if scores else np.empty(0, np.float32)
    return Recommendation(s.bundle.ids.external(top), top_scores, reason, unknown, 0)
