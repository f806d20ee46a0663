// Deterministic, hash-based random fill shared by the CPU and the CUDA side of
// pagedattn-bench: element i of a buffer depends only on (seed, i), so both backends build
// the same problem for the same --seed and no RNG state has to live on the device.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PA_BENCH_HD __host__ __device__ __forceinline__
#else
#define PA_BENCH_HD inline
#endif

namespace pagedattn::bench {

/// What a buffer holds; decides the bit patterns the fill writes.
enum class FillKind : std::uint8_t {
  kFloat32,   ///< multiples of 2^-23 in [-1, 1]
  kFloat16,   ///< multiples of 2^-10 in [-1, 1]: exact in fp16, no rounding needed
  kBFloat16,  ///< multiples of 2^-7 in [-1, 1]: exact in bf16
  kFp8E4M3,   ///< finite E4M3 codes with magnitude in [2^-6, 3.75]: never the NaN codes 0x7F/0xFF
  kFp8E5M2,   ///< finite E5M2 codes with magnitude in [2^-6, 3.5]: exponent never all ones
};

/// splitmix64 finaliser of (seed, index).
PA_BENCH_HD std::uint64_t hash64(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// Signed integer uniform in [-m, m] from a hash.
PA_BENCH_HD std::int32_t centered(std::uint64_t h, std::int32_t m) {
  return static_cast<std::int32_t>((h >> 11) % static_cast<std::uint64_t>(2 * m + 1)) - m;
}

PA_BENCH_HD std::uint32_t float_bits(float f) {
  union {
    float f;
    std::uint32_t u;
  } c{};
  c.f = f;
  return c.u;
}

/// fp16 bits of k / 1024 for |k| <= 1024 (every such value is a normal fp16 or zero).
PA_BENCH_HD std::uint16_t half_bits_of_k1024(std::int32_t k) {
  if (k == 0) return 0;
  const std::uint32_t f = float_bits(static_cast<float>(k) / 1024.0f);
  const std::uint32_t sign = (f >> 16) & 0x8000u;
  const std::uint32_t exp = ((f >> 23) & 0xFFu) - 127u + 15u;
  const std::uint32_t mant = (f >> 13) & 0x3FFu;  // exact: k has at most 11 significant bits
  return static_cast<std::uint16_t>(sign | (exp << 10) | mant);
}

/// One element of a buffer of `kind` filled with `seed`, as raw bits (low bytes used).
PA_BENCH_HD std::uint32_t random_bits(FillKind kind, std::uint64_t seed, std::uint64_t i) {
  const std::uint64_t h = hash64(seed, i);
  switch (kind) {
    case FillKind::kFloat32:
      return float_bits(static_cast<float>(centered(h, 1 << 23)) * (1.0f / 8388608.0f));
    case FillKind::kFloat16:
      return half_bits_of_k1024(centered(h, 1024));
    case FillKind::kBFloat16:
      // k / 128 with |k| <= 128 has at most 8 significant bits: the top half of its float bits is exact.
      return float_bits(static_cast<float>(centered(h, 128)) / 128.0f) >> 16;
    case FillKind::kFp8E4M3: {
      const std::uint32_t sign = static_cast<std::uint32_t>(h >> 63) << 7;
      const std::uint32_t exp = 1u + static_cast<std::uint32_t>((h >> 20) & 7u);  // 1..8 of 0..15
      const std::uint32_t mant = static_cast<std::uint32_t>((h >> 40) & 7u);
      return sign | (exp << 3) | mant;
    }
    case FillKind::kFp8E5M2: {
      const std::uint32_t sign = static_cast<std::uint32_t>(h >> 63) << 7;
      const std::uint32_t exp = 9u + static_cast<std::uint32_t>((h >> 20) & 7u);  // 9..16 of 0..31
      const std::uint32_t mant = static_cast<std::uint32_t>((h >> 40) & 3u);
      return sign | (exp << 2) | mant;
    }
  }
  return 0;
}

/// Bytes per element of a buffer of `kind`.
PA_BENCH_HD unsigned fill_element_size(FillKind kind) {
  switch (kind) {
    case FillKind::kFloat32: return 4;
    case FillKind::kFloat16:
    case FillKind::kBFloat16: return 2;
    case FillKind::kFp8E4M3:
    case FillKind::kFp8E5M2: return 1;
  }
  return 1;
}

}  // namespace pagedattn::bench
