// BlockManager (include/pagedattn/block_manager.h): host-side bookkeeping, bound 1:1.
// Block tables come back as NumPy-compatible int32 arrays that own their memory; prefix-cache
// counters as a dict.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bindings.h"
#include "dlpack_view.h"
#include "pagedattn/block_manager.h"

namespace pagedattn::python {
namespace {

// A fresh host array owning `n` elements of T (freed when Python drops it).
template <typename T>
nb::ndarray<nb::numpy, T> owned_array(std::initializer_list<size_t> shape, T*& data) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  data = new T[n == 0 ? 1 : n]();
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T>(data, shape, owner);
}

nb::tuple copy_pair(const BlockCopy& c) { return nb::make_tuple(c.src, c.dst); }

nb::tuple tokens_append(const TokensAppend& a) {
  nb::list copies;
  for (const BlockCopy& c : a.copies) copies.append(copy_pair(c));
  return nb::make_tuple(a.slots, copies);
}

nb::tuple slot_append(const SlotAppend& a) {
  return nb::make_tuple(a.slot, a.copy ? nb::object(copy_pair(*a.copy)) : nb::none());
}

}  // namespace

void bind_block_manager(nb::module_& m) {
  nb::class_<BlockManager>(m, "BlockManager",
                           "Host-side KV-cache block pool: per-sequence block tables, reference-counted "
                           "sharing (fork, prefix sharing), copy-on-write on append and automatic prefix "
                           "caching (allocate / append with token ids). Bookkeeping only: the caller moves "
                           "data with copy_blocks / reshape_and_cache.")
      .def(nb::init<int, int>(), nb::arg("num_blocks"), nb::arg("block_size"))
      .def_prop_ro("num_blocks", &BlockManager::num_blocks)
      .def_prop_ro("block_size", &BlockManager::block_size)
      .def_prop_ro("num_free_blocks", &BlockManager::num_free_blocks,
                   "Unreferenced blocks: uncached free ones plus evictable cached ones (all reclaimable).")
      .def_prop_ro("num_uncached_free_blocks", &BlockManager::num_uncached_free_blocks,
                   "Unreferenced blocks holding no cached content (taken first by new allocations).")
      .def_prop_ro("num_evictable_blocks", &BlockManager::num_evictable_blocks,
                   "Unreferenced blocks holding cached content: reusable by a prefix hit until evicted (LRU).")
      .def_prop_ro("num_cached_blocks", &BlockManager::num_cached_blocks,
                   "Blocks registered in the prefix cache, referenced or not.")
      .def_prop_ro("watermark_blocks", &BlockManager::watermark_blocks,
                   "Blocks allocate keeps free: it refuses a new sequence that would leave fewer.")
      .def("set_watermark", &BlockManager::set_watermark, nb::arg("fraction"),
           "Watermark = floor(fraction * num_blocks), 0 <= fraction <= 1 (vLLM's `watermark`, 0.01 there).")
      .def("set_watermark_blocks", &BlockManager::set_watermark_blocks, nb::arg("blocks"),
           "Watermark in blocks, 0 <= blocks <= num_blocks. Appends and forks are not limited by it.")
      .def_prop_ro(
          "prefix_cache_stats",
          [](const BlockManager& bm) {
            const PrefixCacheStats& s = bm.prefix_cache_stats();
            nb::dict d;
            d["queries"] = s.queries;
            d["query_tokens"] = s.query_tokens;
            d["query_blocks"] = s.query_blocks;
            d["hit_tokens"] = s.hit_tokens;
            d["hit_blocks"] = s.hit_blocks;
            d["evictions"] = s.evictions;
            return d;
          },
          "Prefix-cache counters (dict): queries (allocate calls with token ids), query_tokens, query_blocks "
          "(full blocks queried), hit_tokens, hit_blocks, evictions.")
      .def("reset_prefix_cache_stats", &BlockManager::reset_prefix_cache_stats, "Zeroes the prefix-cache counters.")
      .def("reset_prefix_cache", &BlockManager::reset_prefix_cache,
           "Drops all cached content (evictable blocks become uncached free blocks; blocks in use stay with "
           "their sequences but are no longer found). Returns how many blocks were cached.")
      .def("cached_block_hash", &BlockManager::cached_block_hash, nb::arg("block"),
           "The chained content hash of `block` (int) when it is cached, else None.")
      .def_static(
          "hash_block",
          [](std::uint64_t parent_hash, const std::vector<std::int32_t>& tokens) {
            return BlockManager::hash_block(parent_hash, tokens.data(), tokens.size());
          },
          nb::arg("parent_hash"), nb::arg("token_ids"),
          "The chained hash the cache keys a full block on: hash(parent_hash, token_ids); 0 is the first "
          "block's parent_hash.")
      .def("num_cached_prefix_tokens", &BlockManager::num_cached_prefix_tokens, nb::arg("token_ids"),
           "Tokens of `token_ids` that allocate(seq, token_ids) would find cached now (whole blocks); changes "
           "nothing.")
      .def_prop_ro("num_sequences", &BlockManager::num_sequences)
      .def("blocks_for_tokens", &BlockManager::blocks_for_tokens, nb::arg("num_tokens"))
      .def("can_allocate", nb::overload_cast<std::int64_t>(&BlockManager::can_allocate, nb::const_),
           nb::arg("num_tokens"), "True when a new sequence of `num_tokens` tokens fits above the watermark.")
      .def("can_allocate",
           nb::overload_cast<const std::vector<std::int32_t>&>(&BlockManager::can_allocate, nb::const_),
           nb::arg("token_ids"),
           "True when allocate(seq, token_ids) fits above the watermark, counting the cached prefix it reuses.")
      .def("can_append", &BlockManager::can_append, nb::arg("seq"), nb::arg("num_tokens") = 1)
      .def("blocks_needed_to_append", &BlockManager::blocks_needed_to_append, nb::arg("seq"),
           nb::arg("num_tokens") = 1)
      .def("has_sequence", &BlockManager::has_sequence, nb::arg("seq"))
      .def("__contains__", &BlockManager::has_sequence, nb::arg("seq"))
      .def("allocate", nb::overload_cast<std::int64_t, std::int64_t>(&BlockManager::allocate), nb::arg("seq"),
           nb::arg("num_tokens"),
           "Creates `seq` with `num_tokens` tokens on fresh blocks; returns their slots (list of int). Its "
           "content is unknown, so none of its blocks is ever cached.")
      .def(
          "allocate",
          [](BlockManager& bm, std::int64_t seq, const std::vector<std::int32_t>& token_ids) {
            PrefixAllocation a = bm.allocate(seq, token_ids);
            return nb::make_tuple(a.slots, a.num_cached_tokens);
          },
          nb::arg("seq"), nb::arg("token_ids"),
          "Creates `seq` holding `token_ids` with prefix caching: returns (slots, num_cached_tokens). The "
          "first num_cached_tokens tokens sit in reused cached blocks: skip computing and writing them "
          "(their slots must not be written). Full new blocks are registered in the cache.")
      .def("fork", &BlockManager::fork, nb::arg("parent"), nb::arg("child"))
      .def("fork_prefix", &BlockManager::fork_prefix, nb::arg("parent"), nb::arg("child"), nb::arg("num_tokens"))
      .def(
          "append_slot",
          [](BlockManager& bm, std::int64_t seq, std::optional<std::int32_t> token_id) {
            return slot_append(token_id ? bm.append_slot(seq, *token_id) : bm.append_slot(seq));
          },
          nb::arg("seq"), nb::arg("token_id").none() = nb::none(),
          "Appends one token: (slot, copy) where copy is None or a (src, dst) block copy to do first. With "
          "`token_id` a block it fills is registered in the prefix cache; without it the sequence's content "
          "becomes unknown and nothing more of it is cached.")
      .def(
          "append_tokens",
          [](BlockManager& bm, std::int64_t seq, std::int64_t n) { return tokens_append(bm.append_tokens(seq, n)); },
          nb::arg("seq"), nb::arg("num_tokens"),
          "Appends tokens: (slots, copies), copies a list of (src, dst) block copies to do first. By count: "
          "the sequence's content becomes unknown and nothing more of it is cached.")
      .def(
          "append_tokens",
          [](BlockManager& bm, std::int64_t seq, const std::vector<std::int32_t>& token_ids) {
            return tokens_append(bm.append_tokens(seq, token_ids));
          },
          nb::arg("seq"), nb::arg("token_ids"),
          "Appends `token_ids`: (slots, copies) as above; blocks they fill are registered in the prefix cache.")
      .def("free", &BlockManager::free, nb::arg("seq"),
           "Releases `seq`, last block first; cached blocks left unreferenced stay reusable until evicted.")
      .def("seq_len", &BlockManager::seq_len, nb::arg("seq"))
      .def("block_table", &BlockManager::block_table, nb::arg("seq"), "Physical block ids of `seq` (list of int).")
      .def("slot", &BlockManager::slot, nb::arg("seq"), nb::arg("token"))
      .def("ref_count", &BlockManager::ref_count, nb::arg("block"))
      .def("max_blocks", &BlockManager::max_blocks, nb::arg("seqs"))
      .def(
          "block_tables",
          [](const BlockManager& bm, const std::vector<std::int64_t>& seqs, std::optional<int> max_blocks_per_seq,
             std::int32_t pad) {
            const int width = max_blocks_per_seq ? *max_blocks_per_seq : bm.max_blocks(seqs);
            std::int32_t* bt = nullptr;
            std::int32_t* sl = nullptr;
            // a negative width is reported by fill_block_tables, not by the allocation
            auto tables = owned_array<std::int32_t>({seqs.size(), static_cast<size_t>(std::max(width, 0))}, bt);
            auto lens = owned_array<std::int32_t>({seqs.size()}, sl);
            bm.fill_block_tables(seqs, width, bt, sl, pad);
            return nb::make_tuple(tables, lens);
          },
          nb::arg("seqs"), nb::arg("max_blocks_per_seq").none() = nb::none(), nb::arg("pad") = 0,
          "Attention inputs for `seqs`: (block_tables int32 [n, max_blocks_per_seq], seq_lens int32 [n]) "
          "as NumPy arrays; max_blocks_per_seq defaults to max_blocks(seqs).")
      .def(
          "fill_block_tables",
          [](const BlockManager& bm, const std::vector<std::int64_t>& seqs, Array block_tables,
             std::optional<Array> seq_lens, std::int32_t pad) {
            const TensorView bt = to_view(block_tables, "block_tables");
            if (bt.device.type != DeviceType::kCPU || bt.dtype != DType::kInt32 || bt.ndim != 2 ||
                !bt.is_contiguous() || bt.shape[0] != static_cast<std::int64_t>(seqs.size()))
              throw Error(ErrorCode::kInvalidArgument,
                          "fill_block_tables: block_tables must be a contiguous host int32 array of shape "
                          "[len(seqs), max_blocks_per_seq]");
            std::int32_t* sl = nullptr;
            if (seq_lens) {
              const TensorView s = to_view(*seq_lens, "seq_lens");
              if (s.device.type != DeviceType::kCPU || s.dtype != DType::kInt32 || s.ndim != 1 ||
                  !s.is_contiguous() || s.shape[0] != static_cast<std::int64_t>(seqs.size()))
                throw Error(ErrorCode::kInvalidArgument,
                            "fill_block_tables: seq_lens must be a contiguous host int32 array of shape [len(seqs)]");
              sl = static_cast<std::int32_t*>(s.data);
            }
            bm.fill_block_tables(seqs, static_cast<int>(bt.shape[1]), static_cast<std::int32_t*>(bt.data), sl,
                                 pad);
          },
          nb::arg("seqs"), nb::arg("block_tables"), nb::arg("seq_lens").none() = nb::none(), nb::arg("pad") = 0,
          "Fills caller-owned host int32 arrays in place (e.g. pinned buffers) instead of allocating.");
}

}  // namespace pagedattn::python
