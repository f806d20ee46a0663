// Software fp8 codec (SPEC §3 "FP8 KV cache"): host-side conversions that reproduce the
// GPU's own conversion instructions bit for bit (checked against tests/data/fp8/).
// No CUDA types here: the header is usable by any host code.
#pragma once

#include <cstdint>

#include "pagedattn/types.h"

namespace pagedattn {

/// Decodes an E4M3 "fn" byte (bias 7, no infinities). Exact: every code is a float32.
/// 0x7F and 0xFF are NaN and decode to the canonical NaN 0x7FFFFFFF (as the GPU's
/// fp8 -> half -> float path produces); 0x80 decodes to -0.0. Largest finite: +-448.
float fp8_e4m3_to_float(std::uint8_t code);

/// Decodes an E5M2 byte (IEEE-like, bias 15). Exact. 0x7C / 0xFC are +-inf; the other
/// codes with an all-ones exponent are NaN and decode to the canonical NaN 0x7FFFFFFF.
/// Largest finite: +-57344.
float fp8_e5m2_to_float(std::uint8_t code);

/// Encodes a float as E4M3 "fn", rounding to nearest even and saturating: anything whose
/// magnitude rounds beyond 448, infinities included, becomes +-448 (0x7E / 0xFE).
/// Any NaN becomes 0x7F whatever its sign. Values below half the smallest subnormal
/// (2^-10) become a zero of the input's sign.
std::uint8_t float_to_fp8_e4m3(float value);

/// Encodes a float as E5M2, rounding to nearest even and saturating: anything whose
/// magnitude rounds beyond 57344, infinities included, becomes +-57344 (0x7B / 0xFB).
/// Any NaN becomes 0x7F whatever its sign. Values below half the smallest subnormal
/// (2^-17) become a zero of the input's sign.
std::uint8_t float_to_fp8_e5m2(float value);

/// Decodes `code` in the fp8 format `format` (kFp8E4M3 or kFp8E5M2).
/// Throws pagedattn::Error (kInvalidArgument) for CacheDType::kAuto, which is not fp8.
float fp8_to_float(std::uint8_t code, CacheDType format);

/// Encodes `value` in the fp8 format `format` (kFp8E4M3 or kFp8E5M2), saturating.
/// Throws pagedattn::Error (kInvalidArgument) for CacheDType::kAuto, which is not fp8.
std::uint8_t float_to_fp8(float value, CacheDType format);

}  // namespace pagedattn
