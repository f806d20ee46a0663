// GPU attention against the float64 reference: the whole dispatch matrix, V1/V2/auto,
// V2 partials, lengths around tile/partition edges, GQA/MQA, ALiBi, block-sparse, views,
// checked mode, determinism and CUDA-graph capture. Skips (counted) without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <tuple>

#include "core/validate.h"
#include "cuda/check_util.h"
#include "cuda/device_problem.h"
#include "reference/reference.h"

namespace pagedattn::test {
namespace {

/// Runs V1, V2 and auto on the device and checks each against the reference; also V2's
/// partials against the reference's partials.
void check_all_paths(const HostProblem& h) {
  SCOPED_TRACE(seed_message());
  const auto want = ref::attention(h.params);
  const ref::Partials parts = ref::attention_partitions(h.params);
  const Tol tol = tolerance(h.cfg.dtype, max_abs_logit(parts));
  const int H = h.cfg.num_heads, D = h.cfg.head_size;
  DeviceProblem d(h);

  paged_attention_v1(d.params);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(close(d.out_values(h), want, tol, H, D, "v1"));

  d.poison_out(h);
  DeviceWorkspace ws(h);
  paged_attention_v2(d.params, ws.views());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(close(d.out_values(h), want, tol, H, D, "v2"));

  // V2 partials (valid partitions only: the rest of the workspace is never read).
  HostProblem::Workspace back = ws.host;
  ws.exp_sums.to_host(back.exp_sums);
  ws.max_logits.to_host(back.max_logits);
  ws.tmp_out.to_host(back.tmp_out);
  const int P = static_cast<int>(back.exp_sums.view.shape[2]);
  int checked = 0, bad = 0;
  std::string first;
  for (int s = 0; s < h.cfg.num_seqs; ++s)
    for (int hh = 0; hh < H; ++hh)
      for (int j = 0; j < parts.num_partitions; ++j) {
        const std::size_t r = (std::size_t(s) * H + hh) * parts.num_partitions + j;
        if (!parts.valid[r]) continue;
        const std::size_t g = (std::size_t(s) * H + hh) * P + j;
        const double es = static_cast<const float*>(back.exp_sums.view.data)[g];
        const double ml = static_cast<const float*>(back.max_logits.view.data)[g];
        ++checked;
        bool ok = std::fabs(es - parts.exp_sums[r]) <= 1e-4 * std::fabs(parts.exp_sums[r]) + 1e-6;
        if (parts.exp_sums[r] > 0) ok = ok && std::fabs(ml - parts.max_logits[r]) <= 1e-4 + 1e-5 * std::fabs(parts.max_logits[r]);
        double worst = 0.0;  // largest output error of the partition (NaN: not finite)
        for (int dd = 0; dd < D; ++dd) {
          const double got = load_value(back.tmp_out.view.data, h.cfg.dtype, std::int64_t(g) * D + dd);
          const double w = parts.out[r * D + dd];
          const double err = std::isfinite(got) ? std::fabs(got - w) : NAN;
          worst = std::isnan(err) || std::isnan(worst) ? NAN : std::max(worst, err);
          ok = ok && std::isfinite(got) && err <= tol.atol + tol.rtol * std::fabs(w);
        }
        if (!ok && bad++ == 0) {
          std::ostringstream os;
          os << "seq " << s << " head " << hh << " partition " << j << ": exp_sum " << es << " vs " << parts.exp_sums[r]
             << ", max_logit " << ml << " vs " << parts.max_logits[r] << ", largest output error " << worst << " (atol "
             << tol.atol << " rtol " << tol.rtol << ")";
          first = os.str();
        }
      }
  EXPECT_EQ(bad, 0) << "V2 partials: " << bad << " of " << checked << " partitions off; first: " << first;

  d.poison_out(h);
  const std::size_t bytes = paged_attention_workspace_size(d.params);
  DevicePtr auto_ws = bytes ? device_alloc(bytes) : nullptr;
  paged_attention(d.params, auto_ws.get(), bytes);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(close(d.out_values(h), want, tol, H, D, "auto"));

  // auto with the planner's length hint (a mixed batch may plan finer splits) and in
  // batch-invariant mode: same workspace size, same results
  const auto* lens = static_cast<const std::int32_t*>(h.params.seq_lens.data);
  long long total = 0;
  for (int s = 0; s < h.cfg.num_seqs; ++s) total += lens[s];
  for (int mode = 0; mode < 2; ++mode) {
    PagedAttentionParams q = d.params;
    if (mode == 0) q.total_tokens = total;
    else q.batch_invariant = true;
    const char* what = mode == 0 ? "auto with total_tokens" : "auto batch-invariant";
    EXPECT_EQ(paged_attention_workspace_size(q), bytes) << what;
    d.poison_out(h);
    paged_attention(q, auto_ws.get(), bytes);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_TRUE(close(d.out_values(h), want, tol, H, D, what));
  }

  // Every kernel of the registry the instance has, forced (the auto rule above picks one of
  // them; each must be right on its own): V1 and auto.
  for (const std::string& name : kernels_for(h)) {
    SCOPED_TRACE("forced kernel " + name);
    detail::cuda::ScopedKernel force(name);
    d.poison_out(h);
    paged_attention_v1(d.params);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(detail::cuda::last_kernel(), name);
    EXPECT_TRUE(close(d.out_values(h), want, tol, H, D, "v1, forced kernel"));
    const std::size_t fbytes = paged_attention_workspace_size(d.params);
    DevicePtr fws = fbytes ? device_alloc(fbytes) : nullptr;
    d.poison_out(h);
    paged_attention(d.params, fws.get(), fbytes);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(detail::cuda::last_kernel(), name);
    EXPECT_TRUE(close(d.out_values(h), want, tol, H, D, "auto, forced kernel"));
  }
}


// ---------------------------------------------------------------------------------------
// Every combination of SPEC §4: dtype x cache dtype x block size x head size x sparse.
// (Each test runs V1, V2 and auto.) GQA group, lengths, views, ALiBi drawn per test.
// ---------------------------------------------------------------------------------------
using MatrixParam = std::tuple<DType, CacheDType, int, int, bool>;

class DispatchMatrix : public ::testing::TestWithParam<MatrixParam> {};

TEST_P(DispatchMatrix, MatchesReference) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  const auto [dtype, cache, bs, D, sparse] = GetParam();
  ProblemConfig c;
  c.dtype = dtype;
  c.kv_cache_dtype = cache;
  c.block_size = bs;
  c.head_size = D;
  // up to 32 rows per kv head: every bulk-kernel shape (8, 16, 32 rows per CTA) gets full and
  // partial tiles
  const int groups[] = {1, 2, 3, 4, 6, 7, 8, 16, 24, 32};
  const int group = groups[rng.randint(0, 9)];
  c.num_kv_heads = static_cast<int>(rng.randint(1, 2));
  c.num_heads = c.num_kv_heads * group;
  c.num_seqs = static_cast<int>(rng.randint(2, 4));
  c.min_len = 0;  // empty sequences appear now and then
  c.max_len = static_cast<int>(rng.randint(1, 1400));
  c.q_row_pad = rng.coin() ? 3 * D : 0;
  c.cache_views = rng.coin();
  c.alibi = rng.coin(0.3);
  if (cache != CacheDType::kAuto) {
    c.k_scale = static_cast<float>(rng.uniform(0.25, 2.0));
    c.v_scale = static_cast<float>(rng.uniform(0.25, 2.0));
  }
  if (sparse) {
    c.blocksparse.vert_stride = static_cast<int>(rng.randint(2, 4));
    c.blocksparse.block_size = bs * static_cast<int>(rng.randint(1, 4));
    c.blocksparse.local_blocks = static_cast<int>(rng.randint(0, 3));
    c.blocksparse.head_sliding_step = static_cast<int>(rng.randint(-2, 2));
    c.tp_rank = static_cast<int>(rng.randint(0, 2));
    c.poison_masked = true;  // a kernel that reads a masked block gets NaN
  }
  SCOPED_TRACE(::testing::Message() << "heads " << c.num_heads << "/" << c.num_kv_heads << " seqs " << c.num_seqs
                                    << " max_len " << c.max_len << " alibi " << c.alibi << " views " << c.cache_views
                                    << " q_pad " << c.q_row_pad << " sparse(vs=" << c.blocksparse.vert_stride
                                    << ",B=" << c.blocksparse.block_size << ",local=" << c.blocksparse.local_blocks
                                    << ",step=" << c.blocksparse.head_sliding_step << ",tp=" << c.tp_rank << ")");
  check_all_paths(build_problem(c, rng));
}

INSTANTIATE_TEST_SUITE_P(
    All, DispatchMatrix,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2),
                       ::testing::ValuesIn(detail::kBlockSizes), ::testing::ValuesIn(detail::kHeadSizes),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<MatrixParam>& i) {
      std::ostringstream os;
      os << dtype_tag(std::get<0>(i.param)) << "_" << cache_tag(std::get<1>(i.param)) << "_bs" << std::get<2>(i.param)
         << "_d" << std::get<3>(i.param) << (std::get<4>(i.param) ? "_sparse" : "_dense");
      return os.str();
    });

