"""Session-kNN (V-SKNN / VMIS-kNN): a model with no weights, only an index of past sessions.

Ludewig & Jannach's V-SKNN finds the training sessions most similar to the current one
(items weighted by how recently the shopper saw them) and recommends their items; Serenade
(Kersbergen et al., SIGMOD 2022) makes it servable: an item -> most-recent-sessions index,
a bounded sample of candidate sessions and a bounded neighborhood (VMIS-kNN). The scoring
itself is the SDK's kernel (sessrec_sdk/kernels/sknn.py, docs/kernels.md), so training,
the export's checks, the evaluation and serving all run the same code.

"Training" (``sessrec train --model sknn``):

1. split the training sessions: the most recent ``valid_fraction`` are the validation
   sessions (as the bundle will serve sessions later than its training data);
2. index the rest and evaluate a small grid around the preset (neighbor sessions, idf
   weighting, session window, the neighbor-position table of STAN, Garg et al. SIGIR 2019:
   how much an item gains by following the shared item closely in a neighbor session) on
   the validation sessions, then the repeat handling (never recommend session items, or
   recommend them with a bonus); the most accurate setting (HR@20, then MRR@20) wins and
   every trial's figures are recorded;
3. index all training sessions (validation included: the most recent sessions are the
   most useful neighbors) with the chosen setting and write a checkpoint directory:
   ``config.json``, the catalog and the index arrays (``.npy``, no pickle).

``sessrec export`` turns that checkpoint into a bundle with scorer "sknn".
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import data as D
from ..metrics import list_rank, ranking_metrics

#: Presets hold published parameters. ``fast``: V-SKNN as evaluated by Ludewig & Jannach
#: (k=100 neighbor sessions, linear decay, a sample of the 500 most recent candidate
#: sessions, whole session); ``paper``: VMIS-kNN with the defaults of Serenade's
#: configuration (m=500 most recent sessions, k=500 neighbors, idf item weights, the last
#: 2 session items). Neither weighs an item by its place in a neighbor session
#: (``position_after`` 0, ``position_before`` 1: see :func:`position_table`). Training
#: tunes around them on validation sessions (``tune``).
PRESETS = {
    "fast": {"sample": 500, "neighbors": 100, "idf": False, "window": 200,
             "position_after": 0.0, "position_decay": 1.0, "position_before": 1.0,
             "tune": True},
    "paper": {"sample": 500, "neighbors": 500, "idf": True, "window": 2,
              "position_after": 0.0, "position_decay": 1.0, "position_before": 1.0,
              "tune": True},
}
#: The grid tried on the validation sessions (besides the preset's own values).
GRID = {"window": (2, 5, 20, 200), "neighbors": (50, 100, 200, 500), "idf": (False, True),
        "sample": (250, 500, 1000), "position_after": (1.0, 3.0, 10.0, 30.0),
        "position_decay": (1.0, 2.0, 4.0, 8.0, 16.0, 64.0),
        "position_before": (1.0, 0.5, 0.25, 0.0)}
#: the settings that make the neighbor-position table
POSITION_KEYS = ("position_after", "position_decay", "position_before")
#: offsets past +-POSITION_HALF weigh as +-POSITION_HALF
POSITION_HALF = 8
#: Repeat bonuses tried, as multiples of the median top-1 kNN score on validation;
#: None = session items are never recommended.
BONUS_MULTIPLES = (None, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 1e3)
INDEX_FILES = ("item_indptr", "item_sessions", "session_indptr", "session_items",
               "item_weight")
CONFIG_FILE = "config.json"


def build_index(sessions: Sequence[np.ndarray], n_items: int, *, sample: int,
                idf: bool) -> dict[str, np.ndarray]:
    """The session index of ``sessions`` (catalog rows, in time order: session i is older
    than session i + 1): each session's distinct items (first occurrence order), each
    item's ``sample`` most recent sessions (most recent first), and the item weights
    (idf = ln(distinct (session, item) pairs / sessions holding the item), or 1)."""
    lengths = np.fromiter((len(s) for s in sessions), np.int64, len(sessions))
    flat = (np.concatenate([np.asarray(s, np.int64) for s in sessions]) if len(sessions)
            else np.empty(0, np.int64))
    seg = np.repeat(np.arange(len(sessions), dtype=np.int64), lengths)
    keep = flat >= 0
    flat, seg = flat[keep], seg[keep]
    # distinct (session, item) pairs, in first-occurrence order within each session
    _, first = np.unique(seg * n_items + flat, return_index=True)
    first.sort()
    p_seg, p_item = seg[first], flat[first]
    session_indptr = np.zeros(len(sessions) + 1, np.int64)
    np.cumsum(np.bincount(p_seg, minlength=len(sessions)), out=session_indptr[1:])
    # item -> sessions, most recent first, at most `sample` each
    order = np.lexsort((-p_seg, p_item))
    it, se = p_item[order], p_seg[order]
    counts = np.bincount(it, minlength=n_items)
    starts = np.zeros(n_items + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    rank = np.arange(len(it)) - starts[it]
    kept = rank < sample
    item_indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.minimum(counts, sample), out=item_indptr[1:])
    if idf:
        with np.errstate(divide="ignore"):
            weight = np.where(counts > 0, np.log(len(p_item) / np.maximum(counts, 1)), 0.0)
    else:
        weight = np.ones(n_items)
    return {"item_indptr": item_indptr, "item_sessions": se[kept].astype(np.int32),
            "session_indptr": session_indptr, "session_items": p_item.astype(np.int32),
            "item_weight": weight.astype(np.float32)}


def position_table(setting: dict) -> np.ndarray | None:
    """The kernel's neighbor-position table of a setting (None: every place weighs 1).

    An item at offset d from the shared item in a neighbor session weighs
    ``1 + after * exp(-(d - 1) / decay)`` after it (d >= 1), ``before`` ahead of it
    (d <= -1) and 1 at d = 0; offsets clamp to +-POSITION_HALF. STAN (Garg et al.) weighs
    both sides by ``exp(-|d| / lambda)``; here the items that follow, the likely next
    clicks, get the boost on top of the plain V-SKNN weight, so ``after = 0, before = 1``
    is V-SKNN itself."""
    after, decay, before = (float(setting.get(k, d)) for k, d in
                            zip(POSITION_KEYS, (0.0, 1.0, 1.0)))
    if after == 0.0 and before == 1.0:
        return None
    d = np.arange(-POSITION_HALF, POSITION_HALF + 1)
    table = np.ones(d.shape[0])
    table[d > 0] = 1.0 + after * np.exp(-(d[d > 0] - 1) / decay)
    table[d < 0] = before
    return table.astype(np.float32)


def position_entry(setting: dict) -> dict:
    """The manifest's ``sknn.position_weight`` of a setting (float32 values, which JSON
    keeps exactly), or nothing when every place weighs 1."""
    table = position_table(setting)
    return {} if table is None else {"position_weight": [float(x) for x in table]}


def make_kernel(index: dict[str, np.ndarray], categories: np.ndarray | None = None,
                backend: str = "auto", position: np.ndarray | None = None):
    from sessrec_sdk.kernels.sknn import SknnIndex, make_sknn_kernel

    sk = SknnIndex(*(index[name] for name in INDEX_FILES), categories, position)
    return sk, make_sknn_kernel(sk, backend)


class KnnRecommender:
    """An in-memory session-kNN index answering lists of rows: the validation trials and
    the V-SKNN baseline of the evaluation (the same kernel the SDK serves)."""

    def __init__(self, index: dict[str, np.ndarray], *, sample: int, neighbors: int,
                 window: int, categories: np.ndarray | None = None, backend: str = "auto",
                 position: np.ndarray | None = None):
        from sessrec_sdk.kernels.sknn import SknnScratch

        self.categories = None if categories is None else np.asarray(categories, np.int32)
        self.index, self.kernel = make_kernel(index, self.categories, backend, position)
        self.scratch = SknnScratch(self.index.n_items, self.index.n_sessions, sample)
        self.sample, self.neighbors, self.window = sample, neighbors, window
        self._none = np.empty(0, np.int32)

    def top(self, rows: np.ndarray, k: int = 20, exclude_session: bool = False,
            bonus: float = 0.0, category_filter: str = "none"
            ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the top ``k`` for a session of rows (the SDK's call: the
        last ``window`` known rows, the same filter semantics)."""
        from sessrec_sdk.kernels.sknn import SknnQuery

        rows = np.asarray(rows, np.int32)
        rows = np.ascontiguousarray(rows[rows >= 0][-self.window:])
        if rows.size == 0:
            return self._none, np.empty(0, np.float32)
        cats = None
        if category_filter == "last":
            cats = self.categories[rows[-1:]]
        elif category_filter == "session":
            cats = np.unique(self.categories[rows])
        q = SknnQuery(session=rows, sample=self.sample,
                      neighbors=self.neighbors, k=k, exclude_session=exclude_session,
                      session_bonus=float(bonus), excluded=self._none, allowed=None,
                      allowed_cats=cats)
        top, scores, _ = self.kernel.top_k(q, self.scratch)
        return top, scores


