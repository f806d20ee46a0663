// The CPU attention backend (SPEC §3, §3b): V1 and V2 with the same partial-result contract
// as the GPU kernels; V1 also carries every §3b variant (the auto entry point runs it).
//
// Work is split over (sequence, kv head) — and, for V2, partition — with OpenMP. One work
// item handles every query row of its kv head: each query token of the sequence times each
// head of the GQA group, so each cached key/value element is decoded once per call (per
// tile of kTileRows rows, when a sequence has more query tokens than a tile holds). A work
// item runs two passes over the tokens its rows attend (core/attention_rules.h's
// attended_span: blocks wholly outside it, before a sliding window, are never read):
//   1. decode each key block (one contiguous run, in the cache's [head_size/x][block_size][x]
//      layout) into a float tile and compute the logits of the rows, in tiles of up to 4
//      rows, as 8-lane dot products; soft-cap and ALiBi (LogitsRule::logit) and the causal,
//      window and block-sparse masks follow;
//   2. softmax (max, exp, sum) per row, then decode each value block into a float tile
//      and accumulate p . v per row as 8-lane partial sums.
// A span longer than the logits buffer allows (kLogitsBudget) is cut into pieces whose
// states merge exactly (rescale by the running max), as V2's reduce does.
// The kernel (attention_kernel.inc) is compiled twice: for AVX2 + F16C + FMA, chosen at run
// time when the CPU has them, and for baseline x86-64; they agree within the reference
// tolerance (the AVX2 copy fuses its multiply-adds), and each gives the same bits run to run
// and at any thread count (a work item's arithmetic does not depend on which thread runs it).
// Cache blocks are software-prefetched two blocks ahead (the block table defeats the
// hardware prefetcher; PAGEDATTN_CPU_PREFETCH=N sets the distance for measurements: 1-16
// blocks measured the same within this shared machine's noise, docs/performance.md).
// All arithmetic is float32; the result is rounded to the query dtype once at the end.
// NaN (SPEC §3): maxima use max_nan and emptiness is tested as `l == 0`, so a NaN in a query
// row, or in an attended key or value, reaches exactly the rows it enters.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#include "core/attention_rules.h"
#include "core/backend.h"
#include "core/check.h"
#include "cpu/elem.h"

// The AVX2 copy of the kernel is compiled with GCC's `#pragma GCC target`; other compilers
// (clang included) build the generic copy only.
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define PAGEDATTN_CPU_X86 1
#include <immintrin.h>
#else
#define PAGEDATTN_CPU_X86 0
#endif

namespace pagedattn::detail::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

/// Allocator of the kernel's scratch: 64-byte (cache line) aligned, so the 8-lane loads of
/// the query, key, value and partial-sum tiles never straddle two lines because of where the
/// heap happened to put them.
template <class T>
struct LineAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  LineAligned() = default;
  template <class U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const LineAligned<U>&) const { return true; }
  template <class U>
  bool operator!=(const LineAligned<U>&) const { return false; }
};
using FloatBuf = std::vector<float, LineAligned<float>>;

/// Per-call constants every work item reads.
struct Call {
  const PagedAttentionParams* p = nullptr;
  const AttentionShape* s = nullptr;
  const std::int32_t* seq_lens = nullptr;
  const std::int32_t* block_tables = nullptr;
  const std::int32_t* query_start_loc = nullptr;  ///< nullptr: one query token per sequence
  const float* alibi = nullptr;  ///< [num_heads] or nullptr
  float* lse = nullptr;          ///< [num_rows, num_heads] or nullptr
  LogitsRule rule;               ///< soft-cap, window, block-sparse
  bool transform = false;        ///< soft-cap or ALiBi: logits go through rule.logit
  /// fp8 caches only: one decode table per kv head with per-head scales, else one.
  std::vector<Fp8Table> k_tables, v_tables;
  const Fp8Table& k_table(int g) const { return k_tables[k_tables.size() > 1 ? g : 0]; }
  const Fp8Table& v_table(int g) const { return v_tables[v_tables.size() > 1 ? g : 0]; }
};

