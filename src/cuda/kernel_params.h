// The one parameter struct every attention kernel takes, passed by value as a
// __grid_constant__. Built on the host by the launcher (launch.cu) from a validated call.
#pragma once

#include <cstdint>

#include "core/attention_rules.h"

namespace pagedattn::detail::cuda {

/// Query heads per CTA on the tensor-core path (the mma n dimension); the launcher sizes
/// the grid with it.
inline constexpr int kMmaHeads = 8;

/// Query rows: a CTA computes up to H rows of one (sequence, kv head); the rows of a kv head
/// are (query token j of the sequence) x (head of the GQA group), token-major, so with one
/// query token per sequence they are the group's heads in order.
struct AttentionKernelParams {
  // ---- inputs
  const void* query;          ///< [num_rows, num_heads, head_size] T; row stride q_stride
  const void* key_cache;      ///< [num_blocks, num_kv_heads, head_size/x, block_size, x]
  const void* value_cache;    ///< [num_blocks, num_kv_heads, head_size, block_size]
  const std::int32_t* block_tables;  ///< [num_seqs, bt_stride]
  const std::int32_t* seq_lens;      ///< [num_seqs]
  const std::int32_t* query_start_loc;  ///< [num_seqs + 1] or nullptr (one row per sequence)
  const float* alibi_slopes;         ///< [num_heads] or nullptr
  const float* k_scales;             ///< [num_kv_heads] or nullptr (then qk_scale / v_scale)
  const float* v_scales;
  std::int64_t q_stride;
  std::int64_t k_block_stride, k_head_stride;  ///< elements
  std::int64_t v_block_stride, v_head_stride;  ///< elements
  std::int64_t bt_stride;
  float scale;     ///< the call's scale (with per-head k_scales: qk scale = scale * k_scales[g])
  float qk_scale;  ///< scale * k_scale (k_scale folded into the dot product)
  float v_scale;
  int num_heads;
  int num_kv_heads;
  int group_size;      ///< num_heads / num_kv_heads
  int row_tiles;       ///< ceil(max_q_len * group_size / rows-per-CTA): CTAs along one kv head
  int rows_vary;       ///< 1: rows attend different token ranges (query_start_loc or a window)
  int block_size;
  int block_shift;     ///< log2(block_size)
  LogitsRule rule;     ///< soft-cap, window, block-sparse (core/attention_rules.h)
  // ---- split along the attended span of the sequence
  int partition_size;  ///< tokens per split (multiple of 32); >= every span for one pass
  int max_splits;      ///< gridDim.z; the partial tensors' partition dimension
  // ---- outputs
  void* out;                 ///< [num_rows, num_heads, head_size] T, contiguous
  float* lse;                ///< [num_rows, num_heads] or nullptr
  float* exp_sums;           ///< [num_rows, num_heads, max_splits] or nullptr
  float* max_logits;         ///< [num_rows, num_heads, max_splits]
  void* tmp_out;             ///< [num_rows, num_heads, max_splits, head_size]
  int tmp_out_f32;           ///< 1: tmp_out is float32 (auto path), 0: T (V2 contract)
  /// 1: every split writes partials (V2). 0: a sequence that fits one split writes `out`
  /// directly and only longer ones write partials (auto).
  int always_partials;
  /// The Hopper bulk kernel's ring: its slots (BulkTraits::stages of the launch's ring size),
  /// set by its launcher with the shared memory that holds them; unused by the other kernels.
  int ring_slots;
};

struct ReduceKernelParams {
  void* out;
  float* lse;  ///< [num_rows, num_heads] or nullptr
  const float* exp_sums;
  const float* max_logits;
  const void* tmp_out;
  const std::int32_t* seq_lens;
  const std::int32_t* query_start_loc;  ///< or nullptr
  LogitsRule rule;  ///< for the attended span (window)
  int num_seqs;
  int tmp_out_f32;
  int num_heads;
  int head_size;
  int partition_size;
  int max_splits;    ///< partition dimension of the partial tensors
  int num_launched;  ///< splits the attention kernel ran (gridDim.z)
  int skip_single;  ///< 1: sequences with one split were written by the attention kernel
};

/// Tokens per tile of the attention kernels: the attended span starts on a multiple of it.
inline constexpr int kSpanAlign = 32;

}  // namespace pagedattn::detail::cuda
