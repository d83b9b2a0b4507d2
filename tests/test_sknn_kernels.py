"""The session-kNN (VMIS-kNN) kernel: C, Numba and numpy return the same top-k.

A plain-Python oracle written from the algorithm in sessrec_sdk/kernels/sknn.py (dicts,
sorted(), numpy float32 scalars at every step) checks the numpy reference, and hypothesis
compares all three backends with it on small random indices with many ties: repeated
session items, short and long sessions, eviction from the candidate sessions, fewer and
more neighbors than candidates, every filter, with and without a neighbor-position
table. Scores are compared bit for bit
(``.view(np.uint32)``), never with a tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sessrec_sdk.kernels import RowRangeError
from sessrec_sdk.kernels.sknn import (
    IndexRangeError,
    SknnIndex,
    SknnQuery,
    SknnScratch,
    available_sknn_backends,
    make_sknn_kernel,
    sknn_top_k,
)

BACKENDS = available_sknn_backends()
_KERNELS: dict = {}
_EMPTY = np.empty(0, np.int32)


def test_all_sknn_backends_available_here():
    # CI builds the C extension and installs numba: all three must be compared
    assert BACKENDS == ["c", "numba", "numpy"]
    assert available_sknn_backends() == BACKENDS  # also when called after import


def build_index(sessions: list[list[int]], n_items: int, m_index: int,
                weight: np.ndarray | None = None,
                categories: np.ndarray | None = None,
                position_weight: np.ndarray | None = None) -> SknnIndex:
    """The index of ``sessions`` (session j = sessions[j], items in stored order): per
    item its ``m_index`` most recent sessions, newest first."""
    lists: list[list[int]] = [[] for _ in range(n_items)]
    for j in range(len(sessions) - 1, -1, -1):
        for r in sessions[j]:
            if len(lists[r]) < m_index:
                lists[r].append(j)
    item_indptr = np.zeros(n_items + 1, np.int64)
    item_indptr[1:] = np.cumsum([len(x) for x in lists])
    session_indptr = np.zeros(len(sessions) + 1, np.int64)
    session_indptr[1:] = np.cumsum([len(x) for x in sessions])
    return SknnIndex(
        item_indptr=item_indptr,
        item_sessions=np.array([j for x in lists for j in x], np.int32),
        session_indptr=session_indptr,
        session_items=np.array([r for x in sessions for r in x], np.int32),
        item_weight=np.ones(n_items, np.float32) if weight is None else weight,
        categories=categories, position_weight=position_weight)


def query(session, sample=10, neighbors=10, k=10, exclude_session=True, session_bonus=0.0,
          excluded=(), allowed=None, allowed_cats=None) -> SknnQuery:
    as_rows = lambda x: None if x is None else np.asarray(x, np.int32)  # noqa: E731
    return SknnQuery(session=as_rows(session), sample=sample, neighbors=neighbors, k=k,
                     exclude_session=exclude_session, session_bonus=session_bonus,
                     excluded=as_rows(excluded), allowed=as_rows(allowed),
                     allowed_cats=as_rows(allowed_cats))


def oracle(index: SknnIndex, q: SknnQuery):
    """The algorithm read straight off its description, in Python containers."""
    f32 = np.float32
    s = q.session.tolist()
    n = len(s)
    if n == 0:
        return [], [], 0
    # 1. distinct items, most recent first, with their most recent position
    recent: dict[int, int] = {}
    for p in range(n):
        r = s[n - 1 - p]
        if r not in recent:
            recent[r] = p
    u = len(recent)
    # 2. candidate sessions: j -> [sim, pos]
    cand: dict[int, list] = {}
    for r, p in recent.items():  # dicts keep insertion order: most recent first
        pi = f32(f32(n - p) / f32(u))
        a, b = int(index.item_indptr[r]), int(index.item_indptr[r + 1])
        for j in index.item_sessions[a:b].tolist():
            if j in cand:
                cand[j][0] = f32(cand[j][0] + pi)
            elif len(cand) < q.sample:
                cand[j] = [pi, p]
            elif j > min(cand):
                del cand[min(cand)]
                cand[j] = [pi, p]
            else:
                break
    # 3. neighbors
    nbrs = sorted(cand, key=lambda j: (-float(cand[j][0]), -j))[:q.neighbors]
    # 4. scores
    score: dict[int, np.float32] = {}
    table = index.position_weight
    for j in nbrs:
        sim, pos = cand[j]
        lam = f32(f32(1.0) - f32(f32(0.1) * f32(pos)))
        if lam < 0:
            lam = f32(0.0)
        w = f32(lam * sim)
        a, b = int(index.session_indptr[j]), int(index.session_indptr[j + 1])
        items = index.session_items[a:b].tolist()
        shared = s[n - 1 - pos]  # the session item that brought j in
        anchor = items.index(shared) if shared in items else len(items)
        for t, r in enumerate(items):
            wt = w
            if table is not None and len(table) > 1:
                h = len(table) // 2
                wt = f32(w * table[h + min(h, max(-h, t - anchor))])
            c = f32(wt * index.item_weight[r])
            score[r] = f32(score.get(r, f32(0.0)) + c)
    n_cand = len(score)
    # 5. filters and bonus
    excluded = set(q.excluded.tolist())
    allowed = None if q.allowed is None else set(q.allowed.tolist())
    cats = None if q.allowed_cats is None else set(q.allowed_cats.tolist())
    final = {}
    for r, sc in score.items():
        if r in excluded or (allowed is not None and r not in allowed):
            continue
        if cats is not None and int(index.categories[r]) not in cats:
            continue
        if r in recent:
            if q.exclude_session:
                continue
            sc = f32(sc + f32(q.session_bonus))
        final[r] = sc
    # 6. the best k
    best = sorted(final, key=lambda r: (-float(final[r]), r))[:q.k]
    return best, [final[r] for r in best], n_cand


def _bits(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float32)
    return scores.view(np.uint32)


def _kernel(index: SknnIndex, backend: str):
    return make_sknn_kernel(index, backend)


def _all_results(index: SknnIndex, q: SknnQuery, stale: bool = True) -> dict:
    """(rows, scores, n_candidates) of every backend, on a fresh scratch and (C, Numba) on
    a scratch full of stale stamps of "earlier calls"."""
    results = {}
    for name in BACKENDS:
        kernel = _kernel(index, name)
        results[name] = kernel.top_k(q, SknnScratch.for_index(index, max_sample=1))
        if stale and name != "numpy":
            reuse = SknnScratch.for_index(index, max_sample=3)
            reuse.epoch = 5
            for arr in (reuse.item_seen, reuse.item_excluded, reuse.session_mark):
                arr[::2] = 5
            for arr in (reuse.item_touched, reuse.item_allowed):
                arr[1::2] = 5
            reuse.item_score[:] = np.float32(7.5)
            reuse.session_slot[:] = 0
            results[f"{name}/reused"] = kernel.top_k(q, reuse)
    return results


def _assert_identical(results: dict, expected=None):
    ref_rows, ref_scores, ref_n = results["numpy"]
    if expected is not None:
        rows, scores, n = expected
        assert ref_rows.tolist() == list(rows), ("numpy vs oracle", ref_rows, rows)
        assert np.array_equal(_bits(ref_scores), _bits(scores)), (ref_scores, scores)
        assert ref_n == n, (ref_n, n)
    for name, (rows, scores, n_cand) in results.items():
        assert rows.dtype == np.int32 and scores.dtype == np.float32, name
        np.testing.assert_array_equal(rows, ref_rows, err_msg=name)
        assert np.array_equal(_bits(scores), _bits(ref_scores)), (name, scores, ref_scores)
        assert n_cand == ref_n and isinstance(n_cand, int), (name, n_cand, ref_n)
    return ref_rows, ref_scores, ref_n


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_items = draw(st.integers(1, 30))
    # few distinct items => many equal sims and scores
    pool = max(1, int(n_items * draw(st.sampled_from([1.0, 0.5, 0.2]))))
    n_sessions = draw(st.sampled_from([12, 25, 40, 5, 2, 20, 30, 8, 0]))
    max_len = draw(st.sampled_from([4, 2, pool]))  # short or long training sessions
    sessions = []
    for _ in range(n_sessions):
        length = int(rng.integers(0, max_len + 1)) if rng.random() < 0.1 else \
            int(rng.integers(1, max_len + 1))
        sessions.append(rng.permutation(pool)[:length].tolist())  # distinct, any order
    m_index = draw(st.sampled_from([n_sessions + 1, 3, 1, max(1, n_sessions // 2)]))
    kind = draw(st.sampled_from(["ones", "ties", "random"]))
    if kind == "ones":
        weight = np.ones(n_items, np.float32)
    elif kind == "ties":
        weight = rng.choice(np.array([0.25, 0.5, 1.0, 2.0], np.float32), n_items)
    else:
        weight = rng.random(n_items).astype(np.float32) * 3
    n_cats = draw(st.integers(1, 4))
    with_cats = draw(st.booleans())
    categories = rng.integers(0, n_cats, n_items).astype(np.int32) if with_cats else None
    table = draw(st.sampled_from(["none", "one", "random", "random"]))
    position = (None if table == "none" else np.ones(1, np.float32) if table == "one" else
                (rng.choice(np.array([0.0, 0.5, 1.0, 3.0], np.float32),
                            2 * draw(st.integers(1, 4)) + 1) if rng.random() < 0.5 else
                 (rng.random(2 * draw(st.integers(1, 4)) + 1) * 4).astype(np.float32)))
    index = build_index(sessions, n_items, m_index, weight.astype(np.float32), categories,
                        position)
    length = draw(st.sampled_from([1, 2, 3, 5, 8, 12, 25, 4, 6, 0]))
    # repeats included; mostly items of the training sessions
    session = rng.integers(0, pool if draw(st.integers(0, 5)) else n_items, length)
    bonus = draw(st.sampled_from([0.0, 0.5, 1.25, -0.75, float(rng.random())]))
    upto = n_sessions + 3
    q = query(
        session,
        sample=draw(st.one_of(st.integers(1, 4), st.integers(1, upto))),
        neighbors=draw(st.one_of(st.sampled_from([2, 1, 3, 5]), st.integers(1, upto))),
        k=draw(st.one_of(st.integers(1, 3), st.integers(1, n_items + 2))),
        exclude_session=draw(st.booleans()), session_bonus=bonus,
        excluded=rng.integers(0, n_items, draw(st.integers(0, 4))),
        allowed=(rng.integers(0, n_items, int(n_items * draw(st.sampled_from([1.0, 0.5, 0.0]))))
                 if draw(st.booleans()) else None),
        allowed_cats=(np.unique(rng.integers(0, n_cats, draw(st.integers(0, 3))))
                      if with_cats and draw(st.booleans()) else None))
    return index, q


def _label(index: SknnIndex, q: SknnQuery, expected) -> None:
    """hypothesis events (--hypothesis-show-statistics): which cases the examples reach."""
    met = set()
    for r in set(q.session.tolist()):
        met.update(index.item_sessions[index.item_indptr[r]:index.item_indptr[r + 1]].tolist())
    event("sessions met > sample (eviction possible)" if len(met) > q.sample
          else "sessions met <= sample")
    event("neighbors < sessions met" if q.neighbors < min(len(met), q.sample)
          else "neighbors >= candidate sessions")
    event("long session (> 10 events)" if len(q.session) > 10 else "short session")
    event(f"results: {'some' if expected[0] else 'none'}, candidates: "
          f"{'some' if expected[2] else 'none'}")
    if len(set(expected[1])) < len(expected[1]):
        event("tied scores in the result")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_backends_agree_with_the_oracle(problem):
    index, q = problem
    expected = oracle(index, q)
    _label(index, q, expected)
    _assert_identical(_all_results(index, q), expected)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.data())
def test_damaged_indices_give_the_same_outcome_everywhere(problem, data):
    """One entry of one index array overwritten with any value: every backend returns the
    same result, or raises the same IndexRangeError (array and position)."""
    index, q = problem
    arrays = {name: getattr(index, name).copy() for name in
              ("item_indptr", "item_sessions", "session_indptr", "session_items")}
    name = data.draw(st.sampled_from([x for x, a in arrays.items() if a.size]))
    arr = arrays[name]
    pos = data.draw(st.integers(0, arr.size - 1))
    bound = max(index.n_items, index.n_sessions, int(arr.max()) + 1) + 2
    arr[pos] = data.draw(st.sampled_from([-1, bound, -(2**31), 2**31 - 1, 0, bound // 2]))
    damaged = SknnIndex(**arrays, item_weight=index.item_weight,
                        categories=index.categories, position_weight=index.position_weight)
    outcomes = {}
    for backend in BACKENDS:
        try:
            rows, scores, n = _kernel(damaged, backend).top_k(
                q, SknnScratch.for_index(damaged))
            outcomes[backend] = (rows.tolist(), _bits(scores).tolist(), n)
        except IndexRangeError as exc:
            outcomes[backend] = (exc.array_name, exc.position)
    event("IndexRangeError" if len(outcomes["numpy"]) == 2 else "a result")
    assert len({repr(v) for v in outcomes.values()}) == 1, outcomes


def test_worked_example():
    """A session [0, 1, 0] (u = 2 distinct items: 0 at p = 0 with pi = 3/2, 1 at p = 1 with
    pi = 2/2) over four training sessions, all kept and used."""
    sessions = [[0, 2], [1, 3], [0, 1, 4], [5]]
    index = build_index(sessions, 6, 10, categories=np.zeros(6, np.int32))
    q = query([0, 1, 0], k=10, exclude_session=False, session_bonus=0.25)
    # R: item 0 -> sessions 2, 0 (sim 1.5, pos 0); item 1 -> session 2 += 1, session 1 (1, 1)
    # neighbors by sim: 2 (2.5), 0 (1.5), 1 (1.0, lam 0.9 -> w 0.9)
    # scores: 0: 2.5 + 1.5 (+0.25), 1: 2.5 + 0.9 (+0.25), 4: 2.5, 2: 1.5, 3: 0.9
    rows, scores, n = oracle(index, q)
    assert rows == [0, 1, 4, 2, 3]
    f = np.float32
    assert _bits(scores).tolist() == _bits([f(f(2.5) + f(1.5)) + f(0.25),
                                            f(f(2.5) + f(f(0.9) * f(1.0))) + f(0.25),
                                            2.5, 1.5, f(0.9)]).tolist()
    assert n == 5
    _assert_identical(_all_results(index, q), (rows, scores, n))
    q = q._replace(exclude_session=True, neighbors=2)
    assert oracle(index, q)[0] == [4, 2]
    _assert_identical(_all_results(index, q), oracle(index, q))


def test_eviction_forgets_the_oldest_session():
    """sample = 2: item 0's sessions 5, 4 fill R; item 1's session 6 evicts 4; session 4 met
    again (item 2) is new: it evicts 5, which loses item 0's weight."""
    sessions = [[9]] * 4 + [[0, 2, 7], [0, 8], [1]]  # sessions 4, 5, 6
    index = build_index(sessions, 10, 10)
    q = query([2, 1, 0], sample=2, neighbors=5, k=10)
    rows, scores, n = oracle(index, q)
    # item 0 (p=0, pi=1): R = {5: 1, 4: 1}; item 1 (p=1, pi=2/3): 6 > 4 evicts 4
    # item 2 (p=2, pi=1/3): 4 < min(R) = 5: stop. Neighbors: 5 (sim 1), 6 (2/3, lam 0.9)
    assert rows == [8] and n == 3  # 0 and 1 are session items, excluded
    _assert_identical(_all_results(index, q), (rows, scores, n))
    q = q._replace(session=np.array([1, 2, 0], np.int32))
    # item 0: R = {5, 4}; item 2 (p=1): session 4 gains; item 1 (p=2): 6 evicts 4
    rows, scores, n = oracle(index, q)
    assert rows == [8] and n == 3
    _assert_identical(_all_results(index, q), (rows, scores, n))


