// The host-side block manager (SPEC §6): accounting, sharing, copy-on-write, errors that
// change nothing, a randomized run against a model that stores actual token data, and
// prefix caching: reuse, LRU eviction, watermark, counters, a randomized run against a
// content-keyed model, and reused blocks holding exactly what a fresh prefill writes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/check.h"
#include "pagedattn/block_manager.h"
#include "pagedattn/cache_ops.h"
#include "pagedattn/types.h"

namespace pagedattn {
namespace {

// every BlockManager error is kInvalidArgument
void expect_error(const std::function<void()>& f, const std::string& needle) {
  test::expect_error(f, ErrorCode::kInvalidArgument, needle);
}

/// Everything observable about a manager, for "the error changed nothing" checks.
struct Snapshot {
  int free_blocks;
  int evictable;
  std::vector<int> refs;
  std::vector<std::optional<std::uint64_t>> hashes;
  std::vector<std::int64_t> stats;
  std::map<std::int64_t, std::pair<std::int64_t, std::vector<std::int32_t>>> seqs;
  bool operator==(const Snapshot& o) const {
    return free_blocks == o.free_blocks && evictable == o.evictable && refs == o.refs && hashes == o.hashes &&
           stats == o.stats && seqs == o.seqs;
  }
};

std::vector<std::int64_t> stats_of(const BlockManager& m) {
  const PrefixCacheStats& c = m.prefix_cache_stats();
  return {c.queries, c.query_tokens, c.query_blocks, c.hit_tokens, c.hit_blocks, c.evictions};
}

Snapshot snapshot(const BlockManager& m, const std::vector<std::int64_t>& ids) {
  Snapshot s;
  s.free_blocks = m.num_free_blocks();
  s.evictable = m.num_evictable_blocks();
  s.stats = stats_of(m);
  for (int b = 0; b < m.num_blocks(); ++b) s.hashes.push_back(m.cached_block_hash(b));
  for (int b = 0; b < m.num_blocks(); ++b) s.refs.push_back(m.ref_count(b));
  for (auto id : ids)
    if (m.has_sequence(id)) s.seqs[id] = {m.seq_len(id), m.block_table(id)};
  return s;
}

TEST(BlockManager, AllocateAndFreeAccounting) {
  BlockManager m(10, 4);
  EXPECT_EQ(m.num_blocks(), 10);
  EXPECT_EQ(m.block_size(), 4);
  EXPECT_EQ(m.num_free_blocks(), 10);
  EXPECT_TRUE(m.can_allocate(40));
  EXPECT_FALSE(m.can_allocate(41));
  const auto slots = m.allocate(7, 10);  // 3 blocks: 0, 1, 2
  EXPECT_EQ(m.block_table(7), (std::vector<std::int32_t>{0, 1, 2}));
  EXPECT_EQ(m.seq_len(7), 10);
  ASSERT_EQ(slots.size(), 10u);
  for (int t = 0; t < 10; ++t) {
    EXPECT_EQ(slots[t], m.block_table(7)[t / 4] * 4 + t % 4);
    EXPECT_EQ(m.slot(7, t), slots[t]);
  }
  EXPECT_EQ(m.num_free_blocks(), 7);
  EXPECT_TRUE(m.can_allocate(28));
  EXPECT_FALSE(m.can_allocate(29));
  EXPECT_EQ(m.ref_count(1), 1);
  EXPECT_EQ(m.ref_count(5), 0);

  m.allocate(-3, 0);  // an empty sequence holds no block
  EXPECT_TRUE(m.block_table(-3).empty());
  EXPECT_EQ(m.num_sequences(), 2);

  // Appending: 2 more fit in block 2, the third opens a new block.
  EXPECT_EQ(m.blocks_needed_to_append(7, 2), 0);
  EXPECT_EQ(m.blocks_needed_to_append(7, 3), 1);
  const TokensAppend a = m.append_tokens(7, 3);
  EXPECT_TRUE(a.copies.empty());
  EXPECT_EQ(a.slots, (std::vector<std::int64_t>{2 * 4 + 2, 2 * 4 + 3, 3 * 4 + 0}));
  EXPECT_EQ(m.num_free_blocks(), 6);
  const SlotAppend s = m.append_slot(-3);
  EXPECT_FALSE(s.copy.has_value());
  EXPECT_EQ(s.slot, 4 * 4);

  m.free(7);
  EXPECT_EQ(m.num_free_blocks(), 9);
  EXPECT_FALSE(m.has_sequence(7));
  m.free(-3);
  EXPECT_EQ(m.num_free_blocks(), 10);
  EXPECT_EQ(m.num_sequences(), 0);
}

TEST(BlockManager, ForkSharesBlocksAndCopiesOnWrite) {
  BlockManager m(8, 4);
  m.allocate(1, 6);  // blocks 0, 1 (block 1 half full)
  m.fork(1, 2);
  EXPECT_EQ(m.block_table(2), m.block_table(1));
  EXPECT_EQ(m.seq_len(2), 6);
  EXPECT_EQ(m.ref_count(0), 2);
  EXPECT_EQ(m.ref_count(1), 2);
  EXPECT_EQ(m.num_free_blocks(), 6);

  // The child appends into the shared half-full block: it gets a copy.
  EXPECT_EQ(m.blocks_needed_to_append(2, 1), 1);
  const SlotAppend a = m.append_slot(2);
  ASSERT_TRUE(a.copy.has_value());
  EXPECT_EQ(*a.copy, (BlockCopy{1, 2}));
  EXPECT_EQ(a.slot, 2 * 4 + 2);
  EXPECT_EQ(m.block_table(2), (std::vector<std::int32_t>{0, 2}));
  EXPECT_EQ(m.ref_count(1), 1);
  EXPECT_EQ(m.ref_count(2), 1);
  EXPECT_EQ(m.ref_count(0), 2);

  // The parent now owns block 1 alone: it writes in place.
  const SlotAppend b = m.append_slot(1);
  EXPECT_FALSE(b.copy.has_value());
  EXPECT_EQ(b.slot, 1 * 4 + 2);

  m.free(1);  // block 0 survives (the child holds it), block 1 returns
  EXPECT_EQ(m.ref_count(0), 1);
  EXPECT_EQ(m.ref_count(1), 0);
  EXPECT_EQ(m.num_free_blocks(), 6);

  // Full last block: appending opens a fresh block, nothing to copy.
  m.allocate(3, 8);
  m.fork(3, 4);
  const TokensAppend c = m.append_tokens(4, 5);
  EXPECT_TRUE(c.copies.empty());
  EXPECT_EQ(m.block_table(4).size(), 4u);
  EXPECT_EQ(m.block_table(4)[0], m.block_table(3)[0]);
  EXPECT_EQ(m.block_table(4)[1], m.block_table(3)[1]);
}

TEST(BlockManager, ForkPrefix) {
  BlockManager m(8, 4);
  m.allocate(1, 10);  // blocks 0, 1, 2
  m.fork_prefix(1, 2, 5);  // tokens 0..4: blocks 0 and 1 (block 1 partly)
  EXPECT_EQ(m.seq_len(2), 5);
  EXPECT_EQ(m.block_table(2), (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(m.ref_count(1), 2);
  EXPECT_EQ(m.ref_count(2), 1);
  const TokensAppend a = m.append_tokens(2, 4);  // into block 1 (shared): copy, then one new block
  ASSERT_EQ(a.copies.size(), 1u);
  EXPECT_EQ(a.copies[0].src, 1);
  const std::int32_t fresh = a.copies[0].dst;
  EXPECT_EQ(a.slots[0], fresh * 4 + 1);
  EXPECT_EQ(a.slots[2], fresh * 4 + 3);
  EXPECT_EQ(m.block_table(2).size(), 3u);
  m.fork_prefix(1, 3, 0);  // an empty prefix is allowed
  EXPECT_TRUE(m.block_table(3).empty());
  m.fork_prefix(1, 4, 8);  // an exactly full prefix shares 2 blocks; appending needs no copy
  EXPECT_EQ(m.blocks_needed_to_append(4, 1), 1);
  EXPECT_TRUE(m.append_slot(4).copy == std::nullopt);
}

TEST(BlockManager, FillBlockTables) {
  BlockManager m(16, 8);
  m.allocate(10, 20);
  m.allocate(11, 1);
  m.allocate(12, 0);
  std::vector<std::int32_t> bt(3 * 4, 99), lens(3, 99);
  EXPECT_EQ(m.max_blocks({10, 11, 12}), 3);
  m.fill_block_tables({11, 10, 12}, 4, bt.data(), lens.data(), -1);
  EXPECT_EQ(lens, (std::vector<std::int32_t>{1, 20, 0}));
  EXPECT_EQ(bt, (std::vector<std::int32_t>{3, -1, -1, -1, 0, 1, 2, -1, -1, -1, -1, -1}));
  std::vector<std::int32_t> small(3 * 2, 7);
  expect_error([&] { m.fill_block_tables({11, 10}, 2, small.data(), nullptr); },
               "sequence 10 (row 1) has 3 blocks but max_blocks_per_seq is 2");
  EXPECT_EQ(small, std::vector<std::int32_t>(6, 7)) << "written despite the error";
  expect_error([&] { m.fill_block_tables({11, 99}, 4, bt.data(), nullptr); }, "unknown sequence id 99");
}

TEST(BlockManager, ErrorsChangeNothing) {
  expect_error([] { BlockManager(0, 16); }, "num_blocks is 0; must be positive");
  expect_error([] { BlockManager(4, -1); }, "block_size is -1; must be positive");

  BlockManager m(4, 4);
  m.allocate(1, 6);  // 2 blocks
  m.fork(1, 2);
  const std::vector<std::int64_t> ids = {1, 2, 3};
  const Snapshot before = snapshot(m, ids);
  expect_error([&] { m.allocate(1, 1); }, "sequence id 1 already exists");
  expect_error([&] { m.allocate(3, 9); }, "out of blocks for sequence 3: needs 3 free blocks but only 2 of 4 are free");
  expect_error([&] { m.allocate(3, -1); }, "num_tokens is -1");
  expect_error([&] { m.fork(9, 3); }, "unknown sequence id 9");
  expect_error([&] { m.fork(1, 2); }, "sequence id 2 already exists");
  expect_error([&] { m.fork_prefix(1, 3, 7); }, "num_tokens is 7; must be in [0, 6]");
  // Append 7 to sequence 2: copy of shared block 1 + 2 new blocks = 3 > 2 free.
  EXPECT_EQ(m.blocks_needed_to_append(2, 7), 3);
  EXPECT_FALSE(m.can_append(2, 7));
  expect_error([&] { m.append_tokens(2, 7); }, "out of blocks for sequence 2: needs 3 free blocks");
  expect_error([&] { m.append_tokens(5, 1); }, "unknown sequence id 5");
  expect_error([&] { m.append_slot(5); }, "unknown sequence id 5");
  expect_error([&] { m.append_tokens(1, -2); }, "num_tokens is -2");
  expect_error([&] { m.free(3); }, "BlockManager::free: unknown sequence id 3");
  expect_error([&] { m.seq_len(3); }, "unknown sequence id 3");
  expect_error([&] { m.slot(1, 6); }, "token 6 is outside [0, 6) for sequence 1");
  expect_error([&] { m.ref_count(4); }, "block 4 is outside [0, 4)");
  EXPECT_TRUE(snapshot(m, ids) == before);
  EXPECT_TRUE(m.can_append(2, 6));
  m.append_tokens(2, 6);  // exactly fits: copy + 1 new block
  EXPECT_EQ(m.num_free_blocks(), 0);
  EXPECT_FALSE(m.can_allocate(1));
  EXPECT_TRUE(m.can_allocate(0));
}

// Random operations against a model that keeps the token data itself: every physical block
// is an array of token values, written through the slots the manager returns (after
// carrying out its copies). After every step each live sequence must read back exactly its
// own tokens, refcounts must equal the number of tables holding a block, and a failed
// operation must change nothing.
TEST(BlockManager, RandomizedAgainstModel) {
  PAGEDATTN_TEST_RNG(rng);
  for (int round = 0; round < 20; ++round) {
    const int num_blocks = static_cast<int>(rng.randint(1, 40));
    const int bs = static_cast<int>(rng.randint(1, 8));
    BlockManager m(num_blocks, bs);
    std::vector<std::vector<std::int64_t>> memory(num_blocks, std::vector<std::int64_t>(bs, -1));
    std::map<std::int64_t, std::vector<std::int64_t>> model;  // seq -> token values
    std::int64_t next_value = 0;
    std::vector<std::int64_t> ids;
    for (std::int64_t i = 0; i < 12; ++i) ids.push_back(i * 1000003 - 5);

    auto write = [&](const std::vector<std::int64_t>& slots, std::vector<std::int64_t>& tokens) {
      for (std::int64_t s : slots) {
        memory[s / bs][s % bs] = next_value;
        tokens.push_back(next_value++);
      }
    };
    auto blocks_in_use = [&] {
      std::vector<int> refs(num_blocks, 0);
      for (auto& [id, toks] : model)
        for (std::int32_t b : m.block_table(id)) ++refs[b];
      return refs;
    };
    auto shared_last = [&](std::int64_t id) {
      const auto& t = m.block_table(id);
      return !t.empty() && blocks_in_use()[t.back()] > 1;
    };

    for (int step = 0; step < 300; ++step) {
      SCOPED_TRACE("round " + std::to_string(round) + " step " + std::to_string(step));
      const std::int64_t id = ids[rng.randint(0, ids.size() - 1)];
      const bool live = model.count(id) != 0;
      const int op = static_cast<int>(rng.randint(0, 3));
      const Snapshot before = snapshot(m, ids);
      bool expect_ok = true;
      try {
        if (op == 0) {  // allocate
          const std::int64_t n = rng.randint(0, 3 * bs);
          expect_ok = !live && (n + bs - 1) / bs <= m.num_free_blocks();
          const auto slots = m.allocate(id, n);
          write(slots, model[id]);
        } else if (op == 1) {  // append (to a live or an unknown id)
          const std::int64_t n = rng.randint(0, 2 * bs);
          const std::int64_t len = live ? static_cast<std::int64_t>(model[id].size()) : 0;
          const std::int64_t need = live ? (len + n + bs - 1) / bs - (len + bs - 1) / bs +
                                               ((n > 0 && len % bs != 0 && shared_last(id)) ? 1 : 0)
                                         : 0;
          if (live) EXPECT_EQ(m.blocks_needed_to_append(id, n), need);
          const int free_before = m.num_free_blocks();
          expect_ok = live && need <= free_before;
          const TokensAppend a = m.append_tokens(id, n);
          EXPECT_EQ(m.num_free_blocks(), free_before - need);
          for (const BlockCopy& c : a.copies) memory[c.dst] = memory[c.src];
          write(a.slots, model[id]);
        } else if (op == 2) {  // fork or fork_prefix
          const std::int64_t child = ids[rng.randint(0, ids.size() - 1)];
          const std::int64_t len = live ? static_cast<std::int64_t>(model[id].size()) : 0;
          const std::int64_t n = rng.coin() ? len : rng.randint(0, len);
          expect_ok = live && model.count(child) == 0;
          if (n == len && rng.coin()) m.fork(id, child);
          else m.fork_prefix(id, child, n);
          model[child].assign(model[id].begin(), model[id].begin() + n);
        } else {  // free
          expect_ok = live;
          m.free(id);
          model.erase(id);
        }
        EXPECT_TRUE(expect_ok) << "op " << op << " on sequence " << id << " succeeded where the model says it fails";
      } catch (const Error& e) {
        EXPECT_FALSE(expect_ok) << "op " << op << " failed where the model says it succeeds: " << e.what();
        EXPECT_TRUE(snapshot(m, ids) == before) << "failed op changed state: " << e.what();
      }
      // Invariants.
      const std::vector<int> refs = blocks_in_use();
      int used = 0;
      for (int b = 0; b < num_blocks; ++b) {
        ASSERT_EQ(m.ref_count(b), refs[b]) << "block " << b;
        used += refs[b] > 0;
      }
      ASSERT_EQ(m.num_free_blocks(), num_blocks - used);
      ASSERT_EQ(m.num_sequences(), static_cast<int>(model.size()));
      for (auto& [sid, toks] : model) {
        ASSERT_EQ(m.seq_len(sid), static_cast<std::int64_t>(toks.size()));
        ASSERT_EQ(static_cast<std::int64_t>(m.block_table(sid).size()), (std::int64_t(toks.size()) + bs - 1) / bs);
        for (std::size_t t = 0; t < toks.size(); ++t) {
          const std::int64_t s = m.slot(sid, std::int64_t(t));
          ASSERT_EQ(memory[s / bs][s % bs], toks[t]) << "sequence " << sid << " token " << t << " was overwritten";
        }
      }
    }
  }
}

}  // namespace
TEST(BlockManager, SequencesStayWithinInt32Tokens) {
  BlockManager m(4, 16);
  expect_error([&] { m.allocate(1, std::int64_t(1) << 31); }, "would exceed 2147483647 tokens");
  EXPECT_FALSE(m.has_sequence(1));
  m.allocate(2, 3);
  expect_error([&] { m.append_tokens(2, (std::int64_t(1) << 31) - 3); }, "would exceed 2147483647 tokens");
  EXPECT_EQ(m.seq_len(2), 3);
}

// ---------------------------------------------------------------------------------------
// Prefix caching
// ---------------------------------------------------------------------------------------

std::vector<std::int32_t> iota_tokens(int n, std::int32_t first) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) t[i] = first + i;
  return t;
}

TEST(BlockManagerPrefixCache, ReusesTheLongestCachedPrefix) {
  BlockManager m(10, 4);
  const auto prompt = iota_tokens(10, 100);  // blocks 0, 1 full, block 2 partial
  const PrefixAllocation a = m.allocate(1, prompt);
  EXPECT_EQ(a.num_cached_tokens, 0);
  EXPECT_EQ(a.slots.size(), 10u);
  EXPECT_EQ(m.block_table(1), (std::vector<std::int32_t>{0, 1, 2}));
  EXPECT_EQ(m.num_cached_blocks(), 2);  // only full blocks are cached
  EXPECT_TRUE(m.cached_block_hash(0).has_value());
  EXPECT_TRUE(m.cached_block_hash(1).has_value());
  EXPECT_FALSE(m.cached_block_hash(2).has_value());
  const std::uint64_t h0 = BlockManager::hash_block(0, prompt.data(), 4);
  EXPECT_EQ(*m.cached_block_hash(0), h0);
  EXPECT_EQ(*m.cached_block_hash(1), BlockManager::hash_block(h0, prompt.data() + 4, 4));

  // Same first 8 tokens, then different ones: 2 blocks shared, 8 tokens cached.
  auto other = prompt;
  other[8] = 7;
  other.push_back(8);
  EXPECT_EQ(m.num_cached_prefix_tokens(other), 8);
  const PrefixAllocation b = m.allocate(2, other);
  EXPECT_EQ(b.num_cached_tokens, 8);
  EXPECT_EQ(m.block_table(2), (std::vector<std::int32_t>{0, 1, 3}));
  EXPECT_EQ(m.ref_count(0), 2);
  EXPECT_EQ(m.ref_count(1), 2);
  EXPECT_EQ(b.slots[8], 3 * 4 + 0);

  // A different first block: nothing cached, though the second block's tokens match.
  auto shifted = prompt;
  shifted[0] = -1;
  EXPECT_EQ(m.num_cached_prefix_tokens(shifted), 0);

  // Freed cached blocks stay reusable and count as free (evictable).
  m.free(1);
  m.free(2);
  EXPECT_EQ(m.num_free_blocks(), 10);
  EXPECT_EQ(m.num_evictable_blocks(), 2);
  EXPECT_EQ(m.num_uncached_free_blocks(), 8);
  const PrefixAllocation c = m.allocate(3, iota_tokens(8, 100));
  EXPECT_EQ(c.num_cached_tokens, 8);
  EXPECT_EQ(m.block_table(3), (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(m.num_evictable_blocks(), 0);
  EXPECT_EQ(m.ref_count(0), 1);

  // Appending after a full cached block opens a new block: the cached one is never written.
  const TokensAppend d = m.append_tokens(3, std::vector<std::int32_t>{108, 109, 110, 111});
  EXPECT_TRUE(d.copies.empty());
  EXPECT_EQ(m.block_table(3).size(), 3u);
  EXPECT_EQ(d.slots[0], m.block_table(3)[2] * 4);
  EXPECT_EQ(m.num_cached_blocks(), 3);  // the filled block is registered
  EXPECT_EQ(m.num_cached_prefix_tokens(iota_tokens(13, 100)), 12);

  const PrefixCacheStats& st = m.prefix_cache_stats();
  EXPECT_EQ(st.queries, 3);
  EXPECT_EQ(st.query_tokens, 10 + 11 + 8);
  EXPECT_EQ(st.query_blocks, 2 + 2 + 2);
  EXPECT_EQ(st.hit_blocks, 4);
  EXPECT_EQ(st.hit_tokens, 16);
  EXPECT_EQ(st.evictions, 0);
  m.reset_prefix_cache_stats();
  EXPECT_EQ(stats_of(m), std::vector<std::int64_t>(6, 0));
}

TEST(BlockManagerPrefixCache, EvictsLeastRecentlyFreedOnlyWhenNoUncachedBlockIsLeft) {
  BlockManager m(6, 2);
  m.allocate(1, std::vector<std::int32_t>{1, 2, 3, 4});  // blocks 0, 1
  m.allocate(2, std::vector<std::int32_t>{5, 6, 7, 8});  // blocks 2, 3
  m.free(1);  // eviction order: 1, 0 (a sequence's tail first)
  m.free(2);  // then 3, 2
  EXPECT_EQ(m.num_evictable_blocks(), 4);
  EXPECT_EQ(m.num_uncached_free_blocks(), 2);

  // Two uncached blocks are left: they go first, nothing is evicted.
  m.allocate(3, 4);
  EXPECT_EQ(m.block_table(3), (std::vector<std::int32_t>{4, 5}));
  EXPECT_EQ(m.prefix_cache_stats().evictions, 0);
  EXPECT_EQ(m.num_cached_blocks(), 4);

  // Now every new block is an eviction, in LRU order: 1, then 0.
  m.allocate(4, 3);
  EXPECT_EQ(m.block_table(4), (std::vector<std::int32_t>{1, 0}));
  EXPECT_EQ(m.prefix_cache_stats().evictions, 2);
  EXPECT_FALSE(m.cached_block_hash(0).has_value());
  EXPECT_FALSE(m.cached_block_hash(1).has_value());
  EXPECT_EQ(m.num_cached_prefix_tokens({1, 2, 3, 4}), 0);
  EXPECT_EQ(m.num_cached_prefix_tokens({5, 6, 7, 8}), 4);

  // A hit on an evictable block takes it out of the eviction order; the next eviction skips it.
  m.free(3);  // blocks 4, 5: uncached, back to the uncached free list
  const PrefixAllocation a = m.allocate(5, std::vector<std::int32_t>{5, 6, 9});  // reuses block 2
  EXPECT_EQ(a.num_cached_tokens, 2);
  EXPECT_EQ(m.block_table(5)[0], 2);
  m.allocate(6, 4);  // the uncached free block, then evicts block 3 (2 is in use)
  EXPECT_EQ(m.prefix_cache_stats().evictions, 3);
  EXPECT_FALSE(m.cached_block_hash(3).has_value());
  EXPECT_TRUE(m.cached_block_hash(2).has_value());
  EXPECT_EQ(m.num_free_blocks(), 0);

  // Reset: in-use cached blocks are forgotten too, the counters stay.
  m.free(5);
  EXPECT_EQ(m.num_evictable_blocks(), 1);
  EXPECT_EQ(m.reset_prefix_cache(), 1);
  EXPECT_EQ(m.num_evictable_blocks(), 0);
  EXPECT_EQ(m.num_uncached_free_blocks(), 2);
  EXPECT_EQ(m.num_cached_blocks(), 0);
  EXPECT_EQ(m.num_cached_prefix_tokens({5, 6}), 0);
  EXPECT_EQ(m.prefix_cache_stats().evictions, 3);
}

TEST(BlockManagerPrefixCache, Watermark) {
  BlockManager m(10, 4);
  EXPECT_EQ(m.watermark_blocks(), 0);
  m.set_watermark(0.25);
  EXPECT_EQ(m.watermark_blocks(), 2);
  m.set_watermark_blocks(3);
  EXPECT_EQ(m.watermark_blocks(), 3);
  expect_error([&] { m.set_watermark_blocks(11); }, "blocks is 11; must be in [0, 10]");
  expect_error([&] { m.set_watermark(-0.5); }, "fraction is -0.5; must be in [0, 1]");
  EXPECT_EQ(m.watermark_blocks(), 3);

  EXPECT_TRUE(m.can_allocate(28));  // 7 blocks leave 3
  EXPECT_FALSE(m.can_allocate(29));
  const auto prompt = iota_tokens(28, 0);
  EXPECT_FALSE(m.can_allocate(iota_tokens(29, 0)));
  expect_error([&] { m.allocate(1, 29); }, "needs 8 free blocks but only 10 of 10 are free and the watermark keeps 3 free");
  expect_error([&] { m.allocate(1, iota_tokens(29, 0)); }, "the watermark keeps 3 free");
  EXPECT_EQ(m.prefix_cache_stats().queries, 0) << "a refused allocation is not a query";
  m.allocate(1, prompt);
  EXPECT_EQ(m.num_free_blocks(), 3);
  // Appends are not held back by the watermark.
  m.append_tokens(1, 12);
  EXPECT_EQ(m.num_free_blocks(), 0);
  EXPECT_FALSE(m.can_allocate(0)) << "already below the watermark";

  // Reusing cached blocks that are in use costs no free block; unreferenced ones do.
  m.set_watermark_blocks(0);
  m.free(1);
  m.allocate(2, 36);  // the 3 uncached free blocks and 6 evictions
  m.set_watermark_blocks(1);
  EXPECT_EQ(m.num_evictable_blocks(), 1);  // prompt block 0 (evicted last)
  EXPECT_EQ(m.num_cached_prefix_tokens(prompt), 4);
  EXPECT_FALSE(m.can_allocate(iota_tokens(4, 0))) << "the reused block is the last free one";
  m.set_watermark_blocks(0);
  EXPECT_TRUE(m.can_allocate(iota_tokens(4, 0)));
  m.allocate(3, iota_tokens(4, 0));
  m.set_watermark_blocks(0);
  EXPECT_TRUE(m.can_allocate(iota_tokens(4, 0)));  // in use: shared at no cost
  EXPECT_EQ(m.allocate(4, iota_tokens(4, 0)).num_cached_tokens, 4);
  EXPECT_EQ(m.ref_count(m.block_table(3)[0]), 2);
}

TEST(BlockManagerPrefixCache, ForkCopyOnWriteAndDuplicates) {
  BlockManager m(10, 4);
  m.allocate(1, iota_tokens(6, 0));  // block 0 cached, block 1 partial
  m.fork(1, 2);
  EXPECT_EQ(m.ref_count(0), 2);
  // The child fills the shared partial block: copy first, then its copy is registered.
  const TokensAppend a = m.append_tokens(2, std::vector<std::int32_t>{6, 7});
  ASSERT_EQ(a.copies.size(), 1u);
  EXPECT_EQ(a.copies[0].src, 1);
  const std::int32_t copy = a.copies[0].dst;
  EXPECT_TRUE(m.cached_block_hash(copy).has_value());
  EXPECT_FALSE(m.cached_block_hash(1).has_value());
  // The parent fills its own block 1 with the same tokens: already cached, so it stays uncached.
  m.append_slot(1, 6);
  m.append_slot(1, 7);
  EXPECT_FALSE(m.cached_block_hash(1).has_value());
  EXPECT_EQ(m.num_cached_blocks(), 2);
  // Different tokens: a second cached block for a different prefix.
  m.fork_prefix(1, 3, 6);
  m.append_tokens(3, std::vector<std::int32_t>{60, 70});
  EXPECT_EQ(m.num_cached_blocks(), 3);
  // fork_prefix inside a cached full block: the child's first append copies it, even once the
  // child is the block's only user; the block stays cached and unwritten.
  m.fork_prefix(2, 5, 6);
  EXPECT_EQ(m.block_table(5).back(), copy);
  m.allocate(6, iota_tokens(8, 0));  // reuses blocks 0 and `copy`
  m.free(6);
  const TokensAppend p = m.append_tokens(5, std::vector<std::int32_t>{9});
  ASSERT_EQ(p.copies.size(), 1u);
  EXPECT_EQ(p.copies[0].src, copy);
  EXPECT_TRUE(m.cached_block_hash(copy).has_value());
  m.free(5);
  // A count-only append makes the content unknown: nothing after it is cached.
  m.append_tokens(3, 4);
  EXPECT_EQ(m.num_cached_blocks(), 3);
  m.append_tokens(3, std::vector<std::int32_t>{1, 2, 3, 4});
  EXPECT_EQ(m.num_cached_blocks(), 3);
  // Sequences made by count never cache.
  m.allocate(4, 8);
  m.append_tokens(4, std::vector<std::int32_t>{1, 2, 3, 4});
  EXPECT_EQ(m.num_cached_blocks(), 3);
  m.free(1);
  m.free(2);
  m.free(3);
  m.free(4);
  EXPECT_EQ(m.num_free_blocks(), 10);
  EXPECT_EQ(m.num_evictable_blocks(), 3);
  EXPECT_EQ(m.num_cached_prefix_tokens(iota_tokens(8, 0)), 8);
}

// Random operations under pool pressure against a model that keys cached content by the
// whole token prefix of a block (no hashes): hits, registrations, duplicates, LRU
// evictions, watermark refusals and counters must all match the model, and every live
// sequence must read back its own tokens from a simulated cache (so a reused block holds
// the right tokens, and no block is written while another sequence needs its content).
TEST(BlockManagerPrefixCache, RandomizedAgainstModel) {
  PAGEDATTN_TEST_RNG(rng);
  using Tokens = std::vector<std::int32_t>;
  std::int64_t total_hits = 0, total_evictions = 0, watermark_refusals = 0;
  for (int round = 0; round < 30; ++round) {
    const int num_blocks = static_cast<int>(rng.randint(1, 24));
    const int bs = static_cast<int>(rng.randint(1, 4));
    const int vocab = static_cast<int>(rng.randint(1, 3));  // tiny: many shared prefixes
    BlockManager m(num_blocks, bs);
    std::vector<std::vector<std::int32_t>> memory(num_blocks, std::vector<std::int32_t>(bs, -1));
    struct Seq {
      Tokens tokens;
      bool tracked = false;
    };
    std::map<std::int64_t, Seq> model;
    std::map<Tokens, std::int32_t> cache;  // block content with its whole prefix -> block
    std::map<std::int32_t, Tokens> cached_block;
    std::deque<std::int32_t> lru;  // unreferenced cached blocks, oldest first
    std::vector<std::int64_t> stats(6, 0);
    int watermark = 0;
    std::vector<std::int64_t> ids;
    for (std::int64_t i = 0; i < 8; ++i) ids.push_back(i * 7 - 3);

    auto random_tokens = [&](std::int64_t n) {
      Tokens t;
      for (std::int64_t i = 0; i < n; ++i) t.push_back(static_cast<std::int32_t>(rng.randint(0, vocab - 1)));
      return t;
    };
    auto refs_now = [&] {
      std::vector<int> refs(num_blocks, 0);
      for (auto& [id, s] : model)
        for (std::int32_t b : m.block_table(id)) ++refs[b];
      return refs;
    };
    auto free_count = [&] {
      int used = 0;
      for (int r : refs_now()) used += r > 0;
      return num_blocks - used;
    };
    // The model's eviction of `n` blocks taken from the pool (uncached free blocks first).
    std::int64_t uncached = 0;  // uncached free blocks before the step
    auto take = [&](std::int64_t n) {
      std::vector<std::int32_t> evicted;
      for (std::int64_t i = 0; i < n - uncached; ++i) {
        const std::int32_t b = lru.front();
        lru.pop_front();
        cache.erase(cached_block[b]);
        cached_block.erase(b);
        evicted.push_back(b);
        ++stats[5];
      }
      return evicted;
    };
    // Registers the full blocks [from, to) of a tracked sequence that are not cached yet.
    auto register_blocks = [&](std::int64_t id, std::int64_t from, std::int64_t to) {
      const Seq& s = model[id];
      if (!s.tracked) return;
      for (std::int64_t i = from; i < to; ++i) {
        Tokens key(s.tokens.begin(), s.tokens.begin() + (i + 1) * bs);
        if (cache.count(key)) continue;
        const std::int32_t b = m.block_table(id)[i];
        cache[key] = b;
        cached_block[b] = key;
      }
    };
    auto write = [&](const std::vector<std::int64_t>& slots, const Tokens& toks, std::size_t first) {
      for (std::size_t i = 0; i < slots.size(); ++i) memory[slots[i] / bs][slots[i] % bs] = toks[first + i];
    };

    for (int step = 0; step < 250; ++step) {
      SCOPED_TRACE("round " + std::to_string(round) + " step " + std::to_string(step) + " blocks " +
                   std::to_string(num_blocks) + " block_size " + std::to_string(bs));
      const std::int64_t id = ids[rng.randint(0, ids.size() - 1)];
      const bool live = model.count(id) != 0;
      const int op = static_cast<int>(rng.randint(0, 9));
      const Snapshot before = snapshot(m, ids);
      const std::vector<int> refs_before = refs_now();
      uncached = free_count() - static_cast<std::int64_t>(lru.size());
      bool expect_ok = true;
      std::vector<std::int32_t> evicted;
      try {
        if (op <= 2) {  // allocate with token ids
          const Tokens toks = random_tokens(rng.randint(0, 4 * bs));
          std::int64_t hits = 0;
          while (hits < std::int64_t(toks.size()) / bs &&
                 cache.count(Tokens(toks.begin(), toks.begin() + (hits + 1) * bs)))
            ++hits;
          std::int64_t need = (std::int64_t(toks.size()) + bs - 1) / bs - hits;
          std::vector<std::int32_t> hit_blocks;
          for (std::int64_t i = 0; i < hits; ++i) {
            hit_blocks.push_back(cache[Tokens(toks.begin(), toks.begin() + (i + 1) * bs)]);
            need += refs_before[hit_blocks.back()] == 0;
          }
          EXPECT_EQ(m.num_cached_prefix_tokens(toks), hits * bs);
          expect_ok = !live && need + watermark <= free_count();
          watermark_refusals += !live && need <= free_count() && !expect_ok;
          EXPECT_EQ(m.can_allocate(toks), need + watermark <= free_count());
          const PrefixAllocation a = m.allocate(id, toks);
          for (std::int32_t b : hit_blocks) lru.erase(std::remove(lru.begin(), lru.end(), b), lru.end());
          evicted = take((std::int64_t(toks.size()) + bs - 1) / bs - hits);
          stats[0] += 1;
          stats[1] += std::int64_t(toks.size());
          stats[2] += std::int64_t(toks.size()) / bs;
          stats[3] += hits * bs;
          stats[4] += hits;
          ASSERT_EQ(a.num_cached_tokens, hits * bs);
          model[id] = Seq{toks, true};
          const auto& table = m.block_table(id);
          ASSERT_EQ(std::vector<std::int32_t>(table.begin(), table.begin() + hits), hit_blocks);
          // The caller writes only the tokens that were not cached; the cached ones must be
          // in memory already.
          write(std::vector<std::int64_t>(a.slots.begin() + hits * bs, a.slots.end()), toks, hits * bs);
          register_blocks(id, hits, std::int64_t(toks.size()) / bs);
        } else if (op == 3) {  // allocate by count
          const std::int64_t n = rng.randint(0, 3 * bs);
          const std::int64_t need = (n + bs - 1) / bs;
          expect_ok = !live && need + watermark <= free_count();
          EXPECT_EQ(m.can_allocate(n), need + watermark <= free_count());
          const auto slots = m.allocate(id, n);
          evicted = take(need);
          model[id] = Seq{random_tokens(n), false};
          write(slots, model[id].tokens, 0);
        } else if (op <= 5) {  // append, with token ids or by count
          const std::int64_t n = rng.randint(0, 2 * bs);
          const bool with_ids = rng.coin(0.8);
          const std::int64_t len = live ? std::int64_t(model[id].tokens.size()) : 0;
          std::int64_t need = 0;
          if (live) {
            need = (len + n + bs - 1) / bs - (len + bs - 1) / bs;
            const std::int32_t last = len > 0 ? m.block_table(id).back() : -1;
            if (n > 0 && len % bs != 0 && (refs_before[last] > 1 || cached_block.count(last))) ++need;
            EXPECT_EQ(m.blocks_needed_to_append(id, n), need);
          }
          expect_ok = live && need <= free_count();
          const Tokens toks = random_tokens(n);
          const TokensAppend a = with_ids ? m.append_tokens(id, toks) : m.append_tokens(id, n);
          evicted = take(need);
          for (const BlockCopy& c : a.copies) {
            memory[c.dst] = memory[c.src];
            if (refs_before[c.src] == 1) lru.push_back(c.src);  // a cached block left partial by fork_prefix
          }
          Seq& s = model[id];
          s.tokens.insert(s.tokens.end(), toks.begin(), toks.end());
          write(a.slots, s.tokens, std::size_t(len));
          if (with_ids) register_blocks(id, len / bs, (len + n) / bs);
          else if (n > 0) s.tracked = false;
        } else if (op == 6) {  // fork or fork_prefix
          const std::int64_t child = ids[rng.randint(0, ids.size() - 1)];
          const std::int64_t len = live ? std::int64_t(model[id].tokens.size()) : 0;
          const std::int64_t n = rng.coin() ? len : rng.randint(0, len);
          expect_ok = live && model.count(child) == 0;
          if (n == len && rng.coin()) m.fork(id, child);
          else m.fork_prefix(id, child, n);
          Seq c = model[id];
          c.tokens.resize(std::size_t(n));
          model[child] = c;
        } else if (op <= 8) {  // free
          expect_ok = live;
          m.free(id);
          const auto table = before.seqs.at(id).second;
          std::vector<int> refs = refs_before;
          for (auto b = table.rbegin(); b != table.rend(); ++b)
            if (--refs[*b] == 0 && cached_block.count(*b)) lru.push_back(*b);
          model.erase(id);
        } else {  // watermark change or cache reset
          if (rng.coin(0.7)) {
            watermark = static_cast<int>(rng.randint(0, num_blocks / 3));
            m.set_watermark_blocks(watermark);
          } else {
            EXPECT_EQ(m.reset_prefix_cache(), static_cast<int>(cache.size()));
            cache.clear();
            cached_block.clear();
            lru.clear();
          }
        }
        EXPECT_TRUE(expect_ok) << "op " << op << " on sequence " << id << " succeeded where the model says it fails";
      } catch (const Error& e) {
        EXPECT_FALSE(expect_ok) << "op " << op << " failed where the model says it succeeds: " << e.what();
        EXPECT_TRUE(snapshot(m, ids) == before) << "failed op changed state: " << e.what();
      }
      // Evicted blocks went to the sequence that needed them.
      for (std::int32_t b : evicted) {
        const auto& table = m.block_table(id);
        ASSERT_NE(std::find(table.begin(), table.end(), b), table.end()) << "evicted block " << b << " not reused";
      }
      // Invariants: exact ref counts, no leak, the cached set and the eviction order's size,
      // the counters, and every sequence's tokens in memory.
      const std::vector<int> refs = refs_now();
      int used = 0;
      for (int b = 0; b < num_blocks; ++b) {
        ASSERT_EQ(m.ref_count(b), refs[b]) << "block " << b;
        used += refs[b] > 0;
        ASSERT_EQ(m.cached_block_hash(b).has_value(), cached_block.count(b) == 1) << "block " << b;
      }
      for (std::int32_t b : lru) ASSERT_EQ(refs[b], 0) << "evictable block " << b << " is referenced";
      ASSERT_EQ(m.num_free_blocks(), num_blocks - used);
      ASSERT_EQ(m.num_evictable_blocks(), static_cast<int>(lru.size()));
      ASSERT_EQ(m.num_uncached_free_blocks(), num_blocks - used - static_cast<int>(lru.size()));
      ASSERT_EQ(m.num_cached_blocks(), static_cast<int>(cache.size()));
      ASSERT_EQ(stats_of(m), stats);
      ASSERT_EQ(m.num_sequences(), static_cast<int>(model.size()));
      for (auto& [sid, s] : model) {
        ASSERT_EQ(m.seq_len(sid), std::int64_t(s.tokens.size()));
        for (std::size_t t = 0; t < s.tokens.size(); ++t) {
          const std::int64_t sl = m.slot(sid, std::int64_t(t));
          ASSERT_EQ(memory[sl / bs][sl % bs], s.tokens[t]) << "sequence " << sid << " token " << t;
        }
      }
      for (auto& [key, b] : cache)  // a cached block holds its tokens
        for (int i = 0; i < bs; ++i) ASSERT_EQ(memory[b][i], key[key.size() - bs + i]) << "cached block " << b;
    }
    total_hits += stats[4];
    total_evictions += stats[5];
  }
  // The run reached the interesting cases.
  EXPECT_GT(total_hits, 0);
  EXPECT_GT(total_evictions, 0);
  EXPECT_GT(watermark_refusals, 0);
}

// A reused block holds exactly the bytes a fresh prefill of the same prefix writes: one
// sequence writes a prompt's K/V with reshape_and_cache (CPU backend) and is freed, other
// allocations run under pressure, then a second sequence with the same prefix and a
// different tail writes only its uncached tokens. Every block of its table must equal, byte
// for byte, the corresponding block of a second cache filled by a fresh prefill of its whole
// prompt (K/V here are a deterministic function of the token prefix, as a model's are).
TEST(BlockManagerPrefixCache, ReusedBlocksHoldFreshPrefillBytes) {
  PAGEDATTN_TEST_RNG(rng);
  const int bs = 8, kvh = 2, d = 32, x = 8, num_blocks = 12;  // float16: x = 16 / 2
  const DType dt = DType::kFloat16;
  auto make_cache = [&] {
    std::pair<test::HostTensor, test::HostTensor> c{test::make_tensor(dt, {num_blocks, kvh, d / x, bs, x}),
                                                    test::make_tensor(dt, {num_blocks, kvh, d, bs})};
    for (auto* t : {&c.first, &c.second})
      for (auto& byte : t->storage) byte = static_cast<std::uint8_t>(rng.randint(0, 255));
    return c;
  };
  // K/V of token t: a function of tokens[0..t] (seeded by its prefix hash).
  auto kv_for = [&](const std::vector<std::int32_t>& toks, std::int64_t first, std::int64_t count) {
    std::pair<test::HostTensor, test::HostTensor> kv{test::make_tensor(dt, {count, kvh, d}),
                                                    test::make_tensor(dt, {count, kvh, d})};
    for (std::int64_t i = 0; i < count; ++i) {
      test::Rng r(BlockManager::hash_block(0, toks.data(), static_cast<std::size_t>(first + i + 1)));
      test::fill_uniform(static_cast<std::uint16_t*>(kv.first.base()) + i * kvh * d, dt, kvh * d, -4, 4, r);
      test::fill_uniform(static_cast<std::uint16_t*>(kv.second.base()) + i * kvh * d, dt, kvh * d, -4, 4, r);
    }
    return kv;
  };
  auto write = [&](std::pair<test::HostTensor, test::HostTensor>& cache, const std::vector<std::int32_t>& toks,
                   const std::vector<std::int64_t>& slots, std::int64_t first) {
    const std::int64_t n = std::int64_t(toks.size()) - first;
    if (n == 0) return;
    auto kv = kv_for(toks, first, n);
    test::HostTensor sm = test::make_tensor(DType::kInt64, {n});
    std::memcpy(sm.base(), slots.data() + first, static_cast<std::size_t>(n) * sizeof(std::int64_t));
    ReshapeAndCacheParams p;
    p.key = kv.first.view;
    p.value = kv.second.view;
    p.key_cache = cache.first.view;
    p.value_cache = cache.second.view;
    p.slot_mapping = sm.view;
    p.checked = true;
    reshape_and_cache(p);
  };
  auto block_bytes = [&](const test::HostTensor& t, std::int32_t b) {
    const std::size_t per = t.storage.size() / num_blocks;
    return std::vector<std::uint8_t>(t.storage.begin() + b * per, t.storage.begin() + (b + 1) * per);
  };

  std::vector<std::int32_t> prompt(static_cast<std::size_t>(3 * bs + 5));
  for (auto& t : prompt) t = static_cast<std::int32_t>(rng.randint(0, 50000));
  BlockManager m(num_blocks, bs);
  auto cache = make_cache();
  const PrefixAllocation a = m.allocate(1, prompt);
  ASSERT_EQ(a.num_cached_tokens, 0);
  write(cache, prompt, a.slots, 0);
  m.free(1);
  // Pressure: take every uncached block and one more, evicting the prompt's last full block.
  m.allocate(2, std::int64_t(m.num_uncached_free_blocks() + 1) * bs);
  EXPECT_EQ(m.prefix_cache_stats().evictions, 1);

  std::vector<std::int32_t> second(prompt.begin(), prompt.begin() + 3 * bs);
  second.push_back(-7);
  m.free(2);
  const PrefixAllocation b = m.allocate(3, second);
  ASSERT_EQ(b.num_cached_tokens, 2 * bs);
  write(cache, second, b.slots, b.num_cached_tokens);

  BlockManager fresh_m(num_blocks, bs);
  auto fresh = make_cache();
  const PrefixAllocation f = fresh_m.allocate(1, second);
  write(fresh, second, f.slots, 0);
  const auto& table = m.block_table(3);
  const auto& fresh_table = fresh_m.block_table(1);
  ASSERT_EQ(table.size(), fresh_table.size());
  for (std::size_t i = 0; i + 1 < table.size(); ++i) {  // full blocks: every byte
    EXPECT_EQ(block_bytes(cache.first, table[i]), block_bytes(fresh.first, fresh_table[i])) << "key block " << i;
    EXPECT_EQ(block_bytes(cache.second, table[i]), block_bytes(fresh.second, fresh_table[i])) << "value block " << i;
  }
  // The partial last block: the written token's bytes (slot 0 of it) in both caches.
  auto kv_last = kv_for(second, std::int64_t(second.size()) - 1, 1);
  for (auto* pair : {&cache, &fresh}) {
    const std::int32_t blk = pair == &cache ? table.back() : fresh_table.back();
    const auto* vc = static_cast<const std::uint16_t*>(pair->second.base()) + std::int64_t(blk) * kvh * d * bs;
    const auto* v = static_cast<const std::uint16_t*>(kv_last.second.base());
    for (int h = 0; h < kvh; ++h)
      for (int e = 0; e < d; ++e) ASSERT_EQ(vc[(h * d + e) * bs + 0], v[h * d + e]);
  }
}

}  // namespace pagedattn
