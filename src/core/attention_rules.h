// The attention semantics every backend shares (SPEC §3 and §3b), written once for the host
// and the device:
//   - QueryRows: which query rows a sequence owns and where each sits in the sequence;
//   - LogitsRule: the logit transform (scale is folded in by the caller, then soft-cap, then
//     ALiBi) and the masks (causal position, sliding window, block-sparse) of a (row, token);
//   - attended_span: the cache tokens any row of a sequence attends (what a kernel must read,
//     and what the split planner sizes work from);
//   - the online-softmax state (running max m, sum l): NaN-propagating max_nan, rescale and
//     merge_weight for merging two states exactly;
//   - lse_of / merge weights: the epilogue's log-sum-exp and the merge of partial states.
// The CUDA kernels, the CUDA reduce and merge, and the CPU backend all use these; the float64
// reference (src/reference/) keeps its own independent code.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define PAGEDATTN_HD __host__ __device__ __forceinline__
#else
#define PAGEDATTN_HD inline
#endif

namespace pagedattn::detail {

PAGEDATTN_HD float neg_inf() { return -std::numeric_limits<float>::infinity(); }

/// exp as each side computes it: __expf on the device (2 ulp), std::exp on the host.
PAGEDATTN_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return std::exp(x);
#endif
}

/// max that propagates NaN (fmaxf and std::max drop it, which would turn a NaN logit into a
/// finite output: SPEC §3 forbids that). One instruction on sm_80+.
PAGEDATTN_HD float max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return (a != a || b != b) ? a + b : (a > b ? a : b);
#endif
}

/// The query rows of one sequence: without query_start_loc, row = seq and q_len = 1.
struct QueryRows {
  int first;  ///< row index of the sequence's token 0
  int count;  ///< q_len
};
PAGEDATTN_HD QueryRows query_rows(const std::int32_t* query_start_loc, int seq) {
  if (query_start_loc == nullptr) return {seq, 1};
  const int a = query_start_loc[seq];
  const int b = query_start_loc[seq + 1];
  return {a, b - a};
}

/// Logit transform and masks of one call (SPEC §3b order: scale -> soft-cap -> + ALiBi ->
/// causal, window and block-sparse masks). Plain data, copied into kernel parameters.
struct LogitsRule {
  float soft_cap = 0.0f;      ///< 0: off
  float inv_soft_cap = 0.0f;  ///< 1 / soft_cap
  int window_left = -1;       ///< -1: off
  // block-sparse (SPEC §3); sparse == 0 turns it off
  int sparse = 0;
  int sparse_local_blocks = 0;
  int sparse_vert_stride = 0;
  int sparse_block_size = 0;
  int sparse_sliding_step = 0;
  int tp_rank = 0;
  int num_heads = 0;
  int num_kv_heads = 0;

  /// s (already scaled) after the soft-cap.
  PAGEDATTN_HD float cap(float s) const { return soft_cap > 0.0f ? soft_cap * tanhf(s * inv_soft_cap) : s; }
  /// The scaled logit `s` of a row at position p for token t: soft-cap, then ALiBi.
  PAGEDATTN_HD float logit(float s, float slope, int t, int p) const {
    return cap(s) + slope * static_cast<float>(t - p);
  }
  /// First token a row at position p may attend (the window); the last is p itself.
  PAGEDATTN_HD int first_token(int p) const {
    if (window_left < 0) return 0;
    const int f = p - window_left;
    return f > 0 ? f : 0;
  }
  /// Block-sparse rule (SPEC §3, query block taken from p) for query head `head` of kv head
  /// `kv_head` and the cache block whose first token is `block_first_token`.
  PAGEDATTN_HD bool block_attended(int p, int head, int kv_head, int block_first_token) const {
    if (!sparse) return true;
    const int B = sparse_block_size;
    const int qb = p / B;
    const int kb = block_first_token / B;
    if (kb > qb - sparse_local_blocks) return true;
    const long long step = sparse_sliding_step;
    const long long off = step >= 0 ? (static_cast<long long>(tp_rank) * num_heads + head) * step + 1
                                    : (static_cast<long long>(tp_rank) * num_kv_heads + kv_head) * (-step) + 1;
    return (kb + off) % sparse_vert_stride == 0;
  }
};

/// Cache tokens [lo, hi) that some query row of a sequence attends: rows sit at positions
/// seq_len - q_len .. seq_len - 1, so the span ends at seq_len and, with a window, starts at
/// the first row's window. lo is rounded down to `align` tokens (a multiple the kernels' vector
/// loads need; tokens before the true start are masked per row).
struct Span {
  int lo, hi;
};
PAGEDATTN_HD Span attended_span(const LogitsRule& r, int seq_len, int q_len, int align) {
  if (seq_len <= 0) return {0, 0};
  int lo = r.first_token(seq_len - q_len);
  lo -= lo % align;
  return {lo, seq_len};
}

/// Splits of `part` tokens covering a span (0 for an empty one).
PAGEDATTN_HD int span_splits(Span s, int part) { return s.hi > s.lo ? (s.hi - s.lo + part - 1) / part : 0; }

/// The factor exp(m_old - m_new) that rescales what was accumulated under m_old (0 when
/// nothing was: m_old = -inf; NaN stays NaN).
PAGEDATTN_HD float rescale(float m_old, float m_new) {
  return m_new == neg_inf() ? 1.0f : fast_exp(m_old - m_new);
}

/// Weight exp(m - M) * l of a partial state (m, l) under the merged max M; 0 for an empty
/// state (l == 0), NaN when either is NaN.
PAGEDATTN_HD float merge_weight(float m, float l, float M) {
  if (l == 0.0f) return 0.0f;
  return l * fast_exp(m - M);
}

/// ln(sum exp(s)) of a row from its state: m + ln(l); -inf for a row that attended nothing.
PAGEDATTN_HD float lse_of(float m, float l) {
  if (l == 0.0f) return neg_inf();
  return m + logf(l);
}

/// Weights of two states given by their log-sum-exp (merge_attention_states): w_x = exp(lse_x
/// - M), M = max(lse_a, lse_b); a -inf state weighs 0.
struct MergeWeights {
  float wa, wb, lse;  ///< lse: the merged log-sum-exp
};
PAGEDATTN_HD MergeWeights merge_lse(float lse_a, float lse_b) {
  const float M = max_nan(lse_a, lse_b);
  if (M == neg_inf()) return {0.0f, 0.0f, neg_inf()};
  const float wa = lse_a == neg_inf() ? 0.0f : fast_exp(lse_a - M);
  const float wb = lse_b == neg_inf() ? 0.0f : fast_exp(lse_b - M);
  const float s = wa + wb;
  return {wa / s, wb / s, M + logf(s)};
}

}  // namespace pagedattn::detail
