"""export_tools/defaults.py: the bundle's data-driven defaults and popularity ranking,
against values worked out by hand (the thresholds exactly at their boundaries)."""
from __future__ import annotations

import numpy as np
import pytest

from export_tools import data as D
from export_tools.defaults import (
    FILTER_KEEP_RATE,
    REPEAT_RATE_TO_KEEP_SEEN,
    choose_defaults,
    data_stats,
    popularity,
)


def _stats(last, session, repeats):
    return {"next_same_last_category": last, "next_in_session_categories": session,
            "next_repeats_session_item": repeats}


def test_thresholds():
    assert FILTER_KEEP_RATE == 0.95 and REPEAT_RATE_TO_KEEP_SEEN == 0.05


def test_choose_defaults_whole_dict():
    assert choose_defaults(_stats(0.5, 0.5, 0.5), 30) == {
        "k": 20, "candidates": "neighbors", "neighbors": 30, "category_filter": "none",
        "exclude_session_items": False}
    assert choose_defaults(_stats(0.99, 0.99, 0.0), 300)["neighbors"] == 100
    assert choose_defaults(_stats(0.99, 0.99, 0.0), 100)["neighbors"] == 100


def test_choose_defaults_at_the_thresholds():
    # a filter that keeps the next item exactly FILTER_KEEP_RATE of the time is chosen
    assert choose_defaults(_stats(0.95, 0.95, 0.0), 10)["category_filter"] == "last"
    assert choose_defaults(_stats(0.9499, 0.95, 0.0), 10)["category_filter"] == "session"
    assert choose_defaults(_stats(0.9499, 0.9499, 0.0), 10)["category_filter"] == "none"
    # session items stay excluded only while re-visits are rarer than the threshold
    assert choose_defaults(_stats(0, 0, 0.0499), 10)["exclude_session_items"] is True
    assert choose_defaults(_stats(0, 0, 0.05), 10)["exclude_session_items"] is False


def test_popularity_single_event_and_empty_rows():
    order, shares = popularity([np.array([3])], 4)
    assert order.tolist() == [3, 0, 1, 2]
    np.testing.assert_array_equal(shares, np.array([1, 0, 0, 0], np.float32))
    order, shares = popularity([np.array([0])], 3)  # the last rows without any event
    assert order.tolist() == [0, 1, 2] and shares.tolist() == [1, 0, 0]
    order, shares = popularity([np.array([1, 1]), np.array([0, 1, 0, 2])], 3)
    assert order.tolist() == [1, 0, 2]
    np.testing.assert_array_equal(shares, np.array([3, 2, 1], np.float32) / 6)


def _catalog(categories):
    n = len(categories)
    return D.Catalog(item_ids=np.arange(100, 100 + n, dtype=np.int64),
                     categories=np.asarray(categories, np.int32),
                     category_ids=np.arange(max(categories) + 1, dtype=np.int64))


def test_data_stats_hand_counted():
    catalog = _catalog([0, 0, 1, 1])  # rows 0, 1 in category 0; rows 2, 3 in category 1
    # examples (input -> target): [0] -> 1 (same category as the last item, repeat: no),
    # [0, 1] -> 2 (other category), [3] -> 3 (same category, a repeat)
    stats = data_stats([np.array([0, 1, 2]), np.array([3, 3])], catalog, window=3)
    assert stats["n_examples"] == 3 and type(stats["n_examples"]) is int  # a count, unrounded
    assert stats["next_same_last_category"] == pytest.approx(round(2 / 3, 6), abs=0)
    assert stats["next_in_session_categories"] == pytest.approx(round(2 / 3, 6), abs=0)
    assert stats["next_repeats_session_item"] == pytest.approx(round(1 / 3, 6), abs=0)


def test_data_stats_sees_the_window_only():
    catalog = _catalog([0, 0, 1, 1])
    # [2] -> 0 (category 1 -> 0: miss); [2, 0] -> 3: category 1 is in the session only
    # while the window still holds item 2
    wide = data_stats([np.array([2, 0, 3])], catalog, window=2)
    narrow = data_stats([np.array([2, 0, 3])], catalog, window=1)
    assert wide["n_examples"] == narrow["n_examples"] == 2
    assert wide["next_in_session_categories"] == 0.5
    assert narrow["next_in_session_categories"] == 0.0
    assert wide["next_same_last_category"] == narrow["next_same_last_category"] == 0.0
