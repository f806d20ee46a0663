// Every error path of src/core/validate.cpp for attention calls: the ErrorCode, and that the
// message names the parameter and the value (and the supported set for kUnsupported).
// Called directly (detail::validate_attention / validate_v2_workspace /
// check_attention_data_host), independent of any backend.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/validate.h"

namespace pagedattn {
namespace {

using test::build_problem;
using test::HostProblem;
using test::ProblemConfig;

using test::expect_error;

/// A valid float16 GQA problem with ALiBi, 2 sequences (5 and 1100 tokens: 3 V2 partitions).
HostProblem base_problem() {
  ProblemConfig c;
  c.dtype = DType::kFloat16;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_size = 64;
  c.block_size = 16;
  c.seq_lens = {5, 1100};
  c.alibi = true;
  test::Rng rng(1);  // content is irrelevant to validation
  return build_problem(c, rng);
}

struct Case {
  const char* name;
  std::function<void(PagedAttentionParams&)> mutate;
  ErrorCode code;
  std::vector<std::string> needles;
};

constexpr auto kInv = ErrorCode::kInvalidArgument;

/// "32, 64, ..." from the library's one list of head sizes.
std::string head_sizes_str() {
  std::string r;
  for (int h : detail::kHeadSizes) r += (r.empty() ? "" : ", ") + std::to_string(h);
  return r;
}
constexpr auto kUns = ErrorCode::kUnsupported;
constexpr Device kCuda{DeviceType::kCUDA, 0};

TEST(Validate, ValidProblemsPass) {
  HostProblem pb = base_problem();
  EXPECT_NO_THROW(detail::validate_attention(pb.params, "op"));
  // Every dtype x cache dtype, views, padded query/table rows, head 120 with fp8 (x = 16).
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (CacheDType c : {CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2})
      for (int hs : {32, 120, 256}) {
        ProblemConfig cfg;
        cfg.dtype = t;
        cfg.kv_cache_dtype = c;
        cfg.head_size = hs;
        cfg.num_kv_heads = 2;
        cfg.cache_views = true;
        cfg.q_row_pad = 3;
        cfg.bt_row_pad = 2;
        cfg.max_len = 40;
        test::Rng rng(2);
        HostProblem q = build_problem(cfg, rng);
        SCOPED_TRACE(std::string(dtype_name(t)) + " " + cache_dtype_name(c) + " head " + std::to_string(hs));
        detail::AttentionShape s;
        ASSERT_NO_THROW(s = detail::validate_attention(q.params, "op"));
        EXPECT_EQ(s.x, static_cast<int>(16 / dtype_size(q.cache_storage())));
        EXPECT_EQ(s.q_stride, 4 * hs + 3);
        EXPECT_EQ(s.bt_stride, q.max_blocks_per_seq + 2);
        EXPECT_NO_THROW(detail::check_attention_data_host(q.params, s));
      }
}

TEST(Validate, EveryAttentionErrorPath) {
  const std::vector<Case> cases = {
      // presence
      {"query null", [](auto& p) { p.query.data = nullptr; }, kInv, {"query is missing"}},
      {"out null", [](auto& p) { p.out.data = nullptr; }, kInv, {"out is missing"}},
      {"key_cache null", [](auto& p) { p.key_cache.data = nullptr; }, kInv, {"key_cache is missing"}},
      {"value_cache null", [](auto& p) { p.value_cache.data = nullptr; }, kInv, {"value_cache is missing"}},
      {"block_tables null", [](auto& p) { p.block_tables.data = nullptr; }, kInv, {"block_tables is missing"}},
      {"seq_lens undefined", [](auto& p) { p.seq_lens = TensorView{}; }, kInv, {"seq_lens is missing"}},
      // query
      {"query ndim", [](auto& p) { p.query.ndim = 2; }, kInv, {"query must have 3 dimensions", "got 2"}},
      {"query negative size", [](auto& p) { p.query.shape[0] = -2; }, kInv, {"query has a negative size", "[-2, 4, 64]"}},
      {"query dtype", [](auto& p) { p.query.dtype = DType::kInt32; }, kUns,
       {"unsupported query dtype int32", "supported: float32, float16, bfloat16"}},
      {"head_size", [](auto& p) { p.query.shape[2] = 100; }, kUns,
       {"unsupported head_size 100", "supported: " + head_sizes_str()}},
      {"num_heads 0", [](auto& p) { p.query.shape[1] = 0; }, kInv, {"num_heads", "is 0", "positive"}},
      {"query inner stride", [](auto& p) { p.query.strides[2] = 2; }, kInv,
       {"query must be contiguous from dimension 1", "strides [256, 64, 2]"}},
      {"query row stride", [](auto& p) { p.query.strides[0] = 10; }, kInv, {"query stride(0) is 10", "at least 256"}},
      // out
      {"out ndim", [](auto& p) { p.out.ndim = 4; }, kInv, {"out must have 3 dimensions", "got 4"}},
      {"out dtype", [](auto& p) { p.out.dtype = DType::kFloat32; }, kInv, {"out has dtype float32", "must be float16"}},
      {"out device", [](auto& p) { p.out.device = kCuda; }, kInv, {"out is on cuda:0", "query is on cpu"}},
      {"out dim 0", [](auto& p) { p.out.shape[0] = 3; }, kInv, {"out dimension 0 is 3", "= 2"}},
      {"out dim 1", [](auto& p) { p.out.shape[1] = 5; }, kInv, {"out dimension 1 is 5", "= 4"}},
      {"out dim 2", [](auto& p) { p.out.shape[2] = 32; }, kInv, {"out dimension 2 is 32", "= 64"}},
      {"out strided", [](auto& p) { p.out.strides[0] = 300; }, kInv, {"out must be contiguous from dimension 0", "300"}},
      // scalars
      {"block_size", [](auto& p) { p.block_size = 12; }, kUns, {"unsupported block_size 12", "supported: 8, 16, 32"}},
      {"num_kv_heads 0", [](auto& p) { p.num_kv_heads = 0; }, kInv, {"num_kv_heads is 0"}},
      {"num_kv_heads 3", [](auto& p) { p.num_kv_heads = 3; }, kInv, {"num_heads 4 is not a multiple of num_kv_heads 3"}},
      {"max_seq_len", [](auto& p) { p.max_seq_len = -1; }, kInv, {"max_seq_len is -1"}},
      {"total_tokens negative", [](auto& p) { p.total_tokens = -1; }, kInv,
       {"total_tokens is -1", "must be in [0, num_seqs * max_seq_len"}},
      {"total_tokens above the batch", [](auto& p) { p.total_tokens = 1LL << 40; }, kInv,
       {"total_tokens is 1099511627776", "(0: unknown)"}},
      {"scale nan", [](auto& p) { p.scale = std::numeric_limits<float>::quiet_NaN(); }, kInv, {"scale is nan"}},
      {"k_scale inf", [](auto& p) { p.k_scale = std::numeric_limits<float>::infinity(); }, kInv, {"k_scale is inf"}},
      {"v_scale -inf", [](auto& p) { p.v_scale = -std::numeric_limits<float>::infinity(); }, kInv, {"v_scale is -inf"}},
      {"tp_rank", [](auto& p) { p.tp_rank = -1; }, kInv, {"tp_rank is -1"}},
      {"blocksparse block_size", [](auto& p) { p.blocksparse = {1, 2, 24, 1}; }, kInv,
       {"blocksparse_block_size is 24", "multiple of block_size 16"}},
      {"blocksparse block_size 0", [](auto& p) { p.blocksparse = {1, 4, 0, 1}; }, kInv, {"blocksparse_block_size is 0"}},
      {"blocksparse local_blocks", [](auto& p) { p.blocksparse = {-1, 2, 32, 1}; }, kInv,
       {"blocksparse_local_blocks is -1"}},
      // key_cache
      {"key_cache ndim", [](auto& p) { p.key_cache.ndim = 4; }, kInv, {"key_cache must have 5 dimensions", "got 4"}},
      {"key_cache dtype", [](auto& p) { p.key_cache.dtype = DType::kBFloat16; }, kInv,
       {"key_cache has dtype bfloat16", "must be float16", "auto"}},
      {"key_cache fp8 dtype", [](auto& p) { p.kv_cache_dtype = CacheDType::kFp8E5M2; }, kInv,
       {"key_cache has dtype float16", "must be uint8", "fp8"}},
      {"key_cache device", [](auto& p) { p.key_cache.device = kCuda; }, kInv, {"key_cache is on cuda:0"}},
      {"key_cache dim 1", [](auto& p) { p.key_cache.shape[1] = 4; }, kInv, {"key_cache dimension 1 is 4", "num_kv_heads = 2"}},
      {"key_cache dim 2", [](auto& p) { p.key_cache.shape[2] = 7; }, kInv, {"key_cache dimension 2 is 7", "= 8"}},
      {"key_cache dim 3", [](auto& p) { p.key_cache.shape[3] = 8; }, kInv, {"key_cache dimension 3 is 8", "block_size = 16"}},
      {"key_cache dim 4", [](auto& p) { p.key_cache.shape[4] = 4; }, kInv, {"key_cache dimension 4 is 4", "= 8"}},
      {"key_cache inner strides", [](auto& p) { p.key_cache.strides[3] = 16; }, kInv,
       {"key_cache must be contiguous from dimension 2"}},
      // value_cache
      {"value_cache ndim", [](auto& p) { p.value_cache.ndim = 5; }, kInv, {"value_cache must have 4 dimensions", "got 5"}},
      {"value_cache dtype", [](auto& p) { p.value_cache.dtype = DType::kFloat32; }, kInv,
       {"value_cache has dtype float32", "must be float16"}},
      {"value_cache device", [](auto& p) { p.value_cache.device = kCuda; }, kInv, {"value_cache is on cuda:0"}},
      {"value_cache dim 0", [](auto& p) { p.value_cache.shape[0] -= 1; }, kInv, {"value_cache dimension 0", "num_blocks"}},
      {"value_cache dim 1", [](auto& p) { p.value_cache.shape[1] = 1; }, kInv, {"value_cache dimension 1 is 1", "= 2"}},
      {"value_cache dim 2", [](auto& p) { p.value_cache.shape[2] = 128; }, kInv, {"value_cache dimension 2 is 128", "= 64"}},
      {"value_cache dim 3", [](auto& p) { p.value_cache.shape[3] = 32; }, kInv, {"value_cache dimension 3 is 32", "= 16"}},
      {"value_cache inner strides", [](auto& p) { p.value_cache.strides[3] = 2; }, kInv,
       {"value_cache must be contiguous from dimension 2"}},
      {"cache head stride", [](auto& p) { p.key_cache.strides[1] = 100; }, kInv, {"head strides (100, 1024)", "1024"}},
      {"cache block stride", [](auto& p) { p.value_cache.strides[0] = 1000; }, kInv, {"block strides (2048, 1000)"}},
      // block_tables
      {"block_tables ndim", [](auto& p) { p.block_tables.ndim = 1; }, kInv, {"block_tables must have 2 dimensions"}},
      {"block_tables dtype", [](auto& p) { p.block_tables.dtype = DType::kInt64; }, kInv,
       {"block_tables has dtype int64", "must be int32"}},
      {"block_tables device", [](auto& p) { p.block_tables.device = kCuda; }, kInv, {"block_tables is on cuda:0"}},
      {"block_tables dim 0", [](auto& p) { p.block_tables.shape[0] = 1; }, kInv, {"block_tables dimension 0 is 1", "num_seqs = 2"}},
      {"block_tables col stride", [](auto& p) { p.block_tables.strides[1] = 2; }, kInv,
       {"block_tables must be contiguous from dimension 1"}},
      {"block_tables row stride", [](auto& p) { p.block_tables.strides[0] = 3; }, kInv,
       {"block_tables stride(0) is 3", "at least 70"}},
      // seq_lens
      {"seq_lens ndim", [](auto& p) { p.seq_lens.ndim = 2; p.seq_lens.shape[1] = 1; }, kInv, {"seq_lens must have 1 dimensions"}},
      {"seq_lens dtype", [](auto& p) { p.seq_lens.dtype = DType::kInt64; }, kInv, {"seq_lens has dtype int64", "int32"}},
      {"seq_lens device", [](auto& p) { p.seq_lens.device = kCuda; }, kInv, {"seq_lens is on cuda:0"}},
      {"seq_lens dim 0", [](auto& p) { p.seq_lens.shape[0] = 3; }, kInv, {"seq_lens dimension 0 is 3", "num_seqs = 2"}},
      {"seq_lens stride", [](auto& p) { p.seq_lens.strides[0] = 2; }, kInv, {"seq_lens must be contiguous", "strides [2]"}},
      // alibi_slopes
      {"alibi null data", [](auto& p) { p.alibi_slopes.data = nullptr; }, kInv, {"alibi_slopes is missing"}},
      {"alibi ndim", [](auto& p) { p.alibi_slopes.ndim = 2; p.alibi_slopes.shape[1] = 1; }, kInv,
       {"alibi_slopes must have 1 dimensions", "got 2"}},
      {"alibi dtype", [](auto& p) { p.alibi_slopes.dtype = DType::kFloat16; }, kInv,
       {"alibi_slopes has dtype float16", "must be float32"}},
      {"alibi device", [](auto& p) { p.alibi_slopes.device = kCuda; }, kInv, {"alibi_slopes is on cuda:0"}},
      {"alibi length", [](auto& p) { p.alibi_slopes.shape[0] = 2; }, kInv, {"alibi_slopes dimension 0 is 2", "num_heads = 4"}},
      {"alibi stride", [](auto& p) { p.alibi_slopes.strides[0] = 2; }, kInv, {"alibi_slopes must be contiguous"}},
  };
  const HostProblem pb = base_problem();
  ASSERT_NO_THROW(detail::validate_attention(pb.params, "paged_attention_v1"));
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    PagedAttentionParams p = pb.params;
    c.mutate(p);
    auto needles = c.needles;
    needles.push_back("paged_attention_v1: ");  // every message names the operation
    expect_error([&] { detail::validate_attention(p, "paged_attention_v1"); }, c.code, needles);
  }
}

TEST(Validate, FailsBeforeReadingHead120Fp8KeyCacheWithTooFewChunks) {
  // head_size 120 with an fp8 cache: x = 16, so the key cache needs ceil(120/16) = 8 chunks.
  // head_size/16 = 7 chunks would leave elements 112..119 outside the tensor.
  ProblemConfig c;
  c.kv_cache_dtype = CacheDType::kFp8E4M3;
  c.head_size = 120;
  test::Rng rng(3);
  HostProblem pb = build_problem(c, rng);
  ASSERT_EQ(pb.key_cache.view.shape[2], 8);
  ASSERT_NO_THROW(detail::validate_attention(pb.params, "op"));
  PagedAttentionParams p = pb.params;
  p.key_cache.shape[2] = 7;
  expect_error([&] { detail::validate_attention(p, "op"); }, kInv, {"key_cache dimension 2 is 7", "= 8"});
}

struct WsCase {
  const char* name;
  std::function<void(V2Workspace&)> mutate;
  std::vector<std::string> needles;
};

TEST(Validate, EveryV2WorkspaceErrorPath) {
  HostProblem pb = base_problem();
  const auto ws_buf = pb.make_workspace();  // 3 partitions for max_seq_len 1100
  const V2Workspace good = ws_buf.views();
  const detail::AttentionShape s = detail::validate_attention(pb.params, "paged_attention_v2");
  ASSERT_EQ(s.max_num_partitions, 3);
  ASSERT_NO_THROW(detail::validate_v2_workspace(pb.params, s, good));
  // A larger workspace is fine too.
  const auto big = pb.make_workspace(5);
  EXPECT_NO_THROW(detail::validate_v2_workspace(pb.params, s, big.views()));

  std::vector<WsCase> cases;
  for (const char* name : {"exp_sums", "max_logits"}) {
    const std::string n = name;
    auto pick = [n](V2Workspace& w) -> TensorView& { return n == "exp_sums" ? w.exp_sums : w.max_logits; };
    cases.push_back({name, [pick](auto& w) { pick(w).data = nullptr; }, {n + " is missing"}});
    cases.push_back({name, [pick](auto& w) { pick(w).ndim = 2; }, {n + " must have 3 dimensions", "got 2"}});
    cases.push_back({name, [pick](auto& w) { pick(w).dtype = DType::kFloat16; }, {n + " has dtype float16", "must be float32"}});
    cases.push_back({name, [pick](auto& w) { pick(w).device = kCuda; }, {n + " is on cuda:0"}});
    cases.push_back({name, [pick](auto& w) { pick(w).shape[0] = 1; }, {n + " dimension 0 is 1", "num_seqs = 2"}});
    cases.push_back({name, [pick](auto& w) { pick(w).shape[1] = 2; }, {n + " dimension 1 is 2", "num_heads = 4"}});
    cases.push_back({name, [pick](auto& w) { pick(w).shape[2] = 2; },
                     {n + " has room for 2 partitions", "max_seq_len 1100", "= 3"}});
    cases.push_back({name, [pick](auto& w) { pick(w).strides[1] = 4; }, {n + " must be contiguous"}});
  }
  cases.push_back({"partition mismatch", [](auto& w) { w.max_logits.shape[2] = 4; w.max_logits.strides[1] = 4;
                     w.max_logits.strides[0] = 16; },
                   {"exp_sums and max_logits disagree", "3 vs 4"}});
  cases.push_back({"tmp_out null", [](auto& w) { w.tmp_out = TensorView{}; }, {"tmp_out is missing"}});
  cases.push_back({"tmp_out ndim", [](auto& w) { w.tmp_out.ndim = 3; }, {"tmp_out must have 4 dimensions", "got 3"}});
  cases.push_back({"tmp_out dtype", [](auto& w) { w.tmp_out.dtype = DType::kFloat32; },
                   {"tmp_out has dtype float32", "must be float16"}});
  cases.push_back({"tmp_out device", [](auto& w) { w.tmp_out.device = kCuda; }, {"tmp_out is on cuda:0"}});
  cases.push_back({"tmp_out dim 0", [](auto& w) { w.tmp_out.shape[0] = 3; }, {"tmp_out dimension 0 is 3"}});
  cases.push_back({"tmp_out dim 1", [](auto& w) { w.tmp_out.shape[1] = 1; }, {"tmp_out dimension 1 is 1"}});
  cases.push_back({"tmp_out dim 2", [](auto& w) { w.tmp_out.shape[2] = 2; }, {"tmp_out dimension 2 is 2", "= 3"}});
  cases.push_back({"tmp_out dim 3", [](auto& w) { w.tmp_out.shape[3] = 32; }, {"tmp_out dimension 3 is 32", "head_size = 64"}});
  cases.push_back({"tmp_out strides", [](auto& w) { w.tmp_out.strides[2] = 65; }, {"tmp_out must be contiguous"}});

  for (const WsCase& c : cases) {
    SCOPED_TRACE(c.name);
    V2Workspace w = good;
    c.mutate(w);
    auto needles = c.needles;
    needles.push_back("paged_attention_v2: ");
    expect_error([&] { detail::validate_v2_workspace(pb.params, s, w); }, kInv, needles);
  }
}

TEST(Validate, CheckedModeReportsFirstBadEntry) {
  const HostProblem base = base_problem();  // lens {5, 1100}, 70 table columns, table pad -1
  auto run = [](HostProblem& pb) {
    const detail::AttentionShape s = detail::validate_attention(pb.params, "op");
    detail::check_attention_data_host(pb.params, s);
  };
  {  // unused table entries (-1 past each sequence's end) are never checked
    HostProblem pb = base;
    EXPECT_NO_THROW(run(pb));
  }
  {
    HostProblem pb = base;
    static_cast<std::int32_t*>(pb.seq_lens.view.data)[1] = 1101;
    expect_error([&] { run(pb); }, ErrorCode::kDataError, {"seq_lens[1] = 1101", "max_seq_len 1100"});
  }
  {
    HostProblem pb = base;
    const int cap = pb.max_blocks_per_seq * 16;
    pb.params.max_seq_len = cap + 100;
    static_cast<std::int32_t*>(pb.seq_lens.view.data)[1] = cap + 1;
    expect_error([&] { run(pb); }, ErrorCode::kDataError,
                 {"seq_lens[1] = " + std::to_string(cap + 1), "block_tables holds", std::to_string(cap) + " tokens"});
  }
  {
    HostProblem pb = base;
    static_cast<std::int32_t*>(pb.seq_lens.view.data)[0] = -3;
    expect_error([&] { run(pb); }, ErrorCode::kDataError, {"seq_lens[0] = -3", "negative"});
  }
  {
    HostProblem pb = base;
    pb.table(1, 2) = -1;
    expect_error([&] { run(pb); }, ErrorCode::kDataError, {"block_tables[1][2] = -1", "sequence 1", "logical block 2"});
  }
  {
    HostProblem pb = base;
    pb.table(1, 68) = static_cast<std::int32_t>(pb.num_blocks);  // last block of the 1100-token sequence
    expect_error([&] { run(pb); }, ErrorCode::kDataError,
                 {"block_tables[1][68] = " + std::to_string(pb.num_blocks), "num_blocks = " + std::to_string(pb.num_blocks)});
  }
  {  // the first offending sequence is reported
    HostProblem pb = base;
    pb.table(0, 0) = 1 << 30;
    pb.table(1, 0) = -5;
    expect_error([&] { run(pb); }, ErrorCode::kDataError, {"block_tables[0][0] = 1073741824", "sequence 0"});
  }
}

}  // namespace
}  // namespace pagedattn
