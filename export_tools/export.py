"""Checkpoint -> bundle: ONNX encoder, item matrix, nearest-neighbor matrix, stats, defaults.

``sessrec export CKPT --out BUNDLE`` runs, in order:

1. load the checkpoint (weights only, no pickle) and the training sessions it names;
2. export the session encoder with ``torch.onnx.export(..., dynamo=True)`` (the older
   TorchScript exporter silently mis-exports index_add with repeated indices) with a
   dynamic session length;
3. compute the exact top-K nearest-neighbor matrix in blocks: by default ("model") the
   items the model itself ranks highest after the one-item session [item], which keeps
   the true next item among the candidates far more often than cosine or inner-product
   similarity of the item embeddings (both selectable);
4. measure on the training sessions how often the next item shares the last item's
   category, any session item's category, or repeats a session item, and choose the
   bundle's default "exclude session items" and a first default category filter from
   those rates;
5. write the bundle to a temporary directory, load it with the SDK and check that the SDK's
   scores equal the torch model's on sampled real sessions (including repeated items);
6. when the checkpoint held out validation sessions (``sessrec train`` does: the most
   recent 10% of its training sessions by default), run the SDK on them and choose, by
   HR@20 then MRR@20, whether session items may be recommended, the session window, the
   default category filter and the repeat bonus (:func:`defaults_by_validation`): the
   rates of step 4 say how often a filter keeps the next item, not whether ranking inside
   fewer candidates wins. The manifest records every trial under ``validation``
   (``sessrec inspect`` prints them); only then move the bundle into place.

An ``sknn`` checkpoint (a session index, no weights) goes through
:func:`export_sknn_bundle` instead: its setting was chosen on validation at training.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import data as D
from .defaults import (  # noqa: F401  (re-exported)
    FILTER_KEEP_RATE,
    REPEAT_RATE_TO_KEEP_SEEN,
    choose_defaults,
    data_stats,
    popularity,
)
from .layout import locality_order, reorder_rows
from .models.base import encoder_io
from .neighbors import model_neighbor_space, nearest_neighbors  # noqa: F401  (re-exported)
from .onnx_export import export_encoder  # noqa: F401  (re-exported)

#: Largest |SDK score - torch score| (and |SDK query - torch query|) the export accepts,
#: over the top-50 candidates of every parity session; above it no bundle is written.
PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The exported encoder + SDK do not reproduce the torch model's scores."""


#: Session windows (items the encoder sees) tried on the validation sessions.
WINDOWS = (1, 2, 3, 5, 10, 20)
#: Repeat bonuses tried, in units of the median spread of a top-20 list (top-1 score
#: minus 20th) on validation: from a nudge to "session items first".
BONUS_MULTIPLES = (0.1, 0.25, 0.5, 1.0, 2.0, 1e3)
#: Weights of the kNN score (scaled to [0, 1] per call) blended into the model's, in the
#: same units, for bundles that carry a session index (``--session-index``).
KNN_WEIGHT_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Top predicted categories (``categories=K``) tried for bundles whose encoder predicts
#: categories: the items of the top K as candidates, or K of the "predicted" filter.
CATEGORY_KS = (1, 2, 3, 5, 10)


