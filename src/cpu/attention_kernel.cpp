// The CPU attention kernel (attention_kernel.h): one tile of query rows of a (sequence, kv
// head) over a range of cache tokens, one cache page (block) at a time, K and V of a page
// together, with an online softmax. Compiled once per instruction set through Google Highway
// (foreach_target: AVX-512, AVX2 + FMA + F16C, and EMU128, Highway's portable fallback) and
// chosen at run time (dynamic dispatch).
//
// Two shapes of micro-GEMM, picked by the tile's row count R (= query tokens x group):
//
//   * Row lanes (R > kSmallRows: GQA groups of 3+, several query tokens). A vector holds
//     one value per query row (up to 8 rows, "a row group"). A page of K is decoded once
//     into a float tile in the cache's own layout [D/x][BS][x] and each key element is
//     broadcast against the rows' query vector: S[t][rows] += k[t][d] * q[d][rows] (8
//     tokens' accumulators in registers). The softmax runs across the rows (max, exp and the
//     running state are vectors of the row group: no horizontal reductions), and the value
//     page, decoded once into [D][BS], is broadcast the same way into the output held as
//     [D][rows]: O[d][rows] += v[d][t] * p[t][rows], 8 dims' accumulators in registers over
//     the page's tokens. Neither K nor V is transposed.
//   * Token lanes (R <= kSmallRows: MHA, group 2). One multiply-add per full vector of the
//     cache as it lies: the logits of a token group are dot products over the x-element
//     chunks, summed across lanes for several tokens together by a tree of pairwise adds,
//     and the output is kept as per-(dim, token slot) partial sums in the value page's own
//     layout [D][BS], reduced once at the end of the tile. The cache is decoded in registers
//     (no tile).
//
// fp8 caches decode without tables: an e5m2 byte is the top byte of a float16, an e4m3 byte
// becomes a float16 by moving its exponent and mantissa down 1 bit (its value / 2^8), the
// NaN codes are patched, and the hardware half->float conversion finishes. The scales (and
// e4m3's 2^8) are folded into the query and the epilogue by the driver.
//
// Online softmax with lazy rescaling: a row's accumulator is rescaled only when its max
// grows by more than kLazyRescale (ALiBi's rising logits would otherwise rescale at every
// page); m_max tracks the exact max for V2's partials.
//
// Pages are software-prefetched KernelCall::prefetch_blocks ahead (the block table defeats
// the hardware prefetcher). The arithmetic of a tile depends only on the tile, not on the
// thread that runs it, so results are the same at any thread count and run to run.
//
// Highway 1.0.3 has every operation used here; no hand-written intrinsics.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/attention_kernel.cpp"
// Compiled targets: AVX-512 (Skylake-X and later, Zen 4), AVX2 (with FMA and F16C), and the
// portable EMU128 fallback. SSSE3/SSE4 are left out (they would only slow the build: any x86
// CPU with SSE4 but no AVX2 is served by the fallback).
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4)
#endif
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>
#include <hwy/aligned_allocator.h>
#include <hwy/cache_control.h>
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <strings.h>
#include <vector>

#include "cpu/attention_kernel.h"

HWY_BEFORE_NAMESPACE();
namespace pagedattn::detail::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

/// Rows at most for the token-lane kernel.
constexpr int kSmallRows = 2;

/// Grow-only 64-byte aligned float scratch.
class Scratch {
 public:
  float* get(std::size_t n) {
    if (n > size_) {
      buf_ = hwy::AllocateAligned<float>(n);
      size_ = n;
    }
    return buf_.get();
  }

 private:
  hwy::AlignedFreeUniquePtr<float[]> buf_;
  std::size_t size_ = 0;
};

struct ThreadScratch {
  Scratch ktile, vtile, rows, acc;
};
ThreadScratch& scratch() {
  static thread_local ThreadScratch s;
  return s;
}

template <CacheKind K>
struct CacheTraits;
template <>
struct CacheTraits<CacheKind::kF32> {
  using Elem = float;
};
template <>
struct CacheTraits<CacheKind::kF16> {
  using Elem = hwy::float16_t;
};
template <>
struct CacheTraits<CacheKind::kBF16> {
  using Elem = hwy::bfloat16_t;
};
template <>
struct CacheTraits<CacheKind::kFp8E4M3> {
  using Elem = std::uint8_t;
};
template <>
struct CacheTraits<CacheKind::kFp8E5M2> {
  using Elem = std::uint8_t;
};

