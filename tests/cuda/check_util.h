// Shared checks of the GPU tests: tolerances per dtype, element-wise comparison with the
// float64 reference, the kernels of the registry an instance has.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "cuda/kernel_registry.h"
#include "reference/reference.h"

namespace pagedattn::test {

/// Tolerance on an output element: |got - ref| <= atol + rtol * |ref|.
/// Outputs are softmax-weighted averages of values in [-1, 1], so |out| <= 1.
///  - float32: stored exactly; the error is float32 accumulation over <= 256-term dot
///    products and up to 32k-token sums plus __expf's 2-ulp error: far below 1e-4. Large
///    logits add to it: a logit of magnitude L (ALiBi over long sequences reaches hundreds) is
///    formed in float32 to within a few ulp of L, ~2^-24 L each, and exp(s - m) turns the
///    absolute error of s - m into a relative error of the token's weight, hence of the output
///    (|v| <= 1). tolerance(dtype, L) allows 16 such roundings (8 of s, 8 of m) on top; at
///    L = 259 (a replayed failure, f32 ALiBi) that is 2.5e-4.
///  - float16: the result is rounded to f16 (half an ulp = 2^-11 relative, ulp at 1 = 2^-10);
///    V2 rounds twice (tmp_out in T, then out): allow 2 ulp at magnitude 1.
///  - bfloat16: same with bf16's 8-bit significand (ulp at 1 = 2^-7).
/// fp8 caches add nothing: the reference decodes the same bytes exactly.
struct Tol {
  double atol, rtol;
};
inline Tol tolerance(DType t, double max_abs_logit = 0.0) {
  switch (t) {
    case DType::kFloat16: return {2.0 * 0.0009765625, 2.0 * 0.00048828125};
    case DType::kBFloat16: return {2.0 * 0.0078125, 2.0 * 0.00390625};
    default: return {1e-5 + 16.0 * 0x1p-24 * max_abs_logit, 1e-4};
  }
}

/// The largest |row maximum| of the final logits (float64 reference, every partition of every
/// row): the L of tolerance(dtype, L).
inline double max_abs_logit(const ref::Partials& parts) {
  double L = 0.0;
  for (std::size_t r = 0; r < parts.valid.size(); ++r)
    if (parts.valid[r] && std::isfinite(parts.max_logits[r])) L = std::max(L, std::fabs(parts.max_logits[r]));
  return L;
}

inline ::testing::AssertionResult close(const std::vector<double>& got, const std::vector<double>& want, Tol tol,
                                 int heads, int head_size, const char* what) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " vs " << want.size();
  std::size_t bad = 0, first = 0;
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    const bool ok = std::isfinite(got[i]) && err <= tol.atol + tol.rtol * std::fabs(want[i]);
    if (!ok) {
      if (bad++ == 0) first = i;
    }
    if (std::isfinite(err)) worst = std::max(worst, err);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  const std::size_t row = first / head_size;
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << got.size() << " elements off; first at seq "
                                       << row / heads << " head " << row % heads << " dim " << first % head_size
                                       << ": got " << got[first] << " want " << want[first] << " (max finite error "
                                       << worst << ", atol " << tol.atol << " rtol " << tol.rtol << ")";
}

/// Short names of a dtype and a cache dtype, for parameterised test names.
inline const char* dtype_tag(DType t) { return t == DType::kFloat32 ? "f32" : t == DType::kFloat16 ? "f16" : "bf16"; }
inline const char* cache_tag(CacheDType c) {
  return c == CacheDType::kAuto ? "auto" : c == CacheDType::kFp8E4M3 ? "e4m3" : "e5m2";
}

/// The registry's kernels that the problem's instance has in this build (each is run on purpose).
inline std::vector<std::string> kernels_for(const HostProblem& h) {
  std::vector<std::string> r;
  for (const auto& k : detail::cuda::kernel_specs())
    if (detail::cuda::kernel_unsupported_reason(k.name, h.cfg.dtype, h.cfg.kv_cache_dtype, h.cfg.head_size).empty())
      r.push_back(k.name);
  return r;
}

/// lse against the reference: -inf exactly where the reference has -inf, else absolute error
/// (lse is a log: float32 accumulation and __expf/logf give ~1e-5 relative on the sum).
inline ::testing::AssertionResult close_lse(const std::vector<double>& got, const std::vector<double>& want,
                                            const char* what) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": lse size " << got.size() << " vs " << want.size();
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool ok = std::isinf(want[i]) ? got[i] == want[i] : std::fabs(got[i] - want[i]) <= 1e-3 + 1e-4 * std::fabs(want[i]);
    if (!ok)
      return ::testing::AssertionFailure() << what << ": lse[" << i << "] = " << got[i] << ", reference " << want[i];
  }
  return ::testing::AssertionSuccess();
}

}  // namespace pagedattn::test
