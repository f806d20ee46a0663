// Definitions behind launch.h's per-instance templates; included only by the generated
// instance translation units.
#pragma once

#include "cuda/attention_kernel.cuh"
#include "cuda/attention_mma.cuh"
#include "cuda/launch.h"

#ifndef PAGEDATTN_MAX_HEADS_PER_CTA
#define PAGEDATTN_MAX_HEADS_PER_CTA 4
#endif

namespace pagedattn::detail::cuda {

/// Sets the kernel's shared-memory attributes once (before its first launch or occupancy
/// query: without them the occupancy of a CTA over 48 KB reads as zero).
template <typename T, CacheKind kind, int D, int HPC>
void prepare_kernel() {
  using Tr = AttentionTraits<T, kind, D, HPC>;
  if constexpr (Tr::kSmemBytes > 48 * 1024) {
    // the ring's CTAs need the largest shared-memory carveout to be resident two per SM
    static const cudaError_t raised = [] {
      auto kernel = paged_attention_kernel<T, kind, D, HPC>;
      const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
      return e != cudaSuccess ? e
                              : cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                                     cudaSharedmemCarveoutMaxShared);
    }();
    check_cuda(raised, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize / carveout)");
  }
}

template <typename T, int C, int D, int HPC>
void launch_one(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) {
  constexpr CacheKind kind = static_cast<CacheKind>(C);
  prepare_kernel<T, kind, D, HPC>();
  paged_attention_kernel<T, kind, D, HPC><<<grid, kThreads, AttentionTraits<T, kind, D, HPC>::kSmemBytes, stream>>>(kp);
  check_launch("paged_attention_kernel launch");
}

template <typename T, int C, int D, int HPC>
int occupancy_one() {
  constexpr CacheKind kind = static_cast<CacheKind>(C);
  using Tr = AttentionTraits<T, kind, D, HPC>;
  static const int ctas = [] {
    prepare_kernel<T, kind, D, HPC>();
    int n = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, paged_attention_kernel<T, kind, D, HPC>, kThreads,
                                                             Tr::kSmemBytes),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return n > 0 ? n : 1;
  }();
  return ctas;
}

template <typename T, int C, int D>
void launch_attention_mma(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) {
  constexpr CacheKind kind = static_cast<CacheKind>(C);
  using Tr = MmaTraits<T, kind, D>;
  static_assert(Tr::kSmemBytes <= 48 * 1024, "tensor-core path fits the default shared memory");
  paged_attention_mma_kernel<T, kind, D><<<grid, kThreads, Tr::kSmemBytes, stream>>>(kp);
  check_launch("paged_attention_mma_kernel launch");
}

template <typename T, int C, int D>
int attention_mma_ctas_per_sm() {
  constexpr CacheKind kind = static_cast<CacheKind>(C);
  static const int ctas = [] {
    int n = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, paged_attention_mma_kernel<T, kind, D>, kThreads,
                                                             MmaTraits<T, kind, D>::kSmemBytes),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return n > 0 ? n : 1;
  }();
  return ctas;
}

template <typename T, int C, int D>
void launch_attention(const AttentionKernelParams& kp, int hpc, dim3 grid, cudaStream_t stream) {
  if (hpc == 1) return launch_one<T, C, D, 1>(kp, grid, stream);
  if (hpc == 2) return launch_one<T, C, D, 2>(kp, grid, stream);
  if constexpr (PAGEDATTN_MAX_HEADS_PER_CTA >= 8) {
    if (hpc == 8) return launch_one<T, C, D, 8>(kp, grid, stream);
  }
  return launch_one<T, C, D, 4>(kp, grid, stream);
}

template <typename T, int C, int D>
int attention_ctas_per_sm(int hpc) {
  if (hpc == 1) return occupancy_one<T, C, D, 1>();
  if (hpc == 2) return occupancy_one<T, C, D, 2>();
  if constexpr (PAGEDATTN_MAX_HEADS_PER_CTA >= 8) {
    if (hpc == 8) return occupancy_one<T, C, D, 8>();
  }
  return occupancy_one<T, C, D, 4>();
}

}  // namespace pagedattn::detail::cuda