/// Lanes(df) cache elements at src, as floats (fp8: the value before the decode factor).
template <CacheKind K, class DF>
HWY_INLINE hn::Vec<DF> Decode(DF df, const typename CacheTraits<K>::Elem* src) {
  if constexpr (K == CacheKind::kF32) {
    return hn::LoadU(df, src);
  } else if constexpr (K == CacheKind::kF16 || K == CacheKind::kBF16) {
    const hn::Rebind<typename CacheTraits<K>::Elem, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, src));
  } else {
    const hn::Rebind<std::uint8_t, DF> d8;
    const hn::Rebind<std::uint16_t, DF> d16;
    const hn::Rebind<hwy::float16_t, DF> dh;
    const auto w = hn::PromoteTo(d16, hn::LoadU(d8, src));
    hn::Vec<decltype(d16)> h;
    if constexpr (K == CacheKind::kFp8E5M2) {
      h = hn::ShiftLeft<8>(w);  // e5m2 is float16's top byte (infinities and NaNs included)
    } else {
      const auto em = hn::And(w, hn::Set(d16, 0x7F));
      const auto sign = hn::ShiftLeft<8>(hn::And(w, hn::Set(d16, 0x80)));
      h = hn::Or(sign, hn::ShiftLeft<7>(em));  // value / 2^8, subnormals included
      h = hn::IfThenElse(hn::Eq(em, hn::Set(d16, 0x7F)), hn::Set(d16, 0x7E00), h);  // 0x7F/0xFF: NaN
    }
    return hn::PromoteTo(df, hn::BitCast(dh, h));
  }
}

/// max that propagates NaN, lane-wise (core/attention_rules.h's max_nan).
template <class D, class V>
HWY_INLINE V MaxNan(D d, V a, V b) {
  (void)d;
  const auto nan = hn::Or(hn::IsNaN(a), hn::IsNaN(b));
  return hn::IfThenElse(nan, hn::Add(a, b), hn::Max(a, b));
}

/// Soft-cap cap * tanh(s / cap), keeping NaN (Highway's Tanh would not).
template <class D, class V>
HWY_INLINE V SoftCap(D d, V s, float cap, float inv_cap) {
  const V c = hn::Mul(hn::Set(d, cap), hn::Tanh(d, hn::Mul(s, hn::Set(d, inv_cap))));
  return hn::IfThenElse(hn::IsNaN(s), s, c);
}