def test_positions_past_ten_weigh_nothing():
    """lam = max(0, 1 - 0.1 pos): a neighbor found only through an item far back
    contributes 0 to its items, which are candidates all the same: item 0, 14 events
    back, is the only way to session 0."""
    sessions = [[0, 5], [1, 6]]
    index = build_index(sessions, 12, 10)
    session = [0] + list(range(2, 5)) * 3 + [7, 8, 9, 10, 1]
    q = query(session, k=10)
    rows, scores, n = oracle(index, q)
    assert rows[:2] == [6, 5] and scores[1] == 0.0 and n == 4
    _assert_identical(_all_results(index, q), (rows, scores, n))


def test_position_table_worked_example():
    """Session [3, 0]: item 0 (p = 0) brings in sessions 1 and 0, item 3 (p = 1) adds to
    session 0. Table (h = 2) [0.5, 0.5, 1, 4, 2]: in session 1 = [2, 0, 5, 6, 7] the shared
    item 0 is at place 1, so 2 weighs 0.5 (offset -1), 5 weighs 4 (+1), 6 weighs 2 (+2)
    and 7 (+3, clamped to +2) 2."""
    table = np.array([0.5, 0.5, 1, 4, 2], np.float32)
    sessions = [[3, 0, 8], [2, 0, 5, 6, 7]]
    index = build_index(sessions, 10, 10, position_weight=table)
    q = query([3, 0], k=10)
    rows, scores, n = oracle(index, q)
    # sims: session 1: 1 (pos 0), session 0: 1 + 1/2 (pos 0); both w = sim
    f = np.float32
    expected = {5: f(4), 6: f(2), 7: f(2), 2: f(0.5), 8: f(f(1.5) * f(4))}
    assert rows == sorted(expected, key=lambda r: (-expected[r], r))
    assert _bits(scores).tolist() == _bits([expected[r] for r in rows]).tolist()
    assert n == 7
    _assert_identical(_all_results(index, q), (rows, scores, n))


