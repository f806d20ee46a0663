// Moves a host test problem (tests/common/test_util.h) to the GPU and back.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/test_util.h"

namespace pagedattn::test {

#define PAGEDATTN_CUDA_OK(expr)                                                        \
  do {                                                                                 \
    const cudaError_t err_ = (expr);                                                   \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_);         \
  } while (0)

/// True when a CUDA device is usable; GPU tests GTEST_SKIP() otherwise (counted as skipped).
inline bool have_cuda_device() {
  static const bool ok = [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  }();
  return ok;
}

#define PAGEDATTN_REQUIRE_GPU() \
  if (!::pagedattn::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device on this machine"

/// Device memory owned by a unique_ptr.
struct CudaFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DevicePtr = std::unique_ptr<void, CudaFree>;

inline DevicePtr device_alloc(std::size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes < 16 ? 16 : bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  return DevicePtr(p);
}

inline constexpr Device kGpu{DeviceType::kCUDA, 0};

/// A device copy of one HostTensor, same offsets/strides.
struct DeviceTensor {
  DevicePtr mem;
  TensorView view;
  std::size_t bytes = 0;

  static DeviceTensor from(const HostTensor& h) {
    DeviceTensor d;
    d.bytes = h.storage.size();
    d.mem = device_alloc(d.bytes);
    if (d.bytes && cudaMemcpy(d.mem.get(), h.storage.data(), d.bytes, cudaMemcpyHostToDevice) != cudaSuccess)
      throw std::runtime_error("cudaMemcpy H2D failed");
    d.view = h.device_view(d.mem.get(), kGpu);
    return d;
  }
  /// Copies the whole allocation back into `h.storage`.
  void to_host(HostTensor& h) const {
    if (bytes && cudaMemcpy(h.storage.data(), mem.get(), bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
      throw std::runtime_error("cudaMemcpy D2H failed");
  }
};

/// A HostProblem mirrored on the device; `params` points at device memory.
struct DeviceProblem {
  DeviceTensor query, out, key_cache, value_cache, block_tables, seq_lens, alibi;
  DeviceTensor query_start_loc, lse, k_scales, v_scales;  ///< variants (copied whether used or not)
  PagedAttentionParams params;

  explicit DeviceProblem(const HostProblem& h) {
    query = DeviceTensor::from(h.query);
    out = DeviceTensor::from(h.out);
    key_cache = DeviceTensor::from(h.key_cache);
    value_cache = DeviceTensor::from(h.value_cache);
    block_tables = DeviceTensor::from(h.block_tables);
    seq_lens = DeviceTensor::from(h.seq_lens);
    alibi = DeviceTensor::from(h.alibi_slopes);
    query_start_loc = DeviceTensor::from(h.query_start_loc);
    lse = DeviceTensor::from(h.lse);
    k_scales = DeviceTensor::from(h.k_scales);
    v_scales = DeviceTensor::from(h.v_scales);
    params = h.params;
    params.query = query.view;
    params.out = out.view;
    params.key_cache = key_cache.view;
    params.value_cache = value_cache.view;
    params.block_tables = block_tables.view;
    params.seq_lens = seq_lens.view;
    params.alibi_slopes = h.params.alibi_slopes.defined() ? alibi.view : TensorView{};
    params.query_start_loc = h.params.query_start_loc.defined() ? query_start_loc.view : TensorView{};
    params.lse = h.params.lse.defined() ? lse.view : TensorView{};
    params.k_scales = h.params.k_scales.defined() ? k_scales.view : TensorView{};
    params.v_scales = h.params.v_scales.defined() ? v_scales.view : TensorView{};
  }
  /// Resets out (and lse) to NaN (the host problem's poisoned buffers).
  void poison_out(const HostProblem& h) {
    cudaMemcpy(out.mem.get(), h.out.storage.data(), out.bytes, cudaMemcpyHostToDevice);
    if (lse.bytes) cudaMemcpy(lse.mem.get(), h.lse.storage.data(), lse.bytes, cudaMemcpyHostToDevice);
  }
  std::vector<double> lse_values(const HostProblem& h) const {
    HostTensor copy = h.lse;
    lse.to_host(copy);
    std::vector<double> r(static_cast<std::size_t>(copy.view.numel()));
    for (std::size_t i = 0; i < r.size(); ++i) r[i] = static_cast<const float*>(copy.view.data)[i];
    return r;
  }
  std::vector<double> out_values(const HostProblem& h) const {
    HostTensor copy = h.out;
    out.to_host(copy);
    std::vector<double> r(static_cast<std::size_t>(copy.view.numel()));
    for (std::size_t i = 0; i < r.size(); ++i) r[i] = load_value(copy.view.data, h.cfg.dtype, std::int64_t(i));
    return r;
  }
};

/// A V2 workspace on the device, NaN-poisoned.
struct DeviceWorkspace {
  HostProblem::Workspace host;
  DeviceTensor exp_sums, max_logits, tmp_out;
  explicit DeviceWorkspace(const HostProblem& h, int parts = 0) : host(h.make_workspace(parts)) {
    exp_sums = DeviceTensor::from(host.exp_sums);
    max_logits = DeviceTensor::from(host.max_logits);
    tmp_out = DeviceTensor::from(host.tmp_out);
  }
  V2Workspace views() const { return V2Workspace{exp_sums.view, max_logits.view, tmp_out.view}; }
};

}  // namespace pagedattn::test
