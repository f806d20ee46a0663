// The CPU backend through the public API (V1, V2, auto) against the float64 reference, on
// fresh random problems whose unused cache slots, unreferenced blocks, outputs and V2
// workspaces are NaN-poisoned, so a result cannot depend on memory it should not read.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common/test_util.h"
#include "core/validate.h"
#include "core/check.h"
#include "cpu/attention_kernel.h"
#include "pagedattn/attention.h"
#include "reference/reference.h"

namespace pagedattn {
namespace {

using test::build_problem;
using test::HostProblem;
using test::ProblemConfig;

enum class Algo { kV1, kV2, kAuto };
const char* algo_name(Algo a) { return a == Algo::kV1 ? "v1" : a == Algo::kV2 ? "v2" : "auto"; }

// Tolerances. The kernel and the reference read the same stored query and cache values
// (fp8 bytes decode exactly; decode * scale is one float rounding, 2^-24 relative), so the
// differences come from:
//   (a) the final rounding of out to T: at most u_T * |ref|, with the unit roundoff
//       u_T = 2^-24 (float32), 2^-11 (float16: 11 significant bits), 2^-8 (bfloat16: 8);
//   (b) V2 also stores each partition's normalised o_j in T before the reduce; the reduce
//       is a convex combination, so that rounding adds at most u_T * max|v|;
//   (c) float32 accumulation: logits (<= 256-term dots of values <= 1, scaled by
//       1/sqrt(head_size)), exp, and sums over <= 1537 tokens. A pessimistic bound of the
//       relative error of the softmax-weighted average is ~ (head_size + L) * 2^-24 < 2e-4;
//       observed errors are ~1e-6. We allow 1e-4 * max|v| absolute (random-walk growth is
//       far below it; a wrong index or a dropped token moves the result by ~1e-2 or more).
double unit_roundoff(DType t) {
  switch (t) {
    case DType::kFloat16: return std::ldexp(1.0, -11);
    case DType::kBFloat16: return std::ldexp(1.0, -8);
    default: return std::ldexp(1.0, -24);
  }
}

struct Tol {
  double rtol, atol;
  double of(double ref) const { return rtol * std::abs(ref) + atol; }
};

Tol out_tol(DType t, double vmax, bool rounded_twice) {
  const double u = unit_roundoff(t);
  return {u * (1.0 + 1e-3), (rounded_twice ? u : 0.0) * vmax + 1e-4 * vmax};
}

/// lse = m + ln(l) in float32: m carries the logit error of the max_logits check (64 ulp of
/// |m| + 16, the dot magnitude bound), ln(l) the exp-sum's relative error 2e-4 as an
/// absolute one. Relative part 64 ulp of |lse|.
Tol lse_tol() { return {64 * std::ldexp(1.0, -24), 2e-4 + 64 * std::ldexp(1.0, -24) * 16.0}; }

/// Largest |v| the cache can hold for this problem (with per-head scales: the largest).
double vmax_of(const ProblemConfig& c) {
  const double v_scale = c.per_head_scales ? 2.0 : c.v_scale;  // build_problem draws per-head scales in [0.25, 2)
  return c.kv_range * (c.kv_cache_dtype == CacheDType::kAuto ? 1.0 : v_scale);
}

std::string describe(const ProblemConfig& c, Algo a) {
  std::string q_lens;
  for (int q : c.q_lens) q_lens += detail::cat(q_lens.empty() ? "" : ",", q);
  return detail::cat(algo_name(a), " dtype=", dtype_name(c.dtype), " cache=", cache_dtype_name(c.kv_cache_dtype),
                     " bs=", c.block_size, " D=", c.head_size, " H=", c.num_heads, "/", c.num_kv_heads,
                     c.alibi ? " alibi" : "", c.blocksparse.enabled() ? " sparse" : "",
                     " tp_rank=", c.tp_rank, q_lens.empty() ? "" : " q_lens=" + q_lens,
                     c.window_left >= 0 ? detail::cat(" window=", c.window_left) : "",
                     c.logits_soft_cap > 0 ? detail::cat(" soft_cap=", c.logits_soft_cap) : "", c.lse ? " lse" : "",
                     c.per_head_scales ? " per-head-scales" : "");
}

/// Counts elements outside tolerance, reporting the first few. A NaN matches only a NaN
/// (SPEC §3: a NaN input must reach exactly the rows it enters); -inf only -inf.
int compare(const std::vector<double>& got, const std::vector<double>& want, const Tol& tol, const std::string& what,
            int head_size) {
  EXPECT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double err = std::abs(got[i] - want[i]);
    const bool same_special = (std::isnan(got[i]) && std::isnan(want[i])) || (std::isinf(want[i]) && got[i] == want[i]);
    if (!same_special && !(err <= tol.of(want[i]))) {
      if (++bad <= 5)
        ADD_FAILURE() << what << ": element " << i << " (row " << i / head_size << ", d " << i % head_size
                      << ") got " << got[i] << " want " << want[i] << " err " << err << " tol " << tol.of(want[i]);
    }
  }
  return bad;
}

/// Runs one algorithm on `pb` and checks out (and, for V2, the partial results).
void run_and_check(HostProblem pb, Algo algo) {
  const ProblemConfig& c = pb.cfg;
  SCOPED_TRACE(describe(c, algo));
  const std::vector<double> want = ref::attention(pb.params);
  const double vmax = vmax_of(c);
  if (algo == Algo::kV1) {
    paged_attention_v1(pb.params);
  } else if (algo == Algo::kAuto) {
    const std::size_t bytes = paged_attention_workspace_size(pb.params);
    std::vector<unsigned char> ws(bytes + 256);
    void* aligned = ws.data() + (256 - reinterpret_cast<std::uintptr_t>(ws.data()) % 256) % 256;
    paged_attention(pb.params, bytes ? aligned : nullptr, bytes);
  } else {
    auto ws = pb.make_workspace();
    paged_attention_v2(pb.params, ws.views());
    // Partial results of every partition that starts before its sequence's end.
    const ref::Partials parts = ref::attention_partitions(pb.params);
    const int P = parts.num_partitions, D = c.head_size;
    ASSERT_EQ(ws.exp_sums.view.shape[2], P);
    const Tol o_tol = out_tol(c.dtype, vmax, false);
    int bad = 0;
    for (std::size_t row = 0; row < parts.valid.size(); ++row) {
      if (!parts.valid[row]) continue;
      const double m = test::load_value(ws.max_logits.view.data, DType::kFloat32, std::int64_t(row));
      const double l = test::load_value(ws.exp_sums.view.data, DType::kFloat32, std::int64_t(row));
      std::vector<double> o(D), want_o(parts.out.begin() + row * D, parts.out.begin() + (row + 1) * D);
      for (int d = 0; d < D; ++d) o[d] = test::load_value(ws.tmp_out.view.data, c.dtype, std::int64_t(row) * D + d);
      if (parts.exp_sums[row] == 0.0) {  // every token of the partition masked
        if (!(l == 0.0 && m == -std::numeric_limits<double>::infinity()) && ++bad <= 5)
          ADD_FAILURE() << "masked partition row " << row << ": exp_sum " << l << " max_logit " << m;
      } else {
        // max_logit: a float32 logit, error ~ eps32 * (|m| + dot magnitude <= sqrt(head_size)).
        const double m_tol = 64 * std::ldexp(1.0, -24) * (std::abs(parts.max_logits[row]) + 16.0);
        if (!(std::abs(m - parts.max_logits[row]) <= m_tol) && ++bad <= 5)
          ADD_FAILURE() << "max_logits row " << row << " got " << m << " want " << parts.max_logits[row];
        // exp_sum: <= 512 terms in (0, 1], each with the logit error above: relative 2e-4.
        if (!(std::abs(l - parts.exp_sums[row]) <= 2e-4 * parts.exp_sums[row]) && ++bad <= 5)
          ADD_FAILURE() << "exp_sums row " << row << " got " << l << " want " << parts.exp_sums[row];
      }
      bad += compare(o, want_o, o_tol, detail::cat("tmp_out row ", row), D);
    }
    EXPECT_EQ(bad, 0) << "V2 partial results differ from ref::attention_partitions";
  }
  const bool twice = algo == Algo::kV2;
  EXPECT_EQ(compare(pb.out_values(), want, out_tol(c.dtype, vmax, twice), "out", c.head_size), 0);
  if (c.lse && algo == Algo::kAuto)
    EXPECT_EQ(compare(pb.lse_values(), ref::lse(pb.params), lse_tol(), "lse", c.num_heads), 0);
}

/// A problem with SPEC §3b variants: only the auto entry point takes it.
void run_auto(const HostProblem& pb) { run_and_check(pb, Algo::kAuto); }

void run_all(const HostProblem& pb) {
  for (Algo a : {Algo::kV1, Algo::kV2, Algo::kAuto}) run_and_check(pb, a);
}

constexpr DType kDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
constexpr CacheDType kCacheDTypes[] = {CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2};
constexpr auto kHeadSizes = detail::kHeadSizes;  // the library's one list

// Every query dtype x cache dtype x block size; head sizes rotate so each appears 3 times,
// kv heads rotate over MHA / GQA / MQA; fp8 caches use non-unit scales.
TEST(CpuAttention, DtypeMatrix) {
  PAGEDATTN_TEST_RNG(rng);
  int k = 0;
  for (DType t : kDTypes)
    for (CacheDType cd : kCacheDTypes)
      for (int bs : {8, 16, 32}) {
        ProblemConfig c;
        c.dtype = t;
        c.kv_cache_dtype = cd;
        c.block_size = bs;
        c.head_size = kHeadSizes[k % kHeadSizes.size()];
        c.num_heads = 4;
        c.num_kv_heads = (k % 3 == 0) ? 4 : (k % 3 == 1) ? 2 : 1;
        c.num_seqs = 4;
        c.seq_lens = {1, 17, static_cast<int>(rng.randint(2, 600)), 0};
        if (cd != CacheDType::kAuto) {
          c.k_scale = 0.5f;
          c.v_scale = 2.0f;
        }
        ++k;
        run_all(build_problem(c, rng));
      }
}

// The lengths around block and partition edges, in one batch, with max_seq_len above them.
TEST(CpuAttention, LengthsAroundEdges) {
  PAGEDATTN_TEST_RNG(rng);
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    ProblemConfig c;
    c.dtype = t;
    c.num_seqs = 8;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_size = 128;
    c.block_size = 16;
    c.seq_lens = {1, 15, 16, 17, 511, 512, 513, 1537};
    c.max_seq_len = 1600;  // more partitions than the longest sequence needs
    run_all(build_problem(c, rng));
  }
}

