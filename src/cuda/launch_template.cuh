// Definitions behind launch.h's per-instance templates; included only by the generated
// instance translation units.
#pragma once

#include <mutex>

#include "cuda/attention_bulk.cuh"
#include "cuda/attention_kernel.cuh"
#include "cuda/attention_mma.cuh"
#include "cuda/launch.h"

#ifndef PAGEDATTN_MAX_HEADS_PER_CTA
#define PAGEDATTN_MAX_HEADS_PER_CTA 4
#endif

namespace pagedattn::detail::cuda {

inline constexpr int kMaxDevices = 64;

/// Runs `make` once per CUDA device (the current one) and caches its result: function
/// attributes and occupancy belong to a device, and devices may differ.
template <typename V, typename F>
V once_per_device(std::once_flag (&once)[kMaxDevices], V (&value)[kMaxDevices], F&& make) {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < 0 || dev >= kMaxDevices) return make();
  std::call_once(once[dev], [&] { value[dev] = make(); });
  return value[dev];
}

/// Sets a kernel's shared-memory attributes on the current device, once (before its first
/// launch or occupancy query: without them the occupancy of a CTA over 48 KB reads as zero).
/// The ring kernels need the largest shared-memory carveout to keep two CTAs per SM.
template <auto Kernel, int kSmemBytes>
void prepare_kernel() {
  if constexpr (kSmemBytes > 48 * 1024) {
    static std::once_flag once[kMaxDevices];
    static cudaError_t result[kMaxDevices];
    const cudaError_t e = once_per_device(once, result, [] {
      const cudaError_t r = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
      return r != cudaSuccess ? r
                              : cudaFuncSetAttribute(Kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                                     cudaSharedmemCarveoutMaxShared);
    });
    check_cuda(e, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize / carveout)");
  }
}

/// CTAs of Kernel (kBlock threads, kSmemBytes of dynamic shared memory) resident per SM of
/// the current device (at least 1). kAttrBytes: the kernel's shared-memory attribute (the
/// largest launch it serves).
template <auto Kernel, int kSmemBytes, int kBlock = kThreads, int kAttrBytes = kSmemBytes>
int resident_ctas() {
  static std::once_flag once[kMaxDevices];
  static int ctas[kMaxDevices];
  return once_per_device(once, ctas, [] {
    prepare_kernel<Kernel, kAttrBytes>();
    int n = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, kBlock, kSmemBytes),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return n > 0 ? n : 1;
  });
}

template <auto Kernel, int kSmemBytes, int kBlock = kThreads, int kAttrBytes = kSmemBytes>
void launch_kernel(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream, const char* name) {
  prepare_kernel<Kernel, kAttrBytes>();
  launch_pdl(Kernel, grid, dim3(kBlock), kSmemBytes, stream, name, kp);
}

template <typename T, int C, int D, int HPC>
void launch_one(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) {
  constexpr CacheKind kind = static_cast<CacheKind>(C);
  constexpr int smem = AttentionTraits<T, kind, D, HPC>::kSmemBytes;
  if (needs_variant_kernel(kp))
    return launch_kernel<paged_attention_kernel<T, kind, D, HPC, true>, smem>(kp, grid, stream,
                                                                              "paged_attention_kernel launch");
  launch_kernel<paged_attention_kernel<T, kind, D, HPC, false>, smem>(kp, grid, stream, "paged_attention_kernel launch");
}

template <typename T, int C, int D, int HPC>
int occupancy_one() {
  constexpr CacheKind kind = static_cast<CacheKind>(C);
  return resident_ctas<paged_attention_kernel<T, kind, D, HPC, false>, AttentionTraits<T, kind, D, HPC>::kSmemBytes>();
}

template <typename T, int C, int D>
void launch_attention_mma(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) {
  constexpr CacheKind kind = static_cast<CacheKind>(C);
  constexpr int smem = MmaTraits<T, kind, D>::kSmemBytes;
  if (needs_variant_kernel(kp))
    return launch_kernel<paged_attention_mma_kernel<T, kind, D, true>, smem>(kp, grid, stream,
                                                                            "paged_attention_mma_kernel launch");
  launch_kernel<paged_attention_mma_kernel<T, kind, D, false>, smem>(kp, grid, stream,
                                                                    "paged_attention_mma_kernel launch");
}

