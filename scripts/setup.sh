#!/usr/bin/env bash
# Create .venv (Python 3.11) and install sessrec with every extra, idempotently.
# torch is pinned to the 2.13.0 CPU build in setup.py (a newer pin pulls a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.sessrec-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
        || [ csrc/sessrec_kernels.c -nt "$stamp" ] || [ csrc/sessrec_kernels.h -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
    .venv/bin/python -m pip install -q -e '.[export,numba,bench,dev]'
    touch "$stamp"
fi