TEST(CpuAttention, GqaGroups) {
  PAGEDATTN_TEST_RNG(rng);
  const int cases[][2] = {{8, 8}, {8, 4}, {8, 2}, {8, 1}, {16, 2}, {16, 1}};  // groups 1,2,4,8,8,16(all)
  int k = 0;
  for (auto [h, kvh] : cases) {
    ProblemConfig c;
    c.num_heads = h;
    c.num_kv_heads = kvh;
    c.head_size = kHeadSizes[(k * 4 + 1) % kHeadSizes.size()];
    c.block_size = (k % 2) ? 32 : 8;
    c.dtype = kDTypes[k % 3];
    c.kv_cache_dtype = kCacheDTypes[(k + 1) % 3];
    c.num_seqs = 3;
    c.seq_lens = {static_cast<int>(rng.randint(1, 40)), 530, static_cast<int>(rng.randint(100, 1100))};
    ++k;
    run_all(build_problem(c, rng));
  }
}

TEST(CpuAttention, Alibi) {
  PAGEDATTN_TEST_RNG(rng);
  for (DType t : kDTypes) {
    ProblemConfig c;
    c.dtype = t;
    c.alibi = true;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_size = 64;
    c.num_seqs = 3;
    c.seq_lens = {1, 513, 1537};
    run_all(build_problem(c, rng));
  }
}

