#include "bench_report.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace pagedattn::bench {
namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

std::string algo_label(const Result& r) {
  if (r.algo == Algo::kVllm) return std::string("vllm(") + algo_name(r.ran) + ")";
  return algo_name(r.algo);
}

std::string seq_label(const Result& r) {
  return (r.c.dist == SeqDist::kUniform ? "<=" : "") + std::to_string(r.c.seq_len);
}

std::string check_label(const Result& r) {
  if (!r.error.empty()) return "ERROR";
  switch (r.check) {
    case CheckStatus::kNotRun: return "-";
    case CheckStatus::kPass: return "ok " + fmt("%.1e", r.max_abs_err);
    case CheckStatus::kFail: return "FAIL " + fmt("%.1e", r.max_abs_err);
    case CheckStatus::kNotApplicable: return "n/a";
  }
  return "?";
}

const char* check_word(const Result& r) {
  if (!r.error.empty()) return "error";
  switch (r.check) {
    case CheckStatus::kNotRun: return "not_run";
    case CheckStatus::kPass: return "pass";
    case CheckStatus::kFail: return "fail";
    case CheckStatus::kNotApplicable: return "not_applicable";
  }
  return "?";
}

/// The trailing notes of a table row: variant, kernel pinned / run, time against the baseline.
std::string notes_label(const Result& r) {
  std::string n;
  auto add = [&n](const std::string& s) {
    if (!s.empty()) n += (n.empty() ? "" : "; ") + s;
  };
  Case v = r.c;
  v.kernel.clear();  // shown with the kernel that ran
  add(v.variant_key());
  if (!r.kernel_ran.empty() || !r.c.kernel.empty())
    add("kernel " + (r.kernel_ran.empty() ? r.c.kernel : r.kernel_ran) + (r.c.kernel.empty() ? "" : " (pinned)"));
  if (r.vs_baseline > 0.0) {
    std::string b = fmt("%.2fx", r.vs_baseline) + " case " + std::to_string(r.c.baseline);
    if (r.c.goal > 0.0) b += std::string(r.goal_met ? " (goal <= " : " (MISSED goal <= ") + fmt("%.2fx)", r.c.goal);
    add(b);
  }
  if (r.pct_read > 0.0 && r.iters > 0)
    add(fmt("%.0f%%read", r.pct_read) + " " + fmt("%.0f%%gather", r.pct_gather) + "@" + fmt("%gKiB", double(r.page_bytes) / 1024.0));
  if (r.c.lse && r.check != CheckStatus::kNotRun && r.check != CheckStatus::kNotApplicable && r.error.empty())
    add("lse err " + fmt("%.1e", r.max_lse_err));
  return n;
}

/// CSV field: quoted, with quotes and newlines replaced.
std::string csv_text(std::string s) {
  for (char& ch : s)
    if (ch == '"' || ch == '\n') ch = '\'';
  return "\"" + s + "\"";
}

std::string bytes_label(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  return fmt(b < 10 ? "%.2f" : "%.0f", b) + " " + units[u];
}

/// JSON numbers must be finite: an infinite error (NaN in the output) becomes null.
nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

