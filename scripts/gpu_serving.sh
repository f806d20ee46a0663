#!/usr/bin/env bash
# pagedattn.serving on a GPU machine, from a clean tree (repository root as cwd; nvcc, torch and
# transformers 5.x installed): builds and installs the Python package with CUDA, runs the serving
# tests (token-exact against transformers' generate) on CUDA and on the CPU backend, and runs the
# benchmark (JSON). Every step's exit status is logged; a failed step does not stop the next.
#
#   scripts/gpu_serving.sh OUT_DIR
#
# Benchmark settings through the environment (defaults in brackets): PAGEDATTN_SERVING_MODEL
# [llama-1b], PAGEDATTN_SERVING_DTYPE [bfloat16], PAGEDATTN_SERVING_BENCH_ARGS [--num-requests 64
# --prompt-len 128:512 --output-len 64:256 --max-num-seqs 64 --max-num-batched-tokens 2048
# --system-prompt-len 512].
set -u
out=${1:?usage: scripts/gpu_serving.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
step() {  # step NAME LOG CMD...: runs CMD with stdout+stderr in LOG, logs its rc and duration
  local name=$1 log=$2; shift 2
  local t0=$(date +%s)
  "$@" > "$log" 2>&1
  local r=$?
  say "$name: rc=$r ($(( $(date +%s) - t0 )) s) -> $(basename "$log")"
  return $r
}

say "date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
say "python: $(python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1 | tail -1)"

step "pip install (CUDA)" "$out/pip_install.log" python3 -m pip install -v --no-build-isolation .
step "import" "$out/import.log" python3 -c 'import pagedattn, torch; print("built_with_cuda", pagedattn.built_with_cuda(), "cuda available", torch.cuda.is_available())'
cat "$out/import.log" >> "$summary"

# the tests run from $out so that the installed package (not python/ in the tree) is imported
tests=$(pwd)/tests/python/test_serving.py
(cd "$out" && step "serving tests, CUDA" "$out/pytest_serving_cuda.log" \
  python3 -m pytest "$tests" -v -rs -p no:cacheprovider -k cuda)
grep -E "^=+ .*(passed|failed|skipped|error)" "$out/pytest_serving_cuda.log" | tail -1 | tee -a "$summary"
(cd "$out" && step "serving tests, CPU backend" "$out/pytest_serving_cpu.log" \
  python3 -m pytest "$tests" -v -rs -p no:cacheprovider -k "not cuda")
grep -E "^=+ .*(passed|failed|skipped|error)" "$out/pytest_serving_cpu.log" | tail -1 | tee -a "$summary"

model=${PAGEDATTN_SERVING_MODEL:-llama-1b}
dtype=${PAGEDATTN_SERVING_DTYPE:-bfloat16}
bench_args=${PAGEDATTN_SERVING_BENCH_ARGS:---num-requests 64 --prompt-len 128:512 --output-len 64:256 --max-num-seqs 64 --max-num-batched-tokens 2048 --system-prompt-len 512}
# shellcheck disable=SC2086
(cd "$out" && step "bench $model $dtype (cuda)" "$out/bench_${model}_${dtype}.log" \
  python3 -m pagedattn.serving --model "$model" --device cuda --dtype "$dtype" --bench $bench_args \
  --json "$out/bench_${model}_${dtype}.json")
(cd "$out" && step "bench llama-tiny float32 (cuda)" "$out/bench_llama-tiny_float32_cuda.log" \
  python3 -m pagedattn.serving --model llama-tiny --device cuda --bench --num-requests 32 --prompt-len 16:128 \
  --output-len 16:128 --system-prompt-len 128 --json "$out/bench_llama-tiny_float32_cuda.json")
(cd "$out" && step "check gemma2-tiny float32 (cuda)" "$out/check_gemma2_float32.log" \
  python3 -m pagedattn.serving --model gemma2-tiny --device cuda --dtype float32 --check --n 2 --shared-prefix 32)
say "done; logs and JSON in $out"
