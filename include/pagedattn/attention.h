// Decode-phase paged attention: parameters and entry points (SPEC §2-§5, §7).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "pagedattn/types.h"

namespace pagedattn {

/// Tokens per V2 partition (SPEC §1). The V1/V2 entry points keep this contract.
inline constexpr int kPartitionSize = 512;

/// Block-sparse attention (SPEC §3). Active when vert_stride > 1.
struct BlockSparseParams {
  int local_blocks = 0;       ///< blocksparse_local_blocks
  int vert_stride = 0;        ///< blocksparse_vert_stride; <= 1 turns sparsity off
  int block_size = 0;         ///< blocksparse_block_size; a positive multiple of block_size when active
  int head_sliding_step = 0;  ///< blocksparse_head_sliding_step; >= 0 slides by query head, < 0 by kv head
  bool enabled() const { return vert_stride > 1; }
};

/// Everything one attention call needs. Shapes follow SPEC §2; the fields after `stream` are
/// the variants of SPEC §3b, taken by the auto entry point `paged_attention` only:
/// paged_attention_v1/_v2 keep vLLM's contract and reject them.
///
/// Query rows: without `query_start_loc` every sequence has one query token (row i = sequence
/// i, at position seq_lens[i] - 1); with it, `query`/`out` hold total_query_tokens rows and
/// sequence i owns rows [query_start_loc[i], query_start_loc[i+1]).
struct PagedAttentionParams {
  TensorView out;           ///< [num_query_rows, num_heads, head_size], T, contiguous; written in place
  TensorView query;         ///< [num_query_rows, num_heads, head_size], T; dim 0 may be strided
  TensorView key_cache;     ///< [num_blocks, num_kv_heads, head_size/x, block_size, x], CACHE_T; x = 16/sizeof(CACHE_T)
  TensorView value_cache;   ///< [num_blocks, num_kv_heads, head_size, block_size], CACHE_T
  TensorView block_tables;  ///< [num_seqs, max_num_blocks_per_seq], int32, rows contiguous
  TensorView seq_lens;      ///< [num_seqs], int32
  TensorView alibi_slopes;  ///< optional [num_heads], float32; leave undefined for none
  int num_kv_heads = 0;
  float scale = 1.0f;       ///< multiplies dot(q, k)
  int block_size = 0;       ///< tokens per cache block: 8, 16 or 32
  int max_seq_len = 0;      ///< upper bound of seq_lens; sizes V2 partitions
  CacheDType kv_cache_dtype = CacheDType::kAuto;
  float k_scale = 1.0f;     ///< dequantisation scale of an fp8 key cache
  float v_scale = 1.0f;     ///< dequantisation scale of an fp8 value cache
  int tp_rank = 0;          ///< tensor-parallel rank (block-sparse head offsets)
  BlockSparseParams blocksparse{};
  /// Checked mode (SPEC §7): also verify seq_lens and referenced block ids before computing.
  /// On CUDA this runs a small validation kernel and reads one int back (a host sync).
  bool checked = false;
  /// Auto path only: split every sequence into fixed 512-token partitions, so a sequence's
  /// output is bitwise independent of which other sequences share its batch (the default
  /// planner sizes splits from the whole batch). V1, V2 and the CPU backend are always
  /// batch-invariant. Cost: see docs/performance.md.
  bool batch_invariant = false;
  /// Auto path only, optional: the sum of seq_lens when the caller knows it on the host (an
  /// engine's scheduler does). 0 = unknown: the planner assumes every sequence is
  /// max_seq_len long. With a batch of mixed lengths the hint lets it choose finer splits so
  /// the long sequences do not leave SMs idle; it never affects correctness (any seq_lens up
  /// to max_seq_len are handled by any plan) and not the workspace size. Must be <= num_seqs *
  /// max_seq_len.
  long long total_tokens = 0;
  /// cudaStream_t to run on (nullptr: the legacy default stream). Ignored on the CPU.
  void* stream = nullptr;

