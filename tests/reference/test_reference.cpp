// The float64 reference (src/reference) against hand-computed cases, an independent naive
// formulation, and properties that must hold whatever the data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
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
  for (int i = 0; i < c.num_seqs; ++i)
    for (int e = 0; e < c.num_heads * c.head_size; ++e)
      test::store_value(pb.query.view.data, c.dtype, i * pb.query.view.strides[0] + e, 0);
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

}  // namespace
}  // namespace pagedattn
