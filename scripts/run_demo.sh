#!/usr/bin/env bash
# The main job: builds pagedattn-bench and runs its default sweep (the CUDA backend when a
# GPU is present, else the CPU backend), checking every timed case against the float64
# reference. Extra arguments go to pagedattn-bench (e.g. --sweep issue3 --json out.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_deps.sh
# without a GPU the bench runs the CPU backend: build the kernels for sm_90 only (not the
# default list of every architecture, docs/build.md)
archs=()
if ! nvidia-smi -L >/dev/null 2>&1; then archs=(-DCMAKE_CUDA_ARCHITECTURES="${PAGEDATTN_CUDA_ARCHITECTURES:-90}"); fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${archs[@]}"
cmake --build build -j"$(nproc)" --target pagedattn-bench
build/tools/pagedattn-bench "$@"
