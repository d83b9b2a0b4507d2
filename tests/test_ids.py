"""sessrec_sdk/ids.py on its own: lookups against a Python dict, and the messages that
say what was wrong with a caller's ids."""
from __future__ import annotations

import numpy as np
import pytest

from sessrec_sdk.ids import ItemIds, sorted_index


def _ids(values) -> ItemIds:
    arr = np.asarray(values)
    srt, order = sorted_index(arr)
    return ItemIds(arr, srt, order)


@pytest.mark.parametrize("values", [
    np.array([50, 10, 40, 20, 30], dtype=np.int64),
    np.array(["sku-50", "sku-10", "sku-40", "sku-20", "sku-30"]),
])
def test_rows_and_known_against_a_dict(values):
    ids = _ids(values)
    row_of = {v: r for r, v in enumerate(values.tolist())}
    probe = (np.array([10, 11, 50, 51, 9, 30, 30], dtype=np.int64) if values.dtype.kind == "i"
             else np.array(["sku-10", "sku-11", "sku-50", "sku-51", "sku-0", "sku-30", "sku-30"]))
    expected = [row_of.get(v, -1) for v in probe.tolist()]
    assert ids.rows(probe).tolist() == expected
    rows, unknown = ids.known(probe)
    assert rows.tolist() == [r for r in expected if r >= 0] and unknown == expected.count(-1)
    rows, unknown = ids.known(probe[[0, 2, 5]])  # every id known
    assert rows.tolist() == [row_of[v] for v in probe[[0, 2, 5]].tolist()] and unknown == 0
    assert ids.external(np.array([2, 0])).tolist() == [values[2], values[0]]


@pytest.mark.parametrize("bad,what", [
    (np.array([1.5, 2.0]), r"floats \(dtype float64\)"),
    (np.array([True, False]), r"booleans \(dtype bool\)"),
    (np.array(["a", "b"]), r"strings \(dtype <U1\)"),
    (np.array([b"a"]), r"bytes \(dtype \|S1\)"),
    (np.array([1 + 2j]), r"complex numbers \(dtype complex128\)"),
    (np.array([1.0], dtype=np.float16), r"floats \(dtype float16\)"),
    # a kind without a name: the dtype itself
    (np.array(["2020-01-01"], dtype="datetime64[D]"),
     r"datetime64\[D\] \(dtype datetime64\[D\]\)"),
])
def test_int_catalog_names_the_wrong_kind(bad, what):
    ids = _ids(np.array([1, 2, 3], dtype=np.int64))
    with pytest.raises(TypeError, match=r"session item ids must be integers for this catalog, "
                                        r"got " + what):
        ids.coerce(bad)


def test_nested_input_is_refused():
    ids = _ids(np.array([1, 2, 3], dtype=np.int64))
    with pytest.raises(TypeError, match="flat"):
        ids.coerce([[1, 2], [3, 4]])
    with pytest.raises(TypeError, match="flat"):
        ids.coerce([1, [2, 3]])
    with pytest.raises(TypeError, match="flat"):
        ids.coerce([1, (2, 3)])
    with pytest.raises(TypeError, match="flat"):
        ids.coerce([1, np.array([2, 3])])
    # a flat list of Python ints too large for int64: unknown, not an error
    assert ids.coerce([1, 2**70]).tolist() == [1, np.iinfo(np.int64).min]


# ------------------------------------------------------------------ str coercion edges
# Mutants of this coercion no test can kill (no observable change): in _coerce_str,
# `max(map(len, items)) > width` -> `>=` (an id of exactly the width only takes the Python
# loop, which keeps it) and `"".join` -> `"XXXX".join` (joining with X's adds no NUL); in
# _coerce_objects, `INT64_MIN <= v` -> `<` (INT64_MIN maps to the unknown id, INT64_MIN).


def _str_ids() -> ItemIds:
    """A '<U3' catalog (width 3): "ddd" is there so that a too-long "dddd" cut to the
    catalog's width would match a real id, and "a\\x00c" holds a NUL that is not trailing."""
    return _ids(np.array(["ccc", "a", "bb", "a\x00c", "ddd"]))


