// GPU variants (SPEC §3b) against the float64 reference: sliding window, logits soft-cap,
// multi-token queries, LSE, per-head fp8 scales, alone and together, on every kernel of the
// registry the instance has (forced) and on the auto rule's choice, with and without splits;
// NaN propagation; merge_attention_states; checked mode on query_start_loc. Skips (counted)
// without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>

#include "cuda/check_util.h"
#include "cuda/device_problem.h"
#include "reference/reference.h"

namespace pagedattn::test {
namespace {


enum Variant { kWindow, kSoftCap, kMultiToken, kLse, kHeadScales, kAll };
const char* variant_tag(int v) {
  static const char* names[] = {"window", "softcap", "multitoken", "lse", "headscales", "all"};
  return names[v];
}

/// Runs the auto path (planner's splits and batch-invariant 512-token splits) with the auto
/// rule's kernel and with every kernel the instance has, forced; checks out and lse.
void check_auto_paths(const HostProblem& h) {
  SCOPED_TRACE(seed_message());
  const auto want = ref::attention(h.params);
  const std::vector<double> want_lse = h.params.lse.defined() ? ref::lse(h.params) : std::vector<double>{};
  const Tol tol = tolerance(h.cfg.dtype);
  const int H = h.cfg.num_heads, D = h.cfg.head_size;
  DeviceProblem d(h);
  std::vector<std::string> kernels = kernels_for(h);
  kernels.insert(kernels.begin(), "");  // the auto rule
  // sequences may have no query token: with none at all, nothing is launched
  long long rows = h.cfg.q_lens.empty() ? h.cfg.num_seqs : 0;
  for (int n : h.cfg.q_lens) rows += n;
  for (const std::string& name : kernels) {
    detail::cuda::ScopedKernel force(name);
    for (int mode = 0; mode < 2; ++mode) {
      SCOPED_TRACE(::testing::Message() << "kernel " << (name.empty() ? "auto rule" : name)
                                        << (mode ? ", batch-invariant splits" : ", planner"));
      PagedAttentionParams q = d.params;
      q.batch_invariant = mode == 1;
      const std::size_t bytes = paged_attention_workspace_size(q);
      DevicePtr ws = bytes ? device_alloc(bytes) : nullptr;
      d.poison_out(h);
      detail::cuda::clear_last_kernel();
      paged_attention(q, ws.get(), bytes);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      if (!name.empty()) EXPECT_EQ(detail::cuda::last_kernel(), rows > 0 ? name : std::string());
      EXPECT_TRUE(close(d.out_values(h), want, tol, H, D, "auto"));
      if (!want_lse.empty()) EXPECT_TRUE(close_lse(d.lse_values(h), want_lse, "lse"));
    }
  }
}

using VariantParam = std::tuple<DType, CacheDType, int>;
class Variants : public ::testing::TestWithParam<VariantParam> {};

TEST_P(Variants, MatchReference) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  const auto [dtype, cache, variant] = GetParam();
  ProblemConfig c;
  c.dtype = dtype;
  c.kv_cache_dtype = cache;
  const int sizes[] = {64, 80, 128, 256};
  c.head_size = sizes[rng.randint(0, 3)];
  const int blocks[] = {8, 16, 32};
  c.block_size = blocks[rng.randint(0, 2)];
  c.num_kv_heads = static_cast<int>(rng.randint(1, 2));
  c.num_heads = c.num_kv_heads;  // the GQA group is looped over below
  c.num_seqs = static_cast<int>(rng.randint(2, 4));
  c.min_len = 0;
  c.max_len = static_cast<int>(rng.randint(1, 2000));
  c.alibi = rng.coin(0.3);
  c.cache_views = rng.coin();
  c.q_row_pad = rng.coin() ? 2 * c.head_size : 0;
  const bool all = variant == kAll;
  if (variant == kWindow || all) {
    c.window_left = static_cast<int>(rng.coin(0.2) ? rng.randint(0, 3) : rng.randint(0, 1200));
    c.poison_masked = true;  // blocks wholly outside every window are NaN: reading one fails the test
  }
  if (variant == kSoftCap || all) c.logits_soft_cap = static_cast<float>(rng.uniform(0.5, 60.0));
  if (variant == kMultiToken || all) {
    c.min_len = 1;
    c.q_lens.clear();
    for (int i = 0; i < c.num_seqs; ++i) c.q_lens.push_back(static_cast<int>(rng.coin(0.2) ? rng.randint(0, 1) : rng.randint(1, 9)));
  }
  if (variant == kLse || all) c.lse = true;
  if ((variant == kHeadScales || all) && cache != CacheDType::kAuto) c.per_head_scales = true;
  if (cache != CacheDType::kAuto && !c.per_head_scales) {
    c.k_scale = static_cast<float>(rng.uniform(0.25, 2.0));
    c.v_scale = static_cast<float>(rng.uniform(0.25, 2.0));
  }
  if (all && rng.coin(0.3)) {
    c.blocksparse.vert_stride = static_cast<int>(rng.randint(2, 4));
    c.blocksparse.block_size = c.block_size * static_cast<int>(rng.randint(1, 4));
    c.blocksparse.local_blocks = static_cast<int>(rng.randint(0, 3));
    c.blocksparse.head_sliding_step = static_cast<int>(rng.randint(-2, 2));
  }
  SCOPED_TRACE(::testing::Message() << "heads " << c.num_heads << "/" << c.num_kv_heads << " D " << c.head_size
                                    << " bs " << c.block_size << " seqs " << c.num_seqs << " max_len " << c.max_len
                                    << " window " << c.window_left << " cap " << c.logits_soft_cap << " q_lens "
                                    << c.q_lens.size() << " lse " << c.lse << " per-head " << c.per_head_scales
                                    << " alibi " << c.alibi << " sparse " << c.blocksparse.vert_stride);
  for (int group : {1, 2, 3, 4, 8}) {  // every group size class: one row, CUDA-core tiles, tensor-core rows
    ProblemConfig g = c;
    g.num_heads = c.num_kv_heads * group;
    SCOPED_TRACE(::testing::Message() << "group " << group);
    check_auto_paths(build_problem(g, rng));
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, Variants,
    ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2),
                       ::testing::Values(kWindow, kSoftCap, kMultiToken, kLse, kHeadScales, kAll)),
    [](const ::testing::TestParamInfo<VariantParam>& i) {
      std::ostringstream os;
      os << dtype_tag(std::get<0>(i.param)) << "_" << cache_tag(std::get<1>(i.param)) << "_"
         << variant_tag(std::get<2>(i.param));
      return os.str();
    });

