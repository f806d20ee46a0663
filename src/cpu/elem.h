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

/// float32 values (query/out/cache dtype float32).
struct F32 {
  using Storage = float;
  static float load(Storage v) { return v; }
  static Storage store(float f) { return f; }
};
/// IEEE float16, stored as its bits.
struct F16 {
  using Storage = std::uint16_t;
  static float load(Storage v) { return half_to_float(v); }
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
/// Also keeps the format and scale, for decoders that compute instead of looking up
/// (they must reproduce the table bit for bit).
struct Fp8Table {
  std::array<float, 256> v{};
  bool e5m2 = false;
  float scale = 1.0f;
  Fp8Table() = default;
  Fp8Table(CacheDType kind, float s) : e5m2(kind == CacheDType::kFp8E5M2), scale(s) {
    // decoded once per format (a call only scales them: the same products as decoding each)
    static const std::array<float, 256> e4m3 = decoded(CacheDType::kFp8E4M3);
    static const std::array<float, 256> e5m2_codes = decoded(CacheDType::kFp8E5M2);
    const std::array<float, 256>& base = e5m2 ? e5m2_codes : e4m3;
    for (int b = 0; b < 256; ++b) v[b] = base[b] * scale;
  }
  static std::array<float, 256> decoded(CacheDType kind) {
    std::array<float, 256> d{};
    for (int b = 0; b < 256; ++b) d[b] = fp8_to_float(static_cast<std::uint8_t>(b), kind);
    return d;
  }
};

}  // namespace pagedattn::detail::cpu