// ---------------------------------------------------------------------------------------
// Lengths around tile (32), block and partition (512) edges, and long sequences.
// ---------------------------------------------------------------------------------------
class Lengths : public ::testing::TestWithParam<int> {};
TEST_P(Lengths, MatchesReference) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = rng.coin() ? DType::kFloat16 : DType::kBFloat16;
  c.head_size = 128;
  c.block_size = 16;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.num_seqs = 2;
  c.seq_lens = {GetParam(), static_cast<int>(rng.randint(0, GetParam()))};
  c.extra_blocks = 2;
  check_all_paths(build_problem(c, rng));
}
INSTANTIATE_TEST_SUITE_P(Edges, Lengths, ::testing::Values(1, 15, 16, 17, 511, 512, 513, 8191, 8193, 32768));

// ---------------------------------------------------------------------------------------
// GQA groups including MQA (all query heads on one kv head) and more than 8 per kv head.
// ---------------------------------------------------------------------------------------
class Groups : public ::testing::TestWithParam<std::tuple<int, int>> {};
TEST_P(Groups, MatchesReference) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  const auto [heads, kv] = GetParam();
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  c.head_size = 128;
  c.block_size = 16;
  c.num_heads = heads;
  c.num_kv_heads = kv;
  c.num_seqs = 3;
  c.max_len = 1100;
  c.alibi = true;
  check_all_paths(build_problem(c, rng));
}
INSTANTIATE_TEST_SUITE_P(Gqa, Groups,
                         ::testing::Values(std::tuple{8, 8}, std::tuple{8, 4}, std::tuple{16, 4}, std::tuple{32, 4},
                                           std::tuple{12, 2}, std::tuple{14, 2}, std::tuple{20, 2}, std::tuple{32, 2},
                                           std::tuple{32, 1}, std::tuple{64, 1}, std::tuple{48, 2}));

