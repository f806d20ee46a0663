#!/usr/bin/env bash
# Builds everything and runs every test: the C++ suites through CTest (GPU tests skip,
# counted as skipped, where there is no GPU), the find_package consumer test, then the
# Python package (pip install .) and its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_deps.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"
# The Python module: with CUDA where a GPU can run it, CPU-only elsewhere (CI), so the
# kernels are not compiled a second time on a machine that cannot run them.
if ! nvidia-smi -L >/dev/null 2>&1; then export PAGEDATTN_ENABLE_CUDA=OFF; fi
python3 -m pip install -q --no-build-isolation .
(cd build && python3 -m pytest ../tests/python -v -rs -p no:cacheprovider)
