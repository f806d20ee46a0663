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

/// Block-sparse rule of SPEC §3 for one (query head, cache block).
__device__ __forceinline__ bool sparse_attended(const AttentionKernelParams& p, int seq_len, int head, int kv_head,
                                                int block_first_token) {
  const int B = p.sparse_block_size;
  const int qb = (seq_len - 1) / B;
  const int kb = block_first_token / B;
  if (kb > qb - p.sparse_local_blocks) return true;
  const int step = p.sparse_sliding_step;
  const long long off = step >= 0 ? (static_cast<long long>(p.tp_rank) * p.num_heads + head) * step + 1
                                  : (static_cast<long long>(p.tp_rank) * p.num_kv_heads + kv_head) * (-step) + 1;
  return (kb + off) % p.sparse_vert_stride == 0;
}

/// What one CTA of either attention kernel computes: grid (kv head x head tiles of H query
/// heads, sequence, split).
struct CtaWork {
  int seq, split, kv_head, head0;
  int nh;  ///< active query heads (the last tile of a group may be partial)
  int seq_len, start, end;
  bool empty;           ///< the split lies past the sequence: nothing to do
  bool write_partials;  ///< V2, or a split of a sequence that has several
};

template <int H>
__device__ __forceinline__ CtaWork cta_work(const AttentionKernelParams& p) {
  CtaWork w;
  w.seq = blockIdx.y;
  w.split = blockIdx.z;
  w.kv_head = blockIdx.x / p.head_tiles;
  const int tile_idx = blockIdx.x % p.head_tiles;
  w.head0 = w.kv_head * p.group_size + tile_idx * H;
  w.nh = min(H, p.group_size - tile_idx * H);
  w.seq_len = p.seq_lens[w.seq];
  w.start = w.split * p.partition_size;
  const int num_splits = w.seq_len > 0 ? (w.seq_len + p.partition_size - 1) / p.partition_size : 1;
  w.empty = w.split >= num_splits;
  w.end = min(w.start + p.partition_size, w.seq_len);
  w.write_partials = p.always_partials || num_splits > 1;
  return w;
}

