#!/usr/bin/env bash
# Every benchmark on one H200, in one call from the repository root:
#
#     bash benchmarks/run_h200.sh            # writes *.json and *.log into $OUT (default benchmarks/out)
#     bash benchmarks/run_h200.sh --tiny     # the same scripts on a tiny model on CPU: a smoke test
#
# Carry captum as a wheel in .whl/ (git-ignored: name it in the run's carry list). Expected wall time
# on an H200: about 3-4 minutes; each script also has a hard limit, so the whole stays under 8.
set -uo pipefail
cd "$(dirname "$0")/.."

export PYTHONPATH=.
# NVLink multicast stays off on the shared GPU hosts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# captum's multi-layer pass holds many large activations at once; expandable segments limit fragmentation.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True TOKENIZERS_PARALLELISM=false

out="${OUT:-benchmarks/out}"
mkdir -p "$out"

if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:.
fi

if [ "${1:-}" = "--tiny" ]; then
  mode=(--tiny); sweep=(); limits=(120 120)
else
  mode=(); sweep=(--sweep 16x512,64x128); limits=(300 150)
fi

{
  nvidia-smi || true
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__,
              "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
  python3 -c 'import captum; print("captum", captum.__version__)' || true
} > "$out/env.log" 2>&1
cat "$out/env.log"

status=0
run() {  # run NAME LIMIT_S ARGS...: one benchmark module, its JSON and log named after it
  local name=$1 limit=$2
  shift 2
  echo "=================== $name (limit ${limit}s)"
  timeout "$limit" python3 -m "benchmarks.bench_$name" "${mode[@]}" --out "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "bench_$name exited with status $rc (124: time limit)"
    status=1
  fi
}

SECONDS=0
run scoring "${limits[0]}" "${sweep[@]}"
run generation "${limits[1]}"
echo "all benchmarks: ${SECONDS}s; results in $out"
exit "$status"
