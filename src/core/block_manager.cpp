#include "pagedattn/block_manager.h"

#include <algorithm>
#include <limits>

#include "core/check.h"

namespace pagedattn {
namespace {
constexpr auto kInv = ErrorCode::kInvalidArgument;
}  // namespace

BlockManager::BlockManager(int num_blocks, int block_size) : block_size_(block_size) {
  if (num_blocks <= 0) detail::fail(kInv, "BlockManager: num_blocks is ", num_blocks, "; must be positive");
  if (block_size <= 0) detail::fail(kInv, "BlockManager: block_size is ", block_size, "; must be positive");
  ref_.assign(static_cast<std::size_t>(num_blocks), 0);
  free_.reserve(static_cast<std::size_t>(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // hand out 0, 1, 2, ... first
}

std::int64_t BlockManager::blocks_for_tokens(std::int64_t num_tokens) const {
  return num_tokens <= 0 ? 0 : (num_tokens + block_size_ - 1) / block_size_;
}

bool BlockManager::can_allocate(std::int64_t num_tokens) const {
  return num_tokens >= 0 && blocks_for_tokens(num_tokens) <= num_free_blocks();
}

std::int64_t BlockManager::blocks_needed_to_append(std::int64_t seq, std::int64_t num_tokens) const {
  const Sequence& s = get(seq, "blocks_needed_to_append");
  if (num_tokens <= 0) return 0;
  const std::int64_t fresh = blocks_for_tokens(s.len + num_tokens) - std::int64_t(s.blocks.size());
  // The first new token goes into the last block when that block has room; a shared last
  // block must be copied first.
  return fresh + (needs_cow(s) ? 1 : 0);
}

bool BlockManager::can_append(std::int64_t seq, std::int64_t num_tokens) const {
  return has_sequence(seq) && num_tokens >= 0 && blocks_needed_to_append(seq, num_tokens) <= num_free_blocks();
}

std::vector<std::int64_t> BlockManager::allocate(std::int64_t seq, std::int64_t num_tokens) {
  const char* op = "BlockManager::allocate";
  require_new(seq, op);
  if (num_tokens < 0) detail::fail(kInv, op, ": num_tokens is ", num_tokens, "; must be >= 0");
  require_len(seq, 0, num_tokens, op);
  require_free_blocks(blocks_for_tokens(num_tokens), op, seq);
  Sequence s;
  s.len = num_tokens;
  for (std::int64_t b = 0; b < blocks_for_tokens(num_tokens); ++b) s.blocks.push_back(take_block());
  std::vector<std::int64_t> slots(static_cast<std::size_t>(num_tokens));
  for (std::int64_t t = 0; t < num_tokens; ++t)
    slots[t] = std::int64_t(s.blocks[t / block_size_]) * block_size_ + t % block_size_;
  seqs_.emplace(seq, std::move(s));
  return slots;
}

void BlockManager::fork(std::int64_t parent, std::int64_t child) {
  fork_prefix(parent, child, get(parent, "BlockManager::fork").len);
}

void BlockManager::fork_prefix(std::int64_t parent, std::int64_t child, std::int64_t num_tokens) {
  const char* op = "BlockManager::fork_prefix";
  const Sequence& p = get(parent, op);
  require_new(child, op);
  if (num_tokens < 0 || num_tokens > p.len)
    detail::fail(kInv, op, ": num_tokens is ", num_tokens, "; must be in [0, ", p.len, "] (the length of sequence ",
                 parent, ")");
  Sequence c;
  c.len = num_tokens;
  c.blocks.assign(p.blocks.begin(), p.blocks.begin() + blocks_for_tokens(num_tokens));
  for (std::int32_t b : c.blocks) ++ref_[b];
  seqs_.emplace(child, std::move(c));
}

SlotAppend BlockManager::append_slot(std::int64_t seq) {
  TokensAppend r = append_tokens(seq, 1);
  SlotAppend a;
  a.slot = r.slots[0];
  if (!r.copies.empty()) a.copy = r.copies[0];
  return a;
}

TokensAppend BlockManager::append_tokens(std::int64_t seq, std::int64_t num_tokens) {
  const char* op = "BlockManager::append_tokens";
  Sequence& s = get(seq, op);
  if (num_tokens < 0) detail::fail(kInv, op, ": num_tokens is ", num_tokens, "; must be >= 0");
  require_len(seq, s.len, num_tokens, op);
  require_free_blocks(blocks_needed_to_append(seq, num_tokens), op, seq);

  TokensAppend r;
  if (num_tokens == 0) return r;
  if (needs_cow(s)) {
    const std::int32_t shared = s.blocks.back();
    const std::int32_t fresh = take_block();
    --ref_[shared];  // still >= 1: another sequence holds it
    s.blocks.back() = fresh;
    r.copies.push_back({shared, fresh});
  }
  r.slots.reserve(static_cast<std::size_t>(num_tokens));
  for (std::int64_t i = 0; i < num_tokens; ++i) {
    const std::int64_t t = s.len + i;
    if (t % block_size_ == 0) s.blocks.push_back(take_block());
    r.slots.push_back(std::int64_t(s.blocks[t / block_size_]) * block_size_ + t % block_size_);
  }
  s.len += num_tokens;
  return r;
}

void BlockManager::free(std::int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) detail::fail(kInv, "BlockManager::free: unknown sequence id ", seq);
  // Release in reverse so a freshly freed sequence's blocks come back in their original order.
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) release_block(*b);
  seqs_.erase(it);
}

std::int64_t BlockManager::seq_len(std::int64_t seq) const { return get(seq, "BlockManager::seq_len").len; }

const std::vector<std::int32_t>& BlockManager::block_table(std::int64_t seq) const {
  return get(seq, "BlockManager::block_table").blocks;
}

std::int64_t BlockManager::slot(std::int64_t seq, std::int64_t token) const {
  const Sequence& s = get(seq, "BlockManager::slot");
  if (token < 0 || token >= s.len)
    detail::fail(kInv, "BlockManager::slot: token ", token, " is outside [0, ", s.len, ") for sequence ", seq);
  return std::int64_t(s.blocks[token / block_size_]) * block_size_ + token % block_size_;
}

int BlockManager::ref_count(std::int32_t block) const {
  if (block < 0 || block >= num_blocks())
    detail::fail(kInv, "BlockManager::ref_count: block ", block, " is outside [0, ", num_blocks(), ")");
  return ref_[block];
}

int BlockManager::max_blocks(const std::vector<std::int64_t>& seqs) const {
  std::size_t m = 0;
  for (std::int64_t id : seqs) m = std::max(m, get(id, "BlockManager::max_blocks").blocks.size());
  return static_cast<int>(m);
}

void BlockManager::fill_block_tables(const std::vector<std::int64_t>& seqs, int max_blocks_per_seq,
                                     std::int32_t* block_tables, std::int32_t* seq_lens, std::int32_t pad) const {
  const char* op = "BlockManager::fill_block_tables";
  if (max_blocks_per_seq < 0)
    detail::fail(kInv, op, ": max_blocks_per_seq is ", max_blocks_per_seq, "; must be >= 0");
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& s = get(seqs[i], op);
    if (s.blocks.size() > static_cast<std::size_t>(max_blocks_per_seq))
      detail::fail(kInv, op, ": sequence ", seqs[i], " (row ", i, ") has ", s.blocks.size(),
                   " blocks but max_blocks_per_seq is ", max_blocks_per_seq);
  }
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& s = seqs_.at(seqs[i]);
    std::int32_t* row = block_tables + i * static_cast<std::size_t>(max_blocks_per_seq);
    std::copy(s.blocks.begin(), s.blocks.end(), row);
    std::fill(row + s.blocks.size(), row + max_blocks_per_seq, pad);
    if (seq_lens != nullptr) seq_lens[i] = static_cast<std::int32_t>(s.len);
  }
}