// A query whose rows are 5 elements apart beyond the heads (a slice of a wider tensor): its
// rows are not 16-byte aligned, so the bulk kernel loads it element by element instead of in
// 16-byte chunks (fp8 caches store it with permuted dims either way). Every kernel, forced.
TEST(CudaAttention, QueryRowsNotSixteenByteAligned) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  for (const CacheDType cache : {CacheDType::kAuto, CacheDType::kFp8E4M3})
    for (const int group : {4, 16}) {
      ProblemConfig c;
      c.dtype = DType::kBFloat16;
      c.kv_cache_dtype = cache;
      c.head_size = 120;
      c.block_size = 16;
      c.num_kv_heads = 2;
      c.num_heads = 2 * group;
      c.num_seqs = 3;
      c.max_len = 700;
      c.q_row_pad = 5;
      SCOPED_TRACE(::testing::Message() << "cache " << cache_tag(cache) << " group " << group);
      check_all_paths(build_problem(c, rng));
    }
}

// The auto path with its split count pinned (detail::cuda::force_splits, the benchmark's
// --splits): every count from one pass to 128-token partitions, more than the planner or SPEC's
// partitions would reserve, gives the reference's output, with a workspace sized under the pin.
TEST(CudaAttention, PinnedSplitsMatchReference) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  struct Unpin {
    ~Unpin() { detail::cuda::force_splits(0); }
  } unpin;
  for (const int group : {1, 8, 32}) {
    ProblemConfig c;
    c.dtype = rng.coin() ? DType::kFloat16 : DType::kBFloat16;
    c.kv_cache_dtype = rng.coin() ? CacheDType::kAuto : CacheDType::kFp8E4M3;
    c.head_size = 128;
    c.block_size = 16;
    c.num_kv_heads = 2;
    c.num_heads = 2 * group;
    c.num_seqs = 3;
    c.min_len = 0;  // short sequences: splits past their span
    c.max_len = static_cast<int>(rng.randint(1500, 3000));
    c.lse = true;
    const HostProblem h = build_problem(c, rng);
    SCOPED_TRACE(::testing::Message() << seed_message() << " group " << group << " dtype " << dtype_tag(c.dtype)
                                      << " cache " << cache_tag(c.kv_cache_dtype) << " max_len " << c.max_len);
    const auto want = ref::attention(h.params);
    const auto want_lse = ref::lse(h.params);
    const Tol tol = tolerance(h.cfg.dtype, max_abs_logit(ref::attention_partitions(h.params)));
    DeviceProblem d(h);
    std::size_t one_pass_bytes = 0;
    for (const int n : {1, 2, 3, 7, 24}) {
      SCOPED_TRACE(::testing::Message() << n << " splits pinned");
      detail::cuda::force_splits(n);
      EXPECT_EQ(detail::cuda::forced_splits(), n);
      const std::size_t bytes = paged_attention_workspace_size(d.params);
      if (n == 1) one_pass_bytes = bytes;
      if (n == 24) EXPECT_GT(bytes, one_pass_bytes) << "24 splits need partials";
      DevicePtr ws = bytes ? device_alloc(bytes) : nullptr;
      d.poison_out(h);
      detail::cuda::clear_last_kernel();
      paged_attention(d.params, ws.get(), bytes);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_TRUE(close(d.out_values(h), want, tol, c.num_heads, c.head_size, "auto, pinned splits"));
      EXPECT_TRUE(close_lse(d.lse_values(h), want_lse, "auto, pinned splits, lse"));
      // group 8 on 3 sequences x 2 kv heads (6 CTAs): the auto rule's kernel is hopper_bulk_r8_deep
      // wherever the build runs the bulk kernel, and hopper_bulk_r8 where the pinned splits leave
      // a CTA 128 tokens or fewer (24 splits of at most 3000): both run here on purpose
      if (group == 8 && detail::cuda::kernel_unsupported_reason("hopper_bulk_r8_deep", c.dtype, c.kv_cache_dtype, 128).empty())
        EXPECT_EQ(detail::cuda::last_kernel(), n == 24 ? "hopper_bulk_r8" : "hopper_bulk_r8_deep");
    }
  }
}