/// All-ones float bits: a lane mask stored as a float.
inline float mask_bits() {
  const std::uint32_t u = ~0u;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// How a row attends one block.
enum : std::uint8_t { kNone = 0, kFull = 1, kPart = 2 };

/// Per-row facts of a tile, and the per-block attendance.
struct RowInfo {
  int R = 0;
  int* pos = nullptr;    ///< cache position of the row's query token
  int* first = nullptr;  ///< first token its window keeps
  float* slope = nullptr;
  int* head = nullptr;
  bool masks = false;  ///< any row can attend only part of the span (window, causal, sparse)

  /// How row r attends the block of tokens [t0, t0 + nt).
  std::uint8_t mode(const KernelCall& kc, int g, int r, int t0, int nt) const {
    const int lo = std::max(t0, first[r]), hi = std::min(t0 + nt, pos[r] + 1);
    if (lo >= hi) return kNone;
    if (!kc.rule.block_attended(pos[r], head[r], g, t0)) return kNone;
    return lo == t0 && hi == t0 + nt ? kFull : kPart;
  }
};

/// The tile's cache pages.
template <CacheKind K>
struct Pages {
  using Elem = typename CacheTraits<K>::Elem;
  const KernelCall& kc;
  const std::int32_t* table;
  int g;
  const Elem* key(int b) const {
    return static_cast<const Elem*>(kc.key_cache) + std::int64_t(table[b]) * kc.k_block_stride +
           std::int64_t(g) * kc.k_head_stride;
  }
  const Elem* value(int b) const {
    return static_cast<const Elem*>(kc.value_cache) + std::int64_t(table[b]) * kc.v_block_stride +
           std::int64_t(g) * kc.v_head_stride;
  }
  /// Prefetches K and V of block b (each `elems` elements, one contiguous page per head).
  void prefetch(int b, std::size_t kelems, std::size_t velems) const {
    const char* k = reinterpret_cast<const char*>(key(b));
    const char* v = reinterpret_cast<const char*>(value(b));
    for (std::size_t i = 0; i < kelems * sizeof(Elem); i += 64) hwy::Prefetch(k + i);
    for (std::size_t i = 0; i < velems * sizeof(Elem); i += 64) hwy::Prefetch(v + i);
  }
};

// ---------------------------------------------------------------------------------------
// Row lanes: R > kSmallRows.

template <CacheKind K>
void RowLaneTile(const KernelCall& kc, const TileJob& job, const RowInfo& ri) {
  using Elem = typename CacheTraits<K>::Elem;
  constexpr int X = 16 / int(sizeof(Elem));  // elements per key chunk
  const hn::CappedTag<float, 8> dr;          // one lane per row of a row group
  const hn::RebindToSigned<decltype(dr)> di;
  using VR = hn::Vec<decltype(dr)>;
  const int N = static_cast<int>(hn::Lanes(dr));
  const int D = kc.head_size, BS = kc.block_size, R = ri.R;
  const int NC = (D + X - 1) / X;
  const int RG = (R + N - 1) / N;
  const std::size_t kpage = std::size_t(NC) * BS * X, vpage = std::size_t(D) * BS;

  // Row-group arrays, [RG][...][N]: queries and outputs transposed (dim-major), states, and
  // per-block logits, weights and keep masks.
  ThreadScratch& s = scratch();
  const std::size_t qT_n = std::size_t(RG) * D * N;
  float* const buf = s.rows.get(2 * qT_n + std::size_t(RG) * N * 8 + 3 * std::size_t(BS) * N + N);
  float* const qT = buf;
  float* const O = qT + qT_n;
  float* const m = O + qT_n;
  float* const mmax = m + RG * N;
  float* const l = mmax + RG * N;
  float* const lane_pos = l + RG * N;  // int bits
  float* const lane_first = lane_pos + RG * N;
  float* const lane_slope = lane_first + RG * N;
  float* const lane_block = lane_slope + RG * N;  // per block: all-ones where the row attends it
  float* const lane_real = lane_block + RG * N;   // all-ones for real rows (not padding)
  float* const sb = lane_real + RG * N;  // [BS][N] logits of one row group
  float* const pb = sb + BS * N;         // [BS][N] weights
  float* const kb = pb + BS * N;         // [BS][N] keep masks (masked blocks)
  const float kNegInf = -std::numeric_limits<float>::infinity();
  const float ones = mask_bits();

  for (int g = 0; g < RG; ++g) {
    for (int lane = 0; lane < N; ++lane) {
      const int r = g * N + lane;
      const bool real = r < R;
      for (int d = 0; d < D; ++d) {
        qT[(std::size_t(g) * D + d) * N + lane] = real ? job.q[std::size_t(r) * D + d] : 0.0f;
        O[(std::size_t(g) * D + d) * N + lane] = 0.0f;
      }
      const int i = g * N + lane;
      m[i] = mmax[i] = kNegInf;
      l[i] = 0.0f;
      const int pos = real ? ri.pos[r] : -1, first = real ? ri.first[r] : 0;
      std::memcpy(&lane_pos[i], &pos, 4);
      std::memcpy(&lane_first[i], &first, 4);
      lane_slope[i] = real ? ri.slope[r] : 0.0f;
      lane_real[i] = lane_block[i] = real ? ones : 0.0f;
    }
  }

  const Pages<K> pages{kc, kc.block_tables + std::int64_t(job.seq) * kc.bt_stride, job.kv_head};
  float* const ktile = K == CacheKind::kF32 ? nullptr : s.ktile.get(kpage);
  float* const vtile = K == CacheKind::kF32 ? nullptr : s.vtile.get(vpage);
  const hn::ScalableTag<float> df;
  const int L = static_cast<int>(hn::Lanes(df));
  const bool transform = kc.rule.soft_cap > 0.0f || kc.alibi != nullptr;
  const int b_begin = job.t_begin / BS, b_end = (job.t_end + BS - 1) / BS;
  const int pf = kc.prefetch_blocks;
  for (int b = b_begin; b < std::min(b_end, b_begin + pf); ++b) pages.prefetch(b, kpage, vpage);

  for (int b = b_begin; b < b_end; ++b) {
    const int t0 = b * BS, nt = std::min(BS, job.t_end - t0);
    // Which rows attend the block (every row, every block, without masks).
    bool any = !ri.masks, all_full = !ri.masks;
    if (ri.masks) {
      for (int r = 0; r < RG * N; ++r) {
        const std::uint8_t md = r < R ? ri.mode(kc, job.kv_head, r, t0, nt) : std::uint8_t{kNone};
        lane_block[r] = md != kNone ? ones : 0.0f;
        any |= md != kNone;
        all_full &= r >= R || md == kFull;
      }
      if (!any) continue;
    }
    if (b + pf < b_end) pages.prefetch(b + pf, kpage, vpage);

    // Decode the pages (fp32 pages are read in place).
    const Elem* ksrc = pages.key(b);
    const Elem* vsrc = pages.value(b);
    const float* kt;
    const float* vt;
    if constexpr (K == CacheKind::kF32) {
      kt = ksrc;
      vt = vsrc;
    } else {
      for (std::size_t i = 0; i < kpage; i += L) hn::Store(Decode<K>(df, ksrc + i), df, ktile + i);
      for (std::size_t i = 0; i < vpage; i += L) hn::Store(Decode<K>(df, vsrc + i), df, vtile + i);
      kt = ktile;
      vt = vtile;
    }

    for (int g = 0; g < RG; ++g) {
      const std::size_t gi = std::size_t(g) * N;
      if (ri.masks && hn::AllFalse(dr, hn::MaskFromVec(hn::Load(dr, lane_block + gi)))) continue;
      const float* q = qT + std::size_t(g) * D * N;

      // Logits of 8 tokens at a time: S[t][rows] = sum_d k[t][d] * q[d][rows].
      for (int tt = 0; tt < nt; tt += 8) {
        VR a0 = hn::Zero(dr), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int c = 0; c < NC; ++c) {
          const int w = std::min(X, D - c * X);
          const float* kc0 = kt + (std::size_t(c) * BS + tt) * X;
          const float* qc = q + std::size_t(c) * X * N;
          for (int i = 0; i < w; ++i) {
            const VR qv = hn::Load(dr, qc + i * N);
            const float* k = kc0 + i;
            a0 = hn::MulAdd(hn::Set(dr, k[0 * X]), qv, a0);
            a1 = hn::MulAdd(hn::Set(dr, k[1 * X]), qv, a1);
            a2 = hn::MulAdd(hn::Set(dr, k[2 * X]), qv, a2);
            a3 = hn::MulAdd(hn::Set(dr, k[3 * X]), qv, a3);
            a4 = hn::MulAdd(hn::Set(dr, k[4 * X]), qv, a4);
            a5 = hn::MulAdd(hn::Set(dr, k[5 * X]), qv, a5);
            a6 = hn::MulAdd(hn::Set(dr, k[6 * X]), qv, a6);
            a7 = hn::MulAdd(hn::Set(dr, k[7 * X]), qv, a7);
          }
        }
        float* o = sb + std::size_t(tt) * N;
        hn::Store(a0, dr, o + 0 * N);
        hn::Store(a1, dr, o + 1 * N);
        hn::Store(a2, dr, o + 2 * N);
        hn::Store(a3, dr, o + 3 * N);
        hn::Store(a4, dr, o + 4 * N);
        hn::Store(a5, dr, o + 5 * N);
        hn::Store(a6, dr, o + 6 * N);
        hn::Store(a7, dr, o + 7 * N);
      }

      // Soft-cap, ALiBi, masks; block max (NaN tracked apart: x86 max drops it).
      const auto posv = hn::BitCast(dr, hn::Load(dr, lane_pos + gi));
      const auto real = hn::MaskFromVec(hn::Load(dr, lane_real + gi));
      VR bm = hn::Set(dr, kNegInf);
      auto nan = hn::MaskFromVec(hn::Zero(dr));
      if (transform || !all_full) {
        const auto pos = hn::BitCast(di, posv);
        const auto first = hn::BitCast(di, hn::Load(dr, lane_first + gi));
        const VR slope = hn::Load(dr, lane_slope + gi);
        const auto attend = hn::MaskFromVec(hn::Load(dr, lane_block + gi));
        for (int t = 0; t < nt; ++t) {
          VR v = hn::Load(dr, sb + std::size_t(t) * N);
          if (kc.rule.soft_cap > 0.0f) v = SoftCap(dr, v, kc.rule.soft_cap, kc.rule.inv_soft_cap);
          const auto tv = hn::Set(di, t0 + t);
          if (kc.alibi != nullptr) v = hn::Add(v, hn::Mul(slope, hn::ConvertTo(dr, hn::Sub(tv, pos))));
          if (!all_full) {
            const auto keep = hn::And(attend, hn::RebindMask(dr, hn::And(hn::Not(hn::Lt(tv, first)), hn::Not(hn::Gt(tv, pos)))));
            v = hn::IfThenElse(keep, v, hn::Set(dr, kNegInf));
            hn::Store(hn::VecFromMask(dr, keep), dr, kb + std::size_t(t) * N);
          }
          nan = hn::Or(nan, hn::IsNaN(v));
          bm = hn::Max(bm, v);
          hn::Store(v, dr, sb + std::size_t(t) * N);
        }
      } else {
        for (int t = 0; t < nt; ++t) {
          const VR v = hn::Load(dr, sb + std::size_t(t) * N);
          nan = hn::Or(nan, hn::IsNaN(v));
          bm = hn::Max(bm, v);
        }
      }
      bm = hn::IfThenElse(hn::And(nan, real), hn::Set(dr, std::numeric_limits<float>::quiet_NaN()), bm);

      // Online softmax across the row group's lanes.
      VR mv = hn::Load(dr, m + gi);
      hn::Store(MaxNan(dr, hn::Load(dr, mmax + gi), bm), dr, mmax + gi);
      const VR mn = MaxNan(dr, mv, bm);
      const auto grow = hn::Or(hn::Gt(mn, hn::Add(mv, hn::Set(dr, kLazyRescale))), hn::IsNaN(mn));
      VR lv = hn::Load(dr, l + gi);
      if (!hn::AllFalse(dr, grow)) {
        const VR alpha = hn::IfThenElse(grow, hn::Exp(dr, hn::Sub(mv, mn)), hn::Set(dr, 1.0f));
        mv = hn::IfThenElse(grow, mn, mv);
        hn::Store(mv, dr, m + gi);
        lv = hn::Mul(lv, alpha);
        float* og = O + std::size_t(g) * D * N;
        for (int d = 0; d < D; ++d) hn::Store(hn::Mul(hn::Load(dr, og + d * N), alpha), dr, og + d * N);
      }
      const VR mu = hn::IfThenElseZero(hn::Ne(mv, hn::Set(dr, kNegInf)), mv);  // exp(-inf - 0) = 0
      for (int t = 0; t < nt; ++t) {
        const VR p = hn::Exp(dr, hn::Sub(hn::Load(dr, sb + std::size_t(t) * N), mu));
        lv = hn::Add(lv, p);
        hn::Store(p, dr, pb + std::size_t(t) * N);
      }
      hn::Store(lv, dr, l + gi);

      // Values: O[d][rows] += v[d][t] * p[t][rows], 8 dims at a time (D is a multiple of 8).
      // A block some row masks multiplies in only the kept (row, token) pairs: a masked
      // weight is 0, but the value it would meet may be NaN.
      float* og = O + std::size_t(g) * D * N;
      for (int d0 = 0; d0 < D; d0 += 8) {
        float* o = og + std::size_t(d0) * N;
        VR a0 = hn::Load(dr, o + 0 * N), a1 = hn::Load(dr, o + 1 * N), a2 = hn::Load(dr, o + 2 * N),
           a3 = hn::Load(dr, o + 3 * N), a4 = hn::Load(dr, o + 4 * N), a5 = hn::Load(dr, o + 5 * N),
           a6 = hn::Load(dr, o + 6 * N), a7 = hn::Load(dr, o + 7 * N);
        const float* v = vt + std::size_t(d0) * BS;
        if (all_full) {
          for (int t = 0; t < nt; ++t) {
            const VR p = hn::Load(dr, pb + std::size_t(t) * N);
            a0 = hn::MulAdd(hn::Set(dr, v[0 * BS + t]), p, a0);
            a1 = hn::MulAdd(hn::Set(dr, v[1 * BS + t]), p, a1);
            a2 = hn::MulAdd(hn::Set(dr, v[2 * BS + t]), p, a2);
            a3 = hn::MulAdd(hn::Set(dr, v[3 * BS + t]), p, a3);
            a4 = hn::MulAdd(hn::Set(dr, v[4 * BS + t]), p, a4);
            a5 = hn::MulAdd(hn::Set(dr, v[5 * BS + t]), p, a5);
            a6 = hn::MulAdd(hn::Set(dr, v[6 * BS + t]), p, a6);
            a7 = hn::MulAdd(hn::Set(dr, v[7 * BS + t]), p, a7);
          }
        } else {
          for (int t = 0; t < nt; ++t) {
            const VR p = hn::Load(dr, pb + std::size_t(t) * N);
            const auto k = hn::MaskFromVec(hn::Load(dr, kb + std::size_t(t) * N));
            a0 = hn::IfThenElse(k, hn::MulAdd(hn::Set(dr, v[0 * BS + t]), p, a0), a0);
            a1 = hn::IfThenElse(k, hn::MulAdd(hn::Set(dr, v[1 * BS + t]), p, a1), a1);
            a2 = hn::IfThenElse(k, hn::MulAdd(hn::Set(dr, v[2 * BS + t]), p, a2), a2);
            a3 = hn::IfThenElse(k, hn::MulAdd(hn::Set(dr, v[3 * BS + t]), p, a3), a3);
            a4 = hn::IfThenElse(k, hn::MulAdd(hn::Set(dr, v[4 * BS + t]), p, a4), a4);
            a5 = hn::IfThenElse(k, hn::MulAdd(hn::Set(dr, v[5 * BS + t]), p, a5), a5);
            a6 = hn::IfThenElse(k, hn::MulAdd(hn::Set(dr, v[6 * BS + t]), p, a6), a6);
            a7 = hn::IfThenElse(k, hn::MulAdd(hn::Set(dr, v[7 * BS + t]), p, a7), a7);
          }
        }
        hn::Store(a0, dr, o + 0 * N);
        hn::Store(a1, dr, o + 1 * N);
        hn::Store(a2, dr, o + 2 * N);
        hn::Store(a3, dr, o + 3 * N);
        hn::Store(a4, dr, o + 4 * N);
        hn::Store(a5, dr, o + 5 * N);
        hn::Store(a6, dr, o + 6 * N);
        hn::Store(a7, dr, o + 7 * N);
      }
    }
  }

  for (int r = 0; r < R; ++r) {
    const int g = r / N, lane = r % N;
    job.m[r] = m[r];
    job.m_max[r] = mmax[r];
    job.l[r] = l[r];
    const float* og = O + std::size_t(g) * D * N + lane;
    float* o = job.o + std::size_t(r) * D;
    for (int d = 0; d < D; ++d) o[d] = og[std::size_t(d) * N];
  }
}

