// The CPU attention kernel (attention_kernel.h): one tile of query rows of a (sequence, kv
// head) over a range of cache tokens, one cache page (block) at a time, K and V of a page
// together, with an online softmax. Compiled once per instruction set through Google Highway
// (foreach_target: AVX-512, AVX2 + FMA + F16C, and HWY_SCALAR, Highway's portable
// fallback with this compiler) and chosen at run time (dynamic dispatch).
//
// Two shapes of micro-GEMM, picked by the tile's row count R (= query tokens x group):
//
//   * Packed row lanes (R >= 3: GQA groups of 3+, several query tokens; PackedTile). A
//     vector of 8 lanes holds 8 / P query rows times P consecutive elements of the reduced
//     dimension (P = 2 for 3-4 rows, 1 for more), so every lane of every multiply-add works.
//     A page of K is decoded once into a float tile in the cache's own layout [D/x][BS][x];
//     the P adjacent dims k[t][d..d+P) are broadcast against the rows' queries:
//     S[t][rows] += k[t][d] * q[d][rows] (8 tokens' accumulators in registers, each row's
//     P lanes summed once per 8 tokens). The softmax runs across the rows (max, exp and the
//     running state are vectors of the row group: no horizontal reductions). The value page,
//     decoded once into [D][BS], is broadcast the same way, P adjacent tokens at a time, into
//     the output held as [D][rows]: O[d][rows] += v[d][t] * p[t][rows], 8 dims'
//     accumulators in registers over the page's tokens. Neither K nor V is transposed.
//   * Token lanes (R <= 2: MHA, group 2; TokenLaneTile). One multiply-add per full vector of
//     the cache as it lies: the logits of a token group are dot products over the x-element
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
// portable fallback (Highway 1.0.3 builds HWY_SCALAR here). SSSE3/SSE4 are left out (they
// would only slow the build: an x86 CPU with SSE4 but no AVX2 is served by the fallback).
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
struct CacheTraits {  // fp8: one byte per element
  using Elem = std::uint8_t;
};
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

