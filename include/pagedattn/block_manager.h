// Host-side block manager (SPEC §6): a fixed pool of KV-cache blocks, per-sequence block
// tables, reference-counted sharing (fork, prefix sharing), copy-on-write on append and
// automatic prefix caching. It only does the bookkeeping: the caller moves data with
// copy_blocks / reshape_and_cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

namespace pagedattn {

/// A whole-block copy the caller must perform (e.g. with copy_blocks, in every layer) before
/// writing the new tokens: copy-on-write of a shared block.
struct BlockCopy {
  std::int32_t src = 0;  ///< the shared block, still referenced by other sequences
  std::int32_t dst = 0;  ///< the fresh block that replaces it in the appending sequence
  bool operator==(const BlockCopy& o) const { return src == o.src && dst == o.dst; }
};

/// What appending one token did.
struct SlotAppend {
  std::int64_t slot = 0;           ///< block_id * block_size + offset of the new token
  std::optional<BlockCopy> copy;  ///< set when the last block was shared and had to be copied
};

/// What appending several tokens did.
struct TokensAppend {
  std::vector<std::int64_t> slots;  ///< slot of each new token, in order (its slot_mapping entries)
  std::vector<BlockCopy> copies;    ///< copy-on-write copies to do before writing (at most one)
};

/// What allocating a sequence from its token ids did.
struct PrefixAllocation {
  std::vector<std::int64_t> slots;     ///< slot of every token (the prompt's slot_mapping)
  std::int64_t num_cached_tokens = 0;  ///< leading tokens whose K/V already sit in reused blocks
};

/// Prefix-cache counters since construction or the last reset_prefix_cache_stats().
struct PrefixCacheStats {
  std::int64_t queries = 0;       ///< allocate calls with token ids
  std::int64_t query_tokens = 0;  ///< tokens in those calls
  std::int64_t query_blocks = 0;  ///< full blocks in those calls (the ones that could hit)
  std::int64_t hit_tokens = 0;    ///< tokens found cached (hit_blocks * block_size)
  std::int64_t hit_blocks = 0;    ///< full blocks reused from the cache
  std::int64_t evictions = 0;     ///< cached unreferenced blocks reclaimed for new content
};

/// Allocates blocks of `block_size` tokens from a pool of `num_blocks` and keeps one block
/// table per sequence. Sequence ids are chosen by the caller (any int64, unique among live
/// sequences). A block may be shared by several sequences (fork, fork_prefix); it returns to
/// the pool when the last one frees it. Every method that fails throws pagedattn::Error
/// (kInvalidArgument) with a complete message and leaves the manager unchanged.
/// Not thread-safe: one caller at a time.
///
/// Prefix caching. A sequence created from its token ids (allocate(seq, token_ids)) and
/// extended with token ids (append_tokens(seq, token_ids), append_slot(seq, token_id)) has
/// its full blocks registered in a cache keyed by a chained 64-bit content hash,
/// hash(previous block's hash, this block's token ids). A later allocate with token ids
/// reuses the cached blocks of its longest cached prefix (whole blocks only) and reports how
/// many tokens they hold: the caller skips computing and writing those (their slots are
/// returned too, but the blocks are shared and must never be written). Before a cached block
/// is reused its stored token ids and those of its whole prefix are compared with the
/// request, so a hash collision can never reuse wrong content (a colliding block is simply
/// not cached). A block is cached once: when a sequence fills a block whose content is
/// already cached in another block, its own block stays uncached.
/// Cached blocks are full and never written; appending after a full block opens a new one,
/// and a shared partial last block is copied on write as without caching (so is a cached
/// block that fork_prefix left partial in a child, even once the child is its only user).
/// A cached block whose last reference is freed stays cached (and reusable) until evicted:
/// new blocks come from the uncached free blocks first; only when none is left is the least
/// recently freed cached block evicted (LRU; a sequence's blocks are freed last-block first,
/// so its tail is evicted before its head). Sequences created or extended by count only
/// (allocate(seq, n), append_tokens(seq, n), append_slot(seq)) have unknown content: their
/// later full blocks are not cached.
/// Free blocks: num_free_blocks() counts every unreferenced block, cached ones included
/// (they are reclaimable); num_uncached_free_blocks() and num_evictable_blocks() split it.
/// Watermark: allocate refuses a new sequence that would leave fewer than watermark_blocks()
/// free blocks (appends and forks are not limited by it), as vLLM's block manager does.
class BlockManager {
 public:
  /// A pool of `num_blocks` (> 0) blocks of `block_size` (> 0) tokens, all free.
  BlockManager(int num_blocks, int block_size);

