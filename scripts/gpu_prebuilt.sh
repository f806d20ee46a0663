#!/usr/bin/env bash
# GPU verification from binaries built on the Debian machine (nvcc there, static cudart), for
# when device time is short: no build on the GPU machine. BIN_DIR holds xz-compressed
# executables (the device tool carries at most 64 MiB; python3's lzma unpacks them there):
#   cuda_tests.xz  tests/cuda/pagedattn_cuda_tests of a full build
#   bench_a.xz / bench_b.xz  (optional) two pagedattn-bench builds to A/B on AB_CASES (bench_b:
#                 bench.xz's binary when absent)
#   bench.xz      (optional) pagedattn-bench: every registry kernel forced on KERNEL_CASES
#                 (scripts/gpu_kernels.sh; default bench/ab/kernels.txt)
#   cuda_tests_nocode.xz  (optional) the GPU tests of a build without code for this GPU (e.g.
#                 -DCMAKE_CUDA_ARCHITECTURES=80-real): its clear-error test is run
#   cuda_tests_ptx*.xz  (optional) the GPU tests of builds that embed only older PTX (e.g.
#                 -DCMAKE_CUDA_ARCHITECTURES=80-virtual): the driver JIT-compiles it, so the
#                 older architectures' code paths run on this card; whole suite + memcheck each
#   bench_ptx*.xz (optional) pagedattn-bench of such a build: the quick sweep (PTX_SWEEP)
#   *.so.*        shared libraries the binaries link that the GPU machine lacks (libhwy.so.1)
#   *.whl         (optional) a wheel (scripts/build_wheel.sh) for this machine's python3: installed
#                 into a fresh directory (pip --target; numpy/pytest/torch from the machine's python),
#                 then the Python suite runs against it from outside the tree (WHEEL_PYTEST_ARGS: extra
#                 pytest arguments)
# Steps (env): SWEEPS names bench sweeps to run (auto/V1/V2 rows, --no-check, JSON + CSV;
# SWEEP_ARGS adds bench options, e.g. "--algo auto,v1,v2 --timing graph --iters 10
# --graph-iters 10 --warmup 5": the issue-3 sweep then takes ~30 s on the H200);
# SMOKE_FILTER runs first (a quick gtest filter: stops a hung kernel early),
# SKIP_SUITE=1 skips the full suite, PAGEDATTN_SANITIZER_TOOLS (default memcheck) on SAN_FILTER,
# racecheck on RACE_FILTER, PDL on/off on PDL_CASES, V1/V2/auto on ALGO_CASES (case files).
#
#   scripts/gpu_prebuilt.sh BIN_DIR OUT_DIR
# Prepare: scripts/gpu_pack.sh BIN_DIR cuda_tests=BUILD/tests/cuda/pagedattn_cuda_tests ... (strips,
# compresses, adds libhwy, checks the device tool's 64 MiB).
set -uo pipefail
bin=${1:?usage: scripts/gpu_prebuilt.sh BIN_DIR OUT_DIR}; out=${2:?}
root=$(cd "$(dirname "$0")/.." && pwd)
# a fresh directory: a machine kept warm between calls still holds the previous call's binaries
rm -rf /tmp/prebuilt; mkdir -p "$out" /tmp/prebuilt
# shared libraries the binaries need that the GPU machine may lack (libhwy.so.1: the CPU
# backend's Highway, Debian ships it shared only) travel in BIN_DIR as *.so.*
ls "$bin"/*.so.* > /dev/null 2>&1 && export LD_LIBRARY_PATH="$(cd "$bin" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for f in "$bin"/*.xz; do
  [ -f "$f" ] || continue
  n=$(basename "$f" .xz)
  python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$f" /tmp/prebuilt/$n && chmod +x /tmp/prebuilt/$n
done
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/summary.txt"
rc=0
if [ -n "${SMOKE_FILTER:-}" ]; then
  t0=$(date +%s)
  timeout ${SMOKE_TIMEOUT:-120} /tmp/prebuilt/cuda_tests --gtest_filter="$SMOKE_FILTER" > "$out/smoke.log" 2>&1 || rc=1
  echo "smoke ($(( $(date +%s) - t0 )) s, rc=$rc): $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$out/smoke.log" | tr '\n' ' ')" | tee -a "$out/summary.txt"
  grep -E '^\[  FAILED  \]' "$out/smoke.log" | head -10 | tee -a "$out/summary.txt"
fi
if [ -x /tmp/prebuilt/bench ]; then
  KCASES=${KERNEL_CASES:-$root/bench/ab/kernels.txt}
  CASES=$KCASES "$root/scripts/gpu_kernels.sh" /tmp/prebuilt/bench "$out/kernels.txt" ${KERNELS:-} > /dev/null 2>&1
  cat "$out/kernels.txt"
fi
t0=$(date +%s)
[ "${SKIP_SUITE:-0}" = 1 ] || timeout ${TESTS_TIMEOUT:-600} /tmp/prebuilt/cuda_tests --gtest_output=xml:"$out/cuda_tests.xml" > "$out/cuda_tests.log" 2>&1 || rc=1
echo "CUDA tests ($(( $(date +%s) - t0 )) s): $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]|^\[  SKIPPED \] [0-9]' "$out/cuda_tests.log" | tr '\n' ' ')" | tee -a "$out/summary.txt"
grep -E '^\[  FAILED  \]' "$out/cuda_tests.log" | head -20 | tee -a "$out/summary.txt"
f=${SAN_FILTER:-'All/DispatchMatrix.MatchesReference/f16_auto_bs16_d128_*:All/DispatchMatrix.MatchesReference/bf16_e4m3_bs8_d120_*:All/DispatchMatrix.MatchesReference/f32_e5m2_bs32_d80_dense:Gqa/Groups.*/6:All/Variants.MatchReference/bf16_e4m3_all:All/Variants.MatchReference/f16_auto_multitoken:All/Variants.MatchReference/f32_e5m2_window:CudaVariants.*:All/CudaReshapeAndCache.PerHead*:CudaCheckedMode.*'}
for tool in ${PAGEDATTN_SANITIZER_TOOLS-memcheck}; do
  timeout ${SAN_TIMEOUT:-600} compute-sanitizer --tool $tool --error-exitcode 99 /tmp/prebuilt/cuda_tests --gtest_filter="$f" > "$out/sanitizer_$tool.log" 2>&1 || rc=1
  echo "compute-sanitizer $tool: $(grep -E 'ERROR SUMMARY|HAZARD|^\[  PASSED  \]|^\[  FAILED  \]' "$out/sanitizer_$tool.log" | tr '\n' ' ')" | tee -a "$out/summary.txt"
