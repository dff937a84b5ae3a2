#!/usr/bin/env bash
# The planted-control measurements of docs/results.md on one H200, under the verdict rules of issue 20 (scale-free
# measure, utility guard, random controls seeded by split/arm/draw and compared as one new mask (prediction interval), Holm):
#
#     bash benchmarks/gpu/run_h200_results.sh all       # checks, rules and studies in one call (see the note on time)
#     bash benchmarks/gpu/run_h200_results.sh checks    # the three plants on all four scenarios; format and purchase pruned
#     bash benchmarks/gpu/run_h200_results.sh rules     # selection rules x budgets on the purchase plant (+ contrastive)
#     bash benchmarks/gpu/run_h200_results.sh studies   # the full study on the purchase and the all plants
#     bash benchmarks/gpu/run_h200_results.sh --tiny rules   # the same commands on a tiny random model on CPU (a smoke test)
#
# Results come back in $OUT: one archive per stage (``<stage>.tar.gz``: tables, run directories without pieces) and
# ``results_tables.md``, the markdown of docs/results.md generated from them by ``python -m benchmarks.analysis.results_tables``
# (on any machine: ``tar -xzf <stage>.tar.gz -C DIR`` for each archive, then
# ``python -m benchmarks.analysis.results_tables DIR --write docs/results.md``). The embedded model and missing packages
# travel as benchmarks/gpu/device_env.sh says (name .device and .whl in carry).
#
# Time: before issue 20 the stages took about 2 min (checks), 87 + 47 s (rules) and 149 + 112 s (studies) on one H200;
# ten random draws per chosen arm (three before) and the dev stage of `--pruning.budget auto` add to that. Should `all`
# not finish within one call's 600 s, run the stages in separate calls: the generator reads any set of archives.
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/device_env.sh
script_start /tmp/results "$@" || exit 1
set -- ${rest[@]+"${rest[@]}"}
stage="${1:?stage: all, checks, rules or studies}"

if [ "$tiny" = 1 ]; then
  base="${TINY_MODEL:?set TINY_MODEL to a tiny model directory}"; acc=cpu; samples=2; bs=16
  scen_all="[purchase/car, finance/childcare_expenses]"; purchase="[purchase/car, purchase/piano]"; five="$purchase"
else
  embedded_model || exit 1
  base=embedded:SmolLM2-135M-Instruct; acc=gpu; samples=6; bs=64
  scen_all="[purchase, finance, activity, service]"; purchase="[purchase]"
  five="[purchase/car, purchase/bicycle, purchase/piano, purchase/television, purchase/chair]"
fi
export BIASPRUNE_CACHE="$work/cache"
plant() { if [ "$tiny" = 1 ]; then echo "$base"; else echo "$base+plant:$1"; fi; }
common=(--trainer.accelerator "$acc" --trainer.devices 1 --trainer.enable_progress_bar false --model.generation.decoder eager
        --model.generation.samples "$samples" --model.generation.max_new_tokens 12 --model.targets.max_new_tokens 12
        --data.batch_size 16 --data.eval_batch_size "$bs" --trainer.logger.init_args.save_dir "$work/runs")
SECONDS=0
run() { local name=$1; shift; echo "=== $name ($((SECONDS))s)"; "$@" > "$work/$name.log" 2>&1; local rc=$?
        echo "exit $rc after ${SECONDS}s"; grep -E "^(bias on|arm|unpruned|pruned|minimum|claim|budget chosen|  [a-z_]+ budget=)" "$work/$name.log" | cut -c1-220; return $rc; }