void print_header(std::ostream& os, const RunInfo& info) {
  const RunOptions& o = info.options;
  os << "pagedattn-bench " << info.version << ": decode paged attention, " << info.device.backend << " backend\n";
  os << "device:         " << info.device.name;
  if (info.device.backend == "cuda")
    os << " (" << info.device.compute_units << " SMs, " << bytes_label(double(info.device.l2_bytes)) << " L2, "
       << info.device.extra << ")";
  else
    os << " (" << info.device.compute_units << " hardware threads)";
  os << "\n";
  os << "copy bandwidth: " << fmt("%.1f", info.copy.gbps) << " GB/s (" << info.copy.method << ")\n";
  if (info.walls.measured()) {
    os << "read walls:     sequential " << fmt("%.1f", info.walls.seq_gbps) << " GB/s; page gather";
    for (const auto& [sz, g] : info.walls.gather) os << " " << bytes_label(double(sz)) << " " << fmt("%.1f", g);
    os << " GB/s\n                (" << info.walls.method << ")\n"
       << "                notes: %read = GB/s / sequential wall, %gather = GB/s / gather wall at the case's page size\n";
  }
  os << "run:            " << (info.sweep.empty() ? "shapes from the command line" : "sweep '" + info.sweep + "'")
     << ", " << info.num_cases << " case(s); algos";
  for (Algo a : o.algos) os << " " << algo_name(a);
  os << "; " << (o.eager ? "eager" : "") << (o.eager && o.graph ? " + " : "") << (o.graph ? "graph" : "") << "\n";
  os << "timing:         median/min/max of " << o.iters << " calls after " << o.warmup << " warm-up";
  if (o.graph) os << "; graph: " << o.graph_iters << " replays of >= " << o.graph_calls << " captured calls, per call";
  os << "\n                KV rotated over buffers so that > " << bytes_label(double(o.rotate_bytes))
     << " of KV is read between reuses of one buffer\n";
  os << "bytes:          KV read (sum of seq_len x kv_heads x head_size x 2 x cache element) + query + out;\n"
     << "                with a window only the attended span min(seq_len, q_len + window) counts; query/out\n"
     << "                have q_len rows per sequence (+ the lse output when written).\n"
     << "                V2 / auto workspace traffic is not counted. GB/s = bytes / median; %copy = GB/s / copy bandwidth\n";
  if (o.check) {
    os << "check:          each algo's output on up to " << o.check_seqs
       << " sampled sequences vs. the float64 reference; pass if |err| <= atol + rtol*|ref|\n                (";
    const DType dts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
    for (int i = 0; i < 3; ++i) {
      const Tolerance t = tolerance_for(dts[i]);
      os << (i ? ", " : "") << short_dtype_name(dts[i]) << " " << fmt("%.0e", t.atol) << "+" << fmt("%.0e", t.rtol);
    }
    os << "); the column shows the max abs error\n"
       << "                lse (when written): |err| <= 1e-3 + 1e-4*|ref|; n/a: v1/v2/vllm on a SPEC 3b variant (auto only)\n";
  } else {
    os << "check:          off (--no-check)\n";
  }
  os << "\n";
}

void print_table_header(std::ostream& os) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%4s  %-8s %-5s %5s %7s %4s %3s %-5s %-8s %7s %5s %10s %10s %10s %8s %6s  %-12s %s\n",
                "case", "algo", "mode", "batch", "heads", "hs", "blk", "dtype", "kv", "seq_len", "alibi", "median us",
                "min us", "max us", "GB/s", "%copy", "check", "notes");
  os << buf;
}

void print_rows(std::ostream& os, const std::vector<Result>& rows) {
  char buf[1024];
  for (const Result& r : rows) {
    if (!r.not_applicable.empty()) continue;  // counted in the summary; kept in the CSV and JSON
    const std::string heads = std::to_string(r.c.num_heads) + "/" + std::to_string(r.c.num_kv_heads);
    const bool timed = r.iters > 0;
    const std::string notes = notes_label(r);
    std::snprintf(buf, sizeof(buf), "%4d  %-8s %-5s %5d %7s %4d %3d %-5s %-8s %7s %5s %10s %10s %10s %8s %6s  %-12s %s",
                  r.case_index, algo_label(r).c_str(), mode_name(r.mode), r.c.batch, heads.c_str(), r.c.head_size,
                  r.c.block_size, short_dtype_name(r.c.dtype), cache_dtype_name(r.c.kv_cache_dtype), seq_label(r).c_str(),
                  r.c.alibi ? "yes" : "-", timed ? fmt("%.1f", r.median_us).c_str() : "-",
                  timed ? fmt("%.1f", r.min_us).c_str() : "-", timed ? fmt("%.1f", r.max_us).c_str() : "-",
                  timed ? fmt("%.1f", r.gbps).c_str() : "-", timed ? fmt("%.1f", r.pct_copy).c_str() : "-",
                  check_label(r).c_str(), notes.c_str());
    std::string line = buf;
    line.erase(line.find_last_not_of(' ') + 1);  // no padding after the last column
    os << line << "\n";
    if (!r.error.empty()) os << "      error: " << r.error << "\n";
  }
  os.flush();
}

