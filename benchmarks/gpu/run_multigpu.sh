#!/usr/bin/env bash
# Multi-GPU scaling on one machine kind (nvidia-h200-x2 or -x4), in stages that each fit one call:
#
#     bash benchmarks/gpu/run_multigpu.sh bfloat16   # throughput: frozen_ddp on 1, 2 (and 4) GPUs, frozen_fsdp on 2
#     bash benchmarks/gpu/run_multigpu.sh float32    # the same runs in float32: scores and masks against 1 GPU
#     bash benchmarks/gpu/run_multigpu.sh study      # the study on the purchase plant on 1 and 2 GPUs: pieces, wall time
#     bash benchmarks/gpu/run_multigpu.sh all        # the three in a row (more than one call's 10 minutes on an x2)
#     bash benchmarks/gpu/run_multigpu.sh --tiny all # tiny models over 2 CPU processes (gloo): a smoke test
#
# Scoring: the 8B-shaped model is random (bf16, saved once under /tmp and kept while the machine is warm), with
# a word-level tokenizer built on the spot: no hub, no GGUF. Every run scores the same scoring_examples.jsonl.
# bf16 runs give throughput (steady state after 3 warm-up steps; one GPU also with cuDNN attention, which
# scoring excludes); float32 runs (the first quarter of the examples) check that N GPUs, and a second 1-GPU
# run, give the 1-GPU scores (largest elementwise relative difference, mask entries that differ). The study
# stage needs the embedded model (carry .device and .whl: benchmarks/gpu/device_env.sh; with --tiny, TINY_MODEL
# names a tiny model directory); it runs in float32 without a scoring-examples file, so 1 and 2 GPUs also make
# their own target responses.
# Tables and JSON come back in $OUT; every stage prints the scoring table of all runs so far.
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/device_env.sh
out="${OUT:-benchmarks/out}"; work=/tmp/multigpu; mkdir -p "$out" "$work"
device_env || exit 1
keep_model_parts
tiny=0; [ "${1:-}" = "--tiny" ] && { tiny=1; shift; }
stages=("${@:-all}"); [ "${stages[0]}" = all ] && stages=(bfloat16 float32 study)
if [ "$tiny" = 1 ]; then
  sizes=(--tiny --examples 96); gpus=2; acc=cpu
else
  sizes=(--examples 1024); gpus=$(nvidia-smi -L | wc -l); acc=gpu
  BF16_TFLOPS=$(python3 -c 'import torch,time; a=torch.randn(8192,8192,device="cuda",dtype=torch.bfloat16); [a@a for _ in range(3)]; torch.cuda.synchronize(); t=time.perf_counter(); [a@a for _ in range(20)]; torch.cuda.synchronize(); print(20*2*8192**3/(time.perf_counter()-t)/1e12)')
  export BF16_TFLOPS; echo "bf16 matmul: $BF16_TFLOPS TFLOP/s"
fi
SECONDS=0

scoring() {  # one dtype: frozen_ddp on 1, 2, 4 GPUs (those the machine has), frozen_fsdp on 2
  local dtype=$1 n file=scoring_examples.jsonl names=names.csv k
  [ -f "$work/model/config.json" ] || python3 -m benchmarks.speed.bench_multigpu prepare --out "$work" "${sizes[@]}" || return 1
  if [ "$dtype" = float32 ]; then  # the equality check: a quarter of the examples (float32 runs at a tenth of the speed)
    file=scoring_examples_float32.jsonl; names=names_float32.csv; k=$(( $(wc -l < "$work/scoring_examples.jsonl") / 4 )); [ "$k" -ge 48 ] || k=48  # 24 names a group at least: three splits
    head -n "$k" "$work/scoring_examples.jsonl" > "$work/$file"; head -n "$((k + 1))" "$work/names.csv" > "$work/$names"
  fi
  for n in 1 2 4; do
    if [ "$n" -le "$gpus" ]; then score_run "ddp_${dtype}_$n" --devices "$n" --strategy frozen_ddp --dtype "$dtype"; fi
  done
  if [ "$dtype" = float32 ]; then  # the 1-GPU run again: what differs between two runs of one setting
    score_run "ddp_${dtype}_1_repeat" --devices 1 --strategy frozen_ddp --dtype "$dtype" --label repeat
  else  # one GPU without the DDP strategy, then with cuDNN attention allowed (before/after)
    score_run "auto_${dtype}_1" --devices 1 --strategy auto --dtype "$dtype"
    score_run "auto_${dtype}_1_cudnn" --devices 1 --strategy auto --dtype "$dtype" --cudnn-attention
  fi
  if [ "$gpus" -ge 2 ]; then score_run "fsdp_${dtype}_2" --devices 2 --strategy frozen_fsdp --dtype "$dtype"; fi
}

