// Software fp8 codec. Both formats share one parameterised implementation: a format is
// described by its mantissa width, exponent bias and largest finite code.
#include "pagedattn/fp8.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/check.h"
#include "core/numeric.h"

namespace pagedattn {
namespace {

struct Fp8Format {
  int man_bits;             ///< stored mantissa bits
  int bias;                 ///< exponent bias
  std::uint8_t max_finite;  ///< largest finite magnitude code (sign bit clear)
};

constexpr Fp8Format kE4M3{3, 7, 0x7E};
constexpr Fp8Format kE5M2{2, 15, 0x7B};

// The GPU widens fp8 through half; a NaN comes out as the all-ones pattern (sign included).
constexpr std::uint32_t kCanonicalNaN = 0x7FFFFFFFu;
// Both formats encode NaN as 0x7F (E4M3: the one NaN code; E5M2: all-ones exponent and mantissa).
constexpr std::uint8_t kNaNCode = 0x7F;

// Decodes a finite magnitude code (sign bit clear) of `f`.
float decode_magnitude(std::uint8_t mag, const Fp8Format& f) {
  const int exp_field = mag >> f.man_bits;
  const int man = mag & ((1 << f.man_bits) - 1);
  const int emin = 1 - f.bias;  // exponent of the smallest normal
  if (exp_field == 0) return std::ldexp(static_cast<float>(man), emin - f.man_bits);  // subnormal
  return std::ldexp(static_cast<float>((1 << f.man_bits) + man), exp_field - f.bias - f.man_bits);
}

std::uint8_t encode(float value, const Fp8Format& f) {
  const std::uint32_t bits = detail::float_bits(value);
  const std::uint8_t sign = static_cast<std::uint8_t>((bits >> 24) & 0x80u);
  if (std::isnan(value)) return kNaNCode;
  const float a = std::fabs(value);
  if (std::isinf(a)) return static_cast<std::uint8_t>(sign | f.max_finite);
  if (a == 0.0f) return sign;
  // Quantum (spacing of representable values) at a's binade, never below the subnormal
  // spacing. a / quantum is exact (a power-of-two scaling of a float that stays normal).
  const int emin = 1 - f.bias;
  const int e = std::max(std::ilogb(a), emin);
  const float q = std::ldexp(a, f.man_bits - e);
  // Round to nearest, ties to even (the default floating-point rounding mode).
  const double n = std::nearbyint(static_cast<double>(q));
  // With the quantum of binade e, the code is ((e - emin) << man_bits) + n. This holds for
  // subnormals (e == emin, n in [0, 2^m]) and normals (n in [2^m, 2^(m+1)]); a carry of n
  // into the next binade lands on the right code by itself.
  const double code = std::ldexp(static_cast<double>(e - emin), f.man_bits) + n;
  if (code >= f.max_finite) return static_cast<std::uint8_t>(sign | f.max_finite);  // saturate
  return static_cast<std::uint8_t>(sign | static_cast<std::uint8_t>(code));
}

}  // namespace

float fp8_e4m3_to_float(std::uint8_t code) {
  const std::uint8_t mag = code & 0x7F;
  if (mag == 0x7F) return detail::bits_float(kCanonicalNaN);
  const float v = decode_magnitude(mag, kE4M3);
  return (code & 0x80) ? -v : v;
}

float fp8_e5m2_to_float(std::uint8_t code) {
  const std::uint8_t mag = code & 0x7F;
  if (mag == 0x7C) return (code & 0x80) ? -INFINITY : INFINITY;
  if (mag > 0x7C) return detail::bits_float(kCanonicalNaN);
  const float v = decode_magnitude(mag, kE5M2);
  return (code & 0x80) ? -v : v;
}

std::uint8_t float_to_fp8_e4m3(float value) { return encode(value, kE4M3); }

std::uint8_t float_to_fp8_e5m2(float value) { return encode(value, kE5M2); }

float fp8_to_float(std::uint8_t code, CacheDType format) {
  switch (format) {
    case CacheDType::kFp8E4M3: return fp8_e4m3_to_float(code);
    case CacheDType::kFp8E5M2: return fp8_e5m2_to_float(code);
    case CacheDType::kAuto: break;
  }
  detail::fail(ErrorCode::kInvalidArgument, "fp8_to_float: format is ", cache_dtype_name(format),
               "; must be fp8_e4m3 or fp8_e5m2");
}

std::uint8_t float_to_fp8(float value, CacheDType format) {
  switch (format) {
    case CacheDType::kFp8E4M3: return float_to_fp8_e4m3(value);
    case CacheDType::kFp8E5M2: return float_to_fp8_e5m2(value);
    case CacheDType::kAuto: break;
  }
  detail::fail(ErrorCode::kInvalidArgument, "float_to_fp8: format is ", cache_dtype_name(format),
               "; must be fp8_e4m3 or fp8_e5m2");
}

}  // namespace pagedattn