def test_a_table_of_ones_changes_no_bit():
    """Without a table every place weighs 1: a table of ones gives the same bits."""
    rng = np.random.default_rng(3)
    sessions = [rng.permutation(12)[:rng.integers(1, 8)].tolist() for _ in range(40)]
    weight = (rng.random(12) * 2).astype(np.float32)
    plain = build_index(sessions, 12, 20, weight)
    ones = build_index(sessions, 12, 20, weight, position_weight=np.ones(7, np.float32))
    for length in (1, 3, 6):
        q = query(rng.integers(0, 12, length), sample=15, neighbors=6, k=12,
                  exclude_session=False, session_bonus=0.5)
        a = _assert_identical(_all_results(plain, q))
        b = _assert_identical(_all_results(ones, q))
        assert a[0].tolist() == b[0].tolist() and np.array_equal(_bits(a[1]), _bits(b[1]))


def test_bad_position_tables_are_refused():
    index = _tiny()
    parts = dict(item_indptr=index.item_indptr, item_sessions=index.item_sessions,
                 session_indptr=index.session_indptr, session_items=index.session_items,
                 item_weight=index.item_weight)
    for bad in (np.ones(4, np.float32), np.ones(3, np.float64), np.ones((3, 1), np.float32),
                np.array([1, np.nan, 1], np.float32), np.array([1, -1, 1], np.float32),
                np.ones(2 * 1024 + 3, np.float32)):
        with pytest.raises(ValueError, match="position_weight"):
            SknnIndex(**parts, position_weight=bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_session_and_empty_index(backend):
    index = build_index([[0, 1], [], [2]], 3, 5)
    kernel = make_sknn_kernel(index, backend)
    rows, scores, n = kernel.top_k(query([]), SknnScratch.for_index(index))
    assert len(rows) == len(scores) == 0 and n == 0
    rows, scores, n = kernel.top_k(query([1, 1, 0]), SknnScratch.for_index(index))
    assert rows.tolist() == [] and n == 2  # both candidates are session items
    empty = build_index([], 4, 5)
    rows, _, n = make_sknn_kernel(empty, backend).top_k(query([0, 3]),
                                                       SknnScratch.for_index(empty))
    assert rows.tolist() == [] and n == 0


def _tiny():
    return build_index([[0, 1], [1, 2], [2, 3], [0, 3]], 5, 3,
                       categories=np.array([0, 1, 0, 1, 0], np.int32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field,bad", [
    ("session", [0, 5]), ("session", [-1]), ("excluded", [5]), ("excluded", [2, -3]),
    ("allowed", [1, 5]), ("allowed", [2**31 - 1])])
def test_rows_out_of_range_are_refused_before_any_write(backend, field, bad):
    index = _tiny()
    scratch = SknnScratch.for_index(index)
    q = query([0, 1])._replace(**{field: np.array(bad, np.int32)})
    with pytest.raises(RowRangeError) as info:
        make_sknn_kernel(index, backend).top_k(q, scratch)
    assert info.value.row == [x for x in bad if not 0 <= x < 5][0]
    for arr in (scratch.item_seen, scratch.item_touched, scratch.item_excluded,
                scratch.item_allowed, scratch.session_mark):
        assert not arr.any()


def _damaged(**changes) -> SknnIndex:
    index = _tiny()
    arrays = {name: getattr(index, name).copy() for name in
              ("item_indptr", "item_sessions", "session_indptr", "session_items")}
    for name, (pos, value) in changes.items():
        arrays[name][pos] = value
    return SknnIndex(**arrays, item_weight=index.item_weight, categories=index.categories)


# _tiny(): item lists 0: [3, 0], 1: [1, 0], 2: [2, 1], 3: [3, 2], 4: []
# (item_indptr [0, 2, 4, 6, 8, 8]); sessions [[0, 1], [1, 2], [2, 3], [0, 3]]
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("changes,session,expected", [
    ({"item_sessions": (0, 4)}, [0], ("item_sessions", 0)),        # session id == S
    ({"item_sessions": (1, -1)}, [0], ("item_sessions", 1)),
    ({"item_indptr": (1, 9)}, [0], ("item_indptr", 1)),            # past the data
    ({"item_indptr": (1, 9)}, [1], ("item_indptr", 1)),            # start past the data
    ({"item_indptr": (2, 1)}, [1], ("item_indptr", 2)),            # decreasing
    ({"item_indptr": (0, -5)}, [0], ("item_indptr", 0)),
    ({"session_indptr": (4, 99)}, [0], ("session_indptr", 4)),     # session 3's end
    ({"session_indptr": (3, 3)}, [3], ("session_indptr", 3)),      # session 2: 4 > 3
    ({"session_items": (6, 5)}, [0], ("session_items", 6)),        # item == n_items
    ({"session_items": (0, -2)}, [0], ("session_items", 0)),
])
def test_bad_index_entries_are_reported_not_read(backend, changes, session, expected):
    index = _damaged(**changes)
    with pytest.raises(IndexRangeError) as info:
        make_sknn_kernel(index, backend).top_k(query(session), SknnScratch.for_index(index))
    assert (info.value.array_name, info.value.position) == expected
    assert str(info.value) == f"{expected[0]}[{expected[1]}] is out of range"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_entries_that_are_not_read_do_not_matter(backend):
    """The index is checked lazily: damage in lists a call never reads is not reported."""
    for changes, session, sample in (
            ({"item_sessions": (7, 99)}, [0], 10),  # item 3's list: not a session item
            ({"item_indptr": (5, 99)}, [0], 10),    # item 4's end: not read
            ({"session_items": (4, -1)}, [1], 10),  # session 2: not a neighbor of item 1
            # sample 1: item 0 keeps session 3; item 1's list [1, 0] stops at once (1 < 3)
            ({"item_sessions": (3, -1)}, [1, 0], 1)):
        index = _damaged(**changes)
        rows, _, _ = make_sknn_kernel(index, backend).top_k(
            query(session, sample=sample), SknnScratch.for_index(index))
        assert len(rows) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_arguments_that_do_not_fit_are_refused(backend):
    index = _tiny()
    kernel = make_sknn_kernel(index, backend)
    q = query([0, 1])
    for bad in (q._replace(sample=0), q._replace(neighbors=0), q._replace(k=0),
                q._replace(k=-3), q._replace(session=np.array([0, 1], np.int64)),
                q._replace(excluded=np.array([[1]], np.int32)),
                q._replace(session=np.arange(4, dtype=np.int32)[::2])):
        with pytest.raises(ValueError):
            kernel.top_k(bad, SknnScratch.for_index(index))
    with pytest.raises(ValueError, match="scratch made for"):
        kernel.top_k(q, SknnScratch(6, 4))
    no_cats = build_index([[0, 1]], 2, 3)
    with pytest.raises(ValueError, match="category filter"):
        make_sknn_kernel(no_cats, backend).top_k(query([0], allowed_cats=[0]),
                                                 SknnScratch.for_index(no_cats))


def test_c_kernel_refuses_a_scratch_with_too_few_slots():
    """The C kernel checks the scratch struct itself (the wrapper grows the slots first)."""
    from sessrec_sdk.kernels import sknn_c

    index = _tiny()
    kernel = sknn_c.CSknnKernel(index)
    scratch = SknnScratch.for_index(index, max_sample=2)
    kernel.top_k(query([0], sample=2), scratch)
    sc, cq, n_cand = scratch.c_pointers[:3]
    buf = sknn_c.ffi.from_buffer
    session, excluded = np.array([0], np.int32), np.empty(0, np.int32)
    session_buf, excluded_buf = buf("int32_t[]", session), buf("int32_t[]", excluded)
    cq.session, cq.n_session = session_buf, 1
    cq.excluded, cq.n_excluded = excluded_buf, 0
    cq.sample = 3  # 3 slots needed, 2 allocated
    out_rows, out_scores = np.zeros(5, np.int32), np.zeros(5, np.float32)
    rc = sknn_c.lib.sr_sknn_top_k(kernel._index, cq, sc, buf("int32_t[]", out_rows),
                                  buf("float[]", out_scores), n_cand)
    assert rc == sknn_c.ERR_ARGUMENT
    cq.sample, sc.n_items = 2, 4  # a scratch made for another catalog
    assert sknn_c.lib.sr_sknn_top_k(kernel._index, cq, sc, buf("int32_t[]", out_rows),
                                    buf("float[]", out_scores), n_cand) == sknn_c.ERR_ARGUMENT


def _random_index(seed: int, n_items=40, n_sessions=120):
    rng = np.random.default_rng(seed)
    sessions = [rng.permutation(n_items)[:rng.integers(1, 8)].tolist()
                for _ in range(n_sessions)]
    weight = rng.choice(np.array([0.5, 1.0, 1.5], np.float32), n_items)
    return build_index(sessions, n_items, 30, weight, rng.integers(0, 3, n_items).astype(
        np.int32)), rng


@pytest.mark.parametrize("backend", BACKENDS)
def test_scratch_reused_across_calls_of_different_sizes(backend):
    """One scratch, many calls (growing and shrinking sample, every filter): each answer
    equals a fresh scratch's and the oracle's."""
    index, rng = _random_index(3)
    kernel = make_sknn_kernel(index, backend)
    scratch = SknnScratch.for_index(index, max_sample=2)
    for i in range(60):
        q = query(rng.integers(0, 40, rng.integers(0, 15)), sample=int(rng.integers(1, 200)),
                  neighbors=int(rng.integers(1, 50)), k=int(rng.integers(1, 45)),
                  exclude_session=bool(i % 2), session_bonus=0.5,
                  excluded=rng.integers(0, 40, 3),
                  allowed=rng.integers(0, 40, 30) if i % 3 == 0 else None,
                  allowed_cats=[i % 3] if i % 5 == 0 else None)
        rows, scores, n = kernel.top_k(q, scratch)
        want_rows, want_scores, want_n = oracle(index, q)
        assert rows.tolist() == want_rows and n == want_n
        assert _bits(scores).tolist() == _bits(want_scores).tolist()
    assert scratch.capacity == index.n_sessions or backend == "numpy"


@pytest.mark.parametrize("backend", BACKENDS)
def test_stamp_wrap_around(backend):
    """Stamps of the last epoch before the wrap must not leak into the first after it."""
    index, rng = _random_index(5)
    kernel = make_sknn_kernel(index, backend)
    q1 = query([1, 2, 3], sample=20, excluded=[4, 5], allowed=list(range(20)))
    q2 = query([3, 7], sample=5, exclude_session=False, session_bonus=1.0)
    scratch = SknnScratch.for_index(index)
    scratch.epoch = 0xFFFFFFFF - 1
    first = kernel.top_k(q1, scratch)  # stamps epoch 0xFFFFFFFF
    second = kernel.top_k(q2, scratch)  # wraps: every mark cleared, epoch 1
    third = kernel.top_k(q1, scratch)
    assert scratch.epoch == (2 if backend != "numpy" else 0xFFFFFFFF - 1)
    for got, q in ((first, q1), (second, q2), (third, q1)):
        want = oracle(index, q)
        assert got[0].tolist() == want[0] and got[2] == want[2]
        assert _bits(got[1]).tolist() == _bits(want[1]).tolist()


def test_scratch_epoch_wraps_around():
    s = SknnScratch(3, 4)
    for arr in (s.item_seen, s.item_touched, s.item_excluded, s.item_allowed,
                s.session_mark):
        assert arr.dtype == np.uint32
        arr[:] = 7
    s.epoch = 0xFFFFFFFF
    assert s.next_epoch() == 1
    assert not any(a.any() for a in (s.item_seen, s.item_touched, s.item_excluded,
                                     s.item_allowed, s.session_mark))


def test_scratch_slots_grow_to_at_most_the_sessions():
    s = SknnScratch(3, 4, max_sample=2)
    assert s.capacity == 2 and s.heap.shape == (2,)
    s.reserve(1)
    assert s.capacity == 2
    s.reserve(10**9)
    assert s.capacity == 4 and s.slot_sim.shape == (4,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_the_catalog(backend):
    index = _tiny()
    rows, scores, n = make_sknn_kernel(index, backend).top_k(
        query([0, 1], k=2**31 - 1, exclude_session=False), SknnScratch.for_index(index))
    want = oracle(index, query([0, 1], k=2**31 - 1, exclude_session=False))
    assert rows.tolist() == want[0] and n == want[2] == 4
    assert _bits(scores).tolist() == _bits(want[1]).tolist()


def test_reference_is_the_numpy_backend_and_auto_is_c():
    index = _tiny()
    assert make_sknn_kernel(index).name == "c"
    assert make_sknn_kernel(index, "numpy").name == "numpy"
    rows, scores, n = sknn_top_k(index, query([0, 1]))
    want = oracle(index, query([0, 1]))
    assert (rows.tolist(), n) == (want[0], want[2]) and n == 4
    with pytest.raises(ValueError, match="backend must be one of"):
        make_sknn_kernel(index, "cuda")


def test_index_shapes_are_checked_at_construction():
    index = _tiny()
    parts = dict(item_indptr=index.item_indptr, item_sessions=index.item_sessions,
                 session_indptr=index.session_indptr, session_items=index.session_items,
                 item_weight=index.item_weight, categories=index.categories)
    for name, bad in (("item_indptr", index.item_indptr.astype(np.int32)),
                      ("item_weight", np.ones(4, np.float32)),
                      ("categories", np.zeros(6, np.int32)),
                      ("session_items", index.session_items.astype(np.int64)),
                      ("session_indptr", np.zeros(0, np.int64))):
        with pytest.raises(ValueError):
            SknnIndex(**{**parts, name: bad})
    assert (index.n_items, index.n_sessions) == (5, 4)