def defaults_by_validation(bundle: Path, valid_rows: list[np.ndarray], catalog: D.Catalog,
                           progress: bool, log=print) -> tuple[dict, list[dict]]:
    """Choose the bundle's session window, default category filter and repeat handling
    on held-out sessions (rows; last item = the target), the SDK answering each
    validation session as it would in service: a coordinate search from the written
    defaults, best HR@20 (then MRR@20) kept; returns (chosen setting with its figures,
    every trial). Ties keep the earlier setting (the written default, the less
    restrictive filter, the smaller bonus).

    For a bundle whose encoder predicts categories the search also covers the
    "predicted" filter, ``candidates`` "neighbors" / "categories" and then ``categories``
    (K) in :data:`CATEGORY_KS` (with "categories" candidates, or K of the "predicted"
    filter when that filter on neighbor candidates is the best so far); when "categories"
    candidates win, the category filter is tried again on them. The chosen setting and
    every trial then carry ``candidates`` and ``categories``."""
    from sessrec_sdk import Recommender

    from .evaluate import MemoEncoder
    from .metrics import list_rank, ranking_metrics

    rec = Recommender.load(bundle)
    served = rec._served
    served.encoder = MemoEncoder(served.encoder)  # one encoder run per session and window
    ids = np.asarray(catalog.item_ids)
    sessions = [np.asarray(v) for v in valid_rows]
    inputs, targets = [ids[s[:-1]] for s in sessions], ids[[s[-1] for s in sessions]]
    d = rec.manifest["defaults"]
    best = {"window": served.max_length, "category_filter": d["category_filter"],
            "exclude_session_items": d["exclude_session_items"],
            "repeat_bonus": float(d.get("repeat_bonus", 0.0))}
    hybrid = served.knn_kernel is not None  # a session index rides along: try its candidates
    if hybrid:
        best.update(candidates=d["candidates"], knn_weight=float(d.get("knn_weight", 0.0)))
    head = served.category_name is not None and served.bundle.category_indptr is not None
    if head:  # the encoder predicts categories: its candidates and K
        best.update(candidates=d["candidates"], categories=int(d["categories"]))
    trials: list[dict] = []

    def run(setting: dict) -> dict:
        served.max_length = setting["window"]
        opts = {k: setting[k] for k in ("category_filter", "exclude_session_items",
                                        "repeat_bonus", "candidates", "knn_weight",
                                        "categories")
                if k in setting}
        ranks = np.fromiter((list_rank(rec.recommend(x, k=20, **opts).item_ids, t)
                             for x, t in zip(inputs, targets)), np.int64, len(targets))
        m = ranking_metrics(ranks)
        m = {"HR@20": round(m["HR@20"], 6), "MRR@20": round(m["MRR@20"], 6)}
        trials.append({**setting, **m})
        log(f"  validation {setting}: HR@20 {m['HR@20']:.4f} MRR@20 {m['MRR@20']:.4f}")
        return m

    def better(a: dict, b: dict) -> bool:
        return (a["HR@20"], a["MRR@20"]) > (b["HR@20"], b["MRR@20"])

    best_m = run(best)
    filters = ("none", "last", "session") if rec.manifest["has_categories"] else ("none",)
    if head:
        filters = (*filters, "predicted")
    stages = [("exclude_session_items", (True, False)), ("window", WINDOWS),
              ("category_filter", filters)]
    if hybrid or head:
        stages.append(("candidates", ("neighbors",) + (("sessions",) if hybrid else ())
                       + (("categories",) if head else ())))
    if head:
        stages.append(("categories", CATEGORY_KS))
    for key, values in stages:
        for value in values:
            trial = {**best, key: value}
            if key == "categories" and trial["candidates"] != "categories" and \
                    trial["category_filter"] != "predicted":
                trial["candidates"] = "categories"  # K matters to these candidates
            if trial == best:
                continue
            m = run(trial)
            if better(m, best_m):
                best, best_m = trial, m
    if head and best["candidates"] == "categories":  # the filter, on category candidates
        for value in filters:
            trial = {**best, "category_filter": value}
            if trial == best:
                continue
            m = run(trial)
            if better(m, best_m):
                best, best_m = trial, m
    served.max_length = best["window"]
    spreads = []
    for x in inputs[:2000]:
        sc = rec.recommend(x, k=20, category_filter=best["category_filter"]).scores
        if sc.size >= 2:
            spreads.append(float(sc[0] - sc[-1]))
    unit = float(np.median(spreads)) if spreads else 1.0
    base = {**best, "exclude_session_items": False}
    for mult in BONUS_MULTIPLES:
        m = run({**base, "repeat_bonus": round(mult * unit, 6)})
        if better(m, best_m):
            best, best_m = {**base, "repeat_bonus": round(mult * unit, 6)}, m
    if hybrid:  # the kNN score blended into the model's, on the kNN candidates
        base = {**best, "candidates": "sessions"}
        for mult in KNN_WEIGHT_MULTIPLES:
            trial = {**base, "knn_weight": round(mult * unit, 6)}
            m = run(trial)
            if better(m, best_m):
                best, best_m = trial, m
        if best["knn_weight"] and not best["exclude_session_items"]:  # bonus, re-fitted
            for mult in (0.0, *BONUS_MULTIPLES):
                trial = {**best, "repeat_bonus": round(mult * unit, 6)}
                if trial == best:
                    continue
                m = run(trial)
                if better(m, best_m):
                    best, best_m = trial, m
    return {**best, **best_m}, trials