TEST(CudaAttention, AllEmptySequences) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  c.seq_lens = {0, 0, 0};
  c.num_seqs = 3;
  c.extra_blocks = 1;
  c.extra_table_cols = 2;
  check_all_paths(build_problem(c, rng));
}

// Mixed lengths in one batch exercise the auto planner's uneven splits.
TEST(CudaAttention, MixedLengthsBatch) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kBFloat16;
  c.kv_cache_dtype = CacheDType::kFp8E4M3;
  c.head_size = 128;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.num_seqs = 5;
  c.seq_lens = {3000, 1, 0, 700, 4100};
  check_all_paths(build_problem(c, rng));
}

// A larger problem (hundreds of CTAs, each streaming dozens of ring stages): every kernel,
// forced, under load. The Hopper kernel's ring once let a consumer warp pass a slot's barrier
// one phase early; small problems did not show it, this size of load did (on the H200).
TEST(CudaAttention, ManyStagesUnderLoad) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  for (CacheDType cache : {CacheDType::kAuto, CacheDType::kFp8E4M3}) {
    SCOPED_TRACE(cache_tag(cache));
    ProblemConfig c;
    c.dtype = DType::kFloat16;
    c.kv_cache_dtype = cache;
    c.head_size = 128;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.num_seqs = 24;
    c.min_len = 1500;
    c.max_len = 3000;
    check_all_paths(build_problem(c, rng));
  }
}

// ---------------------------------------------------------------------------------------
// Checked mode: bad data becomes an error naming the entry, and out stays untouched.
// ---------------------------------------------------------------------------------------
void expect_data_error(DeviceProblem& d, const HostProblem& h, const std::string& needle) {
  for (int path = 0; path < 2; ++path) {
    d.poison_out(h);
    test::expect_error(
        [&] {
          if (path == 0) {
            paged_attention_v1(d.params);
          } else {
            DeviceWorkspace ws(h);
            paged_attention_v2(d.params, ws.views());
          }
        },
        ErrorCode::kDataError, needle);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (double v : d.out_values(h)) ASSERT_TRUE(std::isnan(v)) << "out was written despite the error";
  }
}

