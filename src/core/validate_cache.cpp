#include "core/validate_cache.h"

#include <string>

#include "core/check.h"

namespace pagedattn::detail {
namespace {

constexpr auto kInv = ErrorCode::kInvalidArgument;

bool same_shape(const TensorView& a, const TensorView& b, int first_dim) {
  if (a.ndim != b.ndim) return false;
  for (int i = first_dim; i < a.ndim; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

void require_cache(const TensorView& t, const char* op, const std::string& name, int packed_from) {
  require_defined(t, op, name.c_str());
  if (t.ndim < 2)
    fail(kInv, op, ": ", name, " must have at least 2 dimensions [num_blocks, ...]; got shape ", shape_str(t));
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] < 0) fail(kInv, op, ": ", name, " has a negative size ", shape_str(t));
  require_contiguous_from(t, op, name.c_str(), packed_from);
}

std::string layer_name(const char* what, std::size_t l) { return cat(what, "[", l, "]"); }

}  // namespace

CopyBlocksShape validate_copy_blocks(const CopyBlocksParams& p) {
  const char* op = "copy_blocks";
  CopyBlocksShape s;
  if (p.key_caches.size() != p.value_caches.size())
    fail(kInv, op, ": got ", p.key_caches.size(), " key caches but ", p.value_caches.size(),
         " value caches; need one of each per layer");
  validate_block_mapping(p.block_mapping, op);
  s.num_pairs = p.block_mapping.shape[0];
  if (p.key_caches.empty()) {
    s.device = p.block_mapping.device;
    return s;
  }
  const TensorView& k0 = p.key_caches[0];
  const TensorView& v0 = p.value_caches[0];
  require_cache(k0, op, "key_caches[0]", 2);
  require_cache(v0, op, "value_caches[0]", 2);
  s.num_blocks = k0.shape[0];
  s.device = k0.device;
  if (v0.shape[0] != s.num_blocks)
    fail(kInv, op, ": value_caches[0] has ", v0.shape[0], " blocks but key_caches[0] has ", s.num_blocks,
         "; key and value caches must have the same num_blocks");
  for (std::size_t l = 0; l < p.key_caches.size(); ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const TensorView& t = kv == 0 ? p.key_caches[l] : p.value_caches[l];
      const TensorView& ref = kv == 0 ? k0 : v0;
      const std::string name = layer_name(kv == 0 ? "key_caches" : "value_caches", l);
      const char* ref_name = kv == 0 ? "key_caches[0]" : "value_caches[0]";
      require_cache(t, op, name, 2);
      if (!same_shape(t, ref, 0))
        fail(kInv, op, ": ", name, " has shape ", shape_str(t), " but ", ref_name, " has shape ", shape_str(ref),
             "; every layer's caches must agree");
      if (t.dtype != k0.dtype)
        fail(kInv, op, ": ", name, " has dtype ", dtype_name(t.dtype), " but key_caches[0] has dtype ",
             dtype_name(k0.dtype), "; every cache must have one dtype");
      if (t.device != s.device)
        fail(kInv, op, ": ", name, " is on ", device_name(t.device), " but key_caches[0] is on ",
             device_name(s.device), "; every cache must be on one device");
    }
  }
  if (p.block_mapping.device != s.device)
    fail(kInv, op, ": block_mapping is on ", device_name(p.block_mapping.device), " but the caches are on ",
         device_name(s.device), "; block_mapping must live with the caches");
  return s;
}

SwapBlocksShape validate_swap_blocks(const SwapBlocksParams& p) {
  const char* op = "swap_blocks";
  SwapBlocksShape s;
  require_cache(p.src, op, "src", 1);
  require_cache(p.dst, op, "dst", 1);
  if (!same_shape(p.src, p.dst, 1))
    fail(kInv, op, ": src shape ", shape_str(p.src), " and dst shape ", shape_str(p.dst),
         " disagree beyond dimension 0; blocks must have the same shape");
  if (p.src.dtype != p.dst.dtype)
    fail(kInv, op, ": src has dtype ", dtype_name(p.src.dtype), " but dst has dtype ", dtype_name(p.dst.dtype),
         "; they must match");
  validate_block_mapping(p.block_mapping, op);
  if (p.block_mapping.device.type != DeviceType::kCPU)
    fail(kInv, op, ": block_mapping is on ", device_name(p.block_mapping.device), "; it must be in host memory (cpu)");
  s.src_blocks = p.src.shape[0];
  s.dst_blocks = p.dst.shape[0];
  s.num_pairs = p.block_mapping.shape[0];
  std::int64_t per_block = 1;
  for (int i = 1; i < p.src.ndim; ++i) per_block *= p.src.shape[i];
  s.bytes_per_block = static_cast<std::size_t>(per_block) * dtype_size(p.src.dtype);
  return s;
}

void check_slot_mapping_host(const ReshapeAndCacheParams& p, const CacheShape& s) {
  const auto* slots = static_cast<const std::int64_t*>(p.slot_mapping.data);
  const std::int64_t limit = s.num_blocks * s.block_size;
  for (std::int64_t t = 0; t < s.num_tokens; ++t)
    if (slots[t] >= limit) fail_bad_slot(s, t, slots[t]);
}

void fail_bad_slot(const CacheShape& s, std::int64_t token, std::int64_t slot) {
  fail(ErrorCode::kDataError, "reshape_and_cache: checked mode: slot_mapping[", token, "] = ", slot,
       " is outside the cache; slots must be < num_blocks * block_size = ", s.num_blocks, " * ", s.block_size, " = ",
       s.num_blocks * s.block_size, " (negative slots are padding)");
}

void fail_bad_block(const char* op, std::int64_t pair, bool source, std::int64_t block, std::int64_t num_blocks) {
  fail(ErrorCode::kDataError, op, ": checked mode: block_mapping[", pair, "]: ", source ? "source" : "destination",
       " block ", block, " is outside [0, num_blocks = ", num_blocks, ")");
}

void check_block_pairs_host(const TensorView& m, std::int64_t src_blocks, std::int64_t dst_blocks, const char* op) {
  const auto* pairs = static_cast<const std::int64_t*>(m.data);
  for (std::int64_t i = 0; i < m.shape[0]; ++i) {
    const std::int64_t src = pairs[2 * i], dst = pairs[2 * i + 1];
    if (src < 0 || src >= src_blocks) fail_bad_block(op, i, true, src, src_blocks);
    if (dst < 0 || dst >= dst_blocks) fail_bad_block(op, i, false, dst, dst_blocks);
  }
}

}  // namespace pagedattn::detail
