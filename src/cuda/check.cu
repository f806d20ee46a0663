// Checked mode on the GPU: small kernels scan the index data (seq_lens and block tables,
// slot mappings, block mappings) and report the first bad entry, which the host turns into
// an error naming it, instead of letting an attention or cache kernel read out of bounds.
// This costs a launch, a 8-byte copy back and a stream synchronisation: a debugging mode.
#include <mutex>
#include <vector>

#include "core/backend.h"
#include "core/check.h"
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/device_guard.h"

namespace pagedattn::detail::cuda {
namespace {

constexpr unsigned long long kNone = ~0ull;

/// key = (sequence << 32) | (entry + 1), or (sequence << 32) for a bad seq_len; atomicMin
/// keeps the first offending sequence and, within it, a length problem before block ids.
__global__ void check_attention_kernel(const std::int32_t* seq_lens, const std::int32_t* bt, std::int64_t bt_stride,
                                       int num_seqs, int max_seq_len, int max_blocks, int block_size,
                                       std::int64_t num_blocks, unsigned long long* first_bad) {
  const int warps = gridDim.x * (blockDim.x / 32);
  const int lane = threadIdx.x % 32;
  for (int seq = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; seq < num_seqs; seq += warps) {
    const long long len = seq_lens[seq];
    const unsigned long long base = static_cast<unsigned long long>(seq) << 32;
    if (len < 0 || len > max_seq_len || len > static_cast<long long>(max_blocks) * block_size) {
      if (lane == 0) atomicMin(first_bad, base);
      continue;
    }
    const long long nblk = (len + block_size - 1) / block_size;
    for (long long b = lane; b < nblk; b += 32) {
      const std::int32_t id = bt[seq * bt_stride + b];
      if (id < 0 || id >= num_blocks) atomicMin(first_bad, base | static_cast<unsigned long long>(b + 1));
    }
  }
}

/// First index i with values[i * stride] outside [lo, hi) (values < 0 allowed when allow_negative).
__global__ void check_range_kernel(const std::int64_t* values, std::int64_t n, std::int64_t stride, std::int64_t lo,
                                   std::int64_t hi, int allow_negative, unsigned long long* first_bad) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t v = values[i * stride];
    if (allow_negative && v < 0) continue;
    if (v < lo || v >= hi) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

/// One 8-byte result slot per device, allocated on first use of checked mode.
unsigned long long* result_slot(int device) {
  static std::mutex mu;
  static unsigned long long* slots[64] = {nullptr};
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0 || device >= 64) fail(ErrorCode::kBackendError, "checked mode: CUDA device ", device, " out of range");
  if (slots[device] == nullptr)
    check_cuda(cudaMalloc(&slots[device], sizeof(unsigned long long)), "cudaMalloc (checked-mode result)");
  return slots[device];
}

template <typename Launch>
unsigned long long run_check(int device, cudaStream_t stream, Launch&& launch) {
  unsigned long long* slot = result_slot(device);
  check_cuda(cudaMemsetAsync(slot, 0xff, sizeof(*slot), stream), "cudaMemsetAsync (checked mode)");
  launch(slot);
  check_launch("checked-mode kernel");
  unsigned long long host = kNone;
  check_cuda(cudaMemcpyAsync(&host, slot, sizeof(host), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (checked mode)");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize (checked mode)");
  return host;
}

template <typename V>
V read_one(const void* base, std::int64_t index, cudaStream_t stream) {
  V v{};
  check_cuda(cudaMemcpyAsync(&v, static_cast<const V*>(base) + index, sizeof(V), cudaMemcpyDefault, stream),
             "cudaMemcpyAsync (checked mode)");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize (checked mode)");
  return v;
}

}  // namespace

void check_attention_data(const PagedAttentionParams& p, const AttentionShape& s) {
  DeviceGuard guard(s.device.index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  const auto* lens = static_cast<const std::int32_t*>(p.seq_lens.data);
  const auto* bt = static_cast<const std::int32_t*>(p.block_tables.data);
  if (s.multi_token) {  // query_start_loc: copied back (num_seqs + 1 ints) and checked as on the host
    std::vector<std::int32_t> qsl(static_cast<std::size_t>(s.num_seqs) + 1), host_lens(static_cast<std::size_t>(s.num_seqs));
    check_cuda(cudaMemcpyAsync(qsl.data(), p.query_start_loc.data, qsl.size() * sizeof(std::int32_t),
                               cudaMemcpyDefault, stream), "cudaMemcpyAsync (checked mode)");
    if (!host_lens.empty())
      check_cuda(cudaMemcpyAsync(host_lens.data(), lens, host_lens.size() * sizeof(std::int32_t), cudaMemcpyDefault,
                                 stream), "cudaMemcpyAsync (checked mode)");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize (checked mode)");
    check_query_rows(p, s, qsl.data(), host_lens.data());
  }
  const unsigned long long bad = run_check(s.device.index, stream, [&](unsigned long long* slot) {
    const int blocks = (s.num_seqs + 3) / 4 < 1024 ? (s.num_seqs + 3) / 4 : 1024;
    check_attention_kernel<<<blocks, 128, 0, stream>>>(lens, bt, s.bt_stride, s.num_seqs, p.max_seq_len,
                                                        s.max_blocks_per_seq, s.block_size, s.num_blocks, slot);
  });
  if (bad == kNone) return;
  const int seq = static_cast<int>(bad >> 32);
  const long long entry = static_cast<long long>(bad & 0xffffffffull);
  const std::int32_t len = read_one<std::int32_t>(lens, seq, stream);
  if (entry == 0) {
    const int kind = len < 0 ? 3 : len > p.max_seq_len ? 1 : 2;
    fail_attention_data(p, s, kind, seq, 0, len);
  }
  const std::int32_t id = read_one<std::int32_t>(bt, seq * s.bt_stride + (entry - 1), stream);
  fail_attention_data(p, s, 4, seq, static_cast<int>(entry - 1), id);
}

std::int64_t first_out_of_range(const void* values, std::int64_t n, std::int64_t stride, std::int64_t lo,
                                std::int64_t hi, bool allow_negative, int device, void* stream_ptr,
                                std::int64_t* bad_value) {
  DeviceGuard guard(device);
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (n == 0) return -1;
  const unsigned long long bad = run_check(device, stream, [&](unsigned long long* slot) {
    const std::int64_t want = (n + 255) / 256;
    const int blocks = static_cast<int>(want < 1024 ? want : 1024);
    check_range_kernel<<<blocks, 256, 0, stream>>>(static_cast<const std::int64_t*>(values), n, stride, lo, hi,
                                                   allow_negative ? 1 : 0, slot);
  });
  if (bad == kNone) return -1;
  const auto i = static_cast<std::int64_t>(bad);
  *bad_value = read_one<std::int64_t>(values, i * stride, stream);
  return i;
}

}  // namespace pagedattn::detail::cuda
