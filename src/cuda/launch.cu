#include "cuda/launch.h"

// Build switch for A/B timing: the most query heads one CTA computes (4 or 8).
#ifndef PAGEDATTN_MAX_HEADS_PER_CTA
#define PAGEDATTN_MAX_HEADS_PER_CTA 4
#endif
// Build switch (CMake option PAGEDATTN_TENSOR_CORES): use the tensor-core kernel where built.
#ifndef PAGEDATTN_TENSOR_CORES
#define PAGEDATTN_TENSOR_CORES 1
#endif

#include <algorithm>
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
  if (group_size <= 4 || PAGEDATTN_MAX_HEADS_PER_CTA < 8) return 4;
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

void KernelChoice::launch(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) const {
  if (mma) return inst->launch_mma(kp, grid, stream);
  inst->launch(kp, heads, grid, stream);
}

KernelChoice choose_kernel(const PagedAttentionParams& p, const AttentionShape& s) {
  KernelChoice k{};
  k.inst = &find_instance(s.dtype, p.kv_cache_dtype, s.head_size);
  const int group = s.group_size();
  // Tensor cores where they measured faster on the H100 (docs/performance.md, v0.3): groups
  // above 4 (the CUDA-core kernel splits them over two CTAs and runs out of issue slots) and
  // fp8 caches under GQA (conversion + FMA bound on CUDA cores). MHA and 16-bit caches with
  // groups up to 4 stay on the CUDA-core kernel, which reads them at 91-102% of copy.
  const bool fp8 = p.kv_cache_dtype != CacheDType::kAuto;
  k.mma = PAGEDATTN_TENSOR_CORES && k.inst->launch_mma != nullptr && (group > 4 || (fp8 && group >= 2));
  k.heads = k.mma ? kMmaHeads : heads_per_cta(group);
  k.head_tiles = (group + k.heads - 1) / k.heads;
  k.ctas_per_sm = k.mma ? k.inst->mma_ctas_per_sm() : k.inst->ctas_per_sm(k.heads);
  return k;
}

SplitInputs split_inputs(const PagedAttentionParams& p, const AttentionShape& s, const KernelChoice& k) {
  SplitInputs in;
  in.num_seqs = s.num_seqs;
  in.num_kv_heads = s.num_kv_heads;
  in.head_tiles = k.head_tiles;
  in.max_seq_len = p.max_seq_len;
  in.total_tokens = p.total_tokens;
  in.batch_invariant = p.batch_invariant;
  in.sm_count = sm_count(s.device.index);
  in.ctas_per_sm = k.ctas_per_sm;
  return in;
}

}  // namespace pagedattn::detail::cuda
