// The backends behind the public API. The API validates (core/validate.h), then calls one of
// these; each backend trusts the AttentionShape it is given.
#pragma once

#include <cstddef>

#include "core/validate.h"
#include "pagedattn/attention.h"
#include "pagedattn/cache_ops.h"

namespace pagedattn::detail {

/// The error for CUDA tensors reaching a build without the CUDA backend.
[[noreturn]] void fail_no_cuda(const char* op);

namespace cpu {
void attention_v1(const PagedAttentionParams& p, const AttentionShape& s);
void attention_v2(const PagedAttentionParams& p, const AttentionShape& s, const V2Workspace& ws);
void reshape_and_cache(const ReshapeAndCacheParams& p, const CacheShape& s);
/// merge_attention_states on host arrays (validated).
void merge_states(const MergeStatesParams& p, const MergeShape& s);
/// Copies block src to dst, in every key and value cache, for every pair of p.block_mapping.
void copy_blocks(const CopyBlocksParams& p);
}  // namespace cpu

#ifdef PAGEDATTN_WITH_CUDA
namespace cuda {
void attention_v1(const PagedAttentionParams& p, const AttentionShape& s);
void attention_v2(const PagedAttentionParams& p, const AttentionShape& s, const V2Workspace& ws);
std::size_t auto_workspace_size(const PagedAttentionParams& p, const AttentionShape& s);
/// The auto path, planned once per call: checks `ws`/`ws_bytes` against the plan (size and
/// 256-byte alignment), runs checked mode when asked, then launches.
void attention_auto(const PagedAttentionParams& p, const AttentionShape& s, void* ws, std::size_t ws_bytes);
/// Checked mode on the GPU: a small kernel scans seq_lens and block tables; the first bad
/// entry becomes a kDataError naming the sequence and entry.
void check_attention_data(const PagedAttentionParams& p, const AttentionShape& s);
/// Throws what attention_auto would before launching (instance in this build, alignment).
void check_supported(const PagedAttentionParams& p, const AttentionShape& s);
void merge_states(const MergeStatesParams& p, const MergeShape& s);
void reshape_and_cache(const ReshapeAndCacheParams& p, const CacheShape& s);
void copy_blocks(const CopyBlocksParams& p);
void swap_blocks(const SwapBlocksParams& p, std::size_t bytes_per_block);
}  // namespace cuda
#endif

}  // namespace pagedattn::detail
