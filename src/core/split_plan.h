// The auto path's split planner: how many splits (and of how many tokens) one call's
// sequences are cut into. A pure function of the call's shape and the device's size, so
// it is unit-tested on any machine; the CUDA launch layer feeds it the SM count and the
// chosen kernel's occupancy.
#pragma once

namespace pagedattn::detail {

struct SplitInputs {
  int num_seqs = 0;
  int num_kv_heads = 0;
  int head_tiles = 1;        ///< CTAs along one kv head's GQA group
  int max_seq_len = 0;
  long long total_tokens = 0;  ///< PagedAttentionParams::total_tokens (0: unknown)
  bool batch_invariant = false;
  int sm_count = 0;
  int ctas_per_sm = 1;       ///< resident CTAs of the chosen kernel per SM
  /// The time model (all three set; else the token-unit model): bytes one CTA streams per
  /// token of its kv head (keys and values), the device's memory bandwidth, and the most tokens
  /// per microsecond one CTA of the chosen kernel consumes. Set for kernels that have an SM
  /// alone and whose CTAs are bound by their own consumers (hopper_bulk_r8_deep).
  long long kv_bytes_per_token = 0;
  double mem_bytes_per_us = 0.0;
  double cta_tokens_per_us = 0.0;
  /// A split count pinned by the caller (detail::cuda::force_splits, for measurement): the plan
  /// is then fixed_split_plan(max_seq_len, pinned_splits), whatever the model says. 0: none.
  int pinned_splits = 0;
};

struct SplitPlan {
  int partition_size;  ///< tokens per split, a multiple of 32 (2^30: one split)
  int num_splits;      ///< splits launched (gridDim.z)
};

/// The plan with the lowest modelled cost (see split_plan.cpp), or the pinned one
/// (pinned_splits); deterministic.
SplitPlan plan_splits(const SplitInputs& in);

/// `num_splits` splits of a span of max_seq_len tokens (partitions rounded up to 32 tokens, so
/// fewer splits where the rounding covers the span; one split for num_splits <= 1 or an empty
/// span): the candidates plan_splits costs, and the plan a pinned count gets.
SplitPlan fixed_split_plan(int max_seq_len, int num_splits);

/// Splits the auto workspace holds, given plan = plan_splits(in): the larger of the plan
/// without the total_tokens hint (and without batch_invariant) and SPEC's 512-token
/// partitions. Independent of the hint and of batch_invariant, and never below
/// plan.num_splits (tests/core/test_split_plan.cpp checks both).
int reserved_splits(const SplitInputs& in, const SplitPlan& plan);

}  // namespace pagedattn::detail
