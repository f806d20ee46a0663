// Named sweeps of pagedattn-bench (--sweep NAME, --list-sweeps). The shapes are data, kept
// in one table in bench_sweeps.cpp.
#pragma once

#include <string>
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

/// Every named sweep, in --list-sweeps order.
const std::vector<Sweep>& sweeps();
/// The sweep called `name`, or nullptr.
const Sweep* find_sweep(const std::string& name);

}  // namespace pagedattn::bench