// ---------------------------------------------------------------------------------------
// Token lanes: R <= kSmallRows.

/// Sums of groups of `gs` consecutive floats of v[0..n) (n vectors, n * L floats; gs a power
/// of two), left in order in the first n * L / gs lanes of v[0..): pairwise adds of the even
/// and odd lanes (ConcatEven/ConcatOdd keep the order), one vector pair at a time, then a
/// vector with itself once one is left.
template <class DF, class V>
HWY_INLINE int GroupSums(DF df, V* v, int n, int gs) {
  const int L = static_cast<int>(hn::Lanes(df));
  if (gs > L) {  // whole vectors of one group first
    const int per = gs / L;
    for (int k = 0; k < n / per; ++k) {
      V s = v[k * per];
      for (int j = 1; j < per; ++j) s = hn::Add(s, v[k * per + j]);
      v[k] = s;
    }
    n /= per;
    gs = L;
  }
#if HWY_TARGET != HWY_SCALAR  // one lane: gs is 1 here
  while (gs > 1) {
    if (n >= 2) {
      for (int k = 0; k < n / 2; ++k) {
        const V a = v[2 * k], b = v[2 * k + 1];
        v[k] = hn::Add(hn::ConcatEven(df, b, a), hn::ConcatOdd(df, b, a));
      }
      n /= 2;
    } else {
      v[0] = hn::Add(hn::ConcatEven(df, v[0], v[0]), hn::ConcatOdd(df, v[0], v[0]));
    }
    gs /= 2;
  }
#endif
  return n;
}

