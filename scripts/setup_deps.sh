#!/usr/bin/env bash
# Installs what building and testing pagedattn needs on a fresh Debian machine (idempotent):
# CMake, Ninja, GoogleTest, CLI11, nlohmann-json, Google Highway (libhwy-dev) from Debian; NumPy, pytest, nanobind and
# scikit-build-core from PyPI. The CUDA toolkit (nvcc) is expected to be present already.
set -euo pipefail
need_apt=()
dpkg -s libgtest-dev >/dev/null 2>&1 || need_apt+=(libgtest-dev)
dpkg -s libcli11-dev >/dev/null 2>&1 || need_apt+=(libcli11-dev)
dpkg -s nlohmann-json3-dev >/dev/null 2>&1 || need_apt+=(nlohmann-json3-dev)
dpkg -s libhwy-dev >/dev/null 2>&1 || need_apt+=(libhwy-dev)
command -v ninja >/dev/null 2>&1 || need_apt+=(ninja-build)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
python3 - <<'PY' || python3 -m pip install -q numpy pytest "nanobind>=2" "scikit-build-core>=0.10" matplotlib
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in ("numpy", "pytest", "nanobind", "scikit_build_core", "matplotlib")) else 1)
PY
