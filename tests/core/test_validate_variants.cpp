// Error paths of the SPEC §3b variants (src/core/validate.cpp): every new parameter's bad
// values name the parameter, the value and what is allowed; V1/V2 reject every variant by
// name; checked mode names bad query_start_loc data; is_supported() answers without throwing
// and gives the same reason the call would raise. Backend-independent (host problems).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/validate.h"

namespace pagedattn {
namespace {

using test::build_problem;
using test::expect_error;
using test::HostProblem;
using test::ProblemConfig;

constexpr auto kInv = ErrorCode::kInvalidArgument;
constexpr Device kCuda{DeviceType::kCUDA, 0};

/// A valid multi-token fp8 problem with lse and per-head scales: 3 sequences, q_lens 2, 3, 1.
HostProblem variant_problem() {
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  c.kv_cache_dtype = CacheDType::kFp8E4M3;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_size = 64;
  c.seq_lens = {5, 40, 17};
  c.q_lens = {2, 3, 1};
  c.lse = true;
  c.per_head_scales = true;
  c.window_left = 7;
  c.logits_soft_cap = 30.0f;
  test::Rng rng(5);  // content is irrelevant to validation
  return build_problem(c, rng);
}

struct Case {
  const char* name;
  std::function<void(PagedAttentionParams&)> mutate;
  std::vector<std::string> needles;
};

TEST(ValidateVariants, EveryErrorPath) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Case> cases = {
      {"window_left < -1", [](auto& p) { p.window_left = -2; }, {"window_left is -2", "-1 for no sliding window"}},
      {"soft-cap negative", [](auto& p) { p.logits_soft_cap = -1.0f; }, {"logits_soft_cap is -1", ">= 0"}},
      {"soft-cap NaN", [&](auto& p) { p.logits_soft_cap = nan; }, {"logits_soft_cap is nan"}},
      {"soft-cap inf", [](auto& p) { p.logits_soft_cap = std::numeric_limits<float>::infinity(); }, {"logits_soft_cap is inf"}},
      {"qsl ndim", [](auto& p) { p.query_start_loc.ndim = 2; p.query_start_loc.shape[1] = 1; }, {"query_start_loc must have 1 dimensions"}},
      {"qsl dtype", [](auto& p) { p.query_start_loc.dtype = DType::kInt64; }, {"query_start_loc has dtype int64", "int32"}},
      {"qsl device", [](auto& p) { p.query_start_loc.device = kCuda; }, {"query_start_loc is on cuda:0"}},
      {"qsl stride", [](auto& p) { p.query_start_loc.strides[0] = 2; }, {"query_start_loc must be contiguous"}},
      {"qsl empty", [](auto& p) { p.query_start_loc.shape[0] = 0; }, {"query_start_loc has 0 entries"}},
      {"seq_lens vs qsl", [](auto& p) { p.seq_lens.shape[0] = 2; }, {"seq_lens dimension 0 is 2", "query_start_loc's length - 1"}},
      {"max_query_len negative", [](auto& p) { p.max_query_len = -1; }, {"max_query_len is -1"}},
      {"max_query_len > rows", [](auto& p) { p.max_query_len = 7; }, {"max_query_len is 7", "num_query_rows = 6"}},
      {"max_query_len without qsl", [](auto& p) { p.query_start_loc = TensorView{}; p.max_query_len = 2; p.query.shape[0] = p.out.shape[0] = 3; p.lse.shape[0] = 3; },
       {"max_query_len is 2 without query_start_loc"}},
      {"lse ndim", [](auto& p) { p.lse.ndim = 3; p.lse.shape[2] = 1; }, {"lse must have 2 dimensions"}},
      {"lse dtype", [](auto& p) { p.lse.dtype = DType::kFloat16; }, {"lse has dtype float16", "float32"}},
      {"lse device", [](auto& p) { p.lse.device = kCuda; }, {"lse is on cuda:0"}},
      {"lse rows", [](auto& p) { p.lse.shape[0] = 5; }, {"lse dimension 0 is 5", "num_query_rows = 6"}},
      {"lse heads", [](auto& p) { p.lse.shape[1] = 2; }, {"lse dimension 1 is 2", "num_heads = 4"}},
      {"lse stride", [](auto& p) { p.lse.strides[0] = 8; }, {"lse must be contiguous"}},
      {"k_scales alone", [](auto& p) { p.v_scales = TensorView{}; }, {"k_scales is given without v_scales"}},
      {"v_scales alone", [](auto& p) { p.k_scales = TensorView{}; }, {"v_scales is given without k_scales"}},
      {"scales with auto cache", [](auto& p) { p.kv_cache_dtype = CacheDType::kAuto; }, {"kv_cache_dtype is auto", "fp8 caches only"}},
      {"scales with per-tensor scale", [](auto& p) { p.k_scale = 2.0f; }, {"k_scale/v_scale are 2/1", "leave the per-tensor scales at 1.0"}},
      {"k_scales length", [](auto& p) { p.k_scales.shape[0] = 3; }, {"k_scales dimension 0 is 3", "num_kv_heads = 2"}},
      {"v_scales dtype", [](auto& p) { p.v_scales.dtype = DType::kFloat16; }, {"v_scales has dtype float16"}},
      {"v_scales device", [](auto& p) { p.v_scales.device = kCuda; }, {"v_scales is on cuda:0"}},
  };
  const HostProblem pb = variant_problem();
  ASSERT_NO_THROW(detail::validate_attention(pb.params, "paged_attention"));
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    PagedAttentionParams p = pb.params;
    c.mutate(p);
    auto needles = c.needles;
    needles.push_back("paged_attention: ");
    expect_error([&] { detail::validate_attention(p, "paged_attention"); }, kInv, needles);
    // is_supported gives the same answer without throwing
    Support s;
    EXPECT_NO_THROW(s = is_supported(p));
    EXPECT_FALSE(s.ok);
    for (const auto& n : needles) EXPECT_NE(s.reason.find(n), std::string::npos) << "'" << n << "' not in: " << s.reason;
  }
  const Support ok = is_supported(pb.params);
  EXPECT_TRUE(ok.ok) << ok.reason;
  EXPECT_TRUE(ok.reason.empty());
}

