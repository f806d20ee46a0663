#!/usr/bin/env bash
# Packs binaries built here for scripts/gpu_prebuilt.sh on the GPU machine: each NAME=PATH is
# stripped and xz-compressed to BIN_DIR/NAME.xz; wheels (*.whl) and shared libraries (*.so*) are
# copied as they are; libhwy.so.1 (the CPU backend's Highway, which Debian ships shared only)
# is added when a packed binary links it. Fails when BIN_DIR plus the files git carries exceed
# the device tool's 64 MiB (it carries the tree and the `carry` paths together).
#
#   scripts/gpu_pack.sh BIN_DIR NAME=PATH|FILE.whl|FILE.so... [...]
#   e.g. scripts/gpu_pack.sh .gpubin cuda_tests=build/tests/cuda/pagedattn_cuda_tests \
#          bench=build/tools/pagedattn-bench bench_ptx80=build-ptx80/tools/pagedattn-bench
# Then: run (carry [".gpubin"]) `bash scripts/gpu_prebuilt.sh .gpubin $OUT`.
set -euo pipefail
bin=${1:?usage: scripts/gpu_pack.sh BIN_DIR NAME=PATH|FILE.whl|FILE.so... [...]}; shift
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$bin" && mkdir -p "$bin"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for item in "$@"; do
  case "$item" in
    *=*)
      name=${item%%=*}; path=${item#*=}
      strip -o "$tmp/$name" "$path"
      # -9e: ~20% smaller than -6 on these binaries (a 64 MB test binary: 21.5 -> 17 MB), so a
      # suite and two benches fit one call
      xz -9e -T"$(nproc)" -c "$tmp/$name" > "$bin/$name.xz"
      if ldd "$path" 2>/dev/null | grep -q 'libhwy.so.1 =>' && [ ! -f "$bin/libhwy.so.1" ]; then
        cp -L "$(ldd "$path" | awk '/libhwy.so.1 =>/ {print $3}')" "$bin/libhwy.so.1"
      fi ;;
    *.whl|*.so*) cp -L "$item" "$bin/" ;;
    *) echo "scripts/gpu_pack.sh: '$item' is neither NAME=PATH nor a .whl / .so file" >&2; exit 2 ;;
  esac
done
packed=$(du -cb "$bin"/* | tail -1 | cut -f1)
tree=$(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s + 0}')
limit=$((64 * 1024 * 1024))
ls -la "$bin"
echo "packed $((packed / 1048576)) MiB + tree $((tree / 1048576)) MiB = $(((packed + tree) / 1048576)) MiB of 64 MiB"
[ $((packed + tree)) -le $limit ] || { echo "scripts/gpu_pack.sh: over the device tool's 64 MiB: carry fewer files per call" >&2; exit 1; }
