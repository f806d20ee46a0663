#include "core/split_plan.h"

#include <algorithm>

#include "pagedattn/attention.h"

namespace pagedattn::detail {

namespace {

constexpr int kMinPartition = 128;  // 4 tiles: one per warp
constexpr int kMaxSplits = 256;
constexpr SplitPlan kOnePass{1 << 30, 1};

/// What both cost models read of a call: base CTAs (sequence x kv head x head tile), the SMs
/// and resident slots, the longest span, the hinted tokens, and the most splits a candidate has.
struct CallShape {
  long long heads, base, sms, slots, max_len, total, most;
  bool mixed;  ///< the total_tokens hint says the lengths differ
};
CallShape call_shape(const SplitInputs& in) {
  CallShape c{};
  c.heads = static_cast<long long>(in.num_kv_heads) * in.head_tiles;
  c.base = in.num_seqs * c.heads;
  c.sms = std::max(in.sm_count, 1);
  c.slots = c.sms * std::max(in.ctas_per_sm, 1);
  c.max_len = in.max_seq_len;
  c.total = in.total_tokens;
  c.mixed = c.total > 0 && c.total < in.num_seqs * c.max_len;
  c.most = std::min<long long>(kMaxSplits, (c.max_len + kMinPartition - 1) / kMinPartition);
  return c;
}

/// Splits for a kernel whose CTA has an SM alone (one wave: CTAs <= SMs x ctas_per_sm) and
/// streams at most cta_tokens_per_us: a call's time is modelled as
///   (a split: kSplitUs) + max(all bytes / memory bandwidth, tokens of one CTA / its rate),
/// the cheapest plan wins, and among equal ones the most splits (with the memory the bound,
/// more CTAs share it more evenly). Fitted on hopper_bulk_r8_deep with pinned split counts on
/// the H200 (docs/performance.md, v0.10): a CTA consumes ~125 tokens/us at head 128 whether
/// the cache is 16-bit or fp8, and a split costs 3.6-5.9 us (the partials and the reduce
/// kernel behind the grid). Mixed lengths (the total_tokens hint): the bytes are the hinted
/// tokens', the longest CTA a whole partition; partitions of at least SPEC's 512 tokens, as
/// the workspace reserves.
SplitPlan time_model_plan(const SplitInputs& in) {
  constexpr double kSplitUs = 4.5;
  const CallShape c = call_shape(in);
  if (c.max_len <= kMinPartition || c.base <= 0) return kOnePass;
  const double tokens = static_cast<double>(c.heads) * static_cast<double>(c.mixed ? c.total : in.num_seqs * c.max_len);
  const double mem_us = tokens * static_cast<double>(in.kv_bytes_per_token) / in.mem_bytes_per_us;
  double best_us = -1.0;
  SplitPlan best = kOnePass;
  for (int n = 1; n <= c.most; ++n) {
    const SplitPlan cand = fixed_split_plan(static_cast<int>(c.max_len), n);
    if (cand.num_splits != n) continue;  // not reachable with 32-token partitions
    if (n > 1 && c.base * n > c.slots) break;  // a second wave
    if (c.mixed && n > 1 && cand.partition_size < kPartitionSize) continue;
    const long long part = n == 1 ? c.max_len : cand.partition_size;
    const double us = (n > 1 ? kSplitUs : 0.0) + std::max(mem_us, static_cast<double>(part) / in.cta_tokens_per_us);
    if (best_us < 0.0 || us <= best_us) {
      best_us = us;
      best = cand;
    }
  }
  return best;
}

}  // namespace

SplitPlan plan_splits(const SplitInputs& in) {
  // Splits along the sequence so the (sequence, kv head, head tile, split) grid keeps every
  // SM streaming to the end. For each candidate split count (32-token partitions) a cost in
  // token units is modelled and the cheapest wins, fewer splits on ties:
  //  - uniform lengths, fewer base CTAs than SMs: the CTAs are latency-bound, so fill the
  //    resident slots: waves x (tokens per CTA + fixed cost), waves = ceil(CTAs / slots);
  //  - uniform lengths, at least one base CTA per SM: the SMs share the memory bandwidth,
  //    so what counts is the busiest SM: ceil(CTAs / SMs) x (tokens per CTA + fixed cost);
  //  - mixed lengths (total_tokens hint below num_seqs x max_seq_len): CTAs of different
  //    sizes are scheduled greedily, so the makespan is about the average SM load plus one
  //    CTA: (all tokens + fixed cost x CTAs) / SMs + tokens per CTA; partitions of at least
  //    512 tokens, so the workspace (sized without the hint) always holds the plan.
  // A split adds the reduce. With the time model's inputs (kernels that have an SM alone and
  // are bound by their consumers, see time_model_plan) the plan is that model's instead.
  // The plan depends only on shapes, max_seq_len, the hint and the
  // device, never on the data, so the workspace size is fixed for a shape and the call is
  // safe under CUDA graph capture. Measured against fixed plans in docs/performance.md.
  constexpr long long kCtaCost = 96;  // fixed cost of a CTA (query load, merge, partial write) in tokens
  if (in.pinned_splits > 0) return fixed_split_plan(in.max_seq_len, in.pinned_splits);
  if (in.kv_bytes_per_token > 0 && in.mem_bytes_per_us > 0.0 && in.cta_tokens_per_us > 0.0 && !in.batch_invariant)
    return time_model_plan(in);
  const CallShape c = call_shape(in);
  const long long heads = c.heads, base = c.base, sms = c.sms, slots = c.slots, max_len = c.max_len, total = c.total;
  const bool mixed = c.mixed;
  if (in.batch_invariant) {  // the same partitions for a sequence whatever its batch-mates
    const int parts = v2_max_num_partitions(in.max_seq_len);
    return parts <= 1 ? kOnePass : SplitPlan{kPartitionSize, parts};
  }
  if (max_len <= kMinPartition || base <= 0) return kOnePass;
  long long best_cost = -1;
  SplitPlan best = kOnePass;
  for (int n = 1; n <= c.most; ++n) {
    const SplitPlan cand = fixed_split_plan(static_cast<int>(max_len), n);
    const long long splits = cand.num_splits;
    const long long part = splits == 1 ? (max_len + 31) / 32 * 32 : cand.partition_size;
    if (splits != n) continue;                      // not reachable with 32-token partitions
    if (mixed && part < kPartitionSize) continue;  // the workspace reserves SPEC's partitions at most
    long long cost;
    if (mixed) {  // expected CTAs: every sequence rounds its last partition up by half a CTA
      const long long ctas = heads * (total / part + (splits > 1 ? in.num_seqs / 2 : in.num_seqs));
      cost = (heads * total + ctas * kCtaCost) / sms + part + kCtaCost;
    } else if (base < sms) {
      cost = (base * splits + slots - 1) / slots * (part + kCtaCost);
    } else {
      cost = (base * splits + sms - 1) / sms * (part + kCtaCost);
    }
    if (splits > 1) cost += kCtaCost;  // the reduce
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = cand;
    }
  }
  return best;
}

SplitPlan fixed_split_plan(int max_seq_len, int num_splits) {
  if (num_splits <= 1 || max_seq_len <= 0) return SplitPlan{1 << 30, 1};
  const long long len = max_seq_len;
  const long long part = ((len + num_splits - 1) / num_splits + 31) / 32 * 32;
  const long long splits = (len + part - 1) / part;
  return splits <= 1 ? SplitPlan{1 << 30, 1} : SplitPlan{static_cast<int>(part), static_cast<int>(splits)};
}

int reserved_splits(const SplitInputs& in, const SplitPlan& plan) {
  // A hinted plan has partitions of at least 512 tokens and a batch-invariant one exactly
  // 512, so both fit in SPEC's partition count; the plan without either is `plan` itself
  // unless one of them was given.
  int unhinted = plan.num_splits;
  if (in.total_tokens != 0 || in.batch_invariant) {
    SplitInputs plain = in;
    plain.total_tokens = 0;
    plain.batch_invariant = false;
    unhinted = plan_splits(plain).num_splits;
  }
  return std::max(unhinted, v2_max_num_partitions(in.max_seq_len));
}

}  // namespace pagedattn::detail
