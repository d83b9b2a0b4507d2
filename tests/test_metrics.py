"""export_tools/metrics.py: HR@K, MRR@K, NDCG@K and the ranks they are computed from.

Every expected value below is written out by hand from the definitions (0-based rank r:
a hit at K when r < K, i.e. the target is in the first K places; reciprocal rank 1/(r+1);
DCG 1/log2(r+2)), with ranks exactly at, just below and just above each cutoff.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from export_tools.metrics import (
    KS,
    MISS,
    list_rank,
    rank_in_scores,
    rank_targets,
    ranking_metrics,
)

torch = pytest.importorskip("torch")


def test_cutoffs_are_10_and_20():
    assert KS == (10, 20)


# one rank at a time: (0-based rank, HR@10, MRR@10, NDCG@10, HR@20, MRR@20, NDCG@20)
SINGLE = [
    (0, 1, 1.0, 1.0, 1, 1.0, 1.0),
    (8, 1, 1 / 9, 1 / math.log2(10), 1, 1 / 9, 1 / math.log2(10)),
    (9, 1, 1 / 10, 1 / math.log2(11), 1, 1 / 10, 1 / math.log2(11)),   # 10th place: in
    (10, 0, 0.0, 0.0, 1, 1 / 11, 1 / math.log2(12)),                   # 11th place: out of 10
    (11, 0, 0.0, 0.0, 1, 1 / 12, 1 / math.log2(13)),
    (18, 0, 0.0, 0.0, 1, 1 / 19, 1 / math.log2(20)),
    (19, 0, 0.0, 0.0, 1, 1 / 20, 1 / math.log2(21)),                   # 20th place: in
    (20, 0, 0.0, 0.0, 0, 0.0, 0.0),                                    # 21st place: out
    (21, 0, 0.0, 0.0, 0, 0.0, 0.0),
    (MISS, 0, 0.0, 0.0, 0, 0.0, 0.0),
]


@pytest.mark.parametrize("rank,hr10,mrr10,ndcg10,hr20,mrr20,ndcg20", SINGLE)
def test_one_rank_at_each_side_of_each_cutoff(rank, hr10, mrr10, ndcg10, hr20, mrr20, ndcg20):
    m = ranking_metrics([rank])
    assert m["HR@10"] == hr10 and m["HR@20"] == hr20
    assert m["MRR@10"] == pytest.approx(mrr10, abs=1e-15)
    assert m["NDCG@10"] == pytest.approx(ndcg10, abs=1e-15)
    assert m["MRR@20"] == pytest.approx(mrr20, abs=1e-15)
    assert m["NDCG@20"] == pytest.approx(ndcg20, abs=1e-15)


def test_mixed_ranks_hand_computed():
    ranks = [0, 9, 10, 19, 20, MISS, 3, 11]
    m = ranking_metrics(ranks)
    # @10: ranks 0, 9, 3 hit
    assert m["HR@10"] == pytest.approx(3 / 8)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 10 + 1 / 4) / 8)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(11) + 1 / math.log2(5)) / 8)
    # @20: ranks 0, 9, 10, 19, 3, 11 hit
    assert m["HR@20"] == pytest.approx(6 / 8)
    assert m["MRR@20"] == pytest.approx((1 + 1 / 10 + 1 / 11 + 1 / 20 + 1 / 4 + 1 / 12) / 8)
    assert m["NDCG@20"] == pytest.approx(
        (1 + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(21) + 1 / math.log2(5)
         + 1 / math.log2(13)) / 8)


def test_denominator_and_other_cutoffs():
    # n counts examples without a rank (e.g. unknown targets): they are misses
    m = ranking_metrics([0, 4], n=8, ks=(5,))
    assert set(m) == {"HR@5", "MRR@5", "NDCG@5"}
    assert m["HR@5"] == pytest.approx(2 / 8)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 5) / 8)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(6)) / 8)
    m = ranking_metrics([5], ks=(5,))  # rank 5 is the 6th place: out of 5
    assert m == {"HR@5": 0.0, "MRR@5": 0.0, "NDCG@5": 0.0}
    assert ranking_metrics([]) == {f"{n}@{k}": 0.0 for k in KS for n in ("HR", "MRR", "NDCG")}


def test_metrics_are_ordered_and_bounded():
    rng = np.random.default_rng(0)
    ranks = np.where(rng.random(500) < 0.2, MISS, rng.integers(0, 40, 500))
    m = ranking_metrics(ranks)
    for k in KS:
        assert 0 <= m[f"MRR@{k}"] <= m[f"NDCG@{k}"] <= m[f"HR@{k}"] <= 1
    assert m["HR@10"] <= m["HR@20"] and m["MRR@10"] <= m["MRR@20"]
    assert m["HR@10"] == pytest.approx(np.mean(ranks < 10))
    assert m["HR@20"] == pytest.approx(np.mean(ranks < 20))


def test_nan_and_negative_ranks():
    # a NaN rank (no rank could be computed) is a miss
    m = ranking_metrics([np.nan, 0.0])
    assert m["HR@10"] == 0.5 and m["MRR@10"] == 0.5
    with pytest.raises(ValueError, match=r"negative ranks \[-1\. -3\.\]"):
        ranking_metrics([0, -1, 5, -3])
    with pytest.raises(ValueError) as info:  # the first five are quoted
        ranking_metrics([-1, -2, -3, -4, -5, -6, -7])
    assert "-5." in str(info.value) and "-6." not in str(info.value)


def test_list_rank_positions():
    recs = np.array([5, 7, 9, 7])
    assert list_rank(recs, 5) == 0
    assert list_rank(recs, 9) == 2
    assert list_rank(recs, 7) == 1  # first occurrence
    assert list_rank(recs, 4) == MISS
    assert list_rank(np.array([], dtype=np.int64), 4) == MISS
    twenty = np.arange(100, 120)
    assert ranking_metrics([list_rank(twenty, 119)])["HR@20"] == 1.0
    assert ranking_metrics([list_rank(twenty, 110)])["HR@10"] == 0.0
    assert ranking_metrics([list_rank(twenty, 109)])["HR@10"] == 1.0


# ------------------------------------------------------------------ full-catalog ranks

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("as_torch", [False, True])
def test_rank_in_scores_counts_strictly_higher(as_torch):
    scores = np.array([[0.1, 0.5, 0.3, 0.5, 0.2],     # target 0.3: 0.5, 0.5 above -> 2
                       [1.0, 1.0, 1.0, 1.0, 1.0],     # all tied: rank 0 (ties favour it)
                       [0.0, -1.0, 2.0, 3.0, -INF]])  # target -1: 0, 2, 3 above -> 3
    target_scores = np.array([0.3, 1.0, -1.0])
    s = torch.as_tensor(scores) if as_torch else scores
    r = rank_in_scores(s, torch.as_tensor(target_scores) if as_torch else target_scores)
    assert isinstance(r, torch.Tensor if as_torch else np.ndarray)
    assert np.asarray(r).tolist() == [2, 0, 3]


def test_rank_in_scores_compares_in_the_scores_precision():
    # the target score is taken at the scores' precision: a float64 0.1 given for a
    # float32 catalog is the float32 0.1 the target itself scored, not above or below it
    scores = np.array([[np.float32(0.1), np.float32(0.05)]], dtype=np.float32)
    assert rank_in_scores(scores, np.array([0.1])).tolist() == [0]
    assert rank_in_scores(torch.as_tensor(scores), torch.tensor([0.1], dtype=torch.float64)
                          ).tolist() == [0]


def test_rank_in_scores_non_finite():
    scores = np.array([
        [0.5, NAN, 0.1, 0.2],    # target 0.5 (item 0), another item NaN: rank 0, not pushed
        [0.5, NAN, NAN, 0.9],    # target 0.5: only 0.9 is above; the NaNs are not
        [NAN, 0.1, 0.2, 0.3],    # target NaN (item 0): a miss, never a hit
        [INF, 0.1, 0.2, 0.3],    # target +inf: non-finite, a miss
        [-INF, 0.1, 0.2, 0.3],   # target -inf: a miss
        [0.0, INF, 0.1, 0.2],    # +inf, 0.1, 0.2 above a finite target 0.0: rank 3
    ])
    r = rank_in_scores(scores, scores[:, 0])
    assert r.tolist() == [0, 1, MISS, MISS, MISS, 3]
    assert r.dtype == np.int64
    m = ranking_metrics(r)
    assert m["HR@10"] == pytest.approx(3 / 6)


class _FixedModel:
    """Stands in for a SessionModel: the scores of every item depend only on the session's
    first item (a row of ``table``)."""

    def __init__(self, table):
        self.table = torch.as_tensor(np.asarray(table, dtype=np.float32))
        self.config = {"n_items": self.table.shape[1]}

    def eval(self):
        return self

    def __call__(self, items):
        return self.table[items[:, 0]]


def test_rank_targets_with_a_fixed_model():
    table = [[0.9, 0.8, 0.7, 0.6, 0.5],
             [0.1, 0.2, NAN, 0.4, 0.3],
             [NAN, NAN, 0.5, NAN, 0.4]]
    model = _FixedModel(table)
    inputs = [np.array([0]), np.array([0, 1]), np.array([1]), np.array([1]),
              np.array([2]), np.array([2]), np.array([], dtype=np.int64), np.array([0])]
    # (the empty session's target 2 would rank first after any padding row: 0.5 in row 2
    # is the best finite score there)
    targets = [3, 0, 3, 2, 4, 0, 2, -1]
    ranks = rank_targets(model, inputs, targets, batch_size=3)
    n = 5  # the default miss rank: n_items
    assert ranks.tolist() == [
        3,   # 0.6 with 0.9, 0.8, 0.7 above
        0,   # first item 0 again: target 0 scores 0.9, the best
        0,   # 0.4 is the best finite score; the NaN item does not push it down
        n,   # the target's own score is NaN: a miss
        1,   # 0.4: only 0.5 above, the NaNs are not
        n,   # NaN target
        n,   # empty session
        n,   # unknown target (< 0)
    ]
    assert rank_targets(model, inputs[:1], targets[:1], n_miss=MISS).tolist() == [3]
    assert rank_targets(model, inputs[3:4], targets[3:4], n_miss=MISS).tolist() == [MISS]


def test_rank_targets_progress_bar_changes_nothing():
    pytest.importorskip("tqdm")
    rng = np.random.default_rng(1)
    model = _FixedModel(rng.standard_normal((6, 30)))
    inputs = [rng.integers(0, 6, size=rng.integers(1, 4)) for _ in range(50)]
    targets = rng.integers(0, 30, size=50)
    plain = rank_targets(model, inputs, targets, batch_size=7)
    assert rank_targets(model, inputs, targets, batch_size=7, progress=True).tolist() == \
        plain.tolist()
    # and against a direct count: items scored strictly above the target
    table = model.table.numpy()
    expected = [int((table[x[0]] > table[x[0], t]).sum()) for x, t in zip(inputs, targets)]
    assert plain.tolist() == expected
