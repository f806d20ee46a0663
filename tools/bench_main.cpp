// pagedattn-bench: times the library's decode attention paths against the machine's memory
// wall and checks every timed case against the float64 reference. See docs/bench.md.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench_backend.h"
#include "bench_case.h"
#include "bench_report.h"
#include "bench_run.h"
#include "bench_sweeps.h"
#include "pagedattn/version.h"

namespace pagedattn::bench {
namespace {

struct CliShape {
  std::string dtypes = "float16";
  std::string kv = "auto";
  std::string heads;       // default depends on the backend
  std::string head_sizes = "128";
  std::string block_sizes = "16";
  std::string batches;     // default depends on the backend
  std::string seq_lens;    // default depends on the backend
  std::string dist = "fixed";
  bool alibi = false;
};

std::vector<Case> cases_from_cli(const CliShape& s, bool cpu) {
  const std::string heads = !s.heads.empty() ? s.heads : (cpu ? "8/2" : "32/8");
  const std::string batches = !s.batches.empty() ? s.batches : (cpu ? "4" : "8");
  const std::string seqs = !s.seq_lens.empty() ? s.seq_lens : (cpu ? "512,2k" : "1k,4k,16k");
  Group g;
  g.label = "cli";
  for (const std::string& dt : split_list(s.dtypes)) g.dtypes.push_back(parse_dtype(dt));
  for (const std::string& kv : split_list(s.kv)) g.kv.push_back(parse_kv_dtype(kv));
  for (const std::string& h : split_list(heads)) g.heads.push_back(parse_heads(h));
  g.head_sizes = parse_size_list(s.head_sizes);
  g.block_sizes = parse_size_list(s.block_sizes);
  g.batches = parse_size_list(batches);
  g.seq_lens = parse_size_list(seqs);
  g.dist = parse_dist(s.dist);
  g.alibi = s.alibi;
  return expand({g});
}

/// The SPEC 3b variant options of the command line.
struct VariantFlags {
  int window_left = -1;
  float soft_cap = 0.0f;
  int q_len = 0;
  bool per_head_scales = false;
  bool lse = false;
};

/// Sets the variant options on every case. --per-head-scales applies to the fp8-cache cases
/// only (a kv list such as auto,fp8 keeps its auto cases plain) and needs at least one.
void apply_variants(const VariantFlags& v, std::vector<Case>& cases) {
  if (v.per_head_scales && std::none_of(cases.begin(), cases.end(), [](const Case& c) {
        return c.kv_cache_dtype != CacheDType::kAuto;
      }))
    throw std::invalid_argument("--per-head-scales needs an fp8 cache (--kv-cache-dtype fp8_e4m3 or fp8_e5m2)");
  for (Case& c : cases) {
    c.window_left = v.window_left;
    c.soft_cap = v.soft_cap;
    c.q_len = v.q_len;
    c.per_head_scales = v.per_head_scales && c.kv_cache_dtype != CacheDType::kAuto;
    c.lse = v.lse;
  }
}

std::vector<Algo> parse_algos(const std::string& s) {
  std::vector<Algo> out;
  for (const std::string& item : split_list(s)) {
    if (item == "all") {
      for (Algo a : {Algo::kV1, Algo::kV2, Algo::kAuto, Algo::kVllm}) out.push_back(a);
      continue;
    }
    out.push_back(parse_algo(item));
  }
  if (out.empty()) throw std::invalid_argument("--algo is empty");
  return out;
}

void list_sweeps() {
  for (const Sweep& s : sweeps()) {
    std::printf("%-8s %s\n", s.name.c_str(), s.description.c_str());
    std::printf("         %zu cases on cuda, %zu on cpu%s\n", s.cuda_cases.size(),
                s.cpu_cases.empty() ? s.cuda_cases.size() : s.cpu_cases.size(),
                s.graph ? "; also timed inside a CUDA graph" : "");
  }
}

/// One progress line per case on stderr; redrawn in place on a terminal.
class Progress {
 public:
  Progress(bool enabled, int total) : enabled_(enabled), total_(total), tty_(isatty(fileno(stderr)) != 0) {}
  void start(int k, const Case& c) {
    if (!enabled_) return;
    std::fprintf(stderr, "%s[%d/%d] %s%s", tty_ ? "\r\033[K" : "", k, total_, c.describe().c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void clear() {
    if (enabled_ && tty_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  bool enabled_;
  int total_;
  bool tty_;
};

int run(int argc, char** argv) {
  CLI::App app{"pagedattn-bench: time decode paged attention (v1, v2, auto, vLLM's rule) against the memory wall,\n"
               "checking every timed case against the float64 reference. With no shape options it runs --sweep quick."};
  std::string backend_name;
  int device_index = 0;
  std::string algos = "all";
  CliShape shape;
  std::string sweep_name;
  bool list = false;
  int warmup = -1, iters = -1;
  bool graph = false;
  std::string timing;
  RunOptions o;
  std::string csv_path, json_path;
  double rotate_mib = -1;
  bool quiet = false;
  bool show_version = false;

  app.add_option("--backend", backend_name, "cuda or cpu (default: cuda when built with CUDA and a device is present)")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  app.add_option("--device", device_index, "CUDA device ordinal")->capture_default_str();
  app.add_option("--algo", algos, "comma list of v1, v2, auto, vllm (vLLM's V1/V2 rule on our v1/v2), or all")
      ->capture_default_str();
  auto* o_dtype = app.add_option("--dtype", shape.dtypes, "query/out dtype(s): float32, float16, bfloat16")->capture_default_str();
  auto* o_kv = app.add_option("--kv-cache-dtype", shape.kv, "auto, fp8 (= fp8_e4m3), fp8_e4m3, fp8_e5m2 (comma list)")
                   ->capture_default_str();
  auto* o_heads = app.add_option("--heads", shape.heads, "query/kv heads, e.g. 32/8 or 32 (comma list; default 32/8, cpu 8/2)");
  auto* o_hs = app.add_option("--head-size", shape.head_sizes, "head size(s)")->capture_default_str();
  auto* o_bs = app.add_option("--block-size", shape.block_sizes, "block size(s): 8, 16, 32")->capture_default_str();
  auto* o_batch = app.add_option("--batch", shape.batches, "number of sequences (comma list; default 8, cpu 4)");
  auto* o_seq = app.add_option("--seq-len", shape.seq_lens,
                               "sequence length(s): 4096, 1k,2k,4k, 1k:32k (doubling), 1k:32k:x4, 512:4096:+512 "
                               "(default 1k,4k,16k; cpu 512,2k)");
  auto* o_dist = app.add_option("--seq-len-dist", shape.dist,
                                "fixed: every sequence has seq-len tokens; uniform: mixed lengths in [1, seq-len]")
                     ->check(CLI::IsMember({"fixed", "uniform"}))
                     ->capture_default_str();
  auto* o_alibi = app.add_flag("--alibi", shape.alibi, "use ALiBi slopes");
  bool batch_invariant = false;
  app.add_flag("--batch-invariant", batch_invariant,
               "auto path: fixed 512-token splits, so each sequence's output ignores its batch-mates");
  // SPEC 3b variants (auto path only: v1/v2/vllm rows of such a case are reported n/a)
  VariantFlags vf;
  auto* o_window = app.add_option("--window", vf.window_left,
                                  "auto path: sliding window, window_left = N (a query at p attends p-N..p); -1 = off")
                       ->check(CLI::Range(-1, 1 << 30));
  auto* o_cap = app.add_option("--soft-cap", vf.soft_cap, "auto path: logits soft-cap X (cap * tanh(s / cap)); 0 = off")
                    ->check(CLI::Range(0.0f, 1e30f));
  auto* o_qlen = app.add_option("--q-len", vf.q_len,
                                "auto path: N query tokens per sequence through query_start_loc (query/out get batch*N "
                                "rows; the N new tokens count in seq-len)")
                     ->check(CLI::Range(1, 1 << 20));
  auto* o_phs = app.add_flag("--per-head-scales", vf.per_head_scales,
                             "auto path, fp8 caches: random per-kv-head k_scales/v_scales arrays instead of k_scale/v_scale");
  auto* o_lse = app.add_flag("--lse", vf.lse, "auto path: also write the lse output (and check it)");
  std::string kernel;
  auto* o_kernel = app.add_option("--kernel", kernel,
                                  "CUDA: pin this registry kernel (cuda_core_r1, cuda_core_r2, "
                                  "cuda_core_r4, tensor_core_r8, hopper_bulk_r8, hopper_bulk_r8_deep, hopper_bulk_r16, hopper_bulk_r32) on every entry point it runs "
                                  "(V1, V2, auto); \"\" = the auto rule");
  int splits = 0;
  auto* o_splits = app.add_option("--splits", splits,
                                  "CUDA auto path: pin the split count of every case (0 = the planner's plan): "
                                  "partitions of the span / N tokens, rounded up to 32");
  app.add_option("--sweep", sweep_name, "run a named sweep (see --list-sweeps)");
  app.add_flag("--list-sweeps", list, "list the named sweeps and exit");
  app.add_option("--warmup", warmup, "warm-up calls per algo (default 5, cpu 2)");
  app.add_option("--iters", iters, "timed calls per algo: median, min, max (default 50, cpu 10)");
  app.add_flag("--graph", graph, "also time each case inside a CUDA graph (capture K calls, replay); same as --timing both");
  app.add_option("--timing", timing, "eager, graph or both (default eager; the latency sweep uses both)")
      ->check(CLI::IsMember({"eager", "graph", "both"}));
  app.add_option("--graph-calls", o.graph_calls, "at least this many calls captured per graph")->capture_default_str();
  app.add_option("--graph-iters", o.graph_iters, "graph replays timed")->capture_default_str();
  app.add_flag("--check,!--no-check", o.check, "check each timed case against the float64 reference (default on)");
  app.add_option("--check-seqs", o.check_seqs, "sequences sampled per case for the check")->capture_default_str();
  app.add_option("--csv", csv_path, "write the rows as CSV");
  app.add_option("--json", json_path, "write the run (device, copy bandwidth, options, rows) as JSON");
  app.add_option("--seed", o.seed, "seed of the random data, lengths and block tables")->capture_default_str();
  app.add_option("--rotate-mib", rotate_mib,
                 "KV MiB read between two reuses of one KV buffer must exceed this (default 1024 on cuda, 64 on cpu)");
  app.add_flag("--quiet", quiet, "no progress lines on stderr");
  app.add_flag("--version", show_version, "print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints the message (or the help)
    return rc == 0 ? 0 : 2;      // docs/bench.md: 2 for a bad command line
  }

  if (show_version) {
    std::printf("pagedattn-bench %s (%s)\n", pagedattn::version(), pagedattn::built_with_cuda() ? "with CUDA" : "CPU only");
    return 0;
  }
  if (list) {
    list_sweeps();
    return 0;
  }

  std::unique_ptr<Backend> backend;
  std::string backend_note;
  bool fell_back_to_cpu = false;  // no --backend given and no CUDA device: say so at the end
#ifdef PAGEDATTN_WITH_CUDA
  const int n_devices = cuda_device_count();
  if (backend_name.empty()) {
    backend_name = n_devices > 0 ? "cuda" : "cpu";
    if (n_devices == 0) backend_note = "no CUDA device found: running the CPU backend";
    fell_back_to_cpu = n_devices == 0;
  }
  if (backend_name == "cuda") {
    if (device_index < 0 || device_index >= n_devices) {
      std::fprintf(stderr, "pagedattn-bench: --backend cuda but CUDA device %d is not available (%d found)\n",
                   device_index, n_devices);
      return 2;
    }
    backend = make_cuda_backend(device_index);
  }
#else
  if (backend_name == "cuda") {
    std::fprintf(stderr, "pagedattn-bench: --backend cuda, but this build has no CUDA (configure with PAGEDATTN_ENABLE_CUDA=ON)\n");
    return 2;
  }
  if (backend_name.empty()) {
    backend_note = "built without CUDA: running the CPU backend";
    fell_back_to_cpu = true;
  }
  backend_name = "cpu";
#endif
  if (!backend) backend = make_cpu_backend();
  const bool cpu = backend_name == "cpu";

  RunInfo info;
  info.version = pagedattn::version();
  for (int i = 0; i < argc; ++i) info.command_line += (i ? " " : "") + std::string(argv[i]);

  std::vector<Case> cases;
  const bool shape_given = o_dtype->count() || o_kv->count() || o_heads->count() || o_hs->count() || o_bs->count() ||
                           o_batch->count() || o_seq->count() || o_dist->count() || o_alibi->count();
  bool sweep_graph = false;
  const bool variant_given = o_window->count() || o_cap->count() || o_qlen->count() || o_phs->count() || o_lse->count();
  try {
    o.algos = parse_algos(algos);
    if (!sweep_name.empty() && shape_given) {
      std::fprintf(stderr, "pagedattn-bench: --sweep and shape options (--heads, --seq-len, ...) are exclusive\n");
      return 2;
    }
    if (sweep_name.empty() && !shape_given) sweep_name = "quick";
    if (!sweep_name.empty()) {
      const Sweep* s = find_sweep(sweep_name);
      if (!s) {
        std::fprintf(stderr, "pagedattn-bench: unknown sweep '%s'; see --list-sweeps\n", sweep_name.c_str());
        return 2;
      }
      cases = cpu && !s->cpu_cases.empty() ? s->cpu_cases : s->cuda_cases;
      if (cpu && s->cpu_cases.empty())
        backend_note += std::string(backend_note.empty() ? "" : "; ") + "sweep '" + s->name +
                        "' has GPU-sized shapes only: on the CPU backend it takes a long time";
      sweep_graph = s->graph;
      info.sweep = s->name;
      const bool has_variants =
          std::any_of(cases.begin(), cases.end(), [](const Case& c) { return c.has_variant() || c.baseline > 0; });
      if (has_variants && variant_given) {
        std::fprintf(stderr, "pagedattn-bench: sweep '%s' sets its own variants; --window, --soft-cap, --q-len, "
                             "--per-head-scales and --lse apply to shapes from the command line and other sweeps\n",
                     s->name.c_str());
        return 2;
      }
    } else {
      cases = cases_from_cli(shape, cpu);
    }
    if (variant_given) apply_variants(vf, cases);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pagedattn-bench: %s\n", e.what());
    return 2;
  }

  o.warmup = warmup >= 0 ? warmup : (cpu ? 2 : 5);
  o.iters = iters > 0 ? iters : (cpu ? 10 : 50);
  if (timing.empty()) timing = graph || sweep_graph ? "both" : "eager";
  o.eager = timing != "graph";
  o.graph = timing != "eager";
  if (o.graph && !backend->supports_graphs()) {
    if (!o.eager) backend_note += std::string(backend_note.empty() ? "" : "; ") + "graph timing needs CUDA: timing eager";
    o.graph = false;
    o.eager = true;
  }
  o.rotate_bytes = rotate_mib >= 0 ? static_cast<std::int64_t>(rotate_mib * 1048576.0) : backend->default_rotate_bytes();
  o.async_reference = !cpu;

  info.device = backend->info();
  for (auto& c : cases) c.batch_invariant = batch_invariant;
  if (o_kernel->count()) {
    try {
      backend->pin_kernel(kernel);  // an unknown name fails here, with the list of kernels
      backend->pin_kernel("");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pagedattn-bench: %s\n", e.what());
      return 2;
    }
    for (auto& c : cases) c.kernel = kernel;
  }
  if (o_splits->count()) {
    try {
      backend->pin_splits(splits);  // held for the whole run: workspace sizing and timed calls
      if (splits > 0)
        backend_note += (backend_note.empty() ? "" : "; ") + std::string("the auto path runs ") + std::to_string(splits) +
                        " splits of every sequence (--splits)";
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pagedattn-bench: %s\n", e.what());
      return 2;
    }
  }
  info.num_cases = static_cast<int>(cases.size());
  if (!quiet) std::fprintf(stderr, "measuring copy bandwidth...\n");
  info.copy = backend->measure_copy_bandwidth();
  o.copy_gbps = info.copy.gbps;
  if (!quiet && cpu) std::fprintf(stderr, "measuring read walls...\n");
  info.walls = backend->measure_read_walls();
  o.walls = info.walls;
  info.options = o;

  if (!backend_note.empty()) std::cout << "note: " << backend_note << "\n";
  print_header(std::cout, info);
  print_table_header(std::cout);

  std::vector<Result> all;
  Progress progress(!quiet, static_cast<int>(cases.size()));
  for (std::size_t k = 0; k < cases.size(); ++k) {
    progress.start(static_cast<int>(k + 1), cases[k]);
    std::vector<Result> rows = run_case(*backend, cases[k], static_cast<int>(k + 1), o);
    progress.clear();
    const std::size_t first = all.size();
    all.insert(all.end(), rows.begin(), rows.end());
    relate_baselines(all);  // a baseline always precedes its variants in the run
    print_rows(std::cout, std::vector<Result>(all.begin() + static_cast<std::ptrdiff_t>(first), all.end()));
  }
  print_summary(std::cout, info, all);

  try {
    if (!csv_path.empty()) write_csv(csv_path, all);
    if (!json_path.empty()) write_json(json_path, info, all);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pagedattn-bench: %s\n", e.what());
    return 2;
  }
  if (!csv_path.empty()) std::cout << "wrote " << csv_path << "\n";
  if (!json_path.empty()) std::cout << "wrote " << json_path << "\n";
  if (fell_back_to_cpu)
    std::cout << "(on a machine with a CUDA device, the same command times the CUDA backend)\n";

  for (const Result& r : all)
    if (r.failed()) return 1;
  return 0;
}

}  // namespace
}  // namespace pagedattn::bench

int main(int argc, char** argv) {
  try {
    return pagedattn::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pagedattn-bench: %s\n", e.what());
    return 3;
  }
}
