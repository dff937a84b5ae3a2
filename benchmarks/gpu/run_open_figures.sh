#!/usr/bin/env bash
# The open GPU figures in as few calls of one lent GPU as the model transfer allows (benchmarks/gpu/device_env.sh):
# each call runs the scripts that belong together side by side and returns <part>.tar.00, .01, ... (every script's
# $OUT, in 15 MB pieces) and <part>.txt (their printed summaries), within the limits on what comes back.
#
#     bash benchmarks/gpu/run_open_figures.sh shape      # call 1 (carry .device with the first model part, and .whl):
#                                                       #   random Llama-3-8B shape, no model weights needed: the causal
#                                                       #   search timed and projected (bench_causal), the decoders with
#                                                       #   a profile and the study budget (run_h200.sh generation)
#     bash benchmarks/gpu/run_open_figures.sh plants     # call 2 (carry the other model parts): train the localized
#                                                       #   plants (run_localized_plants.sh train) beside the transfer
#                                                       #   matrices (run_directions.sh), then the plant checks of
#                                                       #   run_h200_results.sh
#     bash benchmarks/gpu/run_open_figures.sh compare    # call 3: localized checks and causal trace, the selection-
#                                                       #   method comparison (run_localization.sh; PLANTS=... widens it)
#                                                       #   on the localized plants this machine trained (TRAIN=1 trains
#                                                       #   them first) or else the shipped ones, the rules of
#                                                       #   run_h200_results.sh
#     bash benchmarks/gpu/run_open_figures.sh studies    # call 4: the studies of run_h200_results.sh
#
# DEADLINE (seconds, default 570) bounds each call's work so that the bundling still runs inside the call's limit;
# a script cut by it leaves what it wrote (each script archives as it goes). On the dev machine, unpack with
# `cat <part>.tar.* | tar -xf - -C DIR` and follow each script's own header.
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/device_env.sh
part="${1:?part: shape, plants, compare or studies}"
out="${OUT:-benchmarks/out}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
deadline="${DEADLINE:-570}"
work=/tmp/open_figures/$part
rm -rf "$work" && mkdir -p "$work"
SECONDS=0

# One job: a script run with its own $OUT under $work, its output in $work/<name>.log, cut at the deadline.
job() {
  local name=$1; shift
  mkdir -p "$work/$name"
  local left=$((deadline - SECONDS))
  [ "$left" -gt 5 ] || { echo "=== $name: skipped, ${left}s left" | tee -a "$work/status.txt"; return; }
  OUT="$work/$name" timeout --kill-after=10 "$left" "$@" > "$work/$name.log" 2>&1
  echo "=== $name: exit $? at ${SECONDS}s" | tee -a "$work/status.txt"
}

case "$part" in
  shape|plants|compare|studies) ;;
  *) echo "unknown part '$part'; valid parts: shape plants compare studies" >&2; exit 2 ;;
esac
keep_model_parts
device_env || exit 1
if [ "$part" != shape ]; then
  embedded_model || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$work/status.txt"

case "$part" in
  shape)
    job causal_8b python3 -m benchmarks.speed.bench_causal --out "$work/causal_8b/causal_8b.json"
    job generation bash benchmarks/gpu/run_h200.sh generation
    ;;
  plants)
    job localized_train bash benchmarks/gpu/run_localized_plants.sh train &
    { job directions bash benchmarks/gpu/run_directions.sh; job results_checks bash benchmarks/gpu/run_h200_results.sh checks; } &
    wait
    ;;
  compare)
    job results_rules bash benchmarks/gpu/run_h200_results.sh rules &
    # The localized plants: the ones this machine trained (TRAIN=1 trains them first), else the shipped ones.
    [ "${TRAIN:-0}" = 1 ] && job localized_train bash benchmarks/gpu/run_localized_plants.sh train
    dirs=""
    [ -f /tmp/localized/plants/neurons/adapter_model.safetensors ] \
      && dirs="heads=/tmp/localized/plants/heads neurons=/tmp/localized/plants/neurons"
    job localized_checks bash benchmarks/gpu/run_localized_plants.sh checks causal &
    job localization env PLANT_DIRS="$dirs" CAUSAL_8B=0 bash benchmarks/gpu/run_localization.sh &
    wait
    ;;
  studies)
    job results_studies bash benchmarks/gpu/run_h200_results.sh studies
    ;;
esac

# Bundle: every job's $OUT and log in one tar, the printed summaries in one text file.
{
  cat "$work/status.txt"
  for f in "$work"/*/summary.txt "$work"/*/generation_summary.txt "$work"/*/results_tables.md "$work"/*/methods_table.md; do
    [ -f "$f" ] && { echo; echo "##### ${f#"$work"/}"; cat "$f"; }
  done
  for f in "$work"/*.log; do echo; echo "##### ${f#"$work"/} (last 40 lines)"; tail -n 40 "$f"; done
} > "$out/$part.txt" 2>&1
# One call returns at most 8 files of 16 MiB each: the tar goes in 15 MB pieces (`cat <part>.tar.* | tar -xf -`).
rm -f "$out/$part".tar.*
tar -cf - -C "$work" . | split -b 15000000 -d - "$out/$part.tar." && ls -la "$out"
echo "part $part done in ${SECONDS}s"
