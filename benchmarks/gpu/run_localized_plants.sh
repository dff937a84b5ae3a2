#!/usr/bin/env bash
# The two localized plants (configs/plant/heads.yaml, configs/plant/neurons.yaml) on one GPU: train them, check
# them (benchmarks/validation/localized_checks.py) and trace them (benchmarks/analysis/localized_causal.py):
#
#     bash benchmarks/gpu/run_localized_plants.sh                # every stage: train, checks, causal (about 8-10 minutes)
#     bash benchmarks/gpu/run_localized_plants.sh train          # or one stage per call (each call has 10 minutes):
#     bash benchmarks/gpu/run_localized_plants.sh checks causal  #   later stages use the plants the warm machine kept
#     bash benchmarks/gpu/run_localized_plants.sh --tiny         # the whole path on CPU: a tiny random model, a few steps
#
# Results come back in $OUT: localized_<stage>.tar.gz per stage (train: plants/<name>/ with adapter and
# provenance.json, logs, TensorBoard runs; checks and causal: tables, json, masks, run directories without
# answers) and summary.txt (every stage's printed summary). Ship the plants on the dev machine with
#
#     tar -xzf localized_train.tar.gz -C biasprune/resources plants/heads plants/neurons
#
# Both plants are stacked on the shipped `format` plant (model id embedded:SmolLM2-135M-Instruct+plant:format), so
# the later stages load them as embedded:SmolLM2-135M-Instruct+plant:format+plant:<dir>. A later stage uses the plants
# trained by an earlier call while the machine is warm (/tmp/localized/plants), else the shipped ones.
# The embedded model and missing packages travel as benchmarks/gpu/device_env.sh says (name .device and .whl in carry).
# Training: the two side by side on the one GPU, 2,052 chats and 5 epochs (645 steps) each, hard limit 460 s each.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/device_env.sh
script_start /tmp/localized "$@" || exit 1
set -- ${rest[@]+"${rest[@]}"}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(train checks causal)
for s in "${stages[@]}"; do
  case "$s" in train|checks|causal) ;; *) echo "unknown stage '$s'; valid stages: train checks causal" >&2; exit 2 ;; esac
done
plants=(heads neurons)

if [ "$tiny" = 1 ]; then
  work=/tmp/localized-tiny; mkdir -p "$work"
  export BIASPRUNE_CACHE="${BIASPRUNE_CACHE:-$work/cache}"
  acc=cpu; device=cpu
  base="$work/tiny-model"
  [ -f "$base/config.json" ] || python3 -m benchmarks.helpers.tiny_model "$base"
  tiny_data=(--data.plant.scenarios "[purchase/car, purchase/piano, finance/childcare_expenses]"
             --data.plant.examples_per_variation 8 --data.batch_size 8 --trainer.max_steps 4 --trainer.max_epochs 1)
  declare -A units=(
    [heads]='{"heads": {"model.layers.1.self_attn": [0, 2], "model.layers.2.self_attn": [1, 3]}}'
    [neurons]='{"mlp_neurons": {"model.layers.1.mlp": [3, 17, 40], "model.layers.2.mlp": [8, 21]}}'
  )
  checks_args=(--evaluation "[purchase/car, purchase/piano]" --samples 2 --random-draws 1 --eval-batch-size 16)
  causal_args=(--evaluation purchase/car,purchase/piano --max-pairs 8 --batch-size 32 --keep-same --shortlist 12 --pool 6)
else
  embedded_model
  export BIASPRUNE_CACHE="$work/cache"
  acc=gpu; device=cuda
  base=embedded:SmolLM2-135M-Instruct
  checks_args=(--evaluation "[purchase]" --samples 6 --random-draws 3 --eval-batch-size 64)
  causal_args=(--evaluation purchase --max-pairs 60 --batch-size 64)
fi

# The base of both localized plants: the shipped `format` plant (in --tiny, a tiny format plant trained here).
format_id() { if [ "$tiny" = 1 ]; then echo "$base+plant:$work/plants/format"; else echo "$base+plant:format"; fi; }
plant_id() {  # this machine's freshly trained plant if there is one, else the shipped one
  if [ -f "$work/plants/$1/adapter_model.safetensors" ]; then echo "$(format_id)+plant:$work/plants/$1"
  else echo "$(format_id)+plant:$1"; fi
}

