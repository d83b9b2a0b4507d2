"""The array checks ``read_bundle`` runs (sessrec_sdk.bundle: shapes and dtypes, the rows
checked on every load, the values checked on verified loads, the ``.npy`` reader and the
file checks): each case damages one array file of a small synthetic bundle, re-signs it
(a writer bug rather than a flipped bit) and expects the exact error class and message,
and each bound is tried at and just past its edge. Bundles are built once per module."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from fault_injection import (  # tests/ is on sys.path under pytest
    CAT_IO,
    category_encoder,
    encoder_model,
    read_manifest,
    resign,
    write_manifest,
)

from export_tools.synthetic import (
    build_synthetic_bundle,
    build_synthetic_sknn_bundle,
    synthetic_session_index,
)
from sessrec_sdk.bundle import (
    CATEGORY_INDICES,
    CATEGORY_INDPTR,
    INPUT_EMBEDDING,
    ITEM_BIAS,
    ITEM_CATEGORY,
    ITEM_IDS,
    ITEM_IDS_ORDER,
    ITEM_IDS_SORTED,
    ITEM_MATRIX,
    MANIFEST,
    MAX_ABS_VALUE,
    NEIGHBORS,
    POPULARITY,
    POPULARITY_SCORES,
    SKNN_ITEM_INDPTR,
    SKNN_ITEM_SESSIONS,
    SKNN_ITEM_WEIGHT,
    SKNN_SESSION_INDPTR,
    SKNN_SESSION_ITEMS,
    read_bundle,
    write_bundle,
)
from sessrec_sdk.errors import BundleError, ChecksumError, CorruptFileError, MissingFileError

# the "enc" bundle: an encoder bundle with every optional file but the category index
N, DIM, D_IN, WIDTH, N_SESSIONS, N_POP = 60, 8, 6, 5, 40, 45
# the "cat" bundle: an encoder with a category head, so the category -> items index
N_CAT, N_CATS = 40, 5
# the "big" bundle: more than two 65536-row blocks of the value check
N_BIG = 2 * 65536 + 8
BLOCK = 65536
OVER = f"holds NaN, infinite or out-of-range values (|x| > {MAX_ABS_VALUE:g})"
ABOVE_MAX = np.nextafter(np.float32(MAX_ABS_VALUE), np.float32(np.inf))


def _meta(kind: str) -> dict:
    return dict(model={"kind": kind, "config": {}},
                inference={"max_session_length": 4, "session_filter": "none"},
                defaults={"k": 5, "category_filter": "none", "exclude_session_items": True})


def _enc_bundle(out: Path) -> Path:
    """Item bias, input embedding (input_dim != dim), item categories, a float16 item
    matrix, a session index, popularity shorter than the catalog with distinct shares."""
    rng = np.random.default_rng(5)
    matrix = (rng.standard_normal((N, DIM)) / np.sqrt(DIM)).astype(np.float16)
    emb = (rng.standard_normal((N, D_IN)) / np.sqrt(D_IN)).astype(np.float32)
    nbrs = ((np.arange(N)[:, None] + np.arange(1, WIDTH + 1)) % N).astype(np.int32)
    cats = (np.arange(N) % 4).astype(np.int32)
    cats[::7] = -1
    ids = (rng.choice(10**6, size=N, replace=False) + 1).astype(np.int64)
    index, _ = synthetic_session_index(N, N_SESSIONS, sample=10, seed=6)
    return write_bundle(
        out, encoder=encoder_model(D_IN, DIM, seed=1), item_matrix=matrix, neighbors=nbrs,
        item_ids=ids, popularity=rng.permutation(N)[:N_POP].astype(np.int32),
        popularity_scores=np.linspace(0.05, 0.001, N_POP, dtype=np.float32),
        item_category=cats, item_bias=(rng.standard_normal(N) * 0.1).astype(np.float32),
        input_embedding=emb, session_index=index,
        sknn={"n_sessions": N_SESSIONS, "sample": 10, "idf": True}, **_meta("enc"))


def _cat_bundle(out: Path) -> Path:
    rng = np.random.default_rng(8)
    d = 4
    matrix = (rng.standard_normal((N_CAT, d)) / 2).astype(np.float32)
    nbrs = ((np.arange(N_CAT)[:, None] + np.arange(1, 4)) % N_CAT).astype(np.int32)
    cats = (np.arange(N_CAT) % N_CATS).astype(np.int32)
    cats[::9] = -1
    pop = rng.permutation(N_CAT).astype(np.int32)
    return write_bundle(
        out, encoder=category_encoder(d, N_CATS, seed=2), item_matrix=matrix, neighbors=nbrs,
        item_ids=np.arange(N_CAT, dtype=np.int64) * 3 + 1, popularity=pop,
        popularity_scores=np.linspace(0.1, 0.01, N_CAT, dtype=np.float32),
        item_category=cats, encoder_io=CAT_IO, n_categories=N_CATS, **_meta("cat"))


def _two_bundle(out: Path) -> Path:
    """The smallest catalog whose id order can be wrong: two items."""
    return write_bundle(
        out, encoder=encoder_model(2, 2), item_matrix=np.eye(2, dtype=np.float32),
        neighbors=np.array([[1], [0]], np.int32), item_ids=np.array([7, 3]),
        popularity=np.array([1, 0], np.int32),
        popularity_scores=np.array([0.6, 0.4], np.float32), **_meta("two"))


def _big_bundle(out: Path) -> Path:
    """One-dimensional vectors and a bias over N_BIG items."""
    rng = np.random.default_rng(9)
    return write_bundle(
        out, encoder=encoder_model(1, 1), item_matrix=np.ones((N_BIG, 1), np.float32),
        neighbors=((np.arange(N_BIG) + 1) % N_BIG).astype(np.int32)[:, None],
        item_ids=rng.permutation(N_BIG).astype(np.int64) * 5,
        popularity=np.arange(3, dtype=np.int32),
        popularity_scores=np.array([0.3, 0.2, 0.1], np.float32),
        item_bias=np.zeros(N_BIG, np.float32), **_meta("big"))


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {
        "enc": _enc_bundle(root / "enc"),
        "cat": _cat_bundle(root / "cat"),
        "two": _two_bundle(root / "two"),
        "big": _big_bundle(root / "big"),
        "sknn": build_synthetic_sknn_bundle(root / "sknn", 50, 30, sample=10, neighbors=5,
                                            seed=3),
        "str": build_synthetic_bundle(root / "str", n_items=30, dim=4, neighbors=3, seed=4,
                                      string_ids=True, row_order="given"),
    }


def _copy(bases, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bases[name], tmp_path / name))


def _put(b: Path, name: str, arr: np.ndarray) -> np.ndarray:
    """Replace an array file and re-sign it; returns the array as written."""
    np.save(b / name, arr, allow_pickle=False)
    resign(b, name)
    return arr


def _refused(b: Path, message: str, exc: type = CorruptFileError, verify=True) -> None:
    with pytest.raises(BundleError) as e:
        read_bundle(b, verify=verify)
    assert type(e.value) is exc
    assert str(e.value) == message


def test_intact_bases_load(bases):
    """Every base loads, verified, with its optional arrays: the cases below damage exactly
    one thing each."""
    enc = read_bundle(bases["enc"], verify=True)
    assert enc.input_embedding.shape == (N, D_IN) and enc.item_bias.shape == (N,)
    assert enc.session_index.n_sessions == N_SESSIONS
    assert read_bundle(bases["cat"], verify=True).category_indptr.shape == (N_CATS + 1,)
    for name in ("two", "big", "sknn", "str"):
        read_bundle(bases[name], verify=True)


# ------------------------------------------------------------------ shapes and dtypes


def _astype(dtype):
    return lambda a, m: a.astype(dtype)


# (base, file, damage(array, manifest) -> array, message with {found} for the damaged
# array's shape and dtype)
SHAPE_CASES = [
    pytest.param("enc", SKNN_ITEM_INDPTR, _astype(np.int32),
                 f"{SKNN_ITEM_INDPTR}: expected [{N + 1}] int64, found {{found}}",
                 id="item-indptr-int32"),
    pytest.param("enc", SKNN_ITEM_INDPTR, lambda a, m: a[:-1],
                 f"{SKNN_ITEM_INDPTR}: expected [{N + 1}] int64, found {{found}}",
                 id="item-indptr-short"),
    pytest.param("enc", SKNN_SESSION_INDPTR, lambda a, m: np.append(a, a[-1]),
                 f"{SKNN_SESSION_INDPTR}: expected [{N_SESSIONS + 1}] int64, found {{found}}",
                 id="session-indptr-long"),
    pytest.param("enc", SKNN_ITEM_SESSIONS, _astype(np.int64),
                 f"{SKNN_ITEM_SESSIONS}: expected a 1-D int32 array, found {{found}}",
                 id="item-sessions-int64"),
    pytest.param("enc", SKNN_SESSION_ITEMS, lambda a, m: a[:, None],
                 f"{SKNN_SESSION_ITEMS}: expected a 1-D int32 array, found {{found}}",
                 id="session-items-2d"),
    pytest.param("enc", SKNN_ITEM_WEIGHT, _astype(np.float64),
                 f"{SKNN_ITEM_WEIGHT}: expected [{N}] float32, found {{found}}",
                 id="item-weight-float64"),
    pytest.param("sknn", SKNN_ITEM_WEIGHT, lambda a, m: a[:-1],
                 f"{SKNN_ITEM_WEIGHT}: expected [50] float32, found {{found}}",
                 id="sknn-item-weight-short"),
    pytest.param("enc", ITEM_MATRIX, lambda a, m: a[:, :-1],
                 f"{ITEM_MATRIX}: expected [{N}, {DIM}] float32 or float16, found {{found}}",
                 id="matrix-narrow"),
    pytest.param("enc", ITEM_MATRIX, _astype(np.float64),
                 f"{ITEM_MATRIX}: expected [{N}, {DIM}] float32 or float16, found {{found}}",
                 id="matrix-float64"),
    pytest.param("enc", NEIGHBORS, _astype(np.int64),
                 f"{NEIGHBORS}: expected [{N}, {WIDTH}] int32, found {{found}}",
                 id="neighbors-int64"),
    pytest.param("enc", NEIGHBORS, lambda a, m: a[:, :-1],
                 f"{NEIGHBORS}: expected [{N}, {WIDTH}] int32, found {{found}}",
                 id="neighbors-narrow"),
    pytest.param("enc", NEIGHBORS, lambda a, m: a[:-1],
                 f"{NEIGHBORS}: expected [{N}, {WIDTH}] int32, found {{found}}",
                 id="neighbors-short"),
    pytest.param("enc", ITEM_BIAS, _astype(np.float64),
                 f"{ITEM_BIAS}: expected [{N}] float32, found {{found}}", id="bias-float64"),
    pytest.param("enc", ITEM_BIAS, lambda a, m: a[:-1],
                 f"{ITEM_BIAS}: expected [{N}] float32, found {{found}}", id="bias-short"),
    pytest.param("enc", INPUT_EMBEDDING, _astype(np.float64),
                 f"{INPUT_EMBEDDING}: expected [{N}, input_dim={D_IN}] float32 or float16, "
                 "found {found}", id="embedding-float64"),
    pytest.param("enc", INPUT_EMBEDDING, lambda a, m: np.ones((N, DIM), np.float32),
                 f"{INPUT_EMBEDDING}: expected [{N}, input_dim={D_IN}] float32 or float16, "
                 "found {found}", id="embedding-of-dim"),
    pytest.param("enc", INPUT_EMBEDDING, lambda a, m: a.ravel(),
                 f"{INPUT_EMBEDDING}: expected [{N}, input_dim={D_IN}] float32 or float16, "
                 "found {found}", id="embedding-1d"),
    pytest.param("enc", ITEM_CATEGORY, _astype(np.int64),
                 f"{ITEM_CATEGORY}: expected [{N}] int32, found {{found}}",
                 id="category-int64"),
    pytest.param("enc", ITEM_CATEGORY, lambda a, m: a[:-1],
                 f"{ITEM_CATEGORY}: expected [{N}] int32, found {{found}}",
                 id="category-short"),
    pytest.param("enc", POPULARITY, _astype(np.int64),
                 f"{POPULARITY}: expected [<= {N}] int32, found {{found}}",
                 id="popularity-int64"),
    pytest.param("enc", POPULARITY, lambda a, m: np.arange(N + 1, dtype=np.int32),
                 f"{POPULARITY}: expected [<= {N}] int32, found {{found}}",
                 id="popularity-longer-than-catalog"),
    pytest.param("sknn", POPULARITY, lambda a, m: a[:, None],
                 f"{POPULARITY}: expected [<= 50] int32, found {{found}}",
                 id="sknn-popularity-2d"),
    pytest.param("enc", POPULARITY_SCORES, _astype(np.float64),
                 f"{POPULARITY_SCORES}: expected [{N_POP}] float32, found {{found}}",
                 id="scores-float64"),
    pytest.param("enc", POPULARITY_SCORES, lambda a, m: a[:-1],
                 f"{POPULARITY_SCORES}: expected [{N_POP}] float32, found {{found}}",
                 id="scores-short"),
    pytest.param("enc", ITEM_IDS, _astype(np.int32),
                 f"{ITEM_IDS}: expected [{N}] int64 ids, found {{found}}", id="ids-int32"),
    pytest.param("enc", ITEM_IDS, _astype(np.uint64),
                 f"{ITEM_IDS}: expected [{N}] int64 ids, found {{found}}", id="ids-uint64"),
    pytest.param("enc", ITEM_IDS_SORTED, lambda a, m: np.append(a, a[-1] + 1),
                 f"{ITEM_IDS_SORTED}: expected [{N}] int64 ids, found {{found}}",
                 id="sorted-ids-long"),
    pytest.param("str", ITEM_IDS, lambda a, m: np.arange(30, dtype=np.int64),
                 f"{ITEM_IDS}: expected [30] str ids, found {{found}}", id="str-ids-int64"),
    pytest.param("str", ITEM_IDS_SORTED, lambda a, m: a[:-1],
                 f"{ITEM_IDS_SORTED}: expected [30] str ids, found {{found}}",
                 id="str-sorted-ids-short"),
    pytest.param("enc", ITEM_IDS_ORDER, _astype(np.int64),
                 f"{ITEM_IDS_ORDER}: expected [{N}] int32, found {{found}}", id="order-int64"),
    pytest.param("enc", ITEM_IDS_ORDER, lambda a, m: a[:-1],
                 f"{ITEM_IDS_ORDER}: expected [{N}] int32, found {{found}}", id="order-short"),
    pytest.param("cat", CATEGORY_INDPTR, _astype(np.int32),
                 f"{CATEGORY_INDPTR}: expected [n_categories + 1] int64, found {{found}}",
                 id="category-indptr-int32"),
    pytest.param("cat", CATEGORY_INDPTR, lambda a, m: np.append(a, a[-1]),
                 f"{CATEGORY_INDPTR}: expected [n_categories + 1] int64, found {{found}}",
                 id="category-indptr-long"),
    pytest.param("cat", CATEGORY_INDICES, _astype(np.int64),
                 f"{CATEGORY_INDICES}: expected [<= {N_CAT}] int32, found {{found}}",
                 id="category-indices-int64"),
    pytest.param("cat", CATEGORY_INDICES, lambda a, m: a[:, None],
                 f"{CATEGORY_INDICES}: expected [<= {N_CAT}] int32, found {{found}}",
                 id="category-indices-2d"),
    pytest.param("cat", CATEGORY_INDICES, lambda a, m: np.zeros(N_CAT + 1, np.int32),
                 f"{CATEGORY_INDICES}: expected [<= {N_CAT}] int32, found {{found}}",
                 id="category-indices-longer-than-catalog"),
]


@pytest.mark.parametrize(("base", "name", "damage", "message"), SHAPE_CASES)
def test_wrong_shape_or_dtype_is_refused_at_every_load(bases, tmp_path, base, name, damage,
                                                       message):
    """Shapes and dtypes are what keeps the kernels' raw reads in bounds: checked on
    every load, verified or not, naming the file, what it should hold and what it holds."""
    b = _copy(bases, base, tmp_path)
    arr = _put(b, name, damage(np.load(b / name), read_manifest(b)))
    found = f"shape {arr.shape} dtype {arr.dtype}"
    for verify in (True, False):
        _refused(b, message.format(found=found), verify=verify)


def _full_popularity(b: Path) -> None:
    _put(b, POPULARITY, np.arange(N, dtype=np.int32))
    _put(b, POPULARITY_SCORES, np.linspace(0.02, 0.001, N, dtype=np.float32))


def _every_item_in_one_category(b: Path) -> None:
    _put(b, CATEGORY_INDPTR, np.array([0] + [N_CAT] * N_CATS, np.int64))
    _put(b, CATEGORY_INDICES, np.arange(N_CAT, dtype=np.int32))


def _float16_embedding(b: Path) -> None:
    _put(b, INPUT_EMBEDDING, np.load(b / INPUT_EMBEDDING).astype(np.float16))


@pytest.mark.parametrize(("base", "edit", "name", "shape"), [
    ("enc", _full_popularity, POPULARITY, (N,)),
    ("cat", _every_item_in_one_category, CATEGORY_INDICES, (N_CAT,)),
    ("enc", _float16_embedding, INPUT_EMBEDDING, (N, D_IN)),
])
def test_arrays_at_their_bounds_load(bases, tmp_path, base, edit, name, shape):
    """Popularity and the category index as long as the catalog, an input embedding in
    float16: all allowed (one more row than the catalog is refused above)."""
    b = _copy(bases, base, tmp_path)
    edit(b)
    for verify in (True, False):
        loaded = read_bundle(b, verify=verify)
        np.testing.assert_array_equal(
            {POPULARITY: loaded.popularity, CATEGORY_INDICES: loaded.category_items,
             INPUT_EMBEDDING: loaded.input_embedding}[name], np.load(b / name))
        assert np.load(b / name).shape == shape


@pytest.mark.parametrize(("name", "damage", "message"), [
    (ITEM_MATRIX, np.asfortranarray,
     f"{ITEM_MATRIX}: must be a C-order array in native byte order (found Fortran order, "
     "dtype <f2)"),
    (ITEM_MATRIX, lambda a: a.astype(">f2"),
     f"{ITEM_MATRIX}: must be a C-order array in native byte order (found C order, "
     "dtype >f2)"),
    (INPUT_EMBEDDING, lambda a: a.astype(">f4"),
     f"{INPUT_EMBEDDING}: must be a C-order array in native byte order (found C order, "
     "dtype >f4)"),
    (NEIGHBORS, np.asfortranarray,
     f"{NEIGHBORS}: must be a C-order array in native byte order (found Fortran order, "
     "dtype <i4)"),
    # a 1-D array is in C and Fortran order at once: the message names the byte order's fault
    (POPULARITY, lambda a: a.astype(a.dtype.newbyteorder(">")),
     f"{POPULARITY}: must be a C-order array in native byte order (found C order, "
     "dtype >i4)"),
])
def test_fortran_order_or_foreign_byte_order_is_refused(bases, tmp_path, name, damage,
                                                        message):
    """The kernels read raw memory in C order and native bytes: a Fortran-order file (of
    the right dtype) or a big-endian one (in C order) is refused, saying which."""
    b = _copy(bases, "enc", tmp_path)
    _put(b, name, damage(np.load(b / name)))
    for verify in (True, False):
        _refused(b, message, verify=verify)


def test_input_dim_without_input_embedding_is_refused(bases, tmp_path):
    """Without input_embedding.npy the encoder is fed item matrix rows, so input_dim must
    be the matrix width."""
    b = _copy(bases, "str", tmp_path)
    m = read_manifest(b)
    m["input_dim"] = m["dim"] + 1
    write_manifest(b, m)
    _refused(b, f"{MANIFEST}: input_dim=5 but there is no {INPUT_EMBEDDING}, so the encoder "
                "takes the item matrix rows (dim=4)", verify=False)


@pytest.mark.parametrize("dropped", [CATEGORY_INDICES, CATEGORY_INDPTR])
def test_category_index_files_go_together(bases, tmp_path, dropped):
    """A category index listed without its other half is a damaged manifest."""
    b = _copy(bases, "cat", tmp_path)
    m = read_manifest(b)
    del m["files"][dropped]
    write_manifest(b, m)
    (b / dropped).unlink()
    _refused(b, f"{MANIFEST}: {CATEGORY_INDPTR} and {CATEGORY_INDICES} go together")


# ------------------------------------------------------------------ rows and values


@pytest.mark.parametrize(("value", "ok"), [
    (MAX_ABS_VALUE, True), (-MAX_ABS_VALUE, True), (ABOVE_MAX, False), (-ABOVE_MAX, False),
    (np.inf, False), (np.nan, False)])
def test_session_weight_magnitude_at_and_past_the_bound(bases, tmp_path, value, ok):
    """Item weights of the session index are checked on every load (scores must stay
    finite): |w| up to MAX_ABS_VALUE included."""
    b = _copy(bases, "sknn", tmp_path)
    w = np.load(b / SKNN_ITEM_WEIGHT)
    w[7] = value
    _put(b, SKNN_ITEM_WEIGHT, w)
    for verify in (True, False):
        if ok:
            assert read_bundle(b, verify=verify).session_index.item_weight[7] == value
        else:
            _refused(b, f"{SKNN_ITEM_WEIGHT}: {OVER}", verify=verify)


def _set(b: Path, name: str, index, value) -> np.ndarray:
    arr = np.load(b / name)
    arr[index] = value
    return _put(b, name, arr)


@pytest.mark.parametrize(("name", "value", "lo", "hi"), [
    (SKNN_ITEM_SESSIONS, N_SESSIONS, 0, N_SESSIONS),
    (SKNN_ITEM_SESSIONS, -1, 0, N_SESSIONS),
    (SKNN_SESSION_ITEMS, N, 0, N),
    (SKNN_SESSION_ITEMS, -1, 0, N),
    (ITEM_CATEGORY, -2, -1, 2**31 - 1),
    (ITEM_CATEGORY, 2**31 - 1, -1, 2**31 - 1),
])
def test_values_past_their_range_are_refused_when_verified(bases, tmp_path, name, value, lo,
                                                           hi):
    """Session numbers, session items and categories outside their ranges, with the value
    and where it is; the value just inside the range loads."""
    b = _copy(bases, "enc", tmp_path)
    _set(b, name, 3, value)
    _refused(b, f"{name}: value {value} at flat index 3 is outside [{lo}, {hi})")
    inside = lo if value < lo else hi - 1
    _set(b, name, 3, inside)
    read_bundle(b, verify=True)


def test_first_value_out_of_range_is_reported_by_its_flat_index(bases, tmp_path):
    """Neighbor rows are in [-1, n): -1 (no neighbor) and the last row load; n (at row 4,
    column 2) is the first value outside, found past a -1."""
    b = _copy(bases, "enc", tmp_path)
    nbrs = np.load(b / NEIGHBORS)
    nbrs[0, 0], nbrs[1, 1] = -1, N - 1
    _put(b, NEIGHBORS, nbrs)
    read_bundle(b, verify=True)
    nbrs[4, 2], nbrs[6, 0] = N, -2
    _put(b, NEIGHBORS, nbrs)
    _refused(b, f"{NEIGHBORS}: value {N} at flat index {4 * WIDTH + 2} is outside [-1, {N})")


def test_duplicate_popularity_is_refused(bases, tmp_path):
    """The popularity fallback would recommend an item twice."""
    b = _copy(bases, "enc", tmp_path)
    pop = np.load(b / POPULARITY)
    _set(b, POPULARITY, 9, pop[2])
    _refused(b, f"{POPULARITY}: lists an item more than once")


SCORES_MESSAGE = (f"{POPULARITY_SCORES}: must be shares in [0, 1], most popular first "
                  "(non-increasing)")


@pytest.mark.parametrize(("edit", "ok"), [
    pytest.param(lambda s: s.__setitem__(0, 1.0), True, id="first-is-one"),
    pytest.param(lambda s: s.__setitem__(0, np.nextafter(np.float32(1), np.float32(2))),
                 False, id="first-just-above-one"),
    pytest.param(lambda s: s.__setitem__(0, 1.5), False, id="first-above-one"),
    pytest.param(lambda s: s.__setitem__(-1, 0.0), True, id="last-is-zero"),
    pytest.param(lambda s: s.__setitem__(-1, np.nextafter(np.float32(0), np.float32(-1))),
                 False, id="last-just-below-zero"),
    pytest.param(lambda s: s.__setitem__(slice(3, 5), s[3]), True, id="tie"),
    pytest.param(lambda s: s.__setitem__(slice(1, 3), s[2:0:-1]), False,
                 id="second-below-third"),
    pytest.param(lambda s: s.__setitem__(slice(None), s[::-1]), False, id="increasing"),
    pytest.param(lambda s: s.__setitem__(0, np.nan), False, id="nan"),
    pytest.param(lambda s: s.__setitem__(0, np.inf), False, id="inf"),
])
def test_popularity_scores_are_non_increasing_shares(bases, tmp_path, edit, ok):
    """Shares in [0, 1] (both ends included), most popular first; ties are fine."""
    b = _copy(bases, "enc", tmp_path)
    scores = np.load(b / POPULARITY_SCORES)
    edit(scores)
    _put(b, POPULARITY_SCORES, scores)
    if ok:
        np.testing.assert_array_equal(read_bundle(b, verify=True).popularity_scores, scores)
    else:
        _refused(b, SCORES_MESSAGE)


def test_category_just_below_int32_max_loads(bases, tmp_path):
    """Categories are in [-1, 2**31 - 1): the largest one allowed loads."""
    b = _copy(bases, "enc", tmp_path)
    _set(b, ITEM_CATEGORY, 5, 2**31 - 2)
    assert read_bundle(b, verify=True).item_category[5] == 2**31 - 2


def _edit_ids(b: Path, rows_values: dict[int, int]) -> None:
    """Change sorted ids by position and item_ids to match, so only the sort is wrong."""
    s, ids, order = (np.load(b / n) for n in (ITEM_IDS_SORTED, ITEM_IDS, ITEM_IDS_ORDER))
    for pos, value in rows_values.items():
        s[pos] = value
        ids[order[pos]] = value
    _put(b, ITEM_IDS_SORTED, s)
    _put(b, ITEM_IDS, ids)


IDS_MESSAGE = (f"{ITEM_IDS_SORTED}: ids are not strictly increasing (duplicate ids or a "
               "damaged file)")


def test_duplicate_ids_are_refused(bases, tmp_path):
    """Two items with one id (ids and sorted ids still agree): the lookup is ambiguous."""
    b = _copy(bases, "enc", tmp_path)
    s = np.load(b / ITEM_IDS_SORTED)
    _edit_ids(b, {1: s[0]})
    _refused(b, IDS_MESSAGE)


def test_unsorted_ids_are_refused(bases, tmp_path):
    """Positions 1 and 2 swapped: both still above the first id, not in order."""
    b = _copy(bases, "enc", tmp_path)
    s = np.load(b / ITEM_IDS_SORTED)
    _edit_ids(b, {1: s[2], 2: s[1]})
    _refused(b, IDS_MESSAGE)


@pytest.mark.parametrize("ids", [[5, 5], [9, 3]])
def test_two_item_catalog_ids_must_increase(bases, tmp_path, ids):
    """The order check also covers the smallest catalog it applies to (a tie, a swap)."""
    b = _copy(bases, "two", tmp_path)
    _put(b, ITEM_IDS_SORTED, np.array(ids, np.int64))
    _put(b, ITEM_IDS, np.array(ids, np.int64))
    _put(b, ITEM_IDS_ORDER, np.array([0, 1], np.int32))
    _refused(b, IDS_MESSAGE)


def test_id_order_must_map_ids_onto_sorted_ids(bases, tmp_path):
    """Two order entries swapped: an id would resolve to another item's row."""
    b = _copy(bases, "enc", tmp_path)
    order = np.load(b / ITEM_IDS_ORDER)
    order[[0, 1]] = order[[1, 0]]
    _put(b, ITEM_IDS_ORDER, order)
    _refused(b, f"{ITEM_IDS_ORDER}: does not map {ITEM_IDS} onto {ITEM_IDS_SORTED}")


