// The two places pagedattn-bench can run a case: host memory (the CPU backend) or a CUDA
// device. Everything device-specific (allocation, random fill, copies, timing, the copy
// bandwidth wall) sits behind this interface, so building, timing and checking a case is
// written once (bench_run.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <utility>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench_random.h"
#include "pagedattn/types.h"

namespace pagedattn::bench {

/// Median of timing or bandwidth samples (the mean of the two middle ones for an even count);
/// the one definition every reported median uses.
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Facts about the machine a run measured, for the header and the JSON.
struct DeviceInfo {
  std::string backend;       ///< "cuda" or "cpu"
  std::string name;          ///< e.g. "NVIDIA H100 80GB HBM3", or the CPU model
  int compute_units = 0;     ///< SMs, or hardware threads
  std::int64_t l2_bytes = 0; ///< 0 when unknown
  std::int64_t memory_bytes = 0;
  std::string extra;         ///< compute capability, driver/runtime versions, ...
};

/// The memory wall the run is judged against: a large buffer copy, read + write counted.
/// Read-only walls of the host, measured in the same run as the cases: a sequential read of a
/// large buffer, and reads of whole pages taken in random order (as a paged cache is read),
/// per page size; all threads the library uses (OMP_NUM_THREADS, else every hardware thread).
struct ReadWalls {
  int threads = 0;
  std::int64_t buffer_bytes = 0;
  double seq_gbps = 0.0;  ///< best of the repetitions
  std::vector<std::pair<int, double>> gather;  ///< (page bytes, best GB/s), ascending page size
  std::string method;
  bool measured() const { return seq_gbps > 0.0; }
  /// The gather wall of the measured page size nearest `page_bytes` (0 when none measured).
  double gather_for(std::int64_t page_bytes) const {
    double best = 0.0, dist = 1e300;
    for (const auto& [sz, g] : gather) {
      const double d = std::abs(std::log(double(sz)) - std::log(double(std::max<std::int64_t>(page_bytes, 1))));
      if (d < dist) dist = d, best = g;
    }
    return best;
  }
};

struct CopyBandwidth {
  double gbps = 0.0;               ///< median over the repetitions
  double best_gbps = 0.0;
  std::int64_t bytes_copied = 0;   ///< size of one copy (each counts twice: read + write)
  int repetitions = 0;
  std::string method;              ///< how it was measured, in words

  /// From per-copy times in microseconds: median and best GB/s, read + write counted.
  static CopyBandwidth from_copy_times(std::vector<double> us, std::int64_t bytes, std::string method) {
    CopyBandwidth c;
    std::vector<double> gbps;
    for (double t : us) gbps.push_back(2.0 * static_cast<double>(bytes) / (t * 1e3));
    c.gbps = median(gbps);
    c.best_gbps = *std::max_element(gbps.begin(), gbps.end());
    c.bytes_copied = bytes;
    c.repetitions = static_cast<int>(gbps.size());
    c.method = std::move(method);
    return c;
  }
};

/// Timing samples of one (case, algo, mode), microseconds per call.
struct Samples {
  std::vector<double> us;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const DeviceInfo& info() const = 0;
  /// Where tensors of this backend live, for TensorView::device.
  virtual Device device() const = 0;
  /// The stream handed to PagedAttentionParams::stream (nullptr on the CPU).
  virtual void* stream() const = 0;
  /// Bytes free for a case's buffers right now (an estimate).
  virtual std::int64_t free_bytes() const = 0;
  /// Default for --rotate-bytes: how much KV must be read between two reuses of a buffer so
  /// that the last-level cache cannot serve it (1 GiB on a GPU with a 50 MB L2).
  virtual std::int64_t default_rotate_bytes() const = 0;
  virtual bool supports_graphs() const = 0;

  virtual void* alloc(std::size_t bytes) = 0;
  virtual void release(void* p) = 0;
  /// Fills `count` elements of kind `kind` at `dst` with random_bits(kind, seed, i).
  virtual void fill_random(void* dst, std::size_t count, FillKind kind, std::uint64_t seed) = 0;
  virtual void memset_bytes(void* dst, int value, std::size_t bytes) = 0;
  virtual void upload(void* dst, const void* src, std::size_t bytes) = 0;
  virtual void download(void* dst, const void* src, std::size_t bytes) = 0;
  /// Waits for everything queued on stream().
  virtual void synchronize() = 0;

  virtual CopyBandwidth measure_copy_bandwidth() = 0;
  /// The read walls a paged cache meets (CPU backend; others return an empty one).
  virtual ReadWalls measure_read_walls() { return {}; }
  /// Times `call(k)` for k = 0, 1, 2, ... one call per sample after `warmup` calls.
  virtual Samples time_eager(const std::function<void(int)>& call, int warmup, int iters) = 0;
  /// Captures `calls_per_graph` calls (k = 0 .. calls_per_graph-1) into one graph, replays it
  /// `warmup` times (CUDA: and for at least 30 ms), then times `iters` replays; each sample is
  /// replay time / calls_per_graph.
  virtual Samples time_graph(const std::function<void(int)>& call, int calls_per_graph, int warmup,
                             int iters) = 0;

  /// Pins the attention kernel later calls launch (CUDA: detail::cuda::force_kernel); "" = the
  /// library's own choice. Throws for an unknown name, or any name on a backend without kernels.
  virtual void pin_kernel(const std::string& name) = 0;
  /// The kernel the last attention launch ran ("" where the backend has no registry).
  virtual std::string last_kernel() const = 0;
  /// Pins the auto path's split count (CUDA: detail::cuda::force_splits); 0 = the planner's.
  /// Throws for a negative count, or any count on a backend without a split planner to pin.
  virtual void pin_splits(int num_splits) = 0;
};

/// RAII buffer of a backend.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend* b, std::size_t bytes) : backend_(b), bytes_(bytes), data_(bytes ? b->alloc(bytes) : nullptr) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    reset();
    backend_ = o.backend_;
    bytes_ = o.bytes_;
    data_ = o.data_;
    o.data_ = nullptr;
    o.bytes_ = 0;
    return *this;
  }
  ~Buffer() { reset(); }
  void reset() {
    if (data_) backend_->release(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  Backend* backend_ = nullptr;
  std::size_t bytes_ = 0;
  void* data_ = nullptr;
};

std::unique_ptr<Backend> make_cpu_backend();
#ifdef PAGEDATTN_WITH_CUDA
/// Number of usable CUDA devices (0 when the driver or a device is missing).
int cuda_device_count();
std::unique_ptr<Backend> make_cuda_backend(int device_index);
#endif

}  // namespace pagedattn::bench
