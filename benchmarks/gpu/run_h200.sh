#!/usr/bin/env bash
# Benchmarks on one H200, in one call from the repository root:
#
#     bash benchmarks/gpu/run_h200.sh                 # scoring and generation; *.json and *.log into $OUT
#     bash benchmarks/gpu/run_h200.sh generation      # decoders, two-sample test, study budget only (~2-3 min)
#     bash benchmarks/gpu/run_h200.sh --tiny          # the same scripts on a tiny model on CPU: a smoke test
#
# $OUT defaults to benchmarks/out. For scoring, carry captum as a wheel in .whl/ (git-ignored: name it in
# the run's carry list). Expected wall time on an H200: scoring about 3 minutes, generation about 2-3;
# each script has a hard limit (scoring 270 s, generation 270 s), so the whole stays under 9 minutes.
# The closing tables of the generation benchmark are printed again at the very end, from its JSON.
set -uo pipefail
cd "$(dirname "$0")/../.."

export PYTHONPATH=.
# NVLink multicast stays off on the shared GPU hosts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TOKENIZERS_PARALLELISM=false

out="${OUT:-benchmarks/out}"
mkdir -p "$out"

mode=()
names=()
for arg in "$@"; do
  case "$arg" in
    --tiny) mode=(--tiny) ;;
    scoring|generation) names+=("$arg") ;;
    *) echo "usage: bash benchmarks/gpu/run_h200.sh [--tiny] [scoring] [generation]; got '$arg'" >&2; exit 2 ;;
  esac
done
[ "${#names[@]}" -eq 0 ] && names=(scoring generation)

if [[ " ${names[*]} " == *" scoring "* ]] && [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:.
fi

if [ "${#mode[@]}" -gt 0 ]; then
  declare -A limit=([scoring]=120 [generation]=240) extra=([scoring]="" [generation]="")
else
  declare -A limit=([scoring]=270 [generation]=270) extra=([scoring]="--sweep 16x512,64x128" [generation]="")
fi
# captum's multi-layer pass holds many large activations at once; expandable segments limit fragmentation.
# Scoring only: the generation benchmark captures CUDA graphs and keeps the default allocator.
declare -A alloc=([scoring]="expandable_segments:True" [generation]="")

{
  nvidia-smi || true
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__,
              "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
  python3 -c 'import captum; print("captum", captum.__version__)' || true
} > "$out/env.log" 2>&1
cat "$out/env.log"

status=0
SECONDS=0
for name in "${names[@]}"; do
  echo "=================== $name (limit ${limit[$name]}s)"
  # shellcheck disable=SC2086  # extra holds several flags
  PYTORCH_CUDA_ALLOC_CONF="${alloc[$name]}" timeout "${limit[$name]}" python3 -m "benchmarks.speed.bench_$name" "${mode[@]}" --out "$out/$name.json" ${extra[$name]} 2>&1 \
    | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "bench_$name exited with status $rc (124: time limit)"
    status=1
  fi
done
echo "all benchmarks: ${SECONDS}s; results in $out"
if [ -f "$out/generation.json" ]; then
  echo "=================== generation summary ($out/generation.json)"
  python3 -m benchmarks.speed.bench_generation --summarize "$out/generation.json" | tee "$out/generation_summary.txt"
fi
exit "$status"