// The kernel passes 8-lane vectors between inline functions; without AVX that would be an
// ABI change (-Wpsabi) if they were ever called across translation units, which they are not.
// (GCC reports it where templates are instantiated, at the end of the file: the pop is there.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#define PAGEDATTN_CPU_ISA_NS generic
#define PAGEDATTN_CPU_F16C 0
#define PAGEDATTN_CPU_FMA 0
#include "cpu/attention_kernel.inc"
#undef PAGEDATTN_CPU_ISA_NS
#undef PAGEDATTN_CPU_F16C
#undef PAGEDATTN_CPU_FMA

#if PAGEDATTN_CPU_X86
#pragma GCC push_options
#pragma GCC target("avx2,f16c,fma")
#define PAGEDATTN_CPU_ISA_NS avx2
#define PAGEDATTN_CPU_F16C 1
#define PAGEDATTN_CPU_FMA 1
#include "cpu/attention_kernel.inc"
#undef PAGEDATTN_CPU_ISA_NS
#undef PAGEDATTN_CPU_F16C
#undef PAGEDATTN_CPU_FMA
#pragma GCC pop_options
#endif

/// Whether to run the avx2 copy of the kernel: the CPU (and OS) supports AVX2, F16C and FMA,
/// and the environment variable PAGEDATTN_CPU_KERNEL is not "generic" (a testing knob that
/// forces the baseline copy: tests/cpu checks both copies against the reference).
[[maybe_unused]] bool use_avx2() {
#if PAGEDATTN_CPU_X86
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
  const char* force = std::getenv("PAGEDATTN_CPU_KERNEL");
  return ok && !(force != nullptr && std::strcmp(force, "generic") == 0);
#else
  return false;
#endif
}

Call make_call(const PagedAttentionParams& p, const AttentionShape& s) {
  Call c;
  c.p = &p;
  c.s = &s;
  c.seq_lens = static_cast<const std::int32_t*>(p.seq_lens.data);
  c.block_tables = static_cast<const std::int32_t*>(p.block_tables.data);
  c.query_start_loc = s.multi_token ? static_cast<const std::int32_t*>(p.query_start_loc.data) : nullptr;
  c.alibi = p.alibi_slopes.defined() ? static_cast<const float*>(p.alibi_slopes.data) : nullptr;
  c.lse = p.lse.defined() ? static_cast<float*>(p.lse.data) : nullptr;
  c.rule = make_logits_rule(p, s);
  c.transform = c.rule.soft_cap > 0.0f || c.alibi != nullptr;
  if (p.kv_cache_dtype == CacheDType::kAuto) {
    c.k_tables.resize(1);  // unused by the float decoders
    c.v_tables.resize(1);
  } else if (p.k_scales.defined()) {  // per kv head (validation: both given, host float32)
    const auto* ks = static_cast<const float*>(p.k_scales.data);
    const auto* vs = static_cast<const float*>(p.v_scales.data);
    for (int g = 0; g < s.num_kv_heads; ++g) {
      c.k_tables.emplace_back(p.kv_cache_dtype, ks[g]);
      c.v_tables.emplace_back(p.kv_cache_dtype, vs[g]);
    }
  } else {
    c.k_tables.emplace_back(p.kv_cache_dtype, p.k_scale);
    c.v_tables.emplace_back(p.kv_cache_dtype, p.v_scale);
  }
  return c;
}

/// Rows of one work item at most in one pass over the keys: a sequence with more query
/// tokens runs its tokens in tiles of kTileRows / group_size (at least one token), each
/// over the span its own rows attend.
constexpr int kTileRows = 128;
/// Floats of logits one run holds (rows x tokens, 1 MiB): a longer span is cut into pieces
/// of whole partitions whose states are merged. A plain decode (one token, group <= 8) runs
/// sequences of up to 32768 tokens in one piece.
constexpr int kLogitsBudget = 1 << 18;