  // ---- variants (SPEC §3b): auto entry point only
  /// Sliding window: a query token at position p attends cache tokens t with
  /// p - window_left <= t <= p. -1 = no window. (Hugging Face `sliding_window = W` is W - 1.)
  int window_left = -1;
  /// Logits soft-cap: s = cap * tanh(s / cap) right after the scale. 0 = off.
  float logits_soft_cap = 0.0f;
  /// Optional int32 [num_seqs + 1], non-decreasing from 0: several query tokens per sequence
  /// (speculative decoding, chunked prefill). Sequence i has q_len_i = query_start_loc[i+1] -
  /// query_start_loc[i] new tokens, already written to the cache and counted in seq_lens[i];
  /// its token j sits at p = seq_lens[i] - q_len_i + j and attends t <= p (causal).
  /// Lives on the call's device; its last entry must equal query.shape[0] (checked mode).
  TensorView query_start_loc;
  /// Host-side hint with query_start_loc: the largest q_len_i (0 = unknown: query.shape[0] is
  /// assumed, correct but launching CTAs for rows no sequence has: pass it). Sizes the grid;
  /// checked mode verifies it (unchecked, a hint below the true maximum leaves rows unwritten).
  int max_query_len = 0;
  /// Optional float32 output [num_query_rows, num_heads]: ln sum_t exp(s_t) over the attended
  /// tokens of each row (after scale, soft-cap, ALiBi and masks); -inf for a row that attends
  /// nothing. Contiguous, on the call's device.
  TensorView lse;
  /// Optional per-kv-head fp8 dequantisation scales, float32 [num_kv_heads] on the call's
  /// device (read by the kernel: graph-safe). When given they replace k_scale / v_scale, which
  /// must then stay 1.0. fp8 caches only.
  TensorView k_scales;
  TensorView v_scales;
};

/// V2 workspace tensors (SPEC §2), supplied by the caller.
struct V2Workspace {
  TensorView exp_sums;    ///< [num_seqs, num_heads, max_num_partitions], float32
  TensorView max_logits;  ///< [num_seqs, num_heads, max_num_partitions], float32
  TensorView tmp_out;     ///< [num_seqs, num_heads, max_num_partitions, head_size], T
};

/// ceil(max_seq_len / kPartitionSize), at least 1.
int v2_max_num_partitions(int max_seq_len);

/// V1: one pass per (sequence, head). Throws pagedattn::Error on bad input (nothing written).
void paged_attention_v1(const PagedAttentionParams& p);

/// V2: 512-token partitions write partial results into `ws`, then a reduce writes `out`.
void paged_attention_v2(const PagedAttentionParams& p, const V2Workspace& ws);

/// Bytes of workspace the `paged_attention` (auto) entry point needs for `p`. Depends only on
/// the shapes, max_seq_len and the device (its SM count), never on the data, the
/// total_tokens hint or batch_invariant, so a buffer
/// sized once can be reused for every call of that shape, including under CUDA graph capture.
std::size_t paged_attention_workspace_size(const PagedAttentionParams& p);

/// Auto: picks the fastest path for the shape. `workspace` is device memory (host memory for
/// the CPU backend) of at least paged_attention_workspace_size(p) bytes, 256-byte aligned.
void paged_attention(const PagedAttentionParams& p, void* workspace, std::size_t workspace_bytes);

/// Whether `paged_attention(p, ...)` (the auto path) accepts `p`: every check the call makes
/// before it runs (shapes, dtypes, devices, strides, the dispatch matrix and what this build
/// holds), without throwing. `reason` is empty when ok, else the message the call would raise.
/// The data checks of checked mode (seq_lens, block ids, query_start_loc) are not run.
struct Support {
  bool ok = true;
  std::string reason;
  explicit operator bool() const { return ok; }
};
Support is_supported(const PagedAttentionParams& p);

/// Two partial attentions over disjoint key sets, merged exactly by their log-sum-exp (SPEC
/// §3b): M = max(lse_a, lse_b), w_x = exp(lse_x - M), out = (w_a out_a + w_b out_b) / (w_a +
/// w_b), lse = M + ln(w_a + w_b). A -inf state contributes nothing; two give zeros and -inf.
struct MergeStatesParams {
  TensorView out_a;  ///< [rows, num_heads, head_size], T (float32, float16 or bfloat16), contiguous
  TensorView lse_a;  ///< [rows, num_heads], float32, contiguous
  TensorView out_b;  ///< as out_a
  TensorView lse_b;  ///< as lse_a
  TensorView out;    ///< as out_a; may alias out_a or out_b
  TensorView lse;    ///< optional, as lse_a; may alias lse_a or lse_b
  void* stream = nullptr;  ///< cudaStream_t; ignored on the CPU
};
void merge_attention_states(const MergeStatesParams& p);

/// The V1/V2 choice vLLM makes (SPEC §4), exposed so benchmarks can compare against it.
bool vllm_rule_prefers_v1(int num_seqs, int num_heads, int max_seq_len);

}  // namespace pagedattn