/// SoftCap of n floats in place, at the widest vector first (then 8, 4, 1 lanes): the logit
/// loops run on vectors of one lane per row (4-8 lanes), and Tanh costs about the same per
/// vector at any width, so one pass over a block's logits at full width does the same work in
/// up to 4x fewer Tanh evaluations. Same layout, same path: the result does not depend on
/// the thread count.
template <class D>
HWY_INLINE std::size_t SoftCapRun(D d, float* x, std::size_t i, std::size_t n, float cap, float inv_cap) {
  const std::size_t w = hn::Lanes(d);
  for (; i + w <= n; i += w) hn::StoreU(SoftCap(d, hn::LoadU(d, x + i), cap, inv_cap), d, x + i);
  return i;
}
HWY_INLINE void SoftCapInPlace(float* x, std::size_t n, float cap, float inv_cap) {
  std::size_t i = SoftCapRun(hn::ScalableTag<float>(), x, 0, n, cap, inv_cap);
  i = SoftCapRun(hn::CappedTag<float, 8>(), x, i, n, cap, inv_cap);
  i = SoftCapRun(hn::CappedTag<float, 4>(), x, i, n, cap, inv_cap);
  SoftCapRun(hn::CappedTag<float, 1>(), x, i, n, cap, inv_cap);
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

/// Sums of groups of `gs` consecutive floats of v[0..n) (n vectors; gs a power of two),
/// left in order in the first n * Lanes / gs lanes of v[0..): whole vectors of one group are
/// added first, then pairwise adds of even and odd lanes (ConcatEven/ConcatOdd keep the
/// order), one vector pair at a time, then a vector with itself once one is left. Returns
/// the vectors holding the sums.
template <class DF, class V>
HWY_INLINE int GroupSums(DF df, V* v, int n, int gs) {
  const int L = static_cast<int>(hn::Lanes(df));
  if (gs > L) {
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
#else
  (void)df;
  (void)v;
  (void)gs;
#endif
  return n;
}

/// P consecutive floats at p, repeated across the vector (P = 1: a broadcast; P = lanes: a
/// load).
template <int P, class D>
HWY_INLINE hn::Vec<D> BroadcastP(D d, const float* p) {
  if constexpr (P == 1) {
    return hn::Set(d, *p);
  } else if constexpr (P == 2) {
    const hn::Repartition<double, D> dd;
    double pair;
    std::memcpy(&pair, p, sizeof pair);
    return hn::BitCast(d, hn::Set(dd, pair));
  } else if constexpr (P == 4) {
    return hn::LoadDup128(d, p);
  } else {
    return hn::LoadU(d, p);
  }
}

/// One tile, one page at a time. A vector of W = 8 lanes holds RPG = 8 / P query rows times
/// P consecutive elements of the reduced dimension (lane = row * P + j):
///   logits  S[t][rows] = sum_d k[t][d] * q[d][rows]: the P dims k[t][d..d+P) (adjacent in
///           the key page) broadcast against the rows' queries laid out [d / P][row][j]; a
///           tree of pairwise adds sums each row's P lanes once per 8 tokens;
///   values  O[d][rows] += v[d][t] * p[t][rows]: the P tokens v[d][t..t+P) (adjacent in the
///           value page) broadcast against the weights laid out [t / P][row][j]; each row's P
///           lanes are summed once at the end of the tile.
/// Tile() takes P = 2 for 3-4 rows (4 rows x 2 lanes per vector) and P = 1 for more (8 rows
/// per vector, one element broadcast against them); one or two rows go to the token-lane
/// kernel. Every lane of every multiply-add does useful work for R = 4 and multiples of 8.
template <CacheKind K, int P>
void PackedTile(const KernelCall& kc, const TileJob& job, const RowInfo& ri) {
  using Elem = typename CacheTraits<K>::Elem;
  constexpr int X = 16 / int(sizeof(Elem));  // elements per key chunk
  static_assert(P <= X, "a pack of P dims lies inside one key chunk");
  const hn::CappedTag<float, 8> dr;          // W lanes
  const hn::CappedTag<float, 8 / P> dn;      // one lane per row of a row group
  const hn::RebindToSigned<decltype(dn)> di;
  using VR = hn::Vec<decltype(dr)>;
  using VN = hn::Vec<decltype(dn)>;
  const int W = static_cast<int>(hn::Lanes(dr));
  const int RPG = static_cast<int>(hn::Lanes(dn));
  const int D = kc.head_size, BS = kc.block_size, R = ri.R;
  const int NC = (D + X - 1) / X;
  const int RG = (R + RPG - 1) / RPG;
  const int BP = BS / P;  // token packs per block
  const std::size_t kpage = std::size_t(NC) * BS * X, vpage = std::size_t(D) * BS;
  const float kNegInf = -std::numeric_limits<float>::infinity();
  const float ones = mask_bits();

  // Scratch: queries [RG][D / P][W], outputs [RG][D][W], per-row states and facts [RG][RPG],
  // one block's logits [BS][RPG], weights and keep masks [BS / P][W].
  ThreadScratch& s = scratch();
  const std::size_t qn = std::size_t(RG) * D * RPG, rn = std::size_t(RG) * RPG;
  float* const buf = s.rows.get(2 * std::size_t(RG) * D * W + 8 * rn + std::size_t(BS) * RPG + 2 * std::size_t(BP) * W + 2 * W);
  float* const qT = buf;
  float* const O = qT + qn;
  float* const m = O + std::size_t(RG) * D * W;
  float* const mmax = m + rn;
  float* const l = mmax + rn;
  float* const row_pos = l + rn;  // int bits
  float* const row_first = row_pos + rn;
  float* const row_slope = row_first + rn;
  float* const row_block = row_slope + rn;  // per block: all-ones where the row attends it
  float* const row_real = row_block + rn;   // all-ones for real rows (not padding)
  float* const sb = row_real + rn;
  float* const pb = sb + std::size_t(BS) * RPG;
  float* const kb = pb + std::size_t(BP) * W;
  float* const tmp = kb + std::size_t(BP) * W;  // [2 W]

  for (int r = 0; r < RG * RPG; ++r) {
    const bool real = r < R;
    const int g = r / RPG, rl = r % RPG;
    for (int d = 0; d < D; ++d) qT[(std::size_t(g) * D + d - d % P) * RPG + rl * P + d % P] = real ? job.q[std::size_t(r) * D + d] : 0.0f;
    m[r] = mmax[r] = kNegInf;
    l[r] = 0.0f;
    const int pos = real ? ri.pos[r] : -1, first = real ? ri.first[r] : 0;
    std::memcpy(&row_pos[r], &pos, 4);
    std::memcpy(&row_first[r], &first, 4);
    row_slope[r] = real ? ri.slope[r] : 0.0f;
    row_real[r] = row_block[r] = real ? ones : 0.0f;
  }
  std::fill(O, O + std::size_t(RG) * D * W, 0.0f);

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
    // Which rows attend the block (without masks: every row, every block).
    bool all_full = !ri.masks;
    if (ri.masks) {
      bool any = false;
      for (int r = 0; r < RG * RPG; ++r) {
        const std::uint8_t md = r < R ? ri.mode(kc, job.kv_head, r, t0, nt) : std::uint8_t{kNone};
        row_block[r] = md != kNone ? ones : 0.0f;
        any |= md != kNone;
        all_full &= r >= R || md == kFull;
      }
      if (!any) continue;
    }
    // A block cut by the sequence's end, or that some row masks, multiplies in only the kept
    // (row, token) pairs: a masked weight is 0, but the value it would meet may be NaN.
    const bool masked = !all_full || nt != BS;
    if (b + pf < b_end) pages.prefetch(b + pf, kpage, vpage);

    // K and V pages as floats (fp32 pages are read in place).
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
      const std::size_t gi = std::size_t(g) * RPG;
      if (ri.masks && hn::AllFalse(dn, hn::MaskFromVec(hn::LoadU(dn, row_block + gi)))) continue;
      const float* q = qT + std::size_t(g) * D * RPG;

      // Logits of 8 tokens at a time.
      for (int tt = 0; tt < nt; tt += 8) {
        VR a[8];
        for (int u = 0; u < 8; ++u) a[u] = hn::Zero(dr);
        for (int c = 0; c < NC; ++c) {
          const int w = std::min(X, D - c * X);
          const float* kc0 = kt + (std::size_t(c) * BS + tt) * X;
          const float* qc = q + std::size_t(c) * X * RPG;
          for (int i = 0; i < w; i += P) {
            const VR qv = hn::Load(dr, qc + i * RPG);
            const float* k = kc0 + i;
            for (int u = 0; u < 8; ++u) a[u] = hn::MulAdd(BroadcastP<P>(dr, k + u * X), qv, a[u]);
          }
        }
        const int n = GroupSums(dr, a, 8, P);  // token-major: 8 tokens x RPG rows
        for (int j = 0; j < n; ++j) hn::StoreU(a[j], dr, sb + std::size_t(tt) * RPG + j * W);
      }

      // Soft-cap, ALiBi, masks; block max (NaN tracked apart: x86 max drops it).
      const auto real = hn::MaskFromVec(hn::LoadU(dn, row_real + gi));
      const auto pos = hn::BitCast(di, hn::LoadU(dn, row_pos + gi));
      VN bm = hn::Set(dn, kNegInf);
      auto nan = hn::MaskFromVec(hn::Zero(dn));
      if (transform || masked) {
        const auto first = hn::BitCast(di, hn::LoadU(dn, row_first + gi));
        const VN slope = hn::LoadU(dn, row_slope + gi);
        const auto attend = hn::MaskFromVec(hn::LoadU(dn, row_block + gi));
        if (kc.rule.soft_cap > 0.0f) SoftCapInPlace(sb, std::size_t(nt) * RPG, kc.rule.soft_cap, kc.rule.inv_soft_cap);
        for (int t = 0; t < nt; ++t) {
          VN v = hn::LoadU(dn, sb + std::size_t(t) * RPG);
          const auto tv = hn::Set(di, t0 + t);
          if (kc.alibi != nullptr) v = hn::Add(v, hn::Mul(slope, hn::ConvertTo(dn, hn::Sub(tv, pos))));
          if (masked) {
            const auto keep =
                hn::And(attend, hn::RebindMask(dn, hn::And(hn::Not(hn::Lt(tv, first)), hn::Not(hn::Gt(tv, pos)))));
            v = hn::IfThenElse(keep, v, hn::Set(dn, kNegInf));
            hn::StoreU(hn::VecFromMask(dn, keep), dn, tmp);
            for (int rl = 0; rl < RPG; ++rl) kb[std::size_t(t / P) * W + rl * P + t % P] = tmp[rl];
          }
          nan = hn::Or(nan, hn::IsNaN(v));
          bm = hn::Max(bm, v);
          hn::StoreU(v, dn, sb + std::size_t(t) * RPG);
        }
        if (masked)  // slots past the sequence's end in the last token pack
          for (int t = nt; t < (nt + P - 1) / P * P; ++t)
            for (int rl = 0; rl < RPG; ++rl) kb[std::size_t(t / P) * W + rl * P + t % P] = 0.0f;
      } else {
        for (int t = 0; t < nt; ++t) {
          const VN v = hn::LoadU(dn, sb + std::size_t(t) * RPG);
          nan = hn::Or(nan, hn::IsNaN(v));
          bm = hn::Max(bm, v);
        }
      }
      bm = hn::IfThenElse(hn::And(nan, real), hn::Set(dn, std::numeric_limits<float>::quiet_NaN()), bm);

      // Online softmax across the row group's lanes; rescale lazily.
      VN mv = hn::LoadU(dn, m + gi);
      hn::StoreU(MaxNan(dn, hn::LoadU(dn, mmax + gi), bm), dn, mmax + gi);
      const VN mn = MaxNan(dn, mv, bm);
      const auto grow = hn::Or(hn::Gt(mn, hn::Add(mv, hn::Set(dn, kLazyRescale))), hn::IsNaN(mn));
      VN lv = hn::LoadU(dn, l + gi);
      if (!hn::AllFalse(dn, grow)) {
        const VN alpha = hn::IfThenElse(grow, hn::Exp(dn, hn::Sub(mv, mn)), hn::Set(dn, 1.0f));
        mv = hn::IfThenElse(grow, mn, mv);
        hn::StoreU(mv, dn, m + gi);
        lv = hn::Mul(lv, alpha);
        hn::StoreU(alpha, dn, tmp);
        for (int lane = W - 1; lane >= 0; --lane) tmp[lane] = tmp[lane / P];  // row r -> lanes r * P + j
        const VR aw = hn::LoadU(dr, tmp);
        float* og = O + std::size_t(g) * D * W;
        for (int d = 0; d < D; ++d) hn::Store(hn::Mul(hn::Load(dr, og + d * W), aw), dr, og + d * W);
      }
      const VN mu = hn::IfThenElseZero(hn::Ne(mv, hn::Set(dn, kNegInf)), mv);  // exp(-inf - 0) = 0
      for (int t = 0; t < nt; ++t) {
        const VN p = hn::Exp(dn, hn::Sub(hn::LoadU(dn, sb + std::size_t(t) * RPG), mu));
        lv = hn::Add(lv, p);
        hn::StoreU(p, dn, tmp);
        for (int rl = 0; rl < RPG; ++rl) pb[std::size_t(t / P) * W + rl * P + t % P] = tmp[rl];
      }
      for (int t = nt; t < (nt + P - 1) / P * P; ++t)
        for (int rl = 0; rl < RPG; ++rl) pb[std::size_t(t / P) * W + rl * P + t % P] = 0.0f;
      hn::StoreU(lv, dn, l + gi);

      // Values, 8 dims at a time (D is a multiple of 8).
      const int np = (nt + P - 1) / P;
      float* og = O + std::size_t(g) * D * W;
      for (int d0 = 0; d0 < D; d0 += 8) {
        float* o = og + std::size_t(d0) * W;
        VR a[8];
        for (int u = 0; u < 8; ++u) a[u] = hn::Load(dr, o + u * W);
        const float* v = vt + std::size_t(d0) * BS;
        if (!masked) {
          for (int tp = 0; tp < BP; ++tp) {
            const VR p = hn::Load(dr, pb + std::size_t(tp) * W);
            for (int u = 0; u < 8; ++u) a[u] = hn::MulAdd(BroadcastP<P>(dr, v + u * BS + tp * P), p, a[u]);
          }
        } else {
          for (int tp = 0; tp < np; ++tp) {
            const VR p = hn::Load(dr, pb + std::size_t(tp) * W);
            const auto k = hn::MaskFromVec(hn::Load(dr, kb + std::size_t(tp) * W));
            for (int u = 0; u < 8; ++u)
              a[u] = hn::IfThenElse(k, hn::MulAdd(BroadcastP<P>(dr, v + u * BS + tp * P), p, a[u]), a[u]);
          }
        }
        for (int u = 0; u < 8; ++u) hn::Store(a[u], dr, o + u * W);
      }
    }
  }

  for (int r = 0; r < R; ++r) {
    const int g = r / RPG, rl = r % RPG;
    job.m[r] = m[r];
    job.m_max[r] = mmax[r];
    job.l[r] = l[r];
    const float* og = O + std::size_t(g) * D * W + rl * P;
    float* o = job.o + std::size_t(r) * D;
    for (int d = 0; d < D; ++d) {
      float sum = 0.0f;
      for (int j = 0; j < P; ++j) sum += og[std::size_t(d) * W + j];
      o[d] = sum;
    }
  }
}

