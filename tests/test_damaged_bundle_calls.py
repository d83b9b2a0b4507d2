"""What a call on an unverified, damaged bundle reports, word for word: the error names the
damaged file and the entry, or the documented fallback answers. Small synthetic bundles,
one file damaged at a time (seconds), so that the mutation runs (scripts/mutation.sh)
reach these paths; the fault-injection matrix (tests/test_fault_injection.py) covers
every file and damage family, but only checks that a refusal names a file.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from fault_injection import resign  # tests/ is on sys.path under pytest

from export_tools.synthetic import build_synthetic_bundle
from sessrec_sdk import CorruptFileError, Recommender
from sessrec_sdk.bundle import SessionIndex, read_bundle, write_bundle
from sessrec_sdk.kernels.common import RowRangeError

N_ITEMS, K = 200, 10


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_synthetic_bundle(tmp_path_factory.mktemp("base") / "b", n_items=N_ITEMS,
                                  dim=16, neighbors=10, seed=1)


@pytest.fixture(scope="module")
def knn_base(base, tmp_path_factory):
    """A session-kNN bundle (no encoder) over random sessions of the base catalog."""
    from export_tools.models.sknn import build_index

    rng = np.random.default_rng(4)
    sessions = [rng.choice(N_ITEMS, int(rng.integers(2, 7)), replace=False)
                for _ in range(300)]
    index = build_index(sessions, N_ITEMS, sample=30, idf=False)
    b = read_bundle(base)
    out = tmp_path_factory.mktemp("knn") / "b"
    return write_bundle(
        out, encoder=None, item_matrix=None, neighbors=None,
        item_ids=np.asarray(b.ids.in_row_order), popularity=np.asarray(b.popularity),
        popularity_scores=np.asarray(b.popularity_scores),
        item_category=np.asarray(b.item_category), model={"kind": "sknn", "config": {}},
        inference={"max_session_length": 5, "session_filter": "none"},
        defaults={"k": K, "candidates": "sessions", "neighbors": 20,
                  "category_filter": "none", "exclude_session_items": True,
                  "repeat_bonus": 0.0},
        session_index=SessionIndex(*(index[f] for f in (
            "item_indptr", "item_sessions", "session_indptr", "session_items",
            "item_weight"))),
        sknn={"n_sessions": 300, "sample": 30, "idf": False, "neighbors": 20, "window": 5})


def _damaged(src, dst, name: str, change) -> Recommender:
    """A copy of ``src`` with ``change`` applied to the array of ``name``, re-signed (so
    only the values are wrong), loaded unverified."""
    shutil.copytree(src, dst)
    arr = np.load(dst / name)
    change(arr)
    np.save(dst / name, arr)
    resign(dst, name)
    return Recommender.load(dst, verify=False)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_neighbor_out_of_range_names_the_file_and_the_row(base, tmp_path, backend):
    """An id past the catalog in one neighbor row: the call that reads that row raises
    CorruptFileError with the file and the row; calls that do not read it answer."""
    shutil.copytree(base, tmp_path / "b")
    arr = np.load(tmp_path / "b" / "neighbors.npy")
    arr[5, 3] = N_ITEMS + 7
    np.save(tmp_path / "b" / "neighbors.npy", arr)
    resign(tmp_path / "b", "neighbors.npy")
    rec = Recommender.load(tmp_path / "b", verify=False, backend=backend)
    ids = rec.item_ids
    with pytest.raises(CorruptFileError) as err:
        rec.recommend([ids[5]], k=K)
    assert str(err.value) == (f"{tmp_path / 'b' / 'neighbors.npy'}: row 5 holds an item id "
                              "out of range (damaged bundle?)")
    assert err.value.__cause__ is None and err.value.__suppress_context__
    other = next(r for r in range(N_ITEMS) if r != 5 and 5 not in arr[r])
    assert len(rec.recommend([ids[other]], k=K)) == K


def test_a_row_the_kernel_refuses_is_reported_as_the_id_order(base, monkeypatch):
    """The load checks the id order's rows, so no call can hand the kernel a row outside
    the catalog; were one to (a kernel's RowRangeError), the call names the id order."""
    rec = Recommender.load(base)
    kernel = rec._served.kernel

    class Refusing:
        def top_k(self, q, scratch):
            raise RowRangeError(1234)

    monkeypatch.setattr(rec._served, "kernel", Refusing())
    with pytest.raises(CorruptFileError) as err:
        rec.recommend([rec.item_ids[0]], k=K)
    assert str(err.value) == (f"{base / 'item_ids_order.npy'}: maps an id to row 1234, "
                              "outside the catalog (damaged bundle?)")
    assert err.value.__cause__ is None and err.value.__suppress_context__
    monkeypatch.setattr(rec._served, "kernel", kernel)
    assert len(rec.recommend([rec.item_ids[0]], k=K)) == K


@pytest.mark.parametrize("name, array", [("sknn_item_sessions.npy", "item_sessions"),
                                         ("sknn_session_items.npy", "session_items")])
def test_session_index_out_of_range_names_the_file_and_the_entry(knn_base, tmp_path,
                                                                 name, array):
    """Every entry of one session-index array past its range: the call raises
    CorruptFileError naming that array's file and an entry of it."""
    rec = _damaged(knn_base, tmp_path / "b", name, lambda a: a.__setitem__(slice(None),
                                                                           2**31 - 1))
    n = len(np.load(tmp_path / "b" / name))
    with pytest.raises(CorruptFileError) as err:
        for r in range(N_ITEMS):  # the first item with a list reads it
            rec.recommend([rec.item_ids[r]], k=K)
    m = re.fullmatch(re.escape(str(tmp_path / "b" / name)) + ": " + array
                     + r"\[(\d+)\] is out of range \(damaged bundle\?\)", str(err.value))
    assert m is not None, str(err.value)
    assert 0 <= int(m.group(1)) < n
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_nonfinite_scores_fall_back_to_popularity(base, tmp_path):
    """NaN in one item's row of the matrix: a call that scores that item answers with
    the popularity fallback under the call's rules ("nonfinite_scores"): the most popular
    rows minus the session's, their stored scores, the unknown ids counted."""
    seed = 0
    bad = int(np.load(base / "neighbors.npy")[seed, 0])  # a candidate of the seed's call
    rec = _damaged(base, tmp_path / "b", "item_matrix.npy",
                   lambda a: a.__setitem__((bad, 2), np.nan))
    b = rec.bundle
    pop, pop_scores = np.asarray(b.popularity), np.asarray(b.popularity_scores)
    session = [rec.item_ids[seed], -5, rec.item_ids[(seed + 1) % N_ITEMS]]
    out = rec.recommend(session, k=K)
    assert (out.fallback, out.unknown, out.n_candidates) == ("nonfinite_scores", 1, 0)
    rows = b.ids.rows(np.asarray([session[0], session[2]]))
    keep = ~np.isin(pop, rows)
    assert b.ids.rows(out.item_ids).tolist() == pop[keep][:K].tolist()
    assert out.scores.dtype == np.float32
    assert out.scores.tobytes() == pop_scores[keep][:K].astype(np.float32).tobytes()
    # under an allow-list that holds the damaged row: the allowed rows by popularity rank
    allowed = np.array([bad, *pop[[40, 3, 90, 12]]])
    out = rec.recommend(session, k=3, allow=rec.item_ids[allowed])
    assert out.fallback == "nonfinite_scores"
    rank = {int(r): i for i, r in enumerate(pop)}
    want = sorted((r for r in set(allowed.tolist()) - set(rows.tolist())), key=rank.get)[:3]
    assert b.ids.rows(out.item_ids).tolist() == want
