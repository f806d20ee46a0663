// Cache operations (SPEC §6): reshape_and_cache, copy_blocks, swap_blocks.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "bindings.h"
#include "dlpack_view.h"
#include "pagedattn/cache_ops.h"

namespace pagedattn::python {

void bind_cache_ops(nb::module_& m) {
  m.def(
      "reshape_and_cache",
      [](ArrayRO key, ArrayRO value, Array key_cache, Array value_cache, ArrayRO slot_mapping, std::string kvd,
         nb::handle k_scale, nb::handle v_scale, bool checked, std::uintptr_t stream) {
        const char* op = "reshape_and_cache";
        ReshapeAndCacheParams p;
        Imports imports;  // the per-head scales, when given
        p.key = to_view(key, "key");
        p.value = to_view(value, "value");
        p.key_cache = to_view(key_cache, "key_cache");
        p.value_cache = to_view(value_cache, "value_cache");
        p.slot_mapping = to_view(slot_mapping, "slot_mapping");
        p.kv_cache_dtype = parse_cache_dtype(kvd);
        imports.scale(k_scale, op, "k_scale", p.k_scale, p.k_scales);
        imports.scale(v_scale, op, "v_scale", p.v_scale, p.v_scales);
        p.checked = checked;
        p.stream = stream_ptr(stream);
        nb::gil_scoped_release release;
        reshape_and_cache(p);
      },
      nb::arg("key"), nb::arg("value"), nb::arg("key_cache"), nb::arg("value_cache"), nb::arg("slot_mapping"),
      nb::arg("kv_cache_dtype"), nb::arg("k_scale"), nb::arg("v_scale"), nb::arg("checked"), nb::arg("stream"),
      "Writes new tokens' keys/values into the paged caches at slot_mapping (negative slots skipped). k_scale / "
      "v_scale: a float (per tensor) or a float32 [num_kv_heads] array (per kv head).");

  m.def(
      "copy_blocks",
      [](std::vector<Array> key_caches, std::vector<Array> value_caches, ArrayRO block_mapping, bool checked,
         std::uintptr_t stream) {
        CopyBlocksParams p;
        p.key_caches.reserve(key_caches.size());
        p.value_caches.reserve(value_caches.size());
        for (const Array& a : key_caches) p.key_caches.push_back(to_view(a, "key_caches"));
        for (const Array& a : value_caches) p.value_caches.push_back(to_view(a, "value_caches"));
        p.block_mapping = to_view(block_mapping, "block_mapping");
        p.checked = checked;
        p.stream = stream_ptr(stream);
        nb::gil_scoped_release release;
        copy_blocks(p);
      },
      nb::arg("key_caches"), nb::arg("value_caches"), nb::arg("block_mapping"), nb::arg("checked"),
      nb::arg("stream"), "Copies whole blocks (src, dst) in every layer's caches.");

  m.def(
      "swap_blocks",
      [](ArrayRO src, Array dst, ArrayRO block_mapping, std::uintptr_t stream) {
        SwapBlocksParams p;
        p.src = to_view(src, "src");
        p.dst = to_view(dst, "dst");
        p.block_mapping = to_view(block_mapping, "block_mapping");
        p.stream = stream_ptr(stream);
        nb::gil_scoped_release release;
        swap_blocks(p);
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("block_mapping"), nb::arg("stream"),
      "Copies blocks (src, dst) from one cache to another (host <-> device or within a device).");
}

}  // namespace pagedattn::python
