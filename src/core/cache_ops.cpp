// Public cache operations (SPEC §6): validate, then hand the call to the backend of the
// caches' device. On the host the data checks (slots, block ids) are so cheap next to the
// copy itself that they always run; on CUDA, `checked` asks the backend to verify.
#include <cstring>

#include "core/backend.h"
#include "core/check.h"
#include "core/validate_cache.h"

namespace pagedattn {

void reshape_and_cache(const ReshapeAndCacheParams& p) {
  const detail::CacheShape s = detail::validate_reshape_and_cache(p);
  if (s.device.type == DeviceType::kCUDA) {
#ifdef PAGEDATTN_WITH_CUDA
    if (s.num_tokens == 0) return;
    return detail::cuda::reshape_and_cache(p, s);
#else
    detail::fail_no_cuda("reshape_and_cache");
#endif
  }
  detail::check_slot_mapping_host(p, s);
  if (s.num_tokens == 0) return;
  detail::cpu::reshape_and_cache(p, s);
}

void copy_blocks(const CopyBlocksParams& p) {
  const detail::CopyBlocksShape s = detail::validate_copy_blocks(p);
  if (p.key_caches.empty()) return;
  if (s.device.type == DeviceType::kCUDA) {
#ifdef PAGEDATTN_WITH_CUDA
    if (s.num_pairs == 0) return;
    return detail::cuda::copy_blocks(p);
#else
    detail::fail_no_cuda("copy_blocks");
#endif
  }
  detail::check_block_pairs_host(p.block_mapping, s.num_blocks, s.num_blocks, "copy_blocks");
  if (s.num_pairs == 0) return;
  detail::cpu::copy_blocks(p);
}

void swap_blocks(const SwapBlocksParams& p) {
  const detail::SwapBlocksShape s = detail::validate_swap_blocks(p);
  detail::check_block_pairs_host(p.block_mapping, s.src_blocks, s.dst_blocks, "swap_blocks");
  if (s.num_pairs == 0 || s.bytes_per_block == 0) return;
  if (p.src.device.type == DeviceType::kCUDA || p.dst.device.type == DeviceType::kCUDA) {
#ifdef PAGEDATTN_WITH_CUDA
    return detail::cuda::swap_blocks(p, s.bytes_per_block);
#else
    detail::fail_no_cuda("swap_blocks");
#endif
  }
  const auto* pairs = static_cast<const std::int64_t*>(p.block_mapping.data);
  const std::size_t es = dtype_size(p.src.dtype);
  const auto* src = static_cast<const unsigned char*>(p.src.data);
  auto* dst = static_cast<unsigned char*>(p.dst.data);
  for (std::int64_t i = 0; i < s.num_pairs; ++i)
    std::memmove(dst + pairs[2 * i + 1] * p.dst.strides[0] * std::int64_t(es),
                 src + pairs[2 * i] * p.src.strides[0] * std::int64_t(es), s.bytes_per_block);
}

}  // namespace pagedattn
