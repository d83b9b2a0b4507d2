"""Tests of export_tools.data on hand examples, the raw Diginetica sample and the full split.

The real-data numbers asserted here are the README facts (data/, /work/shared/datasets):
they are measured, not assumed, so a change of the pipeline that shifts them fails loudly.
"""
from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from export_tools.data import (
    Catalog,
    augment_prefixes,
    build_catalog,
    category_rates,
    clean_sessions,
    load_diginetica,
    pad_batch,
    read_diginetica_raw,
    read_events,
    read_items,
    same_category_filter,
    same_category_filter_many,
    sessionize,
    split_validation,
    to_rows,
)

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "diginetica-raw-sample"
DIGI = REPO / "data" / "diginetica"


def arr(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def as_lists(seqs) -> list[list[int]]:
    return [np.asarray(s).tolist() for s in seqs]


# --------------------------------------------------------------------------------------
# Reading and sessionizing
# --------------------------------------------------------------------------------------

TINY = pd.DataFrame({
    # session 10 is given out of order; session 2 has a timestamp tie (7, 7) that must keep
    # file order; session ids are sparse and not sorted in the file.
    "session_id": [10, 2, 10, 2, 10, 2, 5, 2],
    "item_id": [300, 11, 100, 12, 200, 13, 7, 14],
    "timestamp": [30, 1, 10, 7, 20, 7, 0, 9],
})
TINY_SESSIONS = [[11, 12, 13, 14], [7], [100, 200, 300]]  # session_id order 2, 5, 10


def test_sessionize_orders_by_session_then_time_with_stable_ties() -> None:
    assert as_lists(sessionize(TINY)) == TINY_SESSIONS
    out = sessionize(TINY)
    assert all(s.dtype == np.int64 for s in out)


@pytest.mark.parametrize("fmt", ["csv", "csv.gz;", "parquet"])
def test_read_events_shuffled_file(tmp_path: Path, fmt: str) -> None:
    # Shuffle the rows but keep the tie (12 before 13) in file order.
    shuffled = TINY.iloc[[6, 0, 1, 4, 3, 7, 2, 5]]
    assert shuffled.index.tolist().index(3) < shuffled.index.tolist().index(5)
    if fmt == "csv":
        path = tmp_path / "events.csv"
        shuffled.to_csv(path, index=False)
    elif fmt == "csv.gz;":
        path = tmp_path / "events.csv.gz"
        with gzip.open(path, "wt") as fh:
            shuffled.rename(columns={"session_id": "sessionId", "item_id": "itemId"}).to_csv(
                fh, index=False, sep=";")
    else:
        pytest.importorskip("pyarrow")
        path = tmp_path / "events.parquet"
        shuffled.to_parquet(path, index=False)
    events = read_events(path)
    assert list(events.columns) == ["session_id", "item_id", "timestamp"]
    assert events["item_id"].dtype == np.int64
    assert as_lists(sessionize(events)) == TINY_SESSIONS


def test_read_events_dates_and_category(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("session_id,item_id,timestamp,category_id\n"
                    "a,5,2024-01-02 10:00:00,1\n"
                    "a,6,2024-01-01 23:59:59,1\n"
                    "b,7,2024-01-01 00:00:00,\n")
    events = read_events(path)
    assert as_lists(sessionize(events)) == [[6, 5], [7]]
    assert events["category_id"].isna().sum() == 1


def test_read_events_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_text("session_id,item_id\n1,2\n")
    with pytest.raises(ValueError, match=r"clicks\.csv.*'timestamp'"):
        read_events(path)
    with pytest.raises(ValueError, match="read_diginetica_raw"):
        read_events(RAW / "train-item-views.csv")


def test_read_events_rejects_non_integer_items(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("session_id,item_id,timestamp\n1,2,0\n1,x7,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*'item_id'.*'x7'"):
        read_events(path)


def test_read_items_accepts_diginetica_spelling() -> None:
    items = read_items(RAW / "product-categories.csv")
    assert list(items.columns) == ["item_id", "category_id"]
    assert len(items) == 7139 and items["item_id"].is_unique


@pytest.fixture(scope="module")
def raw():
    return read_diginetica_raw(RAW / "train-item-views.csv", RAW / "product-categories.csv")


def test_raw_sample_sessionized_in_time_order(raw) -> None:
    events, items = raw
    # The file has 12,391 events (no trailing newline; the dataset README says 12,390).
    assert len(events) == 12391 and len(items) == 7139
    sessions = sessionize(events)
    assert len(sessions) == 2986
    # Session 1 as listed in the file, ordered by timeframe by hand.
    assert sessions[0].tolist() == [9654, 33043, 32118, 12352, 35077, 36118, 81766,
                                    129055, 31331, 32627]
    # Every session against an independent ordering of the raw file.
    df = pd.read_csv(RAW / "train-item-views.csv", sep=";")
    ref = df.sort_values(["session_id", "eventdate", "timeframe"], kind="stable")
    expected = [g.to_numpy().tolist() for _, g in ref.groupby("session_id")["item_id"]]
    assert as_lists(sessions) == expected


def test_raw_eventdate_orders_before_timeframe(tmp_path: Path) -> None:
    views = tmp_path / "views.csv"
    views.write_text("session_id;user_id;item_id;timeframe;eventdate\n"
                     "1;NA;10;5;2016-05-10\n"
                     "1;NA;20;900;2016-05-09\n"
                     "1;NA;30;100;2016-05-09\n")
    cats = tmp_path / "cats.csv"
    cats.write_text("itemId;categoryId\n10;1\n")
    events, items = read_diginetica_raw(views, cats)
    assert events["timestamp"].tolist() == [0, 1, 2]
    assert as_lists(sessionize(events)) == [[30, 20, 10]]
    assert items.to_numpy().tolist() == [[10, 1]]


# --------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------

def test_clean_drops_consecutive_repeats_only() -> None:
    s = [arr(1, 1, 2, 2, 2, 1, 3), arr(4, 4)]
    out = clean_sessions(s, min_item_support=1)
    assert as_lists(out) == [[1, 2, 1, 3]]  # 4, 4 -> 4: too short, dropped
    kept = clean_sessions(s, min_item_support=1, drop_consecutive_repeats=False)
    assert as_lists(kept) == [[1, 1, 2, 2, 2, 1, 3], [4, 4]]


def test_clean_support_filter_and_single_item_sessions() -> None:
    s = [arr(1, 2, 9), arr(1, 2), arr(2, 1, 8), arr(7), arr(7), arr(7, 1)]
    # The two length-1 [7] sessions are dropped before counting (SR-GNN), so they lend no
    # support: 1:4, 2:3, 7:1, 8:1, 9:1, and with min support 3 only 1 and 2 survive.
    out = clean_sessions(s, min_item_support=3)
    assert as_lists(out) == [[1, 2], [1, 2], [2, 1]]  # [7, 1] -> [1]: too short


def test_clean_collapses_repeats_created_by_the_support_filter() -> None:
    s = [arr(1, 5, 1, 2), arr(1, 2), arr(2, 1)]
    assert as_lists(clean_sessions(s, min_item_support=2)) == [[1, 2], [1, 2], [2, 1]]


def test_clean_length_cap_keeps_last_items() -> None:
    s = [np.arange(1, 31, dtype=np.int64), arr(1, 2)]
    out = clean_sessions(s, min_item_support=1, max_session_length=20)
    assert out[0].tolist() == list(range(11, 31)) and out[1].tolist() == [1, 2]
    assert clean_sessions(s, min_item_support=1, max_session_length=None)[0].size == 30
    assert clean_sessions([], min_item_support=1) == []


def reference_clean(sessions, min_support=5, min_len=2, max_len=20):
    """Plain-Python SR-GNN-style cleaning, written independently for comparison."""
    def dedup(seq):
        return [x for i, x in enumerate(seq) if i == 0 or x != seq[i - 1]]
    seqs = [dedup(list(s)) for s in sessions]
    seqs = [s for s in seqs if len(s) >= min_len]
    support = Counter(x for s in seqs for x in s)
    seqs = [dedup([x for x in s if support[x] >= min_support]) for s in seqs]
    return [s[-max_len:] for s in seqs if len(s) >= min_len]


def test_clean_raw_sample_matches_reference(raw) -> None:
    sessions = sessionize(raw[0])
    out = clean_sessions(sessions)
    assert as_lists(out) == reference_clean(as_lists(sessions))
    assert 0 < len(out) < len(sessions)
    assert all(2 <= len(s) <= 20 and np.all(s[1:] != s[:-1]) for s in out)
    # the raw sample really exercises every rule
    assert any(np.any(s[1:] == s[:-1]) for s in sessions)
    assert any(len(s) > 20 for s in sessions) and any(len(s) == 1 for s in sessions)


# --------------------------------------------------------------------------------------
# Catalog and id mapping
# --------------------------------------------------------------------------------------

def test_catalog_maps_sparse_ids_to_dense_rows_and_back(raw) -> None:
    events, items = raw
    sessions = clean_sessions(sessionize(events))
    cat = build_catalog(sessions, items)
    flat = np.concatenate(sessions)
    assert cat.item_ids.tolist() == sorted(set(flat.tolist()))
    assert cat.item_ids.dtype == np.int64 and cat.categories.dtype == np.int32
    assert cat.item_ids.max() > 10 * cat.n_items  # sparse external ids, dense rows
    assert cat.rows(cat.item_ids).tolist() == list(range(cat.n_items))
    rows = to_rows(sessions, cat)
    assert all(r.dtype == np.int32 and r.min() >= 0 for r in rows)
    assert all(np.array_equal(cat.external(r), s) for r, s in zip(rows, sessions))
    # categories come from the items table
    table = dict(zip(items["item_id"].tolist(), items["category_id"].tolist()))
    assert (cat.categories >= 0).all()
    assert cat.category_ids[cat.categories].tolist() == [table[i] for i in cat.item_ids]
    assert cat.n_categories == len({table[i] for i in cat.item_ids})


def test_unknown_ids_map_to_minus_one() -> None:
    cat = Catalog(item_ids=arr(5, 17, 900), categories=np.array([0, 1, -1]),
                  category_ids=arr(40, 41))
    assert cat.rows([17, 4, 900, 5, 901, -1, 2**62]).tolist() == [1, -1, 2, 0, -1, -1, -1]
    assert cat.rows(np.array([[5, 6]], dtype=np.uint64)).tolist() == [[0, -1]]
    assert cat.rows(np.array([2**64 - 1], dtype=np.uint64)).tolist() == [-1]
    assert cat.rows([]).shape == (0,)
    assert as_lists(to_rows([arr(900, 3, 5)], cat)) == [[2, -1, 0]]
    with pytest.raises(ValueError):
        cat.external([0, -1])
    with pytest.raises(TypeError):
        cat.rows([1.5])
    assert (cat.n_items, cat.n_categories) == (3, 2)
    assert not cat.item_ids.flags.writeable


def test_catalog_validation_and_conflicting_categories() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Catalog(item_ids=arr(2, 1), categories=np.array([-1, -1]), category_ids=arr())
    items = pd.DataFrame({"item_id": [1, 1, 2], "category_id": [3, 4, 3]})
    with pytest.raises(ValueError, match="more than one category"):
        build_catalog([arr(1, 2)], items)
    cat = build_catalog([arr(3, 1, 2)], pd.DataFrame({"item_id": [1, 2, 99],
                                                      "category_id": [70, 50, 60]}))
    assert cat.categories.tolist() == [1, 0, -1] and cat.category_ids.tolist() == [50, 70]
    assert build_catalog([arr(1)], None).categories.tolist() == [-1]


# --------------------------------------------------------------------------------------
# Session filter, examples, batches, rates
# --------------------------------------------------------------------------------------

CATS = np.array([0, 1, 0, 2, -1, 1], dtype=np.int32)  # category of rows 0..5


def test_same_category_filter() -> None:
    assert same_category_filter(np.array([0, 1, 2, 3, 2]), CATS).tolist() == [0, 2, 2]
    assert same_category_filter(np.array([1, 0, 5]), CATS).tolist() == [1, 5]
    assert same_category_filter(np.array([4, 0, 4]), CATS).tolist() == [4]  # unknown cat
    assert same_category_filter(np.array([0, -1, 2, -1]), CATS).tolist() == [-1]
    assert same_category_filter(np.array([3]), CATS).tolist() == [3]
    assert same_category_filter(np.array([], dtype=np.int32), CATS).size == 0
    seqs = [np.array(s, dtype=np.int32) for s in
            ([0, 1, 2, 3, 2], [1, 0, 5], [4, 0, 4], [0, -1, 2, -1], [3], [])]
    many = same_category_filter_many(seqs, CATS)
    assert as_lists(many) == [same_category_filter(s, CATS).tolist() for s in seqs]


def test_augment_prefixes_hand_example() -> None:
    sessions = [np.array([5, 6, 7, 8], dtype=np.int32), np.array([9], dtype=np.int32),
                np.array([1, 2], dtype=np.int32)]
    inputs, targets = augment_prefixes(sessions, max_length=2)
    assert as_lists(inputs) == [[5], [5, 6], [6, 7], [1]]
    assert targets.tolist() == [6, 7, 8, 2] and targets.dtype == np.int32
    inputs, targets = augment_prefixes(sessions, max_length=None)
    assert as_lists(inputs) == [[5], [5, 6], [5, 6, 7], [1]]
    assert augment_prefixes([])[1].shape == (0,)


def test_split_validation_by_whole_session() -> None:
    sessions = [np.array([i, i + 1]) for i in range(100)]
    train, valid = split_validation(sessions, fraction=0.2, seed=3)
    assert len(train) == 80 and len(valid) == 20
    tr, va = {int(s[0]) for s in train}, {int(s[0]) for s in valid}
    assert tr.isdisjoint(va) and tr | va == set(range(100))
    assert [int(s[0]) for s in valid] == sorted(va)  # input order kept
    assert as_lists(split_validation(sessions, 0.2, seed=3)[1]) == as_lists(valid)
    assert as_lists(split_validation(sessions, 0.2, seed=4)[1]) != as_lists(valid)
    with pytest.raises(ValueError):
        split_validation(sessions, fraction=1.0)


def test_pad_batch() -> None:
    seqs = [np.array([1, 2, 3]), np.array([4]), np.array([], dtype=np.int32),
            np.array([5, 6, 7, 8, 9])]
    out = pad_batch(seqs)
    assert out.dtype == np.int64 and out.tolist() == [
        [1, 2, 3, -1, -1], [4, -1, -1, -1, -1], [-1] * 5, [5, 6, 7, 8, 9]]
    assert pad_batch(seqs, max_length=2).tolist() == [[2, 3], [4, -1], [-1, -1], [8, 9]]
    assert pad_batch(seqs[:2], max_length=10).shape == (2, 3)  # a cap, not a fixed width
    assert pad_batch([]).shape == (0, 0)


def test_category_rates_hand_example() -> None:
    inputs = [np.array([0, 3]),  # last cat 2; target 1 (cat 1): no, no, no
              np.array([0, 1]),  # last cat 1; target 2 (cat 0): no, yes (row 0), no
              np.array([1, 2]),  # last cat 0; target 0 (cat 0): yes, yes, no
              np.array([5, 1]),  # last cat 1; target 5 (cat 1): yes, yes, repeat
              np.array([4]),     # target 4, cat -1: unknown cats never match; repeat
              np.array([0, -1])]  # target -1 (unknown item): miss everywhere
    targets = np.array([1, 2, 0, 5, 4, -1])
    rates = category_rates(inputs, targets, CATS)
    assert rates == {"n_examples": 6,
                     "next_same_last_category": pytest.approx(2 / 6),
                     "next_in_session_categories": pytest.approx(3 / 6),
                     "next_repeats_session_item": pytest.approx(2 / 6)}
    empty = category_rates([], np.array([], dtype=np.int32), CATS)
    assert empty["n_examples"] == 0 and np.isnan(empty["next_same_last_category"])


# --------------------------------------------------------------------------------------
# The full bundled Diginetica split
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digi():
    return load_diginetica(DIGI)


def test_load_diginetica_is_the_published_split(digi) -> None:
    train, test, catalog = digi
    assert len(train) == 77929 and sum(map(len, train)) == 417360
    assert len(test) == 51953 and sum(map(len, test)) == 279497
    assert all(r.dtype == np.int32 for r in train[:10])
    assert min(int(r.min()) for r in train) == 0 and all(t.dtype == np.int64 for t in test)
    assert catalog.n_items == 42213 and catalog.n_categories == 983
    assert (catalog.categories >= 0).all()  # every train item has a category
    assert 1 <= catalog.item_ids[0] and catalog.item_ids[-1] <= 43136
    # test sessions are unchanged: the same as a plain sessionize of the file
    assert as_lists(test[:50]) == as_lists(sessionize(read_events(DIGI / "test.csv.gz"))[:50])


def test_diginetica_unknown_test_targets(digi) -> None:
    _, test, catalog = digi
    targets = np.array([s[-1] for s in test])
    assert int((catalog.rows(targets) < 0).sum()) == 331


def test_diginetica_category_facts(digi) -> None:
    _, test, catalog = digi
    items = read_items(DIGI / "items.csv.gz")
    assert len(items) == 43101 and items["category_id"].nunique() == 991
    # categories of every item (test-only items included), as the README facts are stated
    full = build_catalog([catalog.item_ids, *test], items)
    assert (full.categories >= 0).all()
    rows = to_rows(test, full)
    rates = category_rates([r[:-1] for r in rows], np.array([r[-1] for r in rows]),
                           full.categories)
    assert rates["n_examples"] == 51953
    assert round(rates["next_same_last_category"], 3) == 0.800
    assert round(rates["next_in_session_categories"], 3) == 0.918
    # this preprocessed split never repeats an item within a session
    assert rates["next_repeats_session_item"] == 0.0


def test_diginetica_generic_defaults_would_recount_support() -> None:
    # Why load_diginetica passes min_item_support=1: upstream counted support on the whole
    # dataset, so recounting on the train split alone removes thousands of items.
    sessions = sessionize(read_events(DIGI / "train.csv.gz"))
    assert len(clean_sessions(sessions)) == 75249
    assert len(clean_sessions(sessions, min_item_support=1)) == 77929


def test_diginetica_pipeline_shapes(digi) -> None:
    # (how long this takes is the benchmark suite's business, not a unit test's)
    train, _, catalog = load_diginetica(DIGI)
    inputs, targets = augment_prefixes(train, max_length=20)
    assert len(targets) == 417360 - 77929
    assert max(len(x) for x in inputs) == 20
    cut = same_category_filter_many(inputs, catalog.categories)
    assert len(cut) == len(inputs)
