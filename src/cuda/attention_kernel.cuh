// The paged-attention kernel behind V1, V2's partition step and the auto path.
//
// One CTA handles (sequence, kv head, up to HPC query heads of that kv head's group, one
// split of the sequence). All query heads of the group that share the CTA are computed
// from one read of each K/V element, so under GQA the cache is read once per kv head, not
// once per query head. Four warps walk 32-token tiles of the split; each warp keeps an
// online softmax (running max, running sum, rescaled accumulator) per head, and the warps
// merge in shared memory at the end in a fixed order (bitwise deterministic).
//
// QK: lane = token. The lane streams its key in 16-byte chunks (x elements) straight from
//     the [.., head_size/x, block_size, x] layout: the 32 lanes of a warp read consecutive
//     16-byte chunks of a page, fully coalesced. Queries sit in shared memory (broadcast).
// PV: lane = head dimension (d = lane + 32 i). The lane streams 16 bytes of one value row
//     ([.., head_size, block_size] layout: x consecutive tokens of dimension d) and
//     multiplies them with the tile's probabilities, read from shared memory (broadcast).
#pragma once

#include <cstdint>

#include "core/validate.h"
#include "cuda/common.cuh"
#include "cuda/kernel_params.h"

// Build switch for A/B timing of the value prefetch (CMake option PAGEDATTN_PREFETCH_V).
#ifndef PAGEDATTN_PREFETCH_V
#define PAGEDATTN_PREFETCH_V 1
#endif

namespace pagedattn::detail::cuda {

inline constexpr int kWarps = 4;
inline constexpr int kThreads = kWarps * 32;
inline constexpr int kTile = 32;  ///< tokens per warp iteration

constexpr int largest_divisor_upto(int n, int cap) {
  for (int g = cap; g > 1; --g)
    if (n % g == 0) return g;
  return 1;
}

/// Compile-time shape facts of one kernel instance and its shared-memory plan.
template <typename T, CacheKind C, int D, int HPC>
struct AttentionTraits {
  using CacheT = typename CacheElem<T, C>::type;
  static constexpr int kX = 16 / static_cast<int>(sizeof(CacheT));  ///< elements per 16 bytes
  /// 16-byte chunks per key; the last one is partly padding when x does not divide the head
  /// (fp8 with head_size 120: 8 chunks of 16, elements 120..127 unused)
  static constexpr int kKChunks = (D + kX - 1) / kX;
  static constexpr int kKGroup = largest_divisor_upto(kKChunks, 16);  ///< chunks loaded at once
  static constexpr int kVChunks = kTile / kX;                         ///< value vectors per d per tile
  static constexpr int kND = (D + 31) / 32;                           ///< head dims per lane (PV)
  static_assert(kKChunks % kKGroup == 0, "key chunk groups must tile the head");
  /// Prefetch the whole tile's values into registers: only for one head per CTA (MHA),
  /// where the extra registers cost little occupancy. Measured on the H100 (docs/performance.md):
  /// +2.5% for MHA, but -18% for GQA groups of 4 (178 instead of 128 registers, half the CTAs).
  static constexpr bool kPrefetchV = PAGEDATTN_PREFETCH_V && HPC == 1 && kVChunks * kND * 4 <= 64;
  // shared memory: main loop (queries, probabilities, page ids) and final merge alias
  static constexpr int kMainFloats = HPC * D + kWarps * HPC * kTile + kWarps * kTile;
  static constexpr int kMergeFloats = kWarps * HPC * D + 2 * kWarps * HPC;
  static constexpr int kSmemBytes = 4 * (kMainFloats > kMergeFloats ? kMainFloats : kMergeFloats);
};

/// What one CTA of either attention kernel computes: grid (kv head x row tiles of H query
/// rows, sequence, split). The rows of (sequence, kv head) are query token x head of the GQA
/// group, token-major; row r of the CTA is row row0 + r of them.
struct CtaWork {
  int seq, split, kv_head;
  int group;           ///< heads per kv head
  int row0;            ///< first row of the CTA among the sequence's rows of this kv head
  int nr;              ///< active rows (the last tile may be partial)
  int q_first, q_len;  ///< the sequence's query rows (query/out row index of token 0, count)
  int seq_len, start, end;  ///< split [start, end) of the attended span
  bool empty;           ///< no rows, or the split lies past the span: nothing to do
  bool write_partials;  ///< V2, or a split of a sequence that has several

