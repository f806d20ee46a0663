// The float64 reference (src/reference) against hand-computed cases, an independent naive
// formulation, and properties that must hold whatever the data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "reference/reference.h"

namespace pagedattn {
namespace {

using test::build_problem;
using test::HostProblem;
using test::ProblemConfig;

/// |a - b| <= atol + rtol * |b| elementwise; reports the first few mismatches.
void expect_close(const std::vector<double>& a, const std::vector<double>& b, double rtol, double atol,
                  const std::string& what = "") {
  ASSERT_EQ(a.size(), b.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const bool ok = std::fabs(a[i] - b[i]) <= atol + rtol * std::fabs(b[i]);  // false for NaN
    if (!ok && ++bad <= 5) ADD_FAILURE() << what << " element " << i << ": " << a[i] << " vs " << b[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

/// Bitwise equality (identical computations on identical data must agree exactly).
void expect_identical(const std::vector<double>& a, const std::vector<double>& b, const std::string& what = "") {
  ASSERT_EQ(a.size(), b.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(double)) != 0 && ++bad <= 5)
      ADD_FAILURE() << what << " element " << i << ": " << a[i] << " vs " << b[i];
  EXPECT_EQ(bad, 0) << what;
}

// ---------------------------------------------------------------------------------------
// An independent naive formulation: gather each sequence's pages into contiguous K and V,
// then apply the SPEC §3 definition directly. Shares no code with src/reference.
// ---------------------------------------------------------------------------------------

double naive_cache_elem(const HostProblem& pb, const TensorView& c, std::int64_t off, float scale) {
  if (pb.cfg.kv_cache_dtype == CacheDType::kAuto) return test::load_value(c.data, c.dtype, off);
  return double(fp8_to_float(static_cast<const std::uint8_t*>(c.data)[off], pb.cfg.kv_cache_dtype)) * double(scale);
}

bool naive_keep(const HostProblem& pb, int len, int h, int g, std::int64_t t) {
  const auto& s = pb.cfg.blocksparse;
  if (s.vert_stride <= 1) return true;
  const std::int64_t t0 = t / pb.cfg.block_size * pb.cfg.block_size;
  const std::int64_t qb = (len - 1) / s.block_size, kb = t0 / s.block_size;
  const std::int64_t off = s.head_sliding_step >= 0
                               ? (std::int64_t(pb.cfg.tp_rank) * pb.cfg.num_heads + h) * s.head_sliding_step + 1
                               : (std::int64_t(pb.cfg.tp_rank) * pb.cfg.num_kv_heads + g) * -std::int64_t(s.head_sliding_step) + 1;
  return kb > qb - s.local_blocks || (kb + off) % s.vert_stride == 0;
}

std::vector<double> naive_attention(const HostProblem& pb) {
  const auto& c = pb.cfg;
  const int D = c.head_size, BS = c.block_size;
  const auto& P = pb.params;
  const auto& kc = P.key_cache;
  const auto& vc = P.value_cache;
  const std::int64_t x = kc.shape[4];
  std::vector<double> out(std::size_t(c.num_seqs) * c.num_heads * D, 0.0);
  for (int i = 0; i < c.num_seqs; ++i) {
    const int L = static_cast<const std::int32_t*>(P.seq_lens.data)[i];
    const auto* row = static_cast<const std::int32_t*>(P.block_tables.data) + i * P.block_tables.strides[0];
    for (int g = 0; g < c.num_kv_heads; ++g) {
      std::vector<double> K(std::size_t(L) * D), V(std::size_t(L) * D);
      for (int t = 0; t < L; ++t) {
        const std::int64_t phys = row[t / BS], o = t % BS;
        for (int d = 0; d < D; ++d) {
          K[std::size_t(t) * D + d] = naive_cache_elem(
              pb, kc, phys * kc.strides[0] + g * kc.strides[1] + (d / x) * kc.strides[2] + o * kc.strides[3] + d % x,
              P.k_scale);
          V[std::size_t(t) * D + d] =
              naive_cache_elem(pb, vc, phys * vc.strides[0] + g * vc.strides[1] + d * vc.strides[2] + o, P.v_scale);
        }
      }
      const int group = c.num_heads / c.num_kv_heads;
      for (int h = g * group; h < (g + 1) * group; ++h) {
        std::vector<double> q(D);
        for (int d = 0; d < D; ++d)
          q[d] = test::load_value(P.query.data, c.dtype, i * P.query.strides[0] + std::int64_t(h) * D + d);
        std::vector<double> s;
        std::vector<int> keep;
        for (int t = 0; t < L; ++t) {
          if (!naive_keep(pb, L, h, g, t)) continue;
          double dot = 0.0;
          for (int d = 0; d < D; ++d) dot += q[d] * K[std::size_t(t) * D + d];
          double v = double(P.scale) * dot;
          if (P.alibi_slopes.defined()) v += double(static_cast<const float*>(P.alibi_slopes.data)[h]) * (t - L + 1);
          s.push_back(v);
          keep.push_back(t);
        }
        if (s.empty()) continue;  // empty or fully masked: zeros
        double m = s[0];
        for (double v : s) m = std::max(m, v);
        double sum = 0.0;
        for (double& v : s) sum += (v = std::exp(v - m));
        double* o = &out[(std::size_t(i) * c.num_heads + h) * D];
        for (std::size_t k = 0; k < keep.size(); ++k)
          for (int d = 0; d < D; ++d) o[d] += s[k] / sum * V[std::size_t(keep[k]) * D + d];
      }
    }
  }
  return out;
}

// Reference and naive are both float64 over at most a few thousand terms per output: each
// result carries a relative rounding error of order (head_size + seq_len) * 2^-53 < 1e-12
// of the magnitudes involved (values are O(1) here), so 1e-12 relative plus 1e-12 absolute
// (outputs near zero) separates rounding from a wrong formula by many orders of magnitude.
constexpr double kF64Rtol = 1e-12;
constexpr double kF64Atol = 1e-12;

// ---------------------------------------------------------------------------------------
// Hand-computed cases
// ---------------------------------------------------------------------------------------

/// A problem with all used K/V slots set to 0 and query 0; tests then place a few values.
HostProblem zero_problem(ProblemConfig c) {
  c.num_seqs = static_cast<int>(c.seq_lens.size());
  test::Rng rng(7);
  HostProblem pb = build_problem(c, rng);
  for (int i = 0; i < c.num_seqs; ++i)
    for (int t = 0; t < pb.seq_len(i); ++t)
      for (int g = 0; g < c.num_kv_heads; ++g)
        for (int d = 0; d < c.head_size; ++d) {
          const std::int64_t phys = pb.table(i, t / c.block_size);
          test::store_value(pb.key_cache.view.data, pb.cache_storage(), pb.key_offset(phys, g, d, t % c.block_size), 0);
          test::store_value(pb.value_cache.view.data, pb.cache_storage(), pb.value_offset(phys, g, d, t % c.block_size), 0);
        }
  for (int r = 0; r < pb.num_rows; ++r)  // every query row (several per sequence with q_lens)
    for (int e = 0; e < c.num_heads * c.head_size; ++e)
      test::store_value(pb.query.view.data, c.dtype, r * pb.query.view.strides[0] + e, 0);
  return pb;
}

/// Sets key/value element d of token t (kv head g) of sequence i; raw bytes for an fp8 cache.
void set_kv(HostProblem& pb, int i, int t, int g, int d, double k, double v) {
  const std::int64_t phys = pb.table(i, t / pb.cfg.block_size);
  const int o = t % pb.cfg.block_size;
  test::store_value(pb.key_cache.view.data, pb.cache_storage(), pb.key_offset(phys, g, d, o), k);
  test::store_value(pb.value_cache.view.data, pb.cache_storage(), pb.value_offset(phys, g, d, o), v);
}

void set_q(HostProblem& pb, int i, int h, int d, double v) {
  test::store_value(pb.query.view.data, pb.cfg.dtype, i * pb.query.view.strides[0] + std::int64_t(h) * pb.cfg.head_size + d, v);
}

double out_at(const std::vector<double>& o, const HostProblem& pb, int i, int h, int d) {
  return o[(std::size_t(i) * pb.cfg.num_heads + h) * pb.cfg.head_size + d];
}

ProblemConfig tiny(std::vector<int> lens) {
  ProblemConfig c;
  c.num_heads = 1;
  c.num_kv_heads = 1;
  c.head_size = 32;
  c.block_size = 8;
  c.seq_lens = std::move(lens);
  c.scale = 1.0f;
  return c;
}

TEST(ReferenceHand, OneTokenReturnsItsValue) {
  HostProblem pb = zero_problem(tiny({1}));
  set_q(pb, 0, 0, 0, 3.0);
  for (int d = 0; d < 32; ++d) set_kv(pb, 0, 0, 0, d, 0.5, d - 10.0);
  const auto out = ref::attention(pb.params);
  for (int d = 0; d < 32; ++d) EXPECT_EQ(out_at(out, pb, 0, 0, d), d - 10.0);  // softmax of one logit is 1
}

TEST(ReferenceHand, TwoTokens) {
  // q = e0, k0 = 0, k1 = e0, scale 1: logits (0, 1); weights 1/(1+e), e/(1+e).
  HostProblem pb = zero_problem(tiny({2}));
  set_q(pb, 0, 0, 0, 1.0);
  set_kv(pb, 0, 1, 0, 0, 1.0, 0.0);
  set_kv(pb, 0, 0, 0, 0, 0.0, 1.0);  // v0 = e0
  set_kv(pb, 0, 1, 0, 1, 1.0, 2.0);  // v1 = 2 e1 (and k1[1] = 1, which q ignores)
  const auto out = ref::attention(pb.params);
  const double e = std::exp(1.0);
  EXPECT_NEAR(out_at(out, pb, 0, 0, 0), 1.0 / (1.0 + e), 1e-15);  // one exp and one division apart
  EXPECT_NEAR(out_at(out, pb, 0, 0, 1), 2.0 * e / (1.0 + e), 1e-15);
  EXPECT_EQ(out_at(out, pb, 0, 0, 2), 0.0);
  const auto s = ref::logits(pb.params, 0, 0);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0], 0.0);
  EXPECT_EQ(s[1], 1.0);
}

TEST(ReferenceHand, ScaleMultipliesTheDot) {
  ProblemConfig c = tiny({2});
  c.scale = 0.25f;
  HostProblem pb = zero_problem(c);
  set_q(pb, 0, 0, 3, 2.0);
  set_kv(pb, 0, 0, 0, 3, 4.0, 1.0);  // s0 = 0.25 * 8 = 2
  set_kv(pb, 0, 1, 0, 3, -2.0, 3.0); // s1 = 0.25 * -4 = -1
  const auto s = ref::logits(pb.params, 0, 0);
  EXPECT_EQ(s[0], 2.0);
  EXPECT_EQ(s[1], -1.0);
  const double w0 = std::exp(2.0), w1 = std::exp(-1.0);
  EXPECT_NEAR(out_at(ref::attention(pb.params), pb, 0, 0, 3), (w0 * 1.0 + w1 * 3.0) / (w0 + w1), 1e-15);
}

TEST(ReferenceHand, Alibi) {
  // All keys zero: logits are the ALiBi bias slope * (t - L + 1) = 0.5 * (-2, -1, 0).
  ProblemConfig c = tiny({3});
  c.alibi = true;
  HostProblem pb = zero_problem(c);
  static_cast<float*>(pb.alibi_slopes.view.data)[0] = 0.5f;
  for (int t = 0; t < 3; ++t) set_kv(pb, 0, t, 0, 0, 0.0, 10.0 * (t + 1));
  const auto s = ref::logits(pb.params, 0, 0);
  EXPECT_EQ(s[0], -1.0);
  EXPECT_EQ(s[1], -0.5);
  EXPECT_EQ(s[2], 0.0);
  const double w[3] = {std::exp(-1.0), std::exp(-0.5), 1.0};
  const double expect = (w[0] * 10 + w[1] * 20 + w[2] * 30) / (w[0] + w[1] + w[2]);
  EXPECT_NEAR(out_at(ref::attention(pb.params), pb, 0, 0, 0), expect, 1e-13);  // a few roundings of O(30) values
}

TEST(ReferenceHand, Fp8CachesAreDecodedAndScaled) {
  for (CacheDType f : {CacheDType::kFp8E4M3, CacheDType::kFp8E5M2}) {
    SCOPED_TRACE(cache_dtype_name(f));
    ProblemConfig c = tiny({2});
    c.kv_cache_dtype = f;
    c.k_scale = 2.0f;
    c.v_scale = 0.5f;
    HostProblem pb = zero_problem(c);
    set_q(pb, 0, 0, 0, 1.0);
    // Raw bytes: encode(1) for k0, encode(2) and encode(4) for the values.
    set_kv(pb, 0, 0, 0, 0, float_to_fp8(1.0f, f), float_to_fp8(2.0f, f));
    set_kv(pb, 0, 1, 0, 0, float_to_fp8(0.0f, f), float_to_fp8(4.0f, f));
    // k0 = 1 * k_scale = 2 -> s = (2, 0); v = (2, 4) * v_scale = (1, 2).
    const auto s = ref::logits(pb.params, 0, 0);
    EXPECT_EQ(s[0], 2.0);
    EXPECT_EQ(s[1], 0.0);
    const double w0 = std::exp(2.0);
    EXPECT_NEAR(out_at(ref::attention(pb.params), pb, 0, 0, 0), (w0 * 1.0 + 2.0) / (w0 + 1.0), 1e-15);
  }
}

TEST(ReferenceHand, BlockSparseMasksBlockZero) {
  // block_size 8 = sparse block size; L = 24: query block qb = 2. local_blocks 1: kb = 2 is
  // local; vert_stride 2, step 0: off = 1, so kb = 1 is vertical ((1 + 1) % 2 == 0); kb = 0
  // is masked. Keys zero: out = mean of v over tokens 8..23 = 15.5.
  ProblemConfig c = tiny({24});
  c.blocksparse = {1, 2, 8, 0};
  HostProblem pb = zero_problem(c);
  for (int t = 0; t < 24; ++t) set_kv(pb, 0, t, 0, 0, 0.0, t);
  const auto s = ref::logits(pb.params, 0, 0);
  for (int t = 0; t < 24; ++t) EXPECT_EQ(std::isinf(s[t]), t < 8) << t;
  EXPECT_NEAR(out_at(ref::attention(pb.params), pb, 0, 0, 0), 15.5, 1e-14);
  // With local_blocks 0 and vert_stride 4, only kb = 3 (off 1) would be vertical: all masked.
  pb.params.blocksparse = {0, 4, 8, 0};
  const auto z = ref::attention(pb.params);
  for (double v : z) EXPECT_EQ(v, 0.0);
  const auto parts = ref::attention_partitions(pb.params);
  EXPECT_EQ(parts.valid[0], 1);
  EXPECT_EQ(parts.exp_sums[0], 0.0);
  EXPECT_EQ(parts.max_logits[0], -std::numeric_limits<double>::infinity());
}

TEST(ReferenceHand, EmptySequenceGivesZeros) {
  HostProblem pb = zero_problem(tiny({0, 3, 0}));
  for (int t = 0; t < 3; ++t) set_kv(pb, 1, t, 0, 0, 0.0, 1.0);
  const auto out = ref::attention(pb.params);
  for (int d = 0; d < 32; ++d) {
    EXPECT_EQ(out_at(out, pb, 0, 0, d), 0.0);
    EXPECT_EQ(out_at(out, pb, 2, 0, d), 0.0);
  }
  EXPECT_EQ(out_at(out, pb, 1, 0, 0), 1.0);
  EXPECT_TRUE(ref::logits(pb.params, 0, 0).empty());
  const auto parts = ref::attention_partitions(pb.params);
  EXPECT_EQ(parts.valid[0], 0);
  EXPECT_EQ(parts.valid[1], 1);
  const auto red = ref::reduce_partitions(parts, static_cast<const std::int32_t*>(pb.seq_lens.view.data));
  expect_identical(red, out);
}

// ---------------------------------------------------------------------------------------
// Against the naive formulation, over the dispatch axes
// ---------------------------------------------------------------------------------------

TEST(ReferenceVsNaive, RandomProblems) {
  PAGEDATTN_TEST_RNG(rng);
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (CacheDType f : {CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2})
      for (int variant = 0; variant < 4; ++variant) {
        ProblemConfig c;
        c.dtype = t;
        c.kv_cache_dtype = f;
        c.num_seqs = 3;
        c.num_heads = 4;
        c.num_kv_heads = variant == 0 ? 4 : variant == 1 ? 2 : 1;
        c.head_size = variant == 3 ? 120 : 64;
        c.block_size = variant == 2 ? 8 : 16;
        c.min_len = 0;
        c.max_len = 90;
        c.alibi = variant % 2 == 1;
        c.cache_views = variant >= 2;
        c.q_row_pad = variant == 3 ? 5 : 0;
        c.bt_row_pad = variant;
        c.k_scale = f == CacheDType::kAuto ? 1.0f : 0.75f;
        c.v_scale = f == CacheDType::kAuto ? 1.0f : 1.5f;
        if (variant == 2) c.blocksparse = {1, 3, 16, -1};
        if (variant == 3) c.blocksparse = {2, 2, 32, 1}, c.tp_rank = 1;
        HostProblem pb = build_problem(c, rng);
        SCOPED_TRACE(std::string(dtype_name(t)) + " " + cache_dtype_name(f) + " variant " + std::to_string(variant));
        expect_close(ref::attention(pb.params), naive_attention(pb), kF64Rtol, kF64Atol);
      }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

ProblemConfig random_config(test::Rng& rng) {
  ProblemConfig c;
  c.num_seqs = 3;
  c.num_heads = 4;
  c.num_kv_heads = rng.coin() ? 2 : 4;
  c.head_size = 32;
  c.block_size = 8;
  c.min_len = 1;
  c.max_len = 70;
  c.alibi = rng.coin();
  return c;
}

TEST(ReferenceProperty, PermutingPhysicalBlocksChangesNothing) {
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c = random_config(rng);
  c.extra_blocks = 5;
  HostProblem a = build_problem(c, rng);
  HostProblem b = a;
  std::vector<std::int32_t> perm(static_cast<std::size_t>(a.num_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  rng.shuffle(perm.begin(), perm.end());
  // Move every physical block id -> perm[id] (whole block regions) and rewrite the tables.
  const auto esz = dtype_size(a.cache_storage());
  for (test::HostTensor* src : {&a.key_cache, &a.value_cache}) {
    test::HostTensor& dst = src == &a.key_cache ? b.key_cache : b.value_cache;
    const std::int64_t bstride = src->view.strides[0];
    for (std::int64_t id = 0; id < a.num_blocks; ++id)
      std::memcpy(static_cast<std::uint8_t*>(dst.view.data) + perm[id] * bstride * esz,
                  static_cast<const std::uint8_t*>(src->view.data) + id * bstride * esz, bstride * esz);
  }
  for (int i = 0; i < c.num_seqs; ++i)
    for (int blk = 0; blk < (a.seq_len(i) + c.block_size - 1) / c.block_size; ++blk) b.table(i, blk) = perm[a.table(i, blk)];
  // Same data in the same logical order: the reference must agree bit for bit.
  expect_identical(ref::attention(a.params), ref::attention(b.params));
}

TEST(ReferenceProperty, GqaEqualsMhaWithReplicatedKvHeads) {
  PAGEDATTN_TEST_RNG(rng);
  for (int kvh : {1, 2, 4}) {
    ProblemConfig c = random_config(rng);
    c.num_heads = 8;
    c.num_kv_heads = kvh;
    c.permute_blocks = false;
    c.alibi = true;
    HostProblem gqa = build_problem(c, rng);
    ProblemConfig m = c;
    m.num_kv_heads = 8;
    m.seq_lens.clear();
    for (int i = 0; i < c.num_seqs; ++i) m.seq_lens.push_back(gqa.seq_len(i));
    HostProblem mha = build_problem(m, rng);
    // Same query, slopes and table; kv head h of mha = kv head h / (8 / kvh) of gqa.
    mha.query = gqa.query;
    mha.alibi_slopes = gqa.alibi_slopes;
    mha.block_tables = gqa.block_tables;
    mha.rebind();
    for (std::int64_t blk = 0; blk < gqa.num_blocks; ++blk)
      for (int h = 0; h < 8; ++h)
        for (int d = 0; d < c.head_size; ++d)
          for (int o = 0; o < c.block_size; ++o) {
            const int g = h / (8 / kvh);
            static_cast<float*>(mha.key_cache.view.data)[mha.key_offset(blk, h, d, o)] =
                static_cast<const float*>(gqa.key_cache.view.data)[gqa.key_offset(blk, g, d, o)];
            static_cast<float*>(mha.value_cache.view.data)[mha.value_offset(blk, h, d, o)] =
                static_cast<const float*>(gqa.value_cache.view.data)[gqa.value_offset(blk, g, d, o)];
          }
    SCOPED_TRACE("num_kv_heads " + std::to_string(kvh));
    expect_identical(ref::attention(gqa.params), ref::attention(mha.params));
  }
}

TEST(ReferenceProperty, V2PartitionsAndReduceEqualAttention) {
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_size = 32;
  c.block_size = 16;
  c.seq_lens = {1, 511, 512, 513, 1024, 1537};
  c.num_seqs = 6;
  c.alibi = true;
  HostProblem pb = build_problem(c, rng);
  const auto parts = ref::attention_partitions(pb.params);
  ASSERT_EQ(parts.num_partitions, 4);  // ceil(1537 / 512)
  const int expect_valid[6] = {1, 1, 1, 2, 2, 4};
  for (int i = 0; i < 6; ++i)
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 4; ++j) {
        const std::size_t row = (std::size_t(i) * 2 + h) * 4 + j;
        EXPECT_EQ(parts.valid[row], j < expect_valid[i] ? 1 : 0) << "seq " << i << " partition " << j;
      }
  // Partition 1 of the 1537-token sequence, head 1, checked against the SPEC definition.
  {
    const auto s = ref::logits(pb.params, 5, 1);
    double m = -INFINITY, l = 0.0;
    for (int t = 512; t < 1024; ++t) m = std::max(m, s[t]);
    for (int t = 512; t < 1024; ++t) l += std::exp(s[t] - m);
    const std::size_t row = (5 * 2 + 1) * 4 + 1;
    EXPECT_EQ(parts.max_logits[row], m);
    EXPECT_NEAR(parts.exp_sums[row], l, 1e-12 * l);  // same terms; summation order may differ
  }
  const auto reduced = ref::reduce_partitions(parts, static_cast<const std::int32_t*>(pb.seq_lens.view.data));
  // The merge rescales each partition once: a few extra roundings, far below 1e-12.
  expect_close(reduced, ref::attention(pb.params), kF64Rtol, kF64Atol);
  // One partition: out = o_0 exactly.
  for (int d = 0; d < 32; ++d) EXPECT_EQ(reduced[d], parts.out[d]);
  // Smaller partitions (many per sequence) merge to the same result.
  const auto p16 = ref::attention_partitions(pb.params, 16);
  EXPECT_EQ(p16.num_partitions, 97);
  expect_close(ref::reduce_partitions(p16, static_cast<const std::int32_t*>(pb.seq_lens.view.data), 16),
               ref::attention(pb.params), kF64Rtol, kF64Atol);
}

TEST(ReferenceProperty, ConstantLogitShiftChangesNothing) {
  // Key dimension 0 is 1 for every token, query dimension 0 moves from 0 to a: every logit
  // shifts by scale * a. Softmax is shift-invariant, and a stable one survives a shift of
  // 1000 (exp(1000) overflows double).
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c = random_config(rng);
  c.scale = 0.125f;
  HostProblem pb = build_problem(c, rng);
  for (int i = 0; i < c.num_seqs; ++i)
    for (int t = 0; t < pb.seq_len(i); ++t)
      for (int g = 0; g < c.num_kv_heads; ++g)
        test::store_value(pb.key_cache.view.data, DType::kFloat32,
                          pb.key_offset(pb.table(i, t / c.block_size), g, 0, t % c.block_size), 1.0);
  for (int i = 0; i < c.num_seqs; ++i)
    for (int h = 0; h < c.num_heads; ++h) set_q(pb, i, h, 0, 0.0);
  const auto base = ref::attention(pb.params);
  for (double a : {3.0, -50.0, 8000.0}) {
    HostProblem s = pb;
    for (int i = 0; i < c.num_seqs; ++i)
      for (int h = 0; h < c.num_heads; ++h) set_q(s, i, h, 0, a);
    // The shifted dot products round at magnitude |a| instead of O(1): each logit gains an
    // absolute error up to head_size * |a| * 2^-53 * scale (~4e-12 for a = 8000), which
    // moves the weights by the same relative amount. 1e-10 bounds that with margin.
    SCOPED_TRACE("shift " + std::to_string(a * c.scale));
    expect_close(ref::attention(s.params), base, 1e-10, 1e-10);
  }
}

TEST(ReferenceProperty, PoisonedSlotsNeverLeak) {
  PAGEDATTN_TEST_RNG(rng);
  for (CacheDType f : {CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2})
    for (int rep = 0; rep < 3; ++rep) {
      ProblemConfig c = random_config(rng);
      c.kv_cache_dtype = f;
      c.dtype = rep == 1 ? DType::kBFloat16 : DType::kFloat16;
      c.cache_views = rep == 2;
      c.seq_lens = {static_cast<int>(rng.randint(1, 61)), static_cast<int>(rng.randint(1, 61)), 13};  // 13: mid-block
      HostProblem pb = build_problem(c, rng);
      // The poison is really there: the last block of a sequence that ends mid-block has
      // NaN past its end (so a kernel that read it would produce NaN).
      int poisoned = 0;
      for (int i = 0; i < c.num_seqs; ++i) {
        const int L = pb.seq_len(i);
        if (L % c.block_size == 0) continue;
        const double k = f == CacheDType::kAuto
                             ? test::load_value(pb.key_cache.view.data, pb.cache_storage(),
                                                pb.key_offset(pb.table(i, L / c.block_size), 0, 0, L % c.block_size))
                             : fp8_to_float(static_cast<const std::uint8_t*>(pb.key_cache.view.data)[pb.key_offset(
                                                pb.table(i, L / c.block_size), 0, 0, L % c.block_size)], f);
        poisoned += std::isnan(k);
      }
      SCOPED_TRACE(std::string(cache_dtype_name(f)) + " rep " + std::to_string(rep));
      const auto out = ref::attention(pb.params);
      for (double v : out) ASSERT_TRUE(std::isfinite(v));
      EXPECT_GE(poisoned, 1);  // at least the 13-token sequence
      const auto parts = ref::attention_partitions(pb.params);
      for (double v : ref::reduce_partitions(parts, static_cast<const std::int32_t*>(pb.seq_lens.view.data)))
        ASSERT_TRUE(std::isfinite(v));
    }
}

TEST(ReferenceProperty, PoisonActuallyPoisons) {
  // Guard for the test above: make one sequence read one slot past its end and NaN appears.
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c = random_config(rng);
  c.seq_lens = {5, 9, 13};
  HostProblem pb = build_problem(c, rng);
  static_cast<std::int32_t*>(pb.seq_lens.view.data)[1] = 10;
  const auto out = ref::attention(pb.params);
  EXPECT_TRUE(std::isnan(out_at(out, pb, 1, 0, 0)));
  EXPECT_TRUE(std::isfinite(out_at(out, pb, 0, 0, 0)));
}

TEST(ReferenceProperty, StridedQueryAndCacheViewsEqualPackedCopies) {
  PAGEDATTN_TEST_RNG(rng);
  for (CacheDType f : {CacheDType::kAuto, CacheDType::kFp8E4M3}) {
    ProblemConfig c = random_config(rng);
    c.kv_cache_dtype = f;
    c.dtype = DType::kBFloat16;
    c.q_row_pad = 24;
    c.bt_row_pad = 3;
    c.cache_views = true;
    HostProblem v = build_problem(c, rng);
    ASSERT_FALSE(v.key_cache.view.is_contiguous());
    ASSERT_NE(v.key_cache.offset_bytes, 0u);
    // Packed copies of query, block_tables and both caches.
    HostProblem p = v;
    const int S = c.num_seqs, H = c.num_heads, D = c.head_size, KVH = c.num_kv_heads, BS = c.block_size;
    const DType st = v.cache_storage();
    p.query = test::make_tensor(c.dtype, {S, H, D});
    for (int i = 0; i < S; ++i)
      for (int e = 0; e < H * D; ++e)
        std::memcpy(static_cast<std::uint8_t*>(p.query.view.data) + (std::size_t(i) * H * D + e) * 2,
                    static_cast<const std::uint8_t*>(v.query.view.data) + (i * v.query.view.strides[0] + e) * 2, 2);
    p.block_tables = test::make_tensor(DType::kInt32, {S, v.max_blocks_per_seq});
    p.key_cache = test::make_tensor(st, {v.num_blocks, KVH, v.key_cache.view.shape[2], BS, v.x});
    p.value_cache = test::make_tensor(st, {v.num_blocks, KVH, D, BS});
    p.rebind();
    for (int i = 0; i < S; ++i)
      for (int b = 0; b < v.max_blocks_per_seq; ++b) p.table(i, b) = v.table(i, b);
    const auto esz = dtype_size(st);
    for (std::int64_t blk = 0; blk < v.num_blocks; ++blk)
      for (int g = 0; g < KVH; ++g)
        for (int d = 0; d < D; ++d)
          for (int o = 0; o < BS; ++o) {
            std::memcpy(static_cast<std::uint8_t*>(p.key_cache.view.data) + p.key_offset(blk, g, d, o) * esz,
                        static_cast<const std::uint8_t*>(v.key_cache.view.data) + v.key_offset(blk, g, d, o) * esz, esz);
            std::memcpy(static_cast<std::uint8_t*>(p.value_cache.view.data) + p.value_offset(blk, g, d, o) * esz,
                        static_cast<const std::uint8_t*>(v.value_cache.view.data) + v.value_offset(blk, g, d, o) * esz, esz);
          }
    ASSERT_TRUE(p.params.key_cache.is_contiguous());
    ASSERT_TRUE(p.params.query.is_contiguous());
    SCOPED_TRACE(cache_dtype_name(f));
    expect_identical(ref::attention(v.params), ref::attention(p.params));
  }
}

TEST(ReferenceProperty, BlockSparseMasksExactlyWhatTheRuleSays) {
  PAGEDATTN_TEST_RNG(rng);
  for (int step : {2, 0, -1, -3})
    for (int tp_rank : {0, 1, 3}) {
      ProblemConfig c;
      c.num_seqs = 3;
      c.num_heads = 8;
      c.num_kv_heads = 2;
      c.head_size = 32;
      c.block_size = 8;
      c.seq_lens = {static_cast<int>(rng.randint(1, 300)), static_cast<int>(rng.randint(1, 300)), 300};
      c.blocksparse = {static_cast<int>(rng.randint(0, 3)), static_cast<int>(rng.randint(2, 5)),
                       8 * static_cast<int>(rng.randint(1, 4)), step};
      c.tp_rank = tp_rank;
      c.alibi = rng.coin();
      c.poison_masked = true;  // a masked block that were read would produce NaN
      HostProblem pb = build_problem(c, rng);
      const auto& s = c.blocksparse;
      SCOPED_TRACE("step " + std::to_string(step) + " tp_rank " + std::to_string(tp_rank) + " local " +
                   std::to_string(s.local_blocks) + " vert " + std::to_string(s.vert_stride) + " B " +
                   std::to_string(s.block_size));
      int masked = 0, kept = 0;
      for (int i = 0; i < c.num_seqs; ++i) {
        const int L = pb.seq_len(i);
        for (int h = 0; h < c.num_heads; ++h) {
          const int g = h / 4;
          const auto lg = ref::logits(pb.params, i, h);
          for (int t = 0; t < L; ++t) {
            // SPEC §3 evaluated directly for the cache block holding t.
            const int t0 = t / 8 * 8;
            const long qb = (L - 1) / s.block_size, kb = t0 / s.block_size;
            const long off = step >= 0 ? (long(tp_rank) * 8 + h) * step + 1 : (long(tp_rank) * 2 + g) * -step + 1;
            const bool keep = kb > qb - s.local_blocks || (kb + off) % s.vert_stride == 0;
            ASSERT_EQ(ref::block_attended(pb.params, L, h, t0), keep) << "seq " << i << " head " << h << " t " << t;
            ASSERT_EQ(std::isinf(lg[t]), !keep) << "seq " << i << " head " << h << " t " << t;
            keep ? ++kept : ++masked;
          }
        }
      }
      EXPECT_GT(kept, 0);
      EXPECT_GT(masked, 0);  // the 300-token sequence always has masked blocks for these parameters
      const auto out = ref::attention(pb.params);
      for (double v : out) ASSERT_TRUE(std::isfinite(v));
      expect_close(out, naive_attention(pb), kF64Rtol, kF64Atol);
      const auto parts = ref::attention_partitions(pb.params, 64);
      expect_close(ref::reduce_partitions(parts, static_cast<const std::int32_t*>(pb.seq_lens.view.data), 64), out,
                   kF64Rtol, kF64Atol);
    }
}

TEST(ReferenceProperty, SlidingStepSignSelectsQueryOrKvHead) {
  // step >= 0 slides by query head, step < 0 by kv head: with step -1 all query heads of
  // one kv head share a mask; with step 1 neighbouring query heads differ.
  ProblemConfig c = tiny({64});
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.tp_rank = 1;
  c.blocksparse = {1, 2, 8, -1};
  HostProblem pb = zero_problem(c);
  auto mask = [&](int h) {
    std::vector<bool> m;
    for (int t0 = 0; t0 < 64; t0 += 8) m.push_back(ref::block_attended(pb.params, 64, h, t0));
    return m;
  };
  EXPECT_EQ(mask(0), mask(1));
  EXPECT_EQ(mask(2), mask(3));
  EXPECT_NE(mask(0), mask(2));
  // kv head 0, tp_rank 1: off = (1*2 + 0) * 1 + 1 = 3; vertical kb: (kb + 3) % 2 == 0 -> odd kb.
  const std::vector<bool> expect0 = {false, true, false, true, false, true, false, true};  // kb 7 is also local
  EXPECT_EQ(mask(0), expect0);
  pb.params.blocksparse.head_sliding_step = 1;
  EXPECT_NE(mask(0), mask(1));
  // head 1, tp_rank 1: off = (1*4 + 1) * 1 + 1 = 6 -> even kb vertical, plus local kb 7.
  const std::vector<bool> expect1 = {true, false, true, false, true, false, true, true};
  EXPECT_EQ(mask(1), expect1);
}


// ---------------------------------------------------------------------------------------
// SPEC §3b variants: multi-token rows, sliding window, soft-cap, ALiBi from the row's
// position, LSE, merge, per-head fp8 scales, NaN propagation
// ---------------------------------------------------------------------------------------

constexpr double kInf = std::numeric_limits<double>::infinity();

/// Sets key element d of token t (kv head g) of sequence i, leaving the value alone.
void set_k(HostProblem& pb, int i, int t, int g, int d, double k) {
  const std::int64_t phys = pb.table(i, t / pb.cfg.block_size);
  test::store_value(pb.key_cache.view.data, pb.cache_storage(), pb.key_offset(phys, g, d, t % pb.cfg.block_size), k);
}

/// Sets value element d of token t (kv head g) of sequence i, leaving the key alone.
void set_v(HostProblem& pb, int i, int t, int g, int d, double v) {
  const std::int64_t phys = pb.table(i, t / pb.cfg.block_size);
  test::store_value(pb.value_cache.view.data, pb.cache_storage(), pb.value_offset(phys, g, d, t % pb.cfg.block_size), v);
}

double lse_at(const std::vector<double>& l, const HostProblem& pb, int r, int h) {
  return l[std::size_t(r) * pb.cfg.num_heads + h];
}

/// Query rows per sequence, from the test's own config (not from query_start_loc).
std::vector<int> row_counts(const HostProblem& pb) {
  std::vector<int> n(static_cast<std::size_t>(pb.cfg.num_seqs), 1);
  if (!pb.cfg.q_lens.empty())
    for (int i = 0; i < pb.cfg.num_seqs; ++i) n[i] = pb.cfg.q_lens[i];
  return n;
}

/// SPEC §3 block-sparse rule for a query token at position pos (SPEC §3b), written again here.
bool naive_keep_at(const HostProblem& pb, std::int64_t pos, int h, int g, std::int64_t t) {
  const auto& s = pb.cfg.blocksparse;
  if (s.vert_stride <= 1) return true;
  const std::int64_t t0 = t / pb.cfg.block_size * pb.cfg.block_size;
  const std::int64_t qb = pos / s.block_size, kb = t0 / s.block_size;
  const std::int64_t off = s.head_sliding_step >= 0
                               ? (std::int64_t(pb.cfg.tp_rank) * pb.cfg.num_heads + h) * s.head_sliding_step + 1
                               : (std::int64_t(pb.cfg.tp_rank) * pb.cfg.num_kv_heads + g) * -std::int64_t(s.head_sliding_step) + 1;
  return kb > qb - s.local_blocks || (kb + off) % s.vert_stride == 0;
}

struct NaiveResult {
  std::vector<double> out, lse;
};

/// The §3b definition evaluated directly: per sequence, gather its pages into contiguous K
/// and V (dequantised with the kv head's scale), then for every query row list the attended
/// tokens, form their logits in the SPEC order and take the softmax. Shares no code with
/// src/reference.
NaiveResult naive_variant_attention(const HostProblem& pb) {
  const auto& c = pb.cfg;
  const auto& P = pb.params;
  const int S = c.num_seqs, H = c.num_heads, KVH = c.num_kv_heads, D = c.head_size, BS = c.block_size;
  const auto& kc = P.key_cache;
  const auto& vc = P.value_cache;
  const std::int64_t x = kc.shape[4];
  const std::vector<int> qn = row_counts(pb);
  const int R = std::accumulate(qn.begin(), qn.end(), 0);
  NaiveResult res;
  res.out.assign(std::size_t(R) * H * D, 0.0);
  res.lse.assign(std::size_t(R) * H, -kInf);
  auto scale_of = [&](bool key, int g) -> float {
    if (c.per_head_scales)
      return static_cast<const float*>(key ? pb.k_scales.view.data : pb.v_scales.view.data)[g];
    return key ? P.k_scale : P.v_scale;
  };
  int row = 0;
  for (int i = 0; i < S; ++i) {
    const int L = pb.seq_len(i);
    const auto* table = static_cast<const std::int32_t*>(P.block_tables.data) + i * P.block_tables.strides[0];
    // K[g][t][d], V[g][t][d]
    std::vector<double> K(std::size_t(KVH) * L * D), V(std::size_t(KVH) * L * D);
    for (int g = 0; g < KVH; ++g)
      for (int t = 0; t < L; ++t) {
        const std::int64_t phys = table[t / BS], o = t % BS;
        for (int d = 0; d < D; ++d) {
          const std::size_t e = (std::size_t(g) * L + t) * D + d;
          K[e] = naive_cache_elem(
              pb, kc, phys * kc.strides[0] + g * kc.strides[1] + (d / x) * kc.strides[2] + o * kc.strides[3] + d % x,
              scale_of(true, g));
          V[e] = naive_cache_elem(pb, vc, phys * vc.strides[0] + g * vc.strides[1] + d * vc.strides[2] + o,
                                  scale_of(false, g));
        }
      }
    for (int j = 0; j < qn[i]; ++j, ++row) {
      const int pos = L - qn[i] + j;
      for (int h = 0; h < H; ++h) {
        const int g = h / (H / KVH);
        std::vector<double> q(D);
        for (int d = 0; d < D; ++d)
          q[d] = test::load_value(P.query.data, c.dtype, row * P.query.strides[0] + std::int64_t(h) * D + d);
        const int first = c.window_left >= 0 ? std::max(0, pos - c.window_left) : 0;
        std::vector<double> s;
        std::vector<int> toks;
        for (int t = first; t <= pos; ++t) {
          if (!naive_keep_at(pb, pos, h, g, t)) continue;
          double dot = 0.0;
          for (int d = 0; d < D; ++d) dot += q[d] * K[(std::size_t(g) * L + t) * D + d];
          double v = double(P.scale) * dot;
          if (c.logits_soft_cap > 0) v = double(c.logits_soft_cap) * std::tanh(v / double(c.logits_soft_cap));
          if (c.alibi) v += double(static_cast<const float*>(P.alibi_slopes.data)[h]) * (t - pos);
          s.push_back(v);
          toks.push_back(t);
        }
        if (s.empty()) continue;
        const double m = *std::max_element(s.begin(), s.end());
        double sum = 0.0;
        for (double& v : s) sum += (v = std::exp(v - m));
        res.lse[std::size_t(row) * H + h] = m + std::log(sum);
        double* o = &res.out[(std::size_t(row) * H + h) * D];
        for (std::size_t k = 0; k < toks.size(); ++k)
          for (int d = 0; d < D; ++d) o[d] += s[k] / sum * V[(std::size_t(g) * L + toks[k]) * D + d];
      }
    }
  }
  return res;
}

/// A random problem exercising the §3b variants together (one seeded draw per call).
ProblemConfig variant_config(test::Rng& rng) {
  ProblemConfig c;
  c.num_seqs = 3;
  c.num_heads = 4;
  c.num_kv_heads = std::vector<int>{1, 2, 4}[rng.randint(0, 2)];
  c.head_size = rng.coin() ? 32 : 64;
  c.block_size = rng.coin() ? 8 : 16;
  c.dtype = std::vector<DType>{DType::kFloat32, DType::kFloat16, DType::kBFloat16}[rng.randint(0, 2)];
  c.kv_cache_dtype = std::vector<CacheDType>{CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2}[rng.randint(0, 2)];
  c.min_len = 0;
  c.max_len = 80;
  if (rng.coin(0.7)) {
    c.q_lens.clear();
    for (int i = 0; i < c.num_seqs; ++i) c.q_lens.push_back(static_cast<int>(rng.randint(0, 5)));
  }
  c.window_left = rng.coin() ? -1 : static_cast<int>(rng.randint(0, 30));
  c.logits_soft_cap = std::vector<float>{0.0f, 0.5f, 5.0f, 30.0f}[rng.randint(0, 3)];
  c.alibi = rng.coin();
  if (c.kv_cache_dtype != CacheDType::kAuto) {
    c.per_head_scales = rng.coin();
    c.k_scale = 0.75f;
    c.v_scale = 1.5f;
  }
  if (rng.coin(0.3))
    c.blocksparse = {static_cast<int>(rng.randint(0, 2)), static_cast<int>(rng.randint(2, 4)),
                     c.block_size * static_cast<int>(rng.randint(1, 3)), static_cast<int>(rng.randint(-2, 2))};
  c.tp_rank = static_cast<int>(rng.randint(0, 1));
  c.q_range = 3.0;  // logits of a few units, so a soft-cap of 0.5 or 5 bites
  c.cache_views = rng.coin();
  c.q_row_pad = rng.coin() ? 7 : 0;
  c.poison_masked = true;  // blocks no row may read hold NaN
  c.lse = true;
  return c;
}

std::string describe(const ProblemConfig& c) {
  std::string s = std::string(dtype_name(c.dtype)) + " " + cache_dtype_name(c.kv_cache_dtype) + " kvh " +
                  std::to_string(c.num_kv_heads) + " D " + std::to_string(c.head_size) + " bs " +
                  std::to_string(c.block_size) + " q_lens";
  for (int q : c.q_lens) s += " " + std::to_string(q);
  s += " window " + std::to_string(c.window_left) + " cap " + std::to_string(c.logits_soft_cap) + " alibi " +
       std::to_string(c.alibi) + " per_head " + std::to_string(c.per_head_scales) + " sparse " +
       std::to_string(c.blocksparse.vert_stride);
  return s;
}

TEST(ReferenceVariantsVsNaive, RandomProblems) {
  PAGEDATTN_TEST_RNG(rng);
  int rows_seen = 0, empty_rows = 0;
  for (int rep = 0; rep < 40; ++rep) {
    const ProblemConfig c = variant_config(rng);
    HostProblem pb = build_problem(c, rng);
    SCOPED_TRACE("rep " + std::to_string(rep) + ": " + describe(pb.cfg));
    const NaiveResult n = naive_variant_attention(pb);
    const auto out = ref::attention(pb.params);
    const auto l = ref::lse(pb.params);
    ASSERT_EQ(out.size(), std::size_t(pb.num_rows) * c.num_heads * c.head_size);
    ASSERT_EQ(l.size(), std::size_t(pb.num_rows) * c.num_heads);
    for (double v : out) ASSERT_TRUE(std::isfinite(v));  // poisoned blocks were never read
    expect_close(out, n.out, kF64Rtol, kF64Atol, "out");
    for (std::size_t k = 0; k < l.size(); ++k) {
      ++rows_seen;
      if (n.lse[k] == -kInf) {
        ++empty_rows;
        EXPECT_EQ(l[k], -kInf) << "row*head " << k;
      } else {
        EXPECT_NEAR(l[k], n.lse[k], kF64Atol + kF64Rtol * std::fabs(n.lse[k])) << "row*head " << k;
      }
    }
  }
  EXPECT_GT(rows_seen, 0);
}

TEST(ReferenceVariants, QueryRowsFollowQueryStartLoc) {
  ProblemConfig c = tiny({5, 6, 0, 9});
  c.q_lens = {0, 2, 0, 3};
  HostProblem pb = zero_problem(c);
  ASSERT_EQ(pb.num_rows, 5);
  const auto rows = ref::query_rows(pb.params);
  ASSERT_EQ(rows.size(), 5u);
  const int seq[5] = {1, 1, 3, 3, 3};
  const int pos[5] = {4, 5, 6, 7, 8};
  for (int r = 0; r < 5; ++r) {
    EXPECT_EQ(rows[r].seq, seq[r]) << r;
    EXPECT_EQ(rows[r].pos, pos[r]) << r;
    const auto s = ref::logits(pb.params, r, 0);
    ASSERT_EQ(s.size(), std::size_t(pb.seq_len(seq[r]))) << r;
    for (int t = 0; t < static_cast<int>(s.size()); ++t) EXPECT_EQ(std::isinf(s[t]), t > pos[r]) << r << " " << t;
  }
  // Without query_start_loc, row i is sequence i at seq_len - 1 (an empty one at -1).
  HostProblem one = zero_problem(tiny({5, 0, 2}));
  const auto r1 = ref::query_rows(one.params);
  ASSERT_EQ(r1.size(), 3u);
  EXPECT_EQ(r1[0].seq, 0);
  EXPECT_EQ(r1[0].pos, 4);
  EXPECT_EQ(r1[1].pos, -1);
  EXPECT_EQ(r1[2].pos, 1);
}

TEST(ReferenceVariants, MultiTokenRowEqualsTruncatedOneTokenProblem) {
  // Row j of sequence i sits at p and attends t <= p: exactly a one-token problem over the
  // same caches and block table whose seq_len is p + 1 (window, soft-cap, ALiBi, sparsity
  // all take p, which is the same in both).
  PAGEDATTN_TEST_RNG(rng);
  int compared = 0;
  for (int rep = 0; rep < 12; ++rep) {
    ProblemConfig c = variant_config(rng);
    c.q_lens.clear();
    for (int i = 0; i < c.num_seqs; ++i) c.q_lens.push_back(static_cast<int>(rng.randint(1, 6)));
    HostProblem pb = build_problem(c, rng);
    SCOPED_TRACE("rep " + std::to_string(rep) + ": " + describe(pb.cfg));
    const auto out = ref::attention(pb.params);
    const auto l = ref::lse(pb.params);
    const int H = c.num_heads, D = c.head_size;
    const auto* qsl = static_cast<const std::int32_t*>(pb.query_start_loc.view.data);
    for (int i = 0; i < pb.cfg.num_seqs; ++i)
      for (int r = qsl[i]; r < qsl[i + 1]; ++r) {
        const int p = pb.seq_len(i) - pb.q_len(i) + (r - qsl[i]);
        std::int32_t len1 = p + 1;
        PagedAttentionParams one = pb.params;
        one.query_start_loc = TensorView{};
        one.lse = TensorView{};
        one.query = TensorView::strided(static_cast<std::uint8_t*>(pb.query.view.data) +
                                            r * pb.query.view.strides[0] * dtype_size(c.dtype),
                                        c.dtype, {1, H, D}, {pb.query.view.strides[0], D, 1});
        one.out = TensorView::contiguous(nullptr, c.dtype, {1, H, D});
        one.seq_lens = TensorView::contiguous(&len1, DType::kInt32, {1});
        one.block_tables = TensorView::strided(static_cast<std::int32_t*>(pb.block_tables.view.data) +
                                                   i * pb.block_tables.view.strides[0],
                                               DType::kInt32, {1, pb.max_blocks_per_seq}, {pb.block_tables.view.strides[0], 1});
        one.max_seq_len = len1;
        const auto o1 = ref::attention(one);
        const auto l1 = ref::lse(one);
        const std::vector<double> row(out.begin() + std::ptrdiff_t(r) * H * D, out.begin() + std::ptrdiff_t(r + 1) * H * D);
        const std::vector<double> lrow(l.begin() + std::ptrdiff_t(r) * H, l.begin() + std::ptrdiff_t(r + 1) * H);
        expect_close(row, o1, kF64Rtol, kF64Atol, "seq " + std::to_string(i) + " row " + std::to_string(r));
        for (int h = 0; h < H; ++h)
          if (l1[h] == -kInf)
            EXPECT_EQ(lrow[h], -kInf);
          else
            EXPECT_NEAR(lrow[h], l1[h], kF64Atol + kF64Rtol * std::fabs(l1[h]));
        ++compared;
      }
  }
  EXPECT_GT(compared, 12);
}

TEST(ReferenceVariants, WindowHandCases) {
  // Keys zero: every attended token weighs the same, so out = mean of v_t = t over the
  // window [p - W, p]; window_left 0 keeps the token itself; lse = ln(window length).
  for (int W : {0, 4, 19, 50}) {
    SCOPED_TRACE("window_left " + std::to_string(W));
    ProblemConfig c = tiny({20});
    c.q_lens = {3};  // rows at p = 17, 18, 19
    c.window_left = W;
    HostProblem pb = zero_problem(c);
    for (int t = 0; t < 20; ++t) set_kv(pb, 0, t, 0, 0, 0.0, t);
    const auto out = ref::attention(pb.params);
    const auto l = ref::lse(pb.params);
    for (int j = 0; j < 3; ++j) {
      const int p = 17 + j, lo = std::max(0, p - W);
      EXPECT_NEAR(out_at(out, pb, j, 0, 0), 0.5 * (lo + p), 1e-13) << "row " << j;
      EXPECT_NEAR(lse_at(l, pb, j, 0), std::log(double(p - lo + 1)), 1e-14) << "row " << j;
      const auto s = ref::logits(pb.params, j, 0);
      for (int t = 0; t < 20; ++t) EXPECT_EQ(std::isinf(s[t]), t < lo || t > p) << "row " << j << " t " << t;
    }
  }
}

TEST(ReferenceVariants, WindowEqualsMaskingLogitsByHand) {
  // With a window, every logit equals the windowless one, except the tokens before p - W,
  // which become -inf; the rows never read those tokens' blocks (poisoned: output finite).
  PAGEDATTN_TEST_RNG(rng);
  for (int rep = 0; rep < 8; ++rep) {
    ProblemConfig c = variant_config(rng);
    c.window_left = -1;
    c.poison_masked = false;
    c.blocksparse = {};
    HostProblem full = build_problem(c, rng);
    HostProblem win = full;
    const int W = static_cast<int>(rng.randint(0, 25));
    win.params.window_left = W;
    SCOPED_TRACE("rep " + std::to_string(rep) + " W " + std::to_string(W) + ": " + describe(full.cfg));
    const auto rows = ref::query_rows(full.params);
    for (int r = 0; r < full.num_rows; ++r)
      for (int h = 0; h < c.num_heads; ++h) {
        const auto a = ref::logits(full.params, r, h);
        const auto b = ref::logits(win.params, r, h);
        ASSERT_EQ(a.size(), b.size());
        for (std::size_t t = 0; t < a.size(); ++t) {
          if (std::int64_t(t) < rows[r].pos - W)
            EXPECT_EQ(b[t], -kInf) << r << " " << h << " " << t;
          else
            EXPECT_EQ(b[t], a[t]) << r << " " << h << " " << t;
        }
      }
  }
}

TEST(ReferenceVariants, SoftCapClosedForms) {
  // One token: the softmax weight is 1 whatever the cap; the logit is cap * tanh(s / cap).
  {
    ProblemConfig c = tiny({1});
    c.logits_soft_cap = 2.0f;
    HostProblem pb = zero_problem(c);
    set_q(pb, 0, 0, 0, 3.0);
    for (int d = 0; d < 32; ++d) set_kv(pb, 0, 0, 0, d, d == 0 ? 1.0 : 0.0, 0.5 * d);
    EXPECT_EQ(ref::logits(pb.params, 0, 0)[0], 2.0 * std::tanh(1.5));
    const auto out = ref::attention(pb.params);
    for (int d = 0; d < 32; ++d) EXPECT_EQ(out_at(out, pb, 0, 0, d), 0.5 * d);
    EXPECT_NEAR(ref::lse(pb.params)[0], 2.0 * std::tanh(1.5), 1e-15);
  }
  // Two tokens: s = (cap tanh(3 / cap), 0); v0 = e0, v1 = 2 e1.
  for (float cap : {0.5f, 2.0f, 100.0f}) {
    SCOPED_TRACE("cap " + std::to_string(cap));
    ProblemConfig c = tiny({2});
    c.logits_soft_cap = cap;
    HostProblem pb = zero_problem(c);
    set_q(pb, 0, 0, 0, 3.0);
    set_kv(pb, 0, 0, 0, 0, 1.0, 1.0);
    set_kv(pb, 0, 1, 0, 1, 0.0, 2.0);
    const double s0 = double(cap) * std::tanh(3.0 / double(cap));
    const auto s = ref::logits(pb.params, 0, 0);
    EXPECT_NEAR(s[0], s0, 1e-15 * std::fabs(s0));
    EXPECT_EQ(s[1], 0.0);
    const double w0 = std::exp(s0);
    const auto out = ref::attention(pb.params);
    EXPECT_NEAR(out_at(out, pb, 0, 0, 0), w0 / (w0 + 1.0), 1e-15);
    EXPECT_NEAR(out_at(out, pb, 0, 0, 1), 2.0 / (w0 + 1.0), 1e-15);
    EXPECT_NEAR(ref::lse(pb.params)[0], std::log(w0 + 1.0), 1e-14);
  }
  // The cap applies before ALiBi: with cap 1 and slope 10 the biased logits still reach -20.
  {
    ProblemConfig c = tiny({3});
    c.logits_soft_cap = 1.0f;
    c.alibi = true;
    HostProblem pb = zero_problem(c);
    static_cast<float*>(pb.alibi_slopes.view.data)[0] = 10.0f;
    set_q(pb, 0, 0, 0, 1.0);
    set_kv(pb, 0, 0, 0, 0, 5.0, 0.0);  // q.k = 5 at t = 0
    const auto s = ref::logits(pb.params, 0, 0);
    EXPECT_NEAR(s[0], std::tanh(5.0) - 20.0, 1e-14);
    EXPECT_EQ(s[1], -10.0);
    EXPECT_EQ(s[2], 0.0);
  }
}

TEST(ReferenceVariants, AlibiUsesTokenMinusRowPosition) {
  // L = 4, two query rows at p = 2 and 3, keys zero, slope 0.5: logits 0.5 * (t - p).
  ProblemConfig c = tiny({4});
  c.q_lens = {2};
  c.alibi = true;
  HostProblem pb = zero_problem(c);
  static_cast<float*>(pb.alibi_slopes.view.data)[0] = 0.5f;
  for (int t = 0; t < 4; ++t) set_kv(pb, 0, t, 0, 0, 0.0, 10.0 * (t + 1));
  const auto s0 = ref::logits(pb.params, 0, 0);
  const auto s1 = ref::logits(pb.params, 1, 0);
  const std::vector<double> e0 = {-1.0, -0.5, 0.0, -kInf}, e1 = {-1.5, -1.0, -0.5, 0.0};
  EXPECT_EQ(s0, e0);
  EXPECT_EQ(s1, e1);
  const auto out = ref::attention(pb.params);
  const auto l = ref::lse(pb.params);
  for (int j = 0; j < 2; ++j) {
    const auto& e = j == 0 ? e0 : e1;
    double num = 0.0, den = 0.0;
    for (int t = 0; t < 4; ++t) num += std::exp(e[t]) * 10.0 * (t + 1), den += std::exp(e[t]);
    EXPECT_NEAR(out_at(out, pb, j, 0, 0), num / den, 1e-13) << j;
    EXPECT_NEAR(lse_at(l, pb, j, 0), std::log(den), 1e-14) << j;
  }
}

TEST(ReferenceVariants, LseIsLogSumExpOfTheLogits) {
  PAGEDATTN_TEST_RNG(rng);
  int empty = 0, nonempty = 0;
  for (int rep = 0; rep < 12; ++rep) {
    ProblemConfig c = variant_config(rng);
    if (rep % 3 == 0) {
      // Sequence 0 (3 tokens, query block 0) has every block masked: no local blocks, and
      // block 0 is not vertical ((0 + 1) % 4 != 0).
      c.blocksparse = {0, 4, c.block_size, 0};
      c.seq_lens = {3, static_cast<int>(rng.randint(0, 80)), static_cast<int>(rng.randint(0, 80))};
      if (!c.q_lens.empty()) c.q_lens[0] = 2;
    }
    HostProblem pb = build_problem(c, rng);
    SCOPED_TRACE("rep " + std::to_string(rep) + ": " + describe(pb.cfg));
    const auto l = ref::lse(pb.params);
    const auto out = ref::attention(pb.params);
    for (int r = 0; r < pb.num_rows; ++r)
      for (int h = 0; h < c.num_heads; ++h) {
        const auto s = ref::logits(pb.params, r, h);
        double m = -kInf;
        for (double v : s) m = std::max(m, v);
        if (m == -kInf) {  // nothing attended: -inf and zeros
          ++empty;
          EXPECT_EQ(lse_at(l, pb, r, h), -kInf);
          for (int d = 0; d < c.head_size; ++d) EXPECT_EQ(out_at(out, pb, r, h, d), 0.0);
          continue;
        }
        ++nonempty;
        double sum = 0.0;
        for (double v : s) sum += std::exp(v - m);  // exp(-inf) = 0 for masked tokens
        const double e = m + std::log(sum);
        EXPECT_NEAR(lse_at(l, pb, r, h), e, kF64Atol + kF64Rtol * std::fabs(e)) << r << " " << h;
      }
  }
  EXPECT_GT(nonempty, 0);
  EXPECT_GT(empty, 0);
}

TEST(ReferenceVariants, EmptyRowsGiveZerosAndMinusInf) {
  // seq_len 0 (the only way a one-token row is empty without sparsity) and a row whose every
  // block is masked by sparsity.
  HostProblem pb = zero_problem(tiny({0, 3}));
  for (int t = 0; t < 3; ++t) set_kv(pb, 1, t, 0, 0, 0.0, 2.0);
  const auto l = ref::lse(pb.params);
  EXPECT_EQ(lse_at(l, pb, 0, 0), -kInf);
  EXPECT_NEAR(lse_at(l, pb, 1, 0), std::log(3.0), 1e-15);
  ProblemConfig c = tiny({24});
  c.blocksparse = {0, 4, 8, 0};
  c.q_lens = {2};
  HostProblem sp = zero_problem(c);
  const auto o = ref::attention(sp.params);
  for (double v : o) EXPECT_EQ(v, 0.0);
  for (double v : ref::lse(sp.params)) EXPECT_EQ(v, -kInf);
}

TEST(ReferenceMerge, HandCases) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int D = 2;
  //                      state 0      1          2           3          4            5
  const std::vector<double> la = {-kInf, std::log(2.0), -kInf, std::log(2.0), 1000.0, nan};
  const std::vector<double> lb = {0.7, -kInf, -kInf, std::log(6.0), 1000.0 + std::log(3.0), 0.0};
  const std::vector<double> oa = {nan, nan, 3.0, -1.0, nan, nan, 1.0, 0.0, 4.0, 4.0, 1.0, 1.0};
  const std::vector<double> ob = {1.0, 2.0, nan, nan, nan, nan, 0.0, 1.0, 0.0, 8.0, 1.0, 1.0};
  const auto m = ref::merge_states(oa, la, ob, lb, D);
  ASSERT_EQ(m.out.size(), 12u);
  ASSERT_EQ(m.lse.size(), 6u);
  // a -inf state contributes nothing, whatever its out holds
  EXPECT_EQ(m.out[0], 1.0);
  EXPECT_EQ(m.out[1], 2.0);
  EXPECT_EQ(m.lse[0], 0.7);
  EXPECT_EQ(m.out[2], 3.0);
  EXPECT_EQ(m.out[3], -1.0);
  EXPECT_EQ(m.lse[1], std::log(2.0));
  // two -inf: zeros and -inf
  EXPECT_EQ(m.out[4], 0.0);
  EXPECT_EQ(m.out[5], 0.0);
  EXPECT_EQ(m.lse[2], -kInf);
  // weights 2 : 6
  EXPECT_NEAR(m.out[6], 0.25, 1e-15);
  EXPECT_NEAR(m.out[7], 0.75, 1e-15);
  EXPECT_NEAR(m.lse[3], std::log(8.0), 1e-15);
  // large lse (exp would overflow without the max): weights 1 : 3
  EXPECT_NEAR(m.out[8], 1.0, 1e-13);
  EXPECT_NEAR(m.out[9], 7.0, 1e-13);
  EXPECT_NEAR(m.lse[4], 1000.0 + std::log(4.0), 1e-12);
  // NaN in an lse reaches the merged row
  EXPECT_TRUE(std::isnan(m.out[10]));
  EXPECT_TRUE(std::isnan(m.out[11]));
  EXPECT_TRUE(std::isnan(m.lse[5]));
  // symmetric
  const auto r = ref::merge_states(ob, lb, oa, la, D);
  for (std::size_t k = 0; k < 10; ++k) EXPECT_NEAR(r.out[k], m.out[k], 1e-13) << k;
  for (std::size_t k = 0; k < 5; ++k) EXPECT_EQ(r.lse[k], m.lse[k]) << k;
  // sizes that disagree are refused
  test::expect_error([&] { ref::merge_states(oa, la, ob, {0.0}, D); }, ErrorCode::kInvalidArgument, "merge_states");
  test::expect_error([&] { ref::merge_states(oa, la, ob, lb, 3); }, ErrorCode::kInvalidArgument, "merge_states");
}

TEST(ReferenceMerge, DisjointSplitOfTheTokensMergesToAttentionOverAll) {
  // Sequence i with L tokens, split at a = L - 1 - W: the prefix [0, a) is the same problem
  // with seq_len a (its logits do not depend on the query's position without ALiBi and
  // sparsity), the suffix [a, L) is the full problem with window_left W. Merging the two
  // states gives attention and lse over all tokens; an empty prefix (a <= 0) merges as -inf.
  PAGEDATTN_TEST_RNG(rng);
  int empty_prefix = 0;
  for (int rep = 0; rep < 10; ++rep) {
    ProblemConfig c = variant_config(rng);
    c.q_lens.clear();
    c.alibi = false;
    c.blocksparse = {};
    c.window_left = -1;
    c.poison_masked = false;
    c.seq_lens = {1, static_cast<int>(rng.randint(1, 120)), static_cast<int>(rng.randint(1, 120))};
    HostProblem pb = build_problem(c, rng);
    const int W = static_cast<int>(rng.randint(0, 40));
    SCOPED_TRACE("rep " + std::to_string(rep) + " W " + std::to_string(W) + ": " + describe(pb.cfg));
    PagedAttentionParams suffix = pb.params;
    suffix.window_left = W;
    std::vector<std::int32_t> prefix_lens(3);
    for (int i = 0; i < 3; ++i) {
      prefix_lens[i] = std::max(pb.seq_len(i) - 1 - W, 0);
      empty_prefix += prefix_lens[i] == 0;
    }
    PagedAttentionParams prefix = pb.params;
    prefix.seq_lens = TensorView::contiguous(prefix_lens.data(), DType::kInt32, {3});
    const auto m = ref::merge_states(ref::attention(prefix), ref::lse(prefix), ref::attention(suffix),
                                     ref::lse(suffix), c.head_size);
    expect_close(m.out, ref::attention(pb.params), kF64Rtol, kF64Atol, "out");
    expect_close(m.lse, ref::lse(pb.params), kF64Rtol, kF64Atol, "lse");
  }
  EXPECT_GT(empty_prefix, 0);  // the 1-token sequence always has one
}

TEST(ReferenceMerge, FoldingV2PartitionsMergesToAttention) {
  // Every V2 partition is a state over a disjoint token range (lse_j = m_j + ln l_j, -inf
  // when nothing is attended); folding them with merge_states gives attention and lse.
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_size = 32;
  c.block_size = 16;
  c.seq_lens = {1, 63, 64, 65, static_cast<int>(rng.randint(100, 700))};
  c.alibi = true;
  c.blocksparse = {1, 3, 32, 1};  // some partitions fully masked
  HostProblem pb = build_problem(c, rng);
  const int P = 64, H = 2, D = 32, S = 5;
  const auto parts = ref::attention_partitions(pb.params, P);
  std::vector<double> acc_out(std::size_t(S) * H * D), acc_lse(std::size_t(S) * H);
  for (int j = 0; j < parts.num_partitions; ++j) {
    std::vector<double> o(std::size_t(S) * H * D), l(std::size_t(S) * H);
    for (int i = 0; i < S; ++i)
      for (int h = 0; h < H; ++h) {
        const std::size_t row = (std::size_t(i) * H + h) * parts.num_partitions + j, k = std::size_t(i) * H + h;
        const bool live = parts.valid[row] && parts.exp_sums[row] > 0.0;
        l[k] = live ? parts.max_logits[row] + std::log(parts.exp_sums[row]) : -kInf;
        for (int d = 0; d < D; ++d) o[k * D + d] = parts.out[row * D + d];
      }
    if (j == 0) {
      acc_out = o;
      acc_lse = l;
    } else {
      auto m = ref::merge_states(acc_out, acc_lse, o, l, D);
      acc_out = std::move(m.out);
      acc_lse = std::move(m.lse);
    }
  }
  expect_close(acc_out, ref::attention(pb.params), kF64Rtol, kF64Atol, "out");
  expect_close(acc_lse, ref::lse(pb.params), kF64Rtol, kF64Atol, "lse");
}

TEST(ReferenceVariants, PerHeadScalesEqualTheScalarScaleOfEachKvHead) {
  PAGEDATTN_TEST_RNG(rng);
  for (CacheDType f : {CacheDType::kFp8E4M3, CacheDType::kFp8E5M2}) {
    ProblemConfig c = variant_config(rng);
    c.kv_cache_dtype = f;
    c.per_head_scales = true;
    c.num_kv_heads = 2;
    HostProblem pb = build_problem(c, rng);
    SCOPED_TRACE(describe(pb.cfg));
    ASSERT_TRUE(pb.params.k_scales.defined());
    const auto out = ref::attention(pb.params);
    const int H = c.num_heads, D = c.head_size, group = H / 2;
    for (int g = 0; g < 2; ++g) {
      PagedAttentionParams s = pb.params;
      s.k_scales = TensorView{};
      s.v_scales = TensorView{};
      s.k_scale = static_cast<const float*>(pb.k_scales.view.data)[g];
      s.v_scale = static_cast<const float*>(pb.v_scales.view.data)[g];
      const auto o = ref::attention(s);
      for (int r = 0; r < pb.num_rows; ++r)
        for (int h = g * group; h < (g + 1) * group; ++h)
          for (int d = 0; d < D; ++d)
            ASSERT_EQ(out_at(out, pb, r, h, d), out_at(o, pb, r, h, d)) << g << " " << r << " " << h << " " << d;
    }
  }
}

TEST(ReferenceVariants, PerHeadScalesEqualScalingTheCacheByHand) {
  // Power-of-two scales: decode(byte) * scale is exact in float32, so a float32 cache that
  // holds the scaled values by hand must give bitwise the same result.
  PAGEDATTN_TEST_RNG(rng);
  for (CacheDType f : {CacheDType::kFp8E4M3, CacheDType::kFp8E5M2}) {
    ProblemConfig c = variant_config(rng);
    c.dtype = DType::kFloat32;
    c.kv_cache_dtype = f;
    c.per_head_scales = true;
    c.poison_masked = false;
    c.cache_views = false;
    c.seq_lens = {static_cast<int>(rng.randint(1, 70)), static_cast<int>(rng.randint(1, 70)), 40};
    HostProblem q8 = build_problem(c, rng);
    SCOPED_TRACE(describe(q8.cfg));
    for (int g = 0; g < c.num_kv_heads; ++g) {
      static_cast<float*>(q8.k_scales.view.data)[g] = std::ldexp(1.0f, static_cast<int>(rng.randint(-2, 2)));
      static_cast<float*>(q8.v_scales.view.data)[g] = std::ldexp(1.0f, static_cast<int>(rng.randint(-2, 2)));
    }
    ProblemConfig fc = q8.cfg;
    fc.kv_cache_dtype = CacheDType::kAuto;
    fc.per_head_scales = false;
    fc.q_lens = c.q_lens;
    HostProblem f32 = build_problem(fc, rng);
    ASSERT_EQ(f32.num_blocks, q8.num_blocks);
    ASSERT_EQ(f32.max_blocks_per_seq, q8.max_blocks_per_seq);
    f32.query = q8.query;
    f32.alibi_slopes = q8.alibi_slopes;
    f32.block_tables = q8.block_tables;
    f32.query_start_loc = q8.query_start_loc;
    f32.rebind();
    const auto* k8 = static_cast<const std::uint8_t*>(q8.key_cache.view.data);
    const auto* v8 = static_cast<const std::uint8_t*>(q8.value_cache.view.data);
    for (std::int64_t blk = 0; blk < q8.num_blocks; ++blk)
      for (int g = 0; g < c.num_kv_heads; ++g) {
        const float ks = static_cast<const float*>(q8.k_scales.view.data)[g];
        const float vs = static_cast<const float*>(q8.v_scales.view.data)[g];
        for (int d = 0; d < c.head_size; ++d)
          for (int o = 0; o < c.block_size; ++o) {
            static_cast<float*>(f32.key_cache.view.data)[f32.key_offset(blk, g, d, o)] =
                fp8_to_float(k8[q8.key_offset(blk, g, d, o)], f) * ks;
            static_cast<float*>(f32.value_cache.view.data)[f32.value_offset(blk, g, d, o)] =
                fp8_to_float(v8[q8.value_offset(blk, g, d, o)], f) * vs;
          }
      }
    expect_identical(ref::attention(q8.params), ref::attention(f32.params), "out");
    expect_identical(ref::lse(q8.params), ref::lse(f32.params), "lse");
  }
}

TEST(ReferenceVariants, NanPropagates) {
  // Two sequences of 20 and 9 tokens with 3 and 2 query rows (positions 17..19 and 7..8),
  // 4 query heads over 2 kv heads. A NaN reaches exactly the (row, head) outputs whose
  // softmax or sum it enters; a NaN in a token no row attends is never read.
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_size = 32;
  c.block_size = 8;
  c.seq_lens = {20, 9};
  c.q_lens = {3, 2};
  c.alibi = rng.coin();
  c.logits_soft_cap = rng.coin() ? 4.0f : 0.0f;
  const HostProblem base = build_problem(c, rng);
  const int H = 4, D = 32;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // expect_nan(r, h, d): whether out[r, h, d] must be NaN (every other element must be finite).
  // Returns the lse of the problem.
  auto check = [&](const HostProblem& pb, const std::function<bool(int, int, int)>& expect_nan,
                   const std::string& what) {
    SCOPED_TRACE(what);
    const auto out = ref::attention(pb.params);
    int bad = 0;
    for (int r = 0; r < 5; ++r)
      for (int h = 0; h < H; ++h)
        for (int d = 0; d < D; ++d) {
          const double v = out_at(out, pb, r, h, d);
          const bool ok = expect_nan(r, h, d) ? std::isnan(v) : std::isfinite(v);
          if (!ok && ++bad <= 5) ADD_FAILURE() << "row " << r << " head " << h << " d " << d << ": " << v;
        }
    EXPECT_EQ(bad, 0);
    return ref::lse(pb.params);
  };
  {  // NaN in q row 1, head 2: all logits of that (row, head) are NaN
    HostProblem pb = base;
    set_q(pb, 1, 2, 5, nan);
    const auto l = check(pb, [](int r, int h, int) { return r == 1 && h == 2; }, "q");
    for (int r = 0; r < 5; ++r)
      for (int h = 0; h < H; ++h) EXPECT_EQ(std::isnan(lse_at(l, pb, r, h)), r == 1 && h == 2) << r << " " << h;
  }
  {  // NaN in key of sequence 0 token 18, kv head 1: rows at p = 18, 19 (rows 1, 2), heads 2, 3
    HostProblem pb = base;
    set_k(pb, 0, 18, 1, 3, nan);
    const auto l = check(pb, [](int r, int h, int) { return (r == 1 || r == 2) && h >= 2; }, "k");
    EXPECT_TRUE(std::isnan(lse_at(l, pb, 2, 3)));
    EXPECT_TRUE(std::isfinite(lse_at(l, pb, 0, 3)));  // row at p = 17 never reads token 18
    // window_left 0: the row at p = 19 attends only token 19
    pb.params.window_left = 0;
    check(pb, [](int r, int h, int) { return r == 1 && h >= 2; }, "k, window 0");
  }
  {  // NaN in value dim 7 of sequence 1 token 0, kv head 0: dim 7 of both rows of seq 1, heads 0, 1
    HostProblem pb = base;
    set_v(pb, 1, 0, 0, 7, nan);
    check(pb, [](int r, int h, int d) { return r >= 3 && h < 2 && d == 7; }, "v");
    pb.params.window_left = 7;  // rows at p = 7, 8: token 0 is in the first row's window only
    check(pb, [](int r, int h, int d) { return r == 3 && h < 2 && d == 7; }, "v, window 7");
  }
  {  // a NaN key in the one attended token of a window-0 row: the whole row is NaN
    HostProblem pb = base;
    pb.params.window_left = 0;
    set_k(pb, 1, 8, 0, 0, nan);
    check(pb, [](int r, int h, int) { return r == 4 && h < 2; }, "only token NaN");
  }
  {  // V2 partitions: a NaN query row is NaN after the reduce too (every partition's max is NaN)
    ProblemConfig one;
    one.num_heads = 2;
    one.num_kv_heads = 1;
    one.head_size = 32;
    one.seq_lens = {1100, 30};
    HostProblem pb = build_problem(one, rng);
    set_q(pb, 0, 1, 0, nan);
    const auto parts = ref::attention_partitions(pb.params);
    const auto red = ref::reduce_partitions(parts, static_cast<const std::int32_t*>(pb.seq_lens.view.data));
    const auto out = ref::attention(pb.params);
    for (int i = 0; i < 2; ++i)
      for (int h = 0; h < 2; ++h)
        for (int d = 0; d < 32; ++d) {
          const bool want = i == 0 && h == 1;
          EXPECT_EQ(std::isnan(out_at(red, pb, i, h, d)), want) << i << " " << h << " " << d;
          EXPECT_EQ(std::isnan(out_at(out, pb, i, h, d)), want) << i << " " << h << " " << d;
        }
  }
}

}  // namespace
}  // namespace pagedattn
