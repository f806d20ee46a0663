// The one validation layer (SPEC §7), shared by every backend. Everything here runs on the
// host, before any kernel, and throws pagedattn::Error with a complete message.
#pragma once

#include <array>
#include <cstdint>

#include "core/attention_rules.h"
#include "pagedattn/attention.h"
#include "pagedattn/cache_ops.h"

namespace pagedattn::detail {

inline constexpr std::array<int, 9> kHeadSizes = {32, 64, 80, 96, 112, 120, 128, 192, 256};
inline constexpr std::array<int, 3> kBlockSizes = {8, 16, 32};
/// The largest entry of kHeadSizes (sizes fixed-capacity per-lane buffers in the kernels).
constexpr int max_head_size() {
  int m = 0;
  for (int h : kHeadSizes) m = h > m ? h : m;
  return m;
}

/// Shape facts of one validated attention call, derived once.
struct AttentionShape {
  int num_seqs = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_size = 0;
  int block_size = 0;
  std::int64_t num_blocks = 0;
  int max_blocks_per_seq = 0;
  int x = 0;                      ///< elements per 16 bytes of the cache dtype
  int max_num_partitions = 0;     ///< V2 partitions for max_seq_len
  DType dtype = DType::kFloat32;  ///< query / out dtype
  DType cache_storage = DType::kFloat32;  ///< element type of the cache tensors
  Device device{};
  std::int64_t q_stride = 0;      ///< query stride(0), elements
  std::int64_t kv_block_stride = 0;  ///< key_cache stride(0) (== value_cache stride(0) not required)
  std::int64_t k_head_stride = 0;
  std::int64_t v_block_stride = 0;
  std::int64_t v_head_stride = 0;
  std::int64_t bt_stride = 0;     ///< block_tables stride(0)
  // variants (SPEC §3b)
  int num_rows = 0;               ///< query rows: query.shape[0] (== num_seqs without query_start_loc)
  int max_q_len = 1;              ///< bound on q_len_i: the max_query_len hint, or num_rows
  bool multi_token = false;       ///< query_start_loc given
  int group_size() const { return num_heads / num_kv_heads; }
};

/// Validates shapes, dtypes, devices, strides and scalars of an attention call.
AttentionShape validate_attention(const PagedAttentionParams& p, const char* op);
/// The LogitsRule (core/attention_rules.h) of a validated call.
LogitsRule make_logits_rule(const PagedAttentionParams& p, const AttentionShape& s);
/// V1/V2 keep vLLM's contract: a call that sets any SPEC §3b field is rejected naming it.
void reject_variants(const PagedAttentionParams& p, const char* op);
/// Validates V2's workspace against the call (SPEC §7 "V2 workspaces large enough").
void validate_v2_workspace(const PagedAttentionParams& p, const AttentionShape& s, const V2Workspace& ws);
/// Checked mode on host-resident seq_lens / block_tables: first bad entry -> kDataError.
void check_attention_data_host(const PagedAttentionParams& p, const AttentionShape& s);
/// The message checked mode gives for a bad entry; shared by the CPU and the CUDA check so
/// they read the same. `kind`: 1 = seq_len > max_seq_len, 2 = seq_len beyond the block table,
/// 3 = negative seq_len, 4 = block id out of range.
[[noreturn]] void fail_attention_data(const PagedAttentionParams& p, const AttentionShape& s, int kind,
                                      int seq, int entry, std::int64_t value);

/// merge_attention_states (SPEC §3b).
struct MergeShape {
  std::int64_t rows = 0;
  int num_heads = 0;
  int head_size = 0;
  DType dtype = DType::kFloat32;
  Device device{};
  bool with_lse = false;
};
MergeShape validate_merge_states(const MergeStatesParams& p);

/// Checked mode's query_start_loc checks on host copies of query_start_loc and seq_lens (the
/// CPU and the CUDA check share them, so both give the same message): starts at 0,
/// non-decreasing, ends at the number of query rows, q_len <= seq_len and <= max_query_len.
void check_query_rows(const PagedAttentionParams& p, const AttentionShape& s, const std::int32_t* qsl,
                      const std::int32_t* lens);

/// Cache operations (SPEC §6).
struct CacheShape {
  std::int64_t num_tokens = 0;
  std::int64_t num_blocks = 0;
  int num_kv_heads = 0;
  int head_size = 0;
  int block_size = 0;
  int x = 0;
  DType dtype = DType::kFloat32;
  DType cache_storage = DType::kFloat32;
  Device device{};
};
CacheShape validate_reshape_and_cache(const ReshapeAndCacheParams& p);

/// Checks shared by the validators: `name` has data; `name` is contiguous from `first_dim`
/// on. Each failure is a kInvalidArgument naming the op, the tensor and its shape.
void require_defined(const TensorView& t, const char* op, const char* name);
void require_contiguous_from(const TensorView& t, const char* op, const char* name, int first_dim);
/// Validates a block mapping of copy_blocks / swap_blocks: contiguous [n, 2] int64 (src, dst) pairs.
void validate_block_mapping(const TensorView& m, const char* op);

}  // namespace pagedattn::detail
