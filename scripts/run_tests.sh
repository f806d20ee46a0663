#!/usr/bin/env bash
# Builds everything and runs every test: the C++ suites through CTest (GPU tests skip,
# counted as skipped, where there is no GPU), the find_package consumer test, then the
# Python package (pip install .) and its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_deps.sh
jobs=$(nproc)
# Architectures: the GPU present ("native", CMake's default here) or, without a GPU (CI), the
# full kernel matrix for sm_90 only, then the library's reduced matrix (float16, auto + e4m3
# caches, head 128) for every architecture of the default list, as a compile check
# (docs/build.md). PAGEDATTN_CUDA_ARCHITECTURES overrides both.
archs=()
if ! nvidia-smi -L >/dev/null 2>&1; then archs=(-DCMAKE_CUDA_ARCHITECTURES="${PAGEDATTN_CUDA_ARCHITECTURES:-90}"); fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${archs[@]}"
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"
if [ ${#archs[@]} -gt 0 ] && [ -z "${PAGEDATTN_CUDA_ARCHITECTURES:-}" ] && command -v nvcc >/dev/null 2>&1; then
  cmake -S . -B build-archs -G Ninja -DCMAKE_BUILD_TYPE=Release -DPAGEDATTN_BUILD_TESTS=OFF -DPAGEDATTN_BUILD_TOOLS=OFF \
    -DPAGEDATTN_DTYPES=float16 "-DPAGEDATTN_CACHE_DTYPES=auto;fp8_e4m3" -DPAGEDATTN_HEAD_SIZES=128
  cmake --build build-archs -j"$jobs"
fi
# The Python module: with CUDA where a GPU can run it, CPU-only elsewhere (CI), so the
# kernels are not compiled a second time on a machine that cannot run them.
if ! nvidia-smi -L >/dev/null 2>&1; then export PAGEDATTN_ENABLE_CUDA=OFF; fi
python3 -m pip install -q --no-build-isolation .
(cd build && python3 -m pytest ../tests/python -v -rs -p no:cacheprovider)
