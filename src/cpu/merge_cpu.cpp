// merge_attention_states on the CPU (SPEC §3b): the exact merge of two partial attentions by
// their log-sum-exp, with the weights of core/attention_rules.h (the CUDA kernel uses the same).
#include <cstdint>

#include "core/attention_rules.h"
#include "core/backend.h"
#include "core/check.h"
#include "cpu/elem.h"

namespace pagedattn::detail::cpu {
namespace {

template <class T>
void merge_impl(const MergeStatesParams& p, const MergeShape& s) {
  using S = typename T::Storage;
  const auto* oa = static_cast<const S*>(p.out_a.data);
  const auto* ob = static_cast<const S*>(p.out_b.data);
  const auto* la = static_cast<const float*>(p.lse_a.data);
  const auto* lb = static_cast<const float*>(p.lse_b.data);
  auto* o = static_cast<S*>(p.out.data);
  auto* lse = s.with_lse ? static_cast<float*>(p.lse.data) : nullptr;
  const std::int64_t rows = s.rows * s.num_heads;
  const int D = s.head_size;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const MergeWeights w = merge_lse(la[r], lb[r]);  // read before out / lse may overwrite an input
    for (int d = 0; d < D; ++d) {
      const std::int64_t i = r * D + d;
      // a state of weight 0 is not multiplied in: its output may be anything (NaN included)
      float v = 0.0f;
      if (w.wa != 0.0f) v += w.wa * T::load(oa[i]);
      if (w.wb != 0.0f) v += w.wb * T::load(ob[i]);
      o[i] = T::store(v);
    }
    if (lse != nullptr) lse[r] = w.lse;
  }
}

}  // namespace

void merge_states(const MergeStatesParams& p, const MergeShape& s) {
  switch (s.dtype) {
    case DType::kFloat32: return merge_impl<F32>(p, s);
    case DType::kFloat16: return merge_impl<F16>(p, s);
    case DType::kBFloat16: return merge_impl<BF16>(p, s);
    default: fail(ErrorCode::kUnsupported, "merge_attention_states: unsupported dtype ", dtype_name(s.dtype));
  }
}

}  // namespace pagedattn::detail::cpu
