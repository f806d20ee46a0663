// Validation of the cache operations beyond reshape_and_cache's (which lives in
// validate.h): copy_blocks, swap_blocks, and the checked-mode scans of host-resident
// slot mappings and block mappings. Everything throws pagedattn::Error with a full message.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/validate.h"
#include "pagedattn/cache_ops.h"

namespace pagedattn::detail {

/// Shape facts of a validated copy_blocks call.
struct CopyBlocksShape {
  std::int64_t num_blocks = 0;  ///< blocks per cache (dimension 0 of every cache)
  std::int64_t num_pairs = 0;   ///< rows of block_mapping
  Device device{};              ///< device of every cache and of block_mapping
};
/// Every layer's key and value caches agree in shape, dtype and device; block_mapping is a
/// [n, 2] int64 tensor on the caches' device.
CopyBlocksShape validate_copy_blocks(const CopyBlocksParams& p);

/// Shape facts of a validated swap_blocks call.
struct SwapBlocksShape {
  std::int64_t src_blocks = 0;
  std::int64_t dst_blocks = 0;
  std::int64_t num_pairs = 0;
  std::size_t bytes_per_block = 0;  ///< one block is one contiguous run of this many bytes
};
/// src and dst agree in per-block shape and dtype and are packed from dimension 1 on;
/// block_mapping is a [n, 2] int64 host tensor.
SwapBlocksShape validate_swap_blocks(const SwapBlocksParams& p);

/// Checked mode of reshape_and_cache on a host slot_mapping: the first slot
/// >= num_blocks * block_size becomes a kDataError. Negative slots are padding.
void check_slot_mapping_host(const ReshapeAndCacheParams& p, const CacheShape& s);

/// The first (src, dst) pair of a host block_mapping with src outside [0, src_blocks) or
/// dst outside [0, dst_blocks) becomes a kDataError naming the pair.
void check_block_pairs_host(const TensorView& block_mapping, std::int64_t src_blocks, std::int64_t dst_blocks,
                            const char* op);

/// The checked-mode errors of the cache ops, one wording for every backend.
[[noreturn]] void fail_bad_slot(const CacheShape& s, std::int64_t token, std::int64_t slot);
[[noreturn]] void fail_bad_block(const char* op, std::int64_t pair, bool source, std::int64_t block,
                                 std::int64_t num_blocks);

}  // namespace pagedattn::detail