// Block-sparse, sliding by query head (step >= 0) and by kv head (step < 0), tp_rank > 0.
// Blocks masked for a whole GQA group are NaN-poisoned: reading one would show.
TEST(CpuAttention, BlockSparse) {
  PAGEDATTN_TEST_RNG(rng);
  struct Case { int step, tp_rank, local, vert, sparse_bs, block_size; DType t; CacheDType cd; };
  const Case cases[] = {
      {1, 1, 2, 4, 64, 16, DType::kFloat16, CacheDType::kAuto},
      {-1, 2, 1, 3, 32, 8, DType::kBFloat16, CacheDType::kFp8E4M3},
      {2, 3, 3, 5, 32, 32, DType::kFloat32, CacheDType::kFp8E5M2},
      {-2, 1, 0, 2, 16, 16, DType::kFloat16, CacheDType::kAuto},
      {0, 1, 1, 8, 64, 16, DType::kFloat32, CacheDType::kAuto},  // only local blocks + kb % 8 == 7
  };
  for (const Case& cs : cases) {
    ProblemConfig c;
    c.dtype = cs.t;
    c.kv_cache_dtype = cs.cd;
    c.block_size = cs.block_size;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_size = 64;
    c.tp_rank = cs.tp_rank;
    c.blocksparse = {cs.local, cs.vert, cs.sparse_bs, cs.step};
    c.poison_masked = true;
    c.alibi = cs.step == 2;
    c.num_seqs = 4;
    c.seq_lens = {1, 200, 1537, static_cast<int>(rng.randint(513, 1300))};
    run_all(build_problem(c, rng));
  }
}

TEST(CpuAttention, StridedQueryCacheViewsAndTableRows) {
  PAGEDATTN_TEST_RNG(rng);
  for (DType t : kDTypes) {
    ProblemConfig c;
    c.dtype = t;
    c.kv_cache_dtype = t == DType::kFloat16 ? CacheDType::kFp8E4M3 : CacheDType::kAuto;
    c.num_heads = 6;
    c.num_kv_heads = 3;
    c.head_size = 80;
    c.block_size = 16;
    c.q_row_pad = 2 * 6 * 80;  // query is a slice of a fused QKV tensor
    c.cache_views = true;
    c.bt_row_pad = 5;
    c.extra_table_cols = 3;
    c.num_seqs = 3;
    c.seq_lens = {16, 17, 700};
    run_all(build_problem(c, rng));
  }
}

TEST(CpuAttention, EmptySequencesGiveZeros) {
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kBFloat16;
  c.num_seqs = 4;
  c.seq_lens = {0, 5, 0, 600};
  run_all(build_problem(c, rng));
  ProblemConfig all_empty = c;
  all_empty.seq_lens = {0, 0, 0, 0};
  all_empty.max_seq_len = 100;
  HostProblem pb = build_problem(all_empty, rng);
  run_all(pb);
  paged_attention_v1(pb.params);
  for (double v : pb.out_values()) ASSERT_EQ(v, 0.0);
}

// Unchecked data with a seq_len beyond max_seq_len: V2's workspace holds only
// ceil(max_seq_len / 512) partitions, so the sequence is cut to those (as on CUDA) and
// nothing is read or written past the workspace.
TEST(CpuAttention, V2ClampsSeqLenBeyondWorkspace) {
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kFloat32;
  c.num_seqs = 2;
  c.seq_lens = {1200, 300};
  c.checked = false;
  HostProblem pb = build_problem(c, rng);
  auto* lens = static_cast<std::int32_t*>(pb.params.seq_lens.data);
  lens[0] = 2 * kPartitionSize;  // what two partitions cover
  const std::vector<double> want = ref::attention(pb.params);
  lens[0] = 1200;
  pb.params.max_seq_len = 600;  // room for 2 partitions; the first sequence needs 3
  auto ws = pb.make_workspace();
  paged_attention_v2(pb.params, ws.views());
  EXPECT_EQ(compare(pb.out_values(), want, out_tol(c.dtype, vmax_of(c), false), "v2 clamped", c.head_size), 0);
}

// ---------------------------------------------------------------------------------------
// SPEC §3b variants, through the auto entry point (V1/V2 reject them), against ref::attention
// and ref::lse. Every problem asks for lse unless it tests the plain output.
// ---------------------------------------------------------------------------------------

// Sliding windows from 0 (the row's own token only) past the longest sequence, one and
// several query tokens, every block size. Blocks wholly before the window of every row of a
// sequence are NaN-poisoned (poison_masked): reading one would show.
TEST(CpuAttention, SlidingWindow) {
  PAGEDATTN_TEST_RNG(rng);
  const int windows[] = {0, 1, 7, 16, 33, 100, 511, 5000};
  int k = 0;
  for (DType t : kDTypes)
    for (int w : windows) {
      ProblemConfig c;
      c.dtype = t;
      c.kv_cache_dtype = kCacheDTypes[k % 3];
      c.block_size = (k % 3 == 0) ? 8 : (k % 3 == 1) ? 16 : 32;
      c.head_size = kHeadSizes[(k * 2) % kHeadSizes.size()];
      c.num_heads = 8;
      c.num_kv_heads = (k % 2) ? 2 : 8;
      c.window_left = w;
      c.poison_masked = true;
      c.lse = true;
      c.seq_lens = {1, 15, 17, 200, 0, static_cast<int>(rng.randint(300, 1300))};
      if (k % 2) c.q_lens = {1, 4, 17, 9, 0, static_cast<int>(rng.randint(1, 40))};
      ++k;
      run_auto(build_problem(c, rng));
    }
}

