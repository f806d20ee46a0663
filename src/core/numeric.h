// Host-side conversions between float and the 16-bit float formats, round to nearest even.
// Bit-exact with the CUDA intrinsics __float2half_rn / __float2bfloat16_rn and their inverses.
#pragma once

#include <cstdint>
#include <cstring>

namespace pagedattn::detail {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_float(std::uint16_t h) { return bits_float(std::uint32_t(h) << 16); }

inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

/// float16 -> float32, exact and branch-free (the CPU kernel's block loops vectorise it):
/// normals rebias the exponent, subnormals are man * 2^-24, inf/NaN keep their payload.
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t em = h & 0x7fffu;
  const float normal = bits_float((em << 13) + 0x38000000u);              // rebias exponent by 112
  const float subnormal = float(std::int32_t(em)) * (1.0f / 16777216.0f);  // man * 2^-24
  const float special = bits_float(0x7f800000u | (em << 13));             // inf / NaN
  const float mag = em < 0x0400u ? subnormal : (em >= 0x7c00u ? special : normal);
  return bits_float(float_bits(mag) | sign);
}

inline std::uint16_t float_to_half(float f) {
  std::uint32_t u = float_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return std::uint16_t(sign | 0x7e00u);  // NaN
  if (u >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (u < 0x38800000u) {                                        // below 2^-14: subnormal or zero
    // value / 2^-24, rounded to nearest even, by float addition of a magic constant.
    float a = bits_float(u) + 0.5f;  // 0.5 has ulp 2^-24 at exponent -1
    std::uint32_t r = float_bits(a) - 0x3f000000u;
    return std::uint16_t(sign | r);
  }
  std::uint32_t mant_odd = (u >> 13) & 1u;
  u += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round
  return std::uint16_t(sign | (u >> 13));
}

}  // namespace pagedattn::detail