TEST(ValidateVariants, V1AndV2RejectEachVariantByName) {
  ProblemConfig c;
  c.dtype = DType::kFloat32;
  c.kv_cache_dtype = CacheDType::kFp8E5M2;
  c.seq_lens = {5, 9};
  test::Rng rng(6);
  const HostProblem plain = build_problem(c, rng);
  ProblemConfig cq = c;
  cq.q_lens = {1, 2};
  cq.lse = true;
  cq.per_head_scales = true;
  const HostProblem multi = build_problem(cq, rng);
  const std::vector<std::pair<const char*, std::function<void(PagedAttentionParams&)>>> variants = {
      {"window_left", [](auto& p) { p.window_left = 4; }},
      {"logits_soft_cap", [](auto& p) { p.logits_soft_cap = 50.0f; }},
      {"max_query_len", [](auto& p) { p.max_query_len = 1; }},
      {"lse", [&](auto& p) { p.lse = multi.params.lse; p.lse.shape[0] = 2; }},
      {"k_scales/v_scales", [&](auto& p) { p.k_scales = multi.params.k_scales; p.v_scales = multi.params.v_scales; }},
  };
  HostProblem::Workspace ws = plain.make_workspace();
  for (const auto& [name, mutate] : variants) {
    SCOPED_TRACE(name);
    PagedAttentionParams p = plain.params;
    mutate(p);
    EXPECT_NO_THROW(detail::validate_attention(p, "paged_attention")) << "the auto path takes it";
    expect_error([&] { paged_attention_v1(p); }, kInv, {std::string("paged_attention_v1: ") + name, "use paged_attention"});
    expect_error([&] { paged_attention_v2(p, ws.views()); }, kInv, {std::string("paged_attention_v2: ") + name});
  }
  expect_error([&] { paged_attention_v1(multi.params); }, kInv, {"paged_attention_v1: query_start_loc is set"});
  for (double v : plain.out_values()) EXPECT_TRUE(std::isnan(v)) << "out was written despite the error";
}