// Logits soft-cap: caps small enough to bend the logits (queries up to +-4), with and without
// ALiBi (applied after the cap) and a window.
TEST(CpuAttention, SoftCap) {
  PAGEDATTN_TEST_RNG(rng);
  int k = 0;
  for (DType t : kDTypes)
    for (float cap : {0.5f, 2.0f, 30.0f}) {
      ProblemConfig c;
      c.dtype = t;
      c.logits_soft_cap = cap;
      c.q_range = 4.0;
      c.alibi = k % 2 == 0;
      c.window_left = k % 3 == 2 ? 64 : -1;
      c.num_heads = 8;
      c.num_kv_heads = 4;
      c.head_size = 128;
      c.lse = true;
      c.seq_lens = {1, 100, 777};
      ++k;
      run_auto(build_problem(c, rng));
    }
}

// Several query tokens per sequence (query_start_loc): mixed q_lens in one batch, q_len ==
// seq_len (the whole sequence is new), empty sequences (q_len 0 and seq_len 0), a sequence
// with cached tokens but no query tokens in this call, over GQA groups 1, 2, 4 and 8.
TEST(CpuAttention, MultiTokenQueries) {
  PAGEDATTN_TEST_RNG(rng);
  const int groups[] = {1, 2, 4, 8};
  int k = 0;
  for (DType t : kDTypes)
    for (int group : groups) {
      ProblemConfig c;
      c.dtype = t;
      c.kv_cache_dtype = kCacheDTypes[(k + 1) % 3];
      if (c.kv_cache_dtype != CacheDType::kAuto) {
        c.k_scale = 0.5f;
        c.v_scale = 1.5f;
      }
      c.block_size = k % 2 ? 16 : 32;
      c.head_size = kHeadSizes[(k * 5 + 2) % kHeadSizes.size()];
      c.num_kv_heads = 2;
      c.num_heads = 2 * group;
      c.alibi = k % 3 == 1;
      c.lse = true;
      const int n = static_cast<int>(rng.randint(2, 30));
      c.seq_lens = {5, 40, 0, 300, 33, n, 70, 1};
      c.q_lens = {5, 3, 0, 17, 1, n, 0, 1};
      ++k;
      run_auto(build_problem(c, rng));
    }
}

// More rows than one tile holds (q_len x group > 128: the tokens run in tiles) and spans
// longer than one piece of the logits buffer (the pieces' states merge), alone and with a
// window and ALiBi; a long prefill-like chunk (q_len == seq_len).
TEST(CpuAttention, ManyQueryRowsTilesAndPieces) {
  PAGEDATTN_TEST_RNG(rng);
  struct Case { int heads, kv_heads, window; bool alibi; std::vector<int> seq_lens, q_lens; DType t; };
  const Case cases[] = {
      {8, 2, -1, false, {3000, 2600}, {40, 3}, DType::kFloat32},
      {8, 1, -1, true, {2300, 5}, {20, 5}, DType::kBFloat16},
      {16, 2, 700, false, {4000, 900}, {33, 64}, DType::kFloat16},
      {4, 4, -1, false, {300}, {300}, DType::kFloat16},
      {4, 2, 50, true, {257}, {257}, DType::kFloat32},
  };
  for (const Case& cs : cases) {
    ProblemConfig c;
    c.dtype = cs.t;
    c.num_heads = cs.heads;
    c.num_kv_heads = cs.kv_heads;
    c.head_size = 64;
    c.block_size = 16;
    c.window_left = cs.window;
    c.poison_masked = cs.window >= 0;
    c.alibi = cs.alibi;
    c.lse = true;
    c.seq_lens = cs.seq_lens;
    c.q_lens = cs.q_lens;
    run_auto(build_problem(c, rng));
  }
}

// lse of plain decode problems (the only variant set): empty sequences give -inf and zeros.
TEST(CpuAttention, LseOfPlainDecode) {
  PAGEDATTN_TEST_RNG(rng);
  for (DType t : kDTypes) {
    ProblemConfig c;
    c.dtype = t;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_size = 96;
    c.lse = true;
    c.alibi = t == DType::kBFloat16;
    c.seq_lens = {1, 0, 513, static_cast<int>(rng.randint(2, 1200))};
    HostProblem pb = build_problem(c, rng);
    run_auto(pb);
    paged_attention(pb.params, nullptr, 0);
    const std::vector<double> lse = pb.lse_values(), out = pb.out_values();
    for (int h = 0; h < c.num_heads; ++h) {
      EXPECT_EQ(lse[1 * c.num_heads + h], -std::numeric_limits<double>::infinity());
      for (int d = 0; d < c.head_size; ++d) EXPECT_EQ(out[(1 * c.num_heads + h) * c.head_size + d], 0.0);
    }
  }
}

// Per-kv-head fp8 scales (k_scales / v_scales [num_kv_heads]): E4M3 and E5M2, every query
// dtype, GQA groups 1 to 8, one and several query tokens.
TEST(CpuAttention, PerHeadScales) {
  PAGEDATTN_TEST_RNG(rng);
  int k = 0;
  for (DType t : kDTypes)
    for (CacheDType cd : {CacheDType::kFp8E4M3, CacheDType::kFp8E5M2})
      for (int group : {1, 2, 4, 8}) {
        ProblemConfig c;
        c.dtype = t;
        c.kv_cache_dtype = cd;
        c.per_head_scales = true;
        c.block_size = k % 2 ? 16 : 32;
        c.head_size = kHeadSizes[(k * 7 + 1) % kHeadSizes.size()];
        c.num_kv_heads = group == 8 ? 2 : 4;
        c.num_heads = c.num_kv_heads * group;
        c.lse = true;
        c.seq_lens = {1, 70, static_cast<int>(rng.randint(100, 500))};
        if (k % 2) c.q_lens = {1, 6, 11};
        ++k;
        run_auto(build_problem(c, rng));
      }
}

