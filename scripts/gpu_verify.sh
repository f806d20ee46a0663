#!/usr/bin/env bash
# Builds everything on a GPU machine and runs the whole GPU verification in one go:
# configure + build (timed), CPU and GPU test suites, compute-sanitizer memcheck and
# racecheck on a representative subset, and (optionally) a benchmark sweep.
#
#   scripts/gpu_verify.sh OUT_DIR [--bench SWEEP] [--skip-tests] [--skip-sanitizer] [--filter GTEST_FILTER] [--python]
#
# --python also builds the Python package with CUDA (pip install, no build isolation: the
# device image has nanobind and scikit-build-core) and runs the pytest suite.
#
# Logs, gtest XML and benchmark JSON/CSV land in OUT_DIR; a summary is printed last.
# Extra header-only dependencies (CLI11, nlohmann-json) are taken from .devdeps/usr when
# present (the device machine has no package registry). Extra CMake arguments: the
# environment variable PAGEDATTN_CMAKE_ARGS; extra benchmark arguments (e.g. --no-check):
# PAGEDATTN_BENCH_ARGS; compute-sanitizer tools run (default "memcheck racecheck"):
# PAGEDATTN_SANITIZER_TOOLS.
set -uo pipefail
out=${1:?usage: scripts/gpu_verify.sh OUT_DIR [--bench SWEEP] [--skip-tests] [--skip-sanitizer]}
shift
bench=""; skip_tests=0; skip_san=0; filter="*"; python=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) bench=$2; shift 2 ;;
    --skip-tests) skip_tests=1; shift ;;
    --skip-sanitizer) skip_san=1; shift ;;
    --filter) filter=$2; shift 2 ;;
    --python) python=1; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
done
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
build=${PAGEDATTN_GPU_BUILD_DIR:-$root/build-gpu}
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader > "$out/gpu.txt" 2>&1
say "GPU: $(cat "$out/gpu.txt")"

prefix=""
[ -d "$root/.devdeps/usr" ] && prefix="-DCMAKE_PREFIX_PATH=$root/.devdeps/usr"
t0=$(date +%s)
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release $prefix ${PAGEDATTN_CMAKE_ARGS:-} > "$out/configure.log" 2>&1 || { say "configure FAILED"; tail -30 "$out/configure.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" > "$out/build.log" 2>&1 || { say "build FAILED"; grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
t1=$(date +%s)
say "build: $((t1 - t0)) s on $(nproc) cores; libpagedattn.a $(du -h "$build/src/libpagedattn.a" | cut -f1)"
grep -c "spill" "$out/build.log" > /dev/null && grep -B1 "bytes spill stores" "$out/build.log" | grep -v " 0 bytes spill stores" | head -5 >> "$out/spills.txt"

rc=0
if [ $skip_tests -eq 0 ]; then
  "$build/tests/pagedattn_tests" --gtest_output=xml:"$out/cpu_tests.xml" > "$out/cpu_tests.log" 2>&1; r=$?
  say "CPU tests: rc=$r $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]|^\[  SKIPPED \] [0-9]' "$out/cpu_tests.log" | tr '\n' ' ')"
  [ $r -ne 0 ] && rc=1
  t2=$(date +%s)
  "$build/tests/cuda/pagedattn_cuda_tests" --gtest_filter="$filter" --gtest_output=xml:"$out/cuda_tests.xml" > "$out/cuda_tests.log" 2>&1; r=$?
  t3=$(date +%s)
  say "CUDA tests ($((t3 - t2)) s): rc=$r $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]|^\[  SKIPPED \] [0-9]' "$out/cuda_tests.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \]' "$out/cuda_tests.log" | head -20 | tee -a "$summary"
  [ $r -ne 0 ] && rc=1
fi

if [ $skip_san -eq 0 ]; then
  san_filter='All/DispatchMatrix.MatchesReference/f16_auto_bs16_d128_*:All/DispatchMatrix.MatchesReference/bf16_e4m3_bs8_d120_*:All/DispatchMatrix.MatchesReference/f32_e5m2_bs32_d80_*:All/DispatchMatrix.MatchesReference/f16_e5m2_bs8_d256_sparse:Gqa/Groups.*/6:Edges/Lengths.*/6:CudaCheckedMode.*:CudaCacheOps.*:All/CudaReshapeAndCache.*:CudaAttention.AllEmptySequences:CudaAttention.MixedLengthsBatch:All/Variants.MatchReference/bf16_e4m3_all:All/Variants.MatchReference/f16_auto_multitoken:All/Variants.MatchReference/f32_e5m2_window:All/Variants.MatchReference/f16_e4m3_headscales:CudaVariants.*'
  for tool in ${PAGEDATTN_SANITIZER_TOOLS:-memcheck racecheck}; do
    f=$san_filter
    [ $tool = racecheck ] && f='All/DispatchMatrix.MatchesReference/f16_auto_bs16_d128_*:All/DispatchMatrix.MatchesReference/bf16_e4m3_bs8_d120_sparse:Gqa/Groups.*/3:CudaAttention.MixedLengthsBatch:All/Variants.MatchReference/bf16_e4m3_all:CudaVariants.Merge*'
    compute-sanitizer --tool $tool --error-exitcode 99 "$build/tests/cuda/pagedattn_cuda_tests" --gtest_filter="$f" > "$out/sanitizer_$tool.log" 2>&1; r=$?
    say "compute-sanitizer $tool: rc=$r $(grep -E 'ERROR SUMMARY|^\[  PASSED  \]|^\[  FAILED  \]' "$out/sanitizer_$tool.log" | tr '\n' ' ')"
    [ $r -ne 0 ] && rc=1
  done
fi

if [ -n "$bench" ] && [ -x "$build/tools/pagedattn-bench" ]; then
  # shellcheck disable=SC2086
  "$build/tools/pagedattn-bench" --backend cuda --sweep "$bench" ${PAGEDATTN_BENCH_ARGS:-} --json "$out/bench_$bench.json" --csv "$out/bench_$bench.csv" > "$out/bench_$bench.log" 2>&1; r=$?
  say "bench $bench: rc=$r"
  tail -60 "$out/bench_$bench.log"
fi
if [ $python -eq 1 ]; then
  (cd "$root" && python3 -m pip install --no-build-isolation --no-deps -v . > "$out/pip_install.log" 2>&1) || { say "pip install FAILED"; tail -30 "$out/pip_install.log"; rc=1; }
  (cd /tmp && PYTHONUNBUFFERED=1 python3 -X faulthandler -m pytest "$root/tests/python" -v -rs -p no:cacheprovider > "$out/pytest.log" 2>&1); r=$?
  say "pytest: rc=$r $(tail -1 "$out/pytest.log")"
  [ $r -ne 0 ] && { grep -E "FAILED|Error|Fatal|File \"" "$out/pytest.log" | head -30; tail -5 "$out/pytest.log"; rc=1; }
  (cd /tmp && python3 "$root/python/tools/overhead.py" > "$out/overhead.log" 2>&1) && tail -12 "$out/overhead.log" | tee -a "$summary"
fi
say "overall rc=$rc"
# the device tool brings back at most 8 files: pack the logs, keep summary and benchmark data
(cd "$out" && find . -maxdepth 1 -type f ! -name summary.txt ! -name 'bench_*.json' ! -name 'bench_*.csv' -printf '%f\n' > /tmp/pagedattn_logs.txt \
  && tar czf /tmp/pagedattn_logs.tgz -T /tmp/pagedattn_logs.txt; xargs rm -f < /tmp/pagedattn_logs.txt; mv /tmp/pagedattn_logs.tgz logs.tgz)
exit $rc
