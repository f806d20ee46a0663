// CUDA backend entry points for attention: V1, V2 (partition + reduce) and auto.
#include "core/backend.h"
#include "core/check.h"
#include "cuda/attention_kernel.cuh"
#include "cuda/device_guard.h"
#include "cuda/launch.h"

namespace pagedattn::detail::cuda {
namespace {

int log2_exact(int v) {
  int s = 0;
  while ((1 << s) < v) ++s;
  return s;
}

void require_aligned(const TensorView& t, const char* op, const char* name) {
  const auto addr = reinterpret_cast<std::uintptr_t>(t.data);
  const std::int64_t per16 = 16 / static_cast<std::int64_t>(dtype_size(t.dtype));
  if (addr % 16 != 0)
    fail(ErrorCode::kInvalidArgument, op, ": ", name, " data pointer must be 16-byte aligned for the CUDA kernels' vector loads");
  for (int d = 0; d < 2; ++d)
    if (t.shape[d] > 1 && t.strides[d] % per16 != 0)
      fail(ErrorCode::kInvalidArgument, op, ": ", name, " stride(", d, ") = ", t.strides[d],
           " elements must be a multiple of ", per16, " (16 bytes) for the CUDA kernels' vector loads");
}

AttentionKernelParams make_params(const PagedAttentionParams& p, const AttentionShape& s, const KernelChoice& kc,
                                  const char* op) {
  require_aligned(p.key_cache, op, "key_cache");
  require_aligned(p.value_cache, op, "value_cache");
  AttentionKernelParams k{};
  k.query = p.query.data;
  k.key_cache = p.key_cache.data;
  k.value_cache = p.value_cache.data;
  k.block_tables = static_cast<const std::int32_t*>(p.block_tables.data);
  k.seq_lens = static_cast<const std::int32_t*>(p.seq_lens.data);
  k.query_start_loc = s.multi_token ? static_cast<const std::int32_t*>(p.query_start_loc.data) : nullptr;
  k.alibi_slopes = p.alibi_slopes.defined() ? static_cast<const float*>(p.alibi_slopes.data) : nullptr;
  k.k_scales = p.k_scales.defined() ? static_cast<const float*>(p.k_scales.data) : nullptr;
  k.v_scales = p.v_scales.defined() ? static_cast<const float*>(p.v_scales.data) : nullptr;
  k.q_stride = s.q_stride;
  k.k_block_stride = s.kv_block_stride;
  k.k_head_stride = s.k_head_stride;
  k.v_block_stride = s.v_block_stride;
  k.v_head_stride = s.v_head_stride;
  k.bt_stride = s.bt_stride;
  const bool fp8 = p.kv_cache_dtype != CacheDType::kAuto;
  k.scale = p.scale;
  k.qk_scale = p.scale * (fp8 ? p.k_scale : 1.0f);
  k.v_scale = fp8 ? p.v_scale : 1.0f;
  k.num_heads = s.num_heads;
  k.num_kv_heads = s.num_kv_heads;
  k.group_size = s.group_size();
  k.row_tiles = kc.head_tiles;
  k.rows_vary = (s.multi_token || p.window_left >= 0) ? 1 : 0;
  k.block_size = s.block_size;
  k.block_shift = log2_exact(s.block_size);
  k.rule = make_logits_rule(p, s);
  k.out = p.out.data;
  k.lse = p.lse.defined() ? static_cast<float*>(p.lse.data) : nullptr;
  return k;
}

dim3 attention_grid(const AttentionKernelParams& k, const AttentionShape& s, int splits) {
  return dim3(static_cast<unsigned>(s.num_kv_heads * k.row_tiles), static_cast<unsigned>(s.num_seqs),
              static_cast<unsigned>(splits));
}

void check_grid(const AttentionShape& s, const KernelChoice& kc, const char* op) {
  if (s.num_seqs > 65535)
    fail(ErrorCode::kInvalidArgument, op, ": num_seqs ", s.num_seqs, " exceeds the CUDA grid limit 65535");
  if (s.num_rows > 65535)
    fail(ErrorCode::kInvalidArgument, op, ": ", s.num_rows, " query rows exceed the CUDA grid limit 65535 of the reduce");
  if (static_cast<long long>(s.num_kv_heads) * kc.head_tiles > 0x7fffffffLL)
    fail(ErrorCode::kInvalidArgument, op, ": num_kv_heads x row tiles (", s.num_kv_heads, " x ", kc.head_tiles,
         ") exceeds the CUDA grid limit");
}

/// Merges the partials the attention kernel `k` wrote (V2 and the auto path's splits).
/// skip_single: sequences with one split were written to `out` by the attention kernel.
void launch_reduce(const PagedAttentionParams& p, const AttentionShape& s, const AttentionKernelParams& k,
                   int num_launched, bool skip_single, cudaStream_t stream) {
  ReduceKernelParams r{};
  r.out = p.out.data;
  r.lse = k.lse;
  r.exp_sums = k.exp_sums;
  r.max_logits = k.max_logits;
  r.tmp_out = k.tmp_out;
  r.seq_lens = k.seq_lens;
  r.query_start_loc = k.query_start_loc;
  r.rule = k.rule;
  r.num_seqs = s.num_seqs;
  r.tmp_out_f32 = k.tmp_out_f32;
  r.num_heads = s.num_heads;
  r.head_size = s.head_size;
  r.partition_size = k.partition_size;
  r.max_splits = k.max_splits;
  r.num_launched = num_launched;
  r.skip_single = skip_single ? 1 : 0;
  const dim3 grid(static_cast<unsigned>(s.num_heads), static_cast<unsigned>(s.num_rows));
  const char* what = "reduce_kernel launch";
  switch (s.dtype) {
    case DType::kFloat16: launch_pdl(reduce_kernel<__half>, grid, dim3(kReduceThreads), 0, stream, what, r); break;
    case DType::kBFloat16: launch_pdl(reduce_kernel<__nv_bfloat16>, grid, dim3(kReduceThreads), 0, stream, what, r); break;
    default: launch_pdl(reduce_kernel<float>, grid, dim3(kReduceThreads), 0, stream, what, r); break;
  }
}

}  // namespace

void attention_v1(const PagedAttentionParams& p, const AttentionShape& s) {
  DeviceGuard guard(s.device.index);
  const KernelChoice kc = for_cta_tokens(choose_kernel(p, s), p.max_seq_len);
  check_grid(s, kc, "paged_attention_v1");
  AttentionKernelParams k = make_params(p, s, kc, "paged_attention_v1");
  k.partition_size = 1 << 30;  // one pass over the whole sequence (online softmax: no length limit)
  k.max_splits = 1;
  kc.launch(k, attention_grid(k, s, 1), static_cast<cudaStream_t>(p.stream));
}

void attention_v2(const PagedAttentionParams& p, const AttentionShape& s, const V2Workspace& ws) {
  DeviceGuard guard(s.device.index);
  const KernelChoice kc = choose_kernel(p, s, /*fixed_partitions=*/true);
  check_grid(s, kc, "paged_attention_v2");
  AttentionKernelParams k = make_params(p, s, kc, "paged_attention_v2");
  k.partition_size = kPartitionSize;
  k.max_splits = static_cast<int>(ws.exp_sums.shape[2]);
  k.exp_sums = static_cast<float*>(ws.exp_sums.data);
  k.max_logits = static_cast<float*>(ws.max_logits.data);
  k.tmp_out = ws.tmp_out.data;
  k.tmp_out_f32 = 0;
  k.always_partials = 1;
  const auto stream = static_cast<cudaStream_t>(p.stream);
  kc.launch(k, attention_grid(k, s, s.max_num_partitions), stream);
  launch_reduce(p, s, k, s.max_num_partitions, /*skip_single=*/false, stream);
}

namespace {
struct AutoLayout {
  KernelChoice kc;
  SplitPlan plan;
  std::size_t exp_sums_off, max_logits_off, tmp_out_off, total;
};
std::size_t align256(std::size_t v) { return (v + 255) / 256 * 256; }
AutoLayout auto_layout(const PagedAttentionParams& p, const AttentionShape& s, const KernelChoice& chosen) {
  AutoLayout a{};
  a.kc = chosen;
  SplitInputs in = split_inputs(p, s, a.kc);
  a.plan = plan_splits(in);
  const long long part = a.plan.num_splits > 1 ? a.plan.partition_size : in.max_seq_len;
  const KernelChoice refined = for_cta_tokens(a.kc, part);
  if (refined.spec != a.kc.spec) {
    a.kc = refined;
    in = split_inputs(p, s, a.kc);
    a.plan = plan_splits(in);
  }
  // sized without the total_tokens hint and batch_invariant: one buffer serves every hint and
  // mode of a shape (reserved_splits >= the plan's splits)
  const int reserved = reserved_splits(in, a.plan);
  if (reserved <= 1) return a;
  const std::size_t rows = static_cast<std::size_t>(s.num_rows) * s.num_heads * reserved;
  a.exp_sums_off = 0;
  a.max_logits_off = align256(rows * sizeof(float));
  a.tmp_out_off = a.max_logits_off + align256(rows * sizeof(float));
  a.total = a.tmp_out_off + align256(rows * s.head_size * sizeof(float));
  return a;
}
}  // namespace

std::size_t auto_workspace_size(const PagedAttentionParams& p, const AttentionShape& s) {
  DeviceGuard guard(s.device.index);
  return auto_layout(p, s, choose_kernel(p, s)).total;
}

void attention_auto(const PagedAttentionParams& p, const AttentionShape& s, void* ws, std::size_t ws_bytes) {
  DeviceGuard guard(s.device.index);
  const AutoLayout a = auto_layout(p, s, choose_kernel(p, s));
  const KernelChoice& kc = a.kc;
  if (ws_bytes < a.total || (a.total > 0 && ws == nullptr))
    fail(ErrorCode::kInvalidArgument, "paged_attention: workspace_bytes is ", ws_bytes,
         " but this shape needs paged_attention_workspace_size() = ", a.total, " bytes");
  if (reinterpret_cast<std::uintptr_t>(ws) % 256 != 0)
    fail(ErrorCode::kInvalidArgument, "paged_attention: workspace pointer must be 256-byte aligned");
  if (s.num_seqs == 0 || s.num_rows == 0) return;  // nothing to compute (sequences may have no query token)
  check_grid(s, kc, "paged_attention");
  AttentionKernelParams k = make_params(p, s, kc, "paged_attention");
  k.partition_size = a.plan.partition_size;
  k.max_splits = a.plan.num_splits;
  const auto stream = static_cast<cudaStream_t>(p.stream);
  auto* base = static_cast<char*>(ws);
  if (a.plan.num_splits > 1) {
    k.exp_sums = reinterpret_cast<float*>(base + a.exp_sums_off);
    k.max_logits = reinterpret_cast<float*>(base + a.max_logits_off);
    k.tmp_out = base + a.tmp_out_off;
    k.tmp_out_f32 = 1;
  }
  k.always_partials = 0;
  kc.launch(k, attention_grid(k, s, a.plan.num_splits), stream);
  if (a.plan.num_splits <= 1) return;
  launch_reduce(p, s, k, a.plan.num_splits, /*skip_single=*/true, stream);
}

void check_supported(const PagedAttentionParams& p, const AttentionShape& s) {
  DeviceGuard guard(s.device.index);
  const KernelChoice kc = choose_kernel(p, s);
  check_grid(s, kc, "paged_attention");
  require_aligned(p.key_cache, "paged_attention", "key_cache");
  require_aligned(p.value_cache, "paged_attention", "value_cache");
}

}  // namespace pagedattn::detail::cuda
