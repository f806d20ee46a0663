// The CPU backend through the public API (V1, V2, auto) against the float64 reference, on
// fresh random problems whose unused cache slots, unreferenced blocks, outputs and V2
// workspaces are NaN-poisoned, so a result cannot depend on memory it should not read.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/check.h"
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

/// Largest |v| the cache can hold for this problem.
double vmax_of(const ProblemConfig& c) {
  return c.kv_range * (c.kv_cache_dtype == CacheDType::kAuto ? 1.0 : c.v_scale);
}

std::string describe(const ProblemConfig& c, Algo a) {
  return detail::cat(algo_name(a), " dtype=", dtype_name(c.dtype), " cache=", cache_dtype_name(c.kv_cache_dtype),
                     " bs=", c.block_size, " D=", c.head_size, " H=", c.num_heads, "/", c.num_kv_heads,
                     c.alibi ? " alibi" : "", c.blocksparse.enabled() ? " sparse" : "",
                     " tp_rank=", c.tp_rank);
}

/// Counts elements outside tolerance (NaN included), reporting the first few.
int compare(const std::vector<double>& got, const std::vector<double>& want, const Tol& tol, const std::string& what,
            int head_size) {
  EXPECT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double err = std::abs(got[i] - want[i]);
    if (!(err <= tol.of(want[i]))) {
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
}

void run_all(const HostProblem& pb) {
  for (Algo a : {Algo::kV1, Algo::kV2, Algo::kAuto}) run_and_check(pb, a);
}

constexpr DType kDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
constexpr CacheDType kCacheDTypes[] = {CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2};
constexpr int kHeadSizes[] = {32, 64, 80, 96, 112, 120, 128, 192, 256};

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
        c.head_size = kHeadSizes[k % 9];
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
    c.head_size = kHeadSizes[(k * 4 + 1) % 9];
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

// The backend carries two copies of its kernel (AVX2 + F16C, chosen at run time, and
// baseline x86-64; PAGEDATTN_CPU_KERNEL=generic forces the latter). They must agree bit for
// bit: same float32 operations in the same order. Skipped where there is no AVX2 + F16C copy
// to compare (both runs would take the generic one).
TEST(CpuAttention, KernelCopiesAgreeBitwise) {
#if defined(__x86_64__) || defined(__i386__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("f16c"))
    GTEST_SKIP() << "this CPU has no AVX2 + F16C: only the generic kernel copy runs here";
#else
  GTEST_SKIP() << "not an x86 CPU: only the generic kernel copy is built";
#endif
  // forces the generic copy while alive, and always lets go of it (even when a check throws)
  struct ForceGeneric {
    ForceGeneric() { ::setenv("PAGEDATTN_CPU_KERNEL", "generic", 1); }
    ~ForceGeneric() { ::unsetenv("PAGEDATTN_CPU_KERNEL"); }
  };
  PAGEDATTN_TEST_RNG(rng);
  int k = 0;
  for (DType t : kDTypes)
    for (CacheDType cd : kCacheDTypes)
      for (int bs : {8, 16, 32}) {
        ProblemConfig c;
        c.dtype = t;
        c.kv_cache_dtype = cd;
        c.block_size = bs;
        c.head_size = kHeadSizes[(k + k / 3) % 9];  // 120 with an fp8 cache included (k = 4)
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
        for (Algo a : {Algo::kV1, Algo::kV2}) {
          std::vector<double> got[2];
          for (int generic = 0; generic < 2; ++generic) {
            std::optional<ForceGeneric> force;
            if (generic) force.emplace();
            if (a == Algo::kV1) {
              paged_attention_v1(pb.params);
            } else {
              auto ws = pb.make_workspace();
              paged_attention_v2(pb.params, ws.views());
            }
            got[generic] = pb.out_values();
          }
          int diff = 0;
          for (std::size_t i = 0; i < got[0].size(); ++i) diff += !(got[0][i] == got[1][i]);
          EXPECT_EQ(diff, 0) << algo_name(a) << ": outputs of the avx2 and generic kernels differ";
        }
      }
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
