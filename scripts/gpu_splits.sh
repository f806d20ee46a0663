#!/usr/bin/env bash
# Times the auto path with its split count pinned (pagedattn-bench --splits N; 0 = the planner's
# plan) on each line of CASES ("N N ... | bench options"; default bench/ab/splits.txt), CUDA graph.
#   scripts/gpu_splits.sh BENCH_BIN OUT_FILE
# Prints one line per (case, splits): median us, % of copy, the kernel that ran.
set -uo pipefail
bench=${1:?usage: scripts/gpu_splits.sh BENCH_BIN OUT_FILE}; out=${2:?}
root=$(cd "$(dirname "$0")/.." && pwd)
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  counts=${line%%|*}; opts=${line#*|}
  for n in $counts; do
    # shellcheck disable=SC2086
    res=$(timeout 60 "$bench" --backend cuda --algo auto --timing graph --iters 10 --graph-iters 10 --no-check --quiet \
          --splits "$n" $opts 2>&1 | grep -E "^ +[0-9]+ +auto +graph" | head -1 | awk '{print $12 " us", $16 "%", $NF}')
    printf "splits %-3s %-28s |%s\n" "$n" "${res:-no result}" "$opts"
  done
done < "${CASES:-$root/bench/ab/splits.txt}" | tee "$out"