/// Tokens per piece of a span for `rows` rows: a multiple of kPartitionSize (so of every
/// block size), at least one partition.
int piece_tokens(int rows) {
  return std::max(kPartitionSize, kLogitsBudget / std::max(rows, 1) / kPartitionSize * kPartitionSize);
}

/// Running softmax states of a tile's rows across the pieces of its span: the exact merge
/// of SPEC §3 (rescale by the running max; a NaN max makes the row NaN).
struct RowStates {
  std::vector<float> m, l, acc;
  int D = 0;

  void reset(int rows, int head_size) {
    D = head_size;
    m.assign(rows, neg_inf());
    l.assign(rows, 0.0f);
    acc.assign(std::size_t(rows) * D, 0.0f);
  }
  template <class Worker>
  void add(const Worker& w) {
    for (int r = 0; r < w.rows(); ++r) {
      const float mn = max_nan(m[r], w.max_logit(r));
      const float a = rescale(m[r], mn), b = rescale(w.max_logit(r), mn);
      l[r] = l[r] * a + w.exp_sum(r) * b;
      float* o = &acc[std::size_t(r) * D];
      const float* x = w.acc(r);
      for (int d = 0; d < D; ++d) o[d] = o[d] * a + x[d] * b;
      m[r] = mn;
    }
  }
};

/// Writes query row `qrow`, head `head` from its softmax state: out = acc / l, zeros for a
/// row that attended nothing (l == 0; NaN is not 0); lse = m + ln l (-inf when empty).
template <class T>
void write_row(const Call& c, std::int64_t qrow, int head, float m, float l, const float* acc) {
  const AttentionShape& s = *c.s;
  const int D = s.head_size;
  auto* o = static_cast<typename T::Storage*>(c.p->out.data) + (qrow * s.num_heads + head) * D;
  if (l == 0.0f) {
    for (int d = 0; d < D; ++d) o[d] = T::store(0.0f);
  } else {
    const float inv = 1.0f / l;
    for (int d = 0; d < D; ++d) o[d] = T::store(acc[d] * inv);
  }
  if (c.lse != nullptr) c.lse[qrow * s.num_heads + head] = lse_of(m, l);
}

template <class T, class C, int BS, class Worker>
void v1_impl(const Call& c) {
  const AttentionShape& s = *c.s;
  const int G = s.group_size();
  const int tile_tokens = std::max(1, kTileRows / G);
  const std::int64_t items = std::int64_t(s.num_seqs) * s.num_kv_heads;
#pragma omp parallel
  {
    Worker w(c);
    RowStates states;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t it = 0; it < items; ++it) {
      const int seq = static_cast<int>(it / s.num_kv_heads);
      const int g = static_cast<int>(it % s.num_kv_heads);
      const int len = c.seq_lens[seq];
      const QueryRows qr = query_rows(c.query_start_loc, seq);
      // tiles of query tokens; row r of a tile is token r / G, head g * G + r % G
      for (int j0 = 0; j0 < qr.count; j0 += tile_tokens) {
        const int ntok = std::min(tile_tokens, qr.count - j0);
        const int pos0 = len - qr.count + j0;  // the tile's first row; its last is pos0 + ntok - 1
        const std::int64_t qrow = std::int64_t(qr.first) + j0;
        const int rows = ntok * G;
        // tokens the tile's rows attend: its rows as the last ntok of a sequence of
        // pos0 + ntok tokens (empty when every row sits before the sequence's start)
        const Span span = attended_span(c.rule, pos0 + ntok, ntok, BS);
        if (span.hi <= span.lo) {
          for (int r = 0; r < rows; ++r) write_row<T>(c, qrow + r / G, g * G + r % G, neg_inf(), 0.0f, nullptr);
          continue;
        }
        w.set_rows(seq, g, qrow, pos0, ntok);
        const int piece = piece_tokens(rows);
        if (span.hi - span.lo <= piece) {  // one run: its state is the answer
          w.run(span.lo, span.hi);
          for (int r = 0; r < rows; ++r)
            write_row<T>(c, qrow + r / G, g * G + r % G, w.max_logit(r), w.exp_sum(r), w.acc(r));
          continue;
        }
        states.reset(rows, s.head_size);
        for (int t = span.lo; t < span.hi; t += piece) {
          w.run(t, std::min(span.hi, t + piece));
          states.add(w);
        }
        for (int r = 0; r < rows; ++r) {
          const float* acc = &states.acc[std::size_t(r) * s.head_size];
          write_row<T>(c, qrow + r / G, g * G + r % G, states.m[r], states.l[r], acc);
        }
      }
    }
  }
}