  /// Blocks in the pool.
  int num_blocks() const { return static_cast<int>(ref_.size()); }
  /// Tokens per block.
  int block_size() const { return block_size_; }
  /// Blocks not referenced by any sequence: uncached free blocks plus evictable cached ones.
  int num_free_blocks() const { return static_cast<int>(free_.size() + lru_.size()); }
  /// Unreferenced blocks holding no cached content (taken first by new allocations).
  int num_uncached_free_blocks() const { return static_cast<int>(free_.size()); }
  /// Unreferenced blocks holding cached content: reusable by a prefix hit until evicted.
  int num_evictable_blocks() const { return static_cast<int>(lru_.size()); }
  /// Blocks registered in the prefix cache, referenced or not.
  int num_cached_blocks() const { return static_cast<int>(cache_.size()); }
  /// Live sequences.
  int num_sequences() const { return static_cast<int>(seqs_.size()); }
  /// Blocks needed to hold `num_tokens` tokens: ceil(num_tokens / block_size).
  std::int64_t blocks_for_tokens(std::int64_t num_tokens) const;

  /// True when a new sequence of `num_tokens` tokens fits in the free blocks (above the
  /// watermark).
  bool can_allocate(std::int64_t num_tokens) const;
  /// True when allocate(seq, token_ids) would fit, counting the cached prefix it would reuse.
  bool can_allocate(const std::vector<std::int32_t>& token_ids) const;
  /// Tokens of `token_ids` that allocate(seq, token_ids) would find cached now (a multiple of
  /// block_size); changes nothing, counts nothing.
  std::int64_t num_cached_prefix_tokens(const std::vector<std::int32_t>& token_ids) const;

  /// Blocks allocate keeps free: it refuses a sequence that would leave fewer.
  int watermark_blocks() const { return watermark_; }
  /// Sets the watermark to `blocks` (0 <= blocks <= num_blocks).
  void set_watermark_blocks(int blocks);
  /// Sets the watermark to floor(fraction * num_blocks) (0 <= fraction <= 1), like vLLM's
  /// `watermark` (0.01 there).
  void set_watermark(double fraction);

  /// Prefix-cache counters.
  const PrefixCacheStats& prefix_cache_stats() const { return stats_; }
  /// Zeroes the counters.
  void reset_prefix_cache_stats() { stats_ = PrefixCacheStats{}; }
  /// Drops all cached content: evictable blocks become uncached free blocks, blocks in use
  /// stay with their sequences but are no longer found by lookups (full blocks filled later
  /// are registered again). Returns the number of blocks that were cached. Not an eviction
  /// in the counters.
  int reset_prefix_cache();
  /// The chained content hash of `block` when it is cached, else nullopt.
  std::optional<std::uint64_t> cached_block_hash(std::int32_t block) const;
  /// The chained hash of a full block of `tokens` (block_size of them) after a prefix whose
  /// hash is `parent_hash` (0 for the first block): what the cache keys on.
  static std::uint64_t hash_block(std::uint64_t parent_hash, const std::int32_t* tokens, std::size_t n);
  /// True when `seq` exists and `num_tokens` more tokens fit (counting a copy-on-write).
  bool can_append(std::int64_t seq, std::int64_t num_tokens) const;
  /// Free blocks that appending `num_tokens` tokens to `seq` would take (new blocks plus a
  /// copy-on-write copy of a shared last block). Throws for an unknown sequence.
  std::int64_t blocks_needed_to_append(std::int64_t seq, std::int64_t num_tokens) const;
  /// True when `seq` is a live sequence.
  bool has_sequence(std::int64_t seq) const { return seqs_.count(seq) != 0; }

  /// Creates sequence `seq` holding `num_tokens` (>= 0) tokens, e.g. a prompt, on fresh
  /// blocks. Returns the slot of every token (the prompt's slot_mapping).
  /// Throws if `seq` exists or the blocks would leave fewer than watermark_blocks() free.
  /// Its content is unknown: none of its blocks is ever cached.
  std::vector<std::int64_t> allocate(std::int64_t seq, std::int64_t num_tokens);

  /// Creates sequence `seq` holding `token_ids` with prefix caching: the longest cached
  /// prefix of whole blocks is reused (its blocks gain a reference), the rest goes on new
  /// blocks, and every full new block is registered. Returns all slots and the number of
  /// cached tokens. Throws if `seq` exists or the blocks it needs (new ones plus reused
  /// unreferenced ones) would leave fewer than watermark_blocks() free; counts a query.
  PrefixAllocation allocate(std::int64_t seq, const std::vector<std::int32_t>& token_ids);

  /// Creates `child` sharing every block of `parent` (same length); reference counts rise.
  /// Throws if `parent` is unknown or `child` exists.
  void fork(std::int64_t parent, std::int64_t child);

  /// Prefix sharing: creates `child` whose first `num_tokens` tokens are those of `parent`,
  /// sharing the blocks that hold them (0 <= num_tokens <= parent's length). A partially
  /// used last block is shared too; whoever appends into it first gets a copy.
  void fork_prefix(std::int64_t parent, std::int64_t child, std::int64_t num_tokens);

  /// Appends one token to `seq` and returns its slot. When the token lands in a block other
  /// sequences still reference, a fresh block replaces it in `seq` and the returned copy
  /// must be carried out before the token is written. Throws when out of blocks.
  SlotAppend append_slot(std::int64_t seq);
  /// append_slot with the token's id: a block it fills is registered in the prefix cache.
  SlotAppend append_slot(std::int64_t seq, std::int32_t token_id);

