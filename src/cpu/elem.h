// Element access for the CPU backend: one small traits type per storage format, so the
// kernels are written once over (query dtype, cache format) and instantiated per pair.
#pragma once

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
/// One fp8 byte (the cache ops encode with the scalar codec of pagedattn/fp8.h; the attention
/// kernel decodes in SIMD, attention_kernel.cpp).
struct Fp8 {
  using Storage = std::uint8_t;
};

}  // namespace pagedattn::detail::cpu
