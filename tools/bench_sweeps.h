// Named sweeps of pagedattn-bench (--sweep NAME, --list-sweeps). The shapes are data, kept
// in one table in bench_sweeps.cpp.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "bench_case.h"

namespace pagedattn::bench {

struct Sweep {
  std::string name;
  std::string description;
  bool graph = false;  ///< also time every case inside a CUDA graph
  std::vector<Case> cuda_cases;
  std::vector<Case> cpu_cases;  ///< smaller shapes for the CPU backend; empty: use cuda_cases
};

/// One group of cases: the cartesian product of its axes, the sequence length innermost (so one
/// configuration's points are adjacent in tables and plots).
struct Group {
  std::string label;
  std::vector<DType> dtypes;
  std::vector<CacheDType> kv;
  std::vector<std::pair<int, int>> heads;  // query heads / kv heads
  std::vector<int> head_sizes;
  std::vector<int> block_sizes;
  std::vector<int> batches;
  std::vector<int> seq_lens;
  SeqDist dist = SeqDist::kFixed;
  bool alibi = false;
};

/// The cases of `groups` in order; a case an earlier group already holds is not repeated.
std::vector<Case> expand(const std::vector<Group>& groups);

/// Every named sweep, in --list-sweeps order.
const std::vector<Sweep>& sweeps();
/// The sweep called `name`, or nullptr.
const Sweep* find_sweep(const std::string& name);

}  // namespace pagedattn::bench
