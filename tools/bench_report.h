// Output of pagedattn-bench: the header and table on stdout, CSV and JSON files.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "bench_backend.h"
#include "bench_case.h"
#include "bench_run.h"

namespace pagedattn::bench {

/// Everything about a run that is not a row.
struct RunInfo {
  std::string version;
  std::string command_line;
  std::string sweep;  ///< named sweep, or "" for shapes from the command line
  DeviceInfo device;
  CopyBandwidth copy;
  ReadWalls walls;  ///< CPU backend: sequential-read and page-gather walls of the same run
  RunOptions options;
  int num_cases = 0;
};

void print_header(std::ostream& os, const RunInfo& info);
void print_table_header(std::ostream& os);
void print_rows(std::ostream& os, const std::vector<Result>& rows);
/// Summary lines: rows, failures, and the best of the library's paths per case.
void print_summary(std::ostream& os, const RunInfo& info, const std::vector<Result>& rows);

void write_csv(const std::string& path, const std::vector<Result>& rows);
void write_json(const std::string& path, const RunInfo& info, const std::vector<Result>& rows);

}  // namespace pagedattn::bench
