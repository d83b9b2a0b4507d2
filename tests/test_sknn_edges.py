"""Edges of the session-kNN kernel wrappers (sessrec_sdk/kernels/sknn.py, sknn_c.py): the
index and query checks word for word, at and just past each bound, the scratch layout the
C struct is pinned to, and the C wrapper's reuse of its pinned struct and its last-resort
error. The kernels' answers themselves are compared in tests/test_sknn_kernels.py.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from test_sknn_kernels import _tiny, build_index, query  # tests/ is on sys.path under pytest

from sessrec_sdk.kernels import sknn
from sessrec_sdk.kernels.sknn import (
    SknnIndex,
    SknnScratch,
    check_sknn_query,
    make_sknn_kernel,
)

I32_MAX = 2**31 - 1


def _parts(index: SknnIndex) -> dict:
    return dict(item_indptr=index.item_indptr, item_sessions=index.item_sessions,
                session_indptr=index.session_indptr, session_items=index.session_items,
                item_weight=index.item_weight, categories=index.categories,
                position_weight=index.position_weight)


def _refused(message: str, **changes):
    """SknnIndex(_tiny() with ``changes``) raises ValueError(message), word for word."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SknnIndex(**{**_parts(_tiny()), **changes})


@pytest.mark.parametrize("name,dtype", [
    ("item_indptr", "int64"), ("session_indptr", "int64"), ("item_sessions", "int32"),
    ("session_items", "int32"), ("item_weight", "float32"), ("categories", "int32"),
    ("position_weight", "float32")])
def test_each_index_array_is_named_with_its_dtype(name, dtype):
    """A wrong dtype names the array and the dtype it must have."""
    index = _tiny()
    arr = getattr(index, name)
    arr = np.ones(3, np.float32) if arr is None else arr
    wrong = arr.astype(np.float64)
    _refused(f"{name} must be a 1-D {dtype} array", **{name: wrong})


def test_index_arrays_must_be_contiguous_and_sized():
    every_other = np.zeros(12, np.int64)[::2]  # 6 entries, not C-contiguous
    _refused("item_indptr must be C-contiguous", item_indptr=every_other)
    _refused("item_weight must have 5 entries, got 4", item_weight=np.ones(4, np.float32))
    _refused("categories must have 5 entries, got 6", categories=np.zeros(6, np.int32))
    _refused("an indptr needs at least one entry", session_indptr=np.zeros(0, np.int64))
    _refused("an indptr needs at least one entry", item_indptr=np.zeros(0, np.int64),
             item_weight=np.ones(0, np.float32), categories=None)


def test_an_index_without_items_or_sessions_is_accepted():
    """One indptr entry is an empty list of items (or sessions): valid, and answers
    nothing."""
    empty = SknnIndex(item_indptr=np.zeros(1, np.int64), item_sessions=np.empty(0, np.int32),
                      session_indptr=np.zeros(1, np.int64),
                      session_items=np.empty(0, np.int32), item_weight=np.ones(0, np.float32))
    assert (empty.n_items, empty.n_sessions) == (0, 0)
    rows, scores, n = sknn.sknn_top_k(empty, query([]))
    assert rows.tolist() == [] and scores.tolist() == [] and n == 0


def test_position_table_size_bounds():
    """At most 2 * MAX_POSITION_HALF + 1 = 2049 entries, an odd number: 2049 is accepted,
    2051 and an even size are refused with the bound in the message."""
    assert sknn.MAX_POSITION_HALF == 1024
    parts = _parts(_tiny())
    largest = SknnIndex(**{**parts, "position_weight": np.ones(2049, np.float32)})
    assert largest.position_half == 1024
    one = SknnIndex(**{**parts, "position_weight": np.ones(1, np.float32)})
    assert one.position_half == 0
    for n in (2051, 4, 2050):
        _refused(f"position_weight must have an odd number of entries, at most 2049, got {n}",
                 position_weight=np.ones(n, np.float32))
    for bad in (np.array([1, np.inf, 1], np.float32), np.array([0, -0.5, 0], np.float32)):
        _refused("position_weight must be finite and >= 0", position_weight=bad)


def test_session_count_bound(tmp_path):
    """Session ids are int32: 2**31 - 1 sessions are accepted, 2**31 refused. The indptr is
    a memory-mapped sparse file of zeros (only its shape is checked at construction)."""
    path = tmp_path / "session_indptr"
    with open(path, "wb") as f:
        f.truncate((2**31 + 1) * 8)
    indptr = np.memmap(path, dtype=np.int64, mode="r")
    parts = _parts(_tiny())
    largest = SknnIndex(**{**parts, "session_indptr": indptr[:-1]})
    assert largest.n_sessions == I32_MAX
    with pytest.raises(ValueError, match=r"^session ids are int32: at most 2\*\*31 - 1 "
                                         r"sessions$"):
        SknnIndex(**{**parts, "session_indptr": indptr})
    del largest, indptr