template <class T, class C, int BS, class Worker>
void v2_impl(const Call& c, const V2Workspace& ws) {
  const AttentionShape& s = *c.s;
  const int G = s.group_size();
  const int D = s.head_size;
  const std::int64_t P = ws.exp_sums.shape[2];  // partition stride of the workspace
  const int parts = s.max_num_partitions;
  auto* exp_sums = static_cast<float*>(ws.exp_sums.data);
  auto* max_logits = static_cast<float*>(ws.max_logits.data);
  auto* tmp_out = static_cast<typename T::Storage*>(ws.tmp_out.data);
  auto* out = static_cast<typename T::Storage*>(c.p->out.data);

  // Step 1: partial results per (sequence, kv head, partition). V2 keeps vLLM's contract: one
  // query row per sequence, at position len - 1.
  const std::int64_t items = std::int64_t(s.num_seqs) * s.num_kv_heads * parts;
#pragma omp parallel
  {
    Worker w(c);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t it = 0; it < items; ++it) {
      const int part = static_cast<int>(it % parts);
      const int g = static_cast<int>((it / parts) % s.num_kv_heads);
      const int seq = static_cast<int>(it / (std::int64_t(parts) * s.num_kv_heads));
      const int len = c.seq_lens[seq];
      const int t_begin = part * kPartitionSize;
      if (t_begin >= len) continue;  // partitions past the end are skipped
      const int t_end = std::min(len, t_begin + kPartitionSize);
      w.set_rows(seq, g, seq, len - 1, 1);
      w.run(t_begin, t_end);
      for (int j = 0; j < G; ++j) {
        const std::int64_t row = (std::int64_t(seq) * s.num_heads + g * G + j) * P + part;
        const float l = w.exp_sum(j);
        max_logits[row] = w.max_logit(j);
        exp_sums[row] = l;
        auto* o = tmp_out + row * D;
        const float inv = l == 0.0f ? 0.0f : 1.0f / l;  // NaN stays NaN
        const float* acc = w.acc(j);
        for (int d = 0; d < D; ++d) o[d] = T::store(acc[d] * inv);
      }
    }
  }

  // Step 2: reduce per (sequence, head).
  const std::int64_t rows = std::int64_t(s.num_seqs) * s.num_heads;
