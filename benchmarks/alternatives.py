"""What a user would run instead of sessrec, built from the same bundle.

* ``FullCatalogOnnx``: the bundle's own session encoder with one more step appended, in one
  ONNX graph: ``scores = query @ item_matrix.T (+ bias)`` and ``TopK``. The item matrix is a
  graph input fed from the bundle's memory-mapped array (no copy), so the comparison costs
  no extra memory. ONNX Runtime runs with 1 intra-op and 1 inter-op thread, like sessrec.
* ``FullCatalogNumpy``: the session vector from the same encoder, ``matrix @ query`` and
  ``argpartition`` top-k (OpenBLAS limited to 1 thread by the suite).
* ``Hnsw``: faiss ``IndexHNSWFlat`` (inner product, M=32) over every item, queried with the
  session vector, 1 search thread. The index is built once (all cores) and cached.

All three answer one session per call, end to end from external ids: id mapping, encoder,
scoring, top-k, rows back to external ids, so their per-call times compare with
``Recommender.recommend``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .common import bundle_fingerprint, cache_root, file_lock, log

# --------------------------------------------------------------------------- ONNX


def full_catalog_model(bundle: Path) -> bytes:
    """The bundle's encoder.onnx + Gemm over the item matrix (an input) + TopK."""
    import onnx
    from onnx import TensorProto, helper

    from sessrec_sdk.bundle import ENCODER_OUTPUT

    model = onnx.load(str(bundle / "encoder.onnx"))
    g = model.graph
    has_bias = (bundle / "item_bias.npy").is_file()
    query = ENCODER_OUTPUT
    nodes = [
        helper.make_node("Reshape", [query, "_bench_q_shape"], ["_bench_q"]),
        helper.make_node("Gemm", ["_bench_q", "item_matrix"], ["_bench_scores0"], transB=1),
    ]
    scores = "_bench_scores0"
    if has_bias:
        nodes.append(helper.make_node("Add", [scores, "item_bias"], ["_bench_scores1"]))
        scores = "_bench_scores1"
    nodes.append(helper.make_node("TopK", [scores, "k"], ["top_scores", "top_rows"],
                                  axis=-1, largest=1, sorted=1))
    g.node.extend(nodes)
    g.initializer.append(onnx.numpy_helper.from_array(np.array([1, -1], np.int64),
                                                      "_bench_q_shape"))
    g.input.append(helper.make_tensor_value_info("item_matrix", TensorProto.FLOAT,
                                                 ["n_items", "d"]))
    if has_bias:
        g.input.append(helper.make_tensor_value_info("item_bias", TensorProto.FLOAT,
                                                     ["n_items"]))
    g.input.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, [1, "k"]),
                     helper.make_tensor_value_info("top_rows", TensorProto.INT64, [1, "k"])])
    onnx.checker.check_model(model)
    return model.SerializeToString()


class FullCatalogOnnx:
    name = "full-catalog ONNX"

    def __init__(self, rec):
        import onnxruntime as ort

        from sessrec_sdk.encoder import session_options

        b = rec.bundle
        if b.item_matrix.dtype != np.float32:
            raise ValueError("full-catalog ONNX is benchmarked on float32 bundles")
        path = cache_root() / "bench-onnx" / f"{bundle_fingerprint(b.path)}-full.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(full_catalog_model(b.path))
            os.replace(tmp, path)
        self.rec = rec
        self.sess = ort.InferenceSession(str(path), session_options(),
                                         providers=["CPUExecutionProvider"])
        # OrtValues wrap the mapped arrays once (same pages): no copy of the catalog per call
        self._matrix = ort.OrtValue.ortvalue_from_numpy(b.item_matrix)
        self._bias = (None if b.item_bias is None
                      else ort.OrtValue.ortvalue_from_numpy(b.item_bias))
        self._ort = ort
        self._emb = b.input_embedding
        self._ids = b.ids

    def __call__(self, session, k: int) -> np.ndarray:
        rows = self.rec.session_rows(session)
        if rows.size == 0:
            return self._ids.external(np.asarray(self.rec.bundle.popularity[:k]))
        ov = self._ort.OrtValue.ortvalue_from_numpy
        feeds = {"items": ov(rows.astype(np.int64)[None, :]),
                 "item_emb": ov(self._emb.take(rows, axis=0).astype(np.float32)[None]),
                 "item_matrix": self._matrix, "k": ov(np.array([k], np.int64))}
        if self._bias is not None:
            feeds["item_bias"] = self._bias
        top = self.sess.run_with_ort_values(["top_rows"], feeds)[0].numpy()
        return self._ids.external(top[0].astype(np.int32))