void print_summary(std::ostream& os, const RunInfo& info, const std::vector<Result>& rows) {
  int failed = 0, checked = 0, errors = 0, not_applicable = 0;
  for (const Result& r : rows) {
    if (!r.error.empty()) ++errors;
    if (r.check == CheckStatus::kPass || r.check == CheckStatus::kFail) ++checked;
    if (r.check == CheckStatus::kFail) ++failed;
    if (!r.not_applicable.empty()) ++not_applicable;
  }
  os << "\n" << rows.size() << " rows over " << info.num_cases << " case(s); ";
  if (info.options.check)
    os << checked << " checked against the float64 reference, " << failed << " failed";
  else
    os << "not checked";
  os << "; " << errors << " error(s)";
  if (not_applicable > 0)
    os << "; " << not_applicable << " not applicable (v1/v2/vllm on auto-only variants: left out of the table, in the CSV/JSON)";
  os << "\n";

  // auto against the library's own paths and against vLLM's rule, per (case, mode).
  std::map<std::pair<int, TimingMode>, std::map<Algo, double>> med;
  for (const Result& r : rows)
    if (r.error.empty() && r.iters > 0) med[{r.case_index, r.mode}][r.algo] = r.median_us;
  double worst_best = 0.0, worst_vllm = -1e30;
  int n_best = 0, n_vllm = 0, case_best = 0, case_vllm = 0;
  for (const auto& [key, m] : med) {
    const auto a = m.find(Algo::kAuto);
    if (a == m.end()) continue;
    double best = a->second;
    bool compared = false;
    for (Algo other : {Algo::kV1, Algo::kV2})
      if (m.count(other)) best = std::min(best, m.at(other)), compared = true;
    if (compared) {
      const double slower = 100.0 * (a->second / best - 1.0);
      if (n_best++ == 0 || slower > worst_best) worst_best = slower, case_best = key.first;
    }
    if (m.count(Algo::kVllm)) {
      const double behind = 100.0 * (a->second / m.at(Algo::kVllm) - 1.0);
      if (n_vllm++ == 0 || behind > worst_vllm) worst_vllm = behind, case_vllm = key.first;
    }
  }
  if (n_best > 0)
    os << "auto vs the fastest of v1/v2/auto: at most " << fmt("%.1f", worst_best) << "% slower (case " << case_best
       << ", " << n_best << " comparisons)\n";
  if (n_vllm > 0)
    os << "auto vs vLLM's rule on our v1/v2: at most " << fmt("%+.1f", worst_vllm) << "% time (case " << case_vllm
       << "; negative = auto faster everywhere)\n";

  // Each variant against its baseline (the variants sweep): one line per (case, mode) of the
  // auto path, the only one that takes the variants (the table has the other algos' ratios).
  bool titled = false;
  int goals = 0, missed = 0;
  for (const Result& r : rows) {
    if (r.c.baseline <= 0 || r.vs_baseline <= 0.0 || r.algo != Algo::kAuto) continue;
    if (!titled) {
      os << "\nvariant vs its baseline, auto path (median time ratio, same timing mode):\n";
      titled = true;
    }
    const Result* base = nullptr;
    for (const Result& b : rows)
      if (b.case_index == r.c.baseline && b.algo == r.algo && b.mode == r.mode) base = &b;
    char buf[512];
    std::snprintf(buf, sizeof(buf), "  case %3d %-22s %-5s vs case %3d %-14s %6.2fx", r.case_index,
                  (r.c.label.empty() ? r.c.variant_key() : r.c.label).c_str(), mode_name(r.mode), r.c.baseline,
                  base ? (base->c.label.empty() ? "plain" : base->c.label.c_str()) : "?", r.vs_baseline);
    os << buf << "  (b" << r.c.batch << " x " << r.c.seq_len;
    if (base) os << " vs b" << base->c.batch << " x " << base->c.seq_len;
    os << ")";
    if (r.c.goal > 0.0) {
      ++goals;
      if (!r.goal_met) ++missed;
      os << (r.goal_met ? "  goal <= " : "  MISSED goal <= ") << fmt("%.2fx", r.c.goal);
    }
    os << "\n";
  }
  if (goals > 0) os << goals - missed << " of " << goals << " goal(s) met\n";
}