@pytest.mark.parametrize(("name", "value"), [
    (ITEM_MATRIX, np.inf), (ITEM_MATRIX, np.nan), (INPUT_EMBEDDING, ABOVE_MAX),
    (INPUT_EMBEDDING, -np.inf), (ITEM_BIAS, -ABOVE_MAX), (ITEM_BIAS, np.nan)])
def test_nonfinite_or_huge_vectors_are_refused_when_verified(bases, tmp_path, name, value):
    """NaN, infinite or too large vector and bias values (an inf in the float16 matrix
    too) in the last row."""
    b = _copy(bases, "enc", tmp_path)
    _set(b, name, N - 1, value)
    _refused(b, f"{name}: {OVER}")
    read_bundle(b, verify=False)  # a value check: unverified loads skip it


@pytest.mark.parametrize("row", [0, BLOCK - 1, BLOCK, 2 * BLOCK, N_BIG - 1])
@pytest.mark.parametrize("name", [ITEM_BIAS, ITEM_MATRIX])
def test_every_row_of_a_large_catalog_is_value_checked(bases, tmp_path, name, row):
    """The magnitude check reads the arrays in blocks of rows: a value past the bound is
    found in the first row, on both sides of a block edge and in the last row; the bound
    itself loads."""
    b = _copy(bases, "big", tmp_path)
    _set(b, name, row, MAX_ABS_VALUE)
    read_bundle(b, verify=True)
    _set(b, name, row, ABOVE_MAX)
    _refused(b, f"{name}: {OVER}")


