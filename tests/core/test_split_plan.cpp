// The auto path's split planner (core/split_plan.h): properties that must hold for every
// input, and the decisions measured on the H100 (docs/performance.md, v0.3).
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>

#include "common/test_util.h"
#include "core/split_plan.h"
#include "pagedattn/attention.h"

namespace pagedattn::detail {
namespace {

constexpr int kH100Sms = 132;

std::string describe(const SplitInputs& in) {
  std::ostringstream os;
  os << "num_seqs " << in.num_seqs << ", kv heads " << in.num_kv_heads << " x tiles " << in.head_tiles
     << ", max_seq_len " << in.max_seq_len << ", total_tokens " << in.total_tokens << ", batch_invariant "
     << in.batch_invariant << ", SMs " << in.sm_count << " x " << in.ctas_per_sm;
  return os.str();
}

SplitInputs shape(int num_seqs, int kv_heads, int max_len, int ctas_per_sm = 4, int tiles = 1) {
  SplitInputs in;
  in.num_seqs = num_seqs;
  in.num_kv_heads = kv_heads;
  in.head_tiles = tiles;
  in.max_seq_len = max_len;
  in.sm_count = kH100Sms;
  in.ctas_per_sm = ctas_per_sm;
  return in;
}

// A plan the kernels can run and the workspace can hold, for any input.
void expect_valid(const SplitInputs& in) {
  SCOPED_TRACE(describe(in));
  const SplitPlan plan = plan_splits(in);
  ASSERT_GE(plan.num_splits, 1);
  if (plan.num_splits == 1) {
    EXPECT_GE(plan.partition_size, in.max_seq_len) << "one split must cover the longest sequence";
  } else {
    EXPECT_EQ(plan.partition_size % 32, 0) << "partitions are whole 32-token tiles";
    EXPECT_EQ((in.max_seq_len + plan.partition_size - 1) / plan.partition_size, plan.num_splits)
        << "splits x partition must cover max_seq_len with no empty split";
    // the planner's own plans stop at 256 splits; batch-invariant plans are SPEC's partitions;
    // a pinned count is the ceiling it names
    EXPECT_LE(plan.num_splits, in.pinned_splits > 0   ? in.pinned_splits
                               : in.batch_invariant ? v2_max_num_partitions(in.max_seq_len)
                                                    : 256);
  }
  const int reserved = reserved_splits(in, plan);
  EXPECT_GE(reserved, plan.num_splits) << "the workspace must hold the plan";
  SplitInputs other = in;  // the workspace size depends on neither the hint nor the mode
  other.total_tokens = 0;
  other.batch_invariant = !in.batch_invariant;
  EXPECT_EQ(reserved_splits(other, plan_splits(other)), reserved);
}

TEST(SplitPlan, PropertiesHoldOnRandomShapes) {
  PAGEDATTN_TEST_RNG(rng);
  for (int i = 0; i < 3000; ++i) {
    SplitInputs in;
    in.num_seqs = static_cast<int>(rng.randint(1, 300));
    in.num_kv_heads = static_cast<int>(rng.randint(1, 64));
    in.head_tiles = static_cast<int>(rng.randint(1, 4));
    in.max_seq_len = static_cast<int>(rng.coin(0.2) ? rng.randint(0, 300) : rng.randint(1, 1 << 20));
    in.batch_invariant = rng.coin(0.2);
    const long long cap = static_cast<long long>(in.num_seqs) * in.max_seq_len;
    in.total_tokens = rng.coin(0.5) ? rng.randint(0, cap) : 0;
    in.sm_count = static_cast<int>(rng.randint(1, 200));
    in.ctas_per_sm = static_cast<int>(rng.randint(1, 8));
    in.pinned_splits = rng.coin(0.2) ? static_cast<int>(rng.randint(0, 400)) : 0;
    if (rng.coin(0.3)) {  // the time model (kernels with an SM alone)
      in.kv_bytes_per_token = rng.coin() ? 512 : static_cast<long long>(rng.randint(16, 4096));
      in.mem_bytes_per_us = static_cast<double>(rng.randint(1000000, 8000000));
      in.cta_tokens_per_us = static_cast<double>(rng.randint(10, 400));
    }
    expect_valid(in);
    if (in.cta_tokens_per_us > 0.0 && in.pinned_splits == 0 && !in.batch_invariant) {
      const SplitPlan plan = plan_splits(in);
      const long long ctas = static_cast<long long>(in.num_seqs) * in.num_kv_heads * in.head_tiles * plan.num_splits;
      if (plan.num_splits > 1)
        EXPECT_LE(ctas, static_cast<long long>(in.sm_count) * in.ctas_per_sm) << "the time model splits within one wave; "
                                                                               << describe(in);
    }
    if (in.pinned_splits > 0) {
      const SplitPlan fixed = fixed_split_plan(in.max_seq_len, in.pinned_splits);
      EXPECT_EQ(plan_splits(in).num_splits, fixed.num_splits) << "a pinned count overrides the model and the mode";
      EXPECT_EQ(plan_splits(in).partition_size, fixed.partition_size);
    }
    if (HasFailure()) return;
  }
}

TEST(SplitPlan, BatchInvariantUsesSpecPartitions) {
  SplitInputs in = shape(3, 8, 9000);
  in.batch_invariant = true;
  const SplitPlan plan = plan_splits(in);
  EXPECT_EQ(plan.partition_size, kPartitionSize);
  EXPECT_EQ(plan.num_splits, v2_max_num_partitions(9000));
  in.num_seqs = 1;  // a sequence's partitions do not depend on its batch-mates
  in.total_tokens = 100;
  EXPECT_EQ(plan_splits(in).partition_size, kPartitionSize);
  in.max_seq_len = 512;
  EXPECT_EQ(plan_splits(in).num_splits, 1);
}

TEST(SplitPlan, ShortSequencesRunInOnePass) {
  for (int len : {0, 1, 100, 128}) EXPECT_EQ(plan_splits(shape(1, 1, len)).num_splits, 1) << len;
}

// Few CTAs (batch 1, 8 kv heads): split to fill the resident slots, as measured on the H100
// (auto 67.6-87.9% against V2's 67.5-76.6% at 32k-128k).
TEST(SplitPlan, FewSequencesAreSplitToFillTheGpu) {
  for (int len : {32768, 131072}) {
    const SplitInputs in = shape(1, 8, len);
    const SplitPlan plan = plan_splits(in);
    SCOPED_TRACE(describe(in));
    const long long ctas = 8LL * plan.num_splits;
    EXPECT_GE(ctas, kH100Sms) << "every SM gets work";
    EXPECT_LE(ctas, 4LL * kH100Sms * 2) << "no more than two waves of resident slots";
  }
}

// A pinned split count (force_splits): partitions of 32-token multiples that cover the span, no
// more splits than asked, no empty split; one pass for 0-1 splits or a span of one tile.
TEST(SplitPlan, FixedPlanCoversTheSpan) {
  PAGEDATTN_TEST_RNG(rng);
  for (int i = 0; i < 2000; ++i) {
    const int len = static_cast<int>(rng.randint(0, 300000));
    const int n = static_cast<int>(rng.randint(0, 300));
    const SplitPlan p = fixed_split_plan(len, n);
    SCOPED_TRACE(::testing::Message() << "len " << len << " splits " << n);
    if (n <= 1 || len <= 32) {
      EXPECT_EQ(p.num_splits, 1);
      continue;
    }
    EXPECT_GE(p.num_splits, 1);
    EXPECT_LE(p.num_splits, n);
    if (p.num_splits == 1) {
      EXPECT_EQ(p.partition_size, 1 << 30);
      continue;
    }
    EXPECT_EQ(p.partition_size % 32, 0);
    EXPECT_GE(static_cast<long long>(p.partition_size) * p.num_splits, len);
    EXPECT_LT(static_cast<long long>(p.partition_size) * (p.num_splits - 1), len) << "an empty last split";
    if (HasFailure()) return;
  }
  EXPECT_EQ(fixed_split_plan(4096, 4).partition_size, 1024);
  EXPECT_EQ(fixed_split_plan(1000, 3).partition_size, 352);  // 334 rounded up to 32
  EXPECT_EQ(fixed_split_plan(1000, 3).num_splits, 3);
  EXPECT_EQ(fixed_split_plan(40, 8).num_splits, 2);  // 32-token partitions: two cover 40
}

// The time model (hopper_bulk_r8_deep on the H200: one CTA per SM, ~125 tokens/us a CTA at head
// 128, ~4270 GB/s): the plans measured best with pinned split counts (docs/performance.md v0.10).
TEST(SplitPlan, TimeModelMatchesMeasuredBestPlans) {
  auto deep = [](int num_seqs, int max_len, long long bytes_per_token = 512, int head = 128) {
    SplitInputs in = shape(num_seqs, 8, max_len, 1);
    in.kv_bytes_per_token = bytes_per_token;
    in.mem_bytes_per_us = 4.27e6;
    in.cta_tokens_per_us = 125.0 * 128 / std::max(head, 128);
    return plan_splits(in).num_splits;
  };
  EXPECT_EQ(deep(8, 4096), 1);    // 38.2 us; 2 splits 41.0
  EXPECT_EQ(deep(8, 2048), 1);    // 23.2 us; 2 splits 27.0
  EXPECT_EQ(deep(8, 512), 1);     // 10.0 us; 2 splits 13.9
  EXPECT_EQ(deep(16, 8192), 1);   // 128 CTAs: one wave already
  EXPECT_EQ(deep(1, 32768), 16);  // 41.3 us; 8 splits 41.9, 32 (two waves) 47.7
  EXPECT_EQ(deep(1, 131072), 16);  // 129.6 us; 32 splits 134.9
  EXPECT_EQ(deep(8, 8192, 256), 2);  // fp8: 44.5 us; one pass 71.5 (the CTAs' own rate)
  // a forced deep kernel on a grid beyond one wave: no split
  EXPECT_EQ(deep(64, 8192), 1);
  // the hint: a mixed batch's bytes are its tokens', partitions of at least 512
  SplitInputs in = shape(8, 8, 16384, 1);
  in.kv_bytes_per_token = 512;
  in.mem_bytes_per_us = 4.27e6;
  in.cta_tokens_per_us = 125.0;
  in.total_tokens = 8LL * 16384 / 4;
  const SplitPlan mixed = plan_splits(in);
  EXPECT_GT(mixed.num_splits, 1);
  EXPECT_GE(mixed.partition_size, kPartitionSize);
}

// One CTA per SM or more with uniform lengths: no split (V1 measured fastest there: 32/16
// batch 64 16k, bf16 + fp8 batch 32 8k).
TEST(SplitPlan, EnoughCtasMeansOnePass) {
  EXPECT_EQ(plan_splits(shape(64, 16, 16384, 4)).num_splits, 1);
  EXPECT_EQ(plan_splits(shape(32, 8, 8192, 3)).num_splits, 1);
  EXPECT_EQ(plan_splits(shape(128, 8, 2048, 2)).num_splits, 1);
}

// A mixed batch announced by total_tokens gets finer splits than the same shape assumed
// uniform (measured: 79.4% -> 90.4% at <= 16k), never finer than SPEC's partitions.
TEST(SplitPlan, MixedLengthHintSplitsFiner) {
  SplitInputs in = shape(32, 8, 16384);
  const SplitPlan uniform = plan_splits(in);
  in.total_tokens = 32LL * 16384 / 2;
  const SplitPlan mixed = plan_splits(in);
  EXPECT_GT(mixed.num_splits, uniform.num_splits);
  EXPECT_GE(mixed.partition_size, kPartitionSize);
  in.total_tokens = 32LL * 16384;  // the hint says uniform: same as no hint
  EXPECT_EQ(plan_splits(in).num_splits, uniform.num_splits);
}

}  // namespace
}  // namespace pagedattn::detail
