// BlockManager (include/pagedattn/block_manager.h): host-side bookkeeping, bound 1:1.
// Block tables come back as NumPy-compatible int32 arrays that own their memory.
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

}  // namespace

void bind_block_manager(nb::module_& m) {
  nb::class_<BlockManager>(m, "BlockManager",
                           "Host-side KV-cache block pool: per-sequence block tables, reference-counted "
                           "sharing (fork, prefix sharing) and copy-on-write on append. Bookkeeping only: "
                           "the caller moves data with copy_blocks / reshape_and_cache.")
      .def(nb::init<int, int>(), nb::arg("num_blocks"), nb::arg("block_size"))
      .def_prop_ro("num_blocks", &BlockManager::num_blocks)
      .def_prop_ro("block_size", &BlockManager::block_size)
      .def_prop_ro("num_free_blocks", &BlockManager::num_free_blocks)
      .def_prop_ro("num_sequences", &BlockManager::num_sequences)
      .def("blocks_for_tokens", &BlockManager::blocks_for_tokens, nb::arg("num_tokens"))
      .def("can_allocate", &BlockManager::can_allocate, nb::arg("num_tokens"))
      .def("can_append", &BlockManager::can_append, nb::arg("seq"), nb::arg("num_tokens") = 1)
      .def("blocks_needed_to_append", &BlockManager::blocks_needed_to_append, nb::arg("seq"),
           nb::arg("num_tokens") = 1)
      .def("has_sequence", &BlockManager::has_sequence, nb::arg("seq"))
      .def("__contains__", &BlockManager::has_sequence, nb::arg("seq"))
      .def("allocate", &BlockManager::allocate, nb::arg("seq"), nb::arg("num_tokens"),
           "Creates `seq` with `num_tokens` tokens on fresh blocks; returns their slots (list of int).")
      .def("fork", &BlockManager::fork, nb::arg("parent"), nb::arg("child"))
      .def("fork_prefix", &BlockManager::fork_prefix, nb::arg("parent"), nb::arg("child"), nb::arg("num_tokens"))
      .def(
          "append_slot",
          [](BlockManager& bm, std::int64_t seq) {
            const SlotAppend a = bm.append_slot(seq);
            return nb::make_tuple(a.slot, a.copy ? nb::object(copy_pair(*a.copy)) : nb::none());
          },
          nb::arg("seq"),
          "Appends one token: (slot, copy) where copy is None or a (src, dst) block copy to do first.")
      .def(
          "append_tokens",
          [](BlockManager& bm, std::int64_t seq, std::int64_t n) {
            const TokensAppend a = bm.append_tokens(seq, n);
            nb::list copies;
            for (const BlockCopy& c : a.copies) copies.append(copy_pair(c));
            return nb::make_tuple(a.slots, copies);
          },
          nb::arg("seq"), nb::arg("num_tokens"),
          "Appends tokens: (slots, copies), copies a list of (src, dst) block copies to do first.")
      .def("free", &BlockManager::free, nb::arg("seq"))
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
