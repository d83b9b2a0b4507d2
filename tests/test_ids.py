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