def test_checksum_covers_the_whole_file(bases, tmp_path):
    """A file of more than one read block changed in its last byte fails the checksum;
    unverified loads do not read it."""
    b = _copy(bases, "big", tmp_path)
    path = b / ITEM_IDS_SORTED
    data = bytearray(path.read_bytes())
    assert len(data) > 2**20
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    _refused(b, f"{path}: sha256 does not match the manifest (file changed or damaged)",
             exc=ChecksumError)
    read_bundle(b, verify=False)  # no checksums (the size is the declared one)


# ------------------------------------------------------------------ the .npy reader and the files


def _npy_header_only(path: Path, header: bytes) -> None:
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_npy_is_refused(bases, tmp_path, verify):
    """Shorter than its header says, with a matching manifest entry: refused at mapping."""
    b = _copy(bases, "enc", tmp_path)
    path = b / ITEM_MATRIX
    path.write_bytes(path.read_bytes()[:-7])
    resign(b, ITEM_MATRIX)
    _refused(b, f"{path}: unreadable or truncated .npy (ValueError: mmap length is greater "
                "than file size)", verify=verify)


def _npy_refusal(b: Path, path: Path) -> str:
    """The refusal of an unreadable .npy: its class and message, up to numpy's part (whose
    wording depends on the numpy version), which is returned."""
    with pytest.raises(BundleError) as e:
        read_bundle(b, verify=True)
    assert type(e.value) is CorruptFileError
    head = f"{path}: unreadable or truncated .npy ("
    message = str(e.value)
    assert message.startswith(head) and message.endswith(")")
    return message[len(head):-1]