score_run() {  # one scoring run of the examples and names chosen by scoring(): log name, then its flags
  local log="$work/score_$1.log"; shift
  echo "=== $* ($((SECONDS))s)"
  timeout 400 python3 -m benchmarks.speed.bench_multigpu score --out "$work" --examples-file "$file" --names-file "$names" "$@" > "$log" 2>&1 \
    || { echo "failed:"; tail -n 5 "$log"; }
}

study() {  # the study on 1 GPU, then on 2 (frozen_ddp), float32; pieces compared, wall times printed
  local model n walls=""; local -a args
  if [ "$tiny" = 1 ]; then
    model="${TINY_MODEL:?set TINY_MODEL to a tiny model directory}"
    args=(--data.evaluation "[purchase/car, purchase/piano]" --study.within_variations "[car, piano, bicycle]"
          --study.contexts "[chess]" --study.strategies "[prompt_specific, cross_context]" --study.units "[neurons]"
          --model.generation.samples 2 --data.names "$work/study_names.csv" --data.split_fractions "[0.4, 0.2, 0.4]")
    { echo "name,group,gender"; for i in $(seq 0 19); do  # 20 names: 4 scoring, 2 dev, 4 test per group
        if [ $((i % 2)) = 1 ]; then echo "P$i Becker,white,man"; else echo "P$i Washington,black,man"; fi; done; } > "$work/study_names.csv"
  else
    embedded_model || return 1
    model=embedded:SmolLM2-135M-Instruct+plant:purchase
    args=(--data.evaluation "[purchase/car, purchase/bicycle, purchase/piano, purchase/television, purchase/chair]"
          --model.generation.samples 5 --study.grid.rules "[relative_difference]" --study.grid.budget "[0.1%, 0.5%]"
          --study.grid.head_budget "[1, 3]")
  fi
  export BIASPRUNE_CACHE="$work/cache"
  for n in 1 2; do
    echo "=== study on $n ($((SECONDS))s)"
    local start=$SECONDS
    rm -rf "$work/study_$n"
    timeout 280 python3 -m biasprune study --config configs/study.yaml --trainer.accelerator "$acc" --trainer.devices "$n" \
      --trainer.strategy "$([ "$n" = 1 ] && echo auto || echo frozen_ddp)" --model.dtype float32 --model.model_name_or_path "$model" \
      --model.generation.decoder eager --data.batch_size 16 --data.eval_batch_size 64 "${args[@]}" \
      --study.output "$work/study_$n" --trainer.logger.init_args.save_dir "$work/runs" --trainer.logger.init_args.name "study_$n" \
      > "$work/study_$n.log" 2>&1 || { echo "failed:"; tail -n 8 "$work/study_$n.log"; }
    walls+="study on $n: wall $((SECONDS - start)) s"$'\n'; echo "study on $n: wall $((SECONDS - start)) s"
  done
  { python3 -m benchmarks.analysis.compare_studies "$work/study_1" "$work/study_2"; printf "%s" "$walls"; } | tee "$work/study_compare.txt"
  tail -n 25 "$work/study_1.log" | cut -c1-200
}

for s in "${stages[@]}"; do
  case "$s" in
    bfloat16|float32) scoring "$s" ;;
    study) study ;;
    *) echo "unknown stage '$s': bfloat16, float32, study or all" >&2; exit 2 ;;
  esac
done
echo "stages ${stages[*]}: ${SECONDS}s"
compgen -G "$work/score_*.json" > /dev/null && python3 -m benchmarks.speed.bench_multigpu compare --out "$work" | tee "$out/multigpu.txt"
cp "$work"/score_*.json "$work"/study_compare.txt "$out"/ 2>/dev/null
tar -czf "$out/multigpu_logs.tar.gz" -C "$work" $(cd "$work" && ls *.log study_*/results.md study_*/timings.json 2>/dev/null) 2>/dev/null
ls -la "$out"
