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
                 "batch 1-4 at 32k-128k, head sizes 64-256, block sizes 8/16/32, mixed lengths, alibi",
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
                 }),
                 {}});

  all.push_back({"latency", "small latency-bound shapes (batch 1-8, seq <= 2048), eager and inside a CUDA graph", true,
                 expand({
                     {"latency", {F16}, {KV_AUTO}, {{32, 8}, {32, 32}}, {128}, {16}, {1, 2, 4, 8}, {128, 512, 1 * K, 2 * K}},
                 }),
                 expand({
                     {"latency", {F16}, {KV_AUTO}, {{8, 2}}, {128}, {16}, {1, 4}, {128, 512}},
                 })});
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
