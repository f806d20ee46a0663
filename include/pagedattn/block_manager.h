// Host-side block manager (SPEC §6): a fixed pool of KV-cache blocks, per-sequence block
// tables, reference-counted sharing (fork, prefix sharing) and copy-on-write on append.
// It only does the bookkeeping: the caller moves data with copy_blocks / reshape_and_cache.
#pragma once

#include <cstdint>
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

/// Allocates blocks of `block_size` tokens from a pool of `num_blocks` and keeps one block
/// table per sequence. Sequence ids are chosen by the caller (any int64, unique among live
/// sequences). A block may be shared by several sequences (fork, fork_prefix); it returns to
/// the pool when the last one frees it. Every method that fails throws pagedattn::Error
/// (kInvalidArgument) with a complete message and leaves the manager unchanged.
/// Not thread-safe: one caller at a time.
class BlockManager {
 public:
  /// A pool of `num_blocks` (> 0) blocks of `block_size` (> 0) tokens, all free.
  BlockManager(int num_blocks, int block_size);

  /// Blocks in the pool.
  int num_blocks() const { return static_cast<int>(ref_.size()); }
  /// Tokens per block.
  int block_size() const { return block_size_; }
  /// Blocks not referenced by any sequence.
  int num_free_blocks() const { return static_cast<int>(free_.size()); }
  /// Live sequences.
  int num_sequences() const { return static_cast<int>(seqs_.size()); }
  /// Blocks needed to hold `num_tokens` tokens: ceil(num_tokens / block_size).
  std::int64_t blocks_for_tokens(std::int64_t num_tokens) const;

  /// True when a new sequence of `num_tokens` tokens fits in the free blocks.
  bool can_allocate(std::int64_t num_tokens) const;
  /// True when `seq` exists and `num_tokens` more tokens fit (counting a copy-on-write).
  bool can_append(std::int64_t seq, std::int64_t num_tokens) const;
  /// Free blocks that appending `num_tokens` tokens to `seq` would take (new blocks plus a
  /// copy-on-write copy of a shared last block). Throws for an unknown sequence.
  std::int64_t blocks_needed_to_append(std::int64_t seq, std::int64_t num_tokens) const;
  /// True when `seq` is a live sequence.
  bool has_sequence(std::int64_t seq) const { return seqs_.count(seq) != 0; }

  /// Creates sequence `seq` holding `num_tokens` (>= 0) tokens, e.g. a prompt, on fresh
  /// blocks. Returns the slot of every token (the prompt's slot_mapping).
  /// Throws if `seq` exists or the pool has too few free blocks.
  std::vector<std::int64_t> allocate(std::int64_t seq, std::int64_t num_tokens);

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

  /// Appends `num_tokens` (>= 0) tokens to `seq`: their slots, in order, and the copies to do
  /// first. All or nothing: throws when the pool cannot hold them, changing nothing.
  TokensAppend append_tokens(std::int64_t seq, std::int64_t num_tokens);

  /// Releases `seq`: each of its blocks loses one reference; unreferenced blocks return to
  /// the pool. Throws for an unknown sequence.
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
  struct Sequence {
    std::vector<std::int32_t> blocks;
    std::int64_t len = 0;
  };
  const Sequence& get(std::int64_t seq, const char* op) const;
  Sequence& get(std::int64_t seq, const char* op);
  void require_new(std::int64_t seq, const char* op) const;
  /// A token appended to `s` goes into its last block, which another sequence shares: the
  /// block must be copied first (copy-on-write).
  bool needs_cow(const Sequence& s) const;
  /// Sequences stay within int32 tokens (the attention ops' seq_lens are int32).
  static void require_len(std::int64_t seq, std::int64_t len, std::int64_t more, const char* op);
  void require_free_blocks(std::int64_t need, const char* op, std::int64_t seq) const;
  std::int32_t take_block();
  void release_block(std::int32_t block);

  int block_size_;
  std::vector<std::int32_t> ref_;   ///< [num_blocks] reference counts
  std::vector<std::int32_t> free_;  ///< free block ids; the next one handed out is free_.back()
  std::unordered_map<std::int64_t, Sequence> seqs_;
};

}  // namespace pagedattn