template <typename T, int C, int D>
int attention_mma_ctas_per_sm() {
  constexpr CacheKind kind = static_cast<CacheKind>(C);
  return resident_ctas<paged_attention_mma_kernel<T, kind, D, false>, MmaTraits<T, kind, D>::kSmemBytes>();
}

/// The bulk kernel with `kGroups` row groups of consumer warps, each warp on NH n-tiles of 8
/// query rows, and a ring of `kRing` units (BulkTraits::stages; the kernel reads its group
/// count from its block size and its slot count from ring_slots). Its shared-memory attribute
/// is the larger of its launches, so either fits whichever came first.
template <typename T, int C, int D, int NH, int kGroups, int kRing, bool kVar>
struct BulkLaunch {
  using Tr = BulkTraits<T, static_cast<CacheKind>(C), D, NH>;
  static constexpr auto kKernel = paged_attention_bulk_kernel<T, static_cast<CacheKind>(C), D, NH, kVar>;
  static constexpr int kSmem = Tr::launch_bytes(kRing), kAttr = Tr::attr_bytes();
  static void launch(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) {
    AttentionKernelParams k = kp;
    k.ring_slots = Tr::stages(kRing);
    launch_kernel<kKernel, kSmem, bulk_threads(kGroups), kAttr>(k, grid, stream, "paged_attention_bulk_kernel launch");
  }
  static int ctas_per_sm() { return resident_ctas<kKernel, kSmem, bulk_threads(kGroups), kAttr>(); }
};

/// The bulk kernel's shapes (kernel_registry.h): rows per CTA 8 (one row group, one n-tile:
/// hopper_bulk_r8 with a one-unit ring, _r8_deep with two), 16 (two groups: _r16) and, up to
/// kBulkWideMaxHead, 32 (two groups of two n-tiles: _r32); calls `f` with the BulkLaunch of the
/// plain kernel (kVar = false) as a type tag, so launch and occupancy map shapes alike.
template <typename T, int C, int D, bool kVar, typename F>
decltype(auto) with_bulk_shape(int rows, int ring, F&& f) {
  static_assert(kBulkMaxGroups == 2 && kBulkMaxRing == 2, "the bulk kernel's shapes have one or two row groups and ring units");
  if (rows == 4 * kBulkRows) {
    if constexpr (D <= kBulkWideMaxHead) return f(BulkLaunch<T, C, D, 2, 2, 2, kVar>{});
    fail(ErrorCode::kUnsupported, "hopper_bulk_r32 needs head_size <= ", kBulkWideMaxHead, "; head_size is ", D);
  }
  if (rows == 2 * kBulkRows) return f(BulkLaunch<T, C, D, 1, 2, 2, kVar>{});
  if (ring == 2) return f(BulkLaunch<T, C, D, 1, 1, 2, kVar>{});
  return f(BulkLaunch<T, C, D, 1, 1, 1, kVar>{});
}

/// The bulk kernel with `rows` (8, 16 or 32) query rows per CTA and a ring of `ring` units.
template <typename T, int C, int D>
void launch_attention_bulk(const AttentionKernelParams& kp, int rows, int ring, dim3 grid, cudaStream_t stream) {
  const auto go = [&](auto shape) { decltype(shape)::launch(kp, grid, stream); };
  if (needs_variant_kernel(kp)) return with_bulk_shape<T, C, D, true>(rows, ring, go);
  with_bulk_shape<T, C, D, false>(rows, ring, go);
}

template <typename T, int C, int D>
int attention_bulk_ctas_per_sm(int rows, int ring) {
  return with_bulk_shape<T, C, D, false>(rows, ring, [](auto shape) { return decltype(shape)::ctas_per_sm(); });
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