template <CacheKind K, int NR, int BS>
void TokenLaneTile(const KernelCall& kc, const TileJob& job, const RowInfo& ri) {
  using Elem = typename CacheTraits<K>::Elem;
  constexpr int X = 16 / int(sizeof(Elem));
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const hn::CappedTag<float, 8> d8;  // softmax over 8 token slots at a time
  const hn::RebindToSigned<decltype(d8)> di8;
  using V8 = hn::Vec<decltype(d8)>;
  const int L8 = static_cast<int>(hn::Lanes(d8));
  constexpr int L = static_cast<int>(hn::MaxLanes(df));  // fixed-width targets only
  constexpr int kMaxL = L;
  const int D = kc.head_size;
  const int NC = (D + X - 1) / X;
  const std::size_t kpage = std::size_t(NC) * BS * X, vpage = std::size_t(D) * BS;
  // Logits: TG tokens at a time, NV vectors of accumulators per row: 8 / NR vectors, fewer
  // when a block holds fewer floats, and at least one token's chunk.
  constexpr int NV = std::max({1, X / L, std::min(8 / NR * L, BS * X) / L});
  constexpr int TG = std::max(1, NV * L / X);  // tokens per group
  constexpr int QW = std::max(L, X);           // lanes of a chunk's query pattern
  constexpr int PW = std::max(L, BS);          // lanes of a block's weight pattern

  ThreadScratch& s = scratch();
  const std::size_t accn = vpage * NR;
  float* const acc = s.acc.get(accn);
  float* const buf = s.rows.get(NR * (std::size_t(NC) * QW + 3 * PW + 2 * BS + 8) + std::size_t(QW) + kMaxL * 8);
  float* const qd = buf;                               // [NR][NC][QW]: query chunk, repeated
  float* const pd = qd + NR * std::size_t(NC) * QW;    // [NR][PW]: weights, repeated
  float* const kd = pd + NR * std::size_t(PW);         // [NR][PW]: keep masks, repeated
  float* const sl = kd + NR * std::size_t(PW);         // [NR][BS + 8]: logits of a block
  float* const zmask = sl + NR * std::size_t(BS + 8);  // [QW]: lanes of the last key chunk inside D
  float* const red = zmask + QW;                       // [8 * kMaxL]: reduced logits
  const float kNegInf = -std::numeric_limits<float>::infinity();
  const float ones = mask_bits();
  const int wlast = D - (NC - 1) * X;  // dims of the last chunk (< X only for fp8 and D = 120)

  for (int r = 0; r < NR; ++r)
    for (int c = 0; c < NC; ++c)
      for (int k = 0; k < QW; ++k) {
        const int d = c * X + k % X;
        qd[(std::size_t(r) * NC + c) * QW + k] = d < D && r < ri.R ? job.q[std::size_t(r) * D + d] : 0.0f;
      }
  for (int k = 0; k < QW; ++k) zmask[k] = k % X < wlast ? ones : 0.0f;
  std::fill(acc, acc + accn, 0.0f);
  float m[NR], mmax[NR], l[NR];
  for (int r = 0; r < NR; ++r) {
    m[r] = mmax[r] = kNegInf;
    l[r] = 0.0f;
  }

  const Pages<K> pages{kc, kc.block_tables + std::int64_t(job.seq) * kc.bt_stride, job.kv_head};
  const int b_begin = job.t_begin / BS, b_end = (job.t_end + BS - 1) / BS;
  const int pf = kc.prefetch_blocks;
  for (int b = b_begin; b < std::min(b_end, b_begin + pf); ++b) pages.prefetch(b, kpage, vpage);
  const bool part_chunk = wlast != X;

  for (int b = b_begin; b < b_end; ++b) {
    const int t0 = b * BS, nt = std::min(BS, job.t_end - t0);
    std::uint8_t mode[NR];
    bool any = false;
    for (int r = 0; r < NR; ++r) {
      mode[r] = r >= ri.R ? std::uint8_t{kNone} : !ri.masks ? std::uint8_t{kFull} : ri.mode(kc, job.kv_head, r, t0, nt);
      any |= mode[r] != kNone;
    }
    if (!any) continue;
    if (b + pf < b_end) pages.prefetch(b + pf, kpage, vpage);
    const Elem* ksrc = pages.key(b);
    const Elem* vsrc = pages.value(b);

    // Logits: per token group, NV vectors of partial dot products per row.
    for (int tg = 0; tg < nt; tg += TG) {
      V a[NR][NV];
      for (int r = 0; r < NR; ++r)
        for (int j = 0; j < NV; ++j) a[r][j] = hn::Zero(df);
      for (int c = 0; c < NC; ++c) {
        const Elem* src = ksrc + (std::size_t(c) * BS + tg) * X;
        for (int j = 0; j < NV; ++j) {
          V kv = Decode<K>(df, src + j * L);
          const int qo = (j * L) % QW;
          if (part_chunk && c == NC - 1) kv = hn::IfThenElseZero(hn::MaskFromVec(hn::LoadU(df, zmask + qo)), kv);
          for (int r = 0; r < NR; ++r) a[r][j] = hn::MulAdd(kv, hn::LoadU(df, qd + (std::size_t(r) * NC + c) * QW + qo), a[r][j]);
        }
      }
      for (int r = 0; r < NR; ++r) {
        const int n = GroupSums(df, a[r], NV, X);
        for (int j = 0; j < n; ++j) hn::StoreU(a[r][j], df, red + j * L);
        std::memcpy(sl + std::size_t(r) * (BS + 8) + tg, red, sizeof(float) * std::min(TG, BS - tg));
      }
    }

    // Softmax per row, 8 token slots at a time; the weights go to pd repeated to PW lanes.
    bool rescale[NR] = {};
    float alpha[NR];
    bool masked[NR];
    for (int r = 0; r < NR; ++r) {
      masked[r] = mode[r] != kFull || nt < BS;
      if (mode[r] == kNone) continue;
      float* sr = sl + std::size_t(r) * (BS + 8);
      V8 bm = hn::Set(d8, kNegInf);
      auto nan = hn::MaskFromVec(hn::Zero(d8));
      const auto pos = hn::Set(di8, ri.pos[r]), first = hn::Set(di8, ri.first[r]);
      const auto end = hn::Set(di8, t0 + nt);
      for (int t = 0; t < BS; t += L8) {
        V8 v = hn::LoadU(d8, sr + t);
        const auto tv = hn::Iota(di8, t0 + t);
        if (kc.rule.soft_cap > 0.0f) v = SoftCap(d8, v, kc.rule.soft_cap, kc.rule.inv_soft_cap);
        if (kc.alibi != nullptr) v = hn::Add(v, hn::Mul(hn::Set(d8, ri.slope[r]), hn::ConvertTo(d8, hn::Sub(tv, pos))));
        if (masked[r]) {
          auto keep = hn::Lt(tv, end);
          if (mode[r] == kPart) keep = hn::And(keep, hn::And(hn::Not(hn::Lt(tv, first)), hn::Not(hn::Gt(tv, pos))));
          const auto kf = hn::RebindMask(d8, keep);
          v = hn::IfThenElse(kf, v, hn::Set(d8, kNegInf));
          hn::StoreU(hn::VecFromMask(d8, kf), d8, kd + std::size_t(r) * PW + t);
        }
        nan = hn::Or(nan, hn::IsNaN(v));
        bm = hn::Max(bm, v);
        hn::StoreU(v, d8, sr + t);
      }
      float bmax = hn::GetLane(hn::MaxOfLanes(d8, bm));
      if (!hn::AllFalse(d8, nan)) bmax = std::numeric_limits<float>::quiet_NaN();
      mmax[r] = max_nan(mmax[r], bmax);
      const float mn = max_nan(m[r], bmax);
      if (mn > m[r] + kLazyRescale || std::isnan(mn)) {
        alpha[r] = std::exp(m[r] - mn);
        rescale[r] = true;
        m[r] = mn;
        l[r] *= alpha[r];
      }
      const V8 mu = hn::Set(d8, m[r] == kNegInf ? 0.0f : m[r]);
      V8 lv = hn::Zero(d8);
      for (int t = 0; t < BS; t += L8) {
        const V8 p = hn::Exp(d8, hn::Sub(hn::LoadU(d8, sr + t), mu));
        lv = hn::Add(lv, p);
        hn::StoreU(p, d8, pd + std::size_t(r) * PW + t);
      }
      l[r] += hn::GetLane(hn::SumOfLanes(d8, lv));
      for (int k = BS; k < PW; ++k) {  // repeat the block's pattern across a vector
        pd[std::size_t(r) * PW + k] = pd[std::size_t(r) * PW + k % BS];
        kd[std::size_t(r) * PW + k] = kd[std::size_t(r) * PW + k % BS];
      }
    }

    // Values: acc[r][d][t] += p[r][t] * v[d][t], in the value page's layout.
    for (std::size_t j = 0; j < vpage; j += L) {
      const V v = Decode<K>(df, vsrc + j);
      const std::size_t po = j % PW;
      for (int r = 0; r < NR; ++r) {
        if (mode[r] == kNone) continue;
        float* ar = acc + std::size_t(r) * vpage + j;
        V a = hn::Load(df, ar);
        if (rescale[r]) a = hn::Mul(a, hn::Set(df, alpha[r]));
        const V p = hn::LoadU(df, pd + std::size_t(r) * PW + po);
        if (masked[r])
          a = hn::Add(a, hn::IfThenElseZero(hn::MaskFromVec(hn::LoadU(df, kd + std::size_t(r) * PW + po)), hn::Mul(p, v)));
        else
          a = hn::MulAdd(p, v, a);
        hn::Store(a, df, ar);
      }
    }
  }

  for (int r = 0; r < ri.R; ++r) {
    job.m[r] = m[r];
    job.m_max[r] = mmax[r];
    job.l[r] = l[r];
    const float* ar = acc + std::size_t(r) * vpage;
    float* o = job.o + std::size_t(r) * D;
    for (int d = 0; d < D; ++d) {
      float sum = 0.0f;
      for (int t = 0; t < BS; ++t) sum += ar[std::size_t(d) * BS + t];
      o[d] = sum;
    }
  }
}

