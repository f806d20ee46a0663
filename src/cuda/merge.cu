// merge_attention_states on the GPU (SPEC §3b): one thread per output element, weights from
// core/attention_rules.h (the CPU backend uses the same), so both backends merge alike.
#include "core/backend.h"
#include "cuda/common.cuh"
#include "cuda/device_guard.h"

namespace pagedattn::detail::cuda {
namespace {

struct MergeKernelParams {
  const void* out_a;
  const void* out_b;
  const float* lse_a;
  const float* lse_b;
  void* out;
  float* lse;  ///< or nullptr
  std::int64_t rows;  ///< rows x heads
  int head_size;
};

/// A CTA per (row, head) pair; threads over the head's dims. out / lse may alias an input:
/// every thread reads the two lse values before thread 0 writes lse (a barrier separates them).
template <typename T>
__global__ void merge_states_kernel(const __grid_constant__ MergeKernelParams p) {
  for (std::int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const MergeWeights w = merge_lse(p.lse_a[r], p.lse_b[r]);
    const T* a = static_cast<const T*>(p.out_a) + r * p.head_size;
    const T* b = static_cast<const T*>(p.out_b) + r * p.head_size;
    T* o = static_cast<T*>(p.out) + r * p.head_size;
    for (int d = threadIdx.x; d < p.head_size; d += blockDim.x) {
      // a state of weight 0 is not multiplied in: its output may be anything (NaN included)
      float v = 0.0f;
      if (w.wa != 0.0f) v += w.wa * to_float(a[d]);
      if (w.wb != 0.0f) v += w.wb * to_float(b[d]);
      o[d] = from_float<T>(v);
    }
    __syncthreads();
    if (threadIdx.x == 0 && p.lse != nullptr) p.lse[r] = w.lse;
    __syncthreads();
  }
}

}  // namespace

void merge_states(const MergeStatesParams& p, const MergeShape& s) {
  DeviceGuard guard(s.device.index);
  MergeKernelParams k{};
  k.out_a = p.out_a.data;
  k.out_b = p.out_b.data;
  k.lse_a = static_cast<const float*>(p.lse_a.data);
  k.lse_b = static_cast<const float*>(p.lse_b.data);
  k.out = p.out.data;
  k.lse = s.with_lse ? static_cast<float*>(p.lse.data) : nullptr;
  k.rows = s.rows * s.num_heads;
  k.head_size = s.head_size;
  const auto stream = static_cast<cudaStream_t>(p.stream);
  const int threads = s.head_size >= 128 ? 128 : 64;
  const unsigned blocks = static_cast<unsigned>(k.rows < 65535 * 8 ? k.rows : 65535 * 8);
  switch (s.dtype) {
    case DType::kFloat16: merge_states_kernel<__half><<<blocks, threads, 0, stream>>>(k); break;
    case DType::kBFloat16: merge_states_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(k); break;
    default: merge_states_kernel<float><<<blocks, threads, 0, stream>>>(k); break;
  }
  check_launch("merge_states_kernel launch");
}

}  // namespace pagedattn::detail::cuda