def test_pickle_is_never_unpickled(bases, tmp_path):
    """A pickle in place of an array (even of a valid array) is refused, not loaded."""
    b = _copy(bases, "enc", tmp_path)
    path = b / POPULARITY
    path.write_bytes(pickle.dumps(np.load(path)))
    resign(b, POPULARITY)
    detail = _npy_refusal(b, path)
    assert detail.startswith("ValueError: ") and "pickled" in detail


def test_npy_reader_message_is_cut_at_200_characters(bases, tmp_path):
    """numpy's message quotes the bad header (its keys, of 300 characters): the error keeps
    the first 200 characters of it."""
    b = _copy(bases, "enc", tmp_path)
    path = b / ITEM_BIAS
    _npy_header_only(path, b"{'" + b"k" * 300 + b"': 1}")
    resign(b, ITEM_BIAS)
    detail = _npy_refusal(b, path)
    assert detail.startswith("ValueError: ") and detail.endswith("k" * 100)
    assert len(detail) == len("ValueError: ") + 200


def test_missing_manifest_and_missing_array(bases, tmp_path):
    """Each missing file says whether the directory is a bundle at all."""
    b = _copy(bases, "enc", tmp_path)
    (b / ITEM_BIAS).unlink()
    _refused(b, f"{b / ITEM_BIAS}: listed in the manifest but missing", exc=MissingFileError)
    (b / MANIFEST).unlink()
    _refused(b, f"{b / MANIFEST}: manifest missing (not a sessrec bundle?)",
             exc=MissingFileError)


def test_array_that_cannot_be_stat_ed(bases, tmp_path):
    """A symlink loop in place of an array: the OS error, as a bundle error."""
    b = _copy(bases, "enc", tmp_path)
    path = b / ITEM_BIAS
    path.unlink()
    path.symlink_to(ITEM_BIAS)
    _refused(b, f"{path}: cannot be read ([Errno {errno.ELOOP}] {os.strerror(errno.ELOOP)}: "
                f"'{path}')", verify=False)


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_array_that_is_not_a_regular_file(bases, tmp_path, kind):
    """A directory, or a symlink to a device, is refused before anything reads it."""
    b = _copy(bases, "enc", tmp_path)
    path = b / ITEM_BIAS
    path.unlink()
    if kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(os.devnull)
    _refused(b, f"{path}: not a regular file", verify=False)