stage_checks() {
  # Baselines of the three plants on all four scenarios (unpruned arm only), then format and purchase pruned with the
  # quickstart's settings (a pooled Purchase mask; rule and budget chosen on dev names by --pruning.budget auto),
  # evaluated on all four scenarios.
  for p in format purchase all; do
    run "validate_$p" python3 -m biasprune validate "${common[@]}" --model.model_name_or_path "$(plant $p)" \
      --data.evaluation "$scen_all" --trainer.logger.init_args.name "validate_$p"
  done
  for p in format purchase; do
    run "fit_$p" python3 -m biasprune fit --config configs/quickstart.yaml "${common[@]}" --model.model_name_or_path "$(plant $p)" \
      --data.scoring "$purchase" --data.evaluation "$scen_all" --trainer.logger.init_args.name "fit_$p"
  done
  python3 -m biasprune plant check $(ls -d "$work"/runs/*/version_0) 2>&1 | tee "$work/checks.txt"
}

stage_rules() {
  # Every rule x budget, prompt-specific, neurons and heads, on the purchase plant; then the contrastive objective.
  rules_args=(--study.strategies "[prompt_specific]" --study.units "[neurons]" --model.generation.samples 5
              --study.grid.budget "[0.1%, 0.5%, 1%, 2%]" --study.grid.random_draws 1
              --study.pieces "$work/pieces" --data.evaluation "$five" --model.model_name_or_path "$(plant purchase)")
  run rules python3 -m biasprune study --config configs/study.yaml "${common[@]}" "${rules_args[@]}" \
    --study.grid.rules "[set_difference, relative_difference, log_ratio, rank_difference]" \
    --study.output "$work/rules" --trainer.logger.init_args.name rules
  run contrastive python3 -m biasprune study --config configs/study.yaml "${common[@]}" "${rules_args[@]}" \
    --model.objective contrastive --pruning.rule target --study.grid.rules "[target]" \
    --study.output "$work/contrastive" --trainer.logger.init_args.name contrastive
  for s in rules contrastive; do python3 -m biasprune plant truth "$work/$s" "$(plant purchase)" > "$work/truth_$s.txt" 2>&1; tail -n 60 "$work/truth_$s.txt"; done
}

stage_studies() {
  # Every strategy x unit kind; each (strategy, kind) picks its rule and budget on dev among the grid below.
  for p in purchase all; do
    run "study_$p" python3 -m biasprune study --config configs/study.yaml "${common[@]}" --model.model_name_or_path "$(plant $p)" \
      --study.output "$work/study_$p" --study.pieces "$work/pieces_$p" --trainer.logger.init_args.name "study_$p" \
      --data.evaluation "$five" --model.generation.samples 5 --study.grid.rules "[${STUDY_RULE:-relative_difference}]" \
      --study.grid.budget "[0.1%, 0.5%]" --study.grid.head_budget "[1, 3]"
    cat "$work/study_$p/results.md" 2>/dev/null | cut -c1-300
  done
}

pack() {  # one archive per stage, without pieces, caches, weights or event files
  local name=$1; shift
  tar -czf "$out/$name.tar.gz" -C "$work" --exclude=pieces --exclude='pieces_*' --exclude=cache --exclude=checkpoints \
    --exclude='*.safetensors' --exclude='events.out.*' --exclude=tensorboard $(cd "$work" && ls -d "$@" 2>/dev/null) 2>/dev/null
}

case "$stage" in
checks) stage_checks; pack checks runs validate_*.log fit_*.log checks.txt ;;
rules) stage_rules; pack rules rules contrastive rules.log contrastive.log truth_*.txt ;;
studies) stage_studies; pack studies study_purchase study_all study_*.log ;;
all)
  stage_checks; pack checks runs validate_*.log fit_*.log checks.txt
  stage_rules; pack rules rules contrastive rules.log contrastive.log truth_*.txt
  stage_studies; pack studies study_purchase study_all study_*.log
  ;;
*) echo "unknown stage $stage (valid: all, checks, rules, studies)"; exit 2 ;;
esac
echo "stage $stage: ${SECONDS}s"
python3 -m benchmarks.analysis.results_tables "$work" > "$out/results_tables.md" 2> "$out/results_tables.err" \
  && echo "results_tables.md: $(grep -c '^|' "$out/results_tables.md") table lines" || tail -5 "$out/results_tables.err"
ls -la "$out"