def _split(rows: list[np.ndarray], config: dict) -> tuple[list, list]:
    """The checkpoint's (training part, validation part) of ``rows``."""
    return D.split_validation(rows, config.get("valid_fraction") or 0.0, config.get("seed", 0),
                              config.get("valid_split", "random"))


def _knn_setting(session_index, sessions: list[np.ndarray], catalog: D.Catalog,
                 config: dict, log) -> tuple[dict | None, str]:
    """(the session-kNN setting of a hybrid bundle, where it came from), or (None, why
    there is none). ``session_index``: an ``sknn`` checkpoint trained on the same data,
    or "auto": the ``fast`` preset's validation search (export_tools.models.sknn.tune) on
    the checkpoint's own split, so the kNN side is chosen on the same validation sessions
    as everything else."""
    from .checkpoint import load_catalog
    from .models.sknn import PRESETS, load_sknn, tune

    if session_index is None:
        return None, "no session index asked for"
    if str(session_index) != "auto":
        kcfg, _ = load_sknn(session_index)
        if kcfg.get("model") != "sknn":
            raise ValueError(f"--session-index {session_index}: not an sknn checkpoint")
        if not np.array_equal(np.asarray(load_catalog(Path(session_index)).item_ids),
                              np.asarray(catalog.item_ids)):
            raise ValueError(f"--session-index {session_index}: built on other items than "
                             "the model's checkpoint (train both on the same data)")
        return kcfg["model_config"], str(Path(session_index).resolve())
    train_part, valid_part = _split(sessions, config)
    if not config.get("valid_fraction") or not any(len(v) >= 2 for v in valid_part):
        return None, "auto: the checkpoint has no validation sessions to choose it on"
    log(f"session-kNN for the hybrid: choosing its setting on {len(valid_part):,} "
        "validation sessions")
    categories = np.asarray(catalog.categories) if catalog.n_categories else None
    setting, _ = tune(train_part, valid_part, catalog.n_items, PRESETS["fast"], categories,
                      log=log)
    setting.pop("validation", None)
    return setting, "auto"


def _session_indexes(setting: dict, sessions: list[np.ndarray], catalog: D.Catalog,
                     config: dict, new_of_old: np.ndarray | None) -> dict:
    """The session indexes of a hybrid bundle, built with the session-kNN ``setting`` on
    the training sessions in the bundle's row numbering: one of the part that is not
    validation (for the validation search) and one of all sessions."""
    from sessrec_sdk.bundle import SessionIndex

    from .models.sknn import INDEX_FILES, build_index, position_entry

    rows = sessions if new_of_old is None else [new_of_old[s] for s in sessions]
    train_part, _ = _split(rows, config)
    out = {}
    for key, part in (("valid", train_part), ("", rows)):
        index = build_index(part, catalog.n_items, sample=setting["sample"],
                            idf=setting["idf"])
        name = f"{key}_index" if key else "index"
        out[name] = SessionIndex(*(index[f] for f in INDEX_FILES))
        out[f"{key}_info" if key else "info"] = {
            "n_sessions": len(part), "sample": setting["sample"], "idf": setting["idf"],
            "neighbors": setting["neighbors"], "window": setting["window"],
            **position_entry(setting)}
    return out


def _quiet(*_args) -> None:
    pass


