// CPU side of pagedattn-bench: host memory, std::chrono timing, memcpy as the bandwidth wall,
// and the read walls of a paged cache (sequential read, page gather) measured in the same run.
// Buffers of 2 MiB or more are 2 MiB aligned and advised as transparent huge pages
// (MADV_HUGEPAGE; PAGEDATTN_BENCH_HUGEPAGES=0 turns it off): gathering scattered cache pages
// then misses the TLB far less often (docs/performance.md has the measured difference).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <stdexcept>
#include <string>
#include <random>
#include <thread>
#include <unordered_set>
#include <vector>

#include <sys/mman.h>

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

/// Threads the library's OpenMP loops use: OMP_NUM_THREADS, else every hardware thread.
int library_threads() {
  const char* e = std::getenv("OMP_NUM_THREADS");
  const int n = e != nullptr ? std::atoi(e) : 0;
  return n > 0 ? n : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

bool huge_pages_wanted() {
  const char* e = std::getenv("PAGEDATTN_BENCH_HUGEPAGES");
  return !(e != nullptr && std::strcmp(e, "0") == 0);
}

constexpr std::size_t kHugePage = std::size_t(2) << 20;

/// Reads `bytes` from `p` (a multiple of 64) and returns a value that depends on every line
/// read, so the reads cannot be dropped. Four independent 8-byte lanes per line: the loads are
/// what is timed, not the adds.
std::uint64_t read_lines(const unsigned char* p, std::size_t bytes) {
  std::uint64_t a = 0, b = 0, c = 0, d = 0;
  for (std::size_t i = 0; i < bytes; i += 64) {
    std::uint64_t x[4];
    std::memcpy(x, p + i, 8);
    std::memcpy(x + 1, p + i + 16, 8);
    std::memcpy(x + 2, p + i + 32, 8);
    std::memcpy(x + 3, p + i + 48, 8);
    a += x[0];
    b ^= x[1];
    c += x[2];
    d ^= x[3];
  }
  return a + b + c + d;
}

/// Runs f(t) on `n` threads (t = 0 .. n-1) and returns the wall time in microseconds.
template <class F>
double timed_on_threads(int n, F&& f) {
  std::vector<std::thread> th;
  const auto t0 = Clock::now();
  for (int t = 1; t < n; ++t) th.emplace_back([&f, t] { f(t); });
  f(0);
  for (auto& x : th) x.join();
  return micros_since(t0);
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

  void* alloc(std::size_t bytes) override {
    if (bytes >= kHugePage && huge_pages_wanted()) {
      const std::size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
      void* p = ::operator new(rounded, std::align_val_t(kHugePage));
      madvise(p, rounded, MADV_HUGEPAGE);  // advice only: a kernel without THP ignores it
      huge_.insert(p);
      return p;
    }
    return ::operator new(bytes, std::align_val_t(256));
  }
  void release(void* p) override {
    if (huge_.erase(p) != 0) return ::operator delete(p, std::align_val_t(kHugePage));
    ::operator delete(p, std::align_val_t(256));
  }

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

  ReadWalls measure_read_walls() override {
    ReadWalls w;
    w.threads = library_threads();
    constexpr std::size_t kBytes = std::size_t(1) << 30;
    constexpr int kReps = 5;
    w.buffer_bytes = static_cast<std::int64_t>(kBytes);
    Buffer buf(this, kBytes);
    auto* base = static_cast<unsigned char*>(buf.get());
    std::memset(base, 1, kBytes);
    volatile std::uint64_t sink = 0;
    const int n = w.threads;
    // sequential: each thread reads one contiguous share
    for (int r = 0; r < kReps; ++r) {
      const double us = timed_on_threads(n, [&](int t) {
        const std::size_t share = kBytes / n / 64 * 64;
        sink = sink + read_lines(base + share * t, share);
      });
      w.seq_gbps = std::max(w.seq_gbps, double(kBytes / n / 64 * 64 * n) / (us * 1e3));
    }
    // gather: every page of the buffer once, in a random order, split between the threads
    for (int page : {1024, 2048, 4096, 8192, 16384, 32768}) {
      const std::size_t pages = kBytes / page;
      std::vector<std::uint32_t> order(pages);
      for (std::size_t i = 0; i < pages; ++i) order[i] = static_cast<std::uint32_t>(i);
      std::shuffle(order.begin(), order.end(), std::mt19937_64(page));
      double best = 0.0;
      for (int r = 0; r < kReps; ++r) {
        const double us = timed_on_threads(n, [&](int t) {
          std::uint64_t s = 0;
          for (std::size_t i = t; i < pages; i += n) {
            const unsigned char* p = base + std::size_t(order[i]) * page;
            if (i + 2 * n < pages) {  // the next page of this thread, a little ahead
              const unsigned char* q = base + std::size_t(order[i + 2 * n]) * page;
              for (int o = 0; o < page; o += 64) __builtin_prefetch(q + o);
            }
            s += read_lines(p, page);
          }
          sink = sink + s;
        });
        best = std::max(best, double(pages * page) / (us * 1e3));
      }
      w.gather.emplace_back(page, best);
    }
    w.method = "1 GiB buffer on " + std::to_string(n) + " thread(s), best of " + std::to_string(kReps) +
               "; gather: each page once in random order, next page prefetched; " +
               (huge_pages_wanted() ? "MADV_HUGEPAGE" : "4 KiB pages (PAGEDATTN_BENCH_HUGEPAGES=0)");
    return w;
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
  void pin_splits(int num_splits) override {
    if (num_splits != 0)
      throw std::invalid_argument("--splits " + std::to_string(num_splits) + ": splits are pinned on the CUDA backend only");
  }

 private:
  DeviceInfo info_;
  std::unordered_set<void*> huge_;  ///< blocks allocated with the huge-page alignment
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace pagedattn::bench