done
# bench_b defaults to bench.xz's binary (this tree) when only bench_a (an earlier tree) is given
[ -x /tmp/prebuilt/bench_a ] && [ ! -x /tmp/prebuilt/bench_b ] && [ -x /tmp/prebuilt/bench ] && ln -s /tmp/prebuilt/bench /tmp/prebuilt/bench_b
if [ -x /tmp/prebuilt/bench_a ] && [ -x /tmp/prebuilt/bench_b ]; then
  n=0
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    n=$((n + 1))
    for v in a b; do
      echo "=== case $n, $v: $line"
      # shellcheck disable=SC2086
      timeout 30 /tmp/prebuilt/bench_$v --backend cuda $line 2>/dev/null | grep -E "^ +[0-9]+ +[a-z]|copy bandwidth"
    done
  done < "${AB_CASES:-$root/bench/ab/final.txt}" > "$out/ab.txt"
  grep -E "^===|^ +[0-9]" "$out/ab.txt"
fi
# racecheck on its own (slow) filter
if [ -n "${RACE_FILTER:-}" ]; then
  timeout ${RACE_TIMEOUT:-200} compute-sanitizer --tool racecheck --error-exitcode 99 /tmp/prebuilt/cuda_tests --gtest_filter="$RACE_FILTER" > "$out/sanitizer_racecheck.log" 2>&1 || rc=1
  echo "compute-sanitizer racecheck: $(grep -E 'ERROR SUMMARY|HAZARD|RACECHECK SUMMARY|^\[  PASSED  \]|^\[  FAILED  \]' "$out/sanitizer_racecheck.log" | sort | uniq -c | tr '\n' ' ')" | tee -a "$out/summary.txt"
