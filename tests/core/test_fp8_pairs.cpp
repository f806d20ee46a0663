// The integer fp8-pair decode of GPUs before sm_89 (core/fp8_pairs.h) against the software
// codec, for every pair of codes: each half exact (sign of zero included), NaN where the
// code is NaN, and nothing else NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "core/fp8_pairs.h"
#include "core/numeric.h"
#include "pagedattn/fp8.h"

namespace pagedattn::detail {
namespace {

// f16 bits -> value, and the device's multiply by 256 (exact for these operands)
double f16_value(std::uint32_t half_bits) { return static_cast<double>(half_to_float(static_cast<std::uint16_t>(half_bits))); }

::testing::AssertionResult same_value(double got, float want, unsigned code) {
  if (std::isnan(want)) {
    if (std::isnan(got)) return ::testing::AssertionSuccess();
  } else if (got == want && std::signbit(got) == std::signbit(want)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "code 0x" << std::hex << code << ": got " << got << ", want " << want;
}

TEST(Fp8Pairs, E4M3EveryPairIsExact) {
  int bad = 0;
  for (unsigned two = 0; two < 0x10000u && bad < 5; ++two) {
    const F16x2Scaled s = e4m3x2_to_f16x2_scaled(two);
    for (int h = 0; h < 2; ++h) {
      const unsigned code = (two >> (8 * h)) & 0xffu;
      const std::uint32_t bits = (s.bits >> (16 * h)) & 0xffffu, nan = (s.nan >> (16 * h)) & 0xffffu;
      const float want = fp8_e4m3_to_float(static_cast<std::uint8_t>(code));
      // the device computes (bits as f16) * 256 in f16, then ORs nan into it
      double got = f16_value(bits) * 256.0;
      if (nan != 0) got = f16_value(static_cast<std::uint32_t>(float_to_half(static_cast<float>(got))) | nan);
      EXPECT_EQ(nan != 0, std::isnan(want)) << "code 0x" << std::hex << code;
      const auto r = same_value(got, want, code);
      EXPECT_TRUE(r);
      if (!r || (nan != 0) != std::isnan(want)) ++bad;
    }
  }
}

TEST(Fp8Pairs, E5M2EveryPairIsExact) {
  for (unsigned two = 0; two < 0x10000u; ++two) {
    const std::uint32_t f = e5m2x2_to_f16x2(two);
    for (int h = 0; h < 2; ++h) {
      const unsigned code = (two >> (8 * h)) & 0xffu;
      const float want = fp8_e5m2_to_float(static_cast<std::uint8_t>(code));
      const double got = f16_value((f >> (16 * h)) & 0xffffu);
      if (std::isinf(want)) {
        ASSERT_EQ(got, static_cast<double>(want)) << "code 0x" << std::hex << code;
        continue;
      }
      ASSERT_TRUE(same_value(got, want, code));
    }
  }
}

}  // namespace
}  // namespace pagedattn::detail