void write_csv(const std::string& path, const std::vector<Result>& rows) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write CSV file " + path);
  f << "case,group,algo,ran,mode,batch,num_heads,num_kv_heads,head_size,block_size,dtype,kv_cache_dtype,seq_len,"
       "seq_len_dist,alibi,max_seq_len,mean_seq_len,total_tokens,kv_bytes,bytes,num_buffers,reuse_distance_bytes,"
       "calls_per_graph,iters,median_us,min_us,max_us,gbps,pct_copy,check,max_abs_err,err_over_tol,error,"
       "window_left,soft_cap,q_len,per_head_scales,lse,kernel,kernel_ran,query_rows,attended_tokens,qo_bytes,"
       "max_lse_err,label,baseline_case,vs_baseline,goal,goal_met,not_applicable\n";
  for (const Result& r : rows) {
    std::string err = r.error;
    for (char& ch : err)
      if (ch == '"' || ch == '\n') ch = '\'';
    f << r.case_index << "," << r.c.group << "," << algo_name(r.algo) << "," << algo_name(r.ran) << ","
      << mode_name(r.mode) << "," << r.c.batch << "," << r.c.num_heads << "," << r.c.num_kv_heads << ","
      << r.c.head_size << "," << r.c.block_size << "," << dtype_name(r.c.dtype) << ","
      << cache_dtype_name(r.c.kv_cache_dtype) << "," << r.c.seq_len << "," << dist_name(r.c.dist) << ","
      << (r.c.alibi ? 1 : 0) << "," << r.max_seq_len << "," << r.mean_seq_len << "," << r.total_tokens << ","
      << r.kv_bytes << "," << r.bytes << "," << r.num_buffers << "," << r.reuse_distance_bytes << ","
      << r.calls_per_graph << "," << r.iters << "," << r.median_us << "," << r.min_us << "," << r.max_us << ","
      << r.gbps << "," << r.pct_copy << "," << check_word(r) << "," << r.max_abs_err << "," << r.worst_err_over_tol
      << ",\"" << err << "\"," << r.c.window_left << "," << r.c.soft_cap << "," << r.c.q_len << ","
      << (r.c.per_head_scales ? 1 : 0) << "," << (r.c.lse ? 1 : 0) << "," << r.c.kernel << "," << r.kernel_ran << ","
      << r.query_rows << "," << r.attended_tokens << "," << r.qo_bytes << "," << r.max_lse_err << ","
      << csv_text(r.c.label) << "," << r.c.baseline << "," << r.vs_baseline << "," << r.c.goal << ","
      << (r.goal_met ? 1 : 0) << "," << csv_text(r.not_applicable) << "\n";
  }
}

