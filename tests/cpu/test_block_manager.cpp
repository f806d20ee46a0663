// The host-side block manager (SPEC §6): accounting, sharing, copy-on-write, errors that
// change nothing, and a randomized run against a model that stores actual token data.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/check.h"
#include "pagedattn/block_manager.h"
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
  std::vector<int> refs;
  std::map<std::int64_t, std::pair<std::int64_t, std::vector<std::int32_t>>> seqs;
  bool operator==(const Snapshot& o) const { return free_blocks == o.free_blocks && refs == o.refs && seqs == o.seqs; }
};

Snapshot snapshot(const BlockManager& m, const std::vector<std::int64_t>& ids) {
  Snapshot s;
  s.free_blocks = m.num_free_blocks();
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

}  // namespace pagedattn
