#!/usr/bin/env bash
# Cross-context transfer matrices of pruning (masks) and the direction arm on the shipped plants `all`, `purchase`
# and `format` (benchmarks/analysis/transfer_matrix.py; docs/method.md, "Transfer matrix"), on one GPU, in one call:
#
#     bash benchmarks/gpu/run_directions.sh            # 7 runs side by side, about 4 minutes: 3 plants x 2 methods, and
#                                                      # the direction from the name's tokens alone on `all` (all-names)
#     bash benchmarks/gpu/run_directions.sh --tiny     # the whole path on CPU: a tiny random model stands in for the plants
#     PLANTS="unplanted" bash benchmarks/gpu/run_directions.sh   # the embedded model without a plant: a real audit
#
# Then, on the dev machine, the tables of docs/results.md ("Directions and transfer"):
#
#     mkdir -p runs/directions && tar -xzf directions.tar.gz -C runs/directions
#     python -m benchmarks.analysis.direction_tables runs/directions --write docs/results.md
#
# Returns in $OUT: directions.tar.gz (per run: transfer_<method>.csv/png/_rows.json, settings.json, the run's
# summary files, direction.safetensors / masks, TensorBoard events; no answers or score sums) and summary.txt (every
# run's printed matrix). The embedded model and missing packages travel as benchmarks/gpu/device_env.sh says (name
# .device and .whl in carry).
#
# Reduced to share a call with another script (at most ~4 minutes on one H100): evaluation on 5 variations
# (purchase/car, purchase/piano, finance/childcare_expenses, activity/skiing, service/tax_preparation; scoring names
# estimate each source scenario's arm from its own evaluated variations), 4 sampled answers of at most 16 tokens per
# prompt, 2 random controls per source arm, 1,000 bootstrap draws, the package's 100 names (40/20/40 split). The
# direction arm's layers are chosen per source on dev names among `2` and `early` (layers 0-7 of 30) by the rule fixed
# in docs/results.md before the runs (DIRECTION_CANDIDATES='2;early'; set it empty to edit `early` without the dev
# stage, which roughly halves a direction run); pruning uses the callback's defaults (relative_difference, 0.5% of
# each module's neurons). Each run has a hard limit of 225 s. Nothing here was timed on a GPU in this session.
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/device_env.sh
script_start /tmp/directions "$@" || exit 1
read -ra plants <<< "${PLANTS:-all purchase format}"   # `unplanted`: the embedded model itself (issue 27, item 4)
methods=(masks direction)

if [ "$tiny" = 1 ]; then
  work=/tmp/directions-tiny
  mkdir -p "$work"
  export BIASPRUNE_CACHE="${BIASPRUNE_CACHE:-$work/cache}"
  base="$work/tiny-model"
  [ -f "$base/config.json" ] || python3 -m benchmarks.helpers.tiny_model "$base" || exit 1
  model_id() { echo "$base"; }   # no plant fits a tiny model: the same model stands in for each
  args=(--accelerator cpu --samples 2 --random-draws 1 --max-new-tokens 6 --bootstrap 50 --layers 0-1
        --evaluation purchase/car,finance/childcare_expenses --eval-batch-size 32
        --names biasprune/resources/names/audit40.csv)
  candidates="${DIRECTION_CANDIDATES-0;0-1}"
  limit=900
else
  mkdir -p "$work"
  embedded_model || exit 1
  export BIASPRUNE_CACHE="$work/cache"
  base=embedded:SmolLM2-135M-Instruct
  model_id() { if [ "$1" = unplanted ]; then echo "$base"; else echo "$base+plant:$1"; fi; }
  args=(--accelerator gpu --samples 4 --random-draws 2 --max-new-tokens 16 --bootstrap 1000 --layers early
        --eval-batch-size 128 --batch-size 32)
  candidates="${DIRECTION_CANDIDATES-2;early}"
  limit=225
fi

{
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers, lightning; print("torch", torch.__version__, "transformers",
transformers.__version__, "lightning", lightning.__version__)'
  # Convert the GGUF file (or check the tiny model) once, before the parallel runs queue on the cache's lock.
  python3 -c 'import sys; from biasprune.models.identity import model_identity; print(model_identity(sys.argv[1])["base_sha256"])' "$base"
} 2>&1 | tee -a "$out/summary.txt"
log "set-up done"

declare -A pids=()
for plant in "${plants[@]}"; do
  for method in "${methods[@]}"; do
    run="$plant-$method"
    rm -rf "$work/$run"
    extra=()
    [ "$method" = direction ] && extra=(--layer-candidates "$candidates")
    timeout "$limit" python3 -m benchmarks.analysis.transfer_matrix "$(model_id "$plant")" --method "$method" \
      --out "$work/$run" "${args[@]}" ${extra[@]+"${extra[@]}"} > "$work/$run.log" 2>&1 &
    pids[$run]=$!
    [ "$tiny" = 1 ] && { wait "${pids[$run]}"; }   # the CPU runs one at a time
  done
done
names_run=0
[[ " ${plants[*]} " == *" all "* ]] && names_run=1
if [ "$names_run" = 1 ]; then
  # The positions compared: the same direction arm on `all`, averaged over the name's tokens alone.
  run=all-names-direction
  rm -rf "$work/$run"
  timeout "$limit" python3 -m benchmarks.analysis.transfer_matrix "$(model_id all)" --method direction --positions name \
    --out "$work/$run" "${args[@]}" --layer-candidates "$candidates" > "$work/$run.log" 2>&1 &
  pids[$run]=$!
fi
status=0
for plant in "${plants[@]}"; do
  for method in "${methods[@]}"; do
    run="$plant-$method"
    rc=0; wait "${pids[$run]}" || rc=$?
    log "$run: exit $rc"
    grep -A 40 '^transfer matrix' "$work/$run.log" | tee -a "$out/summary.txt"
    [ "$rc" -eq 0 ] || { tail -n 15 "$work/$run.log" | tee -a "$out/summary.txt"; status=1; }
  done
done
if [ "$names_run" = 1 ]; then
  run=all-names-direction; rc=0; wait "${pids[$run]}" || rc=$?
  log "$run: exit $rc"
  grep -A 40 '^transfer matrix' "$work/$run.log" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || { tail -n 15 "$work/$run.log" | tee -a "$out/summary.txt"; status=1; }
fi
( cd "$work" && shopt -s nullglob && tar -czf "$out/directions.tar.gz" --exclude=cache --exclude='answers.jsonl' \
    --exclude='scores*.safetensors' --exclude=checkpoints --exclude='tiny-model' */ ./*.log ) \
  || echo "archive: tar reported a problem" >&2
log "done (status $status)"
ls -la "$out"
exit "$status"
