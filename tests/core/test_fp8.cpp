// The software fp8 codec against the GPU's own conversions (tests/data/fp8/, recorded on an
// H100 with __nv_cvt_fp8_to_halfraw / __nv_cvt_float_to_fp8(__NV_SATFINITE)). Bit-exact.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/numeric.h"
#include "pagedattn/fp8.h"

namespace pagedattn {
namespace {

using detail::bits_float;
using detail::float_bits;

std::vector<std::vector<std::uint32_t>> read_tsv(const std::string& name) {
  std::ifstream in(std::string(PAGEDATTN_TEST_DATA_DIR) + "/fp8/" + name);
  EXPECT_TRUE(in.good()) << "cannot open " << name;
  std::vector<std::vector<std::uint32_t>> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::vector<std::uint32_t> row;
    std::string field;
    while (ls >> field) row.push_back(static_cast<std::uint32_t>(std::stoul(field, nullptr, 16)));
    rows.push_back(row);
  }
  return rows;
}

std::string hex(std::uint32_t v) {
  std::ostringstream os;
  os << "0x" << std::hex << v;
  return os.str();
}

TEST(Fp8, DecodeAll256CodesMatchGpuBitForBit) {
  const auto rows = read_tsv("fp8_decode.tsv");
  ASSERT_EQ(rows.size(), 256u);
  for (const auto& r : rows) {
    ASSERT_EQ(r.size(), 3u);
    const auto code = static_cast<std::uint8_t>(r[0]);
    // The GPU gives NaN codes the pattern 0x7FFFFFFF; we match it exactly, so bits compare.
    EXPECT_EQ(hex(float_bits(fp8_e4m3_to_float(code))), hex(r[1])) << "E4M3 code " << hex(code);
    EXPECT_EQ(hex(float_bits(fp8_e5m2_to_float(code))), hex(r[2])) << "E5M2 code " << hex(code);
    EXPECT_EQ(float_bits(fp8_to_float(code, CacheDType::kFp8E4M3)), r[1]);
    EXPECT_EQ(float_bits(fp8_to_float(code, CacheDType::kFp8E5M2)), r[2]);
  }
}

TEST(Fp8, EncodeAllRecordedInputsMatchGpuBitForBit) {
  const auto rows = read_tsv("fp8_encode_satfinite.tsv");
  ASSERT_EQ(rows.size(), 203077u);
  int bad4 = 0, bad5 = 0;
  for (const auto& r : rows) {
    ASSERT_EQ(r.size(), 3u);
    const float f = bits_float(r[0]);
    const std::uint8_t e4 = float_to_fp8_e4m3(f), e5 = float_to_fp8_e5m2(f);
    // Report the first few mismatches individually, then just count.
    if (e4 != r[1] && ++bad4 <= 10) ADD_FAILURE() << "E4M3 encode of " << hex(r[0]) << ": " << hex(e4) << " vs GPU " << hex(r[1]);
    if (e5 != r[2] && ++bad5 <= 10) ADD_FAILURE() << "E5M2 encode of " << hex(r[0]) << ": " << hex(e5) << " vs GPU " << hex(r[2]);
    if (float_to_fp8(f, CacheDType::kFp8E4M3) != e4 || float_to_fp8(f, CacheDType::kFp8E5M2) != e5)
      ADD_FAILURE() << "float_to_fp8 disagrees with the per-format function at " << hex(r[0]);
  }
  EXPECT_EQ(bad4, 0);
  EXPECT_EQ(bad5, 0);
}

TEST(Fp8, RoundTripOfEveryFiniteCode) {
  int finite4 = 0, finite5 = 0;
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    const float a = fp8_e4m3_to_float(code);
    if (!std::isnan(a)) {
      ++finite4;
      EXPECT_EQ(float_to_fp8_e4m3(a), code) << "E4M3 " << hex(c) << " = " << a;
    }
    const float b = fp8_e5m2_to_float(code);
    if (std::isfinite(b)) {
      ++finite5;
      EXPECT_EQ(float_to_fp8_e5m2(b), code) << "E5M2 " << hex(c) << " = " << b;
    }
  }
  EXPECT_EQ(finite4, 254);  // all but 0x7F / 0xFF
  EXPECT_EQ(finite5, 248);  // all but +-inf and 6 NaN codes
}