// Everything at once: ALiBi, block-sparse (by query head and by kv head), window, soft-cap,
// several query tokens, lse and (fp8) per-head scales, GQA groups 1/2/4/8, every query dtype.
// Blocks that block-sparsity or the window mask for every row of a kv head are poisoned.
TEST(CpuAttention, VariantCombos) {
  PAGEDATTN_TEST_RNG(rng);
  const int groups[] = {1, 2, 4, 8};
  int k = 0;
  for (DType t : kDTypes)
    for (int group : groups) {
      ProblemConfig c;
      c.dtype = t;
      c.kv_cache_dtype = kCacheDTypes[k % 3];
      c.per_head_scales = c.kv_cache_dtype != CacheDType::kAuto;
      c.block_size = k % 2 ? 8 : 16;
      c.head_size = kHeadSizes[(k * 4 + 3) % kHeadSizes.size()];
      c.num_kv_heads = 2;
      c.num_heads = 2 * group;
      c.alibi = true;
      c.logits_soft_cap = k % 2 ? 5.0f : 20.0f;
      c.window_left = k % 3 == 0 ? 300 : (k % 3 == 1 ? 1000 : 40);
      c.blocksparse = {1 + k % 2, 3 + k % 3, 32, (k % 2) ? -1 : 1};
      c.tp_rank = k % 2;
      c.poison_masked = true;
      c.lse = true;
      c.seq_lens = {1, 64, 700, static_cast<int>(rng.randint(200, 1500)), 0};
      c.q_lens = {1, 8, 3, static_cast<int>(rng.randint(1, 16)), 0};
      ++k;
      run_auto(build_problem(c, rng));
    }
}

// ---------------------------------------------------------------------------------------
// NaN (SPEC §3): a NaN in q, or in an attended K or V, reaches exactly the rows it enters.
// ---------------------------------------------------------------------------------------

/// Checks out (and lse when asked) after `run`: the (row, head) pairs of `nan_rows` are NaN in
/// every element (or only in element `nan_d` when >= 0: a NaN value element reaches that
/// output element), everything else is finite and matches the reference; so is lse, NaN in
/// those rows when `lse_nan`.
void expect_nan_rows(HostProblem& pb, const std::function<void()>& run,
                     const std::vector<std::pair<int, int>>& nan_rows, int nan_d, bool lse_nan, bool twice) {
  const ProblemConfig& c = pb.cfg;
  const std::vector<double> want = ref::attention(pb.params);
  run();
  const std::vector<double> got = pb.out_values();
  const int H = c.num_heads, D = c.head_size;
  std::vector<char> expect_nan(std::size_t(pb.num_rows) * H, 0);
  for (auto [r, h] : nan_rows) expect_nan[std::size_t(r) * H + h] = 1;
  int bad = 0;
  for (int r = 0; r < pb.num_rows; ++r)
    for (int h = 0; h < H; ++h) {
      for (int d = 0; d < D; ++d) {
        const bool nan = expect_nan[std::size_t(r) * H + h] && (nan_d < 0 || d == nan_d);
        const std::size_t i = (std::size_t(r) * H + h) * D + d;
        if (std::isnan(want[i]) != nan && ++bad <= 5)
          ADD_FAILURE() << "the reference disagrees with the test about row " << r << " head " << h;
        if (std::isnan(got[i]) != nan && ++bad <= 5)
          ADD_FAILURE() << "row " << r << " head " << h << " d " << d << ": got " << got[i]
                        << (nan ? ", want NaN" : ", want a finite value");
      }
    }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(compare(got, want, out_tol(c.dtype, vmax_of(c), twice), "out", D), 0);
  if (c.lse) {
    const std::vector<double> lse = pb.lse_values();
    for (int r = 0; r < pb.num_rows; ++r)
      for (int h = 0; h < H; ++h) {
        const bool nan = lse_nan && expect_nan[std::size_t(r) * H + h];
        EXPECT_EQ(std::isnan(lse[std::size_t(r) * H + h]), nan) << "lse row " << r << " head " << h;
      }
    EXPECT_EQ(compare(lse, ref::lse(pb.params), lse_tol(), "lse", H), 0);
  }
}

/// The call of `algo` on pb (V2 with a fresh workspace).
std::function<void()> call_of(HostProblem& pb, Algo algo) {
  return [&pb, algo] {
    if (algo == Algo::kV1) {
      paged_attention_v1(pb.params);
    } else if (algo == Algo::kV2) {
      auto ws = pb.make_workspace();
      paged_attention_v2(pb.params, ws.views());
    } else {
      paged_attention(pb.params, nullptr, 0);
    }
  };
}

/// Writes NaN into element d of the key (or value) of token t of sequence i, kv head g.
void poison_cache_token(HostProblem& pb, bool key, int i, int t, int g, int d) {
  const int bs = pb.cfg.block_size;
  const std::int64_t phys = pb.table(i, t / bs);
  if (key)
    test::poison_elem(pb.key_cache.view.data, pb.cache_storage(), pb.key_offset(phys, g, d, t % bs));
  else
    test::poison_elem(pb.value_cache.view.data, pb.cache_storage(), pb.value_offset(phys, g, d, t % bs));
}

