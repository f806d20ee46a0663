// Running one case: build the problem on the backend, time each algorithm, check it against
// the float64 reference.
#pragma once

#include <cstdint>
#include <vector>

#include "bench_backend.h"
#include "bench_case.h"

namespace pagedattn::bench {

struct RunOptions {
  std::vector<Algo> algos{Algo::kV1, Algo::kV2, Algo::kAuto, Algo::kVllm};
  bool eager = true;           ///< time eager calls
  bool graph = false;          ///< time calls replayed from a captured CUDA graph
  int warmup = 5;
  int iters = 50;
  int graph_calls = 16;        ///< at least this many calls per captured graph (more if rotation needs it)
  int graph_iters = 20;        ///< graph replays timed
  bool check = true;
  int check_seqs = 3;          ///< sequences sampled per case for the check
  std::uint64_t seed = 1;
  std::int64_t rotate_bytes = 0;  ///< KV bytes read between two reuses of a buffer must exceed this
  int max_buffers = 4096;
  double copy_gbps = 0.0;      ///< the wall, for % of copy bandwidth
  ReadWalls walls;             ///< CPU: sequential-read and page-gather walls (for %read, %gather)
  bool async_reference = false;  ///< compute the reference on a host thread while the device times
};

/// Runs `c` and returns one row per (algo, timing mode), in the order of o.algos, eager
/// before graph. Never throws: failures land in Result::error.
std::vector<Result> run_case(Backend& b, const Case& c, int case_index, const RunOptions& o);

/// Fills Result::vs_baseline and goal_met: each row of a case with a baseline (Case::baseline,
/// a case_index of the same run) against the row of the baseline with the same algo and mode.
void relate_baselines(std::vector<Result>& rows);

}  // namespace pagedattn::bench