TEST(Fp8, E4M3Boundaries) {
  EXPECT_EQ(fp8_e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0xFE), -448.0f);
  EXPECT_EQ(float_to_fp8_e4m3(448.0f), 0x7E);
  EXPECT_EQ(float_to_fp8_e4m3(464.0f), 0x7E);  // the would-be midpoint to 480: saturates
  EXPECT_EQ(float_to_fp8_e4m3(1e30f), 0x7E);
  EXPECT_EQ(float_to_fp8_e4m3(-1e30f), 0xFE);
  EXPECT_EQ(float_to_fp8_e4m3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(float_to_fp8_e4m3(-std::numeric_limits<float>::infinity()), 0xFE);
  // Ties to even: 1.0 (0x38) and 1.125 (0x39); 1.0625 is the midpoint -> even mantissa 0x38.
  EXPECT_EQ(float_to_fp8_e4m3(1.0625f), 0x38);
  EXPECT_EQ(float_to_fp8_e4m3(1.1875f), 0x3A);  // midpoint of 1.125 (odd) and 1.25 (even)
  EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(1.0625f, 2.0f)), 0x39);
  // Subnormals: step 2^-9; smallest 2^-9 = code 1, largest subnormal 7 * 2^-9 = code 7.
  EXPECT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e4m3_to_float(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e4m3_to_float(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(1.0f, -10)), 0x00);   // tie between 0 and 2^-9 -> 0
  EXPECT_EQ(float_to_fp8_e4m3(-std::ldexp(1.0f, -10)), 0x80);  // ... keeping the sign
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(3.0f, -10)), 0x02);   // 1.5 * 2^-9 -> 2 (even)
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(15.0f, -10)), 0x08);  // 7.5 * 2^-9 -> min normal
  // Zeros and NaN.
  EXPECT_EQ(float_bits(fp8_e4m3_to_float(0x00)), 0x00000000u);
  EXPECT_EQ(float_bits(fp8_e4m3_to_float(0x80)), 0x80000000u);
  EXPECT_EQ(float_to_fp8_e4m3(0.0f), 0x00);
  EXPECT_EQ(float_to_fp8_e4m3(-0.0f), 0x80);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7F)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0xFF)));
  EXPECT_EQ(float_to_fp8_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(float_to_fp8_e4m3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
}

TEST(Fp8, E5M2Boundaries) {
  EXPECT_EQ(fp8_e5m2_to_float(0x7B), 57344.0f);
  EXPECT_EQ(fp8_e5m2_to_float(0xFB), -57344.0f);
  EXPECT_EQ(fp8_e5m2_to_float(0x7C), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fp8_e5m2_to_float(0xFC), -std::numeric_limits<float>::infinity());
  for (int c : {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}) EXPECT_TRUE(std::isnan(fp8_e5m2_to_float(std::uint8_t(c))));
  EXPECT_EQ(float_to_fp8_e5m2(57344.0f), 0x7B);
  EXPECT_EQ(float_to_fp8_e5m2(61440.0f), 0x7B);  // midpoint to 65536 (inf): saturates
  EXPECT_EQ(float_to_fp8_e5m2(std::numeric_limits<float>::infinity()), 0x7B);
  EXPECT_EQ(float_to_fp8_e5m2(-std::numeric_limits<float>::infinity()), 0xFB);
  // Ties to even: 1.0 (0x3C), 1.25 (0x3D), 1.5 (0x3E).
  EXPECT_EQ(float_to_fp8_e5m2(1.125f), 0x3C);
  EXPECT_EQ(float_to_fp8_e5m2(1.375f), 0x3E);
  // Subnormals: step 2^-16.
  EXPECT_EQ(fp8_e5m2_to_float(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(fp8_e5m2_to_float(0x04), std::ldexp(1.0f, -14));
  EXPECT_EQ(float_to_fp8_e5m2(std::ldexp(1.0f, -17)), 0x00);
  EXPECT_EQ(float_to_fp8_e5m2(std::nextafter(std::ldexp(1.0f, -17), 1.0f)), 0x01);
  EXPECT_EQ(float_to_fp8_e5m2(-std::ldexp(1.0f, -17)), 0x80);
  EXPECT_EQ(float_to_fp8_e5m2(0.0f), 0x00);
  EXPECT_EQ(float_to_fp8_e5m2(-0.0f), 0x80);
  EXPECT_EQ(float_bits(fp8_e5m2_to_float(0x80)), 0x80000000u);
  EXPECT_EQ(float_to_fp8_e5m2(std::numeric_limits<float>::quiet_NaN()), 0x7F);
}

TEST(Fp8, AutoIsNotAnFp8Format) {
  test::expect_error([] { fp8_to_float(0x38, CacheDType::kAuto); }, ErrorCode::kInvalidArgument, "auto");
  test::expect_error([] { float_to_fp8(1.0f, CacheDType::kAuto); }, ErrorCode::kInvalidArgument, "auto");
}

}  // namespace
}  // namespace pagedattn