def _metrics(recommend: Callable[[np.ndarray], np.ndarray], inputs, targets) -> dict:
    ranks = np.fromiter((list_rank(recommend(x), t) for x, t in zip(inputs, targets)),
                        np.int64, len(targets))
    m = ranking_metrics(ranks)
    return {"HR@20": round(m["HR@20"], 6), "MRR@20": round(m["MRR@20"], 6)}


def _better(a: dict, b: dict | None) -> bool:
    return b is None or (a["HR@20"], a["MRR@20"]) > (b["HR@20"], b["MRR@20"])


def _same_table(a: dict, b: dict) -> bool:
    ta, tb = position_table(a), position_table(b)
    return (ta is None and tb is None) or (
        ta is not None and tb is not None and np.array_equal(ta, tb))


def tune(train_rows: list[np.ndarray], valid_rows: list[np.ndarray], n_items: int,
         preset: dict, categories: np.ndarray | None = None,
         log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
    """(chosen setting, every trial with its validation HR@20 / MRR@20). Coordinate search
    from the preset's values: whether session items may be recommended, the window, the
    neighbor sessions, idf, the sample, the category filter (catalogs with categories),
    then the repeat bonus. Validation examples: each validation session's last item after
    the events before it."""
    valid = [np.asarray(s) for s in valid_rows if len(s) >= 2]
    inputs, targets = [s[:-1] for s in valid], np.array([s[-1] for s in valid])
    best = {k: preset[k] for k in ("sample", "neighbors", "idf", "window", *POSITION_KEYS)}
    best.update(category_filter="none", exclude_session_items=False, repeat_bonus=0.0)
    trials: list[dict] = []
    indexes: dict[tuple[bool, int], dict] = {}  # the index a setting is served from

    def index_of(setting: dict) -> dict:
        key = (setting["idf"], setting["sample"])
        if key not in indexes:
            indexes[key] = build_index(train_rows, n_items, sample=key[1], idf=key[0])
        return indexes[key]

    def recommender(setting: dict) -> KnnRecommender:
        return KnnRecommender(index_of(setting), sample=setting["sample"],
                              neighbors=setting["neighbors"], window=setting["window"],
                              categories=categories, position=position_table(setting))

    def run(setting: dict) -> dict:
        rec = recommender(setting)
        t0 = time.perf_counter()
        m = _metrics(lambda x: rec.top(x, 20, setting["exclude_session_items"],
                                       setting["repeat_bonus"], setting["category_filter"])[0],
                     inputs, targets)
        trials.append({**setting, **m})
        log(f"  validation {json.dumps(setting)}: HR@20 {m['HR@20']:.4f} MRR@20 "
            f"{m['MRR@20']:.4f} ({time.perf_counter() - t0:.1f} s)")
        return m

    best_m = run(best)
    grid = {"exclude_session_items": (False, True), **GRID,
            "category_filter": ("none", "last", "session") if categories is not None
            else ("none",)}
    for key, values in grid.items():
        for value in values:
            if value == best[key]:
                continue
            trial = {**best, key: value}
            if key in POSITION_KEYS and _same_table(trial, best):
                continue  # e.g. another decay while nothing follows with a boost
            m = run(trial)
            if _better(m, best_m):
                best, best_m = trial, m
    # repeat handling: the bonus in units of the median top-1 score on validation
    rec = recommender(best)
    tops = [rec.top(x, 1, category_filter=best["category_filter"])[1] for x in inputs[:2000]]
    unit = float(np.median([t[0] for t in tops if t.size])) if tops else 1.0
    base = dict(best)
    for mult in BONUS_MULTIPLES:
        trial = ({**base, "exclude_session_items": True, "repeat_bonus": 0.0} if mult is None
                 else {**base, "exclude_session_items": False,
                       "repeat_bonus": round(mult * unit, 6)})
        if any(trial == {k: t[k] for k in trial} for t in trials):
            continue
        m = run(trial)
        if _better(m, best_m):
            best, best_m = trial, m
    return {**best, "validation": best_m}, trials


def train_sknn(preset_name: str, sessions: list[np.ndarray], catalog: D.Catalog,
               out_dir: str | Path, *, overrides: dict | None = None,
               valid_fraction: float = 0.1, valid_split: str = "recent",
               data_info: dict | None = None, log: Callable[[str], None] = print) -> Path:
    """Choose the setting on validation sessions and write the checkpoint directory."""
    from ..checkpoint import atomic_json, save_catalog

    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; known: {sorted(PRESETS)}")
    preset = {**PRESETS[preset_name], **(overrides or {})}
    unknown = set(preset) - set(PRESETS["fast"])
    if unknown:
        raise ValueError(f"unknown settings for sknn: {sorted(unknown)}")
    after, decay, before = (preset[k] for k in POSITION_KEYS)
    if not (all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                for v in (after, decay, before)) and after >= 0 and decay > 0 and before >= 0):
        raise ValueError("sknn needs position_after >= 0, position_decay > 0 and "
                         "position_before >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trials: list[dict] = []
    chosen = {k: preset[k] for k in ("sample", "neighbors", "idf", "window", *POSITION_KEYS)}
    chosen.update(category_filter="none", exclude_session_items=False, repeat_bonus=0.0)
    train_s, valid_s = D.split_validation(sessions, valid_fraction, 0, valid_split)
    categories = np.asarray(catalog.categories) if catalog.n_categories else None
    if preset["tune"] and valid_s:
        log(f"sknn: choosing the setting on {len(valid_s):,} validation sessions "
            f"({valid_split} {valid_fraction:.0%} of training)")
        chosen, trials = tune(train_s, valid_s, catalog.n_items, preset, categories, log)
    validation = chosen.pop("validation", None)
    index = build_index(sessions, catalog.n_items, sample=chosen["sample"], idf=chosen["idf"])
    for name in INDEX_FILES:
        np.save(out / f"sknn_{name}.npy", index[name], allow_pickle=False)
    save_catalog(catalog, out)
    atomic_json({
        "model": "sknn", "preset": preset_name, "model_config": chosen,
        "overrides": dict(overrides or {}), "seed": 0,
        "valid_fraction": valid_fraction, "valid_split": valid_split,
        "n_items": catalog.n_items, "n_sessions": len(sessions),
        "n_train_sessions": len(train_s), "n_valid_sessions": len(valid_s),
        "data": dict(data_info or {}),
        "validation": {"metric": "HR@20, then MRR@20 (last item of each validation "
                                 "session)", "chosen": validation, "trials": trials},
        "best_metrics": validation, "best_epoch": None,
        "seconds": round(time.perf_counter() - t0, 1),
    }, out / CONFIG_FILE)
    return out


def load_sknn(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, index arrays) of an sknn checkpoint."""
    path = Path(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    index = {name: np.load(path / f"sknn_{name}.npy", allow_pickle=False)
             for name in INDEX_FILES}
    return config, index