  /// Appends `num_tokens` (>= 0) tokens to `seq`: their slots, in order, and the copies to do
  /// first. All or nothing: throws when the pool cannot hold them, changing nothing.
  TokensAppend append_tokens(std::int64_t seq, std::int64_t num_tokens);
  /// append_tokens with the tokens' ids: blocks they fill are registered in the prefix cache.
  TokensAppend append_tokens(std::int64_t seq, const std::vector<std::int32_t>& token_ids);

  /// Releases `seq`: each of its blocks loses one reference, last block first; unreferenced
  /// blocks return to the pool (cached ones to the back of the eviction order). Throws for an
  /// unknown sequence.
  void free(std::int64_t seq);

  /// Tokens held by `seq`.
  std::int64_t seq_len(std::int64_t seq) const;
  /// Physical block ids of `seq`, logical block order (ceil(seq_len / block_size) entries).
  const std::vector<std::int32_t>& block_table(std::int64_t seq) const;
  /// Slot (block_id * block_size + offset) of token `token` (0 <= token < seq_len) of `seq`.
  std::int64_t slot(std::int64_t seq, std::int64_t token) const;
  /// Sequences referencing `block` (0 for a free block).
  int ref_count(std::int32_t block) const;

  /// Largest block-table length among `seqs`: the max_num_blocks_per_seq to allocate for them.
  int max_blocks(const std::vector<std::int64_t>& seqs) const;

  /// Fills the attention inputs for `seqs`: `block_tables` is row-major
  /// [seqs.size(), max_blocks_per_seq] int32 (unused entries set to `pad`), `seq_lens` is
  /// [seqs.size()] int32 (may be nullptr). Throws if a sequence is unknown or needs more than
  /// `max_blocks_per_seq` blocks; nothing is written then.
  void fill_block_tables(const std::vector<std::int64_t>& seqs, int max_blocks_per_seq, std::int32_t* block_tables,
                         std::int32_t* seq_lens, std::int32_t pad = 0) const;

 private:
  /// The content of one full block and, through `parent`, of its whole prefix.
  struct Node {
    std::uint64_t hash = 0;
    std::vector<std::int32_t> tokens;
    std::shared_ptr<const Node> parent;
  };
  using NodePtr = std::shared_ptr<const Node>;
  struct Sequence {
    std::vector<std::int32_t> blocks;
    std::int64_t len = 0;
    bool tracked = false;               ///< token ids known (prefix caching applies)
    std::vector<std::int32_t> tokens;   ///< all token ids when tracked
    std::vector<NodePtr> nodes;         ///< content of each full block when tracked
  };
  /// Blocks of the longest cached prefix of `tokens` (whole blocks).
  std::vector<std::int32_t> lookup(const std::vector<std::int32_t>& tokens, std::vector<NodePtr>* nodes) const;
  /// True when `a` and the prefix ending in `b` hold the same tokens.
  static bool same_chain(const Node* a, const Node* b);
  /// Registers (or matches with the cache) every full block of a tracked sequence not yet done.
  void register_full_blocks(Sequence& s);
  std::int64_t free_needed_for(const std::vector<std::int32_t>& hits, std::int64_t num_tokens) const;
  TokensAppend append_impl(std::int64_t seq, std::int64_t num_tokens, const std::vector<std::int32_t>* ids);
  const Sequence& get(std::int64_t seq, const char* op) const;
  Sequence& get(std::int64_t seq, const char* op);
  void require_new(std::int64_t seq, const char* op) const;
  /// A token appended to `s` goes into its last block, which another sequence shares or which
  /// is cached (full for its owner, partial for `s`): the block must be copied first.
  bool needs_cow(const Sequence& s) const;
  /// Sequences stay within int32 tokens (the attention ops' seq_lens are int32).
  static void require_len(std::int64_t seq, std::int64_t len, std::int64_t more, const char* op);
  void require_free_blocks(std::int64_t need, const char* op, std::int64_t seq, int keep = 0) const;
  std::int32_t take_block();
  void release_block(std::int32_t block);
  /// A cached block with no reference gains one (a prefix hit).
  void acquire_cached(std::int32_t block);
  void uncache(std::int32_t block);

  int block_size_;
  int watermark_ = 0;
  std::vector<std::int32_t> ref_;   ///< [num_blocks] reference counts
  std::vector<std::int32_t> free_;  ///< uncached free block ids; the next one handed out is free_.back()
  std::unordered_map<std::int64_t, Sequence> seqs_;
  std::vector<NodePtr> content_;    ///< [num_blocks] content of a cached block, else null
  std::unordered_map<std::uint64_t, std::int32_t> cache_;  ///< chained hash -> cached block
  std::map<std::uint64_t, std::int32_t> lru_;  ///< unreferenced cached blocks by release stamp (oldest first)
  std::vector<std::uint64_t> lru_stamp_;        ///< [num_blocks] a block's key in lru_
  std::uint64_t clock_ = 0;                     ///< next release stamp
  PrefixCacheStats stats_;
};

}  // namespace pagedattn
