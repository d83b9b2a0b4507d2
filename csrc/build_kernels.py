"""cffi (API mode) build of the C kernels into ``sessrec_sdk._kernels``.

setup.py points ``cffi_modules`` here; the declarations come from the header so the
compiled module and the header cannot drift apart.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "sessrec_kernels.h"


def _cdef() -> str:
    text = HEADER.read_text()
    return text.split("/* CFFI-BEGIN */", 1)[1].split("/* CFFI-END */", 1)[0]


ffi = FFI()
ffi.cdef(_cdef())
ffi.set_source(
    "sessrec_sdk._kernels",
    '#include "sessrec_kernels.h"',
    sources=[str((HERE / name).relative_to(Path.cwd()))
             if HERE.is_relative_to(Path.cwd()) else str(HERE / name)
             for name in ("sessrec_kernels.c", "sessrec_sknn.c")],
    include_dirs=[str(HERE)],
    # -ffp-contract=off: no fused multiply-add, so C, Numba and numpy round alike.
    # -Wno-psabi: GCC notes the ABI of AVX vector types in the non-AVX clone; the
    # functions taking them are always inlined, so no such ABI is ever crossed.
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=c99",
                        "-Wno-psabi"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
