#include "core/validate.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>
#include <utility>

#include "core/check.h"

namespace pagedattn::detail {
namespace {

constexpr auto kInv = ErrorCode::kInvalidArgument;

template <typename Set>
std::string join(const Set& s) {
  std::string r;
  for (auto v : s) r += (r.empty() ? "" : ", ") + std::to_string(v);
  return r;
}

template <typename Set>
bool contains(const Set& s, int v) {
  for (auto e : s)
    if (e == v) return true;
  return false;
}

/// The dtype of a query/key-like tensor: float32, float16 or bfloat16.
DType require_float_dtype(const TensorView& t, const char* op, const char* name) {
  const DType d = t.dtype;
  if (d != DType::kFloat32 && d != DType::kFloat16 && d != DType::kBFloat16)
    fail(ErrorCode::kUnsupported, op, ": unsupported ", name, " dtype ", dtype_name(d),
         "; supported: float32, float16, bfloat16");
  return d;
}

void require_ndim(const TensorView& t, const char* op, const char* name, int ndim, const char* layout) {
  if (t.ndim != ndim)
    fail(kInv, op, ": ", name, " must have ", ndim, " dimensions ", layout, "; got ", t.ndim, " dimensions ",
         shape_str(t));
  for (int i = 0; i < ndim; ++i)
    if (t.shape[i] < 0) fail(kInv, op, ": ", name, " has a negative size ", shape_str(t));
}

void require_dim(const TensorView& t, const char* op, const char* name, int d, std::int64_t expect,
                 const char* what) {
  if (t.shape[d] != expect)
    fail(kInv, op, ": ", name, " dimension ", d, " is ", t.shape[d], " but must equal ", what, " = ", expect,
         " (", name, " shape ", shape_str(t), ")");
}

void require_dtype(const TensorView& t, const char* op, const char* name, DType expect, const char* why) {
  if (t.dtype != expect)
    fail(kInv, op, ": ", name, " has dtype ", dtype_name(t.dtype), "; must be ", dtype_name(expect), why);
}

void require_device(const TensorView& t, const char* op, const char* name, const Device& dev, const char* ref) {
  if (t.device != dev)
    fail(kInv, op, ": ", name, " is on ", device_name(t.device), " but ", ref, " is on ", device_name(dev),
         "; all tensors must be on one device");
}

void require_stride_at_least(const TensorView& t, const char* op, const char* name, int d, std::int64_t min) {
  if (t.shape[d] > 1 && t.strides[d] < min)
    fail(kInv, op, ": ", name, " stride(", d, ") is ", t.strides[d], "; must be at least ", min,
         " so rows do not overlap");
}

void require_finite(float v, const char* op, const char* name) {
  if (!std::isfinite(v)) fail(kInv, op, ": ", name, " is ", v, "; must be finite");
}

int cache_x(DType storage) { return static_cast<int>(16 / dtype_size(storage)); }

DType cache_storage_for(CacheDType c, DType t) { return c == CacheDType::kAuto ? t : DType::kUInt8; }

/// A float32 tensor on `dev`, contiguous, whose sizes are exactly `dims` (each named for the
/// message): alibi_slopes, lse, per-head scales, merge's lse inputs.
void require_f32(const TensorView& t, const char* op, const char* name, const char* layout,
                 std::initializer_list<std::pair<std::int64_t, const char*>> dims, const Device& dev, const char* ref) {
  require_defined(t, op, name);
  require_ndim(t, op, name, static_cast<int>(dims.size()), layout);
  require_dtype(t, op, name, DType::kFloat32, "");
  require_device(t, op, name, dev, ref);
  int d = 0;
  for (const auto& [size, what] : dims) require_dim(t, op, name, d++, size, what);
  require_contiguous_from(t, op, name, 0);
}

/// Per-kv-head fp8 scales (attention and reshape_and_cache): both or neither, fp8 caches only,
/// per-tensor scales left at 1.0, float32 [num_kv_heads] on the call's device.
void validate_head_scales(const TensorView& ks, const TensorView& vs, CacheDType cache, float k_scale, float v_scale,
                          int num_kv_heads, const Device& dev, const char* op, const char* ref) {
  if (ks.defined() != vs.defined())
    fail(kInv, op, ": ", ks.defined() ? "k_scales" : "v_scales", " is given without ",
         ks.defined() ? "v_scales" : "k_scales", "; per-head scales come in pairs");
  if (!ks.defined()) return;
  if (cache == CacheDType::kAuto)
    fail(kInv, op, ": k_scales/v_scales are given but kv_cache_dtype is auto; per-head scales apply to fp8 caches only");
  if (k_scale != 1.0f || v_scale != 1.0f)
    fail(kInv, op, ": k_scale/v_scale are ", k_scale, "/", v_scale,
         " but per-head k_scales/v_scales are given; leave the per-tensor scales at 1.0");
  for (auto [t, name] : {std::pair{&ks, "k_scales"}, std::pair{&vs, "v_scales"}})
    require_f32(*t, op, name, "[num_kv_heads]", {{num_kv_heads, "num_kv_heads"}}, dev, ref);
}

}  // namespace

void require_defined(const TensorView& t, const char* op, const char* name) {
  if (!t.defined() || t.data == nullptr) fail(kInv, op, ": ", name, " is missing (null data pointer)");
}

void require_contiguous_from(const TensorView& t, const char* op, const char* name, int first_dim) {
  if (!t.is_contiguous_from(first_dim))
    fail(kInv, op, ": ", name, " must be contiguous from dimension ", first_dim, " on; got shape ", shape_str(t),
         " strides ", strides_str(t));
}

AttentionShape validate_attention(const PagedAttentionParams& p, const char* op) {
  AttentionShape s;
  require_defined(p.query, op, "query");
  require_defined(p.out, op, "out");
  require_defined(p.key_cache, op, "key_cache");
  require_defined(p.value_cache, op, "value_cache");
  require_defined(p.block_tables, op, "block_tables");
  require_defined(p.seq_lens, op, "seq_lens");

  // query / out
  require_ndim(p.query, op, "query", 3, "[num_query_rows, num_heads, head_size]");
  const DType t = require_float_dtype(p.query, op, "query");
  s.dtype = t;
  s.num_rows = static_cast<int>(p.query.shape[0]);
  s.num_seqs = s.num_rows;
  s.num_heads = static_cast<int>(p.query.shape[1]);
  s.head_size = static_cast<int>(p.query.shape[2]);
  s.device = p.query.device;
  if (!contains(kHeadSizes, s.head_size))
    fail(ErrorCode::kUnsupported, op, ": unsupported head_size ", s.head_size, "; supported: ", join(kHeadSizes));
  if (s.num_heads <= 0) fail(kInv, op, ": num_heads (query dimension 1) is ", s.num_heads, "; must be positive");
  require_contiguous_from(p.query, op, "query", 1);
  require_stride_at_least(p.query, op, "query", 0, std::int64_t(s.num_heads) * s.head_size);
  s.q_stride = p.query.shape[0] > 1 ? p.query.strides[0] : std::int64_t(s.num_heads) * s.head_size;

  require_ndim(p.out, op, "out", 3, "[num_query_rows, num_heads, head_size]");
  require_dtype(p.out, op, "out", t, " (the query dtype)");
  require_device(p.out, op, "out", s.device, "query");
  for (int d = 0; d < 3; ++d) require_dim(p.out, op, "out", d, p.query.shape[d], "query's");
  require_contiguous_from(p.out, op, "out", 0);

  // multi-token queries: the sequences come from query_start_loc, the rows from query
  if (p.query_start_loc.defined()) {
    require_defined(p.query_start_loc, op, "query_start_loc");
    require_ndim(p.query_start_loc, op, "query_start_loc", 1, "[num_seqs + 1]");
    require_dtype(p.query_start_loc, op, "query_start_loc", DType::kInt32, "");
    require_device(p.query_start_loc, op, "query_start_loc", s.device, "query");
    require_contiguous_from(p.query_start_loc, op, "query_start_loc", 0);
    if (p.query_start_loc.shape[0] < 1)
      fail(kInv, op, ": query_start_loc has ", p.query_start_loc.shape[0], " entries; must have num_seqs + 1 >= 1");
    s.num_seqs = static_cast<int>(p.query_start_loc.shape[0] - 1);
    s.multi_token = true;
    if (p.max_query_len < 0 || p.max_query_len > s.num_rows)
      fail(kInv, op, ": max_query_len is ", p.max_query_len, "; must be in [0, num_query_rows = ", s.num_rows,
           "] (0: unknown)");
    // without the hint, every row may belong to one sequence (others may have no query token)
    s.max_q_len = p.max_query_len > 0 ? p.max_query_len : std::max(1, s.num_rows);
  } else if (p.max_query_len > 1 || p.max_query_len < 0) {
    fail(kInv, op, ": max_query_len is ", p.max_query_len,
         " without query_start_loc; one query token per sequence allows only 0 or 1");
  }
  if (p.window_left < -1)
    fail(kInv, op, ": window_left is ", p.window_left, "; must be >= 0, or -1 for no sliding window");
  if (!(p.logits_soft_cap >= 0.0f) || !std::isfinite(p.logits_soft_cap))
    fail(kInv, op, ": logits_soft_cap is ", p.logits_soft_cap, "; must be finite and >= 0 (0: off)");
  if (p.lse.defined())
    require_f32(p.lse, op, "lse", "[num_query_rows, num_heads]",
                {{s.num_rows, "query's num_query_rows"}, {s.num_heads, "num_heads"}}, s.device, "query");

  // scalars
  if (!contains(kBlockSizes, p.block_size))
    fail(ErrorCode::kUnsupported, op, ": unsupported block_size ", p.block_size, "; supported: ", join(kBlockSizes));
  s.block_size = p.block_size;
  if (p.num_kv_heads <= 0) fail(kInv, op, ": num_kv_heads is ", p.num_kv_heads, "; must be positive");
  if (s.num_heads % p.num_kv_heads != 0)
    fail(kInv, op, ": num_heads ", s.num_heads, " is not a multiple of num_kv_heads ", p.num_kv_heads,
         "; GQA/MQA need num_heads % num_kv_heads == 0");
  s.num_kv_heads = p.num_kv_heads;
  if (p.max_seq_len < 0) fail(kInv, op, ": max_seq_len is ", p.max_seq_len, "; must be >= 0");
  if (p.total_tokens < 0 || p.total_tokens > static_cast<long long>(s.num_seqs) * p.max_seq_len)
    fail(kInv, op, ": total_tokens is ", p.total_tokens, "; must be in [0, num_seqs * max_seq_len = ",
         static_cast<long long>(s.num_seqs) * p.max_seq_len, "] (0: unknown)");
  require_finite(p.scale, op, "scale");
  require_finite(p.k_scale, op, "k_scale");
  require_finite(p.v_scale, op, "v_scale");
  validate_head_scales(p.k_scales, p.v_scales, p.kv_cache_dtype, p.k_scale, p.v_scale, p.num_kv_heads, s.device, op,
                       "query");
  if (p.tp_rank < 0) fail(kInv, op, ": tp_rank is ", p.tp_rank, "; must be >= 0");
  if (p.blocksparse.enabled()) {
    const auto& b = p.blocksparse;
    if (b.block_size <= 0 || b.block_size % p.block_size != 0)
      fail(kInv, op, ": blocksparse_block_size is ", b.block_size, "; must be a positive multiple of block_size ",
           p.block_size, " when blocksparse_vert_stride > 1");
    if (b.local_blocks < 0)
      fail(kInv, op, ": blocksparse_local_blocks is ", b.local_blocks, "; must be >= 0");
  }

  // caches
  const DType storage = cache_storage_for(p.kv_cache_dtype, t);
  s.cache_storage = storage;
  s.x = cache_x(storage);
  const char* why = p.kv_cache_dtype == CacheDType::kAuto ? " (kv_cache_dtype auto: the query dtype)"
                                                           : " (an fp8 kv_cache_dtype stores one byte per element)";
  require_ndim(p.key_cache, op, "key_cache", 5, "[num_blocks, num_kv_heads, head_size/x, block_size, x]");
  require_dtype(p.key_cache, op, "key_cache", storage, why);
  require_device(p.key_cache, op, "key_cache", s.device, "query");
  s.num_blocks = p.key_cache.shape[0];
  require_dim(p.key_cache, op, "key_cache", 1, s.num_kv_heads, "num_kv_heads");
  // ceil: with an fp8 cache (x = 16) head_size 120 needs 8 chunks; head_size/x = 7 would
  // leave elements 112..119 outside the tensor.
  require_dim(p.key_cache, op, "key_cache", 2, (s.head_size + s.x - 1) / s.x, "ceil(head_size/x)");
  require_dim(p.key_cache, op, "key_cache", 3, s.block_size, "block_size");
  require_dim(p.key_cache, op, "key_cache", 4, s.x, "x = 16/sizeof(cache element)");
  require_contiguous_from(p.key_cache, op, "key_cache", 2);
  s.kv_block_stride = p.key_cache.strides[0];
  s.k_head_stride = p.key_cache.strides[1];

  require_ndim(p.value_cache, op, "value_cache", 4, "[num_blocks, num_kv_heads, head_size, block_size]");
  require_dtype(p.value_cache, op, "value_cache", storage, why);
  require_device(p.value_cache, op, "value_cache", s.device, "query");
  require_dim(p.value_cache, op, "value_cache", 0, s.num_blocks, "key_cache's num_blocks");
  require_dim(p.value_cache, op, "value_cache", 1, s.num_kv_heads, "num_kv_heads");
  require_dim(p.value_cache, op, "value_cache", 2, s.head_size, "head_size");
  require_dim(p.value_cache, op, "value_cache", 3, s.block_size, "block_size");
  require_contiguous_from(p.value_cache, op, "value_cache", 2);
  s.v_block_stride = p.value_cache.strides[0];
  s.v_head_stride = p.value_cache.strides[1];
  if (s.num_blocks > 0) {
    const std::int64_t k_inner = p.key_cache.shape[2] * s.x * s.block_size;  // ceil(head_size/x)*x*block_size
    const std::int64_t v_inner = std::int64_t(s.head_size) * s.block_size;
    if (s.num_kv_heads > 1 && (s.k_head_stride < k_inner || s.v_head_stride < v_inner))
      fail(kInv, op, ": key_cache/value_cache head strides (", s.k_head_stride, ", ", s.v_head_stride,
           ") must be at least (", k_inner, ", ", v_inner, "), the size of one head's block");
    if (s.num_blocks > 1 && (s.kv_block_stride < k_inner || s.v_block_stride < v_inner))
      fail(kInv, op, ": key_cache/value_cache block strides (", s.kv_block_stride, ", ", s.v_block_stride,
           ") must be at least (", k_inner, ", ", v_inner, "), the size of one head's block");
  }

  // tables
  require_ndim(p.block_tables, op, "block_tables", 2, "[num_seqs, max_num_blocks_per_seq]");
  const char* seqs_from = s.multi_token ? "num_seqs (query_start_loc's length - 1)" : "num_seqs";
  require_dtype(p.block_tables, op, "block_tables", DType::kInt32, "");
  require_device(p.block_tables, op, "block_tables", s.device, "query");
  require_dim(p.block_tables, op, "block_tables", 0, s.num_seqs, seqs_from);
  require_contiguous_from(p.block_tables, op, "block_tables", 1);
  s.max_blocks_per_seq = static_cast<int>(p.block_tables.shape[1]);
  require_stride_at_least(p.block_tables, op, "block_tables", 0, s.max_blocks_per_seq);
  s.bt_stride = p.block_tables.shape[0] > 1 ? p.block_tables.strides[0] : s.max_blocks_per_seq;

  require_ndim(p.seq_lens, op, "seq_lens", 1, "[num_seqs]");
  require_dtype(p.seq_lens, op, "seq_lens", DType::kInt32, "");
  require_device(p.seq_lens, op, "seq_lens", s.device, "query");
  require_dim(p.seq_lens, op, "seq_lens", 0, s.num_seqs, seqs_from);
  require_contiguous_from(p.seq_lens, op, "seq_lens", 0);

  if (p.alibi_slopes.defined())
    require_f32(p.alibi_slopes, op, "alibi_slopes", "[num_heads]", {{s.num_heads, "num_heads"}}, s.device, "query");
  s.max_num_partitions = v2_max_num_partitions(p.max_seq_len);
  return s;
}

LogitsRule make_logits_rule(const PagedAttentionParams& p, const AttentionShape& s) {
  LogitsRule r;
  r.soft_cap = p.logits_soft_cap;
  r.inv_soft_cap = p.logits_soft_cap > 0.0f ? 1.0f / p.logits_soft_cap : 0.0f;
  r.window_left = p.window_left;
  r.sparse = p.blocksparse.enabled() ? 1 : 0;
  r.sparse_local_blocks = p.blocksparse.local_blocks;
  r.sparse_vert_stride = p.blocksparse.vert_stride;
  r.sparse_block_size = p.blocksparse.block_size;
  r.sparse_sliding_step = p.blocksparse.head_sliding_step;
  r.tp_rank = p.tp_rank;
  r.num_heads = s.num_heads;
  r.num_kv_heads = s.num_kv_heads;
  return r;
}

void reject_variants(const PagedAttentionParams& p, const char* op) {
  const char* field = p.query_start_loc.defined()                         ? "query_start_loc"
                      : p.max_query_len != 0                              ? "max_query_len"
                      : p.window_left != -1                               ? "window_left"
                      : p.logits_soft_cap != 0.0f                         ? "logits_soft_cap"
                      : p.lse.defined()                                   ? "lse"
                      : (p.k_scales.defined() || p.v_scales.defined())    ? "k_scales/v_scales"
                                                                          : nullptr;
  if (field == nullptr) return;  // the plain call vLLM's V1/V2 define
  fail(kInv, op, ": ", field, " is set, but ", op,
       " keeps vLLM's contract (one query per sequence, no window, soft-cap, lse or per-head scales); "
       "use paged_attention (the auto entry point) for these variants");
}

void validate_v2_workspace(const PagedAttentionParams& p, const AttentionShape& s, const V2Workspace& ws) {
  const char* op = "paged_attention_v2";
  for (auto [t, name] : {std::pair{&ws.exp_sums, "exp_sums"}, std::pair{&ws.max_logits, "max_logits"}}) {
    require_defined(*t, op, name);
    require_ndim(*t, op, name, 3, "[num_seqs, num_heads, max_num_partitions]");
    require_dtype(*t, op, name, DType::kFloat32, "");
    require_device(*t, op, name, s.device, "query");
    require_dim(*t, op, name, 0, s.num_seqs, "num_seqs");
    require_dim(*t, op, name, 1, s.num_heads, "num_heads");
    if (t->shape[2] < s.max_num_partitions)
      fail(kInv, op, ": ", name, " has room for ", t->shape[2], " partitions but max_seq_len ", p.max_seq_len,
           " needs ceil(max_seq_len/512) = ", s.max_num_partitions);
    require_contiguous_from(*t, op, name, 0);
  }
  if (ws.exp_sums.shape[2] != ws.max_logits.shape[2])
    fail(kInv, op, ": exp_sums and max_logits disagree on max_num_partitions (", ws.exp_sums.shape[2], " vs ",
         ws.max_logits.shape[2], ")");
  require_defined(ws.tmp_out, op, "tmp_out");
  require_ndim(ws.tmp_out, op, "tmp_out", 4, "[num_seqs, num_heads, max_num_partitions, head_size]");
  require_dtype(ws.tmp_out, op, "tmp_out", s.dtype, " (the query dtype)");
  require_device(ws.tmp_out, op, "tmp_out", s.device, "query");
  require_dim(ws.tmp_out, op, "tmp_out", 0, s.num_seqs, "num_seqs");
  require_dim(ws.tmp_out, op, "tmp_out", 1, s.num_heads, "num_heads");
  require_dim(ws.tmp_out, op, "tmp_out", 2, ws.exp_sums.shape[2], "exp_sums' max_num_partitions");
  require_dim(ws.tmp_out, op, "tmp_out", 3, s.head_size, "head_size");
  require_contiguous_from(ws.tmp_out, op, "tmp_out", 0);
}

void fail_attention_data(const PagedAttentionParams& p, const AttentionShape& s, int kind, int seq, int entry,
                         std::int64_t value) {
  const auto code = ErrorCode::kDataError;
  switch (kind) {
    case 1:
      fail(code, "checked mode: seq_lens[", seq, "] = ", value, " exceeds max_seq_len ", p.max_seq_len);
    case 2:
      fail(code, "checked mode: seq_lens[", seq, "] = ", value, " needs more blocks than block_tables holds (",
           s.max_blocks_per_seq, " blocks of ", s.block_size, " tokens = ",
           std::int64_t(s.max_blocks_per_seq) * s.block_size, " tokens)");
    case 3:
      fail(code, "checked mode: seq_lens[", seq, "] = ", value, " is negative");
    default:
      fail(code, "checked mode: block_tables[", seq, "][", entry, "] = ", value,
           " (sequence ", seq, ", logical block ", entry, ") is outside [0, num_blocks = ", s.num_blocks, ")");
  }
}

[[noreturn]] static void fail_query_start_loc(const PagedAttentionParams& p, const AttentionShape& s, int kind, int seq,
                                              std::int64_t value, std::int64_t other) {
  const auto code = ErrorCode::kDataError;
  switch (kind) {
    case 1:
      fail(code, "checked mode: query_start_loc[0] = ", value, "; must be 0");
    case 2:
      fail(code, "checked mode: query_start_loc[", seq + 1, "] = ", value, " is below query_start_loc[", seq,
           "] = ", other, "; query_start_loc must be non-decreasing");
    case 3:
      fail(code, "checked mode: query_start_loc[", s.num_seqs, "] = ", value, " but query has ", s.num_rows,
           " rows; the last entry must equal the number of query rows");
    case 4:
      fail(code, "checked mode: sequence ", seq, " has q_len ", value, " (query_start_loc) but seq_lens[", seq,
           "] = ", other, "; a sequence's new tokens are counted in its seq_len, so q_len <= seq_len");
    default:
      fail(code, "checked mode: sequence ", seq, " has q_len ", value, " but max_query_len is ", p.max_query_len);
  }
}

void check_query_rows(const PagedAttentionParams& p, const AttentionShape& s, const std::int32_t* qsl,
                      const std::int32_t* lens) {
  if (qsl[0] != 0) fail_query_start_loc(p, s, 1, 0, qsl[0], 0);
  for (int i = 0; i < s.num_seqs; ++i)
    if (qsl[i + 1] < qsl[i]) fail_query_start_loc(p, s, 2, i, qsl[i + 1], qsl[i]);
  if (qsl[s.num_seqs] != s.num_rows) fail_query_start_loc(p, s, 3, 0, qsl[s.num_seqs], 0);
  for (int i = 0; i < s.num_seqs; ++i) {
    const std::int64_t q_len = qsl[i + 1] - qsl[i];
    if (lens[i] >= 0 && q_len > lens[i]) fail_query_start_loc(p, s, 4, i, q_len, lens[i]);
    if (p.max_query_len > 0 && q_len > p.max_query_len) fail_query_start_loc(p, s, 5, i, q_len, 0);
  }
}

void check_attention_data_host(const PagedAttentionParams& p, const AttentionShape& s) {
  const auto* lens = static_cast<const std::int32_t*>(p.seq_lens.data);
  const auto* bt = static_cast<const std::int32_t*>(p.block_tables.data);
  if (s.multi_token) check_query_rows(p, s, static_cast<const std::int32_t*>(p.query_start_loc.data), lens);
  for (int i = 0; i < s.num_seqs; ++i) {
    const std::int64_t len = lens[i];
    if (len < 0) fail_attention_data(p, s, 3, i, 0, len);
    if (len > p.max_seq_len) fail_attention_data(p, s, 1, i, 0, len);
    if (len > std::int64_t(s.max_blocks_per_seq) * s.block_size) fail_attention_data(p, s, 2, i, 0, len);
    const std::int64_t nblk = (len + s.block_size - 1) / s.block_size;
    for (std::int64_t b = 0; b < nblk; ++b) {
      const std::int64_t id = bt[i * s.bt_stride + b];
      if (id < 0 || id >= s.num_blocks) fail_attention_data(p, s, 4, i, static_cast<int>(b), id);
    }
  }
}

MergeShape validate_merge_states(const MergeStatesParams& p) {
  const char* op = "merge_attention_states";
  MergeShape s;
  require_defined(p.out_a, op, "out_a");
  require_ndim(p.out_a, op, "out_a", 3, "[rows, num_heads, head_size]");
  s.dtype = require_float_dtype(p.out_a, op, "out_a");
  s.device = p.out_a.device;
  s.rows = p.out_a.shape[0];
  s.num_heads = static_cast<int>(p.out_a.shape[1]);
  s.head_size = static_cast<int>(p.out_a.shape[2]);
  for (auto [t, name] : {std::pair{&p.out_a, "out_a"}, std::pair{&p.out_b, "out_b"}, std::pair{&p.out, "out"}}) {
    require_defined(*t, op, name);
    require_ndim(*t, op, name, 3, "[rows, num_heads, head_size]");
    require_dtype(*t, op, name, s.dtype, " (out_a's dtype)");
    require_device(*t, op, name, s.device, "out_a");
    for (int d = 0; d < 3; ++d) require_dim(*t, op, name, d, p.out_a.shape[d], "out_a's");
    require_contiguous_from(*t, op, name, 0);
  }
  s.with_lse = p.lse.defined();
  for (auto [t, name] : {std::pair{&p.lse_a, "lse_a"}, std::pair{&p.lse_b, "lse_b"}, std::pair{&p.lse, "lse"}}) {
    if (t == &p.lse && !s.with_lse) continue;
    require_f32(*t, op, name, "[rows, num_heads]", {{s.rows, "out_a's rows"}, {s.num_heads, "out_a's num_heads"}},
                s.device, "out_a");
  }
  return s;
}

void validate_block_mapping(const TensorView& m, const char* op) {
  require_defined(m, op, "block_mapping");
  require_ndim(m, op, "block_mapping", 2, "[num_pairs, 2]");
  require_dtype(m, op, "block_mapping", DType::kInt64, "");
  if (m.shape[1] != 2)
    fail(kInv, op, ": block_mapping dimension 1 is ", m.shape[1], " but must be 2 (src, dst pairs)");
  require_contiguous_from(m, op, "block_mapping", 0);
}

CacheShape validate_reshape_and_cache(const ReshapeAndCacheParams& p) {
  const char* op = "reshape_and_cache";
  CacheShape s;
  require_defined(p.key, op, "key");
  require_defined(p.value, op, "value");
  require_defined(p.key_cache, op, "key_cache");
  require_defined(p.value_cache, op, "value_cache");
  require_defined(p.slot_mapping, op, "slot_mapping");
  require_ndim(p.key, op, "key", 3, "[num_tokens, num_kv_heads, head_size]");
  const DType t = require_float_dtype(p.key, op, "key");
  s.dtype = t;
  s.device = p.key.device;
  s.num_tokens = p.key.shape[0];
  s.num_kv_heads = static_cast<int>(p.key.shape[1]);
  s.head_size = static_cast<int>(p.key.shape[2]);
  require_contiguous_from(p.key, op, "key", 1);
  require_ndim(p.value, op, "value", 3, "[num_tokens, num_kv_heads, head_size]");
  require_dtype(p.value, op, "value", t, " (the key dtype)");
  require_device(p.value, op, "value", s.device, "key");
  for (int d = 0; d < 3; ++d) require_dim(p.value, op, "value", d, p.key.shape[d], "key's");
  require_contiguous_from(p.value, op, "value", 1);
  if (s.head_size <= 0) fail(kInv, op, ": head_size is ", s.head_size, "; must be positive");

  s.cache_storage = cache_storage_for(p.kv_cache_dtype, t);
  s.x = cache_x(s.cache_storage);
  const char* why = p.kv_cache_dtype == CacheDType::kAuto ? " (kv_cache_dtype auto: the key dtype)"
                                                           : " (an fp8 kv_cache_dtype stores one byte per element)";
  require_ndim(p.key_cache, op, "key_cache", 5, "[num_blocks, num_kv_heads, head_size/x, block_size, x]");
  require_dtype(p.key_cache, op, "key_cache", s.cache_storage, why);
  require_device(p.key_cache, op, "key_cache", s.device, "key");
  s.num_blocks = p.key_cache.shape[0];
  s.block_size = static_cast<int>(p.key_cache.shape[3]);
  if (s.block_size <= 0) fail(kInv, op, ": key_cache block_size (dimension 3) is ", s.block_size, "; must be positive");
  require_dim(p.key_cache, op, "key_cache", 1, s.num_kv_heads, "key's num_kv_heads");
  require_dim(p.key_cache, op, "key_cache", 2, (s.head_size + s.x - 1) / s.x, "ceil(head_size/x)");
  require_dim(p.key_cache, op, "key_cache", 4, s.x, "x = 16/sizeof(cache element)");
  require_contiguous_from(p.key_cache, op, "key_cache", 2);
  require_ndim(p.value_cache, op, "value_cache", 4, "[num_blocks, num_kv_heads, head_size, block_size]");
  require_dtype(p.value_cache, op, "value_cache", s.cache_storage, why);
  require_device(p.value_cache, op, "value_cache", s.device, "key");
  require_dim(p.value_cache, op, "value_cache", 0, s.num_blocks, "key_cache's num_blocks");
  require_dim(p.value_cache, op, "value_cache", 1, s.num_kv_heads, "key's num_kv_heads");
  require_dim(p.value_cache, op, "value_cache", 2, s.head_size, "key's head_size");
  require_dim(p.value_cache, op, "value_cache", 3, s.block_size, "key_cache's block_size");
  require_contiguous_from(p.value_cache, op, "value_cache", 2);

  require_ndim(p.slot_mapping, op, "slot_mapping", 1, "[num_tokens]");
  require_dtype(p.slot_mapping, op, "slot_mapping", DType::kInt64, "");
  require_device(p.slot_mapping, op, "slot_mapping", s.device, "key");
  require_dim(p.slot_mapping, op, "slot_mapping", 0, s.num_tokens, "num_tokens");
  require_contiguous_from(p.slot_mapping, op, "slot_mapping", 0);
  require_finite(p.k_scale, op, "k_scale");
  require_finite(p.v_scale, op, "v_scale");
  if (p.kv_cache_dtype != CacheDType::kAuto && (p.k_scale == 0.0f || p.v_scale == 0.0f))
    fail(kInv, op, ": k_scale/v_scale are ", p.k_scale, "/", p.v_scale, "; an fp8 cache needs nonzero scales");
  validate_head_scales(p.k_scales, p.v_scales, p.kv_cache_dtype, p.k_scale, p.v_scale, s.num_kv_heads, s.device, op,
                       "key");
  return s;
}

}  // namespace pagedattn::detail