/// The token-lane kernel, for one or two rows (MHA, group 2): one multiply-add per full
/// vector of the cache as it lies, decoded in registers (no tile). The logits of a token group
/// are dot products over the x-element key chunks, summed across lanes for several tokens at
/// once (GroupSums); the output is kept as per-(dim, token slot) partial sums in the value
/// page's own layout [D][BS], reduced once at the end of the tile.
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
      if (kc.rule.soft_cap > 0.0f) SoftCapInPlace(sr, std::size_t(BS), kc.rule.soft_cap, kc.rule.inv_soft_cap);
      for (int t = 0; t < BS; t += L8) {
        V8 v = hn::LoadU(d8, sr + t);
        const auto tv = hn::Iota(di8, t0 + t);
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
  // One or two rows: token lanes (full vectors, cache decoded in registers). More: packed
  // row lanes, two dims / tokens per row for 3-4 rows so every lane works (the portable
  // target has one lane: P = 1).
  if (R <= 2) {
    switch (kc.block_size * 4 + R) {
      case 8 * 4 + 1: return TokenLaneTile<K, 1, 8>(kc, job, ri);
      case 16 * 4 + 1: return TokenLaneTile<K, 1, 16>(kc, job, ri);
      case 32 * 4 + 1: return TokenLaneTile<K, 1, 32>(kc, job, ri);
      case 8 * 4 + 2: return TokenLaneTile<K, 2, 8>(kc, job, ri);
      case 16 * 4 + 2: return TokenLaneTile<K, 2, 16>(kc, job, ri);
      default: return TokenLaneTile<K, 2, 32>(kc, job, ri);
    }
  }
  if constexpr (hn::MaxLanes(hn::CappedTag<float, 8>()) == 8) {
    if (R <= 4) return PackedTile<K, 2>(kc, job, ri);
  }
  PackedTile<K, 1>(kc, job, ri);
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

}  // namespace

/// The table index to run: PAGEDATTN_CPU_KERNEL's target when it names a runnable one
/// ("generic" = the last, portable one), else the best.
int chosen_kernel_target() {
  const std::vector<std::int64_t> ts = runnable();
  const char* want = std::getenv("PAGEDATTN_CPU_KERNEL");
  if (want != nullptr && *want != '\0') {
    if (std::strcmp(want, "generic") == 0) return static_cast<int>(table_index(ts.back()));
    for (std::int64_t t : ts)
      if (strcasecmp(want, hwy::TargetName(t)) == 0) return static_cast<int>(table_index(t));
  }
  return static_cast<int>(table_index(ts.front()));
}

void attend_tile(const KernelCall& kc, const TileJob& job) { (*HWY_DISPATCH_TABLE(AttendTile)[kc.target])(kc, job); }

std::string cpu_kernel_target() { return (*HWY_DISPATCH_TABLE(TargetName)[chosen_kernel_target()])(); }

std::vector<std::string> cpu_kernel_targets() {
  std::vector<std::string> names;
  for (std::int64_t t : runnable()) names.emplace_back(hwy::TargetName(t));
  return names;
}

}  // namespace pagedattn::detail::cpu
#endif  // HWY_ONCE