// A long sequence with a short window: the planner sizes work from the window, and a spec-
// ulative-decoding batch (q_len 1..8 per sequence) over long caches.
TEST(CudaVariants, LongSequencesShortWindowAndSpeculativeBatch) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kBFloat16;
  c.kv_cache_dtype = CacheDType::kFp8E4M3;
  c.head_size = 128;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.seq_lens = {9000, 4100, 17};
  c.q_lens = {4, 8, 1};
  c.window_left = 1023;
  c.lse = true;
  c.poison_masked = true;
  check_auto_paths(build_problem(c, rng));
}

/// Rows whose reference is NaN must be NaN, the others close.
::testing::AssertionResult close_with_nan(const std::vector<double>& got, const std::vector<double>& want, Tol tol,
                                          const char* what) {
  int nan_rows = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      ++nan_rows;
      if (!std::isnan(got[i])) return ::testing::AssertionFailure() << what << ": element " << i << " = " << got[i] << ", want NaN";
    } else if (!(std::fabs(got[i] - want[i]) <= tol.atol + tol.rtol * std::fabs(want[i]))) {
      return ::testing::AssertionFailure() << what << ": element " << i << " = " << got[i] << ", want " << want[i];
    }
  }
  if (nan_rows == 0) return ::testing::AssertionFailure() << what << ": the reference has no NaN (test set-up)";
  return ::testing::AssertionSuccess();
}