/// The (row, head) pairs that attend token t of sequence i through kv head g (no
/// block-sparsity in these problems): causal position and window.
std::vector<std::pair<int, int>> rows_attending(const HostProblem& pb, int i, int t, int g) {
  const ProblemConfig& c = pb.cfg;
  const int group = c.num_heads / c.num_kv_heads;
  int first_row = i;
  if (!c.q_lens.empty()) {
    first_row = 0;
    for (int s = 0; s < i; ++s) first_row += pb.q_len(s);
  }
  std::vector<std::pair<int, int>> rows;
  for (int j = 0; j < pb.q_len(i); ++j) {
    const int p = pb.seq_len(i) - pb.q_len(i) + j;
    if (t > p || (c.window_left >= 0 && t < p - c.window_left)) continue;
    for (int h = g * group; h < (g + 1) * group; ++h) rows.push_back({first_row + j, h});
  }
  return rows;
}

// A NaN in one element of one query row and head: that (row, head) is NaN, every other is
// finite. V1, V2 (partials and reduce) and the auto path, one and several query tokens.
TEST(CpuAttention, NanInQueryReachesOnlyItsRow) {
  PAGEDATTN_TEST_RNG(rng);
  int k = 0;
  for (DType t : kDTypes)
    for (Algo a : {Algo::kV1, Algo::kV2, Algo::kAuto}) {
      ProblemConfig c;
      c.dtype = t;
      c.kv_cache_dtype = kCacheDTypes[k % 3];
      c.num_heads = 8;
      c.num_kv_heads = 2;
      c.head_size = 64;
      c.seq_lens = {300, 1100, 40};
      if (a == Algo::kAuto) {
        c.lse = true;
        c.q_lens = {1, 5, 4};
        c.window_left = k % 2 ? 30 : -1;
      }
      ++k;
      HostProblem pb = build_problem(c, rng);
      SCOPED_TRACE(describe(pb.cfg, a));
      const int row = static_cast<int>(rng.randint(0, pb.num_rows - 1));
      const int head = static_cast<int>(rng.randint(0, c.num_heads - 1));
      const int d = static_cast<int>(rng.randint(0, c.head_size - 1));
      test::poison_elem(pb.query.view.data, t, std::int64_t(row) * pb.query.view.strides[0] + head * c.head_size + d);
      expect_nan_rows(pb, call_of(pb, a), {{row, head}}, -1, true, a == Algo::kV2);
    }
}

// A NaN in an attended key (value) element: every row that attends that token through the
// kv head is NaN (in that output element); the kv head's other rows (the token after their
// position, or before their window) and the other kv heads stay finite: masked tokens' keys
// and values are not multiplied in, even inside a block the row partly attends.
TEST(CpuAttention, NanInCacheReachesTheRowsAttendingIt) {
  PAGEDATTN_TEST_RNG(rng);
  int k = 0;
  for (DType t : kDTypes)
    for (Algo a : {Algo::kV1, Algo::kV2, Algo::kAuto})
      for (bool key : {false, true})
        for (int edge : {0, 1}) {  // auto: the causal edge, then the window edge
          if (edge == 1 && a != Algo::kAuto) continue;
          ProblemConfig c;
          c.dtype = t;
          c.kv_cache_dtype = kCacheDTypes[k % 3];
          c.block_size = k % 2 ? 16 : 32;
          c.num_heads = 8;
          c.num_kv_heads = 2;
          c.head_size = 64;
          c.seq_lens = {700, 45};
          int tok = static_cast<int>(rng.randint(0, 699));  // plain: any token of sequence 0
          if (a == Algo::kAuto) {
            c.lse = true;
            c.q_lens = {6, 2};
            c.window_left = 20;
            // rows sit at 694..699: token 697 is after the first three rows' positions (causal
            // edge inside its block); token 675 is before the window of rows 696..699, whose
            // windows start inside its block
            tok = edge == 0 ? 697 : 675;
          }
          ++k;
          HostProblem pb = build_problem(c, rng);
          SCOPED_TRACE(describe(pb.cfg, a) + detail::cat(key ? " NaN key" : " NaN value", " token ", tok));
          const int g = static_cast<int>(rng.randint(0, c.num_kv_heads - 1));
          const int d = static_cast<int>(rng.randint(0, c.head_size - 1));
          poison_cache_token(pb, key, 0, tok, g, d);
          const auto rows = rows_attending(pb, 0, tok, g);
          ASSERT_FALSE(rows.empty());
          if (a == Algo::kAuto) ASSERT_LT(rows.size(), std::size_t(6 * (c.num_heads / c.num_kv_heads)));
          // a NaN key element makes the token's logit, so the whole row, NaN; a NaN value
          // element only output element d
          expect_nan_rows(pb, call_of(pb, a), rows, key ? -1 : d, key, a == Algo::kV2);
        }
}

/// Forces one kernel target (PAGEDATTN_CPU_KERNEL) while alive, and always lets go of it
/// (even when a check throws).
struct ForceTarget {
  explicit ForceTarget(const std::string& name) { ::setenv("PAGEDATTN_CPU_KERNEL", name.c_str(), 1); }
  ~ForceTarget() { ::unsetenv("PAGEDATTN_CPU_KERNEL"); }
};

/// The compiled kernel targets this CPU runs (Highway's names, best first).
std::vector<std::string> targets_here() { return detail::cpu::cpu_kernel_targets(); }

TEST(CpuAttention, KernelTargetsKnob) {
  const std::vector<std::string> ts = targets_here();
  ASSERT_FALSE(ts.empty());
  EXPECT_EQ(detail::cpu::cpu_kernel_target(), ts.front());
  for (const std::string& t : ts) {
    ForceTarget force(t);
    EXPECT_EQ(detail::cpu::cpu_kernel_target(), t);
  }
  {
    ForceTarget force("generic");
    EXPECT_EQ(detail::cpu::cpu_kernel_target(), ts.back());
  }
  ForceTarget force("no-such-target");
  EXPECT_EQ(detail::cpu::cpu_kernel_target(), ts.front());
}