#pragma omp parallel
  {
    std::vector<float> acc(D), w(parts);
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const int seq = static_cast<int>(r / s.num_heads);
      const int len = c.seq_lens[seq];
      auto* o = out + r * D;
      // step 1 wrote at most `parts` partitions: with unchecked data a seq_len beyond
      // max_seq_len must not index past the workspace (the CUDA reduce clamps the same way)
      const int np = std::min((len + kPartitionSize - 1) / kPartitionSize, parts);
      if (np == 1) {  // one partition: its normalised output is the answer
        const auto* src = tmp_out + r * P * D;
        std::copy(src, src + D, o);
        continue;
      }
      float M = kNegInf;
      for (int j = 0; j < np; ++j) M = max_nan(M, max_logits[r * P + j]);
      float wsum = 0.0f;
      for (int j = 0; j < np; ++j) {
        w[j] = merge_weight(max_logits[r * P + j], exp_sums[r * P + j], M);  // 0 for an empty partition
        wsum += w[j];
      }
      if (wsum == 0.0f) {  // empty sequence, or every token masked
        for (int d = 0; d < D; ++d) o[d] = T::store(0.0f);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int j = 0; j < np; ++j) {
        if (exp_sums[r * P + j] == 0.0f) continue;  // an empty partition is not multiplied in
        const auto* src = tmp_out + (r * P + j) * D;
        for (int d = 0; d < D; ++d) acc[d] += w[j] * T::load(src[d]);
      }
      const float inv = 1.0f / wsum;
      for (int d = 0; d < D; ++d) o[d] = T::store(acc[d] * inv);
    }
  }
}

/// Calls f.template operator()<T, C>() for the (query dtype, cache format) pair of the call.
template <class F>
void dispatch(const AttentionShape& s, CacheDType cache, F&& f) {
  const bool fp8 = cache != CacheDType::kAuto;
  switch (s.dtype) {
    case DType::kFloat32:
      return fp8 ? f.template operator()<F32, Fp8>() : f.template operator()<F32, F32>();
    case DType::kFloat16:
      return fp8 ? f.template operator()<F16, Fp8>() : f.template operator()<F16, F16>();
    case DType::kBFloat16:
      return fp8 ? f.template operator()<BF16, Fp8>() : f.template operator()<BF16, BF16>();
    default:
      fail(ErrorCode::kUnsupported, "cpu attention: unsupported query dtype ", dtype_name(s.dtype));
  }
}

/// Turns the runtime block size into the compile-time one.
template <class T, class C, class F>
void with_block_size(int block_size, F&& f) {
  switch (block_size) {
    case 8: return f.template operator()<T, C, 8>();
    case 16: return f.template operator()<T, C, 16>();
    case 32: return f.template operator()<T, C, 32>();
    default: fail(ErrorCode::kUnsupported, "cpu attention: unsupported block_size ", block_size);
  }
}

struct RunV1 {
  const Call& c;
  template <class T, class C, int BS>
  void operator()() const {
#if PAGEDATTN_CPU_X86
    if (use_avx2()) return v1_impl<T, C, BS, avx2::RowWorker<T, C, BS>>(c);
#endif
    v1_impl<T, C, BS, generic::RowWorker<T, C, BS>>(c);
  }
};

struct RunV2 {
  const Call& c;
  const V2Workspace& ws;
  template <class T, class C, int BS>
  void operator()() const {
#if PAGEDATTN_CPU_X86
    if (use_avx2()) return v2_impl<T, C, BS, avx2::RowWorker<T, C, BS>>(c, ws);
#endif
    v2_impl<T, C, BS, generic::RowWorker<T, C, BS>>(c, ws);
  }
};

/// Adapts a (T, C, BS) functor to dispatch()'s (T, C) call.
template <class F>
struct BlockSizeSwitch {
  int block_size;
  F f;
  template <class T, class C>
  void operator()() const { with_block_size<T, C>(block_size, f); }
};

}  // namespace

void attention_v1(const PagedAttentionParams& p, const AttentionShape& s) {
  const Call c = make_call(p, s);
  dispatch(s, p.kv_cache_dtype, BlockSizeSwitch<RunV1>{s.block_size, RunV1{c}});
}

void attention_v2(const PagedAttentionParams& p, const AttentionShape& s, const V2Workspace& ws) {
  const Call c = make_call(p, s);
  dispatch(s, p.kv_cache_dtype, BlockSizeSwitch<RunV2>{s.block_size, RunV2{c, ws}});
}

}  // namespace pagedattn::detail::cpu
#pragma GCC diagnostic pop
