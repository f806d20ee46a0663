// Cache operations around attention (SPEC §6).
#pragma once

#include <cstdint>
#include <vector>

#include "pagedattn/types.h"

namespace pagedattn {

/// Writes new tokens' keys/values into the paged cache.
struct ReshapeAndCacheParams {
  TensorView key;           ///< [num_tokens, num_kv_heads, head_size], T
  TensorView value;         ///< [num_tokens, num_kv_heads, head_size], T
  TensorView key_cache;     ///< [num_blocks, num_kv_heads, head_size/x, block_size, x], CACHE_T
  TensorView value_cache;   ///< [num_blocks, num_kv_heads, head_size, block_size], CACHE_T
  TensorView slot_mapping;  ///< [num_tokens], int64; block_id * block_size + offset, negative = skip
  CacheDType kv_cache_dtype = CacheDType::kAuto;
  float k_scale = 1.0f;     ///< fp8: stored byte = encode(k / k_scale), saturating
  float v_scale = 1.0f;
  /// Optional per-kv-head scales, float32 [num_kv_heads] on the call's device (fp8 only): kv
  /// head g is stored as encode(x / k_scales[g]); k_scale / v_scale must then stay 1.0.
  TensorView k_scales;
  TensorView v_scales;
  bool checked = false;     ///< verify every slot < num_blocks * block_size before writing
  void* stream = nullptr;
};
void reshape_and_cache(const ReshapeAndCacheParams& p);

/// Copies whole blocks src -> dst in every layer's caches (copy-on-write).
struct CopyBlocksParams {
  std::vector<TensorView> key_caches;    ///< one per layer, same shape and dtype
  std::vector<TensorView> value_caches;  ///< one per layer
  TensorView block_mapping;              ///< [n, 2], int64 (src, dst) pairs
  bool checked = false;                  ///< verify every id in [0, num_blocks)
  void* stream = nullptr;
};
void copy_blocks(const CopyBlocksParams& p);

/// Copies blocks between a host and a device cache (or within one device).
struct SwapBlocksParams {
  TensorView src;            ///< [num_blocks_src, ...] cache
  TensorView dst;            ///< [num_blocks_dst, ...] cache, same per-block shape and dtype
  TensorView block_mapping;  ///< [n, 2], int64 (src, dst) pairs; host memory
  void* stream = nullptr;
};
void swap_blocks(const SwapBlocksParams& p);

}  // namespace pagedattn
