#!/usr/bin/env bash
# Mutation testing of the Python side with mutmut (pip install mutmut; in the dev extra),
# in a temporary copy of the tree: the repository's files are never touched.
#
#   bash scripts/mutation.sh                       # the default modules below
#   MUTATE="export_tools/metrics.py" bash scripts/mutation.sh      # one module
#   MUTATE="sessrec_sdk/" CHILDREN=2 KEEP=1 bash scripts/mutation.sh   # the whole runtime
#   MUTANTS="sessrec_sdk.recommender.x__blend*" MUTATE=sessrec_sdk/recommender.py bash ...
#
# What is mutated (MUTATE, space-separated paths): by default the runtime's request path
# and its helpers, the one metrics implementation and the export defaults; MUTATE=
# "sessrec_sdk/" takes the rest of the runtime too (session-kNN kernel wrappers, encoder,
# bundle reader/writer, page cache, CLI). The Numba kernels are never mutated: mutmut's
# trampolines cannot wrap @njit functions. Each mutant runs only the tests that reach the mutated function (mutmut's
# coverage stats) out of a fast subset (TESTS). Prints mutmut's per-mutant results and
# the totals; KEEP=1 keeps the copy (cd there and run `.venv/bin/mutmut show NAME`).
# For the C kernels see scripts/c_mutants.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
MUTMUT=${MUTMUT:-$(dirname "$PY")/mutmut}
CHILDREN=${CHILDREN:-2}
MUTATE=${MUTATE:-"sessrec_sdk/ids.py sessrec_sdk/recommender.py sessrec_sdk/result.py \
sessrec_sdk/kernels/__init__.py sessrec_sdk/kernels/common.py sessrec_sdk/kernels/reference.py \
sessrec_sdk/kernels/c_backend.py export_tools/metrics.py export_tools/defaults.py"}
# the session-kNN model tests (tests/test_sknn_model.py) train models in module fixtures,
# which every mutant's run would repeat (minutes each): the hybrid path is checked here by
# tests/test_hybrid_synthetic.py, the learned repeat bonus by
# tests/test_learned_repeats_synthetic.py and recommend_many by its tests on synthetic bundles
RM=tests/test_recommend_many.py
TESTS=${TESTS:-"tests/test_kernels.py tests/test_recommender.py tests/test_bad_input.py \
tests/test_ids.py tests/test_request_path_edges.py tests/test_candidate_policies.py tests/test_bundle_v2.py \
tests/test_hybrid_synthetic.py tests/test_learned_repeats_synthetic.py tests/test_damaged_bundle_calls.py \
tests/test_options_edges.py tests/test_bundle_writes.py tests/test_pages_warm.py tests/test_encoder_edges.py \
tests/test_sknn_edges.py tests/test_manifest_checks.py tests/test_bundle_array_checks.py tests/test_write_bundle_edges.py \
$RM::test_session_knn_bundle_skips_the_encoder \
$RM::test_bad_input_in_one_session_raises_what_recommend_raises \
$RM::test_batched_synthetic_equals_recommend $RM::test_a_bad_batch_value_is_refused \
$RM::test_batch_key_must_match_the_encoder $RM::test_a_batched_run_that_loses_sessions_is_refused \
$RM::test_cached_encoder_batches_on_a_synthetic_bundle $RM::test_extra_outputs_of_a_batched_run \
$RM::test_a_batched_run_that_fails_names_the_batch \
tests/test_sknn_kernels.py tests/test_synthetic_sknn.py tests/test_pages.py tests/test_cli.py \
tests/test_metrics.py tests/test_defaults.py \
tests/test_export_evaluate.py::test_popularity_order_and_ties_hand_counted \
tests/test_export_evaluate.py::test_choose_defaults_follow_the_data \
tests/test_export_evaluate.py::test_string_ids_each_result_is_the_reference_kernels \
tests/test_export_evaluate.py::test_string_ids_unknown_are_counted_never_mapped"}
"$PY" -c "import mutmut" 2> /dev/null || { echo "mutmut is not installed: $PY -m pip install mutmut"; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sessrec-mutation.XXXXXX")
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
echo "== copy of the tree in $WORK"
tar -C "$ROOT" --exclude='__pycache__' --exclude='*.egg-info' --exclude='.hypothesis' \
    -cf - sessrec_sdk csrc tests export_tools setup.py pyproject.toml README.md \
    | tar -C "$WORK" -xf -
ln -s "$ROOT/data" "$WORK/data"
ln -s "$ROOT/.venv" "$WORK/.venv"

toml_list() { local out="" x; for x in $1; do out+="\"$x\", "; done; echo "[${out%, }]"; }
only=""  # a directory in MUTATE stands for every file under it
for f in $MUTATE; do if [[ "$f" == */ ]]; then only+="${f}* "; else only+="$f "; fi; done
cat >> "$WORK/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["sessrec_sdk", "export_tools"]
only_mutate = $(toml_list "$only")
do_not_mutate = ["sessrec_sdk/kernels/numba_backend.py", "sessrec_sdk/kernels/sknn_numba.py"]
also_copy = ["csrc", "data"]
pytest_add_cli_args_test_selection = $(toml_list "$TESTS")
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]
process_isolation = "forkserver"
# a mutant is stopped after 10x (not mutmut's 15x) the tests' estimated CPU time, times
# two, and reported as "timeout": a loop it caused, or only its tests' module fixtures
# (the session-kNN tests train a model) that the estimate left out. A timeout is not a
# kill: re-run those mutants with a larger multiplier to tell them apart
timeout_multiplier = 10.0
EOF
cd "$WORK"
echo "== mutating: $MUTATE"
echo "== tests: $TESTS"
start=$(date +%s)
# MUTANTS: only these mutant names (shell patterns as mutmut takes them), e.g. the
# survivors of an earlier run after new tests
# shellcheck disable=SC2086
"$MUTMUT" run --max-children "$CHILDREN" ${MUTANTS:-} > "$WORK/run.log" 2>&1 || true
tail -n 5 "$WORK/run.log" | tr '\r' '\n' | tail -n 3
"$MUTMUT" results --all true > "$WORK/results.txt" 2>&1 || "$MUTMUT" results > "$WORK/results.txt" 2>&1 || true
echo "== survivors (mutmut show NAME in $WORK for the diff):"
grep -E ": (survived|no tests|timeout|suspicious)" "$WORK/results.txt" || echo "   none"
killed=$(grep -c ": killed" "$WORK/results.txt" || true)
total=$(grep -cE ": [a-z ]+$" "$WORK/results.txt" || true)
survived=$(grep -c ": survived" "$WORK/results.txt" || true)
notests=$(grep -c ": no tests" "$WORK/results.txt" || true)
echo "== Python mutants: $total, killed $killed, survived $survived, no tests $notests;" \
     "$(( $(date +%s) - start )) s"
