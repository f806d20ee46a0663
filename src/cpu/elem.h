// Element access for the CPU backend: one small traits type per storage format, so the
// kernels are written once over (query dtype, cache format) and instantiated per pair.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "core/numeric.h"
#include "pagedattn/fp8.h"
#include "pagedattn/types.h"

namespace pagedattn::detail::cpu {

/// Branch-free float16 -> float32 (exact), so loops over a block vectorise. Subnormals go
/// through an int -> float conversion rather than denormal arithmetic, so the result does
/// not depend on the FTZ/DAZ state of the calling thread.
inline float half_to_float_fast(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t em = h & 0x7fffu;
  const float normal = bits_float((em << 13) + 0x38000000u);       // rebias exponent by 112
  const float subnormal = float(std::int32_t(em)) * (1.0f / 16777216.0f);  // man * 2^-24
  const float special = bits_float(0x7f800000u | (em << 13));      // inf / NaN keep the payload
  const float mag = em < 0x0400u ? subnormal : (em >= 0x7c00u ? special : normal);
  return bits_float(float_bits(mag) | sign);
}

/// float32 values (query/out/cache dtype float32).
struct F32 {
  using Storage = float;
  static float load(Storage v) { return v; }
  static Storage store(float f) { return f; }
};
/// IEEE float16, stored as its bits.
struct F16 {
  using Storage = std::uint16_t;
  static float load(Storage v) { return half_to_float_fast(v); }
  static Storage store(float f) { return float_to_half(f); }
};
/// bfloat16, stored as its bits.
struct BF16 {
  using Storage = std::uint16_t;
  static float load(Storage v) { return bf16_to_float(v); }
  static Storage store(float f) { return float_to_bf16(f); }
};
/// One fp8 byte; decoded through a 256-entry table that already holds decode(byte) * scale.
struct Fp8 {
  using Storage = std::uint8_t;
};

/// A decode table for an fp8 cache: entry b = fp8_to_float(b) * scale.
struct Fp8Table {
  std::array<float, 256> v{};
  Fp8Table() = default;
  Fp8Table(CacheDType kind, float scale) {
    for (int b = 0; b < 256; ++b) v[b] = fp8_to_float(static_cast<std::uint8_t>(b), kind) * scale;
  }
};

/// Decodes `n` contiguous cache elements into floats. `table` is used by Fp8 only.
template <class C>
inline void decode_run(const typename C::Storage* src, float* dst, int n, const Fp8Table& table) {
  if constexpr (std::is_same_v<C, Fp8>) {
    for (int i = 0; i < n; ++i) dst[i] = table.v[src[i]];
  } else {
    (void)table;
    for (int i = 0; i < n; ++i) dst[i] = C::load(src[i]);
  }
}

/// Decodes one cache element.
template <class C>
inline float decode_one(typename C::Storage v, const Fp8Table& table) {
  if constexpr (std::is_same_v<C, Fp8>) {
    return table.v[v];
  } else {
    (void)table;
    return C::load(v);
  }
}

}  // namespace pagedattn::detail::cpu
