// CUDA side of pagedattn-bench: device buffers filled by a hash kernel, cudaEvent timing on
// one non-blocking stream (eager or replayed from a captured graph), and the card's
// device-to-device copy bandwidth as the wall every case is reported against.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_backend.h"
#include "cuda/kernel_registry.h"

namespace pagedattn::bench {
namespace {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::ostringstream os;
    os << "pagedattn-bench: " << what << " failed: " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e) << ")";
    throw std::runtime_error(os.str());
  }
}
#define PA_BENCH_CUDA(call) cuda_check((call), #call)

__global__ void fill_random_kernel(unsigned char* out, std::size_t count, FillKind kind, std::uint64_t seed) {
  const unsigned es = fill_element_size(kind);
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const std::uint32_t bits = random_bits(kind, seed, i);
    if (es == 4) {
      reinterpret_cast<std::uint32_t*>(out)[i] = bits;
    } else if (es == 2) {
      reinterpret_cast<std::uint16_t*>(out)[i] = static_cast<std::uint16_t>(bits);
    } else {
      out[i] = static_cast<unsigned char>(bits);
    }
  }
}

/// Events created once per timing call and destroyed on scope exit.
class EventPool {
 public:
  explicit EventPool(std::size_t n) : events_(n, nullptr) {
    for (auto& e : events_) PA_BENCH_CUDA(cudaEventCreate(&e));
  }
  ~EventPool() {
    for (auto e : events_)
      if (e) cudaEventDestroy(e);
  }
  cudaEvent_t operator[](std::size_t i) const { return events_[i]; }

 private:
  std::vector<cudaEvent_t> events_;
};

