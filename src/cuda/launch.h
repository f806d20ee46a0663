// Launch layer: from a validated call to kernel parameters, grid, shared memory and the
// kernel instance. Grid/block/smem are derived here and nowhere else.
#pragma once

#include <cuda_runtime.h>

#include "core/validate.h"
#include "cuda/kernel_params.h"
#include "pagedattn/attention.h"

namespace pagedattn::detail::cuda {

/// Heads of one GQA group computed by one CTA, as the instances are compiled (1, 2, 4, 8).
int heads_per_cta(int group_size);

/// One compiled (query dtype, cache dtype, head size) family; `hpc` picks the instance.
struct AttentionInstance {
  DType dtype;
  CacheDType cache;
  int head_size;
  void (*launch)(const AttentionKernelParams& kp, int hpc, dim3 grid, cudaStream_t stream);
  int (*ctas_per_sm)(int hpc);  ///< occupancy of the instance, for the split planner
};

/// Looks the instance up in the generated table; kUnsupported if this build lacks it.
const AttentionInstance& find_instance(DType dtype, CacheDType cache, int head_size);

/// Instantiated once per table entry, in generated translation units.
template <typename T, int C, int D>
void launch_attention(const AttentionKernelParams& kp, int hpc, dim3 grid, cudaStream_t stream);
template <typename T, int C, int D>
int attention_ctas_per_sm(int hpc);

/// The auto path's split plan: tokens per split and the number of splits launched.
struct SplitPlan {
  int partition_size;  ///< multiple of 32
  int num_splits;      ///< gridDim.z
};
SplitPlan plan_splits(const PagedAttentionParams& p, const AttentionShape& s);

}  // namespace pagedattn::detail::cuda