TEST(ValidateVariants, CheckedModeNamesBadQueryStartLoc) {
  const HostProblem pb = variant_problem();  // rows: qsl = {0, 2, 5, 6}, seq_lens {5, 40, 17}
  auto with = [&](const std::function<void(HostProblem&)>& mutate, const std::vector<std::string>& needles) {
    HostProblem b = pb;
    mutate(b);
    const detail::AttentionShape s = detail::validate_attention(b.params, "paged_attention");
    expect_error([&] { detail::check_attention_data_host(b.params, s); }, ErrorCode::kDataError, needles);
    // the public call fails the same way and writes nothing
    b.params.checked = true;
    expect_error([&] { paged_attention(b.params, nullptr, 0); }, ErrorCode::kDataError, needles);
    for (double v : b.out_values()) EXPECT_TRUE(std::isnan(v)) << "out was written despite the error";
  };
  auto qsl = [](HostProblem& b) { return static_cast<std::int32_t*>(b.query_start_loc.view.data); };
  with([&](HostProblem& b) { qsl(b)[0] = 1; }, {"query_start_loc[0] = 1", "must be 0"});
  with([&](HostProblem& b) { qsl(b)[1] = 6; }, {"query_start_loc[2] = 5 is below query_start_loc[1] = 6"});
  with([&](HostProblem& b) { qsl(b)[3] = 5; }, {"query_start_loc[3] = 5", "query has 6 rows"});
  with([&](HostProblem& b) { static_cast<std::int32_t*>(b.seq_lens.view.data)[0] = 1; },
       {"sequence 0 has q_len 2", "seq_lens[0] = 1"});
  with([&](HostProblem& b) { b.params.max_query_len = 2; }, {"sequence 1 has q_len 3", "max_query_len is 2"});
  const detail::AttentionShape s = detail::validate_attention(pb.params, "paged_attention");
  EXPECT_NO_THROW(detail::check_attention_data_host(pb.params, s));
}

TEST(ValidateVariants, MergeStatesErrorPaths) {
  test::Rng rng(7);
  auto t3 = [](DType d) { return test::make_tensor(d, {3, 2, 8}); };
  auto t2 = [] { return test::make_tensor(DType::kFloat32, {3, 2}); };
  test::HostTensor oa = t3(DType::kFloat16), ob = t3(DType::kFloat16), o = t3(DType::kFloat16);
  test::HostTensor la = t2(), lb = t2(), l = t2();
  const MergeStatesParams good{oa.view, la.view, ob.view, lb.view, o.view, l.view, nullptr};
  EXPECT_NO_THROW(detail::validate_merge_states(good));
  const std::vector<std::pair<std::function<void(MergeStatesParams&)>, std::vector<std::string>>> cases = {
      {[](auto& m) { m.out_b.dtype = DType::kFloat32; }, {"out_b has dtype float32", "out_a's dtype"}},
      {[](auto& m) { m.out.shape[2] = 4; }, {"out dimension 2 is 4"}},
      {[](auto& m) { m.lse_a.dtype = DType::kFloat16; }, {"lse_a has dtype float16"}},
      {[](auto& m) { m.lse_b.shape[0] = 2; }, {"lse_b dimension 0 is 2", "out_a's rows = 3"}},
      {[](auto& m) { m.lse.shape[1] = 1; }, {"lse dimension 1 is 1"}},
      {[](auto& m) { m.out_a.dtype = DType::kInt32; }, {"unsupported out_a dtype int32"}},
      {[](auto& m) { m.lse_b = TensorView{}; }, {"lse_b is missing"}},
      {[](auto& m) { m.out.device = kCuda; }, {"out is on cuda:0"}},
  };
  for (const auto& [mutate, needles] : cases) {
    MergeStatesParams m = good;
    mutate(m);
    auto n = needles;
    n.push_back("merge_attention_states: ");
    const ErrorCode code = m.out_a.dtype == DType::kInt32 ? ErrorCode::kUnsupported : kInv;
    expect_error([&] { merge_attention_states(m); }, code, n);
  }
}

}  // namespace
}  // namespace pagedattn
