"""Next-item evaluation: baselines, the model's full-catalog ranking, the SDK path.

Two protocols, each row of the result says which (``protocol``):
  last       for every test session the last event is the target and the events before
             it are the input (the dataset README's reference protocol);
  prefixes   every prefix of every test session predicts its next item (s[:i] -> s[i],
             i = 1..n-1): the protocol SR-GNN, LESSR and Atten-Mixer publish.
Targets never seen in training stay in the denominator (a miss for every method). Ranks
are 0-based; ties count in the target's favour for full-catalog rankings, list position
for list-returning methods; a non-finite target score is a miss (export_tools.metrics).

Rows of the table (method names are stable, scripts read them from the JSON):
  popularity                 most popular training items
  transition                 most frequent successors of the last item, popularity fill
  repeat                     the session's own items, most recent first, then transition
  vsknn                      V-SKNN (session-kNN, 100 neighbor sessions, linear decay,
                             whole session; export_tools.models.sknn's "fast" preset
                             without tuning) indexed on the training sessions
  <model>/full               the torch model over the whole catalog (needs --checkpoint),
                             with its training-time session handling
  <model>/full-sdk-query     the bundle's query (SDK session handling) over the whole
                             catalog, plus the learned repeat bonus of the encoded window's
                             items if the encoder has a repeat output: separates the cost of
                             candidates from that of the session truncation/filter
  <model>/full-sdk-post      the same, after the SDK's post-processing with the bundle's
                             defaults (session items excluded if the bundle does, the same
                             category filter): ``<model>/sdk`` differs from it only by the
                             candidate path (neighbors instead of the whole catalog)
  <model>/sdk                Recommender.recommend with the bundle's defaults
  <model>/sdk/<filter>       each category filter (last, session, none)
  <model>/sdk/neighbors=<n>  the neighbors-per-item sweep (paper Fig. 4), on neighbor
                             candidates whatever the bundle's default policy
  <model>/sdk/candidates=..  with a session index in the bundle: neighbor-row candidates,
                             or the kNN candidates scored by the model alone (no blend)
  <model>/sdk/categories=<K> bundles whose encoder predicts categories (a category_scores
                             output): candidates="categories", the items of the top K
                             predicted categories (capped at the bundle's max_candidates),
                             category_filter "none" (the policy alone), other defaults;
                             columns ``category_top1`` and ``category_top<K>``: share of
                             examples whose target's category is the top-1 / among the top
                             K predicted (``target_category_hit`` = the latter)
  <model>/sdk/random=<K>     the control of the paper's Figure 2a: as categories=<K>, but
                             the kernel scores as many uniformly drawn catalog rows (seeded)
                             as the categories=<K> call would have had; same scoring path
                             (Recommender.plan, encode, kernel_query with its candidates
                             replaced, score)
  <model>/sdk/neighbors      candidates="neighbors" with the bundle's other defaults
  <model>/sdk/predicted      neighbor candidates kept only in the top ``categories`` (the
                             bundle's default K) predicted categories
  sknn/sdk                   a session-kNN bundle with its defaults (no full-catalog rows:
  sknn/sdk/exclude           it scores only its neighbor sessions' items); session items
  sknn/sdk/no-bonus          never returned; returned without the repeat bonus

Every SDK row runs every test example through ``Recommender.recommend`` and carries
``candidates_mean`` (mean ``result.n_candidates``: rows scored per call, 0 for a
popularity fallback) and ``catalog_share`` (that over n_items). For bundles that predict
categories ``info["category_accuracy"][protocol]`` holds ``category_top<K>`` for every K
of :data:`CATEGORY_SWEEP` (denominator: every example; a target unknown to the bundle,
without a category or after a session without a known item is a miss). A session's query
vector depends on the session only, so after the first SDK pass the encoder's answers are
memoised (:class:`MemoEncoder`) and the other passes cost the kernel alone; the latency
columns (protocol "last" only) come from separate, unmemoised calls on the first
``latency_sessions`` sessions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import data as D
from .metrics import KS, MISS, list_rank, rank_in_scores, ranking_metrics  # noqa: F401

SWEEP = (25, 50, 75, 100, 125, 150)
#: K (top predicted categories) of the categories=K and random=K rows
CATEGORY_SWEEP = (1, 2, 3, 5, 10, 20)
RANDOM_SEED = 0  # random=K rows draw from np.random.default_rng((RANDOM_SEED, K))
LATENCY_SESSIONS = 2000  # timed recommend() calls per SDK row


# ------------------------------------------------------------------------ baselines


class TransitionBaseline:
    """Most frequent successors of the last item (ties: first seen in training first), then
    the most popular items (same tie rule) to fill the list. This is the reference rule of
    the dataset README (HR@20 0.3775, MRR@20 0.1945 on the Diginetica split)."""

    def __init__(self, train_sessions: Sequence[np.ndarray]):
        flat = np.concatenate([np.asarray(s, np.int64) for s in train_sessions])
        items, first, counts = np.unique(flat, return_index=True, return_counts=True)
        self.popular = items[np.lexsort((first, -counts))]
        src = np.concatenate([np.asarray(s[:-1], np.int64) for s in train_sessions])
        dst = np.concatenate([np.asarray(s[1:], np.int64) for s in train_sessions])
        pairs = np.stack([src, dst], axis=1)
        uniq, first, counts = np.unique(pairs, axis=0, return_index=True, return_counts=True)
        order = np.lexsort((first, -counts, uniq[:, 0]))
        self._src = uniq[order, 0]
        self._dst = uniq[order, 1]

    def recommend(self, session: np.ndarray, k: int) -> np.ndarray:
        last = session[-1] if len(session) else None
        succ = np.empty(0, np.int64)
        if last is not None:
            lo, hi = np.searchsorted(self._src, [last, last + 1])
            succ = self._dst[lo:min(hi, lo + k)]
        if len(succ) >= k:
            return succ
        fill = self.popular[: k + len(succ)]
        fill = fill[~np.isin(fill, succ)]
        return np.concatenate([succ, fill])[:k]


class RepeatBaseline:
    """The session's own items, most recent first (each once), then the transition
    baseline's list: the dataset README's repeat-aware reference rule."""

    def __init__(self, transition: TransitionBaseline):
        self.transition = transition

    def recommend(self, session: np.ndarray, k: int) -> np.ndarray:
        rev = np.asarray(session, np.int64)[::-1]
        _, first = np.unique(rev, return_index=True)
        seen = rev[np.sort(first)][:k]
        if len(seen) >= k:
            return seen
        rest = self.transition.recommend(session, k + len(seen))
        return np.concatenate([seen, rest[~np.isin(rest, seen)]])[:k]


class VsknnBaseline:
    """V-SKNN on the training sessions (the preset's published setting, not tuned), served
    by the SDK's session-kNN kernel."""

    def __init__(self, train_sessions: Sequence[np.ndarray]):
        from .models.sknn import PRESETS, KnnRecommender, build_index

        p = PRESETS["fast"]
        self.catalog = D.build_catalog(train_sessions)
        rows = D.to_rows(train_sessions, self.catalog)
        index = build_index(rows, self.catalog.n_items, sample=p["sample"], idf=p["idf"])
        self.knn = KnnRecommender(index, sample=p["sample"], neighbors=p["neighbors"],
                                  window=p["window"])
        self.ids = np.asarray(self.catalog.item_ids)

    def recommend(self, session: np.ndarray, k: int) -> np.ndarray:
        return self.ids[self.knn.top(self.catalog.rows(np.asarray(session, np.int64)), k)[0]]


# ------------------------------------------------------------------------ evaluation


PROTOCOLS = ("last", "prefixes")


def sample_sessions(n: int, n_sample: int | None) -> np.ndarray:
    """Indices of a deterministic, evenly spread subsample of ``n_sample`` of ``n`` test
    sessions (file order): every ``n / n_sample``-th session, the first one included.
    ``None`` or ``n_sample >= n``: all of them."""
    if n_sample is None or n_sample >= n:
        return np.arange(n)
    if n_sample < 1:
        raise ValueError(f"n_sample must be >= 1, got {n_sample}")
    return np.floor(np.arange(n_sample) * (n / n_sample)).astype(np.int64)


def load_test_examples(test_csv: str | Path, protocol: str = "last",
                       sample: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """(inputs as external ids, targets) of every test session with >= 2 events: its last
    event (``protocol="last"``) or every prefix's next event (``"prefixes"``).
    ``sample``: only the sessions of :func:`sample_sessions` (all their prefixes)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    sessions = [s for s in D.sessionize(D.read_events(test_csv)) if len(s) >= 2]
    if sample is not None:
        sessions = [sessions[i] for i in sample_sessions(len(sessions), sample)]
    if protocol == "last":
        return [s[:-1] for s in sessions], np.array([s[-1] for s in sessions], dtype=np.int64)
    inputs = [s[:i] for s in sessions for i in range(1, len(s))]
    targets = np.array([s[i] for s in sessions for i in range(1, len(s))], dtype=np.int64)
    return inputs, targets


def _progress(it, desc: str, enabled: bool, total: int | None = None):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, total=total, unit="session", leave=False, mininterval=0.5)


def evaluate_lists(name: str, recommend: Callable[[np.ndarray], np.ndarray],
                   inputs: list[np.ndarray], targets: np.ndarray, progress: bool) -> dict:
    """Metrics of a recommender that returns a list of item ids per input session."""
    ranks = np.empty(len(targets), dtype=np.int64)
    for i, (x, t) in enumerate(_progress(zip(inputs, targets), name, progress, len(targets))):
        ranks[i] = list_rank(recommend(x), t)
    return {"method": name, **ranking_metrics(ranks), "n": len(targets)}


class MemoEncoder:
    """The SDK's encoder with its answers kept per session (rows -> query vector), so
    evaluating many SDK settings on the same sessions runs the ONNX model once per session."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.memo: dict[bytes, np.ndarray] = {}

    def __call__(self, rows: np.ndarray, item_emb: np.ndarray) -> np.ndarray:
        key = rows.tobytes()
        query = self.memo.get(key)
        if query is None:
            query = self.memo[key] = self.encoder(rows, item_emb)
        return query


def latency(call: Callable[[np.ndarray], object], inputs: list[np.ndarray]) -> dict:
    """Median and p99 (µs) of ``call`` over ``inputs``, one timed call each."""
    times = np.empty(len(inputs))
    clock = time.perf_counter
    for i, x in enumerate(inputs):
        t0 = clock()
        call(x)
        times[i] = clock() - t0
    return {"latency_median_us": round(float(np.median(times)) * 1e6, 1),
            "latency_p99_us": round(float(np.percentile(times, 99)) * 1e6, 1),
            "latency_calls": len(inputs)}


def full_catalog_ranks_sdk(rec, inputs, targets, progress: bool, block: int = 512
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the targets among all items scored with the SDK's own query vector:
    (plain, after the SDK's post-processing with the bundle's defaults).

    A bundle whose encoder has a learned repeat output scores the encoded window's items
    with their learned bonus added in both rankings (the model's own score of a repeat,
    ``Recommender.learned_repeats``). Post-processing as ``Recommender.recommend`` does
    it: the session's known items are excluded when the bundle's default says so
    (otherwise they get its repeat bonus), and items outside the default category
    filter's categories (of the encoded window) are dropped; a target removed that way is
    a miss. A session without a known item has no query: a miss in both rankings."""
    import torch

    served = rec._served
    bundle = served.bundle
    ids = bundle.ids
    matrix = torch.from_numpy(np.array(bundle.item_matrix, dtype=np.float32))
    bias = None if bundle.item_bias is None else torch.from_numpy(
        np.asarray(bundle.item_bias, dtype=np.float32))
    cats = None if bundle.item_category is None else np.asarray(bundle.item_category)
    defaults = rec.manifest["defaults"]
    cat_filter = defaults["category_filter"] if cats is not None else "none"
    exclude = bool(defaults["exclude_session_items"])
    bonus = float(defaults.get("repeat_bonus", 0.0))
    n_cats = int(cats.max()) + 1 if cats is not None and cats.size else 0
    target_rows = ids.rows(ids.coerce(targets))
    plain = np.full(len(targets), MISS, dtype=np.int64)
    post = np.full(len(targets), MISS, dtype=np.int64)
    starts = _progress(range(0, len(targets), block), "full-sdk", progress,
                       (len(targets) + block - 1) // block)
    d = matrix.shape[1]
    for start in starts:
        idx = np.arange(start, min(start + block, len(targets)))
        queries = np.zeros((len(idx), d), dtype=np.float32)
        has_q = np.zeros(len(idx), dtype=bool)
        knowns, learned = [], []
        for j, i in enumerate(idx):
            known = ids.known(ids.coerce(inputs[i]))[0]
            knowns.append(known)
            plan = rec.plan(inputs[i])
            outputs = rec.encode(plan)  # None without a known item
            learned.append(None if outputs is None else rec.learned_repeats(plan, outputs))
            if outputs is not None:
                queries[j], has_q[j] = outputs[served.query_name], True
        with torch.no_grad():
            scores = torch.from_numpy(queries) @ matrix.T
            if bias is not None:
                scores += bias
            for j, repeats in enumerate(learned):
                if repeats is not None and repeats[0].size:
                    r_rows, learned_bonus = repeats
                    scores[j, torch.from_numpy(r_rows.astype(np.int64))] += \
                        torch.from_numpy(learned_bonus)
            ok = has_q & (target_rows[idx] >= 0)
            rows = torch.from_numpy(np.maximum(target_rows[idx], 0).astype(np.int64))
            r = rank_in_scores(scores, scores.gather(1, rows[:, None])[:, 0]).numpy()
            plain[idx[ok]] = r[ok]
            for j, known in enumerate(knowns):
                rows_j = torch.from_numpy(known[-served.limits.session_history:]
                                          .astype(np.int64))
                if exclude:
                    scores[j, rows_j] = -torch.inf
                elif bonus:
                    scores[j, rows_j] += bonus
            if cat_filter != "none":
                allowed = torch.zeros((len(idx), n_cats), dtype=torch.bool)
                for j, known in enumerate(knowns):
                    window = known[-served.max_length:]
                    if window.size:
                        use = window[-1:] if cat_filter == "last" else window
                        allowed[j, torch.from_numpy(cats[use].astype(np.int64))] = True
                item_ok = allowed[:, torch.from_numpy(cats.astype(np.int64))]
                scores.masked_fill_(~item_ok, -torch.inf)
            r = rank_in_scores(scores, scores.gather(1, rows[:, None])[:, 0]).numpy()
            post[idx[ok]] = r[ok]
    return plain, post


def candidate_columns(counts: Sequence[int], n_items: int) -> dict:
    """``candidates_mean`` (rows scored per call) and ``catalog_share`` (over n_items)."""
    mean = float(np.mean(counts)) if len(counts) else 0.0
    return {"candidates_mean": round(mean, 1),
            "catalog_share": round(mean / n_items, 6) if n_items else 0.0}


def category_accuracy(rec, inputs: list[np.ndarray], targets: np.ndarray,
                      ks: Sequence[int]) -> dict:
    """``category_top<K>`` for each K: the share of examples whose target's category is
    among the K highest ``category_scores`` of the encoder (ties: the smaller category, as
    the runtime ranks them) for the SDK's window of the input. Every example counts: a
    target unknown to the bundle or without a category, or an input without a known item,
    is a miss. Runs the (memoised) encoder through ``Recommender.plan``/``encode``."""
    served = rec._served
    ids, cats = served.bundle.ids, np.asarray(served.bundle.item_category)
    t_rows = ids.rows(ids.coerce(targets))
    t_cats = np.where(t_rows >= 0, cats[np.maximum(t_rows, 0)], -1)
    ks = sorted({int(k) for k in ks if 1 <= k <= served.n_categories})
    rank = np.full(len(targets), np.iinfo(np.int64).max, dtype=np.int64)
    for i, x in enumerate(inputs):
        if t_cats[i] < 0:
            continue
        plan = rec.plan(x)
        outputs = rec.encode(plan)
        if outputs is None:
            continue
        scores = np.asarray(outputs[served.category_name]).ravel()
        c = t_cats[i]
        # 0-based rank in the stable descending order (ties: smaller category first)
        rank[i] = int((scores > scores[c]).sum() + (scores[:c] == scores[c]).sum())
    out = {f"category_top{k}": round(float((rank < k).mean()), 6) if len(rank) else 0.0
           for k in ks}
    out["n"] = int(len(targets))
    out["targets_with_category"] = int((t_cats >= 0).sum())
    return out


class RandomCandidates:
    """The random control of the "categories" policy (the paper's Figure 2a): for each call
    the plan of ``candidates="categories", categories=K``, the encoder's outputs and the
    kernel query as ``Recommender.run`` builds them, then the query's candidate rows
    replaced by as many rows drawn uniformly without replacement from the catalog (one
    seeded generator per K, drawn in example order), scored by ``Recommender.score`` (the
    serving kernel). Session items are merged as ``run`` does when they may be returned.
    ``n_candidates`` of each call is kept in ``counts``."""

    def __init__(self, rec, K: int, k: int, seed: int = RANDOM_SEED, **options):
        self.rec, self.K, self.k, self.options = rec, K, k, options
        self.rng = np.random.default_rng((seed, K))
        self.counts: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rec = self.rec
        plan = rec.plan(x, k=self.k, candidates="categories", categories=self.K,
                        **self.options)
        outputs = rec.encode(plan)
        if outputs is None:  # no known item: the popularity fallback, as recommend()
            out = rec.run(plan)
            self.counts.append(out.n_candidates)
            return out.item_ids
        q = rec.kernel_query(plan, outputs)
        size = 0 if q.candidates is None else len(q.candidates)
        n_items = plan.served.n_items
        cands = np.sort(self.rng.choice(n_items, size=min(size, n_items), replace=False))
        q = q._replace(candidates=cands.astype(np.int32))
        rows, scores, n_cand = rec.score(plan, q)
        if not plan.exclude_session_items:
            rows, scores, n_cand = rec.add_repeats(plan, outputs, q, rows, scores, n_cand)
        self.counts.append(int(n_cand))
        return plan.served.bundle.ids.external(rows)


def full_catalog_ranks_torch(checkpoint: str | Path, inputs, targets, progress: bool
                             ) -> np.ndarray:
    """The torch model's own ranking over the whole catalog, with its training-time session
    handling (last 20 items, same-category filter if trained so)."""
    from .checkpoint import load_checkpoint
    from .examples import make_eval_examples
    from .metrics import rank_targets

    model, catalog, config = load_checkpoint(checkpoint)
    sessions = [np.concatenate([catalog.rows(x), catalog.rows(np.array([t]))])
                for x, t in zip(inputs, targets)]
    x_rows, t_rows = make_eval_examples(sessions, catalog, config["train_config"])
    ranks = rank_targets(model, x_rows, t_rows, progress=progress)
    return np.where(ranks >= catalog.n_items, MISS, ranks)


def evaluate(bundle: str | Path, test_csv: str | Path, *, train_csv: str | Path | None = None,
             checkpoint: str | Path | None = None, limit: int | None = None,
             sweep: Sequence[int] = SWEEP, latency_sessions: int = LATENCY_SESSIONS,
             protocols: Sequence[str] = PROTOCOLS, prefixes_sample: int | None = None,
             progress: bool = True, log: Callable[[str], None] = print,
             name: str | None = None,
             category_sweep: Sequence[int] = CATEGORY_SWEEP) -> dict:
    """All rows of the evaluation table for each protocol, as {"rows": [...], "info": {...}};
    every row carries its ``protocol``. ``limit``: the first N test sessions (all their
    prefixes in the "prefixes" protocol). ``prefixes_sample``: the "prefixes" protocol on
    an evenly spread subsample of that many test sessions (:func:`sample_sessions`; every
    prefix of each), recorded in ``info["prefixes_sample"]``. ``name``: the prefix of the
    bundle's rows (default: the model kind, e.g. "grainrec/sdk")."""
    from sessrec_sdk import Recommender

    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rec = Recommender.load(bundle)
    kind = name or rec.manifest["model"]["kind"]
    served = rec._served
    knn_only = served.knn_only
    encoder = served.encoder
    memo = None if knn_only else MemoEncoder(encoder)
    rows: list[dict] = []
    info = {"bundle": str(Path(bundle).resolve()), "test": str(test_csv),
            "protocols": list(protocols), "n_examples": {},
            "defaults": rec.manifest["defaults"], "inference": rec.manifest["inference"],
            "unknown_targets": {}}
    train_sessions = D.sessionize(D.read_events(train_csv)) if train_csv else None
    baseline = TransitionBaseline(train_sessions) if train_csv else None
    repeat = RepeatBaseline(baseline) if train_csv else None
    vsknn = VsknnBaseline(train_sessions) if train_csv else None
    popular = rec.item_ids[np.asarray(served.bundle.popularity[:max(KS)])]
    k = max(KS)

    for protocol in protocols:
        sample = prefixes_sample if protocol == "prefixes" else None
        inputs, targets = load_test_examples(test_csv, protocol, sample)
        if sample is not None:
            n_all = len(load_test_examples(test_csv, "last")[1])
            info["prefixes_sample"] = {
                "sessions": min(sample, n_all), "of_sessions": n_all,
                "rule": "every (n/sample)-th test session in file order, all its prefixes"}
        if limit:
            n_sessions = limit
            if protocol == "prefixes":  # every prefix of the first `limit` sessions
                lengths = [len(s) for s in load_test_examples(test_csv, "last", sample)[0]]
                n_sessions = sum(lengths[:limit])
            inputs, targets = inputs[:n_sessions], targets[:n_sessions]
        n = len(targets)
        info["n_examples"][protocol] = n
        info["unknown_targets"][protocol] = int((served.bundle.ids.rows(targets) < 0).sum())
        if protocol == "last":
            info["n_sessions"] = n
            info["latency_sessions"] = min(latency_sessions, n)

        def add(row: dict, protocol=protocol) -> None:
            row = {"method": row["method"], "protocol": protocol,
                   **{c: v for c, v in row.items() if c != "method"}}
            rows.append(row)
            log(format_row(row))

        log(f"protocol {protocol}: {n:,} examples")
        log(header())
        add(evaluate_lists("popularity", lambda x: popular, inputs, targets, False))
        if baseline is not None:
            add(evaluate_lists("transition", lambda x: baseline.recommend(x, k),
                               inputs, targets, progress))
            add(evaluate_lists("repeat", lambda x: repeat.recommend(x, k),
                               inputs, targets, progress))
            add(evaluate_lists("vsknn", lambda x: vsknn.recommend(x, k),
                               inputs, targets, progress))
        timed = inputs[:latency_sessions] if protocol == "last" else []

        def sdk_row(name: str, timed=timed, inputs=inputs, targets=targets, add=add,
                    extra: dict | None = None, call=None, counts=None, **options) -> None:
            if call is None:
                counts = []

                def call(x):
                    out = rec.recommend(x, k=k, **options)
                    counts.append(out.n_candidates)
                    return out.item_ids
            lat = {}
            if timed:
                served.encoder = encoder  # latency: whole calls, encoder included
                for x in timed[:200]:  # warm caches and code paths before anything is timed
                    call(x)
                lat = latency(call, timed)
            served.encoder = memo
            counts.clear()
            row = evaluate_lists(name, call, inputs, targets, progress)
            add({**row, **lat, **candidate_columns(counts, served.n_items), **(extra or {})})

        if knn_only:  # a session-kNN bundle: no encoder, no full-catalog ranking
            sdk_row(f"{kind}/sdk")
            sdk_row(f"{kind}/sdk/exclude", exclude_session_items=True)
            sdk_row(f"{kind}/sdk/no-bonus", exclude_session_items=False, repeat_bonus=0.0)
            continue
        if checkpoint:
            ranks = full_catalog_ranks_torch(checkpoint, inputs, targets, progress)
            add({"method": f"{kind}/full", **ranking_metrics(ranks), "n": n})
        served.encoder = memo  # evaluation only: this Recommender is private to evaluate()
        plain, post = full_catalog_ranks_sdk(rec, inputs, targets, progress)
        add({"method": f"{kind}/full-sdk-query", **ranking_metrics(plain), "n": n})
        add({"method": f"{kind}/full-sdk-post", **ranking_metrics(post), "n": n,
             "post_processing": {"category_filter": rec.manifest["defaults"]["category_filter"]
                                 if rec.manifest["has_categories"] else "none",
                                 "exclude_session_items":
                                     rec.manifest["defaults"]["exclude_session_items"]}})

        sdk_row(f"{kind}/sdk")
        filters = ("last", "session", "none") if rec.manifest["has_categories"] else ("none",)
        for f in filters:
            sdk_row(f"{kind}/sdk/{f}", category_filter=f)
        if served.knn_kernel is not None:  # a session index rides along: both policies
            sdk_row(f"{kind}/sdk/candidates=neighbors", candidates="neighbors", knn_weight=0.0)
            sdk_row(f"{kind}/sdk/candidates=sessions", candidates="sessions", knn_weight=0.0)
        width = rec.manifest["neighbors_per_item"]
        skipped = [m for m in sweep if m > width]
        if skipped:
            log(f"(sweep: neighbors {skipped} skipped, the bundle has K={width}; export with "
                f"--neighbors {max(sweep)} for the whole curve)")
        sweep_options = {}  # the sweep is over neighbor candidates, whatever the default
        if served.knn_kernel is not None:
            sweep_options = {"candidates": "neighbors", "knn_weight": 0.0}
        elif rec.manifest["defaults"]["candidates"] != "neighbors":
            sweep_options = {"candidates": "neighbors"}
        for m in (m for m in sweep if m <= width):
            sdk_row(f"{kind}/sdk/neighbors={m}", neighbors=m, **sweep_options)
        if served.category_name is not None:  # the encoder predicts categories
            ks = [c for c in category_sweep if c <= served.n_categories]
            acc = category_accuracy(rec, inputs, targets, ks)
            info.setdefault("category_accuracy", {})[protocol] = acc
            log("category accuracy: " + ", ".join(
                f"{c} {v:.4f}" for c, v in acc.items() if c.startswith("category_top")))
            sdk_row(f"{kind}/sdk/neighbors", candidates="neighbors")
            sdk_row(f"{kind}/sdk/predicted", candidates="neighbors",
                    category_filter="predicted")
            for c in ks:
                hit = {"category_top1": acc["category_top1"],
                       f"category_top{c}": acc[f"category_top{c}"],
                       "target_category_hit": acc[f"category_top{c}"]}
                sdk_row(f"{kind}/sdk/categories={c}", extra=hit, candidates="categories",
                        categories=c, category_filter="none")
            for c in ks:
                control = RandomCandidates(rec, c, k, category_filter="none")
                sdk_row(f"{kind}/sdk/random={c}", timed=[], call=control,  # not timed
                        counts=control.counts, extra={"seed": RANDOM_SEED})
        served.encoder = encoder
    return {"rows": rows, "info": info}


# ------------------------------------------------------------------------ output


COLUMNS = [f"{m}@{k}" for k in KS for m in ("HR", "MRR", "NDCG")]


def header() -> str:
    cols = "".join(f"{c:>9}" for c in COLUMNS)
    return f"{'method':<40}{'protocol':<10}{cols}{'median us':>11}{'p99 us':>9}"


def format_row(row: dict) -> str:
    cols = "".join(f"{row[c]:>9.4f}" for c in COLUMNS)
    lat = row.get("latency_median_us")
    p99 = row.get("latency_p99_us")
    lat_s = f"{lat:>11.1f}{p99:>9.1f}" if lat is not None else f"{'':>11}{'':>9}"
    return f"{row['method']:<40}{row.get('protocol', ''):<10}{cols}{lat_s}"


def plot(result: dict, path: str | Path) -> None:
    """Accuracy and latency against neighbors per item (the GRAINRec trade-off curve)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("protocol", "last") == "last"] or result["rows"]
    sweep = [r for r in rows if "/sdk/neighbors=" in r["method"]]
    if not sweep:
        raise ValueError("no neighbors sweep in the result to plot")
    xs = [int(r["method"].rsplit("=", 1)[1]) for r in sweep]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(xs, [r["HR@20"] for r in sweep], "o-", label="HR@20")
    ax.plot(xs, [r["MRR@20"] for r in sweep], "s-", label="MRR@20")
    full = [r for r in rows if r["method"].endswith("/full")]
    for r in full:
        ax.axhline(r["HR@20"], ls="--", color="C0", lw=0.8, label="HR@20 full catalog")
    ax.set_xlabel("neighbors per session item")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["latency_median_us"] for r in sweep], "^:", color="C3",
             label="median latency")
    ax2.set_ylabel("recommend() median latency (µs)")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    n_sessions = result["info"].get("n_sessions", 0)
    ax.set_title(f"Accuracy and latency vs neighbors per item ({n_sessions:,}"
                 " test sessions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_categories(result: dict, path: str | Path, protocol: str = "last") -> None:
    """The K sweep of the "categories" policy against its random control (the paper's
    Figure 2a): HR@20 and MRR@20 against the share of the catalog scored."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("protocol", "last") == protocol]
    cat = [r for r in rows if "/sdk/categories=" in r["method"]]
    rnd = [r for r in rows if "/sdk/random=" in r["method"]]
    if not cat:
        raise ValueError("no categories=K rows in the result to plot")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for metric, style, color in (("HR@20", "o", "C0"), ("MRR@20", "s", "C1")):
        ax.plot([100 * r["catalog_share"] for r in cat], [r[metric] for r in cat],
                style + "-", color=color, label=f"{metric} top-K predicted categories")
        if rnd:
            ax.plot([100 * r["catalog_share"] for r in rnd], [r[metric] for r in rnd],
                    style + ":", color=color, alpha=0.6, label=f"{metric} random, same size")
        for r in (r for r in rows if r["method"].endswith("/full")):
            ax.axhline(r[metric], ls="--", color=color, lw=0.8,
                       label=f"{metric} full catalog")
    for r in cat:
        ax.annotate(f"K={r['method'].rsplit('=', 1)[1]}",
                    (100 * r["catalog_share"], r["HR@20"]), textcoords="offset points",
                    xytext=(3, 4), fontsize=7)
    ax.set_xlabel("share of the catalog scored per call (%)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(bottom=0)
    ax.legend(loc="center right", fontsize=7)
    n = result["info"].get("n_examples", {}).get(protocol, 0)
    ax.set_title(f"Top-K predicted categories vs random candidates ({protocol}, {n:,} "
                 "examples)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sessrec evaluate", description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--test", required=True, help="test event CSV (last event = target)")
    p.add_argument("--train", help="training event CSV, for the transition baseline "
                   "(default: the checkpoint's)")
    p.add_argument("--checkpoint", help="checkpoint directory, for the full-catalog row")
    p.add_argument("--json", help="write {'rows': [...], 'info': {...}} here")
    p.add_argument("--plot", help="write a PNG of accuracy and latency vs neighbors")
    p.add_argument("--plot-categories", metavar="PNG",
                   help="write a PNG of the categories=K sweep against its random control "
                   "(bundles whose encoder predicts categories; protocol last)")
    p.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="both",
                   help="last: the last event of each test session; prefixes: every prefix "
                   "predicts its next event; both (default)")
    p.add_argument("--limit", type=int, help="evaluate only the first N test sessions")
    p.add_argument("--prefixes-sample", type=int, metavar="N",
                   help="prefixes protocol on an evenly spread subsample of N test sessions "
                   "(every n/N-th session in file order, all its prefixes); default: all")
    p.add_argument("--latency-sessions", type=lambda v: max(1, int(v)), default=LATENCY_SESSIONS,
                   help=f"timed recommend() calls per SDK row (default {LATENCY_SESSIONS})")
    p.add_argument("--name", help="prefix of the bundle's rows (default: the model kind), "
                   "e.g. to tell a hybrid bundle from the plain one in one table")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train_csv = args.train
    if train_csv is None and args.checkpoint:
        cfg = json.loads((Path(args.checkpoint) / "config.json").read_text())
        train_csv = cfg.get("data", {}).get("train")
    t0 = time.perf_counter()
    result = evaluate(args.bundle, args.test, train_csv=train_csv, checkpoint=args.checkpoint,
                      limit=args.limit, latency_sessions=args.latency_sessions,
                      protocols=PROTOCOLS if args.protocol == "both" else (args.protocol,),
                      prefixes_sample=args.prefixes_sample, name=args.name,
                      progress=not args.no_progress and sys.stderr.isatty())
    result["info"]["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    if args.plot_categories:
        plot_categories(result, args.plot_categories)
    print(f"({result['info']['n_examples']} examples per protocol, "
          f"{result['info']['unknown_targets']} "
          f"targets unknown to the bundle; {result['info']['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