def test_str_list_comes_back_in_the_catalog_dtype():
    """A list of short ids is converted to the sorted ids' own dtype (no widening of the
    catalog on lookup); an empty list too."""
    ids = _str_ids()
    out = ids.coerce(["a", "bb"])
    assert out.dtype == np.dtype("<U3") and out.tolist() == ["a", "bb"]
    empty = ids.coerce([])
    assert empty.dtype == np.dtype("<U3") and empty.shape == (0,)
    objects = ids.coerce(np.array(["bb", "a"], dtype=object))  # read like a list
    assert objects.dtype == np.dtype("<U3") and objects.tolist() == ["bb", "a"]
    assert ids.rows(out).tolist() == [1, 2]


def test_str_ids_no_catalog_id_can_equal_become_the_absent_id():
    """Longer than the widest id, or ending in NUL (numpy would cut "dddd" to "ddd" and
    strip "bb\\x00" to "bb", both real ids): replaced by the absent id ("" here), while an
    id of exactly the catalog's width and an id with an inner NUL are kept."""
    ids = _str_ids()
    assert ids._absent == ""
    out = ids.coerce(["ccc", "dddd", "a"])
    assert out.tolist() == ["ccc", "", "a"] and out.dtype == np.dtype("<U3")
    assert ids.rows(out).tolist() == [0, -1, 1]
    out = ids.coerce(["bb\x00", "a\x00c"])
    assert out.tolist() == ["", "a\x00c"]
    assert ids.rows(out).tolist() == [-1, 3]
    rows, unknown = ids.known(ids.coerce(["dddd", "bb\x00", "ddd", "a\x00c"]))
    assert rows.tolist() == [4, 3] and unknown == 2


def test_wide_str_array_is_narrowed_not_the_catalog_widened():
    """A numpy array wider than the catalog's ids comes back in the catalog's dtype, its
    too-long ids as the absent id; an array that fits is used as it is (no copy)."""
    ids = _str_ids()
    wide = np.array(["ccc", "dddd", "a"])
    out = ids.coerce(wide)
    assert wide.dtype == np.dtype("<U4")
    assert out.dtype == np.dtype("<U3") and out.tolist() == ["ccc", "", "a"]
    assert ids.rows(out).tolist() == [0, -1, 1]
    same = np.array(["ddd", "a"])
    assert ids.coerce(same) is same
    narrow = np.array(["a", "bb"])
    assert ids.coerce(narrow) is narrow and narrow.dtype == np.dtype("<U2")


@pytest.mark.parametrize("bad, message", [
    (["a", 5], "session item ids must be str for this catalog, got int 5 at position 1"),
    (["dddd", b"a"], "session item ids must be str for this catalog, got bytes b'a' at "
                     "position 1"),
    (np.array([b"a"]), r"session item ids must be str for this catalog, got bytes "
                       r"\(dtype \|S1\)"),
    (np.array([1.5]), r"session item ids must be str for this catalog, got floats "
                      r"\(dtype float64\)"),
    (np.array([["a", "b"]]), r"session must be a flat \(1-D\) sequence of str item ids, got "
                             r"2-D input"),
    (np.array([["a"]], dtype=object), r"session must be a flat \(1-D\) sequence of str "
                                      r"item ids, got 2-D input"),
])
def test_str_catalog_says_what_is_wrong(bad, message):
    with pytest.raises(TypeError, match="^" + message + "$"):
        _str_ids().coerce(bad)


def test_absent_id_is_the_first_one_character_id_not_in_the_catalog():
    """"" unless the catalog holds it, then chr(1), chr(2), ... (a one-character id: it
    fits any catalog's dtype)."""
    from sessrec_sdk.ids import _absent_str

    def absent(values):
        return _absent_str(np.sort(np.array(values)))

    assert absent(["a", "b"]) == ""
    assert absent(["", "a"]) == "\x01"
    assert absent(["", "\x01"]) == "\x02"  # past the last id
    assert absent(["", "\x01", "\x03", "zz"]) == "\x02"  # between two ids
    ids = _ids(np.array(["", "ab"]))  # used by coerce in place of a too-long id
    assert ids.coerce(["abc", "ab"]).tolist() == ["\x01", "ab"]
    assert ids.rows(ids.coerce(["abc", "ab", ""])).tolist() == [-1, 1, 0]


