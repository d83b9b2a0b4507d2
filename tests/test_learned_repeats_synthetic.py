"""The learned repeat bonus on the request path (``Recommender.learned_repeats``,
``add_repeats``, ``repeat_query``) on a synthetic bundle whose encoder returns repeat
scores: seconds, no training, so the mutation runs (scripts/mutation.sh) reach this path.

The encoder's repeat output is item_emb[l] . v + 0.1 (l + 1): an item met at several
positions of the window has several scores and the SDK must keep the largest. Every
answer is recomputed from the encoder's own outputs and the item matrix. Trained
repeat heads: tests/test_repeat_head.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from export_tools.synthetic import SYNTHETIC_REPEAT_OUTPUT, build_synthetic_bundle
from sessrec_sdk import Recommender
from sessrec_sdk.errors import CorruptFileError

WINDOW = 5


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    path = build_synthetic_bundle(tmp_path_factory.mktemp("rep") / "b", n_items=300, dim=16,
                                  neighbors=12, seed=4, row_order="given", repeat_head=True,
                                  max_session_length=WINDOW)
    return Recommender.load(path)


def _expected_bonus(rec, session) -> dict[int, float]:
    """Row -> the largest repeat score of its positions in the encoded window."""
    plan = rec.plan(session)
    r = rec.encode(plan)[SYNTHETIC_REPEAT_OUTPUT]
    enc = rec.session_rows(session)
    assert r.shape == enc.shape
    best: dict[int, float] = {}
    for row, score in zip(enc.tolist(), r.tolist()):
        best[row] = max(best.get(row, -np.inf), score)
    return best


SESSIONS = [[3, 9, 3], [40, 41, 40, 42, 41], [7], [5, 6, 7, 8, 9, 10, 11, 5], [2, 2, 2],
            [100, 7, 100, 7, 100]]


@pytest.mark.parametrize("rows", SESSIONS)
def test_learned_repeats_are_the_largest_score_of_each_item(rec, rows):
    session = rec.item_ids[rows]
    plan = rec.plan(session)
    got_rows, got = rec.learned_repeats(plan, rec.encode(plan))
    expected = _expected_bonus(rec, session)
    assert got_rows.dtype == np.int32 and got.dtype == np.float32
    assert got_rows.tolist() == sorted(expected)  # distinct window rows, ascending
    np.testing.assert_array_equal(got, np.float32([expected[r] for r in sorted(expected)]))


@pytest.mark.parametrize("rows", SESSIONS)
@pytest.mark.parametrize("bonus", [0.0, 0.75, 50.0])
def test_session_items_get_model_score_bonus_and_learned_bonus(rec, rows, bonus):
    """exclude_session_items=False: every session item (inside the window or not) is a
    candidate scored query . row + repeat_bonus (+ its learned bonus when the encoder saw
    it); merged with the neighbor candidates of the same call by score, ties to the
    smaller row; rows scored = both calls' counts."""
    session = rec.item_ids[rows]
    matrix = np.asarray(rec.bundle.item_matrix, np.float32)
    q = rec.query(session)
    learned = _expected_bonus(rec, session)
    k = 15
    main = rec.recommend(session, k=200, exclude_session_items=True)
    out = rec.recommend(session, k=k, exclude_session_items=False, repeat_bonus=bonus)
    own = sorted(set(rows))
    own_scores = [np.float32(matrix[r] @ q + bonus + learned.get(r, 0.0)) for r in own]
    cand = np.array(rec.bundle.ids.rows(main.item_ids).tolist() + own)
    scores = np.concatenate([main.scores, np.float32(own_scores)])
    order = np.lexsort((cand, -scores))[:k]
    got = rec.bundle.ids.rows(out.item_ids)
    assert got.tolist() == cand[order].tolist()
    np.testing.assert_allclose(out.scores, scores[order], rtol=0, atol=1e-5)
    assert out.n_candidates == main.n_candidates + len(own)
    # the session items that made the cut carry exactly their learned bonus on top
    for r, s in zip(got.tolist(), out.scores.tolist()):
        if r in own:
            assert abs(s - (float(matrix[r] @ q) + bonus + learned.get(r, 0.0))) < 1e-5


def test_every_session_item_competes_not_just_the_first_k(rec):
    """With a learned bonus the repeat call keeps all session items before the merge: a
    session of 8 distinct items with k=1 still returns the best of the 8 (with a large
    bonus, the one with the largest model score + learned bonus)."""
    rows = [5, 6, 7, 8, 9, 10, 11, 12]
    session = rec.item_ids[rows]
    matrix = np.asarray(rec.bundle.item_matrix, np.float32)
    q = rec.query(session)
    learned = _expected_bonus(rec, session)
    total = {r: float(matrix[r] @ q) + learned.get(r, 0.0) for r in rows}
    best = max(rows, key=lambda r: (total[r], -r))
    out = rec.recommend(session, k=1, exclude_session_items=False, repeat_bonus=1e3)
    assert rec.bundle.ids.rows(out.item_ids).tolist() == [best]


def test_a_repeat_output_of_the_wrong_length_is_a_bundle_error(rec, monkeypatch):
    session = rec.item_ids[[3, 9, 3]]
    plan = rec.plan(session)
    outputs = dict(rec.encode(plan))
    outputs[SYNTHETIC_REPEAT_OUTPUT] = outputs[SYNTHETIC_REPEAT_OUTPUT][:-1]
    with pytest.raises(CorruptFileError, match="returned 2 repeat scores"):
        rec.learned_repeats(plan, outputs)


def test_a_bundle_without_a_repeat_output_has_no_learned_bonus(small_bundle):
    plain = Recommender.load(small_bundle)
    session = plain.item_ids[[1, 2, 1]]
    plan = plain.plan(session)
    rows, bonus = plain.learned_repeats(plan, plain.encode(plan))
    assert rows.size == 0 and bonus.size == 0 and bonus.dtype == np.float32