def validation_sessions(sessions: list[np.ndarray], config: dict, train_csv
                        ) -> tuple[list[np.ndarray], str]:
    """The checkpoint's held-out validation sessions, rebuilt from its training data, that
    can be evaluated (known items, >= 2 events); or ([], why there are none)."""
    fraction = config.get("valid_fraction")
    if not fraction:
        return [], "the checkpoint was trained without a validation split"
    trained_on = config.get("data", {}).get("train")
    if not trained_on or Path(trained_on).resolve() != Path(train_csv).resolve():
        return [], (f"--train {train_csv} is not the checkpoint's training data "
                    f"({trained_on}), so its validation sessions are not known")
    _, valid = D.split_validation(sessions, fraction, config["seed"],
                                  config.get("valid_split", "random"))
    usable = [s for s in (np.asarray(v) for v in valid) if (s >= 0).all() and len(s) >= 2]
    if not usable:
        return [], "no validation session has two or more known items"
    return usable, ""


def parity_sessions(sessions_rows: list[np.ndarray], n: int, seed: int = 0
                    ) -> list[np.ndarray]:
    """Real sessions (random prefixes) plus variants with repeated items (a b a c b)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(sessions_rows), size=min(n, len(sessions_rows)), replace=False)
    out = []
    for i in picks:
        s = np.asarray(sessions_rows[i])
        s = s[s >= 0]
        out.append(s[: rng.integers(1, len(s) + 1)])
        if len(s) >= 2:  # interleave repeats: the graph then has multi-edges and re-entries
            rep = np.concatenate([s[:2], s[:1], s[2:3], s[1:2], s[:1]])
            out.append(rep)
    return out


def check_parity(bundle: Path, model, catalog: D.Catalog, sessions: list[np.ndarray]) -> dict:
    """Max |SDK score - torch score| over the candidates of each session; raises above
    PARITY_TOLERANCE.

    A hybrid bundle is checked without its kNN blend (``knn_weight=0``, its own
    candidates). The reference is the torch model's own scoring (``model.encode`` and
    ``model.scores``, plus the repeat head's bonus of the window's items when the model has
    one), not the exported tables, so a wrong table (scale, normalisation, bias, row
    order) shows up here. The encoder's repeat output is also compared with the torch repeat logits
    position by position (``max_abs_repeat_diff``). A float16 bundle is checked against
    the torch query times the model's rows rounded to float16 (+ bias); the report adds
    how far rounding moved the scores."""
    import torch

    from sessrec_sdk import Recommender

    from .models.base import repeat_item_scores

    rec = Recommender.load(bundle)
    repeat_name = rec._served.repeat_name
    if (repeat_name is None) != (model.repeat_head is None):
        raise ParityError("the bundle's encoder and the model disagree on the repeat head")
    half = rec.manifest["item_dtype"] == "float16"
    with torch.no_grad():
        model_matrix = model.item_matrix().detach().float()
        bias = model.item_bias()
    half_matrix = model_matrix.half().float() if half else None
    worst_query = worst_score = worst_rounding = worst_repeat = 0.0
    ids = np.asarray(catalog.item_ids)
    # a hybrid bundle's default blends the kNN score in: compare the model's own scores
    model_scores_only = {"knn_weight": 0.0} if rec._served.knn_kernel is not None else {}
    for rows in sessions:
        session = ids[rows]
        # the rows the SDK encodes, as model rows (a bundle may number its rows otherwise)
        enc_rows = catalog.rows(rec.item_ids[rec.session_rows(session)])
        items = torch.as_tensor(enc_rows[None].astype(np.int64))
        learned = 0.0
        with torch.no_grad():
            emb = model.embed(items)
            if repeat_name is None:
                q = model.encode(items, emb)
            else:
                q, states = model.encode_states(items, emb)
                repeat = model.repeat_logits(items, q, states)
                learned = repeat_item_scores(items, repeat, int(model.config["n_items"]))[0]
            exact_all = model.scores(q)[0] + learned
        q_torch = q[0].numpy()
        outputs = rec.encode(rec.plan(session))
        q_sdk = outputs[rec._served.query_name]
        worst_query = max(worst_query, float(np.abs(q_sdk - q_torch).max()))
        if repeat_name is not None:
            worst_repeat = max(worst_repeat, float(np.abs(outputs[repeat_name]
                                                          - repeat[0].numpy()).max()))
        out = rec.recommend(session, k=50, category_filter="none",
                            exclude_session_items=False, **model_scores_only)
        out_rows = torch.as_tensor(catalog.rows(out.item_ids).astype(np.int64))
        exact = exact_all[out_rows].numpy()
        if half:
            expected = (half_matrix[out_rows] @ q[0]).numpy()
            if bias is not None:
                expected = expected + bias.detach()[out_rows].numpy()
            if repeat_name is not None:
                expected = expected + learned[out_rows].numpy()
            worst_rounding = max(worst_rounding, float(np.abs(expected - exact).max()))
        else:
            expected = exact
        worst_score = max(worst_score, float(np.abs(out.scores - expected).max()))
    result = {"sessions": len(sessions), "max_abs_query_diff": worst_query,
              "max_abs_score_diff": worst_score, "tolerance": PARITY_TOLERANCE}
    if half:
        result["max_abs_float16_rounding"] = worst_rounding
    if repeat_name is not None:
        result["max_abs_repeat_diff"] = worst_repeat
    if max(worst_score, worst_query, worst_repeat) > PARITY_TOLERANCE:
        raise ParityError(f"ONNX+SDK scores differ from torch by {worst_score:.2e} (query "
                          f"{worst_query:.2e}, repeat scores {worst_repeat:.2e}) > "
                          f"{PARITY_TOLERANCE}: bundle not written")
    return result


def export_bundle(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    train_csv: str | os.PathLike | None = None,
    items_csv: str | os.PathLike | None = None,
    neighbors: int = 100,
    similarity: str = "model",
    max_session_length: int = 3,
    session_filter: str | None = None,
    category_filter: str | None = None,
    n_parity: int = 200,
    row_order: str = "locality",
    item_dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    tune_defaults: bool = True,
    session_index: str | os.PathLike | None = "auto",
) -> tuple[Path, dict]:
    """Export a checkpoint to a bundle; returns (path, report with timings and parity).

    ``tune_defaults``: choose the session window, the default category filter and the
    repeat handling on the checkpoint's validation sessions (:func:`defaults_by_validation`;
    without them the training-data rates set the defaults); ``category_filter`` then
    overrides the chosen filter. ``session_index``: the session-kNN side of a hybrid: an
    ``sknn`` checkpoint trained on the same data, "auto" (default: a session-kNN setting
    chosen on the checkpoint's validation sessions) or None. Its setting indexes the
    training sessions, so that ``candidates="sessions"`` (kNN candidates scored by the
    model, optionally blended with the kNN score) is tried on validation (on an index of
    the training part only; the bundle gets the index of every session). With "auto" the
    index stays in the bundle only when the validation search chooses it (defaults that
    use it); a given checkpoint's index always does. ``row_order``:
    "locality" numbers the bundle's rows along the neighbor graph (export_tools.layout),
    "given" keeps the model's item order. ``item_dtype="float16"`` stores the scored rows
    in half precision (half the bytes a call reads; scores move by the rounding, reported
    by the parity check) and the encoder's input rows in float32."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    from .checkpoint import read_config

    if read_config(checkpoint)["model"] == "sknn":
        return export_sknn_bundle(checkpoint, out, train_csv=train_csv, items_csv=items_csv)
    import onnx
    import onnxruntime
    import torch

    from sessrec_sdk.bundle import ROW_ORDERS, replace_dir, update_manifest, write_bundle

    from .checkpoint import load_checkpoint
    from .train import data_options, load_training_data

    if row_order not in ROW_ORDERS:
        raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
    if item_dtype not in ("float32", "float16"):
        raise ValueError(f"item_dtype must be 'float32' or 'float16', got {item_dtype!r}")
    t0 = time.perf_counter()
    model, catalog, config = load_checkpoint(checkpoint)
    data = config.get("data", {})
    train_csv = train_csv or data.get("train")
    items_csv = items_csv or data.get("items")
    if not train_csv:
        raise ValueError("the checkpoint names no training data: pass --train (and --items "
                         "if it was trained with one)")
    sessions, data_catalog = load_training_data(train_csv, items_csv, **data_options(data))
    if not np.array_equal(np.asarray(data_catalog.item_ids), np.asarray(catalog.item_ids)):
        # the checkpoint's catalog is authoritative: map the sessions onto it
        sessions = D.to_rows([np.asarray(data_catalog.item_ids)[s] for s in sessions], catalog)
    if session_filter is None:
        session_filter = ("last_category" if config["train_config"].get("same_category")
                          else "none")
    report: dict = {"checkpoint": str(Path(checkpoint).resolve())}

    tables = model.item_tables()
    matrix = tables.item_matrix
    t = time.perf_counter()
    if similarity == "model":
        queries, _ = model_neighbor_space(model)
        nbrs = nearest_neighbors(matrix, neighbors, "inner", progress=progress, queries=queries)
    else:
        nbrs = nearest_neighbors(matrix, neighbors, similarity, progress=progress)
    report["neighbors_seconds"] = round(time.perf_counter() - t, 2)
    stats = data_stats(sessions, catalog, max_session_length)
    defaults = choose_defaults(stats, neighbors)
    pop, pop_scores = popularity(sessions, catalog.n_items)
    arrays = {"item_matrix": matrix, "neighbors": nbrs, "item_ids": np.asarray(catalog.item_ids),
              "popularity": pop,
              "item_category": np.asarray(catalog.categories) if catalog.n_categories else None}
    if tables.input_embedding is not None:
        arrays["input_embedding"] = tables.input_embedding
    if tables.item_bias is not None:
        arrays["item_bias"] = tables.item_bias
    if item_dtype == "float16":
        if np.abs(matrix).max() > np.finfo(np.float16).max:
            raise ValueError("item vectors exceed the float16 range: export as float32")
        arrays.update(item_matrix=matrix.astype(np.float16), input_embedding=tables.encoder_rows)
    new_of_old = None  # bundle row of each model row
    if row_order == "locality":
        t = time.perf_counter()
        order = locality_order(nbrs)
        arrays.update(reorder_rows(order, **arrays))
        new_of_old = np.empty(catalog.n_items, np.int32)
        new_of_old[order] = np.arange(catalog.n_items, dtype=np.int32)
        report["row_order_seconds"] = round(time.perf_counter() - t, 2)
    knn = None
    valid, why_not = validation_sessions(sessions, config, train_csv)
    t = time.perf_counter()
    if str(session_index) == "auto" and not (tune_defaults and valid):
        # nothing would choose between the hybrid and the plain bundle
        setting, knn_source = None, "auto: " + (why_not or "tuning turned off")
    else:
        setting, knn_source = _knn_setting(session_index, sessions, catalog, config,
                                           print if progress else _quiet)
    if setting is not None:
        knn = _session_indexes(setting, sessions, catalog, config, new_of_old)
        report["session_index_seconds"] = round(time.perf_counter() - t, 2)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))

    try:
        t = time.perf_counter()
        report["batch_max_abs_diff"] = export_encoder(model, work / "encoder.onnx")
        report["onnx_export_seconds"] = round(time.perf_counter() - t, 2)
        write_args = dict(
            encoder=work / "encoder.onnx", popularity_scores=pop_scores,
            row_order=row_order, **arrays,
            model={"kind": config["model"], "config": model.config,
                   "train_config": config["train_config"], "preset": config.get("preset"),
                   "best_epoch": config.get("best_epoch"),
                   "best_valid_metrics": config.get("best_metrics"),
                   "neighbor_similarity": similarity},
            inference={"max_session_length": max_session_length,
                       "session_filter": session_filter},
            defaults=defaults, data_stats=stats, encoder_io=encoder_io(model),
            n_categories=model.config.get("n_categories"),
            tool_versions={"torch": torch.__version__, "onnx": onnx.__version__,
                           "onnxruntime": onnxruntime.__version__})
        if knn is not None:  # validation runs on the index of the training part only
            write_args.update(session_index=knn["valid_index"], sknn=knn["valid_info"])
        candidate = write_bundle(work / "bundle", **write_args)
        report["parity"] = check_parity(candidate, model, catalog,
                                        parity_sessions(sessions, n_parity))
        written = json.loads((candidate / "manifest.json").read_text())
        defaults, inference = written["defaults"], written["inference"]
        if tune_defaults and valid:  # only the manifest (defaults, window, record) changes
            chosen, trials = defaults_by_validation(candidate, valid, catalog, progress,
                                                    log=print if progress else _quiet)
            defaults = {**defaults, **{k: chosen[k] for k in (
                "category_filter", "exclude_session_items", "repeat_bonus", "candidates",
                "categories", "knn_weight") if k in chosen}}
            inference = {**inference, "max_session_length": chosen["window"]}
            validation = {
                "split": f"{config.get('valid_split', 'random')} "
                         f"{config['valid_fraction']:.0%} of the training sessions",
                "n_sessions": len(valid),
                "metric": "HR@20, then MRR@20 (last item of each validation session)",
                "chosen": chosen, "trials": trials}
            update_manifest(candidate, defaults=defaults, inference=inference,
                            validation=validation)
            report["defaults_choice"] = "best validation HR@20 (then MRR@20)"
        else:
            report["defaults_choice"] = ("from training-data rates: "
                                         + (why_not or "tuning turned off"))
        if category_filter is not None:
            defaults = {**defaults, "category_filter": category_filter}
            update_manifest(candidate, defaults=defaults)
        if knn is not None:  # the bundle served: the index of every training session
            record = json.loads((candidate / "manifest.json").read_text())
            used = (defaults.get("candidates") == "sessions"
                    or float(defaults.get("knn_weight", 0.0)) > 0)
            if knn_source == "auto" and not used:
                write_args.update(session_index=None, sknn=None)
                report["session_index"] = {"source": "auto", "kept": False,
                                           "why": "the validation search chose no default "
                                                  "that uses it"}
            else:
                write_args.update(session_index=knn["index"], sknn=knn["info"])
                report["session_index"] = {"source": knn_source, "kept": True, **knn["info"]}
            write_args.update(defaults=defaults, inference=record["inference"])
            candidate = write_bundle(work / "final", **write_args)
            if "validation" in record:
                update_manifest(candidate, validation=record["validation"])
        else:
            report["session_index"] = {"source": session_index and str(session_index),
                                       "kept": False, "why": knn_source}
        replace_dir(candidate, out)  # atomic: a reloading server sees old or new, whole
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.update(defaults=defaults, data_stats=stats, seconds=round(time.perf_counter() - t0, 1))
    return out, report