  // one query token per sequence (plain decode, the common case): no division
  __device__ __forceinline__ int token(int r) const { return q_len == 1 ? 0 : (row0 + r) / group; }
  /// Query head of row r.
  __device__ __forceinline__ int head(int r) const {
    return kv_head * group + (q_len == 1 ? row0 + r : (row0 + r) % group);
  }
  /// Row index into query / out / lse of row r.
  __device__ __forceinline__ int qrow(int r) const { return q_first + token(r); }
  /// Position of row r's query token in the sequence (it attends t <= pos).
  __device__ __forceinline__ int pos(int r) const { return seq_len - q_len + token(r); }
};

/// The CTA's work with `H` query rows per CTA (a constant but for the bulk kernel's row groups).
__device__ __forceinline__ CtaWork cta_work_rows(const AttentionKernelParams& p, int H) {
  CtaWork w;
  w.seq = blockIdx.y;
  w.split = blockIdx.z;
  w.kv_head = blockIdx.x / p.row_tiles;
  w.group = p.group_size;
  w.row0 = (blockIdx.x % p.row_tiles) * H;
  const QueryRows qr = query_rows(p.query_start_loc, w.seq);
  w.q_first = qr.first;
  w.q_len = qr.count;
  w.nr = min(H, qr.count * p.group_size - w.row0);
  w.seq_len = p.seq_lens[w.seq];
  const Span span = attended_span(p.rule, w.seq_len, qr.count, kSpanAlign);
  const int num_splits = max(1, span_splits(span, p.partition_size));  // an empty sequence still writes zeros
  w.start = span.lo + w.split * p.partition_size;
  w.end = min(w.start + p.partition_size, span.hi);
  w.empty = w.nr <= 0 || w.split >= num_splits;
  w.write_partials = p.always_partials || num_splits > 1;
  return w;
}
template <int H>
__device__ __forceinline__ CtaWork cta_work(const AttentionKernelParams& p) {
  return cta_work_rows(p, H);
}

/// Per-CTA fp8 scales: per kv head when the call has them, else per tensor.
struct CtaScales {
  float qk, v;
};
__device__ __forceinline__ CtaScales cta_scales(const AttentionKernelParams& p, int kv_head) {
  if (p.k_scales == nullptr) return {p.qk_scale, p.v_scale};
  return {p.scale * p.k_scales[kv_head], p.v_scales[kv_head]};
}

/// Whether a call needs the variant instances of the kernels (kVar = true): per-row token
/// ranges (query_start_loc, window) or the soft-cap. The plain instances carry neither, so
/// plain decode runs the same instructions as before the variants existed (measured: the
/// variant code in the plain kernel cost 4-6% on GQA, docs/performance.md).
__host__ __device__ inline bool needs_variant_kernel(const AttentionKernelParams& p) {
  return p.rows_vary != 0 || p.rule.soft_cap > 0.0f;
}

/// Bit r set: row r of the CTA attends token t of logical block `lblock` (causal position,
/// window, block-sparse). Only active rows: a padding row must not pull in masked pages.
template <int H, bool kVar>
__device__ __forceinline__ unsigned rows_attending(const AttentionKernelParams& p, const CtaWork& w, const int (&lo)[H],
                                                   const int (&hi)[H], int t, int lblock) {
  unsigned mask = (1u << w.nr) - 1u;
  if (kVar && p.rows_vary) {
    mask = 0u;
#pragma unroll
    for (int r = 0; r < H; ++r)
      if (r < w.nr && t >= lo[r] && t <= hi[r]) mask |= 1u << r;
  }
  if (p.rule.sparse) {
#pragma unroll
    for (int r = 0; r < H; ++r)  // plain instances: every row sits at seq_len - 1
      if (((mask >> r) & 1u) &&
          !p.rule.block_attended(kVar ? hi[r] : w.seq_len - 1, w.head(r), w.kv_head, lblock * p.block_size))
        mask &= ~(1u << r);
  }
  return mask;
}

/// The logit of a row at position `pos` for token t from its scaled dot product `s`: soft-cap
/// and ALiBi (the plain instances have no soft-cap).
template <bool kVar>
__device__ __forceinline__ float row_logit(const AttentionKernelParams& p, float s, float slope, int t, int pos) {
  if constexpr (kVar) return p.rule.logit(s, slope, t, pos);
  return s + slope * static_cast<float>(t - pos);
}

/// Attended token range [lo, hi] of each row of the CTA.
template <int H>
__device__ __forceinline__ void row_bounds(const AttentionKernelParams& p, const CtaWork& w, int (&lo)[H], int (&hi)[H]) {
#pragma unroll
  for (int r = 0; r < H; ++r) {
    hi[r] = w.pos(r);
    lo[r] = p.rule.first_token(hi[r]);
  }
}

/// Last step of either attention kernel (the epilogue): merges the kWarps warps' results in a
/// fixed order (deterministic) and writes `out` (and `lse`), or the split's partials (max
/// logit, exp sum, normalised output). red_acc [kWarps][H][D] holds each warp's accumulator
/// already rescaled to the CTA-wide max; red_m / red_l [kWarps][H] each warp's running max and sum.
/// `thread`: the caller's index among the kThreads threads that write (the bulk kernel's
/// second row group passes its own).
template <typename T, int H, int D>
__device__ __forceinline__ void write_merged(const AttentionKernelParams& p, const CtaWork& w, const float* red_acc,
                                             const float* red_m, const float* red_l, float v_scale,
                                             int thread = static_cast<int>(threadIdx.x)) {
  pdl_trigger();  // the main loop is done: the next kernel may be scheduled
  for (int i = thread; i < w.nr * D; i += kThreads) {
    const int h = i / D;
    const int d = i % D;
    float mx = neg_inf();
#pragma unroll
    for (int k = 0; k < kWarps; ++k) mx = max_nan(mx, red_m[k * H + h]);
    float sum_l = 0.0f, o = 0.0f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) {
      const float mk = red_m[k * H + h];
      sum_l += mk == neg_inf() ? 0.0f : red_l[k * H + h] * __expf(mk - mx);
      o += red_acc[(k * H + h) * D + d];
    }
    o = sum_l == 0.0f ? 0.0f : o / sum_l * v_scale;  // NaN stays NaN
    const std::int64_t row = static_cast<std::int64_t>(w.qrow(h)) * p.num_heads + w.head(h);
    if (!w.write_partials) {
      static_cast<T*>(p.out)[row * D + d] = from_float<T>(o);
      if (d == 0 && p.lse != nullptr) p.lse[row] = lse_of(mx, sum_l);
    } else {
      const std::int64_t prow = row * p.max_splits + w.split;
      if (d == 0) {
        p.max_logits[prow] = mx;
        p.exp_sums[prow] = sum_l;
      }
      if (p.tmp_out_f32)
        static_cast<float*>(p.tmp_out)[prow * D + d] = o;
      else
        static_cast<T*>(p.tmp_out)[prow * D + d] = from_float<T>(o);
    }
  }
}

