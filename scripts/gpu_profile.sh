#!/usr/bin/env bash
# Nsight Compute on a GPU machine: builds pagedattn-bench (trimmed kernel list, extra CMake
# arguments from $1) and profiles the first attention kernel launch of one benchmark case.
#
#   scripts/gpu_profile.sh OUT_DIR "CMAKE_ARGS" BENCH_ARGS...
#   e.g. scripts/gpu_profile.sh $OUT "-DPAGEDATTN_TENSOR_CORES=ON" --heads 32/8 --batch 64 --seq-len 4k
#
# Clocks are left alone (--clock-control none); the report keeps the throughput, occupancy,
# warp-stall and memory sections (full text in OUT_DIR/ncu.txt).
set -uo pipefail
out=$1; args=$2; shift 2
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
dir=/tmp/pagedattn_profile_$(echo "$args" | md5sum | cut -c1-8)  # one build per set of CMake arguments
prefix=""; [ -d "$root/.devdeps/usr" ] && prefix="-DCMAKE_PREFIX_PATH=$root/.devdeps/usr"
trim="-DPAGEDATTN_HEAD_SIZES=${AB_HEAD_SIZES:-128} -DPAGEDATTN_DTYPES=${AB_DTYPES:-float16} -DPAGEDATTN_CACHE_DTYPES=${AB_CACHE_DTYPES:-auto;fp8_e4m3}"
# shellcheck disable=SC2086
cmake -S "$root" -B $dir -G Ninja -DCMAKE_BUILD_TYPE=Release -DPAGEDATTN_BUILD_TESTS=OFF $prefix $trim $args > "$out/configure.log" 2>&1 &&
  cmake --build $dir -j"$(nproc)" --target pagedattn-bench > "$out/build.log" 2>&1 || { echo "build failed"; tail -20 "$out/build.log"; exit 1; }
ncu --clock-control none -k regex:"${NCU_KERNELS:-paged_attention}" -c "${NCU_COUNT:-1}" --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
  $dir/tools/pagedattn-bench --backend cuda --no-check --warmup 0 --iters 1 --rotate-mib 64 "$@" > "$out/ncu.txt" 2>&1
grep -E "L2 Fabric|lts__|Mem Busy|Max Bandwidth|Duration|Throughput|Registers Per|Shared Memory Config|Dynamic Shared|Achieved Occupancy|Theoretical Occupancy|Block Limit|Waves Per|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Active Warps Per|Eligible Warps|Hit Rate|Stall|----- " "$out/ncu.txt" | grep -v "^ *$" | head -70
