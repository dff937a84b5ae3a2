#!/usr/bin/env bash
# The README's main job and the full study on one H200, with the embedded model (one command):
#
#     bash benchmarks/gpu/run_h200_pipeline.sh     # results packed into $OUT/pipeline.tar.gz
#
# The GPU machine lacks the embedded model (98 MB, over one call's transfer limit) and some packages:
# benchmarks/gpu/device_env.sh says how they travel (.device/ parts over calls, .whl/ wheels; name both in carry).
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/device_env.sh
out="${OUT:-benchmarks/out}"
work=/tmp/pipeline
mkdir -p "$out" "$work"
device_env || exit 1
embedded_model || exit 1
export BIASPRUNE_CACHE="$work/cache"
SECONDS=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$work/env.log"
python3 -c 'import torch, transformers, lightning; print("torch", torch.__version__, "transformers", transformers.__version__, "lightning", lightning.__version__)' | tee -a "$work/env.log"

budget=560  # the call's limit is 600 s: whatever the quickstart leaves goes to the study
start=$SECONDS
echo "=================== quickstart on 1 GPU"
timeout 240 python3 -m biasprune fit --config configs/quickstart.yaml --config configs/gpu.yaml \
  --trainer.logger.init_args.save_dir "$work/runs" --trainer.enable_progress_bar false 2>&1 | tee "$work/quickstart.log"
echo "quickstart wall: $((SECONDS - start))s" | tee -a "$work/quickstart.log"

start=$SECONDS
left=$((budget - SECONDS))
echo "=================== full study on 1 GPU (limit ${left}s)"
timeout "$left" python3 -m biasprune study --config configs/study.yaml --study.output "$work/study" \
  --study.pieces "$work/study/pieces" --trainer.logger.init_args.save_dir "$work/runs" 2>&1 \
  | grep -v "Loading weights" | tee "$work/study.log"
echo "study wall: $((SECONDS - start))s" | tee -a "$work/study.log"

# Everything in one archive (at most 8 files come back); the study's pieces stay behind.
tar -czf "$out/pipeline.tar.gz" -C "$work" --exclude=study/pieces --exclude=runs/quickstart/version_0/checkpoints \
  --exclude=cache env.log quickstart.log study.log runs study 2>/dev/null
ls -la "$out"