template <typename T, CacheKind C, int D, int HPC, bool kVar>
__global__ void __launch_bounds__(kThreads)
    paged_attention_kernel(const __grid_constant__ AttentionKernelParams p) {
  pdl_wait();  // the previous kernel's writes (queries, tables, partials) are visible
  using Tr = AttentionTraits<T, C, D, HPC>;
  using CacheT = typename Tr::CacheT;
  constexpr int kX = Tr::kX;
  constexpr int kND = Tr::kND;

  const CtaWork work = cta_work<HPC>(p);
  if (work.empty) return;
  const int seq = work.seq, kv_head = work.kv_head;
  const int start = work.start, end = work.end;
  const CtaScales scales = cta_scales(p, kv_head);

  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* q_s = smem;                          // [HPC][D], scaled by qk_scale
  float* p_s = q_s + HPC * D;                 // [kWarps][HPC][kTile] probabilities

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const T* q = static_cast<const T*>(p.query);
  for (int i = tid; i < HPC * D; i += kThreads) {
    const int h = i / D;
    q_s[i] = h < work.nr ? to_float(q[static_cast<std::int64_t>(work.qrow(h)) * p.q_stride +
                                      static_cast<std::int64_t>(work.head(h)) * D + i % D]) *
                               scales.qk
                         : 0.0f;
  }
  float slope[HPC];
  int lo[HPC], hi[HPC];  // attended tokens [lo, hi] of each row
#pragma unroll
  for (int h = 0; h < HPC; ++h)
    slope[h] = (p.alibi_slopes != nullptr && h < work.nr) ? p.alibi_slopes[work.head(h)] : 0.0f;
  row_bounds<HPC>(p, work, lo, hi);
  __syncthreads();

  const std::int32_t* bt = p.block_tables + static_cast<std::int64_t>(seq) * p.bt_stride;
  const CacheT* kbase = static_cast<const CacheT*>(p.key_cache) + static_cast<std::int64_t>(kv_head) * p.k_head_stride;
  const CacheT* vbase = static_cast<const CacheT*>(p.value_cache) + static_cast<std::int64_t>(kv_head) * p.v_head_stride;
  const int bs = p.block_size;

  float m[HPC], l[HPC], acc[HPC][kND];
#pragma unroll
  for (int h = 0; h < HPC; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int i = 0; i < kND; ++i) acc[h][i] = 0.0f;
  }
  float* my_p = p_s + warp * HPC * kTile;
  // Online-softmax step of one tile: new running max per head, probabilities to my_p, the
  // rescale factor of the accumulators in alpha.
  auto softmax = [&](const float (&s)[HPC], unsigned head_mask, int t, float (&alpha)[HPC]) {
#pragma unroll
    for (int h = 0; h < HPC; ++h) {
      float sh = -INFINITY;
      if (head_mask & (1u << h)) sh = row_logit<kVar>(p, s[h], slope[h], t, kVar ? hi[h] : work.seq_len - 1);
      const float m_new = max_nan(m[h], warp_max(sh));
      float ph = 0.0f;
      alpha[h] = 1.0f;
      if (m_new != -INFINITY) {
        alpha[h] = __expf(m[h] - m_new);  // m[h] == -inf gives 0
        ph = __expf(sh - m_new);          // masked gives 0
      }
      m[h] = m_new;
      l[h] = l[h] * alpha[h] + ph;  // lane-partial sum; reduced once at the end
      my_p[h * kTile + lane] = ph;
    }
    __syncwarp();
#pragma unroll
    for (int h = 0; h < HPC; ++h)
#pragma unroll
      for (int i = 0; i < kND; ++i) acc[h][i] *= alpha[h];
  };
  // PV for one value vector (x tokens of head dim lane + 32 i starting at tile offset j*x);
  // `valid` = tokens of it inside the split.
  auto pv = [&](const std::uint32_t* raw, int i, int j, int valid) {
    float vf[kX];
    Decoder<T, C, kX>::run(raw, vf);
    if (valid < kX) {
#pragma unroll
      for (int e = 0; e < kX; ++e)
        if (e >= valid) vf[e] = 0.0f;  // past the end: unused slots may hold anything (NaN)
    }
#pragma unroll
    for (int h = 0; h < HPC; ++h) {
      const float4* pvv = reinterpret_cast<const float4*>(my_p + h * kTile + j * kX);
#pragma unroll
      for (int e = 0; e < kX / 4; ++e) {
        const float4 pp = pvv[e];
        acc[h][i] = fmaf(pp.x, vf[4 * e], acc[h][i]);
        acc[h][i] = fmaf(pp.y, vf[4 * e + 1], acc[h][i]);
        acc[h][i] = fmaf(pp.z, vf[4 * e + 2], acc[h][i]);
        acc[h][i] = fmaf(pp.w, vf[4 * e + 3], acc[h][i]);
      }
    }
  };

  int* my_pg = reinterpret_cast<int*>(p_s + kWarps * HPC * kTile) + warp * kTile;  // [kWarps][kTile] page ids
  for (int t0 = start + warp * kTile; t0 < end; t0 += kWarps * kTile) {
    // ---- which tokens of the tile count, for which heads
    const int t = t0 + lane;
    const bool in_range = t < end;
    const int lblock = t >> p.block_shift;
    int page = 0;
    unsigned head_mask = 0;  // bit h: head h attends token t
    if (in_range) {
      page = bt[lblock];
      head_mask = rows_attending<HPC, kVar>(p, work, lo, hi, t, lblock);
    }
    const unsigned attended = __ballot_sync(0xffffffffu, head_mask != 0);
    if (attended == 0u) continue;  // tile fully masked
    if constexpr (kVar) {
      // per-token masks: a page is read for a run of 8 tokens when any row attends any of
      // them (a run lies in one page)
      my_pg[lane] = ((attended >> (lane & ~7)) & 0xffu) != 0u ? page : -1;
    } else {
      my_pg[lane] = head_mask != 0 ? page : -1;  // masks are per block
    }
    __syncwarp();

    // Value vectors of this tile for this lane's head dimensions: vector j holds x tokens
    // of dimension d. Pages no head attends stay zero (not loaded); so do tokens past the
    // split when a whole vector lies beyond it.
    auto load_values = [&](std::uint32_t (&raw)[kND][4], int j) {
      const int tj = t0 + j * kX;
      // fp8: 16 tokens, two 8-token runs (two pages with 8-token blocks; with per-token masks
      // either run may be the one attended)
      const int pg0 = my_pg[j * kX];
      const int pg1 = (kX > 8 && (kVar || bs == 8)) ? my_pg[j * kX + 8] : pg0;
      const int pg = pg0 >= 0 ? pg0 : pg1;  // the page of both runs when blocks hold >= 16 tokens
#pragma unroll
      for (int i = 0; i < kND; ++i) {
        const int d = lane + 32 * i;
        raw[i][0] = raw[i][1] = raw[i][2] = raw[i][3] = 0u;
        if (tj >= end || (pg0 < 0 && pg1 < 0) || !(D % 32 == 0 || d < D)) continue;
        if (kX <= 8 || bs >= 16) {
          load_words<16>(vbase + static_cast<std::int64_t>(pg) * p.v_block_stride + static_cast<std::int64_t>(d) * bs +
                             (tj & (bs - 1)),
                         raw[i]);
        } else {  // 16 fp8 tokens from two 8-token pages
          if (pg0 >= 0)
            load_words<8>(vbase + static_cast<std::int64_t>(pg0) * p.v_block_stride + static_cast<std::int64_t>(d) * 8,
                          raw[i]);
          if (pg1 >= 0 && end - tj > 8)
            load_words<8>(vbase + static_cast<std::int64_t>(pg1) * p.v_block_stride + static_cast<std::int64_t>(d) * 8,
                          raw[i] + 2);
        }
      }
    };
    // With registers to spare, every value load of the tile is issued before the key math,
    // so one memory latency per tile is exposed instead of two.
    std::uint32_t vraw[Tr::kPrefetchV ? Tr::kVChunks : 1][kND][4];
    if constexpr (Tr::kPrefetchV) {
#pragma unroll
      for (int j = 0; j < Tr::kVChunks; ++j) load_values(vraw[j], j);
    }

    // ---- QK: lane = token
    float s[HPC];
#pragma unroll
    for (int h = 0; h < HPC; ++h) s[h] = 0.0f;
    if (head_mask != 0) {
      const CacheT* kp = kbase + static_cast<std::int64_t>(page) * p.k_block_stride + (t & (bs - 1)) * kX;
#pragma unroll
      for (int c0 = 0; c0 < Tr::kKChunks; c0 += Tr::kKGroup) {
        std::uint32_t raw[Tr::kKGroup][4];
#pragma unroll
        for (int c = 0; c < Tr::kKGroup; ++c) load_words<16>(kp + static_cast<std::int64_t>(c0 + c) * bs * kX, raw[c]);
#pragma unroll
        for (int c = 0; c < Tr::kKGroup; ++c) {
          float kf[kX];
          Decoder<T, C, kX>::run(raw[c], kf);
#pragma unroll
          for (int h = 0; h < HPC; ++h) {
            const float4* qv = reinterpret_cast<const float4*>(q_s + h * D + (c0 + c) * kX);
#pragma unroll
            for (int e = 0; e < kX / 4; ++e) {
              if ((c0 + c) * kX + 4 * e >= D) break;  // padding of a partial last chunk (compile time)
              const float4 qq = qv[e];
              s[h] = fmaf(qq.x, kf[4 * e], s[h]);
              s[h] = fmaf(qq.y, kf[4 * e + 1], s[h]);
              s[h] = fmaf(qq.z, kf[4 * e + 2], s[h]);
              s[h] = fmaf(qq.w, kf[4 * e + 3], s[h]);
            }
          }
        }
      }
    }
    float alpha[HPC];
    softmax(s, head_mask, t, alpha);

    // ---- PV: lane = head dimension
#pragma unroll
    for (int j = 0; j < Tr::kVChunks; ++j) {
      const int tj = t0 + j * kX;  // first token of this value vector
      if (tj >= end) break;
      if constexpr (!Tr::kPrefetchV) {
        if (my_pg[j * kX] < 0 && my_pg[j * kX + ((kX > 8 && (kVar || bs == 8)) ? 8 : 0)] < 0) continue;
        load_values(vraw[0], j);
      }
#pragma unroll
      for (int i = 0; i < kND; ++i) pv(vraw[Tr::kPrefetchV ? j : 0][i], i, j, end - tj);
    }
    __syncwarp();
  }

  // ---- merge the warps (fixed order: deterministic)
