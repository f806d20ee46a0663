#!/usr/bin/env bash
# One GPU-machine call that does a session's whole verification and measurement:
#   1. scripts/gpu_verify.sh: build, CPU + GPU suites, compute-sanitizer, and a benchmark
#      sweep (default: variants);
#   2. optionally the plain-case A/B of this tree against an earlier one (AB_BASE=DIR: a source
#      export of the earlier commit, e.g. git archive REV | tar -x -C DIR), cases from
#      bench/ab/composition.txt (or AB_CASES=FILE), timed in one call on one card.
# Results land in OUT_DIR as at most 8 files (the device tool's limit): summary.txt, the
# sweep's JSON/CSV, logs.tgz, ab.txt and ab.tgz.
#
#   scripts/gpu_session.sh OUT_DIR [extra gpu_verify.sh options]
set -uo pipefail
out=${1:?usage: scripts/gpu_session.sh OUT_DIR [gpu_verify options]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
sweep=${SESSION_SWEEP:-variants}
PAGEDATTN_BENCH_ARGS=${PAGEDATTN_BENCH_ARGS:-} "$root/scripts/gpu_verify.sh" "$out" --bench "$sweep" "$@"
rc=$?
if [ -n "${AB_BASE:-}" ]; then
  mkdir -p /tmp/ab_out
  AB_SRC_A=$AB_BASE AB_SRC_B=$root "$root/scripts/gpu_ab.sh" /tmp/ab_out "" "" @"${AB_CASES:-$root/bench/ab/composition.txt}" > "$out/ab.txt" 2>&1
  (cd /tmp/ab_out && tar czf "$out/ab.tgz" .)
  echo "A/B (A = $AB_BASE, B = this tree):"; grep -E "^=== |^ +[0-9]+ +[a-z]" "$out/ab.txt" | head -60
fi
exit $rc
