#include "pagedattn/block_manager.h"

#include <algorithm>
#include <limits>

#include "core/check.h"

namespace pagedattn {
namespace {
constexpr auto kInv = ErrorCode::kInvalidArgument;

// splitmix64's finaliser: a well-mixed 64-bit permutation.
std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

BlockManager::BlockManager(int num_blocks, int block_size) : block_size_(block_size) {
  if (num_blocks <= 0) detail::fail(kInv, "BlockManager: num_blocks is ", num_blocks, "; must be positive");
  if (block_size <= 0) detail::fail(kInv, "BlockManager: block_size is ", block_size, "; must be positive");
  ref_.assign(static_cast<std::size_t>(num_blocks), 0);
  content_.resize(static_cast<std::size_t>(num_blocks));
  lru_stamp_.resize(static_cast<std::size_t>(num_blocks), 0);
  free_.reserve(static_cast<std::size_t>(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // hand out 0, 1, 2, ... first
}

std::int64_t BlockManager::blocks_for_tokens(std::int64_t num_tokens) const {
  return num_tokens <= 0 ? 0 : (num_tokens + block_size_ - 1) / block_size_;
}

bool BlockManager::can_allocate(std::int64_t num_tokens) const {
  return num_tokens >= 0 && blocks_for_tokens(num_tokens) + watermark_ <= num_free_blocks();
}

bool BlockManager::can_allocate(const std::vector<std::int32_t>& token_ids) const {
  const std::int64_t n = static_cast<std::int64_t>(token_ids.size());
  if (n > std::numeric_limits<std::int32_t>::max()) return false;
  return free_needed_for(lookup(token_ids, nullptr), n) + watermark_ <= num_free_blocks();
}

std::int64_t BlockManager::num_cached_prefix_tokens(const std::vector<std::int32_t>& token_ids) const {
  return static_cast<std::int64_t>(lookup(token_ids, nullptr).size()) * block_size_;
}

void BlockManager::set_watermark_blocks(int blocks) {
  if (blocks < 0 || blocks > num_blocks())
    detail::fail(kInv, "BlockManager::set_watermark_blocks: blocks is ", blocks, "; must be in [0, ", num_blocks(),
                 "]");
  watermark_ = blocks;
}

void BlockManager::set_watermark(double fraction) {
  if (!(fraction >= 0.0 && fraction <= 1.0))
    detail::fail(kInv, "BlockManager::set_watermark: fraction is ", fraction, "; must be in [0, 1]");
  watermark_ = static_cast<int>(fraction * num_blocks());
}

int BlockManager::reset_prefix_cache() {
  const int dropped = static_cast<int>(cache_.size());
  for (auto& c : content_) c.reset();
  cache_.clear();
  for (const auto& [stamp, b] : lru_) free_.push_back(b);
  lru_.clear();
  return dropped;
}

std::optional<std::uint64_t> BlockManager::cached_block_hash(std::int32_t block) const {
  if (block < 0 || block >= num_blocks())
    detail::fail(kInv, "BlockManager::cached_block_hash: block ", block, " is outside [0, ", num_blocks(), ")");
  if (!content_[block]) return std::nullopt;
  return content_[block]->hash;
}

std::uint64_t BlockManager::hash_block(std::uint64_t parent_hash, const std::int32_t* tokens, std::size_t n) {
  std::uint64_t h = mix64(parent_hash ^ 0x243f6a8885a308d3ull);
  for (std::size_t i = 0; i < n; ++i) h = mix64(h ^ static_cast<std::uint32_t>(tokens[i]));
  return mix64(h ^ static_cast<std::uint64_t>(n));
}

bool BlockManager::same_chain(const Node* a, const Node* b) {
  // Equal pointers mean the same content object; otherwise compare block by block up to the root.
  while (a != b) {
    if (a == nullptr || b == nullptr || a->hash != b->hash || a->tokens != b->tokens) return false;
    a = a->parent.get();
    b = b->parent.get();
  }
  return true;
}

std::vector<std::int32_t> BlockManager::lookup(const std::vector<std::int32_t>& tokens,
                                               std::vector<NodePtr>* nodes) const {
  std::vector<std::int32_t> hits;
  const Node* prev = nullptr;
  std::uint64_t prev_hash = 0;
  const std::size_t full = tokens.size() / static_cast<std::size_t>(block_size_);
  for (std::size_t i = 0; i < full; ++i) {
    const std::int32_t* t = tokens.data() + i * static_cast<std::size_t>(block_size_);
    const std::uint64_t h = hash_block(prev_hash, t, static_cast<std::size_t>(block_size_));
    auto it = cache_.find(h);
    if (it == cache_.end()) break;
    const NodePtr& c = content_[it->second];
    // A hash match is not trusted: the block's tokens and its whole prefix must be ours.
    if (!std::equal(t, t + block_size_, c->tokens.begin()) || !same_chain(c->parent.get(), prev)) break;
    hits.push_back(it->second);
    if (nodes != nullptr) nodes->push_back(c);
    prev = c.get();
    prev_hash = h;
  }
  return hits;
}

std::int64_t BlockManager::free_needed_for(const std::vector<std::int32_t>& hits, std::int64_t num_tokens) const {
  std::int64_t need = blocks_for_tokens(num_tokens) - static_cast<std::int64_t>(hits.size());
  for (std::int32_t b : hits) need += ref_[b] == 0 ? 1 : 0;  // an unreferenced hit leaves the free pool
  return need;
}

void BlockManager::register_full_blocks(Sequence& s) {
  if (!s.tracked) return;
  const std::size_t full = static_cast<std::size_t>(s.len / block_size_);
  while (s.nodes.size() < full) {
    const std::size_t i = s.nodes.size();
    auto n = std::make_shared<Node>();
    if (i > 0) n->parent = s.nodes[i - 1];
    const auto first = s.tokens.begin() + static_cast<std::ptrdiff_t>(i * block_size_);
    n->tokens.assign(first, first + block_size_);
    n->hash = hash_block(n->parent ? n->parent->hash : 0, n->tokens.data(), n->tokens.size());
    const std::int32_t b = s.blocks[i];
    auto it = cache_.find(n->hash);
    if (it == cache_.end()) {
      if (!content_[b]) {
        cache_.emplace(n->hash, b);
        content_[b] = n;
      }
      s.nodes.push_back(std::move(n));
    } else if (same_chain(content_[it->second].get(), n.get())) {
      s.nodes.push_back(content_[it->second]);  // already cached in another block: ours stays uncached
    } else {
      s.nodes.push_back(std::move(n));  // a hash collision: this content is not cached
    }
  }
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
  require_free_blocks(blocks_for_tokens(num_tokens), op, seq, watermark_);
  Sequence s;
  s.len = num_tokens;
  for (std::int64_t b = 0; b < blocks_for_tokens(num_tokens); ++b) s.blocks.push_back(take_block());
  std::vector<std::int64_t> slots(static_cast<std::size_t>(num_tokens));
  for (std::int64_t t = 0; t < num_tokens; ++t)
    slots[t] = std::int64_t(s.blocks[t / block_size_]) * block_size_ + t % block_size_;
  seqs_.emplace(seq, std::move(s));
  return slots;
}

PrefixAllocation BlockManager::allocate(std::int64_t seq, const std::vector<std::int32_t>& token_ids) {
  const char* op = "BlockManager::allocate";
  require_new(seq, op);
  const std::int64_t n = static_cast<std::int64_t>(token_ids.size());
  require_len(seq, 0, n, op);
  Sequence s;
  const std::vector<std::int32_t> hits = lookup(token_ids, &s.nodes);
  require_free_blocks(free_needed_for(hits, n), op, seq, watermark_);

  ++stats_.queries;
  stats_.query_tokens += n;
  stats_.query_blocks += n / block_size_;
  stats_.hit_blocks += static_cast<std::int64_t>(hits.size());
  stats_.hit_tokens += static_cast<std::int64_t>(hits.size()) * block_size_;

  s.len = n;
  s.tracked = true;
  s.tokens = token_ids;
  // Reused blocks are claimed before new ones are taken, so they cannot be evicted for them.
  for (std::int32_t b : hits) {
    acquire_cached(b);
    s.blocks.push_back(b);
  }
  for (std::int64_t b = static_cast<std::int64_t>(hits.size()); b < blocks_for_tokens(n); ++b)
    s.blocks.push_back(take_block());
  register_full_blocks(s);
  PrefixAllocation r;
  r.num_cached_tokens = static_cast<std::int64_t>(hits.size()) * block_size_;
  r.slots.resize(static_cast<std::size_t>(n));
  for (std::int64_t t = 0; t < n; ++t)
    r.slots[t] = std::int64_t(s.blocks[t / block_size_]) * block_size_ + t % block_size_;
  seqs_.emplace(seq, std::move(s));
  return r;
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
  c.tracked = p.tracked;
  if (p.tracked) {
    c.tokens.assign(p.tokens.begin(), p.tokens.begin() + num_tokens);
    c.nodes.assign(p.nodes.begin(), p.nodes.begin() + num_tokens / block_size_);
  }
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

SlotAppend BlockManager::append_slot(std::int64_t seq, std::int32_t token_id) {
  const std::vector<std::int32_t> ids{token_id};
  TokensAppend r = append_impl(seq, 1, &ids);
  SlotAppend a;
  a.slot = r.slots[0];
  if (!r.copies.empty()) a.copy = r.copies[0];
  return a;
}

TokensAppend BlockManager::append_tokens(std::int64_t seq, std::int64_t num_tokens) {
  return append_impl(seq, num_tokens, nullptr);
}

TokensAppend BlockManager::append_tokens(std::int64_t seq, const std::vector<std::int32_t>& token_ids) {
  return append_impl(seq, static_cast<std::int64_t>(token_ids.size()), &token_ids);
}

TokensAppend BlockManager::append_impl(std::int64_t seq, std::int64_t num_tokens,
                                       const std::vector<std::int32_t>* ids) {
  const char* op = "BlockManager::append_tokens";
  Sequence& s = get(seq, op);
  if (num_tokens < 0) detail::fail(kInv, op, ": num_tokens is ", num_tokens, "; must be >= 0");
  require_len(seq, s.len, num_tokens, op);
  require_free_blocks(blocks_needed_to_append(seq, num_tokens), op, seq);

  TokensAppend r;
  if (num_tokens == 0) return r;
  std::optional<std::int32_t> copied;
  if (needs_cow(s)) {
    copied = s.blocks.back();
    const std::int32_t fresh = take_block();
    s.blocks.back() = fresh;
    r.copies.push_back({*copied, fresh});
  }
  r.slots.reserve(static_cast<std::size_t>(num_tokens));
  for (std::int64_t i = 0; i < num_tokens; ++i) {
    const std::int64_t t = s.len + i;
    if (t % block_size_ == 0) s.blocks.push_back(take_block());
    r.slots.push_back(std::int64_t(s.blocks[t / block_size_]) * block_size_ + t % block_size_);
  }
  s.len += num_tokens;
  // Released only now, so that this append's new blocks cannot evict the copy's source.
  if (copied) release_block(*copied);
  if (s.tracked && ids != nullptr) {
    s.tokens.insert(s.tokens.end(), ids->begin(), ids->end());
    register_full_blocks(s);
  } else if (s.tracked) {  // content unknown from here on: nothing more of it is cached
    s.tracked = false;
    s.tokens.clear();
    s.tokens.shrink_to_fit();
  }
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
  // A cached block is full and never written, even when `s` (holding only a prefix of it, from
  // fork_prefix) is its only user.
  return s.len % block_size_ != 0 && (ref_[s.blocks.back()] > 1 || content_[s.blocks.back()] != nullptr);
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

void BlockManager::require_free_blocks(std::int64_t need, const char* op, std::int64_t seq, int keep) const {
  if (need + keep > num_free_blocks()) {
    if (keep == 0)
      detail::fail(kInv, op, ": out of blocks for sequence ", seq, ": needs ", need, " free blocks but only ",
                   num_free_blocks(), " of ", num_blocks(), " are free");
    detail::fail(kInv, op, ": out of blocks for sequence ", seq, ": needs ", need, " free blocks but only ",
                 num_free_blocks(), " of ", num_blocks(), " are free and the watermark keeps ", keep, " free");
  }
}

std::int32_t BlockManager::take_block() {
  std::int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {  // no uncached free block: evict the least recently freed cached one
    b = lru_.begin()->second;
    lru_.erase(lru_.begin());
    uncache(b);
    ++stats_.evictions;
  }
  ref_[b] = 1;
  return b;
}

void BlockManager::acquire_cached(std::int32_t block) {
  if (ref_[block] == 0) {
    lru_.erase(lru_stamp_[block]);
  }
  ++ref_[block];
}

void BlockManager::uncache(std::int32_t block) {
  auto it = cache_.find(content_[block]->hash);
  if (it != cache_.end() && it->second == block) cache_.erase(it);
  content_[block].reset();
}

void BlockManager::release_block(std::int32_t block) {
  if (--ref_[block] != 0) return;
  if (content_[block]) {
    lru_stamp_[block] = clock_++;
    lru_.emplace(lru_stamp_[block], block);
  } else {
    free_.push_back(block);
  }
}

}  // namespace pagedattn