Samples elapsed_samples(const EventPool& ev, int iters, cudaStream_t stream, double divisor) {
  PA_BENCH_CUDA(cudaStreamSynchronize(stream));
  Samples s;
  for (int i = 0; i < iters; ++i) {
    float ms = 0.0f;
    PA_BENCH_CUDA(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
    s.us.push_back(ms * 1e3 / divisor);
  }
  return s;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int dev) : dev_(dev) {
    PA_BENCH_CUDA(cudaSetDevice(dev_));
    cudaDeviceProp prop{};
    PA_BENCH_CUDA(cudaGetDeviceProperties(&prop, dev_));
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    info_.backend = "cuda";
    info_.name = prop.name;
    info_.compute_units = prop.multiProcessorCount;
    info_.l2_bytes = prop.l2CacheSize;
    info_.memory_bytes = static_cast<std::int64_t>(prop.totalGlobalMem);
    std::ostringstream os;
    os << "sm_" << prop.major << prop.minor << ", driver " << driver / 1000 << "." << (driver % 1000) / 10
       << ", runtime " << runtime / 1000 << "." << (runtime % 1000) / 10;
    info_.extra = os.str();
    PA_BENCH_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~CudaBackend() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  const DeviceInfo& info() const override { return info_; }
  Device device() const override { return Device{DeviceType::kCUDA, dev_}; }
  void* stream() const override { return stream_; }
  std::int64_t free_bytes() const override {
    std::size_t free_b = 0, total_b = 0;
    PA_BENCH_CUDA(cudaMemGetInfo(&free_b, &total_b));
    return static_cast<std::int64_t>(free_b);
  }
  std::int64_t default_rotate_bytes() const override { return std::int64_t(1) << 30; }
  bool supports_graphs() const override { return true; }

  void* alloc(std::size_t bytes) override {
    void* p = nullptr;
    PA_BENCH_CUDA(cudaMalloc(&p, bytes));
    return p;
  }
  void release(void* p) override {
    cudaStreamSynchronize(stream_);
    cudaFree(p);
  }

  void fill_random(void* dst, std::size_t count, FillKind kind, std::uint64_t seed) override {
    if (count == 0) return;
    const int threads = 256;
    const std::size_t want = (count + threads - 1) / threads;
    const int blocks = static_cast<int>(std::min<std::size_t>(want, std::size_t(info_.compute_units) * 32));
    fill_random_kernel<<<blocks, threads, 0, stream_>>>(static_cast<unsigned char*>(dst), count, kind, seed);
    PA_BENCH_CUDA(cudaGetLastError());
  }
  void memset_bytes(void* dst, int value, std::size_t bytes) override {
    PA_BENCH_CUDA(cudaMemsetAsync(dst, value, bytes, stream_));
  }
  void upload(void* dst, const void* src, std::size_t bytes) override {
    PA_BENCH_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    PA_BENCH_CUDA(cudaStreamSynchronize(stream_));
  }
  void download(void* dst, const void* src, std::size_t bytes) override {
    PA_BENCH_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    PA_BENCH_CUDA(cudaStreamSynchronize(stream_));
  }
  void synchronize() override { PA_BENCH_CUDA(cudaStreamSynchronize(stream_)); }

  CopyBandwidth measure_copy_bandwidth() override {
    constexpr std::size_t kBytes = std::size_t(2) << 30;
    constexpr int kReps = 10;
    Buffer src(this, kBytes), dst(this, kBytes);
    fill_random(src.get(), kBytes, FillKind::kFp8E4M3, 1);
    PA_BENCH_CUDA(cudaMemcpyAsync(dst.get(), src.get(), kBytes, cudaMemcpyDeviceToDevice, stream_));  // warm-up
    EventPool ev(2 * kReps);
    for (int r = 0; r < kReps; ++r) {
      PA_BENCH_CUDA(cudaEventRecord(ev[2 * r], stream_));
      PA_BENCH_CUDA(cudaMemcpyAsync(dst.get(), src.get(), kBytes, cudaMemcpyDeviceToDevice, stream_));
      PA_BENCH_CUDA(cudaEventRecord(ev[2 * r + 1], stream_));
    }
    Samples s = elapsed_samples(ev, kReps, stream_, 1.0);
    return CopyBandwidth::from_copy_times(
        std::move(s.us), static_cast<std::int64_t>(kBytes),
        "cudaMemcpyAsync device-to-device of 2 GiB, read + write counted, median of 10 after 1 warm-up");
  }

  Samples time_eager(const std::function<void(int)>& call, int warmup, int iters) override {
    int k = 0;
    for (int i = 0; i < warmup; ++i) call(k++);
    EventPool ev(2 * static_cast<std::size_t>(iters));
    for (int i = 0; i < iters; ++i) {
      PA_BENCH_CUDA(cudaEventRecord(ev[2 * i], stream_));
      call(k++);
      PA_BENCH_CUDA(cudaEventRecord(ev[2 * i + 1], stream_));
    }
    return elapsed_samples(ev, iters, stream_, 1.0);
  }

  static constexpr int kWarmGraphMs = 30;
  Samples time_graph(const std::function<void(int)>& call, int calls_per_graph, int warmup, int iters) override {
    synchronize();
    cudaGraph_t graph = nullptr;
    PA_BENCH_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      for (int k = 0; k < calls_per_graph; ++k) call(k);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (end != cudaSuccess) {
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      cuda_check(end, "graph capture of the attention call (does the op synchronise with the host?)");
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    cuda_check(inst, "cudaGraphInstantiate");
    try {
      // at least `warmup` replays and kWarmGraphMs of replays: the first algo of a case follows the
      // host's set-up of its buffers (seconds for large cases), after which the clocks ramp up;
      // measured on the H200: with 2 replays the first algo's median ran up to 15% above its minimum
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < warmup || std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(kWarmGraphMs); ++i) {
        PA_BENCH_CUDA(cudaGraphLaunch(exec, stream_));
        if (i % 4 == 3) synchronize();
      }
      EventPool ev(2 * static_cast<std::size_t>(iters));
      for (int i = 0; i < iters; ++i) {
        PA_BENCH_CUDA(cudaEventRecord(ev[2 * i], stream_));
        PA_BENCH_CUDA(cudaGraphLaunch(exec, stream_));
        PA_BENCH_CUDA(cudaEventRecord(ev[2 * i + 1], stream_));
      }
      Samples s = elapsed_samples(ev, iters, stream_, static_cast<double>(calls_per_graph));
      cudaGraphExecDestroy(exec);
      return s;
    } catch (...) {
      cudaGraphExecDestroy(exec);
      throw;
    }
  }

  void pin_kernel(const std::string& name) override { pagedattn::detail::cuda::force_kernel(name); }
  std::string last_kernel() const override { return pagedattn::detail::cuda::last_kernel(); }
  void pin_splits(int num_splits) override { pagedattn::detail::cuda::force_splits(num_splits); }

 private:
  int dev_ = 0;
  cudaStream_t stream_ = nullptr;
  DeviceInfo info_;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device_index) { return std::make_unique<CudaBackend>(device_index); }

}  // namespace pagedattn::bench