// The backend carries one copy of its kernel per instruction set (Highway targets: AVX-512,
// AVX2, the scalar fallback), chosen at run time; PAGEDATTN_CPU_KERNEL forces one. They are
// not bit for bit equal (vector widths and fused multiply-adds differ): each must match the
// float64 reference within the dtype's tolerance, and each must give the same bits when run
// again. Every target this CPU supports runs.
TEST(CpuAttention, KernelCopiesMatchReferenceAndRepeat) {
  PAGEDATTN_TEST_RNG(rng);
  const std::vector<std::string> targets = targets_here();
  int k = 0;
  for (DType t : kDTypes)
    for (CacheDType cd : kCacheDTypes)
      for (int bs : {8, 16, 32}) {
        ProblemConfig c;
        c.dtype = t;
        c.kv_cache_dtype = cd;
        c.block_size = bs;
        c.head_size = kHeadSizes[(k + k / 3) % kHeadSizes.size()];  // 120 with an fp8 cache included (k = 4)
        const int groups[] = {1, 2, 3, 4, 8};
        c.num_kv_heads = 2;
        c.num_heads = 2 * groups[k % 5];
        c.num_seqs = 3;
        c.seq_lens = {static_cast<int>(rng.randint(1, 40)), 513, static_cast<int>(rng.randint(100, 900))};
        if (cd != CacheDType::kAuto) {
          c.k_scale = 0.75f;
          c.v_scale = 1.5f;
        }
        if (k % 4 == 1) c.alibi = true;
        ++k;
        HostProblem pb = build_problem(c, rng);
        SCOPED_TRACE(describe(c, Algo::kV1));
        const std::vector<double> want = ref::attention(pb.params);
        for (Algo a : {Algo::kV1, Algo::kV2}) {
          for (const std::string& target : targets) {
            ForceTarget force(target);
            std::vector<double> got[2];
            for (int rep = 0; rep < 2; ++rep) {
              call_of(pb, a)();
              got[rep] = pb.out_values();
            }
            const std::string what = detail::cat(algo_name(a), " ", target, " copy");
            EXPECT_EQ(compare(got[0], want, out_tol(c.dtype, vmax_of(c), a == Algo::kV2), what, c.head_size), 0);
            int diff = 0;
            for (std::size_t i = 0; i < got[0].size(); ++i)
              diff += !(got[0][i] == got[1][i] || (std::isnan(got[0][i]) && std::isnan(got[1][i])));
            EXPECT_EQ(diff, 0) << what << ": two runs differ";
          }
        }
      }
}

// The same for the SPEC §3b variants (auto path): out and lse of each copy against the
// reference, and bit for bit run to run, over windows, soft-caps, several query tokens
// (part-attended blocks, lane masks), per-head scales.
TEST(CpuAttention, KernelCopiesMatchReferenceAndRepeatOnVariants) {
  PAGEDATTN_TEST_RNG(rng);
  const std::vector<std::string> targets = targets_here();
  int k = 0;
  for (DType t : kDTypes)
    for (CacheDType cd : kCacheDTypes)
      for (int bs : {8, 16, 32}) {
        ProblemConfig c;
        c.dtype = t;
        c.kv_cache_dtype = cd;
        c.per_head_scales = cd != CacheDType::kAuto && k % 2 == 0;
        c.block_size = bs;
        c.head_size = kHeadSizes[(k * 2 + 1) % kHeadSizes.size()];
        c.num_kv_heads = 2;
        c.num_heads = 2 * (1 << (k % 4));
        c.alibi = k % 3 == 0;
        c.logits_soft_cap = k % 4 == 1 ? 10.0f : 0.0f;
        c.window_left = k % 3 == 2 ? static_cast<int>(rng.randint(0, 200)) : -1;
        c.lse = true;
        c.seq_lens = {static_cast<int>(rng.randint(1, 40)), 513, static_cast<int>(rng.randint(100, 900))};
        c.q_lens = {1, static_cast<int>(rng.randint(1, 12)), static_cast<int>(rng.randint(1, 40))};
        ++k;
        HostProblem pb = build_problem(c, rng);
        SCOPED_TRACE(describe(pb.cfg, Algo::kAuto));
        const std::vector<double> want = ref::attention(pb.params), want_lse = ref::lse(pb.params);
        for (const std::string& target : targets) {
          ForceTarget force(target);
          std::vector<std::uint8_t> out[2], lse[2];
          for (int rep = 0; rep < 2; ++rep) {
            paged_attention(pb.params, nullptr, 0);
            out[rep] = pb.out.storage;
            lse[rep] = pb.lse.storage;
          }
          const std::string what = target + " copy";
          EXPECT_EQ(compare(pb.out_values(), want, out_tol(c.dtype, vmax_of(pb.cfg), false), what + " out", c.head_size), 0);
          EXPECT_EQ(compare(pb.lse_values(), want_lse, lse_tol(), what + " lse", c.num_heads), 0);
          EXPECT_TRUE(out[0] == out[1]) << what << ": out differs run to run";
          EXPECT_TRUE(lse[0] == lse[1]) << what << ": lse differs run to run";
        }
      }
}