// SPEC §3: a NaN in q or in an attended V reaches exactly the affected rows, on every kernel.
TEST(CudaVariants, NanReachesTheAffectedRowsOnly) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  for (CacheDType cache : {CacheDType::kAuto, CacheDType::kFp8E4M3}) {
    ProblemConfig c;
    c.dtype = DType::kFloat16;
    c.kv_cache_dtype = cache;
    c.head_size = 128;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.seq_lens = {700, 300, 40};
    c.lse = true;
    HostProblem h = build_problem(c, rng);
    for (int where = 0; where < 2; ++where) {
      HostProblem b = h;
      if (where == 0) {  // one query element of sequence 1, head 5
        store_value(b.query.view.data, c.dtype, 1 * b.query.view.strides[0] + 5 * c.head_size + 17,
                    std::numeric_limits<double>::quiet_NaN());
      } else {  // one value element of token 123 of sequence 0, kv head 1
        const std::int64_t pb = b.table(0, 123 / c.block_size);
        poison_elem(b.value_cache.view.data, b.cache_storage(), b.value_offset(pb, 1, 9, 123 % c.block_size));
      }
      SCOPED_TRACE(::testing::Message() << "NaN in " << (where == 0 ? "q" : "V") << ", cache " << cache_tag(cache));
      const auto want = ref::attention(b.params);
      DeviceProblem d(b);
      std::vector<std::string> kernels = kernels_for(b);
      kernels.insert(kernels.begin(), "");
      for (const std::string& name : kernels) {
        SCOPED_TRACE("kernel " + (name.empty() ? std::string("auto rule") : name));
        detail::cuda::ScopedKernel force(name);
        for (int split = 0; split < 2; ++split) {
          PagedAttentionParams q = d.params;
          q.batch_invariant = split == 1;  // 512-token splits: the NaN crosses the reduce
          const std::size_t bytes = paged_attention_workspace_size(q);
          DevicePtr ws = bytes ? device_alloc(bytes) : nullptr;
          d.poison_out(b);
          paged_attention(q, ws.get(), bytes);
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          EXPECT_TRUE(close_with_nan(d.out_values(b), want, tolerance(c.dtype), split ? "auto, split" : "auto"));
        }
      }
    }
  }
}

// merge_attention_states: attention over tokens [0, k) (the sequence cut to k tokens) merged
// with attention over [k, L) (the whole sequence through a window of L - 1 - k) equals
// attention over all L tokens (no ALiBi: its bias depends on the query position).
TEST(CudaVariants, MergeOfASplitEqualsTheWhole) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    ProblemConfig c;
    c.dtype = dtype;
    c.head_size = 128;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    const int L = static_cast<int>(rng.randint(2, 2500));
    const int k = static_cast<int>(rng.randint(1, L - 1));
    c.seq_lens = {L};
    c.lse = true;
    const HostProblem whole = build_problem(c, rng);
    HostProblem head_part = whole, tail_part = whole;
    static_cast<std::int32_t*>(head_part.seq_lens.view.data)[0] = k;
    tail_part.params.window_left = L - 1 - k;
    SCOPED_TRACE(::testing::Message() << dtype_tag(dtype) << " L " << L << " split at " << k);
    const auto want = ref::attention(whole.params);
    DeviceProblem da(head_part), db(tail_part);
    for (DeviceProblem* d : {&da, &db}) {
      const std::size_t bytes = paged_attention_workspace_size(d->params);
      DevicePtr ws = bytes ? device_alloc(bytes) : nullptr;
      paged_attention(d->params, ws.get(), bytes);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    DeviceTensor out = DeviceTensor::from(whole.out), lse = DeviceTensor::from(whole.lse);
    MergeStatesParams m{da.params.out, da.params.lse, db.params.out, db.params.lse, out.view, lse.view, nullptr};
    merge_attention_states(m);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    HostTensor o = whole.out;
    out.to_host(o);
    std::vector<double> got(static_cast<std::size_t>(c.num_heads) * c.head_size);
    for (std::size_t i = 0; i < got.size(); ++i) got[i] = load_value(o.view.data, dtype, std::int64_t(i));
    Tol tol = tolerance(dtype);  // the parts are rounded to T before the merge: two roundings
    tol.atol *= 2;
    tol.rtol *= 2;
    EXPECT_TRUE(close(got, want, tol, c.num_heads, c.head_size, "merged"));
    HostTensor l = whole.lse;
    lse.to_host(l);
    std::vector<double> got_lse(static_cast<std::size_t>(c.num_heads));
    for (std::size_t i = 0; i < got_lse.size(); ++i) got_lse[i] = static_cast<const float*>(l.view.data)[i];
    EXPECT_TRUE(close_lse(got_lse, ref::lse(whole.params), "merged lse"));
  }
}

