#!/usr/bin/env bash
# One device call that does a release's whole GPU round: scripts/gpu_verify.sh (build, CPU and
# CUDA suites, compute-sanitizer, issue-3 sweep, Python package), then the latency sweep and
# the cost of batch-invariant mode (each line of bench/ab/batch-invariant.txt with and
# without --batch-invariant). Results land in OUT_DIR.
#
#   scripts/gpu_full.sh OUT_DIR
set -uo pipefail
out=${1:?usage: scripts/gpu_full.sh OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
PAGEDATTN_BENCH_ARGS="--no-check" "$root/scripts/gpu_verify.sh" "$out" --bench issue3 --python > "$out/verify.out" 2>&1
cat "$out/summary.txt"
bench="${PAGEDATTN_GPU_BUILD_DIR:-$root/build-gpu}/tools/pagedattn-bench"
"$bench" --backend cuda --sweep latency --no-check --json "$out/bench_latency.json" --csv "$out/bench_latency.csv" > "$out/bench_latency.log" 2>&1
echo "latency sweep: rc=$?"
n=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  n=$((n + 1))
  for mode in default invariant; do
    extra=""; [ $mode = invariant ] && extra="--batch-invariant"
    # shellcheck disable=SC2086
    "$bench" --backend cuda $line $extra --json "$out/bi_${mode}_$n.json" 2>/dev/null | grep -E "^ +[0-9]+ +[a-z]" | sed "s/^/$mode /"
  done
done < "$root/bench/ab/batch-invariant.txt" | tee "$out/batch_invariant.txt"
# the device tool brings back a limited number of files: keep the results, pack the rest
tar czf /tmp/pagedattn_all.tgz -C "$out" . && mv /tmp/pagedattn_all.tgz "$out/all.tgz" &&
  find "$out" -type f ! -name all.tgz ! -name summary.txt ! -name 'bench_*.json' ! -name 'bench_*.csv' \
    ! -name batch_invariant.txt -delete; true