def export_sknn_bundle(checkpoint: str | os.PathLike, out: Path, *,
                       train_csv: str | os.PathLike | None = None,
                       items_csv: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """An ``sknn`` checkpoint (export_tools.models.sknn) -> a bundle with scorer "sknn":
    the session index, the catalog, popularity, and the defaults chosen on validation
    sessions at training (recorded with every trial's figures under ``validation``)."""
    from sessrec_sdk.bundle import SessionIndex, write_bundle

    from .checkpoint import load_catalog
    from .models.sknn import INDEX_FILES, load_sknn, position_entry
    from .train import data_options, load_training_data

    t0 = time.perf_counter()
    config, index = load_sknn(checkpoint)
    catalog = load_catalog(Path(checkpoint))
    data = config.get("data", {})
    train_csv = train_csv or data.get("train")
    items_csv = items_csv or data.get("items")
    if not train_csv:
        raise ValueError("the checkpoint names no training data: pass --train")
    sessions, data_catalog = load_training_data(train_csv, items_csv, **data_options(data))
    if not np.array_equal(np.asarray(data_catalog.item_ids), np.asarray(catalog.item_ids)):
        raise ValueError(f"{train_csv} is not the data the checkpoint was built from (its "
                         "items differ)")
    pop, pop_scores = popularity(sessions, catalog.n_items)
    setting = config["model_config"]
    stats = data_stats(sessions, catalog, setting["window"])
    defaults = {"k": 20, "candidates": "sessions", "neighbors": setting["neighbors"],
                "category_filter": setting.get("category_filter", "none"),
                "exclude_session_items": setting["exclude_session_items"],
                "repeat_bonus": setting["repeat_bonus"]}
    validation = {"split": f"{config['valid_split']} {config['valid_fraction']:.0%} of the "
                           "training sessions", "n_sessions": config["n_valid_sessions"],
                  **config["validation"]}
    write_bundle(
        out, encoder=None, item_matrix=None, neighbors=None,
        item_ids=np.asarray(catalog.item_ids), popularity=pop, popularity_scores=pop_scores,
        item_category=np.asarray(catalog.categories) if catalog.n_categories else None,
        session_index=SessionIndex(*(index[name] for name in INDEX_FILES)),
        sknn={"n_sessions": config["n_sessions"], "sample": setting["sample"],
              "idf": setting["idf"], **position_entry(setting)},
        model={"kind": "sknn", "config": setting, "preset": config.get("preset"),
               "best_valid_metrics": config.get("best_metrics")},
        inference={"max_session_length": setting["window"], "session_filter": "none"},
        defaults=defaults, data_stats=stats, overwrite=True)
    from sessrec_sdk.bundle import update_manifest

    update_manifest(out, validation=validation)
    return out, {"checkpoint": str(Path(checkpoint).resolve()), "defaults": defaults,
                 "validation": validation["chosen"], "seconds": round(time.perf_counter() - t0, 1)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sessrec export",
                                description="Export a trained checkpoint to a sessrec bundle.")
    p.add_argument("checkpoint", help="checkpoint directory written by sessrec train")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--neighbors", type=int, default=100, help="K neighbors per item (100)")
    p.add_argument("--similarity", choices=["cosine", "inner", "model"], default="model",
                   help="item-item similarity of the neighbor matrix: cosine or inner product "
                   "of item embeddings, or 'model': the model's own top items after the "
                   "one-item session [item]")
    p.add_argument("--max-session-length", type=int, default=3,
                   help="items of a session the SDK encodes (paper: 3); the starting point "
                   "of the validation search unless --no-tune")
    p.add_argument("--session-index", metavar="SKNN_CHECKPOINT|auto|none", default="auto",
                   help="the session-kNN side of a hybrid: kNN candidates scored by the "
                   "model, blended with the kNN score, tried on validation. auto (default): "
                   "a session-kNN setting chosen on the checkpoint's validation sessions, "
                   "kept in the bundle only if the validation search picks the hybrid; an "
                   "sknn checkpoint trained on the same data (always kept); none: no hybrid")
    p.add_argument("--no-tune", action="store_true",
                   help="keep the given window and the rate-based defaults instead of "
                   "choosing them on the checkpoint's validation sessions")
    p.add_argument("--session-filter", choices=["none", "last_category"], default=None,
                   help="default: last_category if the model was trained that way")
    p.add_argument("--category-filter", choices=["none", "last", "session"], default=None,
                   help="the bundle's default category filter (default: the most accurate "
                   "on the checkpoint's validation sessions)")
    p.add_argument("--train", help="training event CSV (default: the checkpoint's)")
    p.add_argument("--items", help="items CSV (default: the checkpoint's)")
    p.add_argument("--parity-sessions", type=int, default=200)
    p.add_argument("--item-dtype", choices=["float32", "float16"], default="float32",
                   help="precision of the scored item rows: float16 halves what a call reads "
                   "(scores move by the rounding; the encoder keeps float32 inputs)")
    p.add_argument("--row-order", choices=["locality", "given"], default="locality",
                   help="number the bundle's rows along the neighbor graph (default; faster "
                   "recommend() on large catalogs) or keep the model's item order")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path, report = export_bundle(
            args.checkpoint, args.out, train_csv=args.train, items_csv=args.items,
            neighbors=args.neighbors, similarity=args.similarity,
            max_session_length=args.max_session_length, session_filter=args.session_filter,
            category_filter=args.category_filter,
            n_parity=args.parity_sessions, row_order=args.row_order,
            item_dtype=args.item_dtype, overwrite=args.overwrite,
            progress=not args.no_progress, tune_defaults=not args.no_tune,
            session_index=None if args.session_index == "none" else args.session_index)
    except (ParityError, FileExistsError, ValueError) as exc:
        print(f"sessrec export: error: {exc}", file=sys.stderr)
        return 1
    print(f"bundle: {path}")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
