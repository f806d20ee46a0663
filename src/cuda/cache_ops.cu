// CUDA cache operations (SPEC §6): reshape_and_cache, copy_blocks, swap_blocks.
#include <algorithm>

#include "core/backend.h"
#include "core/check.h"
#include "core/validate_cache.h"
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/device_guard.h"

namespace pagedattn::detail::cuda {
namespace {

struct CacheWriteParams {
  const void* key;
  const void* value;
  void* key_cache;
  void* value_cache;
  const std::int64_t* slot_mapping;
  std::int64_t key_stride, value_stride;  ///< token stride of key/value (elements)
  std::int64_t k_block_stride, k_head_stride, v_block_stride, v_head_stride;
  int num_kv_heads, head_size, block_size, x;
  float k_scale, v_scale;  ///< fp8: byte = encode(x / scale)
  const float* k_scales;   ///< [num_kv_heads] per-head scales, or nullptr (then k_scale / v_scale)
  const float* v_scales;
};

template <typename T, CacheKind C>
__device__ __forceinline__ typename CacheElem<T, C>::type encode(float v, float scale) {
  if constexpr (C == CacheKind::kSame) {
    (void)scale;
    return from_float<T>(v);
  } else {
    constexpr __nv_fp8_interpretation_t kind = C == CacheKind::kE4M3 ? __NV_E4M3 : __NV_E5M2;
    // stored byte = encode(x / scale): an IEEE division (not a reciprocal) matches the CPU bit for bit
    return static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(v / scale, __NV_SATFINITE, kind));
  }
}

/// One CTA per token; threads over (kv head, dimension).
template <typename T, CacheKind C>
__global__ void reshape_and_cache_kernel(const __grid_constant__ CacheWriteParams p) {
  using CacheT = typename CacheElem<T, C>::type;
  const std::int64_t token = blockIdx.x;
  const std::int64_t slot = p.slot_mapping[token];
  if (slot < 0) return;  // padding
  const std::int64_t block = slot / p.block_size;
  const int off = static_cast<int>(slot % p.block_size);
  const T* k = static_cast<const T*>(p.key) + token * p.key_stride;
  const T* v = static_cast<const T*>(p.value) + token * p.value_stride;
  auto* kc = static_cast<CacheT*>(p.key_cache);
  auto* vc = static_cast<CacheT*>(p.value_cache);
  const int n = p.num_kv_heads * p.head_size;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int h = i / p.head_size;
    const int d = i % p.head_size;
    const std::int64_t kidx = block * p.k_block_stride + h * p.k_head_stride +
                              static_cast<std::int64_t>(d / p.x) * p.block_size * p.x + off * p.x + d % p.x;
    const std::int64_t vidx = block * p.v_block_stride + h * p.v_head_stride + static_cast<std::int64_t>(d) * p.block_size + off;
    kc[kidx] = encode<T, C>(to_float(k[i]), p.k_scales != nullptr ? p.k_scales[h] : p.k_scale);
    vc[vidx] = encode<T, C>(to_float(v[i]), p.v_scales != nullptr ? p.v_scales[h] : p.v_scale);
  }
}

template <typename T>
void launch_cache_write(CacheDType c, const CacheWriteParams& k, std::int64_t tokens, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(tokens));
  const int threads = std::min(512, std::max(32, (k.num_kv_heads * k.head_size + 31) / 32 * 32));
  if (c == CacheDType::kAuto) reshape_and_cache_kernel<T, CacheKind::kSame><<<grid, threads, 0, stream>>>(k);
  else if (c == CacheDType::kFp8E4M3) reshape_and_cache_kernel<T, CacheKind::kE4M3><<<grid, threads, 0, stream>>>(k);
  else reshape_and_cache_kernel<T, CacheKind::kE5M2><<<grid, threads, 0, stream>>>(k);
  check_launch("reshape_and_cache_kernel launch");
}

constexpr int kMaxLayersPerLaunch = 64;

struct CopyBlocksKernelParams {
  char* caches[2 * kMaxLayersPerLaunch];  ///< key then value cache of each layer
  std::int64_t block_stride_bytes[2 * kMaxLayersPerLaunch];
  std::int64_t head_stride_bytes[2 * kMaxLayersPerLaunch];
  const std::int64_t* mapping;  ///< [n, 2] (src, dst), device memory
  std::int64_t segment_bytes;   ///< contiguous bytes of one (block, head)
  int num_heads;
  int num_caches;
};

/// grid: (pair, cache); threads copy each head's contiguous segment in 16-byte words when aligned.
__global__ void copy_blocks_kernel(const __grid_constant__ CopyBlocksKernelParams p) {
  const std::int64_t src = p.mapping[2 * blockIdx.x];
  const std::int64_t dst = p.mapping[2 * blockIdx.x + 1];
  const int c = blockIdx.y;
  char* base = p.caches[c];
  for (int h = 0; h < p.num_heads; ++h) {
    const char* s = base + src * p.block_stride_bytes[c] + h * p.head_stride_bytes[c];
    char* d = base + dst * p.block_stride_bytes[c] + h * p.head_stride_bytes[c];
    const bool wide = ((reinterpret_cast<std::uintptr_t>(s) | reinterpret_cast<std::uintptr_t>(d) |
                        static_cast<std::uintptr_t>(p.segment_bytes)) & 15u) == 0;
    if (wide) {
      for (std::int64_t i = threadIdx.x; i < p.segment_bytes / 16; i += blockDim.x)
        reinterpret_cast<uint4*>(d)[i] = reinterpret_cast<const uint4*>(s)[i];
    } else {
      for (std::int64_t i = threadIdx.x; i < p.segment_bytes; i += blockDim.x) d[i] = s[i];
    }
  }
}

}  // namespace