bool BlockManager::needs_cow(const Sequence& s) const {
  return s.len % block_size_ != 0 && ref_[s.blocks.back()] > 1;
}

void BlockManager::require_len(std::int64_t seq, std::int64_t len, std::int64_t more, const char* op) {
  if (more > std::numeric_limits<std::int32_t>::max() - len)
    detail::fail(kInv, op, ": sequence ", seq, " would exceed ", std::numeric_limits<std::int32_t>::max(), " tokens");
}

const BlockManager::Sequence& BlockManager::get(std::int64_t seq, const char* op) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) detail::fail(kInv, op, ": unknown sequence id ", seq);
  return it->second;
}

BlockManager::Sequence& BlockManager::get(std::int64_t seq, const char* op) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) detail::fail(kInv, op, ": unknown sequence id ", seq);
  return it->second;
}

void BlockManager::require_new(std::int64_t seq, const char* op) const {
  if (has_sequence(seq)) detail::fail(kInv, op, ": sequence id ", seq, " already exists");
}

void BlockManager::require_free_blocks(std::int64_t need, const char* op, std::int64_t seq) const {
  if (need > num_free_blocks())
    detail::fail(kInv, op, ": out of blocks for sequence ", seq, ": needs ", need, " free blocks but only ",
                 num_free_blocks(), " of ", num_blocks(), " are free");
}

std::int32_t BlockManager::take_block() {
  const std::int32_t b = free_.back();
  free_.pop_back();
  ref_[b] = 1;
  return b;
}

void BlockManager::release_block(std::int32_t block) {
  if (--ref_[block] == 0) free_.push_back(block);
}

}  // namespace pagedattn
