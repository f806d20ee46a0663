#!/usr/bin/env bash
# Times the CPU backend of one or more bench binaries side by side, interleaved (case by case,
# binary after binary) so that a change in the machine's load hits every binary alike.
#   scripts/cpu_ab.sh OUT_FILE BENCH_BIN [BENCH_BIN...]
# Env: CASES (default bench/ab/cpu.txt), ROUNDS (1), THREADS (2), ITERS (5).
# Prints one line per (round, case, binary): GB/s of the median call and the bench's own
# %read / %gather figures (walls measured in the same run).
set -uo pipefail
out=${1:?usage: scripts/cpu_ab.sh OUT_FILE BENCH_BIN [BENCH_BIN...]}; shift
[ $# -ge 1 ] || { echo "scripts/cpu_ab.sh: name at least one bench binary" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
: > "$out"
for r in $(seq 1 "${ROUNDS:-1}"); do
  n=0
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    n=$((n + 1)); b=0
    for bin in "$@"; do
      b=$((b + 1))
      # shellcheck disable=SC2086
      res=$(OMP_NUM_THREADS=${THREADS:-2} timeout 300 "$bin" --backend cpu --algo auto \
              --iters "${ITERS:-5}" $line 2>&1 | grep -E '^ +[0-9]+ +auto ' | head -1 |
            awk '{print $15 " GB/s", $19, $20, "check", $17}')
      printf "round %d case %2d bin %d %s | %s\n" "$r" "$n" "$b" "${res:-no result}" "$line"
    done
  done < "${CASES:-$root/bench/ab/cpu.txt}"
done | tee "$out"
