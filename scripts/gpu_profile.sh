#!/usr/bin/env bash
# Source-level profile of the attention kernels on the GPU machine: Nsight Compute (full section
# set, warp-stall sampling) on one launch of each case of PROFILE_CASES, from a pagedattn-bench
# built with -lineinfo (e.g. -DCMAKE_CUDA_FLAGS=-lineinfo and a trimmed matrix; docs/build.md).
# Writes per case: the report (.ncu-rep), the details page (.txt) and the SASS source page with
# its per-instruction counters and stall samples (.sass.csv; read it with
# scripts/profile_top.py); the pages of all cases also go into OUT_DIR/pages.tgz (the device tool
# brings back a limited number of files).
#   scripts/gpu_profile.sh BENCH_BIN OUT_DIR
# PROFILE_CASES: file of bench argument lines (default bench/ab/profile.txt); PROFILE_KERNEL: the
# kernel-name regex (default the bulk kernel); PROFILE_SKIP: launches skipped first (warm-up).
set -uo pipefail
bench=${1:?usage: scripts/gpu_profile.sh BENCH_BIN OUT_DIR}; out=${2:?}
root=$(cd "$(dirname "$0")/.." && pwd)
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
[ -n "$ncu" ] || { echo "gpu_profile.sh: no ncu on this machine" >&2; exit 1; }
mkdir -p "$out"
n=0; rc=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  n=$((n + 1))
  rep="$out/prof$n"
  # shellcheck disable=SC2086
  timeout ${PROFILE_TIMEOUT:-180} "$ncu" --clock-control none --set full --import-source yes \
    -k "regex:${PROFILE_KERNEL:-paged_attention_bulk}" --launch-skip "${PROFILE_SKIP:-2}" --launch-count 1 \
    -f -o "$rep" "$bench" --backend cuda --algo auto --timing eager --warmup 1 --iters 2 --no-check $line \
    > "$rep.run.log" 2>&1 || rc=1
  "$ncu" -i "$rep.ncu-rep" --page details > "$rep.txt" 2>&1 || rc=1
  "$ncu" -i "$rep.ncu-rep" --page source --csv --print-source sass > "$rep.sass.csv" 2>&1 || rc=1
  echo "profile $n (rc $rc): $line -> $(grep -m1 -E 'Duration' "$rep.txt" | tr -s ' ')"
done < "${PROFILE_CASES:-$root/bench/ab/profile.txt}"
(cd "$out" && tar czf pages.tgz prof*.txt prof*.sass.csv) || rc=1
exit $rc
