#!/usr/bin/env bash
# The main job: set up, train GRAINRec (fast preset) on the bundled Diginetica data,
# export a bundle, evaluate it, and recommend for a few real test sessions.
# Outputs go to runs/fast/ (checkpoint/, bundle/, eval.json, eval.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PRESET=${PRESET:-fast}
OUT=runs/$PRESET
DATA=data/diginetica
mkdir -p "$OUT"
export PATH="$PWD/.venv/bin:$PATH"

echo "== train GRAINRec ($PRESET preset) =="
sessrec train --model grainrec --preset "$PRESET" --train $DATA/train.csv.gz \
    --items $DATA/items.csv.gz --out "$OUT/checkpoint" ${TRAIN_ARGS:-}

echo "== export the bundle =="
sessrec export "$OUT/checkpoint" --out "$OUT/bundle" --neighbors 150 --overwrite

echo "== evaluate on the test sessions =="
# both protocols; every-prefix on the evenly spread 10,000-session sample of
# docs/evaluation.md (PREFIXES_SAMPLE=0: all 227,544 prefixes, several times longer)
SAMPLE=${PREFIXES_SAMPLE:-10000}
sessrec evaluate "$OUT/bundle" --checkpoint "$OUT/checkpoint" --test $DATA/test.csv.gz \
    --json "$OUT/eval.json" --plot "$OUT/eval.png" \
    $( [ "$SAMPLE" != 0 ] && echo --prefixes-sample "$SAMPLE" )

echo "== recommend for real test sessions =="
python examples/quickstart.py "$OUT/bundle" $DATA/test.csv.gz
