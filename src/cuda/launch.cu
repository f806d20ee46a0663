#include "cuda/launch.h"

#include <string>

#include "core/check.h"
#include "cuda/common.cuh"

namespace pagedattn::detail::cuda {
namespace {

const AttentionInstance kInstances[] = {
#include "instance_table.inc"
};

}  // namespace

int heads_per_cta(int group_size) {
  if (group_size <= 1) return 1;
  if (group_size <= 2) return 2;
  if (group_size <= 4) return 4;
  return 8;
}

const AttentionInstance& find_instance(DType dtype, CacheDType cache, int head_size) {
  for (const auto& inst : kInstances)
    if (inst.dtype == dtype && inst.cache == cache && inst.head_size == head_size) return inst;
  std::string built;
  for (const auto& inst : kInstances)
    built += cat(built.empty() ? "" : ", ", dtype_name(inst.dtype), "/", cache_dtype_name(inst.cache), "/",
                 inst.head_size);
  fail(ErrorCode::kUnsupported, "no CUDA kernel compiled for query dtype ", dtype_name(dtype), ", kv_cache_dtype ",
       cache_dtype_name(cache), ", head_size ", head_size, "; this build has: ", built,
       " (see PAGEDATTN_DTYPES / PAGEDATTN_CACHE_DTYPES / PAGEDATTN_HEAD_SIZES)");
}

namespace {
int sm_count(int device) {
  static int cached[64] = {0};
  if (device >= 0 && device < 64 && cached[device] > 0) return cached[device];
  int n = 0;
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute(SM count)");
  if (device >= 0 && device < 64) cached[device] = n;
  return n;
}
}  // namespace

SplitPlan plan_splits(const PagedAttentionParams& p, const AttentionShape& s) {
  // One pass when the (sequence, kv head, head tile) grid already fills the GPU; otherwise
  // cut the sequences so that about one full wave of CTAs runs. The plan depends only on
  // shapes, max_seq_len and the device, never on the data, so the workspace size is fixed
  // for a shape and the call is safe under CUDA graph capture.
  constexpr int kMinPartition = 128;  // 4 tiles: one per warp
  const int hpc = heads_per_cta(s.group_size());
  const int tiles = (s.group_size() + hpc - 1) / hpc;
  const long long base = static_cast<long long>(s.num_seqs) * s.num_kv_heads * tiles;
  const auto& inst = find_instance(s.dtype, p.kv_cache_dtype, s.head_size);
  const long long slots = static_cast<long long>(sm_count(s.device.index)) * inst.ctas_per_sm(hpc);
  const int max_len = p.max_seq_len;
  if (base >= slots || max_len <= kMinPartition) return {1 << 30, 1};
  const long long want = (slots + base - 1) / base;
  long long part = (max_len + want - 1) / want;
  part = ((part + 31) / 32) * 32;
  if (part < kMinPartition) part = kMinPartition;
  const int splits = static_cast<int>((max_len + part - 1) / part);
  if (splits <= 1) return {1 << 30, 1};
  return {static_cast<int>(part), splits};
}

}  // namespace pagedattn::detail::cuda