#pragma unroll
  for (int h = 0; h < HPC; ++h) l[h] = warp_sum(l[h]);
  __syncthreads();  // the main-loop shared memory is reused below
  float* red_acc = smem;                         // [kWarps][HPC][D]
  float* red_m = red_acc + kWarps * HPC * D;     // [kWarps][HPC]
  float* red_l = red_m + kWarps * HPC;           // [kWarps][HPC]
  if (lane == 0) {
#pragma unroll
    for (int h = 0; h < HPC; ++h) {
      red_m[warp * HPC + h] = m[h];
      red_l[warp * HPC + h] = l[h];
    }
  }
  __syncthreads();
#pragma unroll
  for (int h = 0; h < HPC; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = max_nan(mx, red_m[w * HPC + h]);
    const float f = m[h] == -INFINITY ? 0.0f : __expf(m[h] - mx);
#pragma unroll
    for (int i = 0; i < kND; ++i) {
      const int d = lane + 32 * i;
      if (D % 32 == 0 || d < D) red_acc[(warp * HPC + h) * D + d] = acc[h][i] * f;
    }
  }
  __syncthreads();

  write_merged<T, HPC, D>(p, work, red_acc, red_m, red_l, scales.v);
}

inline constexpr int kReduceThreads = 256;
inline constexpr int kReduceWarps = kReduceThreads / 32;
inline constexpr int kReduceChunk = 1024;  ///< partition weights staged in shared memory at a time
/// Largest head size of the dispatch matrix (SPEC §4): the reduce keeps kReduceMaxDims / 32
/// dims per lane, so a larger head added to the list fails to compile here instead of reading
/// out of bounds.
inline constexpr int kReduceMaxDims = 256;
static_assert(max_head_size() <= kReduceMaxDims && kReduceMaxDims % 32 == 0,
              "reduce_kernel's per-lane accumulator must hold the largest supported head size");

