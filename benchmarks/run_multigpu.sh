#!/usr/bin/env bash
# Scoring on 1, 2 and 4 GPUs (whichever the machine has), frozen_ddp and frozen_fsdp, in one command per kind:
#
#     bash benchmarks/run_multigpu.sh            # on nvidia-h200-x2 or -x4; tables and JSON into $OUT
#     bash benchmarks/run_multigpu.sh --tiny     # a 2-layer model over 2 CPU processes (gloo): a smoke test
#
# The 8B-shaped model is random (bf16, saved once under /tmp), with a word-level tokenizer built on the spot: no
# hub, no GGUF, nothing to carry but the repository. Every run scores the same scoring_examples.jsonl. bf16 runs
# give throughput (steady state after 3 warm-up steps); float32 runs check that N GPUs give the 1-GPU scores
# (largest elementwise relative difference, mask entries that differ). NVLink multicast stays off.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out="${OUT:-benchmarks/out}"; work=/tmp/multigpu; mkdir -p "$out" "$work"
if ! python3 -c 'import biasprune.datamodules' 2>/dev/null; then  # not installed (the GPU machines): map by links
  ln -sfn ../datamodules biasprune/datamodules && ln -sfn ../callbacks biasprune/callbacks
fi
if [ "${1:-}" = "--tiny" ]; then
  tiny=(--tiny --examples 96); gpus=2; dtypes=(float32)
else
  tiny=(--examples 512); gpus=$(nvidia-smi -L | wc -l); dtypes=(bfloat16 float32)
  BF16_TFLOPS=$(python3 -c 'import torch,time; a=torch.randn(8192,8192,device="cuda",dtype=torch.bfloat16); [a@a for _ in range(3)]; torch.cuda.synchronize(); t=time.perf_counter(); [a@a for _ in range(20)]; torch.cuda.synchronize(); print(20*2*8192**3/(time.perf_counter()-t)/1e12)')
  export BF16_TFLOPS; echo "bf16 matmul: $BF16_TFLOPS TFLOP/s"
fi
python3 -m benchmarks.bench_multigpu prepare --out "$work" "${tiny[@]}" || exit 1
for dtype in "${dtypes[@]}"; do
  for n in 1 2 4; do
    [ "$n" -le "$gpus" ] || continue
    timeout 600 python3 -m benchmarks.bench_multigpu score --out "$work" --devices "$n" --strategy frozen_ddp --dtype "$dtype" \
      > "$work/score_ddp_${dtype}_$n.log" 2>&1 || echo "frozen_ddp $dtype $n: failed (see log)"
  done
  [ "$gpus" -ge 2 ] && { timeout 600 python3 -m benchmarks.bench_multigpu score --out "$work" --devices 2 --strategy frozen_fsdp --dtype "$dtype" \
      > "$work/score_fsdp_${dtype}_2.log" 2>&1 || echo "frozen_fsdp $dtype 2: failed (see log)"; }
done
python3 -m benchmarks.bench_multigpu compare --out "$work" | tee "$out/multigpu.txt"
cp "$work"/score_*.json "$out"/ 2>/dev/null; tar -czf "$out/multigpu_logs.tar.gz" -C "$work" $(cd "$work" && ls *.log) 2>/dev/null
