#!/usr/bin/env bash
# Compares the kernel registry's kernels on one card: each case of CASES (default
# bench/ab/kernels.txt) is timed (CUDA graph) with the auto rule and with each kernel forced,
# on the entry point the case names (--algo v1/v2; the auto path otherwise).
#   scripts/gpu_kernels.sh BENCH_BIN OUT_FILE [KERNELS...]
# Prints one line per (case, kernel): median us, GB/s, % of copy.
set -uo pipefail
bench=${1:?usage: scripts/gpu_kernels.sh BENCH_BIN OUT_FILE [KERNELS...]}; out=${2:?}; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
kernels=("$@")
[ ${#kernels[@]} -eq 0 ] && kernels=(auto cuda_core_r4 tensor_core_r8 hopper_bulk_r8)
n=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  n=$((n + 1))
  for k in "${kernels[@]}"; do
    pin=(); [ "$k" != auto ] && pin=(--kernel "$k")
    # a case may name its entry point (--algo v1|v2|auto; auto when it does not)
    algo=$(sed -nE 's/.*--algo ([a-z0-9]+).*/\1/p' <<< "$line"); algo_arg=()
    [ -z "$algo" ] && { algo=auto; algo_arg=(--algo auto); }
    log="$out.case$n.$k.log"
    # shellcheck disable=SC2086
    timeout 60 "$bench" --backend cuda "${algo_arg[@]}" --timing graph --iters 10 --graph-iters 10 --no-check $line "${pin[@]}" > "$log" 2>&1
    rc=$?
    # columns of a result row: ... median_us min_us max_us GB/s %copy check notes
    res=$(grep -E "^ +[0-9]+ +$algo +graph" "$log" | head -1 | awk '{print $12 " us", $15 " GB/s", $16 "%"}')
    printf "case %2d %-16s %s (rc %d) | %s\n" "$n" "$k" "${res:-no result}" "$rc" "$line"
    if [ -z "$res" ] || grep -q "error:" "$log"; then tail -5 "$log" | sed 's/^/    /'; fi
  done
done < "${CASES:-$root/bench/ab/kernels.txt}" | tee "$out"