def test_absent_id_search_tries_every_one_character_id_then_gives_up():
    """A catalog holding "" and every character (a stand-in that says it holds whatever
    is asked): the search tries "", chr(1), ..., chr(0x10FFFF), each once, then raises."""
    from sessrec_sdk.ids import _absent_str

    class HoldsEverything:
        def __init__(self):
            self.tried = []

        def searchsorted(self, candidate):
            self.tried.append(candidate)
            return 0

        def __len__(self):
            return 1

        def __getitem__(self, pos):
            return self.tried[-1]

    catalog = HoldsEverything()
    with pytest.raises(ValueError, match="^a catalog of every one-character id has no room "
                                         "for an absent id$"):
        _absent_str(catalog)
    assert len(catalog.tried) == 0x110000
    assert catalog.tried[:3] == ["", "\x01", "\x02"] and catalog.tried[-1] == chr(0x10FFFF)


# ------------------------------------------------------------------ integer coercion edges


def test_ids_judged_one_by_one_keep_int64_and_its_bounds():
    """Lists numpy cannot turn into int64 (numpy uint64 beside int64 comes out as floats;
    Python ints beyond int64 as objects) are read id by id into int64: the int64 extremes
    are ids, anything beyond them is unknown (INT64_MIN, which no catalog holds)."""
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    ids = _ids(np.array([3, hi, 9], dtype=np.int64))
    out = ids.coerce([np.uint64(9), np.int64(3)])
    assert out.dtype == np.int64 and out.tolist() == [9, 3]
    out = ids.coerce([hi, 2**63, -(2**63) - 1, np.uint64(2**64 - 1), 3, lo])
    assert out.dtype == np.int64 and out.tolist() == [hi, lo, lo, lo, 3, lo]
    assert ids.known(out)[0].tolist() == [1, 0] and ids.known(out)[1] == 4
    out = ids.coerce(np.array([9, 2**63], dtype=object))
    assert out.dtype == np.int64 and out.tolist() == [9, lo]


@pytest.mark.parametrize("bad, message", [
    (np.array([1, True], dtype=object), "got bool True at position 1"),
    ([1, True], "got bool True at position 1"),  # numpy alone would make it [1, 1]
    ((7, np.True_, 2), r"got bool np.True_ at position 1"),
    ([2**64, 1.5], "got float 1.5 at position 1"),
    ([np.uint64(1), np.int64(2), 3.0], "got float 3.0 at position 2"),
    ([1, range(2)], r"got range range\(0, 2\) at position 1"),
])
def test_ids_judged_one_by_one_refuse_non_integers(bad, message):
    """bool is an int subclass and 3.0 equals 3: both are still refused, at their position."""
    with pytest.raises(TypeError, match="^session item ids must be integers for this "
                                        "catalog, " + message + "$"):
        _ids(np.array([1, 2, 3], dtype=np.int64)).coerce(bad)


def test_ragged_nested_list_is_refused_as_not_flat():
    """[[1, 2], [3]] cannot become a 2-D array: refused as nested, not read as two ids."""
    with pytest.raises(TypeError, match="^session must be a flat sequence of integer item "
                                        "ids$"):
        _ids(np.array([1, 2, 3], dtype=np.int64)).coerce([[1, 2], [3]])


def test_uint64_array_holding_the_largest_int64_id_finds_it():
    """A uint64 array is mapped with ``<= INT64_MAX``: the id 2**63 - 1 itself is a valid
    int64 id and is found; 2**63 is not and becomes the unknown id."""
    ids = _ids(np.array([5, 2**63 - 1], dtype=np.int64))
    out = ids.coerce(np.array([2**63 - 1, 2**63, 5], dtype=np.uint64))
    assert out.dtype == np.int64 and out.tolist() == [2**63 - 1, -(2**63), 5]
    rows, unknown = ids.known(out)
    assert rows.tolist() == [1, 0] and unknown == 1


def test_rows_of_no_ids_are_int32_like_any_rows():
    ids = _ids(np.array([5, 9], dtype=np.int64))
    assert ids.rows(np.array([9, 4], dtype=np.int64)).dtype == np.int32
    empty = ids.rows(np.empty(0, dtype=np.int64))
    assert empty.dtype == np.int32 and empty.shape == (0,)