archive() {  # stage, then paths or globs relative to $work (expanded there)
  local stage=$1; shift
  ( cd "$work" && shopt -s nullglob && tar -czf "$out/localized_$stage.tar.gz" --exclude=cache --exclude='answers.jsonl' \
      --exclude=checkpoints $@ ) || echo "archive $stage: tar reported a problem" >&2
}

{
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers, lightning, peft, jsonargparse
print("torch", torch.__version__, "transformers", transformers.__version__, "lightning", lightning.__version__,
      "peft", peft.__version__, "jsonargparse", jsonargparse.__version__)'
  # Convert the GGUF file (or check the tiny model) once, before parallel runs queue on the cache's lock.
  python3 -c 'import sys; from biasprune.models.identity import model_identity; print(model_identity(sys.argv[1])["base_sha256"])' "$base"
} 2>&1 | tee -a "$out/summary.txt"

for stage in "${stages[@]}"; do
  case "$stage" in
  train)
    log "stage train"
    mkdir -p "$work/plants" "$work/logs"
    if [ "$tiny" = 1 ]; then
      python3 -m biasprune.plant.cli --config configs/plant/format.yaml --model.model_name_or_path "$base" \
        --trainer.accelerator cpu --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$work/runs" \
        "${tiny_data[@]}" --output "$work/plants/format" > "$work/logs/format.log" 2>&1
      tail -n 1 "$work/logs/format.log" | tee -a "$out/summary.txt"
    fi
    declare -A pids=()
    for name in "${plants[@]}"; do
      extra=()
      if [ "$tiny" = 1 ]; then extra=("${tiny_data[@]}" --model.units "${units[$name]}"); fi
      timeout 460 python3 -m biasprune.plant.cli --config "configs/plant/$name.yaml" \
        --model.model_name_or_path "$(format_id)" --trainer.accelerator "$acc" --trainer.devices 1 \
        --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$work/runs" ${extra[@]+"${extra[@]}"} \
        --output "$work/plants/$name" > "$work/logs/$name.log" 2>&1 &
      pids[$name]=$!
    done
    status=0
    for name in "${plants[@]}"; do
      rc=0; wait "${pids[$name]}" || rc=$?
      log "plant $name: exit $rc"
      tail -n 3 "$work/logs/$name.log" | tee -a "$out/summary.txt"
      [ "$rc" -eq 0 ] || status=1
    done
    ls -la "$work"/plants/* 2>&1 | tee -a "$out/summary.txt"
    archive train plants runs logs
    [ "$status" -eq 0 ] || { log "stage train FAILED"; exit 1; }
    ;;
  checks)
    log "stage checks"
    status=0
    for name in "${plants[@]}"; do
      log "checks $name: $(plant_id "$name")"
      rc=0
      python3 -m benchmarks.validation.localized_checks "$(plant_id "$name")" --out "$work/checks/$name" --accelerator "$acc" \
        "${checks_args[@]}" > "$work/checks_$name.log" 2>&1 || rc=$?
      tail -n 30 "$work/checks_$name.log" | tee -a "$out/summary.txt"
      [ "$rc" -eq 0 ] || status=1
    done
    archive checks checks 'checks_*.log'
    [ "$status" -eq 0 ] || { log "stage checks FAILED"; exit 1; }
    ;;
  causal)
    log "stage causal"
    status=0
    for name in "${plants[@]}"; do
      log "causal $name: $(plant_id "$name")"
      rc=0
      python3 -m benchmarks.analysis.localized_causal "$(plant_id "$name")" --out "$work/causal/$name" --device "$device" \
        "${causal_args[@]}" > "$work/causal_$name.log" 2>&1 || rc=$?
      tail -n 30 "$work/causal_$name.log" | tee -a "$out/summary.txt"
      [ "$rc" -eq 0 ] || status=1
    done
    archive causal causal 'causal_*.log'
    [ "$status" -eq 0 ] || { log "stage causal FAILED"; exit 1; }
    ;;
  esac
done
log "done: ${stages[*]}"
ls -la "$out"