// merge_attention_states on random states with -inf entries against the reference's merge.
TEST(CudaVariants, MergeStatesMatchesReference) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  const int rows = 37, heads = 6, D = 96;
  const double inf = std::numeric_limits<double>::infinity();
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    HostTensor oa = make_tensor(dtype, {rows, heads, D}), ob = make_tensor(dtype, {rows, heads, D});
    HostTensor la = make_tensor(DType::kFloat32, {rows, heads}), lb = make_tensor(DType::kFloat32, {rows, heads});
    std::vector<double> va(rows * heads * D), vb(va.size()), sa(rows * heads), sb(sa.size());
    for (std::size_t i = 0; i < va.size(); ++i) {
      store_value(oa.view.data, dtype, i, rng.uniform(-1, 1));
      store_value(ob.view.data, dtype, i, rng.uniform(-1, 1));
      va[i] = load_value(oa.view.data, dtype, i);
      vb[i] = load_value(ob.view.data, dtype, i);
    }
    for (std::size_t r = 0; r < sa.size(); ++r) {
      sa[r] = rng.coin(0.15) ? -inf : rng.uniform(-20, 20);
      sb[r] = rng.coin(0.15) ? -inf : rng.uniform(-20, 20);
      static_cast<float*>(la.view.data)[r] = static_cast<float>(sa[r]);
      static_cast<float*>(lb.view.data)[r] = static_cast<float>(sb[r]);
      sa[r] = static_cast<float>(sa[r]);
      sb[r] = static_cast<float>(sb[r]);
      if (std::isinf(sa[r]))  // an empty state's output may hold anything: poison it
        for (int d = 0; d < D; ++d) poison_elem(oa.view.data, dtype, std::int64_t(r) * D + d);
    }
    const ref::MergedStates want = ref::merge_states(va, sa, vb, sb, D);
    HostTensor out = make_tensor(dtype, {rows, heads, D}), lse = make_tensor(DType::kFloat32, {rows, heads});
    poison(out.base(), dtype, out.alloc_elems());
    DeviceTensor doa = DeviceTensor::from(oa), dob = DeviceTensor::from(ob), dla = DeviceTensor::from(la),
                 dlb = DeviceTensor::from(lb), dout = DeviceTensor::from(out), dlse = DeviceTensor::from(lse);
    MergeStatesParams m{doa.view, dla.view, dob.view, dlb.view, dout.view, dlse.view, nullptr};
    merge_attention_states(m);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    dout.to_host(out);
    dlse.to_host(lse);
    std::vector<double> got(va.size()), got_lse(sa.size());
    for (std::size_t i = 0; i < got.size(); ++i) got[i] = load_value(out.view.data, dtype, i);
    for (std::size_t i = 0; i < got_lse.size(); ++i) got_lse[i] = static_cast<const float*>(lse.view.data)[i];
    SCOPED_TRACE(dtype_tag(dtype));
    EXPECT_TRUE(close(got, want.out, tolerance(dtype), heads, D, "merge"));
    EXPECT_TRUE(close_lse(got_lse, want.lse, "merge lse"));
  }
}

