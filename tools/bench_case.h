// What pagedattn-bench measures: a Case (one problem shape), the algorithms timed on it, and
// the Result row each (case, algo, timing mode) produces.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pagedattn/types.h"

namespace pagedattn::bench {

/// Which entry point a row times. kVllm applies vLLM's V1/V2 rule (vllm_rule_prefers_v1) to
/// the library's own V1/V2.
enum class Algo : std::uint8_t { kV1, kV2, kAuto, kVllm };
enum class TimingMode : std::uint8_t { kEager, kGraph };
/// How the batch's sequence lengths are drawn from the case's seq_len L.
enum class SeqDist : std::uint8_t {
  kFixed,    ///< every sequence has L tokens
  kUniform,  ///< uniform in [1, L], one randomly chosen sequence has exactly L
};

const char* algo_name(Algo a);
const char* mode_name(TimingMode m);
const char* dist_name(SeqDist d);
/// "fp32", "fp16", "bf16": the short names used in tables.
const char* short_dtype_name(DType t);

/// One problem shape.
struct Case {
  std::string group;  ///< sweep group label ("cli" for shapes from the command line)
  DType dtype = DType::kFloat16;
  CacheDType kv_cache_dtype = CacheDType::kAuto;
  int num_heads = 32;
  int num_kv_heads = 8;
  int head_size = 128;
  int block_size = 16;
  int batch = 1;
  int seq_len = 1024;  ///< every sequence's length (kFixed) or the maximum (kUniform)
  SeqDist dist = SeqDist::kFixed;
  bool alibi = false;
  bool batch_invariant = false;  ///< the auto path's batch-invariant split plan (PagedAttentionParams::batch_invariant)

  // ---- SPEC §3b variants: the auto entry point only (v1/v2/vllm rows are "not applicable")
  int window_left = -1;         ///< sliding window (PagedAttentionParams::window_left); -1 = off
  float soft_cap = 0.0f;        ///< logits soft-cap; 0 = off
  /// Query tokens per sequence. 0 = the plain decode call (one token per sequence, no
  /// query_start_loc); N >= 1 builds query_start_loc with N rows per sequence (query/out hold
  /// batch x N rows, max_query_len = N). The N new tokens count in each sequence's length.
  int q_len = 0;
  bool per_head_scales = false;  ///< fp8 caches: per-kv-head k_scales/v_scales arrays instead of k_scale/v_scale
  bool lse = false;              ///< also write the log-sum-exp output
  /// CUDA: the registry kernel the auto path is pinned to (detail::cuda::force_kernel); "" = the
  /// auto rule. Not a §3b variant: v1/v2 rows still run (unpinned).
  std::string kernel;

  // ---- sweep bookkeeping (the variants sweep): what this case is measured against
  std::string label;       ///< short name of the variant in the report ("window 4096", ...); "" = none
  int baseline = 0;        ///< 1-based index in the run of the case this one is compared with; 0 = none
  double goal = 0.0;       ///< time ratio to the baseline this case should stay within; 0 = none

  /// Query rows per sequence the call has (1 for the plain call).
  int rows_per_seq() const { return q_len > 0 ? q_len : 1; }
  /// Whether a §3b variant is on (v1/v2 reject such a call).
  bool has_variant() const { return window_left >= 0 || soft_cap > 0.0f || q_len > 0 || per_head_scales || lse; }
  /// Tokens of a sequence of `len` tokens that some query row attends: the span the kernels
  /// read, min(len, q_len + window_left) with a window, else len.
  std::int64_t attended_tokens(int len) const;
  /// The variant settings in words ("window 4096, soft-cap 50, ..."), "" when none.
  std::string variant_key() const;
  /// The configuration without the sequence length: lines in plots, groups in tables.
  std::string config_key() const;
  /// One line in words, for progress and logs.
  std::string describe() const;
};

enum class CheckStatus : std::uint8_t { kNotRun, kPass, kFail, kNotApplicable };

/// One measured (case, algo, mode).
struct Result {
  int case_index = 0;  ///< 1-based position of the case in the run
  Case c;
  Algo algo = Algo::kAuto;
  Algo ran = Algo::kAuto;  ///< the entry point actually called (differs for kVllm)
  TimingMode mode = TimingMode::kEager;
  bool reused = false;     ///< kVllm rows copy the samples of the v1/v2 row they resolve to

