#!/usr/bin/env bash
# A/B timing on a GPU machine: builds pagedattn-bench twice with different CMake switches
# (trimmed kernel lists for speed) and runs the same benchmark arguments on both, in one
# call on one card, so the two columns are comparable.
#
#   scripts/gpu_ab.sh OUT_DIR "CMAKE_ARGS_A" "CMAKE_ARGS_B" BENCH_ARGS...
#   e.g. scripts/gpu_ab.sh $OUT "" "-DPAGEDATTN_MAX_HEADS_PER_CTA=4" --heads 64/8 --batch 8 --seq-len 4k,16k --algo auto
#   BENCH_ARGS may also be "@FILE": one set of benchmark arguments per line of FILE
#   (blank lines and lines starting with # are skipped), each run on A then B.
#   AB_SRC_A / AB_SRC_B: source trees of A and B (default: this checkout), e.g. an export of
#   an earlier commit (git archive REV | tar -x -C DIR) to time a change against it.
set -uo pipefail
out=$1; a=$2; b=$3; shift 3
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
trim="-DPAGEDATTN_HEAD_SIZES=${AB_HEAD_SIZES:-128} -DPAGEDATTN_DTYPES=${AB_DTYPES:-float16;bfloat16} -DPAGEDATTN_CACHE_DTYPES=${AB_CACHE_DTYPES:-auto;fp8_e4m3}"
prefix=""; [ -d "$root/.devdeps/usr" ] && prefix="-DCMAKE_PREFIX_PATH=$root/.devdeps/usr"
for v in A B; do
  args=$a; [ $v = B ] && args=$b
  dir=/tmp/pagedattn_ab_$v
  src=$root; [ $v = A ] && src=${AB_SRC_A:-$root}; [ $v = B ] && src=${AB_SRC_B:-$root}
  cmake -S "$src" -B $dir -G Ninja -DCMAKE_BUILD_TYPE=Release -DPAGEDATTN_BUILD_TESTS=OFF $prefix $trim $args > "$out/configure_$v.log" 2>&1 \
    && cmake --build $dir -j"$(nproc)" --target pagedattn-bench > "$out/build_$v.log" 2>&1 || { echo "build $v failed"; tail -20 "$out/build_$v.log"; exit 1; }
done
run_case() {  # $1 = case number, rest = bench arguments
  local n=$1; shift
  for v in A B; do
    echo "=== case $n, $v: $( [ $v = A ] && echo "$a" || echo "$b" ): $*"
    /tmp/pagedattn_ab_$v/tools/pagedattn-bench --backend cuda --json "$out/ab_${v}_$n.json" "$@" 2>/dev/null |
      grep -E "^ +[0-9]+ +[a-z]|copy bandwidth"
  done
}
if [ $# -eq 1 ] && [ "${1#@}" != "$1" ]; then
  n=0
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    n=$((n + 1))
    # shellcheck disable=SC2086
    run_case $n $line
  done < "${1#@}"
else
  run_case 1 "$@"
fi