# --------------------------------------------------------------------------- numpy


class FullCatalogNumpy:
    name = "full-catalog numpy"

    def __init__(self, rec):
        b = rec.bundle
        if b.item_matrix.dtype != np.float32:
            raise ValueError("full-catalog numpy is benchmarked on float32 bundles")
        self.rec = rec
        self.matrix = b.item_matrix
        self.bias = b.item_bias
        self._ids = b.ids

    def scores(self, query: np.ndarray) -> np.ndarray:
        s = self.matrix @ query
        if self.bias is not None:
            s += self.bias
        return s

    def __call__(self, session, k: int) -> np.ndarray:
        q = self.rec.query(session)
        if q is None:
            return self._ids.external(np.asarray(self.rec.bundle.popularity[:k]))
        s = self.scores(q)
        top = np.argpartition(s, -k)[-k:]
        top = top[np.argsort(-s[top], kind="stable")]
        return self._ids.external(top)


# --------------------------------------------------------------------------- HNSW


def hnsw_index_path(bundle: Path, M: int, ef_construction: int) -> Path:
    return (cache_root() / "bench-hnsw"
            / f"{bundle_fingerprint(bundle)}-M{M}-efc{ef_construction}.faiss")


def ensure_hnsw(bundle: Path, M: int = 32, ef_construction: int = 40) -> Path:
    """Build (all cores) and cache the HNSW index of a bundle's item matrix."""
    import faiss

    path = hnsw_index_path(bundle, M, ef_construction)
    if path.is_file():
        return path
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            return path
        matrix = np.load(bundle / "item_matrix.npy", mmap_mode="r")
        n, d = matrix.shape
        log(f"building HNSW index (M={M}, efConstruction={ef_construction}) over {n:,} x {d} "
            f"items (once; cached as {path.name})")
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        index = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        t0 = time.perf_counter()
        step = 100_000
        for start in range(0, n, step):
            index.add(np.ascontiguousarray(matrix[start:start + step], dtype=np.float32))
            if n > step:
                log(f"  HNSW {min(start + step, n):,}/{n:,} items, "
                    f"{time.perf_counter() - t0:.0f} s")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        (path.with_suffix(".json")).write_text(
            f'{{"build_seconds": {time.perf_counter() - t0:.1f}, "threads": '
            f'{os.cpu_count()}, "n": {n}, "d": {d}}}\n')
        log(f"built HNSW in {time.perf_counter() - t0:.0f} s")
    return path


def hnsw_build_seconds(bundle: Path, M: int = 32, ef_construction: int = 40) -> float | None:
    import json

    meta = hnsw_index_path(bundle, M, ef_construction).with_suffix(".json")
    return json.loads(meta.read_text())["build_seconds"] if meta.is_file() else None


class Hnsw:
    name = "faiss HNSW"

    def __init__(self, rec, M: int = 32, ef_construction: int = 40, ef_search: int = 64):
        import faiss

        b = rec.bundle
        self.index = faiss.read_index(str(ensure_hnsw(b.path, M, ef_construction)))
        faiss.omp_set_num_threads(1)  # one thread per call, like sessrec
        self.set_ef(ef_search)
        self.rec = rec
        self._ids = b.ids
        self._faiss = faiss

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef
        self.ef_search = ef

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        _, idx = self.index.search(query[None, :].astype(np.float32, copy=False), k)
        return idx[0]

    def __call__(self, session, k: int) -> np.ndarray:
        q = self.rec.query(session)
        if q is None:
            return self._ids.external(np.asarray(self.rec.bundle.popularity[:k]))
        top = self.search(q, k)
        return self._ids.external(top[top >= 0].astype(np.int32))
