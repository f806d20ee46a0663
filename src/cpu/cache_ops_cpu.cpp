// CPU cache operations (SPEC §6): reshape_and_cache and copy_blocks. Inputs were validated
// by core/cache_ops.cpp; these trust the shapes they are given.
#include <cstdint>
#include <cstring>

#include "core/backend.h"
#include "core/check.h"
#include "cpu/elem.h"

namespace pagedattn::detail::cpu {
namespace {

/// Writes every non-padding token of key/value into the caches. T is the input dtype, C the
/// cache format (C == T: the element is copied bit for bit; Fp8: encode(x / scale), with
/// kv head g's own scale when per-head k_scales / v_scales are given).
template <class T, class C>
void reshape_impl(const ReshapeAndCacheParams& p, const CacheShape& s) {
  const auto* key = static_cast<const typename T::Storage*>(p.key.data);
  const auto* value = static_cast<const typename T::Storage*>(p.value.data);
  auto* kc = static_cast<typename C::Storage*>(p.key_cache.data);
  auto* vc = static_cast<typename C::Storage*>(p.value_cache.data);
  const auto* slots = static_cast<const std::int64_t*>(p.slot_mapping.data);
  const std::int64_t key_stride = p.key.shape[0] > 1 ? p.key.strides[0] : std::int64_t(s.num_kv_heads) * s.head_size;
  const std::int64_t value_stride =
      p.value.shape[0] > 1 ? p.value.strides[0] : std::int64_t(s.num_kv_heads) * s.head_size;
  const std::int64_t kb = p.key_cache.strides[0], kh = p.key_cache.strides[1];
  const std::int64_t vb = p.value_cache.strides[0], vh = p.value_cache.strides[1];
  const int D = s.head_size, x = s.x, bs = s.block_size;
  std::uint8_t (*const encode)(float) =
      p.kv_cache_dtype == CacheDType::kFp8E5M2 ? &float_to_fp8_e5m2 : &float_to_fp8_e4m3;
  (void)encode;
  // per-head scales (validated: host float32 [num_kv_heads], fp8 only), else the call's one
  const auto* k_scales = p.k_scales.defined() ? static_cast<const float*>(p.k_scales.data) : nullptr;
  const auto* v_scales = p.v_scales.defined() ? static_cast<const float*>(p.v_scales.data) : nullptr;
  (void)k_scales;
  (void)v_scales;

#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < s.num_tokens; ++t) {
    const std::int64_t slot = slots[t];
    if (slot < 0) continue;  // padding
    const std::int64_t block = slot / bs;
    const int off = static_cast<int>(slot % bs);
    for (int g = 0; g < s.num_kv_heads; ++g) {
      const auto* k_src = key + t * key_stride + std::int64_t(g) * D;
      const auto* v_src = value + t * value_stride + std::int64_t(g) * D;
      auto* k_dst = kc + block * kb + g * kh + std::int64_t(off) * x;  // + (d/x)*bs*x + d%x
      auto* v_dst = vc + block * vb + g * vh + off;                    // + d*bs
      [[maybe_unused]] const float k_scale = k_scales != nullptr ? k_scales[g] : p.k_scale;
      [[maybe_unused]] const float v_scale = v_scales != nullptr ? v_scales[g] : p.v_scale;
      for (int d = 0; d < D; ++d) {
        auto& kd = k_dst[std::int64_t(d / x) * bs * x + d % x];
        auto& vd = v_dst[std::int64_t(d) * bs];
        if constexpr (std::is_same_v<C, Fp8>) {
          // SPEC §6: the stored byte is encode(x / scale), saturating.
          kd = encode(T::load(k_src[d]) / k_scale);
          vd = encode(T::load(v_src[d]) / v_scale);
        } else {
          kd = k_src[d];
          vd = v_src[d];
        }
      }
    }
  }
}

/// Copies block `src` to block `dst` of one cache: a tensor whose dims from 2 on are packed,
/// with arbitrary strides in dims 0 and 1 (a view into a larger allocation works).
void copy_one_block(const TensorView& t, std::int64_t src, std::int64_t dst) {
  const std::size_t es = dtype_size(t.dtype);
  std::int64_t inner = 1;
  for (int d = 2; d < t.ndim; ++d) inner *= t.shape[d];
  auto* base = static_cast<unsigned char*>(t.data);
  if (t.is_contiguous_from(1)) {  // the whole block is one run
    std::memmove(base + dst * t.strides[0] * es, base + src * t.strides[0] * es, std::size_t(inner * t.shape[1]) * es);
    return;
  }
  for (std::int64_t i = 0; i < t.shape[1]; ++i)
    std::memmove(base + (dst * t.strides[0] + i * t.strides[1]) * es, base + (src * t.strides[0] + i * t.strides[1]) * es,
                 std::size_t(inner) * es);
}

}  // namespace

void reshape_and_cache(const ReshapeAndCacheParams& p, const CacheShape& s) {
  const bool fp8 = p.kv_cache_dtype != CacheDType::kAuto;
  switch (s.dtype) {
    case DType::kFloat32: return fp8 ? reshape_impl<F32, Fp8>(p, s) : reshape_impl<F32, F32>(p, s);
    case DType::kFloat16: return fp8 ? reshape_impl<F16, Fp8>(p, s) : reshape_impl<F16, F16>(p, s);
    case DType::kBFloat16: return fp8 ? reshape_impl<BF16, Fp8>(p, s) : reshape_impl<BF16, BF16>(p, s);
    default: fail(ErrorCode::kUnsupported, "cpu reshape_and_cache: unsupported dtype ", dtype_name(s.dtype));
  }
}

void copy_blocks(const CopyBlocksParams& p) {
  const auto* pairs = static_cast<const std::int64_t*>(p.block_mapping.data);
  const std::int64_t n = p.block_mapping.shape[0];
  const std::int64_t layers = static_cast<std::int64_t>(p.key_caches.size());
  // Pairs are applied in order within a layer (a later pair may read an earlier pair's
  // destination); layers are independent.
#pragma omp parallel for schedule(static)
  for (std::int64_t l = 0; l < layers; ++l) {
    for (std::int64_t i = 0; i < n; ++i) {
      copy_one_block(p.key_caches[l], pairs[2 * i], pairs[2 * i + 1]);
      copy_one_block(p.value_caches[l], pairs[2 * i], pairs[2 * i + 1]);
    }
  }
}

}  // namespace pagedattn::detail::cpu