// Checked mode names bad query_start_loc data; out stays untouched.
TEST(CudaVariants, CheckedModeCatchesBadQueryStartLoc) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  c.seq_lens = {40, 70, 33};
  c.q_lens = {2, 3, 1};
  HostProblem h = build_problem(c, rng);
  auto expect_bad = [&](HostProblem b, const std::string& needle) {
    DeviceProblem d(b);
    d.poison_out(b);
    const std::size_t bytes = paged_attention_workspace_size(d.params);
    DevicePtr ws = bytes ? device_alloc(bytes) : nullptr;
    test::expect_error([&] { paged_attention(d.params, ws.get(), bytes); }, ErrorCode::kDataError, needle);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (double v : d.out_values(b)) ASSERT_TRUE(std::isnan(v)) << "out was written despite the error";
  };
  auto qsl = [](HostProblem& b) { return static_cast<std::int32_t*>(b.query_start_loc.view.data); };
  {
    HostProblem b = h;
    qsl(b)[1] = 4;
    qsl(b)[2] = 3;  // decreasing
    expect_bad(b, "query_start_loc[2] = 3");
  }
  {
    HostProblem b = h;
    qsl(b)[3] = 5;  // last entry != rows (6)
    expect_bad(b, "query_start_loc[3] = 5");
  }
  {
    HostProblem b = h;
    static_cast<std::int32_t*>(b.seq_lens.view.data)[1] = 2;  // q_len 3 > seq_len 2
    expect_bad(b, "sequence 1 has q_len 3");
  }
  {
    HostProblem b = h;
    b.params.max_query_len = 2;  // sequence 1 has 3
    expect_bad(b, "max_query_len is 2");
  }
}

}  // namespace
}  // namespace pagedattn::test