template <CacheKind K>
void Tile(const KernelCall& kc, const TileJob& job) {
  const int G = kc.group;
  const int R = job.ntok * G;
  // Row facts.
  thread_local std::vector<int> ints;
  thread_local std::vector<float> slopes;
  ints.resize(std::size_t(3) * R);
  slopes.resize(R);
  RowInfo ri;
  ri.R = R;
  ri.pos = ints.data();
  ri.first = ri.pos + R;
  ri.head = ri.first + R;
  ri.slope = slopes.data();
  for (int r = 0; r < R; ++r) {
    ri.pos[r] = job.pos0 + r / G;
    ri.first[r] = kc.rule.first_token(ri.pos[r]);
    ri.head[r] = job.kv_head * G + r % G;
    ri.slope[r] = kc.alibi != nullptr ? kc.alibi[ri.head[r]] : 0.0f;
  }
  // Without a window, block-sparse or several query tokens every row attends every token of
  // the range (the range ends at the sequence's length, the rows' position + 1).
  ri.masks = kc.rule.window_left >= 0 || kc.rule.sparse || job.ntok > 1;
  if (R <= kSmallRows) {
    switch (kc.block_size * 4 + R) {
      case 8 * 4 + 1: return TokenLaneTile<K, 1, 8>(kc, job, ri);
      case 16 * 4 + 1: return TokenLaneTile<K, 1, 16>(kc, job, ri);
      case 32 * 4 + 1: return TokenLaneTile<K, 1, 32>(kc, job, ri);
      case 8 * 4 + 2: return TokenLaneTile<K, 2, 8>(kc, job, ri);
      case 16 * 4 + 2: return TokenLaneTile<K, 2, 16>(kc, job, ri);
      default: return TokenLaneTile<K, 2, 32>(kc, job, ri);
    }
  }
  RowLaneTile<K>(kc, job, ri);
}

