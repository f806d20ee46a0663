// Launch layer: from a validated call to kernel parameters, grid, shared memory and the
// kernel instance. Grid/block/smem are derived here and nowhere else.
#pragma once

#include <cuda_runtime.h>

#include "core/split_plan.h"
#include "core/validate.h"
#include "cuda/kernel_params.h"
#include "cuda/kernel_registry.h"
#include "pagedattn/attention.h"

namespace pagedattn::detail::cuda {

/// One compiled (query dtype, cache dtype, head size) family; `hpc` picks the instance.
struct AttentionInstance {
  DType dtype;
  CacheDType cache;
  int head_size;
  void (*launch)(const AttentionKernelParams& kp, int hpc, dim3 grid, cudaStream_t stream);
  int (*ctas_per_sm)(int hpc);  ///< occupancy of the instance, for the split planner
  /// Tensor-core path (float16/bfloat16 queries, head_size <= 128); nullptr elsewhere.
  void (*launch_mma)(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream);
  int (*mma_ctas_per_sm)();
  /// Hopper bulk-copy path (float16/bfloat16 queries; `rows` per CTA: 8, 16 or 32; a ring of
  /// `ring` units, KernelSpec::ring); nullptr elsewhere or when not built.
  void (*launch_bulk)(const AttentionKernelParams& kp, int rows, int ring, dim3 grid, cudaStream_t stream);
  int (*bulk_ctas_per_sm)(int rows, int ring);
};

/// Which kernel runs a call (kernel_registry.h): the tensor-core one where it is built and
/// measured faster (more than 4 rows per kv head, or fp8 caches with 2 or more), else the
/// CUDA-core one with the fewest rows per CTA that hold the rows (at most 4); or the kernel
/// force_kernel() pinned.
struct KernelChoice {
  const AttentionInstance* inst;
  const KernelSpec* spec;
  bool mma;
  bool bulk;
  int heads;        ///< query rows per CTA
  int head_tiles;   ///< CTAs along one (sequence, kv head): ceil(max_q_len * group / heads)
  int ctas_per_sm;  ///< occupancy, for the split planner
  bool pinned;      ///< force_kernel() chose it, not the auto rule
  void launch(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) const;
};
/// `fixed_partitions`: the call runs V2's 512-token partitions (the rule differs there).
KernelChoice choose_kernel(const PagedAttentionParams& p, const AttentionShape& s, bool fixed_partitions = false);

/// The auto rule's second look, once the call's tokens per CTA are known (V1: its longest span;
/// auto: the plan's partition): hopper_bulk_r8_deep becomes hopper_bulk_r8 where a CTA streams
/// one ring stage per consumer warp or less (128 tokens): the deep ring does not matter there,
/// and two CTAs per SM let the next kernel's CTAs start beside it (programmatic dependent
/// launch). Measured on the H200 (docs/performance.md, v0.10): batch 1 x 2k in 16 splits 12.9 us
/// deep, 12.2 r8; batch 2 x 1k 11.8 / 11.2. Any other choice, and a pinned kernel, stay.
KernelChoice for_cta_tokens(const KernelChoice& k, long long tokens_per_cta);

/// Looks the instance up in the generated table; kUnsupported if this build lacks it.
const AttentionInstance& find_instance(DType dtype, CacheDType cache, int head_size);

/// Instantiated once per table entry, in generated translation units.
template <typename T, int C, int D>
void launch_attention(const AttentionKernelParams& kp, int hpc, dim3 grid, cudaStream_t stream);
template <typename T, int C, int D>
int attention_ctas_per_sm(int hpc);
template <typename T, int C, int D>
void launch_attention_mma(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream);
template <typename T, int C, int D>
int attention_mma_ctas_per_sm();
template <typename T, int C, int D>
void launch_attention_bulk(const AttentionKernelParams& kp, int rows, int ring, dim3 grid, cudaStream_t stream);
template <typename T, int C, int D>
int attention_bulk_ctas_per_sm(int rows, int ring);

/// Compute capability of a device as 10 * major + minor (cached per device).
int device_sm(int device);

/// The split planner's inputs for a call on the CUDA backend (the SM count of its device and
/// the occupancy of the chosen kernel); the plan itself is core/split_plan.h.
SplitInputs split_inputs(const PagedAttentionParams& p, const AttentionShape& s, const KernelChoice& k);

}  // namespace pagedattn::detail::cuda