/// Block-wide max or sum of one float per thread, in a fixed order (deterministic).
template <bool kMax>
__device__ __forceinline__ float reduce_block(float v, float* scratch) {
  v = kMax ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / 32;
  __syncthreads();  // scratch may still be read from a previous call
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
#pragma unroll
  for (int w = 1; w < kReduceWarps; ++w) r = kMax ? max_nan(r, scratch[w]) : r + scratch[w];
  return r;
}

/// V2 reduce (and the auto path's merge): one CTA per (head, sequence). Its cost is latency:
/// the partitions are spread over the 8 warps (warp w takes partitions w, w+8, ...) and each
/// lane keeps up to 8 head dims, so a sequence with 64 partitions needs 8 dependent rounds
/// of loads instead of 64 (measured 36 us -> see docs/performance.md for batch 1 at 32k).
/// The warps' sums are merged in a fixed order: bitwise deterministic.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) reduce_kernel(const __grid_constant__ ReduceKernelParams p) {
  pdl_wait();  // the attention kernel's partials are visible
  pdl_trigger();
  const int head = blockIdx.x;
  const int qrow = blockIdx.y;  // query row: the sequence itself without query_start_loc
  int seq = qrow, q_len = 1;
  if (p.query_start_loc != nullptr) {  // the sequence owning the row: largest s with start[s] <= qrow
    int lo = 0, hi = p.num_seqs;
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (p.query_start_loc[mid] <= qrow) lo = mid; else hi = mid;
    }
    seq = lo;
    q_len = p.query_start_loc[seq + 1] - p.query_start_loc[seq];
  }
  const int seq_len = p.seq_lens[seq];
  // the splits the attention kernel made of this sequence's attended span; clamped: with
  // unchecked data a seq_len beyond max_seq_len must not read past the workspace
  const int n = min(span_splits(attended_span(p.rule, seq_len, q_len, kSpanAlign), p.partition_size), p.num_launched);
  if (p.skip_single && n <= 1) return;  // written directly by the attention kernel
  constexpr int kPerLane = kReduceMaxDims / 32;
  __shared__ float scratch[kReduceWarps];
  __shared__ float w_s[kReduceChunk];
  __shared__ float acc_s[kReduceWarps][kReduceMaxDims];
  const int D = p.head_size;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const std::int64_t row = static_cast<std::int64_t>(qrow) * p.num_heads + head;
  const float* ml = p.max_logits + row * p.max_splits;
  const float* es = p.exp_sums + row * p.max_splits;

  // empty partitions (exp sum 0) may hold anything in max_logits; NaN propagates
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n; j += kReduceThreads)
    if (es[j] != 0.0f) mx = max_nan(mx, ml[j]);
  mx = reduce_block<true>(mx, scratch);
  float part_sum = 0.0f;
  for (int j = threadIdx.x; j < n; j += kReduceThreads) part_sum += merge_weight(ml[j], es[j], mx);
  const float wsum = reduce_block<false>(part_sum, scratch);

  float acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
  for (int c0 = 0; c0 < n; c0 += kReduceChunk) {
    const int cn = min(kReduceChunk, n - c0);
    __syncthreads();  // w_s of the previous chunk is no longer read
    for (int j = threadIdx.x; j < cn; j += kReduceThreads) {
      const int jj = c0 + j;
      w_s[j] = merge_weight(ml[jj], es[jj], mx);  // 0 for an empty partition (its output may hold anything)
    }
    __syncthreads();
#pragma unroll 4
    for (int j = warp; j < cn; j += kReduceWarps) {
      const float w = w_s[j];
      if (w == 0.0f) continue;
      const std::int64_t base = (row * p.max_splits + c0 + j) * D;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < D) {
          const float v = p.tmp_out_f32 ? static_cast<const float*>(p.tmp_out)[base + d]
                                        : to_float(static_cast<const T*>(p.tmp_out)[base + d]);
          acc[i] = fmaf(w, v, acc[i]);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < D) acc_s[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  const float inv = wsum == 0.0f ? 0.0f : 1.0f / wsum;  // NaN stays NaN
  T* out = static_cast<T*>(p.out) + row * D;
  if (threadIdx.x == 0 && p.lse != nullptr) p.lse[row] = lse_of(mx, wsum);
  for (int d = threadIdx.x; d < D; d += kReduceThreads) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kReduceWarps; ++w) o += acc_s[w][d];
    out[d] = from_float<T>(o * inv);
  }
}

}  // namespace pagedattn::detail::cuda