void AttendTile(const KernelCall& kc, const TileJob& job) {
  switch (kc.cache) {
    case CacheKind::kF32: return Tile<CacheKind::kF32>(kc, job);
    case CacheKind::kF16: return Tile<CacheKind::kF16>(kc, job);
    case CacheKind::kBF16: return Tile<CacheKind::kBF16>(kc, job);
    case CacheKind::kFp8E4M3: return Tile<CacheKind::kFp8E4M3>(kc, job);
    case CacheKind::kFp8E5M2: return Tile<CacheKind::kFp8E5M2>(kc, job);
  }
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace pagedattn::detail::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace pagedattn::detail::cpu {

HWY_EXPORT(AttendTile);
HWY_EXPORT(TargetName);

namespace {

/// Index into the dispatch tables of a target bit (targets.h's ChosenTarget layout).
std::size_t table_index(std::int64_t target) {
  if (target & (HWY_EMU128 | HWY_SCALAR)) return HWY_MAX_DYNAMIC_TARGETS + 1;
  return hwy::Num0BitsBelowLS1Bit_Nonzero64(static_cast<std::uint64_t>(HWY_CHOSEN_TARGET_SHIFT(target)));
}

/// Compiled targets the CPU supports, best first.
std::vector<std::int64_t> runnable() {
  std::vector<std::int64_t> out;
  const std::uint64_t ok = static_cast<std::uint64_t>(hwy::SupportedTargets() & HWY_TARGETS);
  for (std::uint64_t bit = 1; bit != 0 && bit <= ok; bit <<= 1)
    if (ok & bit) out.push_back(static_cast<std::int64_t>(bit));
  return out;  // lower bits are better targets
}

/// The table index to run: PAGEDATTN_CPU_KERNEL's target when it names a runnable one
/// ("generic" = the last, portable one), else the best.
std::size_t chosen_index() {
  const std::vector<std::int64_t> ts = runnable();
  const char* want = std::getenv("PAGEDATTN_CPU_KERNEL");
  if (want != nullptr && *want != '\0') {
    if (std::strcmp(want, "generic") == 0) return table_index(ts.back());
    for (std::int64_t t : ts)
      if (strcasecmp(want, hwy::TargetName(t)) == 0) return table_index(t);
  }
  return table_index(ts.front());
}

}  // namespace

void attend_tile(const KernelCall& kc, const TileJob& job) {
  static thread_local std::size_t index = 0;
  static thread_local std::string seen = "\1";  // never a value of the knob: the first call chooses
  const char* env = std::getenv("PAGEDATTN_CPU_KERNEL");
  if (seen != (env != nullptr ? env : "")) {  // the knob is read again when it changes (tests switch it)
    index = chosen_index();
    seen = env != nullptr ? env : "";
  }
  (*HWY_DISPATCH_TABLE(AttendTile)[index])(kc, job);
}

std::string cpu_kernel_target() { return (*HWY_DISPATCH_TABLE(TargetName)[chosen_index()])(); }

std::vector<std::string> cpu_kernel_targets() {
  std::vector<std::string> names;
  for (std::int64_t t : runnable()) names.emplace_back(hwy::TargetName(t));
  return names;
}

}  // namespace pagedattn::detail::cpu
#endif  // HWY_ONCE
