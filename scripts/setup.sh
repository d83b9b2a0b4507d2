#!/usr/bin/env bash
# Create .venv (Python 3.11) and install sessrec with every extra, idempotently.
# torch: setup.py allows a range, constraints.txt pins the 2.13.0 CPU build (a newer torch
# pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.sessrec-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
        || [ constraints.txt -nt "$stamp" ] \
        || [ csrc/sessrec_kernels.c -nt "$stamp" ] || [ csrc/sessrec_kernels.h -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
    # every extra, plus the repository's dev tools (a dependency group, pip >= 25.1);
    # constraints.txt pins the CPU build of torch
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[export,numba,bench,service]' --group dev
    touch "$stamp"
fi