void write_json(const std::string& path, const RunInfo& info, const std::vector<Result>& rows) {
  using nlohmann::json;
  const RunOptions& o = info.options;
  json j;
  j["tool"] = "pagedattn-bench";
  j["version"] = info.version;
  j["command_line"] = info.command_line;
  j["sweep"] = info.sweep;
  j["device"] = {{"backend", info.device.backend},
                 {"name", info.device.name},
                 {"compute_units", info.device.compute_units},
                 {"l2_bytes", info.device.l2_bytes},
                 {"memory_bytes", info.device.memory_bytes},
                 {"details", info.device.extra}};
  j["copy_bandwidth"] = {{"gbps", info.copy.gbps},
                         {"best_gbps", info.copy.best_gbps},
                         {"bytes_copied", info.copy.bytes_copied},
                         {"repetitions", info.copy.repetitions},
                         {"method", info.copy.method}};
  if (info.walls.measured()) {
    json g = json::array();
    for (const auto& [sz, gb] : info.walls.gather) g.push_back({{"page_bytes", sz}, {"gbps", gb}});
    j["read_walls"] = {{"threads", info.walls.threads},
                       {"buffer_bytes", info.walls.buffer_bytes},
                       {"sequential_gbps", info.walls.seq_gbps},
                       {"gather", g},
                       {"method", info.walls.method}};
  }
  json algos = json::array();
  for (Algo a : o.algos) algos.push_back(algo_name(a));
  j["options"] = {{"algos", algos},        {"eager", o.eager},           {"graph", o.graph},
                  {"warmup", o.warmup},    {"iters", o.iters},           {"graph_calls", o.graph_calls},
                  {"graph_iters", o.graph_iters}, {"check", o.check},   {"check_seqs", o.check_seqs},
                  {"seed", o.seed},        {"rotate_bytes", o.rotate_bytes}};
  json tol = json::object();
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    tol[dtype_name(t)] = {{"atol", tolerance_for(t).atol}, {"rtol", tolerance_for(t).rtol}};
  j["check_tolerance"] = tol;
  j["notes"] = {"bytes = KV bytes read (sum over sequences of seq_len x num_kv_heads x head_size x 2 x cache element "
                "size) + query + out; V2 and auto workspace traffic is not counted",
                "with a sliding window the KV bytes count only the attended span of each sequence, "
                "min(seq_len, q_len + window_left) tokens (attended_tokens); query/out count query_rows = batch x q_len "
                "rows, plus the lse output (rows x heads x 4) when written",
                "check 'not_applicable': v1/v2/vllm rows of a case with a SPEC 3b variant (auto only), neither timed "
                "nor checked",
                "vs_baseline = median_us / the median_us of case baseline_case with the same algo and mode",
                "times are microseconds per call; graph rows divide a replay by calls_per_graph",
                "vllm rows apply vLLM's V1/V2 rule to this library's v1/v2 ('ran'); reused = samples shared with that row"};
  json res = json::array();
  for (const Result& r : rows) {
    json x;
    x["case"] = r.case_index;
    x["group"] = r.c.group;
    x["config"] = r.c.config_key();
    x["algo"] = algo_name(r.algo);
    x["ran"] = algo_name(r.ran);
    x["reused"] = r.reused;
    x["mode"] = mode_name(r.mode);
    x["dtype"] = dtype_name(r.c.dtype);
    x["kv_cache_dtype"] = cache_dtype_name(r.c.kv_cache_dtype);
    x["num_heads"] = r.c.num_heads;
    x["num_kv_heads"] = r.c.num_kv_heads;
    x["head_size"] = r.c.head_size;
    x["block_size"] = r.c.block_size;
    x["batch"] = r.c.batch;
    x["seq_len"] = r.c.seq_len;
    x["seq_len_dist"] = dist_name(r.c.dist);
    x["alibi"] = r.c.alibi;
    x["batch_invariant"] = r.c.batch_invariant;
    x["seq_lens"] = r.seq_lens;
    x["max_seq_len"] = r.max_seq_len;
    x["mean_seq_len"] = r.mean_seq_len;
    x["total_tokens"] = r.total_tokens;
    x["kv_bytes"] = r.kv_bytes;
    x["qo_bytes"] = r.qo_bytes;
    x["bytes"] = r.bytes;
    x["num_buffers"] = r.num_buffers;
    x["reuse_distance_bytes"] = r.reuse_distance_bytes;
    x["calls_per_graph"] = r.calls_per_graph;
    x["iters"] = r.iters;
    x["median_us"] = r.median_us;
    x["min_us"] = r.min_us;
    x["max_us"] = r.max_us;
    x["gbps"] = r.gbps;
    x["pct_copy"] = r.pct_copy;
    x["page_bytes"] = r.page_bytes;
    x["pct_read"] = r.pct_read;
    x["pct_gather"] = r.pct_gather;
    x["check"] = check_word(r);
    x["max_abs_err"] = num(r.max_abs_err);
    x["err_over_tol"] = num(r.worst_err_over_tol);
    x["checked_seqs"] = r.checked_seqs;
    x["error"] = r.error;
    x["window_left"] = r.c.window_left;
    x["soft_cap"] = r.c.soft_cap;
    x["q_len"] = r.c.q_len;
    x["per_head_scales"] = r.c.per_head_scales;
    x["lse"] = r.c.lse;
    x["kernel"] = r.c.kernel;
    x["kernel_ran"] = r.kernel_ran;
    x["query_rows"] = r.query_rows;
    x["attended_tokens"] = r.attended_tokens;
    x["max_lse_err"] = num(r.max_lse_err);
    x["label"] = r.c.label;
    x["baseline_case"] = r.c.baseline;
    x["vs_baseline"] = r.vs_baseline;
    x["goal"] = r.c.goal;
    x["goal_met"] = r.goal_met;
    x["not_applicable"] = r.not_applicable;
    res.push_back(x);
  }
  j["results"] = res;
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write JSON file " + path);
  f << j.dump(2) << "\n";
}

}  // namespace pagedattn::bench
