#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the C kernels, in a temporary copy
# of the source tree (the shared sessrec_sdk/_kernels*.so is never touched), then:
#   1. a deliberate out-of-bounds write (an excluded row >= n_items passed straight to the
#      C kernel) must be reported: proof that the sanitizers are live in this build;
#   2. tests/test_kernels.py, tests/test_sknn_kernels.py and tests/test_bad_input.py;
#   3. tests/fuzz_kernels.py: FUZZ_CALLS (default 12000) hypothesis-generated calls of
#      sr_top_k (both instruction sets) and sr_find_int64 against the numpy reference.
# Prints the number of sanitizer reports; exits non-zero on any report or test failure.
#
#   bash scripts/sanitize.sh                 # from the repository root, ~2-4 minutes
#   FUZZ_CALLS=30000 KEEP=1 bash scripts/sanitize.sh
#
# Only the C code is instrumented: Numba's JIT output and numpy are not (see
# docs/robustness.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
FUZZ_CALLS=${FUZZ_CALLS:-12000}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sessrec-sanitize.XXXXXX")
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
LOG=$WORK/logs
mkdir -p "$LOG"

# no setup.py / pyproject.toml in the copy: cffi builds with setuptools, which would read
# the project's packaging metadata there (and refuse its flat layout)
echo "== copy of the tree in $WORK"
tar -C "$ROOT" --exclude='__pycache__' --exclude='*.so' --exclude='*.egg-info' \
    -cf - sessrec_sdk csrc tests export_tools README.md \
    | tar -C "$WORK" -xf -

SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
echo "== building the C kernels with: $SAN"
(cd "$WORK" && CFLAGS="$SAN -g" LDFLAGS="$SAN" "$PY" csrc/build_kernels.py) \
    > "$LOG/build.txt" 2>&1 || { cat "$LOG/build.txt"; exit 1; }
SO=$(ls "$WORK"/sessrec_sdk/_kernels*.so)
nm -D "$SO" | grep -q __asan_report || { echo "$SO is not instrumented"; exit 1; }
nm -D "$SO" | grep -q __ubsan_handle || { echo "$SO has no UBSan checks"; exit 1; }

export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH=$WORK
export PYTHONDONTWRITEBYTECODE=1
cd "$WORK"
"$PY" -c "import sessrec_sdk._kernels as k, sys; assert k.__file__.startswith('$WORK'), \
k.__file__; print('== instrumented module:', k.__file__)"

reports() { grep -c -E "ERROR: AddressSanitizer|runtime error:" "$@" 2>/dev/null || true; }

echo "== 1. the sanitizer catches a deliberate out-of-bounds write"
cat > "$WORK/canary.py" <<'EOF'
import numpy as np
from sessrec_sdk.kernels import CatalogArrays, KernelQuery, Scratch
from sessrec_sdk.kernels.c_backend import CKernel

n = 1000
cat = CatalogArrays(np.ones((n, 8), np.float32), np.zeros((n, 4), np.int32), None, None)
q = KernelQuery(seeds=np.array([1], np.int32), query=np.ones(8, np.float32), k=5, n_use=4,
                exclude_seeds=True, excluded=np.array([n + 64], np.int32), allowed=None,
                allowed_cats=None)
try:  # seen[n + 64] = epoch: past the end of the heap array (unless the kernel checks)
    CKernel(cat).top_k(q, Scratch(n))
    print("excluded row >= n_items: no overflow (checked by the kernel)", flush=True)
except Exception as exc:
    print(f"excluded row >= n_items refused: {exc!r}", flush=True)
# a scratch array shorter than the catalog cannot be checked by the kernel: seen[1]
# (the seed's stamp) lies past the end of a 1-element array
q = q._replace(excluded=np.empty(0, np.int32))
CKernel(cat).top_k(q, Scratch(1))
print("NOT CAUGHT: the out-of-bounds write went unreported")
EOF
set +e
( "$PY" "$WORK/canary.py" ) > "$LOG/canary.txt" 2>&1
canary_rc=$?
set -e
if grep -q "ERROR: AddressSanitizer: heap-buffer-overflow" "$LOG/canary.txt" \
        && grep -q "sr_top_k\|top_k_" "$LOG/canary.txt" && [[ $canary_rc -ne 0 ]]; then
    grep -m1 "^excluded row" "$LOG/canary.txt" | sed 's/^/   /' || true
    echo "   reported (exit $canary_rc): $(grep -m1 'ERROR: AddressSanitizer' "$LOG/canary.txt")"
    grep -m1 -E "#[0-9]+ .* in (top_k|sr_top_k)" "$LOG/canary.txt" | sed 's/^/   /' || true
else
    echo "   FAILED: the deliberate out-of-bounds write was not reported (exit $canary_rc)"
    cat "$LOG/canary.txt"
    exit 1
fi

status=0
echo "== 2. kernel and bad-input tests"
"$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_sknn_kernels.py \
    tests/test_bad_input.py \
    > "$LOG/tests.txt" 2>&1 || status=1
tail -n 3 "$LOG/tests.txt" | sed 's/^/   /'

echo "== 3. fuzz: $FUZZ_CALLS calls through the C kernel"
"$PY" tests/fuzz_kernels.py --calls "$FUZZ_CALLS" > "$LOG/fuzz.txt" 2>&1 || status=1
tail -n 3 "$LOG/fuzz.txt" | sed 's/^/   /'

n_reports=$(( $(reports "$LOG/tests.txt") + $(reports "$LOG/fuzz.txt") ))
echo "== sanitizer reports over the tests and the fuzz: $n_reports"
if [[ $n_reports -ne 0 ]]; then
    grep -h -A 12 -E "ERROR: AddressSanitizer|runtime error:" "$LOG/tests.txt" "$LOG/fuzz.txt" \
        | head -n 60
    status=1
fi
[[ "${KEEP:-0}" == 1 ]] && echo "== logs kept in $LOG"
exit $status
