// CPU side of pagedattn-bench: host memory, std::chrono timing, memcpy as the bandwidth wall.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

#include "bench_backend.h"

namespace pagedattn::bench {
namespace {

using Clock = std::chrono::steady_clock;

double micros_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

/// A /proc/meminfo field in bytes, or `fallback`.
std::int64_t meminfo_bytes(const char* key, std::int64_t fallback) {
  std::ifstream f("/proc/meminfo");
  std::string name;
  std::int64_t kib = 0;
  std::string unit;
  while (f >> name >> kib >> unit) {
    if (name == std::string(key) + ":") return kib * 1024;
  }
  return fallback;
}

class CpuBackend final : public Backend {
 public:
  CpuBackend() {
    info_.backend = "cpu";
    info_.name = cpu_model_name();
    info_.compute_units = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    info_.memory_bytes = meminfo_bytes("MemTotal", 0);
  }

  const DeviceInfo& info() const override { return info_; }
  Device device() const override { return Device{DeviceType::kCPU, 0}; }
  void* stream() const override { return nullptr; }
  std::int64_t free_bytes() const override { return meminfo_bytes("MemAvailable", std::int64_t(4) << 30); }
  std::int64_t default_rotate_bytes() const override { return std::int64_t(64) << 20; }
  bool supports_graphs() const override { return false; }

  void* alloc(std::size_t bytes) override { return ::operator new(bytes, std::align_val_t(256)); }
  void release(void* p) override { ::operator delete(p, std::align_val_t(256)); }

  void fill_random(void* dst, std::size_t count, FillKind kind, std::uint64_t seed) override {
    auto* out = static_cast<unsigned char*>(dst);
    const unsigned es = fill_element_size(kind);
    for (std::size_t i = 0; i < count; ++i) {
      const std::uint32_t bits = random_bits(kind, seed, i);
      std::memcpy(out + i * es, &bits, es);  // little-endian: the low bytes are the element
    }
  }
  void memset_bytes(void* dst, int value, std::size_t bytes) override { std::memset(dst, value, bytes); }
  void upload(void* dst, const void* src, std::size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, std::size_t bytes) override { std::memcpy(dst, src, bytes); }
  void synchronize() override {}

  CopyBandwidth measure_copy_bandwidth() override {
    constexpr std::size_t kBytes = std::size_t(256) << 20;
    constexpr int kReps = 5;
    Buffer src(this, kBytes), dst(this, kBytes);
    std::memset(src.get(), 1, kBytes);
    std::memset(dst.get(), 2, kBytes);  // touch every page before timing
    std::vector<double> us;
    for (int r = 0; r < kReps; ++r) {
      const auto t0 = Clock::now();
      std::memcpy(dst.get(), src.get(), kBytes);
      us.push_back(micros_since(t0));
    }
    return CopyBandwidth::from_copy_times(std::move(us), static_cast<std::int64_t>(kBytes),
                                          "memcpy of 256 MiB on one thread, read + write counted, median of 5");
  }

  Samples time_eager(const std::function<void(int)>& call, int warmup, int iters) override {
    int k = 0;
    for (int i = 0; i < warmup; ++i) call(k++);
    Samples s;
    for (int i = 0; i < iters; ++i) {
      const auto t0 = Clock::now();
      call(k++);
      s.us.push_back(micros_since(t0));
    }
    return s;
  }

  Samples time_graph(const std::function<void(int)>&, int, int, int) override { return {}; }

  void pin_kernel(const std::string& name) override {
    if (!name.empty()) throw std::invalid_argument("--kernel " + name + ": kernels are pinned on the CUDA backend only");
  }
  std::string last_kernel() const override { return {}; }

 private:
  DeviceInfo info_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace pagedattn::bench