fi
# programmatic dependent launch on/off (PAGEDATTN_PDL=0) on PDL_CASES, auto, graph timing
if [ -x /tmp/prebuilt/bench ] && [ -n "${PDL_CASES:-}" ]; then
  for pdl in 1 0; do
    grep -v '^#' "$PDL_CASES" | while read -r line; do
      [ -z "$line" ] && continue
      echo "PDL=$pdl $line"
      # shellcheck disable=SC2086
      PAGEDATTN_PDL=$pdl timeout 30 /tmp/prebuilt/bench --backend cuda --algo auto --timing graph --iters 10 --graph-iters 10 --no-check $line 2>&1 | grep -E "^ +[0-9]+ +auto"
    done
  done > "$out/pdl.txt"
  cat "$out/pdl.txt"
fi
# V1 / V2 / auto / vLLM's rule side by side on ALGO_CASES (graph timing)
if [ -x /tmp/prebuilt/bench ] && [ -n "${ALGO_CASES:-}" ]; then
  grep -v '^#' "$ALGO_CASES" | while read -r line; do
    [ -z "$line" ] && continue
    echo "=== $line"
    # shellcheck disable=SC2086
    timeout 60 /tmp/prebuilt/bench --backend cuda --algo all --timing graph --iters 10 --graph-iters 10 --no-check $line 2>&1 | grep -E "^ +[0-9]+ +[a-z]"
  done > "$out/algos.txt"
  cat "$out/algos.txt"
fi
# a build without code for this GPU (cuda_tests_nocode.xz, e.g. sm_80 SASS only): the clear error
if [ -x /tmp/prebuilt/cuda_tests_nocode ]; then
  PAGEDATTN_EXPECT_NO_CODE=1 timeout 60 /tmp/prebuilt/cuda_tests_nocode --gtest_filter=CudaAttention.NoCodeForThisGpuIsAClearError > "$out/nocode.log" 2>&1 || rc=1
  echo "no-code build: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]|^\[  SKIPPED \] [0-9]' "$out/nocode.log" | tr '\n' ' ')" | tee -a "$out/summary.txt"
fi
# builds that embed only older PTX: the whole suite (in PTX_SHARDS gtest shards run side by side,
# so the driver's JIT compilation spreads over the cores; the JIT cache is shared) and memcheck
# (PTX_SAN_FILTER, default SAN_FILTER)
export CUDA_CACHE_MAXSIZE=4294967296
for t in /tmp/prebuilt/cuda_tests_ptx*; do
  [ -x "$t" ] || continue
  n=$(basename "$t"); shards=${PTX_SHARDS:-8}
  t0=$(date +%s)
  for i in $(seq 0 $((shards - 1))); do
    GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i timeout ${TESTS_TIMEOUT:-600} "$t" > "$out/$n.shard$i.log" 2>&1 &
  done
  wait
  cat "$out/$n".shard*.log > "$out/$n.log"; rm -f "$out/$n".shard*.log
  passed=$(grep -E '^\[  PASSED  \] [0-9]+' "$out/$n.log" | awk '{s += $4} END {print s + 0}')
  failed=$(grep -E '^\[  FAILED  \] [A-Za-z]' "$out/$n.log" | sed 's/ (.*//' | sort -u | wc -l)
  skipped=$(grep -E '^\[  SKIPPED \] [0-9]+ test' "$out/$n.log" | awk '{s += $4} END {print s + 0}')
  shards_done=$(grep -cE '^\[==========\] [0-9]+ tests? from .* ran' "$out/$n.log")
  [ "$failed" = 0 ] && [ "$shards_done" = "$shards" ] || rc=1
  echo "$n suite ($(( $(date +%s) - t0 )) s, $shards shards, $shards_done finished): $passed passed, $skipped skipped, $failed failed" | tee -a "$out/summary.txt"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$out/$n.log" | sort -u | head -20 | tee -a "$out/summary.txt"
  timeout ${SAN_TIMEOUT:-600} compute-sanitizer --tool memcheck --error-exitcode 99 "$t" --gtest_filter="${PTX_SAN_FILTER:-$f}" > "$out/${n}_memcheck.log" 2>&1 || rc=1
  echo "$n memcheck: $(grep -E 'ERROR SUMMARY|^\[  PASSED  \]|^\[  FAILED  \]' "$out/${n}_memcheck.log" | tr '\n' ' ')" | tee -a "$out/summary.txt"
