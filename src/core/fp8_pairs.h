// fp8 pairs to f16 pairs by integer operations, for GPUs without the fp8 conversion
// instructions (before sm_89): there the CUDA headers decode each element in software, which
// made fp8 caches 6.9x slower on compute_80 code than on compute_89 (docs/build.md). Host and
// device code: tests/core/test_fp8_pairs.cpp checks every pair of codes against the software
// codec (pagedattn/fp8.h).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PAGEDATTN_FP8_HD __host__ __device__ __forceinline__
#else
#define PAGEDATTN_FP8_HD inline
#endif

namespace pagedattn::detail {

/// Two E5M2 bytes (byte 0, byte 1 of `two`) as two f16 (low, high half of the result). E5M2 is
/// the upper byte of an f16 (same exponent and bias, the top 2 of its 10 mantissa bits), so
/// this is exact for every code, infinities and NaNs included.
PAGEDATTN_FP8_HD std::uint32_t e5m2x2_to_f16x2(std::uint32_t two) {
  return ((two & 0xffu) << 8) | ((two & 0xff00u) << 16);
}

/// Two E4M3 "fn" bytes as two f16 scaled by 2^-8 (`bits`), and the NaN halves (`nan`: 0x7FFF
/// in them, 0 elsewhere). The byte's 4 exponent and 3 mantissa bits shift into f16's exponent
/// and mantissa fields: a normal code's exponent e stays e under a bias 8 larger, giving
/// 2^(e-15)(1 + m/8) = value x 2^-8; a subnormal code (e = 0) becomes the f16 subnormal
/// m x 2^-17 = value x 2^-8 as well. So one f16 multiply by 256 (exact: the products are
/// normal f16, at most 448) gives every finite code exactly; OR-ing `nan` into the product
/// turns 0x7F / 0xFF (NaN; the format has no infinities) into f16 NaNs.
struct F16x2Scaled {
  std::uint32_t bits, nan;
};
PAGEDATTN_FP8_HD F16x2Scaled e4m3x2_to_f16x2_scaled(std::uint32_t two) {
  const std::uint32_t y = e5m2x2_to_f16x2(two);  // each byte in bits 8-15 of its half
  const std::uint32_t mag = y & 0x7f007f00u;
  const std::uint32_t bits = (y & 0x80008000u) | (mag >> 1);
  // a half whose 7 magnitude bits are all ones carries into bit 15 (no carry crosses halves)
  const std::uint32_t nan = (((mag + 0x01000100u) & 0x80008000u) >> 15) * 0x7fffu;
  return {bits, nan};
}

}  // namespace pagedattn::detail