def _message(index, q) -> str:
    with pytest.raises(ValueError) as info:
        check_sknn_query(index, q)
    return str(info.value)


def test_query_counts_below_one_are_named():
    index = _tiny()
    assert _message(index, query([0], sample=0, neighbors=2, k=3)) == \
        "sample, neighbors and k must be >= 1, got 0, 2, 3"
    assert _message(index, query([0], sample=4, neighbors=5, k=-1)) == \
        "sample, neighbors and k must be >= 1, got 4, 5, -1"


@pytest.mark.parametrize("field", ["sample", "neighbors", "k"])
def test_query_counts_must_fit_int32(field):
    """Each of sample, neighbors and k on its own: 2**31 - 1 passes, 2**31 is refused."""
    index = _tiny()
    assert check_sknn_query(index, query([0], **{field: I32_MAX})) is None
    for too_big in (2**31, 2**32):
        assert _message(index, query([0], **{field: too_big})) == \
            "sample, neighbors and k must fit int32"


def test_the_largest_counts_answer_like_small_ones():
    """sample, neighbors and k at 2**31 - 1 on every backend: the same answer as counts
    that cover the whole index."""
    index = _tiny()
    want = sknn.sknn_top_k(index, query([0, 1], sample=10, neighbors=10, k=10))
    big = query([0, 1], sample=I32_MAX, neighbors=I32_MAX, k=I32_MAX)
    for backend in sknn.available_sknn_backends():
        rows, scores, n = make_sknn_kernel(index, backend).top_k(
            big, SknnScratch.for_index(index))
        assert rows.tolist() == want[0].tolist() and n == want[2] == 4, backend
        assert scores.tolist() == want[1].tolist(), backend


@pytest.mark.parametrize("field", ["session", "excluded", "allowed", "allowed_cats"])
def test_each_row_array_of_a_query_is_checked(field):
    """Every row array, the optional ones too when given, must be C-contiguous 1-D int32;
    the error names it."""
    index = _tiny()  # has categories: a category filter is allowed
    q = query([0, 1], excluded=[2], allowed=[0, 1, 2], allowed_cats=[0])
    assert check_sknn_query(index, q) is None
    for bad in (np.array([0], np.int64), np.zeros((1, 1), np.int32),
                np.zeros(4, np.int32)[::2], [0]):
        assert _message(index, q._replace(**{field: bad})) == \
            f"{field} must be a C-contiguous 1-D int32 array"


def test_a_bad_category_filter_is_checked_without_an_allow_list():
    """allowed=None skips only the allow-list: the category filter after it is checked."""
    index = _tiny()
    q = query([0], allowed=None, allowed_cats=[0])
    assert check_sknn_query(index, q) is None
    assert _message(index, q._replace(allowed_cats=np.array([0], np.int64))) == \
        "allowed_cats must be a C-contiguous 1-D int32 array"


def test_a_category_filter_needs_categories_word_for_word():
    no_cats = build_index([[0, 1]], 2, 3)
    assert _message(no_cats, query([0], allowed_cats=[0])) == \
        "a category filter needs an index with categories"
    assert check_sknn_query(no_cats, query([0], allowed_cats=None)) is None


def test_make_sknn_kernel_warms_up_a_kernel_that_can(monkeypatch):
    """A kernel with warm_up (Numba: compile outside any timed call) is warmed once by
    make_sknn_kernel."""
    calls = []

    class Warmable(sknn.NumpySknnKernel):
        name = "warmable"

        def warm_up(self):
            calls.append(self)

    monkeypatch.setattr(sknn, "_load", lambda name: Warmable)
    index = _tiny()
    kernel = make_sknn_kernel(index, "numpy")
    assert isinstance(kernel, Warmable) and calls == [kernel]


def test_scratch_default_slots_and_the_smallest():
    """500 candidate slots by default (fewer when the index has fewer sessions); a scratch
    asked for one slot (or none) gets exactly one."""
    assert SknnScratch(3, 10_000).capacity == 500
    many = SknnIndex(item_indptr=np.zeros(4, np.int64), item_sessions=np.empty(0, np.int32),
                     session_indptr=np.zeros(1001, np.int64),
                     session_items=np.empty(0, np.int32), item_weight=np.ones(3, np.float32))
    scratch = SknnScratch.for_index(many)
    assert scratch.capacity == 500 and scratch.heap.shape == (500,)
    for asked in (1, 0, -4):
        small = SknnScratch(3, 10, max_sample=asked)
        assert small.capacity == 1 and small.heap.shape == (1,) and small.order.shape == (1,)
    assert SknnScratch(3, 0).capacity == 0