done
# benches of builds that embed only older PTX (bench_ptx*.xz): the quick sweep, JIT-compiled on
# this card (speeds of that architecture's code on this card, not of that architecture's GPUs)
for t in /tmp/prebuilt/bench_ptx*; do
  [ -x "$t" ] || continue
  n=$(basename "$t"); t0=$(date +%s)
  timeout ${SWEEP_TIMEOUT:-300} "$t" --backend cuda --sweep "${PTX_SWEEP:-quick}" --no-check --csv "$out/$n.csv" > "$out/$n.log" 2>&1 || rc=1
  echo "$n sweep ${PTX_SWEEP:-quick}: $(( $(date +%s) - t0 )) s, $(grep -c . "$out/$n.csv" 2>/dev/null) csv lines" | tee -a "$out/summary.txt"
done
# named bench sweeps (correctness is the suite's job: --no-check)
for sw in ${SWEEPS:-}; do
  [ -x /tmp/prebuilt/bench ] || break
  t0=$(date +%s)
  # shellcheck disable=SC2086
  timeout ${SWEEP_TIMEOUT:-300} /tmp/prebuilt/bench --backend cuda --sweep "$sw" --no-check ${SWEEP_ARGS:-} --json "$out/sweep-$sw.json" --csv "$out/sweep-$sw.csv" > "$out/sweep-$sw.log" 2>&1 || rc=1
  echo "sweep $sw: $(( $(date +%s) - t0 )) s, $(grep -c . "$out/sweep-$sw.csv" 2>/dev/null) csv lines" | tee -a "$out/summary.txt"
done
# a wheel, installed into a fresh environment and tested from outside the tree
for w in "$bin"/*.whl; do
  [ -f "$w" ] || continue
  # a fresh install location on the machine's python3 (its numpy/pytest/torch come from its own
  # site-packages; the package only from the wheel)
  site=/tmp/wheel-site; rm -rf "$site"
  python3 -m pip install -q --no-deps --no-index --target "$site" "$w" > "$out/wheel_install.log" 2>&1 || rc=1
  # the tests (and their data) outside the tree, so python/ of the tree is not on the path
  rm -rf /tmp/wheel-tests && mkdir -p /tmp/wheel-tests/python && cp -r "$root/tests" /tmp/wheel-tests/ && \
    cp -r "$root/python/tools" /tmp/wheel-tests/python/  # a test runs the repo's overhead tool
  (cd /tmp/wheel-tests && PYTHONPATH="$site" python3 -c 'import pagedattn; print(pagedattn.__file__, pagedattn.build_info())' && \
    PYTHONPATH="$site" python3 -m pytest tests/python -q -rs -p no:cacheprovider ${WHEEL_PYTEST_ARGS:-}) > "$out/wheel_pytest.log" 2>&1 || rc=1
  echo "wheel $(basename "$w"): $(head -1 "$out/wheel_pytest.log" | cut -c1-300) | $(tail -1 "$out/wheel_pytest.log")" | tee -a "$out/summary.txt"
done
echo "overall rc=$rc" | tee -a "$out/summary.txt"
exit $rc
