#!/usr/bin/env bash
# Builds pagedattn's wheel and repairs it into a manylinux wheel (docs/build.md, "Wheel"):
#   1. `pip wheel .` (scikit-build-core): the extension module with the CUDA backend when nvcc
#      is found, the CUDA runtime linked statically (the wheel needs the driver, nothing else of
#      CUDA), the architectures of PAGEDATTN_CUDA_ARCHITECTURES (default: CMakeLists.txt's list);
#   2. `auditwheel repair`: the manylinux tag the module's symbol versions allow, libgomp vendored;
#   3. a report: wheel and module sizes, the device code per architecture (cuobjdump), and,
#      when PAGEDATTN_NVCC_TIME=1, the compile time per architecture (nvcc --time).
#
#   scripts/build_wheel.sh OUT_DIR [extra pip arguments, e.g. -C cmake.define.PAGEDATTN_HEAD_SIZES=128]
#
# Environment: PYTHON (the interpreter the wheel is for; default python3), BUILD_DIR (default
# build/wheel-<arch list>), CUOBJDUMP (default: cuobjdump on PATH).
set -euo pipefail
out=${1:?usage: scripts/build_wheel.sh OUT_DIR [pip arguments...]}; shift
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
archs=${PAGEDATTN_CUDA_ARCHITECTURES:-}
tag=$(echo "${archs:-default}" | tr ';' '_' | tr -cd '[:alnum:]_-')
bdir=${BUILD_DIR:-$root/build/wheel-$tag}
extra=()
if [ "${PAGEDATTN_NVCC_TIME:-0}" = 1 ]; then
  rm -f "$out/nvcc-time.csv"
  extra+=(-C "cmake.define.CMAKE_CUDA_FLAGS=--time=$out/nvcc-time.csv")
fi
rm -rf "$out/raw" "$out/wheelhouse"
t0=$(date +%s)
(cd "$root" && "$py" -m pip wheel . --no-deps --no-build-isolation -w "$out/raw" -C "build-dir=$bdir" "${extra[@]}" "$@")
echo "pip wheel: $(( $(date +%s) - t0 )) s (architectures: ${archs:-the default list})" | tee "$out/wheel-report.txt"
raw=$(ls "$out"/raw/pagedattn-*.whl)
"$py" -m auditwheel repair "$raw" -w "$out/wheelhouse" > "$out/auditwheel.log" 2>&1 ||
  python3 -m auditwheel repair "$raw" -w "$out/wheelhouse" > "$out/auditwheel.log" 2>&1
whl=$(ls "$out"/wheelhouse/pagedattn-*.whl)
{
  echo "wheel: $(basename "$whl") $(stat -c %s "$whl") bytes (before repair: $(stat -c %s "$raw"))"
  python3 -m auditwheel show "$whl" 2>&1 | tr '\n' ' ' | sed 's/  */ /g'; echo
  mkdir -p "$out/unpacked" && rm -rf "$out/unpacked"/* && (cd "$out/unpacked" && python3 -m zipfile -e "$whl" .)
  mod=$(ls "$out"/unpacked/pagedattn/*.so | head -1)
  echo "module: $(basename "$mod") $(stat -c %s "$mod") bytes; libraries bundled: $(ls "$out"/unpacked/pagedattn.libs 2>/dev/null | tr '\n' ' ')"
  cuobjdump=${CUOBJDUMP:-cuobjdump}
  if command -v "$cuobjdump" >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    (cd "$tmp" && "$cuobjdump" -xelf all "$mod" > /dev/null 2>&1; "$cuobjdump" -xptx all "$mod" > /dev/null 2>&1) || true
    echo "device code per architecture (bytes, uncompressed):"
    for f in "$tmp"/*; do
      [ -f "$f" ] || continue
      a=$(basename "$f" | grep -oE '(sm|compute)_[0-9]+a?' | tail -1)
      echo "${a:-other} $(stat -c %s "$f") $(basename "$f" | sed -E 's/.*\.//')"
    done | awk '{s[$1" "$3]+=$2} END {for (k in s) printf "  %-14s %12d\n", k, s[k]}' | sort
    rm -rf "$tmp"
  fi
  if [ -f "$out/nvcc-time.csv" ]; then
    echo "compile time per architecture (nvcc --time, seconds summed over translation units and phases):"
    python3 - "$out/nvcc-time.csv" <<'PY'
import csv, re, sys, collections
# columns: source, phase, inputs, output, arch, tool, value, unit; the per-architecture phases are
# the device front end (preprocessing 1, cicc) and ptxas; the rest is host work (once per unit)
t = collections.Counter()
for row in csv.reader(open(sys.argv[1])):
    if len(row) < 8 or row[7].strip() != 'ms':
        continue
    phase, arch = row[1].strip(), row[4].strip()
    per_arch = phase in ('cicc', 'ptxas') or phase.startswith('gcc (preprocessing 1')
    m = re.search(r'_(\d+a?)$', arch)
    t[m.group(1) if (per_arch and m) else 'host'] += float(row[6]) / 1000.0
for k in sorted(t):
    print(f"  {k:<8} {t[k]:10.1f}")
PY
  fi
} | tee -a "$out/wheel-report.txt"