def test_scratch_arrays_have_the_types_of_the_c_struct():
    """The C backend pins these arrays as typed pointers (uint32_t *, float *, int32_t *,
    int64_t *): each must have that dtype and size; a fresh scratch is in the state a
    wrap-around leaves (epoch 0, next stamp 1), not yet pinned."""
    s = SknnScratch(5, 7, max_sample=3)
    want = {"item_seen": (np.uint32, 5), "item_touched": (np.uint32, 5),
            "item_excluded": (np.uint32, 5), "item_allowed": (np.uint32, 5),
            "item_score": (np.float32, 5), "item_list": (np.int32, 5),
            "item_pos": (np.int32, 5), "session_mark": (np.uint32, 7),
            "session_slot": (np.int32, 7), "heap": (np.int32, 3),
            "slot_session": (np.int32, 3), "slot_sim": (np.float32, 3),
            "slot_pos": (np.int32, 3), "order": (np.int32, 3), "error": (np.int64, 2)}
    for field, (dtype, size) in want.items():
        arr = getattr(s, field)
        assert arr.dtype == dtype and arr.shape == (size,), field
    assert s.c_pointers is None and s.capacity == 3
    assert s.epoch == 0 and s.next_epoch() == 1


def test_c_kernel_keeps_its_pinned_struct_while_the_slots_suffice():
    """The scratch struct is built once and reused by every call whose sample fits its
    slots (same sample included); a larger sample grows the slots and pins them anew."""
    index = _tiny()
    kernel = make_sknn_kernel(index, "c")
    scratch = SknnScratch.for_index(index, max_sample=2)
    want = sknn.sknn_top_k(index, query([0, 1], sample=2))
    got = kernel.top_k(query([0, 1], sample=2), scratch)
    pinned, heap = scratch.c_pointers, scratch.heap
    assert pinned is not None and scratch.capacity == 2
    for sample in (2, 1, 2):
        got = kernel.top_k(query([0, 1], sample=sample), scratch)
        assert scratch.c_pointers is pinned and scratch.heap is heap
    assert got[0].tolist() == want[0].tolist() and got[2] == want[2]
    scratch.reserve(2)
    assert scratch.c_pointers is pinned and scratch.heap is heap
    kernel.top_k(query([0, 1], sample=3), scratch)
    assert scratch.capacity == 3 and scratch.c_pointers is not pinned


def test_c_kernel_struct_points_at_buffers_it_keeps():
    """Each field of the pinned struct points at the start of its scratch array, through a
    buffer object the pin holds (it keeps the array exported while the struct points in)."""
    from sessrec_sdk._kernels import ffi

    index = _tiny()
    scratch = SknnScratch.for_index(index, max_sample=3)
    make_sknn_kernel(index, "c").top_k(query([0, 1], sample=3), scratch)
    sc, keep = scratch.c_pointers[0], scratch.c_pointers[3]
    fields = [f for f, info in ffi.typeof("sr_sknn_scratch").fields
              if info.type.kind == "pointer"]
    assert len(keep) == len(fields) == 15
    for field, buf in zip(fields, keep):
        arr = getattr(scratch, field)
        assert ffi.typeof(buf).kind == "array" and len(buf) == arr.size, field
        address = int(ffi.cast("uintptr_t", getattr(sc, field)))
        assert address == int(ffi.cast("uintptr_t", buf)) == arr.ctypes.data, field


def test_c_kernel_never_writes_through_a_read_only_scratch_array():
    """Every scratch array is pinned writable: a read-only one (e.g. a read-only mapping)
    is refused before the C code runs, and stays untouched."""
    index = _tiny()
    kernel = make_sknn_kernel(index, "c")
    for field in ("item_seen", "item_score", "error"):
        scratch = SknnScratch.for_index(index)
        getattr(scratch, field).flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            kernel.top_k(query([0, 1]), scratch)
        assert not getattr(scratch, field).any(), field


@pytest.mark.parametrize("with_cats", [True, False])
def test_c_kernel_argument_error_names_the_call(with_cats):
    """Should the C code still refuse its arguments (here: a pinned scratch struct damaged
    by hand, claiming no slots), the wrapper raises a ValueError naming the call's counts
    and whether the index has categories, never returns a partial answer."""
    index = _tiny() if with_cats else build_index([[0, 1], [1, 2], [2, 3], [0, 3]], 5, 3)
    kernel = make_sknn_kernel(index, "c")
    scratch = SknnScratch.for_index(index, max_sample=3)
    kernel.top_k(query([0, 1], sample=3), scratch)
    scratch.c_pointers[0].capacity = 0
    with pytest.raises(ValueError) as info:
        kernel.top_k(query([0, 1], sample=3, neighbors=2, k=4), scratch)
    assert str(info.value) == ("session-kNN kernel arguments out of range (sample=3, "
                               f"neighbors=2, k=4, categories={'yes' if with_cats else 'no'})")