/// Last step of either attention kernel: merges the kWarps warps' results in a fixed order
/// (deterministic) and writes `out`, or the split's partials (max logit, exp sum, normalised
/// output). red_acc [kWarps][H][D] holds each warp's accumulator already rescaled to the
/// CTA-wide max; red_m / red_l [kWarps][H] each warp's running max and sum.
template <typename T, int H, int D>
__device__ __forceinline__ void write_merged(const AttentionKernelParams& p, const CtaWork& w, const float* red_acc,
                                             const float* red_m, const float* red_l) {
  const std::int64_t row0 = static_cast<std::int64_t>(w.seq) * p.num_heads + w.head0;
  for (int i = threadIdx.x; i < w.nh * D; i += kThreads) {
    const int h = i / D;
    const int d = i % D;
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) mx = fmaxf(mx, red_m[k * H + h]);
    float sum_l = 0.0f, o = 0.0f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) {
      const float mk = red_m[k * H + h];
      sum_l += mk == -INFINITY ? 0.0f : red_l[k * H + h] * __expf(mk - mx);
      o += red_acc[(k * H + h) * D + d];
    }
    o = sum_l > 0.0f ? o / sum_l * p.v_scale : 0.0f;
    if (!w.write_partials) {
      static_cast<T*>(p.out)[(row0 + h) * D + d] = from_float<T>(o);
    } else {
      const std::int64_t prow = (row0 + h) * p.max_splits + w.split;
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

template <typename T, CacheKind C, int D, int HPC>
__global__ void __launch_bounds__(kThreads)
    paged_attention_kernel(const __grid_constant__ AttentionKernelParams p) {
  using Tr = AttentionTraits<T, C, D, HPC>;
  using CacheT = typename Tr::CacheT;
  constexpr int kX = Tr::kX;
  constexpr int kND = Tr::kND;

  const CtaWork work = cta_work<HPC>(p);
  if (work.empty) return;
  const int seq = work.seq, kv_head = work.kv_head, head0 = work.head0, nh = work.nh;
  const int seq_len = work.seq_len, start = work.start, end = work.end;

  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* q_s = smem;                          // [HPC][D], scaled by qk_scale
  float* p_s = q_s + HPC * D;                 // [kWarps][HPC][kTile] probabilities

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const T* q = static_cast<const T*>(p.query) + static_cast<std::int64_t>(seq) * p.q_stride;
  for (int i = tid; i < HPC * D; i += kThreads) {
    const int h = i / D;
    q_s[i] = h < nh ? to_float(q[static_cast<std::int64_t>(head0 + h) * D + i % D]) * p.qk_scale : 0.0f;
  }
  float slope[HPC];
#pragma unroll
  for (int h = 0; h < HPC; ++h) slope[h] = (p.alibi_slopes != nullptr && h < nh) ? p.alibi_slopes[head0 + h] : 0.0f;
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
  // bit h: query head h of the CTA attends logical block lblock (only the CTA's active
  // heads: a padding head must not pull in masked pages)
  auto attend_mask = [&](int lblock) {
    if (!p.sparse) return (1u << nh) - 1u;
    unsigned mask = 0u;
#pragma unroll
    for (int h = 0; h < HPC; ++h)
      if (h < nh && sparse_attended(p, seq_len, head0 + h, kv_head, lblock * bs)) mask |= 1u << h;
    return mask;
  };
  // Online-softmax step of one tile: new running max per head, probabilities to my_p, the
  // rescale factor of the accumulators in alpha.
  auto softmax = [&](const float (&s)[HPC], unsigned head_mask, int t, float (&alpha)[HPC]) {
#pragma unroll
    for (int h = 0; h < HPC; ++h) {
      float sh = -INFINITY;
      if (head_mask & (1u << h)) sh = s[h] + slope[h] * static_cast<float>(t - seq_len + 1);
      const float m_new = fmaxf(m[h], warp_max(sh));
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
      head_mask = attend_mask(lblock);
    }
    if (!__any_sync(0xffffffffu, head_mask != 0)) continue;  // tile fully masked
    my_pg[lane] = head_mask != 0 ? page : -1;
    __syncwarp();

    // Value vectors of this tile for this lane's head dimensions: vector j holds x tokens
    // of dimension d. Pages no head attends stay zero (not loaded); so do tokens past the
    // split when a whole vector lies beyond it.
    auto load_values = [&](std::uint32_t (&raw)[kND][4], int j) {
      const int tj = t0 + j * kX;
      const int pg0 = my_pg[j * kX];
      const int pg1 = (kX > 8 && bs == 8) ? my_pg[j * kX + 8] : pg0;  // fp8 with 8-token blocks spans two pages
#pragma unroll
      for (int i = 0; i < kND; ++i) {
        const int d = lane + 32 * i;
        raw[i][0] = raw[i][1] = raw[i][2] = raw[i][3] = 0u;
        if (tj >= end || (pg0 < 0 && pg1 < 0) || !(D % 32 == 0 || d < D)) continue;
        if (kX <= 8 || bs >= 16) {
          load_words<16>(vbase + static_cast<std::int64_t>(pg0) * p.v_block_stride + static_cast<std::int64_t>(d) * bs +
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
        if (my_pg[j * kX] < 0 && my_pg[j * kX + (kX > 8 && bs == 8 ? 8 : 0)] < 0) continue;
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
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_m[w * HPC + h]);
    const float f = m[h] == -INFINITY ? 0.0f : __expf(m[h] - mx);
#pragma unroll
    for (int i = 0; i < kND; ++i) {
      const int d = lane + 32 * i;
      if (D % 32 == 0 || d < D) red_acc[(warp * HPC + h) * D + d] = acc[h][i] * f;
    }
  }
  __syncthreads();

  write_merged<T, HPC, D>(p, work, red_acc, red_m, red_l);
}

inline constexpr int kReduceThreads = 256;
inline constexpr int kReduceWarps = kReduceThreads / 32;
inline constexpr int kReduceChunk = 1024;  ///< partition weights staged in shared memory at a time
inline constexpr int kReduceMaxDims = 256;  ///< largest head size (8 dims per lane)

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
  for (int w = 1; w < kReduceWarps; ++w) r = kMax ? fmaxf(r, scratch[w]) : r + scratch[w];
  return r;
}

/// V2 reduce (and the auto path's merge): one CTA per (head, sequence). Its cost is latency:
/// the partitions are spread over the 8 warps (warp w takes partitions w, w+8, ...) and each
/// lane keeps up to 8 head dims, so a sequence with 64 partitions needs 8 dependent rounds
/// of loads instead of 64 (measured 36 us -> see docs/performance.md for batch 1 at 32k).
/// The warps' sums are merged in a fixed order: bitwise deterministic.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) reduce_kernel(const __grid_constant__ ReduceKernelParams p) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int seq_len = p.seq_lens[seq];
  // clamp: with unchecked data a seq_len beyond max_seq_len must not read past the workspace
  const int n = min(seq_len > 0 ? (seq_len + p.partition_size - 1) / p.partition_size : 0, p.num_launched);
  if (p.skip_single && n <= 1) return;  // written directly by the attention kernel
  constexpr int kPerLane = kReduceMaxDims / 32;
  __shared__ float scratch[kReduceWarps];
  __shared__ float w_s[kReduceChunk];
  __shared__ float acc_s[kReduceWarps][kReduceMaxDims];
  const int D = p.head_size;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const std::int64_t row = static_cast<std::int64_t>(seq) * p.num_heads + head;
  const float* ml = p.max_logits + row * p.max_splits;
  const float* es = p.exp_sums + row * p.max_splits;

  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n; j += kReduceThreads)
    if (es[j] > 0.0f) mx = fmaxf(mx, ml[j]);
  mx = reduce_block<true>(mx, scratch);
  float part_sum = 0.0f;
  for (int j = threadIdx.x; j < n; j += kReduceThreads) part_sum += es[j] > 0.0f ? es[j] * __expf(ml[j] - mx) : 0.0f;
  const float wsum = reduce_block<false>(part_sum, scratch);

  float acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
  for (int c0 = 0; c0 < n; c0 += kReduceChunk) {
    const int cn = min(kReduceChunk, n - c0);
    __syncthreads();  // w_s of the previous chunk is no longer read
    for (int j = threadIdx.x; j < cn; j += kReduceThreads) {
      const int jj = c0 + j;
      w_s[j] = es[jj] > 0.0f ? es[jj] * __expf(ml[jj] - mx) : 0.0f;  // empty partitions may hold anything
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
  const float inv = wsum > 0.0f ? 1.0f / wsum : 0.0f;
  T* out = static_cast<T*>(p.out) + row * D;
  for (int d = threadIdx.x; d < D; d += kReduceThreads) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kReduceWarps; ++w) o += acc_s[w][d];
    out[d] = from_float<T>(o * inv);
  }
}

}  // namespace pagedattn::detail::cuda
