// Device-side building blocks shared by the CUDA kernels: element types, 16-byte vector
// loads and their conversion to float, warp reductions, CUDA error checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "core/attention_rules.h"
#include "core/check.h"
#include "core/fp8_pairs.h"

namespace pagedattn::detail::cuda {

/// Throws pagedattn::Error (kUnsupported) for a CUDA call that found no code for the present
/// GPU in this build: names the device's compute capability, the architectures the library
/// was built for and the CMake option that rebuilds it (launch.cu).
[[noreturn]] void fail_no_kernel_image(const char* what);

/// Throws pagedattn::Error (kBackendError) naming the call and CUDA's message.
inline void check_cuda(cudaError_t e, const char* what) {
  if (e == cudaErrorNoKernelImageForDevice) fail_no_kernel_image(what);
  if (e != cudaSuccess) fail(ErrorCode::kBackendError, what, " failed: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
}
/// After a launch: a bad configuration shows up here, before the next op.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

/// Programmatic dependent launch (sm_90+): whether the attention and reduce kernels are
/// launched so that they may start while the previous kernel of the stream finishes (its
/// tail overlaps their launch and prologue). On for devices of compute capability 9.0 or
/// newer unless the environment sets PAGEDATTN_PDL=0 (read once; for A/B timing).
bool pdl_enabled();

/// Launches `kernel` with programmatic stream serialization when pdl_enabled(): the kernel
/// must call pdl_wait() before it touches global memory.
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                const char* what, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  check_cuda(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), what);
}

/// In a kernel launched by launch_pdl: waits until the previous kernel of the stream has
/// completed and its memory is visible (a no-op when launched without the attribute). Call
/// it before the first global memory access.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
/// Lets the next kernel of the stream (launched by launch_pdl) be scheduled once every CTA
/// of this grid has called it or exited; that kernel still waits in pdl_wait() for this
/// grid's completion. The attention kernels call it when their main loop is done.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/// How the KV cache encodes its elements (compile-time mirror of CacheDType).
enum class CacheKind { kSame, kE4M3, kE5M2 };

template <typename T, CacheKind C>
struct CacheElem {
  using type = T;
};
template <typename T>
struct CacheElem<T, CacheKind::kE4M3> {
  using type = std::uint8_t;
};
template <typename T>
struct CacheElem<T, CacheKind::kE5M2> {
  using type = std::uint8_t;
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/// Two fp8 codes (bytes 0 and 1 of `two_bytes`) as an f16 pair (low, high half): the hardware
/// pair conversion on sm_89+; before it, integer operations and one f16 multiply
/// (core/fp8_pairs.h: exact for every code, tested against the software codec) instead of the
/// CUDA headers' element-by-element software decode.
template <CacheKind C>
__device__ __forceinline__ std::uint32_t fp8x2_to_f16x2(std::uint32_t two_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  constexpr __nv_fp8_interpretation_t kind = C == CacheKind::kE4M3 ? __NV_E4M3 : __NV_E5M2;
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes), kind);
  return (static_cast<std::uint32_t>(h.y) << 16) | h.x;
#else
  if constexpr (C == CacheKind::kE5M2) {
    return e5m2x2_to_f16x2(two_bytes);
  } else {
    const F16x2Scaled s = e4m3x2_to_f16x2_scaled(two_bytes);
    const std::uint32_t k256 = 0x5c005c00u;  // (256, 256) in f16
    const __half2 v = __hmul2(*reinterpret_cast<const __half2*>(&s.bits), *reinterpret_cast<const __half2*>(&k256));
    return *reinterpret_cast<const std::uint32_t*>(&v) | s.nan;
  }
#endif
}

/// Decodes `N` cache elements packed in `words` (their raw bytes) into floats.
/// fp8 goes through the pair conversion to f16 (fp8x2_to_f16x2; exact),
/// f16/bf16 through packed pair conversions.
template <typename T, CacheKind C, int N>
struct Decoder;

template <int N>
struct Decoder<float, CacheKind::kSame, N> {
  __device__ __forceinline__ static void run(const std::uint32_t* words, float* out) {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = __uint_as_float(words[i]);
  }
};
template <int N>
struct Decoder<__half, CacheKind::kSame, N> {
  __device__ __forceinline__ static void run(const std::uint32_t* words, float* out) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      __half2 h = *reinterpret_cast<const __half2*>(&words[i]);
      float2 f = __half22float2(h);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};
template <int N>
struct Decoder<__nv_bfloat16, CacheKind::kSame, N> {
  __device__ __forceinline__ static void run(const std::uint32_t* words, float* out) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
};
template <typename T, CacheKind C, int N>
struct Decoder {  // fp8
  __device__ __forceinline__ static void run(const std::uint32_t* words, float* out) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const std::uint32_t w = words[i];
      const std::uint32_t lo = fp8x2_to_f16x2<C>(w & 0xffffu), hi = fp8x2_to_f16x2<C>(w >> 16);
      float2 a = __half22float2(*reinterpret_cast<const __half2*>(&lo));
      float2 b = __half22float2(*reinterpret_cast<const __half2*>(&hi));
      out[4 * i] = a.x;
      out[4 * i + 1] = a.y;
      out[4 * i + 2] = b.x;
      out[4 * i + 3] = b.y;
    }
  }
};

/// Loads BYTES (4, 8 or 16) bytes from global memory into 32-bit words, bypassing L1
/// allocation (the KV cache is streamed once).
template <int BYTES>
__device__ __forceinline__ void load_words(const void* p, std::uint32_t* w) {
  if constexpr (BYTES == 16) {
    uint4 v = __ldcs(reinterpret_cast<const uint4*>(p));
    w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
  } else if constexpr (BYTES == 8) {
    uint2 v = __ldcs(reinterpret_cast<const uint2*>(p));
    w[0] = v.x; w[1] = v.y;
  } else {
    static_assert(BYTES == 4, "load of 4, 8 or 16 bytes");
    w[0] = __ldcs(reinterpret_cast<const unsigned int*>(p));
  }
}

/// Asynchronous copy of BYTES (8 or 16) bytes from global to shared memory (cp.async,
/// sm_80+). With `valid` false nothing is read and the destination is zero-filled.
/// Copies go through L1 (.ca): measured on the H100, the L1-bypassing form (.cg) of the
/// same 16-byte copies made about twice the L2 requests per DRAM sector (L2 hit rate 47%
/// instead of 1%) and lost 10-20% of the bandwidth (docs/performance.md, v0.3).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, bool valid) {
  static_assert(BYTES == 8 || BYTES == 16, "cp.async of 8 or 16 bytes");
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(gmem), "n"(BYTES), "r"(valid ? BYTES : 0)
               : "memory");
}
/// Closes the copies issued since the last commit into one group (possibly empty).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/// log2(e) and ln(2): a kernel that keeps its logits in log2 units (x kLog2e) takes each
/// exponential as one ex2 instruction and turns its running max back with kLn2.
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;
/// 2^x in one instruction (ex2.approx.ftz: 2 ulp; results below 2^-126 flush to 0, which no
/// softmax weight of that size changes; -inf -> 0, NaN stays NaN). __expf adds a range check
/// and two multiplies around the same instruction to keep subnormal results.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

/// Warp-wide max that propagates NaN (a NaN logit must reach the output, SPEC §3).
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace pagedattn::detail::cuda