void reshape_and_cache(const ReshapeAndCacheParams& p, const CacheShape& s) {
  DeviceGuard guard(s.device.index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  if (s.num_tokens == 0) return;
  if (s.num_tokens > 0x7fffffff)
    fail(ErrorCode::kInvalidArgument, "reshape_and_cache: num_tokens ", s.num_tokens, " exceeds the CUDA grid limit");
  if (p.checked) {
    std::int64_t v = 0;
    const std::int64_t i = first_out_of_range(p.slot_mapping.data, s.num_tokens, 1, 0, s.num_blocks * s.block_size,
                                              true, s.device.index, p.stream, &v);
    if (i >= 0) fail_bad_slot(s, i, v);
  }
  CacheWriteParams k{};
  k.key = p.key.data;
  k.value = p.value.data;
  k.key_cache = p.key_cache.data;
  k.value_cache = p.value_cache.data;
  k.slot_mapping = static_cast<const std::int64_t*>(p.slot_mapping.data);
  k.key_stride = p.key.strides[0];
  k.value_stride = p.value.strides[0];
  k.k_block_stride = p.key_cache.strides[0];
  k.k_head_stride = p.key_cache.strides[1];
  k.v_block_stride = p.value_cache.strides[0];
  k.v_head_stride = p.value_cache.strides[1];
  k.num_kv_heads = s.num_kv_heads;
  k.head_size = s.head_size;
  k.block_size = s.block_size;
  k.x = s.x;
  k.k_scale = p.k_scale;
  k.v_scale = p.v_scale;
  k.k_scales = p.k_scales.defined() ? static_cast<const float*>(p.k_scales.data) : nullptr;
  k.v_scales = p.v_scales.defined() ? static_cast<const float*>(p.v_scales.data) : nullptr;
  switch (s.dtype) {
    case DType::kFloat16: return launch_cache_write<__half>(p.kv_cache_dtype, k, s.num_tokens, stream);
    case DType::kBFloat16: return launch_cache_write<__nv_bfloat16>(p.kv_cache_dtype, k, s.num_tokens, stream);
    default: return launch_cache_write<float>(p.kv_cache_dtype, k, s.num_tokens, stream);
  }
}

void copy_blocks(const CopyBlocksParams& p) {
  const TensorView& first = p.key_caches.front();
  DeviceGuard guard(first.device.index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  const std::int64_t pairs = p.block_mapping.shape[0];
  if (pairs == 0) return;
  if (pairs > 0x7fffffff) fail(ErrorCode::kInvalidArgument, "copy_blocks: ", pairs, " pairs exceed the CUDA grid limit");
  if (p.checked) {
    std::int64_t v = 0;
    const std::int64_t i = first_out_of_range(p.block_mapping.data, 2 * pairs, 1, 0, first.shape[0], false,
                                              first.device.index, p.stream, &v);
    if (i >= 0) fail_bad_block("copy_blocks", i / 2, i % 2 == 0, v, first.shape[0]);
  }
  const std::int64_t esize = static_cast<std::int64_t>(dtype_size(first.dtype));
  std::int64_t inner = 1;  // elements of one (block, head) segment: dims 2.. are contiguous
  for (int d = 2; d < first.ndim; ++d) inner *= first.shape[d];
  const int layers = static_cast<int>(p.key_caches.size());
  for (int l0 = 0; l0 < layers; l0 += kMaxLayersPerLaunch) {
    CopyBlocksKernelParams k{};
    const int n = std::min(kMaxLayersPerLaunch, layers - l0);
    for (int i = 0; i < n; ++i) {
      for (int kv = 0; kv < 2; ++kv) {
        const TensorView& t = kv == 0 ? p.key_caches[l0 + i] : p.value_caches[l0 + i];
        k.caches[2 * i + kv] = static_cast<char*>(t.data);
        k.block_stride_bytes[2 * i + kv] = t.strides[0] * esize;
        k.head_stride_bytes[2 * i + kv] = t.strides[1] * esize;
      }
    }
    k.mapping = static_cast<const std::int64_t*>(p.block_mapping.data);
    k.segment_bytes = inner * esize;
    k.num_heads = static_cast<int>(first.shape[1]);
    k.num_caches = 2 * n;
    copy_blocks_kernel<<<dim3(static_cast<unsigned>(pairs), static_cast<unsigned>(2 * n)), 256, 0, stream>>>(k);
    check_launch("copy_blocks_kernel launch");
  }
}

void swap_blocks(const SwapBlocksParams& p, std::size_t bytes_per_block) {
  const Device dev = p.src.device.type == DeviceType::kCUDA ? p.src.device : p.dst.device;
  DeviceGuard guard(dev.index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  const std::int64_t esize = static_cast<std::int64_t>(dtype_size(p.src.dtype));
  const auto* map = static_cast<const std::int64_t*>(p.block_mapping.data);
  const auto* src = static_cast<const char*>(p.src.data);
  auto* dst = static_cast<char*>(p.dst.data);
  for (std::int64_t i = 0; i < p.block_mapping.shape[0]; ++i) {
    const std::int64_t s = map[2 * i], d = map[2 * i + 1];
    check_cuda(cudaMemcpyAsync(dst + d * p.dst.strides[0] * esize, src + s * p.src.strides[0] * esize, bytes_per_block,
                               cudaMemcpyDefault, stream),
               "cudaMemcpyAsync (swap_blocks)");
  }
}

}  // namespace pagedattn::detail::cuda