namespace pagedattn::test {
namespace {

// The auto rule as a pure function (no GPU needed): which kernel each (rows, cache, instance,
// device) gets, as docs/performance.md v0.5 measured on the H200 and v0.3 on the H100.
TEST(KernelRegistry, AutoRule) {
  auto pick = [](long long rows, bool fp8, bool mma, bool bulk, int sm, int code, int head = 128, bool v2 = false) {
    detail::cuda::AutoRuleInput in;
    in.rows = rows;
    in.fp8 = fp8;
    in.head_size = head;
    in.fixed_partitions = v2;
    in.has_tensor_core_instance = mma;
    in.has_bulk_instance = bulk;
    in.device_sm = sm;
    in.code_sm = code;
    return std::string(detail::cuda::auto_kernel(in).name);
  };
  // sm_90 running sm_90 code, an f16/bf16 instance with both tensor-core kernels
  EXPECT_EQ(pick(1, false, true, true, 90, 90), "cuda_core_r1");    // MHA, 16-bit cache
  EXPECT_EQ(pick(1, true, true, true, 90, 90), "tensor_core_r8");   // MHA, fp8, head <= 128
  EXPECT_EQ(pick(1, true, false, true, 90, 90, 256), "hopper_bulk_r8");  // MHA, fp8, head > 128
  EXPECT_EQ(pick(1, false, false, true, 90, 90, 256), "cuda_core_r1");   // MHA, 16-bit, head > 128
  // up to 8 rows: one row group; up to 16: two; more: two of 16 rows each up to head 128
  for (long long rows : {2, 3, 4, 6, 8, 9, 12, 16, 17, 32, 64})
    for (bool fp8 : {false, true})
      for (int head : {64, 128, 256}) {
        const std::string want = rows > 16 && head <= 128 ? "hopper_bulk_r32" : rows > 8 ? "hopper_bulk_r16" : "hopper_bulk_r8";
        EXPECT_EQ(pick(rows, fp8, head <= 128, true, 90, 90, head), want) << rows << " rows, fp8 " << fp8 << ", head " << head;
        EXPECT_EQ(pick(rows, fp8, false, true, 100, 100, head), want) << rows << " rows on sm_100, head " << head;
      }
  // more than 16 rows: 32-row CTAs only where they number at least half the SMs (132 here);
  // fewer, and twice as many 16-row CTAs win
  auto pick_sized = [](long long rows, long long kv_streams, int head = 128) {
    detail::cuda::AutoRuleInput in;
    in.rows = rows;
    in.head_size = head;
    in.has_tensor_core_instance = true;
    in.has_bulk_instance = true;
    in.device_sm = in.code_sm = 90;
    in.kv_streams = kv_streams;
    in.sm_count = 132;
    return std::string(detail::cuda::auto_kernel(in).name);
  };
  EXPECT_EQ(pick_sized(32, 128), "hopper_bulk_r32");  // MQA, batch 128: 128 CTAs
  EXPECT_EQ(pick_sized(32, 66), "hopper_bulk_r32");   // exactly half the SMs
  EXPECT_EQ(pick_sized(32, 65), "hopper_bulk_r16");
  EXPECT_EQ(pick_sized(32, 16), "hopper_bulk_r16");   // MQA, batch 16
  EXPECT_EQ(pick_sized(32, 1), "hopper_bulk_r16");    // one long sequence
  EXPECT_EQ(pick_sized(64, 33), "hopper_bulk_r32");   // two 32-row tiles per kv head: 66 CTAs
  EXPECT_EQ(pick_sized(24, 128), "hopper_bulk_r32");
  EXPECT_EQ(pick_sized(16, 1000), "hopper_bulk_r16");  // 16 rows: never r32
  EXPECT_EQ(pick_sized(32, 1000, 192), "hopper_bulk_r16");  // head 192: no r32 code
  // up to 8 rows: the ring of two (one CTA per SM) while the (sequence, kv head) CTAs number no
  // more than the SMs; V2's grid counts its partitions
  EXPECT_EQ(pick_sized(4, 64), "hopper_bulk_r8_deep");    // 32/8, batch 8
  EXPECT_EQ(pick_sized(8, 132), "hopper_bulk_r8_deep");   // one CTA per SM exactly
  EXPECT_EQ(pick_sized(8, 133), "hopper_bulk_r8");
  EXPECT_EQ(pick_sized(2, 256), "hopper_bulk_r8");        // 32/16 batch 16: two per SM
  EXPECT_EQ(pick_sized(4, 8, 256), "hopper_bulk_r8_deep");  // any head size
  EXPECT_EQ(pick_sized(4, 0), "hopper_bulk_r8");          // the call's size unknown
  EXPECT_EQ(pick_sized(16, 8), "hopper_bulk_r16");        // two row groups: the ring of two already
  {
    detail::cuda::AutoRuleInput in;
    in.rows = 8;
    in.has_tensor_core_instance = in.has_bulk_instance = true;
    in.device_sm = in.code_sm = 90;
    in.sm_count = 132;
    in.kv_streams = 64;
    in.fixed_partitions = true;
    in.fixed_splits = 2;
    EXPECT_EQ(std::string(detail::cuda::auto_kernel(in).name), "hopper_bulk_r8_deep");  // V2, 128 CTAs
    in.fixed_splits = 3;
    EXPECT_EQ(std::string(detail::cuda::auto_kernel(in).name), "hopper_bulk_r8");  // V2, 192 CTAs
  }
  // V2's fixed 512-token partitions on sm_90: 3-4 rows of a 16-bit cache on CUDA cores, 2-4 rows
  // of an fp8 cache on the tensor-core kernel; the bulk kernel elsewhere
  EXPECT_EQ(pick(4, false, true, true, 90, 90, 128, true), "cuda_core_r4");
  EXPECT_EQ(pick(3, false, true, true, 90, 90, 128, true), "cuda_core_r4");
  EXPECT_EQ(pick(4, false, false, true, 90, 90, 256, true), "hopper_bulk_r8");  // head 256: bulk 16% faster
  EXPECT_EQ(pick(2, false, true, true, 90, 90, 128, true), "hopper_bulk_r8");
  EXPECT_EQ(pick(8, false, true, true, 90, 90, 128, true), "hopper_bulk_r8");
  EXPECT_EQ(pick(4, true, true, true, 90, 90, 128, true), "tensor_core_r8");
  EXPECT_EQ(pick(2, true, true, true, 90, 90, 128, true), "tensor_core_r8");
  EXPECT_EQ(pick(4, true, false, true, 90, 90, 256, true), "hopper_bulk_r8");  // no tensor-core instance
  EXPECT_EQ(pick(8, true, true, true, 90, 90, 128, true), "hopper_bulk_r8");
  EXPECT_EQ(pick(1, false, true, true, 90, 90, 128, true), "cuda_core_r1");
  // older devices, or an sm_90 device running code JIT-compiled from older PTX: the v0.3 rule
  for (auto [sm, code] : {std::pair{80, 80}, std::pair{89, 89}, std::pair{90, 80}})
    for (bool v2 : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "device " << sm << ", code " << code << ", V2 " << v2);
      EXPECT_EQ(pick(1, false, true, true, sm, code, 128, v2), "cuda_core_r1");
      EXPECT_EQ(pick(2, false, true, true, sm, code, 128, v2), "cuda_core_r2");
      EXPECT_EQ(pick(4, false, true, true, sm, code, 128, v2), "cuda_core_r4");
      EXPECT_EQ(pick(8, false, true, true, sm, code, 128, v2), "tensor_core_r8");
      EXPECT_EQ(pick(2, true, true, true, sm, code, 128, v2), "tensor_core_r8");
      EXPECT_EQ(pick(1, true, true, true, sm, code, 128, v2), "cuda_core_r1");
      EXPECT_EQ(pick(32, false, true, true, sm, code, 128, v2), "tensor_core_r8");
    }
  // float32 queries (no tensor-core or bulk instance): CUDA cores whatever the device
  EXPECT_EQ(pick(1, true, false, false, 90, 90), "cuda_core_r1");
  EXPECT_EQ(pick(2, false, false, false, 90, 90), "cuda_core_r2");
  EXPECT_EQ(pick(8, true, false, false, 90, 90).rfind("cuda_core_r", 0), 0u);
}

// The kernel registry's host side (no GPU needed): pinning, restoring, and the errors for a
// name it does not know or an instance a kernel cannot run.
TEST(KernelRegistry, ForceRestoreAndReasons) {
  std::vector<std::string> names;
  for (const auto& k : detail::cuda::kernel_specs()) names.push_back(k.name);
  for (const char* want : {"cuda_core_r1", "cuda_core_r2", "cuda_core_r4", "tensor_core_r8", "hopper_bulk_r8",
                           "hopper_bulk_r8_deep", "hopper_bulk_r16", "hopper_bulk_r32"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want << " missing from the registry";
  EXPECT_EQ(detail::cuda::forced_kernel(), "");
  {
    detail::cuda::ScopedKernel outer("tensor_core_r8");
    EXPECT_EQ(detail::cuda::forced_kernel(), "tensor_core_r8");
    {
      detail::cuda::ScopedKernel inner("cuda_core_r2");
      EXPECT_EQ(detail::cuda::forced_kernel(), "cuda_core_r2");
    }
    EXPECT_EQ(detail::cuda::forced_kernel(), "tensor_core_r8");
    expect_error([] { detail::cuda::force_kernel("cuda_core_r3"); }, ErrorCode::kInvalidArgument,
                 {"unknown kernel 'cuda_core_r3'", "cuda_core_r1", "tensor_core_r8"});
    EXPECT_EQ(detail::cuda::forced_kernel(), "tensor_core_r8") << "a refused name must not change the pin";
  }
  EXPECT_EQ(detail::cuda::forced_kernel(), "");
  // the split-count pin: 0 = the planner; a negative count is refused and changes nothing
  EXPECT_EQ(detail::cuda::forced_splits(), 0);
  detail::cuda::force_splits(5);
  EXPECT_EQ(detail::cuda::forced_splits(), 5);
  expect_error([] { detail::cuda::force_splits(-2); }, ErrorCode::kInvalidArgument,
               {"force_splits: num_splits is -2", "0 (the planner) or more"});
  EXPECT_EQ(detail::cuda::forced_splits(), 5) << "a refused count must not change the pin";
  detail::cuda::force_splits(0);
  EXPECT_EQ(detail::cuda::forced_splits(), 0);
  EXPECT_EQ(detail::cuda::kernel_unsupported_reason("cuda_core_r1", DType::kFloat16, CacheDType::kAuto, 128), "");
  // float32 queries have no tensor-core instance (and a trimmed build may lack the float32 one)
  EXPECT_NE(detail::cuda::kernel_unsupported_reason("tensor_core_r8", DType::kFloat32, CacheDType::kAuto, 128), "");
  EXPECT_NE(detail::cuda::kernel_unsupported_reason("cuda_core_r3", DType::kFloat16, CacheDType::kAuto, 128)
                .find("unknown kernel"),
            std::string::npos);
  // the Hopper kernel (every shape): 16-bit queries only, and a device of compute capability
  // 9.0 or newer
  for (const char* name : {"hopper_bulk_r8", "hopper_bulk_r8_deep", "hopper_bulk_r16", "hopper_bulk_r32"}) {
    SCOPED_TRACE(name);
    EXPECT_NE(detail::cuda::kernel_unsupported_reason(name, DType::kFloat32, CacheDType::kAuto, 128), "");
    const detail::cuda::KernelSpec* hopper = nullptr;
    for (const auto& k : detail::cuda::kernel_specs())
      if (std::string(k.name) == name) hopper = &k;
    ASSERT_NE(hopper, nullptr) << name << " missing from the registry";
    EXPECT_EQ(hopper->min_sm, 90);
    EXPECT_EQ(detail::cuda::kernel_unsupported_reason(*hopper, false, true, 90), "");
    EXPECT_EQ(detail::cuda::kernel_unsupported_reason(*hopper, false, true, 100), "");
    EXPECT_NE(detail::cuda::kernel_unsupported_reason(*hopper, true, false, 90).find("PAGEDATTN_BULK_COPY"),
              std::string::npos);
    EXPECT_NE(detail::cuda::kernel_unsupported_reason(*hopper, true, true, 89).find("this device is 8.9"),
              std::string::npos);
    EXPECT_NE(detail::cuda::kernel_unsupported_reason(*hopper, true, true, -1).find("no CUDA device"), std::string::npos);
    // an sm_90 device running code compiled for compute_80 (PTX JIT): the kernel's instructions
    // are not in that code
    const std::string jit = detail::cuda::kernel_unsupported_reason(*hopper, true, true, 90, 80);
    EXPECT_NE(jit.find("code compiled for compute capability 9.0"), std::string::npos) << jit;
    EXPECT_NE(jit.find("code for 8.0"), std::string::npos) << jit;
    EXPECT_NE(jit.find("-DCMAKE_CUDA_ARCHITECTURES=90"), std::string::npos) << jit;
    EXPECT_EQ(detail::cuda::kernel_unsupported_reason(*hopper, true, true, 90, 90), "");
    // 16 rows per warp (_r32) only up to head 128: its accumulators fill the registers
    const std::string wide = detail::cuda::kernel_unsupported_reason(*hopper, true, true, 90, 90, 256);
    if (std::string(name) == "hopper_bulk_r32") {
      EXPECT_NE(wide.find("needs head_size <= 128; head_size is 256"), std::string::npos) << wide;
      EXPECT_EQ(detail::cuda::kernel_unsupported_reason(*hopper, true, true, 90, 90, 128), "");
    } else {
      EXPECT_EQ(wide, "");
    }
  }
  // the older kernels run on any device the build targets
  for (const auto& k : detail::cuda::kernel_specs())
    if (!k.bulk_copy) EXPECT_EQ(detail::cuda::kernel_unsupported_reason(k, true, true, 80), "") << k.name;
}

}  // namespace
}  // namespace pagedattn::test
