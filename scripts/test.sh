#!/usr/bin/env bash
# Set up .venv and run the test suite (plus a seconds-long smoke run of the benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
