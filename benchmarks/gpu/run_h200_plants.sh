#!/usr/bin/env bash
# Train the three shipped plants (configs/plant/{format,purchase,all}.yaml) on one H200, in one call:
#
#     bash benchmarks/gpu/run_h200_plants.sh      # $OUT/plants.tar.gz: plants/<name>/ (adapter + provenance), logs, runs
#
# Then, on the dev machine, ship them as package data:
#
#     tar -xzf plants.tar.gz -C biasprune/resources plants/format plants/purchase plants/all
#
# The embedded model and missing packages travel as benchmarks/gpu/device_env.sh says (name .device and .whl in carry).
#
# The three trainings run side by side on the one GPU (a 135M model at batch 16 leaves most of an H200 idle).
# Expected wall time: ~20 s set-up and model conversion, then ~2-4 minutes for the three (each: 2,052 chats,
# 5 epochs = 645 steps, and 6 greedy validations of 76 held-out prompts); each has a hard limit of 420 s.
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/device_env.sh
out="${OUT:-benchmarks/out}"
work=/tmp/plants
plants=(format purchase all)
mkdir -p "$out" "$work"
device_env || exit 1
embedded_model || exit 1
export BIASPRUNE_CACHE="$work/cache"
SECONDS=0

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers, lightning, peft, jsonargparse
print("torch", torch.__version__, "transformers", transformers.__version__, "lightning", lightning.__version__,
      "peft", peft.__version__, "jsonargparse", jsonargparse.__version__)'
} 2>&1 | tee "$work/env.log"

# Convert the GGUF file once, before the three runs start (they would otherwise queue on the cache's lock).
python3 -c 'from biasprune.models.loading import DEFAULT_MODEL, model_identity; print(model_identity(DEFAULT_MODEL))' \
  2>&1 | tee -a "$work/env.log" || exit 1
echo "set-up: ${SECONDS}s" | tee -a "$work/env.log"

declare -A pids
for name in "${plants[@]}"; do
  timeout 420 python3 -m biasprune.plant.cli --config "configs/plant/$name.yaml" \
    --trainer.accelerator gpu --trainer.devices 1 --trainer.enable_progress_bar false \
    --trainer.logger.init_args.save_dir "$work/runs" --output "$work/plants/$name" > "$work/$name.log" 2>&1 &
  pids[$name]=$!
done
status=0
for name in "${plants[@]}"; do
  wait "${pids[$name]}"; rc=$?
  echo "plant $name: exit $rc after ${SECONDS}s" | tee -a "$work/env.log"
  tail -n 3 "$work/$name.log"
  [ "$rc" -eq 0 ] || status=1
done
ls -la "$work"/plants/* 2>&1 | tee -a "$work/env.log"

# One archive (few files come back): the three plant directories, the logs and the TensorBoard runs.
tar -czf "$out/plants.tar.gz" -C "$work" plants runs env.log "${plants[@]/%/.log}" 2>/dev/null
ls -la "$out"
exit $status