TEST(CudaCheckedMode, CatchesBadSeqLenAndBlockIds) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  c.num_seqs = 4;
  c.seq_lens = {40, 70, 33, 90};
  HostProblem h = build_problem(c, rng);
  h.params.checked = true;
  {  // seq_len above max_seq_len
    HostProblem b = h;
    static_cast<std::int32_t*>(b.seq_lens.view.data)[2] = b.params.max_seq_len + 1;
    DeviceProblem d(b);
    expect_data_error(d, b, "seq_lens[2] = " + std::to_string(b.params.max_seq_len + 1));
  }
  {  // seq_len beyond what the block table holds
    HostProblem b = h;
    b.params.max_seq_len = 100000;
    static_cast<std::int32_t*>(b.seq_lens.view.data)[1] = b.max_blocks_per_seq * c.block_size + 1;
    DeviceProblem d(b);
    expect_data_error(d, b, "seq_lens[1]");
  }
  {  // negative seq_len
    HostProblem b = h;
    static_cast<std::int32_t*>(b.seq_lens.view.data)[0] = -5;
    DeviceProblem d(b);
    expect_data_error(d, b, "seq_lens[0] = -5");
  }
  {  // block id past num_blocks
    HostProblem b = h;
    b.table(3, 2) = static_cast<std::int32_t>(b.num_blocks);
    DeviceProblem d(b);
    expect_data_error(d, b, "block_tables[3][2] = " + std::to_string(b.num_blocks));
  }
  {  // negative block id
    HostProblem b = h;
    b.table(1, 0) = -1;
    DeviceProblem d(b);
    expect_data_error(d, b, "block_tables[1][0] = -1");
  }
  {  // the same problem, unmodified, passes checked mode
    DeviceProblem d(h);
    paged_attention_v1(d.params);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_TRUE(close(d.out_values(h), ref::attention(h.params), tolerance(c.dtype), c.num_heads, c.head_size, "v1"));
  }
}

TEST(CudaAttention, MisalignedCacheIsRejected) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  HostProblem h = build_problem(c, rng);
  DeviceProblem d(h);
  d.params.key_cache.data = static_cast<char*>(d.params.key_cache.data) + 2;
  test::expect_error([&] { paged_attention_v1(d.params); }, ErrorCode::kInvalidArgument, {"key_cache", "16-byte"});
}

// Run on a GPU this build has no code for (scripts: a build with only sm_80 SASS run on an
// sm_90 card, PAGEDATTN_EXPECT_NO_CODE=1): the first call fails with an error naming the
// device's capability, the built architectures and the option to rebuild, not a launch failure.
TEST(CudaAttention, NoCodeForThisGpuIsAClearError) {
  PAGEDATTN_REQUIRE_GPU();
  const char* expect = std::getenv("PAGEDATTN_EXPECT_NO_CODE");
  if (expect == nullptr || std::string(expect) != "1")
    GTEST_SKIP() << "meaningful only in a build without code for this GPU (set PAGEDATTN_EXPECT_NO_CODE=1 there)";
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  HostProblem h = build_problem(c, rng);
  DeviceProblem d(h);
  test::expect_error([&] { paged_attention_v1(d.params); }, ErrorCode::kUnsupported,
                     {"has no code for the GPU present", "compute capability", "built for CUDA architectures",
                      "-DCMAKE_CUDA_ARCHITECTURES="});
}

TEST(CudaAttention, AutoRejectsShortOrMisalignedWorkspace) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  c.num_heads = 8;
  c.num_kv_heads = 8;
  c.num_seqs = 1;
  c.seq_lens = {8000};  // one long sequence: the planner splits, so a workspace is needed
  HostProblem h = build_problem(c, rng);
  DeviceProblem d(h);
  const std::size_t bytes = paged_attention_workspace_size(d.params);
  ASSERT_GT(bytes, 0u);
  DevicePtr ws = device_alloc(bytes + 256);
  auto expect_rejected = [&](void* ptr, std::size_t n, const std::string& needle) {
    SCOPED_TRACE(::testing::Message() << "workspace " << ptr << " of " << n << " bytes");
    test::expect_error([&] { paged_attention(d.params, ptr, n); }, ErrorCode::kInvalidArgument, needle);
  };
  expect_rejected(ws.get(), bytes - 1, "workspace_bytes is " + std::to_string(bytes - 1));
  expect_rejected(nullptr, bytes, "workspace_bytes is");
  expect_rejected(static_cast<char*>(ws.get()) + 16, bytes, "256-byte aligned");
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (double v : d.out_values(h)) ASSERT_TRUE(std::isnan(v)) << "out was written despite the error";
}

