// The named sweeps, as data: each group is the cartesian product of its axes (the sequence
// length innermost, so one configuration's points are adjacent in tables and plots).
#include "bench_sweeps.h"

#include <algorithm>
#include <utility>

namespace pagedattn::bench {
namespace {

constexpr DType F32 = DType::kFloat32;
constexpr DType F16 = DType::kFloat16;
constexpr DType BF16 = DType::kBFloat16;
constexpr CacheDType KV_AUTO = CacheDType::kAuto;
constexpr CacheDType E4M3 = CacheDType::kFp8E4M3;
constexpr CacheDType E5M2 = CacheDType::kFp8E5M2;
constexpr int K = 1024;

}  // namespace

std::vector<Case> expand(const std::vector<Group>& groups) {
  std::vector<Case> out;
  auto seen = [&out](const Case& c) {  // an earlier group already holds this exact case
    return std::any_of(out.begin(), out.end(), [&c](const Case& o) {
      return o.config_key() == c.config_key() && o.seq_len == c.seq_len;
    });
  };
  for (const Group& g : groups)
    for (DType dt : g.dtypes)
      for (CacheDType kv : g.kv)
        for (auto [hq, hkv] : g.heads)
          for (int hs : g.head_sizes)
            for (int bs : g.block_sizes)
              for (int b : g.batches)
                for (int l : g.seq_lens) {
                  Case c;
                  c.group = g.label;
                  c.dtype = dt;
                  c.kv_cache_dtype = kv;
                  c.num_heads = hq;
                  c.num_kv_heads = hkv;
                  c.head_size = hs;
                  c.block_size = bs;
                  c.batch = b;
                  c.seq_len = l;
                  c.dist = g.dist;
                  c.alibi = g.alibi;
                  if (!seen(c)) out.push_back(c);
                }
  return out;
}

namespace {

/// A list of cases where each variant names the case it is measured against. add() returns
/// the 1-based index (= the case's index in the run) of its case; a case the list already
/// holds is not repeated, and keeps its first label and group.
struct VariantList {
  std::vector<Case> cases;
  int add(const Case& c) {
    for (std::size_t i = 0; i < cases.size(); ++i)
      if (cases[i].config_key() == c.config_key() && cases[i].seq_len == c.seq_len) return static_cast<int>(i) + 1;
    cases.push_back(c);
    return static_cast<int>(cases.size());
  }
};

/// The shapes of one backend's variants sweep.
struct VariantShapes {
  std::pair<int, int> heads;
  int head_size, block_size;
  int batch, seq_len;                   ///< the main shape: soft-cap, lse, q_len, fp8 scales
  int win_batch, win_short, win_long;   ///< window: plain at win_short vs a win_short-token window at win_long
  int lat_batch, lat_short, lat_long;   ///< the latency-bound group, the same comparisons at small sizes
};

std::vector<Case> variant_cases(const VariantShapes& v) {
  VariantList list;
  auto shape = [&v](const char* group, const char* label, int batch, int seq_len) {
    Case c;
    c.group = group;
    c.label = label;
    c.dtype = F16;
    c.kv_cache_dtype = KV_AUTO;
    c.num_heads = v.heads.first;
    c.num_kv_heads = v.heads.second;
    c.head_size = v.head_size;
    c.block_size = v.block_size;
    c.batch = batch;
    c.seq_len = seq_len;
    return c;
  };
  // `variant` measured against case `base`, within `goal` x its time (0: no goal)
  auto against = [&list](Case variant, int base, double goal) {
    variant.baseline = base;
    variant.goal = goal;
    return list.add(variant);
  };
  constexpr double kWindowGoal = 1.15;  // a window of W tokens at any length: within 1.15x of plain at W
  constexpr double kQLenGoal = 1.25;    // 4 query tokens per sequence: within 1.25x of one at the same KV

  // soft-cap, lse, q_len: one shape, against the plain call
  const int plain = list.add(shape("plain", "plain", v.batch, v.seq_len));
  Case c = shape("soft-cap", "soft-cap 50", v.batch, v.seq_len);
  c.soft_cap = 50.0f;
  against(c, plain, 0.0);
  c = shape("lse", "lse", v.batch, v.seq_len);
  c.lse = true;
  against(c, plain, 0.0);
  c = shape("q_len", "q_len 1 (varlen)", v.batch, v.seq_len);
  c.q_len = 1;
  against(c, plain, 0.0);
  c = shape("q_len", "q_len 4", v.batch, v.seq_len);
  c.q_len = 4;
  against(c, plain, kQLenGoal);

  // window: W tokens at win_long against plain at W = win_short (window_left W - 1: a Hugging
  // Face sliding_window of W, whose span is exactly W tokens, block-aligned); plain at win_long
  // shows what the window saves
  const int win_plain = list.add(shape("window", "plain short", v.win_batch, v.win_short));
  c = shape("window", "plain long", v.win_batch, v.win_long);
  against(c, win_plain, 0.0);
  c = shape("window", "window", v.win_batch, v.win_long);
  c.window_left = v.win_short - 1;
  against(c, win_plain, kWindowGoal);

  // per-kv-head fp8 scales against per-tensor ones
  Case f8 = shape("fp8-scales", "fp8 per-tensor", v.batch, v.seq_len);
  f8.kv_cache_dtype = E4M3;
  const int fp8_plain = list.add(f8);
  c = f8;
  c.label = "fp8 per-head";
  c.per_head_scales = true;
  against(c, fp8_plain, 0.0);

  // everything at once: with the window against plain fp8 at the window's length, without it
  // against plain fp8 at the same length
  Case f8_short = shape("all", "fp8 plain short", v.win_batch, v.win_short);
  f8_short.kv_cache_dtype = E4M3;
  const int fp8_short = list.add(f8_short);
  auto all_of = [](Case x, int window_left) {
    x.window_left = window_left;
    x.soft_cap = 50.0f;
    x.q_len = 4;
    x.lse = true;
    x.per_head_scales = true;
    return x;
  };
  c = shape("all", "all", v.win_batch, v.win_long);
  c.kv_cache_dtype = E4M3;
  against(all_of(c, v.win_short - 1), fp8_short, 0.0);
  c = shape("all", "all but window", v.batch, v.seq_len);
  c.kv_cache_dtype = E4M3;
  against(all_of(c, -1), fp8_plain, 0.0);

  // latency-bound sizes (the sweep times every case inside a CUDA graph too)
  const int lat = list.add(shape("latency", "plain", v.lat_batch, v.lat_short));
  c = shape("latency", "soft-cap 50", v.lat_batch, v.lat_short);
  c.soft_cap = 50.0f;
  against(c, lat, 0.0);
  c = shape("latency", "lse", v.lat_batch, v.lat_short);
  c.lse = true;
  against(c, lat, 0.0);
  c = shape("latency", "q_len 4", v.lat_batch, v.lat_short);
  c.q_len = 4;
  against(c, lat, 0.0);
  c = shape("latency", "window", v.lat_batch, v.lat_long);
  c.window_left = v.lat_short - 1;
  against(c, lat, 0.0);
  c = shape("latency", "all fp16", v.lat_batch, v.lat_long);
  c.window_left = v.lat_short - 1;
  c.soft_cap = 50.0f;
  c.q_len = 4;
  c.lse = true;
  against(c, lat, 0.0);
  return list.cases;
}

std::vector<Sweep> build() {
  std::vector<Sweep> all;

  all.push_back({"quick", "a few shapes across dtypes, GQA, fp8 and V1/V2 territory (the default run)", false,
                 expand({
                     {"quick", {F16}, {KV_AUTO}, {{32, 8}}, {128}, {16}, {8}, {1 * K, 8 * K}},
                     {"quick", {F16}, {KV_AUTO}, {{32, 32}}, {128}, {16}, {32}, {4 * K}},
                     {"quick", {BF16}, {E4M3}, {{32, 8}}, {128}, {16}, {16}, {4 * K}},
                     {"quick", {F16}, {KV_AUTO}, {{32, 8}}, {128}, {16}, {1}, {32 * K}},
                 }),
                 expand({
                     {"quick", {F32}, {KV_AUTO}, {{8, 8}}, {64}, {16}, {4}, {512}},
                     {"quick", {F16}, {KV_AUTO}, {{8, 2}}, {128}, {16}, {4}, {256, 2 * K}},
                     {"quick", {BF16}, {E4M3}, {{8, 2}}, {128}, {32}, {2}, {1 * K}},
                     {"quick", {F16}, {E5M2}, {{4, 4}}, {256}, {8}, {2}, {600}},
                     {"quick", {F16}, {KV_AUTO}, {{8, 8}}, {96}, {16}, {6}, {1500}, SeqDist::kUniform, true},
                 })});

  all.push_back({"issue3",
                 "issue 3's table and goals: MHA fp16/bf16 large KV, GQA groups 2/4/6/7/8, fp8 e4m3/e5m2, "
                 "batch 1-4 at 32k-128k, head sizes 64-256, block sizes 8/16/32, mixed lengths, alibi, "
                 "groups 16/32 and MQA",
                 false,
                 expand({
                     {"mha", {F16, BF16}, {KV_AUTO}, {{32, 32}}, {128}, {16}, {32}, {2 * K, 4 * K, 8 * K, 16 * K, 32 * K}},
                     {"mha-head64", {F16}, {KV_AUTO}, {{32, 32}}, {64}, {16}, {32}, {4 * K, 16 * K}},
                     {"gqa", {F16}, {KV_AUTO}, {{32, 16}, {32, 8}, {48, 8}, {56, 8}, {64, 8}}, {128}, {16}, {8, 64},
                      {4 * K, 16 * K}},
                     {"gqa-b128", {F16}, {KV_AUTO}, {{64, 8}}, {128}, {16}, {128}, {2 * K}},
                     {"fp8", {F16}, {E4M3, E5M2}, {{32, 8}}, {128}, {16}, {32}, {2 * K, 8 * K, 32 * K}},
                     {"fp8-bf16", {BF16}, {E4M3, E5M2}, {{32, 8}}, {128}, {16}, {32}, {8 * K}},
                     {"long", {F16}, {KV_AUTO}, {{32, 8}, {32, 32}}, {128}, {16}, {1, 2, 4}, {32 * K, 64 * K, 128 * K}},
                     {"head-size", {F16}, {KV_AUTO}, {{32, 8}}, {64, 80, 96, 112, 120, 128, 192, 256}, {16}, {16}, {8 * K}},
                     {"block-size", {F16, BF16}, {KV_AUTO}, {{32, 8}}, {128}, {8, 16, 32}, {16}, {8 * K}},
                     {"mixed", {F16}, {KV_AUTO}, {{32, 8}}, {128}, {16}, {32}, {4 * K, 16 * K}, SeqDist::kUniform},
                     {"alibi", {F16}, {KV_AUTO}, {{32, 32}}, {128}, {16}, {16}, {8 * K}, SeqDist::kFixed, true},
                     // more than 8 rows per kv head: group 16, MQA (32 rows), group 32 over 2 kv heads
                     {"mqa", {F16}, {KV_AUTO}, {{32, 2}, {32, 1}, {64, 2}}, {128}, {16}, {16, 128}, {8 * K}},
                 }),
                 {}});

  all.push_back({"latency", "small latency-bound shapes (batch 1-8, seq <= 2048), eager and inside a CUDA graph", true,
                 expand({
                     {"latency", {F16}, {KV_AUTO}, {{32, 8}, {32, 32}}, {128}, {16}, {1, 2, 4, 8}, {128, 512, 1 * K, 2 * K}},
                 }),
                 expand({
                     {"latency", {F16}, {KV_AUTO}, {{8, 2}}, {128}, {16}, {1, 4}, {128, 512}},
                 })});

  all.push_back({"variants",
                 "SPEC 3b variants on the auto path, each against its plain baseline: fp16 32/8 head 128 block 16, "
                 "batch 32 at 8k (soft-cap 50, lse, q_len 1/4, fp8 e4m3 per-head vs per-tensor scales, all), "
                 "batch 8: a 4096-token window at 32k vs plain 4k; batch 4 at 1k/8k latency-bound; eager and in a "
                 "CUDA graph",
                 true,
                 variant_cases({{32, 8}, 128, 16, 32, 8 * K, 8, 4 * K, 32 * K, 4, 1 * K, 8 * K}),
                 variant_cases({{8, 2}, 128, 16, 4, 1 * K, 2, 256, 2 * K, 2, 128, 1 * K})});
  return all;
}

}  // namespace

const std::vector<Sweep>& sweeps() {
  static const std::vector<Sweep> all = build();
  return all;
}

const Sweep* find_sweep(const std::string& name) {
  for (const Sweep& s : sweeps())
    if (s.name == name) return &s;
  return nullptr;
}

}  // namespace pagedattn::bench
