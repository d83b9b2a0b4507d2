"""Kernel backends: C (cffi), Numba, numpy. All three return identical rows and scores.

``make_kernel(catalog, "auto")`` picks C, then Numba, then numpy, importing Numba only when
it is asked for or needed, so ``import sessrec_sdk`` stays light.
"""
from __future__ import annotations

import numpy as np

from . import reference
from .common import (
    BACKENDS,
    LANES,
    CatalogArrays,
    KernelQuery,
    NeighborRangeError,
    RowRangeError,
    Scratch,
    backend_class,
    importable_backends,
)

__all__ = ["BACKENDS", "LANES", "CatalogArrays", "KernelQuery", "NeighborRangeError",
           "RowRangeError", "Scratch", "make_kernel", "available_backends"]


class NumpyKernel:
    name = "numpy"

    def __init__(self, cat: CatalogArrays):
        self._cat = cat

    def top_k(self, q: KernelQuery, scratch: Scratch | None = None
              ) -> tuple[np.ndarray, np.ndarray, int]:
        return reference.top_k(self._cat, q)


def _load(name: str):
    if name == "c":
        from .c_backend import CKernel
        return CKernel
    if name == "numba":
        from .numba_backend import NumbaKernel
        return NumbaKernel
    return NumpyKernel


def available_backends() -> list[str]:
    """The backends that import on this machine, fastest first."""
    return importable_backends(_load)


def make_kernel(cat: CatalogArrays, backend: str = "auto"):
    """A kernel object with ``top_k(KernelQuery, Scratch)`` and a ``name``."""
    kernel = backend_class(_load, backend)(cat)
    if hasattr(kernel, "warm_up"):
        kernel.warm_up()
    return kernel