// ---------------------------------------------------------------------------------------
// Determinism and CUDA graphs.
// ---------------------------------------------------------------------------------------
TEST(CudaAttention, BitwiseDeterministicAcrossRuns) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kBFloat16;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_size = 128;
  c.num_seqs = 2;
  c.seq_lens = {9000, 2500};
  c.checked = false;
  HostProblem h = build_problem(c, rng);
  DeviceProblem d(h);
  const std::size_t bytes = paged_attention_workspace_size(d.params);
  DevicePtr ws = bytes ? device_alloc(bytes) : nullptr;
  std::vector<std::vector<std::uint8_t>> runs;
  for (int r = 0; r < 3; ++r) {
    d.poison_out(h);
    paged_attention(d.params, ws.get(), bytes);
    HostTensor o = h.out;
    d.out.to_host(o);
    runs.push_back(o.storage);
  }
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
  // identical runs must also be right (a kernel that wrote nothing would leave equal NaNs)
  EXPECT_TRUE(close(d.out_values(h), ref::attention(h.params), tolerance(c.dtype), c.num_heads, c.head_size, "auto"));
}

// batch_invariant: a sequence's output bits do not depend on its batch-mates.
TEST(CudaAttention, BatchInvariantModeIgnoresBatchMates) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kBFloat16;
  c.kv_cache_dtype = CacheDType::kFp8E5M2;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_size = 128;
  c.num_seqs = 3;
  c.seq_lens = {3000, 9000, 700};
  c.checked = false;
  HostProblem h = build_problem(c, rng);
  auto run = [&](HostProblem& hp) {
    DeviceProblem d(hp);
    d.params.batch_invariant = true;
    const std::size_t bytes = paged_attention_workspace_size(d.params);
    DevicePtr ws = bytes ? device_alloc(bytes) : nullptr;
    paged_attention(d.params, ws.get(), bytes);
    HostTensor o = hp.out;
    d.out.to_host(o);
    return o;
  };
  const HostTensor full = run(h);
  // The same first sequence in a different batch: its mates emptied, max_seq_len its own.
  HostProblem alone = h;
  static_cast<std::int32_t*>(alone.seq_lens.view.data)[1] = 0;
  static_cast<std::int32_t*>(alone.seq_lens.view.data)[2] = 0;
  alone.params.max_seq_len = 3000;
  const HostTensor solo = run(alone);
  const std::size_t row_bytes = std::size_t(c.num_heads) * c.head_size * 2;
  EXPECT_EQ(std::memcmp(full.storage.data(), solo.storage.data(), row_bytes), 0)
      << "sequence 0 changed with its batch-mates in batch_invariant mode";
  std::vector<double> got(static_cast<std::size_t>(full.view.numel()));
  for (std::size_t i = 0; i < got.size(); ++i) got[i] = load_value(full.view.data, c.dtype, std::int64_t(i));
  EXPECT_TRUE(close(got, ref::attention(h.params), tolerance(c.dtype), c.num_heads, c.head_size, "batch-invariant"));
}

TEST(CudaAttention, GraphReplayEqualsEager) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_size = 128;
  c.num_seqs = 3;
  c.max_len = 3000;
  c.checked = false;  // checked mode synchronises, which capture forbids
  HostProblem h = build_problem(c, rng);
  DeviceProblem d(h);
  cudaStream_t stream;
  PAGEDATTN_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  d.params.stream = stream;
  const std::size_t bytes = paged_attention_workspace_size(d.params);
  DevicePtr ws = bytes ? device_alloc(bytes) : nullptr;
  DeviceWorkspace v2ws(h);

  paged_attention(d.params, ws.get(), bytes);
  PAGEDATTN_CUDA_OK(cudaStreamSynchronize(stream));
  HostTensor eager = h.out;
  d.out.to_host(eager);

  d.poison_out(h);
  cudaGraph_t graph;
  PAGEDATTN_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  paged_attention(d.params, ws.get(), bytes);
  paged_attention_v1(d.params);
  paged_attention_v2(d.params, v2ws.views());
  paged_attention(d.params, ws.get(), bytes);  // last writer: the auto path
  PAGEDATTN_CUDA_OK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  PAGEDATTN_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  PAGEDATTN_CUDA_OK(cudaGraphLaunch(exec, stream));
  PAGEDATTN_CUDA_OK(cudaStreamSynchronize(stream));
  HostTensor replay = h.out;
  d.out.to_host(replay);
  EXPECT_EQ(eager.storage, replay.storage);
  EXPECT_TRUE(close(d.out_values(h), ref::attention(h.params), tolerance(c.dtype), c.num_heads, c.head_size, "graph"));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace pagedattn::test
