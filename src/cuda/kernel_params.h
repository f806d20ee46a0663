// The one parameter struct every attention kernel takes, passed by value as a
// __grid_constant__. Built on the host by the launcher (launch.cu) from a validated call.
#pragma once

#include <cstdint>

namespace pagedattn::detail::cuda {

/// Query heads per CTA on the tensor-core path (the mma n dimension); the launcher sizes
/// the grid with it.
inline constexpr int kMmaHeads = 8;

struct AttentionKernelParams {
  // ---- inputs
  const void* query;          ///< [num_seqs, num_heads, head_size] T; row stride q_stride
  const void* key_cache;      ///< [num_blocks, num_kv_heads, head_size/x, block_size, x]
  const void* value_cache;    ///< [num_blocks, num_kv_heads, head_size, block_size]
  const std::int32_t* block_tables;  ///< [num_seqs, bt_stride]
  const std::int32_t* seq_lens;      ///< [num_seqs]
  const float* alibi_slopes;         ///< [num_heads] or nullptr
  std::int64_t q_stride;
  std::int64_t k_block_stride, k_head_stride;  ///< elements
  std::int64_t v_block_stride, v_head_stride;  ///< elements
  std::int64_t bt_stride;
  float qk_scale;  ///< scale * k_scale (k_scale folded into the dot product)
  float v_scale;
  int num_heads;
  int num_kv_heads;
  int group_size;      ///< num_heads / num_kv_heads
  int head_tiles;      ///< ceil(group_size / heads-per-CTA): CTAs along one kv head
  int block_size;
  int block_shift;     ///< log2(block_size)
  // ---- split along the sequence
  int partition_size;  ///< tokens per split (multiple of 32); >= every seq_len for one pass
  int max_splits;      ///< gridDim.z; the partial tensors' partition dimension
  // ---- block-sparse (SPEC §3); sparse == 0 turns it off
  int sparse;
  int sparse_local_blocks;
  int sparse_vert_stride;
  int sparse_block_size;
  int sparse_sliding_step;
  int tp_rank;
  // ---- outputs
  void* out;                 ///< [num_seqs, num_heads, head_size] T, contiguous
  float* exp_sums;           ///< [num_seqs, num_heads, max_splits] or nullptr
  float* max_logits;         ///< [num_seqs, num_heads, max_splits]
  void* tmp_out;             ///< [num_seqs, num_heads, max_splits, head_size]
  int tmp_out_f32;           ///< 1: tmp_out is float32 (auto path), 0: T (V2 contract)
  /// 1: every split writes partials (V2). 0: a sequence that fits one split writes `out`
  /// directly and only longer ones write partials (auto).
  int always_partials;
};

struct ReduceKernelParams {
  void* out;
  const float* exp_sums;
  const float* max_logits;
  const void* tmp_out;
  const std::int32_t* seq_lens;
  int tmp_out_f32;
  int num_heads;
  int head_size;
  int partition_size;
  int max_splits;    ///< partition dimension of the partial tensors
  int num_launched;  ///< splits the attention kernel ran (gridDim.z)
  int skip_single;  ///< 1: sequences with one split were written by the attention kernel
};

}  // namespace pagedattn::detail::cuda