#if defined(_OPENMP)
/// Runs the library's OpenMP loops on n threads while alive.
struct OmpThreads {
  int old;
  explicit OmpThreads(int n) : old(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~OmpThreads() { omp_set_num_threads(old); }
};
#endif

// Thread-count invariance and KV splits: the auto path (and V1, V2) give the same bits on 1
// and on 2 (and 3) threads, for every variant x cache dtype, on shapes whose few
// (sequence, kv head) items make the backend split each sequence's span (a batch of one, one
// or two kv heads, several thousand tokens) and on ordinary ones; the split results match
// the reference.
TEST(CpuAttention, SameBitsAtAnyThreadCountWithKvSplits) {
#if !defined(_OPENMP)
  GTEST_SKIP() << "built without OpenMP: the backend runs on one thread";
#else
  PAGEDATTN_TEST_RNG(rng);
  int k = 0;
  for (CacheDType cd : kCacheDTypes)
    for (int variant = 0; variant < 7; ++variant) {
      ProblemConfig c;
      c.dtype = kDTypes[k % 3];
      c.kv_cache_dtype = cd;
      c.block_size = (k % 3 == 0) ? 8 : (k % 3 == 1) ? 16 : 32;
      c.head_size = k % 2 ? 128 : 64;
      c.num_kv_heads = 1 + k % 2;
      c.num_heads = c.num_kv_heads * (1 << (k % 4));
      // one long sequence (split) or a batch of two (one long, one short)
      c.seq_lens = k % 2 ? std::vector<int>{static_cast<int>(rng.randint(4500, 9000))}
                         : std::vector<int>{static_cast<int>(rng.randint(4500, 6000)), static_cast<int>(rng.randint(1, 300))};
      if (cd != CacheDType::kAuto) {
        c.k_scale = 0.5f;
        c.v_scale = 1.25f;
      }
      switch (variant) {
        case 0: break;  // plain
        case 1: c.window_left = static_cast<int>(rng.randint(100, 3000)); break;
        case 2: c.logits_soft_cap = 5.0f; break;
        case 3: c.alibi = true; break;
        case 4: c.q_lens = std::vector<int>(c.seq_lens.size(), 3); break;
        case 5: c.per_head_scales = cd != CacheDType::kAuto; c.lse = true; break;
        case 6:
          c.blocksparse.local_blocks = 2;
          c.blocksparse.vert_stride = 3;
          c.blocksparse.block_size = 64;
          c.blocksparse.head_sliding_step = 1;
          break;
      }
      c.lse = c.lse || variant % 2 == 0;
      ++k;
      HostProblem pb = build_problem(c, rng);
      SCOPED_TRACE(describe(pb.cfg, Algo::kAuto));
      const bool plain = variant == 0 || variant == 3 || variant == 6;  // V1/V2 take these
      std::vector<Algo> algos{Algo::kAuto};
      if (plain && !c.lse) algos = {Algo::kAuto, Algo::kV1, Algo::kV2};
      for (Algo a : algos) {
        std::vector<std::uint8_t> out[3], lse[3];
        for (int n = 1; n <= 3; ++n) {
          OmpThreads threads(n);
          call_of(pb, a)();
          out[n - 1] = pb.out.storage;
          if (c.lse) lse[n - 1] = pb.lse.storage;
        }
        EXPECT_TRUE(out[0] == out[1] && out[0] == out[2]) << algo_name(a) << ": out differs between 1, 2 and 3 threads";
        EXPECT_TRUE(lse[0] == lse[1] && lse[0] == lse[2]) << algo_name(a) << ": lse differs between 1, 2 and 3 threads";
        const bool twice = a == Algo::kV2;
        EXPECT_EQ(compare(pb.out_values(), ref::attention(pb.params), out_tol(c.dtype, vmax_of(pb.cfg), twice), "out",
                          c.head_size),
                  0)
            << algo_name(a);
        if (c.lse && a == Algo::kAuto)
          EXPECT_EQ(compare(pb.lse_values(), ref::lse(pb.params), lse_tol(), "lse", c.num_heads), 0);
      }
    }
#endif
}

TEST(CpuAttention, AutoNeedsNoWorkspaceOnCpu) {
  PAGEDATTN_TEST_RNG(rng);
  HostProblem pb = build_problem(ProblemConfig{}, rng);
  EXPECT_EQ(paged_attention_workspace_size(pb.params), 0u);
  paged_attention(pb.params, nullptr, 0);
  for (double v : pb.out_values()) ASSERT_FALSE(std::isnan(v));
}

// Checked mode: bad data is reported before anything is written (out keeps its NaN poison).
TEST(CpuAttention, CheckedModeRejectsBadDataAndWritesNothing) {
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.num_seqs = 3;
  c.seq_lens = {10, 40, 20};
  c.block_size = 16;
  const HostProblem base = build_problem(c, rng);

  struct Bad {
    const char* name;
    void (*apply)(HostProblem&);
    const char* expect;  // substring of the message
  };
  const Bad bads[] = {
      {"seq_len > max_seq_len",
       [](HostProblem& pb) { static_cast<std::int32_t*>(pb.seq_lens.view.data)[1] = 41; }, "seq_lens[1] = 41"},
      {"seq_len beyond the block table",
       [](HostProblem& pb) {
         pb.params.max_seq_len = 1000;
         static_cast<std::int32_t*>(pb.seq_lens.view.data)[2] = 16 * pb.max_blocks_per_seq + 1;
       },
       "needs more blocks than block_tables holds"},
      {"negative seq_len", [](HostProblem& pb) { static_cast<std::int32_t*>(pb.seq_lens.view.data)[0] = -1; },
       "is negative"},
      {"block id too large", [](HostProblem& pb) { pb.table(1, 2) = static_cast<std::int32_t>(pb.num_blocks); },
       "block_tables[1][2]"},
      {"negative block id", [](HostProblem& pb) { pb.table(0, 0) = -3; }, "block_tables[0][0] = -3"},
  };
  for (const Bad& b : bads) {
    for (Algo a : {Algo::kV1, Algo::kV2, Algo::kAuto}) {
      SCOPED_TRACE(detail::cat(b.name, " / ", algo_name(a)));
      HostProblem pb = base;
      b.apply(pb);
      auto ws = pb.make_workspace(4);
      test::expect_error(
          [&] {
            if (a == Algo::kV1) paged_attention_v1(pb.params);
            else if (a == Algo::kV2) paged_attention_v2(pb.params, ws.views());
            else paged_attention(pb.params, nullptr, 0);
          },
          ErrorCode::kDataError, b.expect);
      for (double v : pb.out_values()) ASSERT_TRUE(std::isnan(v)) << "out was written";
    }
  }
}

}  // namespace
}  // namespace pagedattn