  // The batch as generated.
  std::int64_t total_tokens = 0;
  std::int64_t attended_tokens = 0;  ///< sum over sequences of Case::attended_tokens (= total_tokens without a window)
  std::int64_t query_rows = 0;       ///< rows of query/out: batch x Case::rows_per_seq()
  int max_seq_len = 0;
  double mean_seq_len = 0.0;
  std::vector<int> seq_lens;

  // Traffic and rotation.
  std::int64_t kv_bytes = 0;      ///< KV bytes read: attended_tokens * kv_heads * head_size * 2 * cache element size
  std::int64_t qo_bytes = 0;      ///< query + out bytes (query_rows of each), + the lse output when written
  std::int64_t bytes = 0;         ///< kv_bytes + qo_bytes (V2 / auto workspace traffic not counted)
  int num_buffers = 1;            ///< KV buffers rotated over
  std::int64_t reuse_distance_bytes = 0;  ///< KV bytes read between two reads of one buffer's bytes
  int calls_per_graph = 0;        ///< graph mode: calls captured per replay

  // Timing, microseconds per call.
  int iters = 0;
  double median_us = 0.0, min_us = 0.0, max_us = 0.0;
  double gbps = 0.0;              ///< bytes / median time
  double pct_copy = 0.0;          ///< gbps / copy bandwidth * 100
  std::int64_t page_bytes = 0;    ///< bytes of one (block, kv head) page of K (or V)
  double pct_read = 0.0;          ///< gbps / sequential-read wall * 100 (0: not measured)
  double pct_gather = 0.0;        ///< gbps / page-gather wall at page_bytes * 100 (0: not measured)

  // Check against the float64 reference.
  CheckStatus check = CheckStatus::kNotRun;
  double max_abs_err = 0.0;
  double worst_err_over_tol = 0.0;  ///< max over elements of |err| / (atol + rtol * |ref|)
  std::vector<int> checked_seqs;
  double max_lse_err = 0.0;  ///< with Case::lse: max |lse - ref lse| over the checked rows

  std::string kernel_ran;  ///< CUDA: the registry kernel the last timed launch ran ("" on the CPU)

  // Against the case's baseline (Case::baseline), same algo and mode; filled by relate_baselines.
  double vs_baseline = 0.0;  ///< median_us / the baseline's median_us; 0 = no baseline or not timed
  bool goal_met = false;     ///< vs_baseline <= Case::goal (when both are set)

  /// Non-empty when this algo does not apply to the case (v1/v2 and the §3b variants): the row
  /// is neither timed nor checked, and is not a failure.
  std::string not_applicable;
  std::string error;  ///< non-empty when the call (or the case setup) failed
  bool failed() const { return !error.empty() || check == CheckStatus::kFail; }
};

/// Per-dtype tolerance of the check: |out - ref| <= atol + rtol * |ref|.
struct Tolerance {
  double atol = 0.0;
  double rtol = 0.0;
};
Tolerance tolerance_for(DType t);

// ---- parsing of command-line values; each throws std::invalid_argument with a full message ----
DType parse_dtype(const std::string& s);
CacheDType parse_kv_dtype(const std::string& s);
Algo parse_algo(const std::string& s);
SeqDist parse_dist(const std::string& s);
/// "32/8" -> {32, 8}; "32" -> {32, 32}.
std::pair<int, int> parse_heads(const std::string& s);
/// A positive integer, with an optional k suffix (x1024): "4096", "32k".
int parse_size(const std::string& s);
/// A comma list of sizes and ranges: "4096", "1k,2k,4k", "1k:32k" (doubling),
/// "1k:32k:x4" (times 4), "512:4096:+512" (step 512).
std::vector<int> parse_size_list(const std::string& s);
/// Splits "a,b,c" into its non-empty items.
std::vector<std::string> split_list(const std::string& s);

}  // namespace pagedattn::bench
