#!/usr/bin/env bash
# The selection-method comparison (docs/results.md, "Selection methods compared") on one GPU, and its table:
#
#     bash benchmarks/gpu/run_localization.sh            # on the GPU machine, from the repository root
#     bash benchmarks/gpu/run_localization.sh --tiny     # the whole path on CPU: a tiny random model, no plant
#
# REDUCED to fit about 4 minutes of one H100 (shared with another script): plants purchase, heads and neurons
# (format and all are left out: run them with PLANTS=format,purchase,all,heads,neurons), methods nll, wanda, atp
# and causal with their rules, ONE matched budget (0.5% of each projection's neurons with 4 heads model-wide),
# 2 answers per prompt, 1 random control, evaluation on Purchase only. That is 12 fit runs; at about 15-20 s
# each on an H100 for the 135M model (an estimate: not measured) this is about 4 minutes. Widen with
# PLANTS=..., METHODS=..., BUDGETS=..., HEAD_BUDGETS=..., SAMPLES=..., DRAWS=... in the environment.
# The mechanism artifacts come with the runs: every fit that prunes heads writes name_attention.csv (8 pairs).
# Then the causal search timed on the random Llama-3-8B shape and the paper study projected with it
# (benchmarks/speed/bench_causal.py: about 1 minute on an H100; CAUSAL_8B=0 skips it).
# The generalization studies with the chosen method (configs/study_purchase.yaml, configs/study_all.yaml) run only
# with STUDIES=1, after `python -m benchmarks.analysis.apply_method $OUT/chosen_method.json` has filled their method
# lines from this run's choice: each is a full study (far more than this script's budget; a separate call).
#
# Results in $OUT (5 files): methods_table.md (the generated table and the fixed rule's choice), chosen_method.json
# (the choice; apply_method writes it into the study configs), causal_8b.json (the timing and the projection),
# summary.txt (everything printed), localization.tar.gz (every run's row.json, summary.csv, masks,
# name_attention.csv, timings and fit.log; no answers; with STUDIES=1 also the studies' results). The localized
# plants load from biasprune/resources/plants (heads, neurons) once they are shipped; before that, pass
# PLANT_DIRS="heads=/path neurons=/path".
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/device_env.sh
script_start /tmp/localization "$@" || exit 1

plant_dirs=()
for d in ${PLANT_DIRS:-}; do plant_dirs+=(--plant-dir "$d"); done
if [ "$tiny" = 1 ]; then
  export BIASPRUNE_CACHE="${BIASPRUNE_CACHE:-$work/cache}"
  base="$work/tiny-model"
  [ -f "$base/config.json" ] || python3 -m benchmarks.helpers.tiny_model "$base"
  args=(--base "$base" --plants "${PLANTS:-base}" --methods "${METHODS:-wanda:relative_difference,atp:target,causal:target}"
        --budgets "${BUDGETS:-3%}" --head-budgets "${HEAD_BUDGETS:-2}" --samples 1 --random-draws 1 --accelerator cpu
        --data.scoring "[purchase/car]" --data.evaluation "[purchase/car]" --data.batch_size 8 --data.eval_batch_size 16
        --model.targets.max_new_tokens 4 --model.generation.max_new_tokens 4
        --model.evaluation.bootstrap_samples 50 --model.evaluation.permutation_samples 50)
else
  embedded_model
  export BIASPRUNE_CACHE="$work/cache"
  args=(--plants "${PLANTS:-purchase,heads,neurons}"
        --methods "${METHODS:-nll:relative_difference,wanda:relative_difference,atp:target,causal:target}"
        --budgets "${BUDGETS:-0.5%}" --head-budgets "${HEAD_BUDGETS:-4}" --samples "${SAMPLES:-2}" --random-draws "${DRAWS:-1}"
        --accelerator gpu --data.evaluation "[purchase]" --data.eval_batch_size 128 --model.attn_implementation eager)
fi
{
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c 'import torch, transformers, lightning; print("torch", torch.__version__, "transformers", transformers.__version__, "lightning", lightning.__version__)'
} 2>&1 | tee -a "$out/summary.txt"

log "compare"
rc=0
python3 -m benchmarks.analysis.compare_methods --out "$work/compare" "${args[@]}" ${plant_dirs[@]+"${plant_dirs[@]}"} \
  2>&1 | tee -a "$out/summary.txt" || rc=$?
log "compare: exit $rc"
if [ -f "$work/compare/comparison.json" ]; then
  python3 -m benchmarks.analysis.methods_table "$work/compare" --out "$out/methods_table.md" --chosen "$out/chosen_method.json" \
    2>&1 | tee -a "$out/summary.txt" || rc=1
fi
if [ "${CAUSAL_8B:-1}" = 1 ]; then
  log "causal search timing"
  timing=(--out "$out/causal_8b.json")
  [ "$tiny" = 1 ] && timing+=(--tiny --pairs 1 --prompt-len 8 --iters 1)
  python3 -m benchmarks.speed.bench_causal "${timing[@]}" 2>&1 | tee -a "$out/summary.txt" || rc=1
fi
archived=(compare)
if [ "${STUDIES:-0}" = 1 ]; then
  for plant in purchase all; do
    log "study $plant"
    study=(--config "configs/study_$plant.yaml" --study.output "$work/study_$plant" --trainer.logger.init_args.save_dir "$work/runs")
    if [ "$tiny" = 1 ]; then
      study+=(--model.model_name_or_path "$base" --trainer.accelerator cpu --data.evaluation "[purchase/car]"
              --study.within_variations "[car, bicycle]" --study.contexts "[finance]" --study.grid.budget '["3%"]'
              --study.grid.head_budget "[2]" --model.generation.samples 1 --model.generation.max_new_tokens 4
              --model.targets.max_new_tokens 4 --model.evaluation.bootstrap_samples 50 --model.evaluation.permutation_samples 50)
    fi
    python3 -m biasprune study "${study[@]}" 2>&1 | tail -n 40 | tee -a "$out/summary.txt" || rc=1
    archived+=("study_$plant")
  done
fi
( cd "$work" && tar -czf "$out/localization.tar.gz" --exclude=cache --exclude='answers.jsonl' --exclude=checkpoints \
    --exclude=pieces --exclude='*.gguf' "${archived[@]}" ) || echo "archive: tar reported a problem" >&2
log "done"
exit "$rc"
