#include "cuda/launch.h"

// Build switch for A/B timing: the most query heads one CTA computes (4 or 8).
#ifndef PAGEDATTN_MAX_HEADS_PER_CTA
#define PAGEDATTN_MAX_HEADS_PER_CTA 4
#endif
// Build switch (CMake option PAGEDATTN_TENSOR_CORES): use the tensor-core kernel where built.
#ifndef PAGEDATTN_TENSOR_CORES
#define PAGEDATTN_TENSOR_CORES 1
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "cuda/attention_bulk.cuh"
#include "cuda/common.cuh"

namespace pagedattn::detail::cuda {

namespace {

const AttentionInstance kInstances[] = {
#include "instance_table.inc"
};

}  // namespace

const AttentionInstance& find_instance(DType dtype, CacheDType cache, int head_size) {
  for (const auto& inst : kInstances)
    if (inst.dtype == dtype && inst.cache == cache && inst.head_size == head_size) return inst;
  std::string built;
  for (const auto& inst : kInstances)
    built += cat(built.empty() ? "" : ", ", dtype_name(inst.dtype), "/", cache_dtype_name(inst.cache), "/",
                 inst.head_size);
  fail(ErrorCode::kUnsupported, "no CUDA kernel compiled for query dtype ", dtype_name(dtype), ", kv_cache_dtype ",
       cache_dtype_name(cache), ", head_size ", head_size, "; this build has: ", built,
       " (see PAGEDATTN_DTYPES / PAGEDATTN_CACHE_DTYPES / PAGEDATTN_HEAD_SIZES)");
}

namespace {
/// A device property read once per device (devices 0-63; others are read on every call): the
/// first positive value `read(device)` returns is kept.
template <typename V, typename F>
V per_device(std::atomic<V> (&cache)[64], int device, F&& read) {
  if (device >= 0 && device < 64 && cache[device].load() > V(0)) return cache[device].load();
  const V v = read(device);
  if (device >= 0 && device < 64) cache[device].store(v);
  return v;
}

int sm_count(int device) {
  static std::atomic<int> cached[64] = {};
  return per_device(cached, device, [](int d) {
    int n = 0;
    check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, d), "cudaDeviceGetAttribute(SM count)");
    return n;
  });
}

/// The memory bandwidth the split planner's time model assumes: peak (memory clock x bus width,
/// double data rate) x 0.89, what a stream reaches (H200: 4814 GB/s peak, ~4270 copied).
double memory_bytes_per_us(int device) {
  static std::atomic<double> cached[64] = {};
  return per_device(cached, device, [](int d) {
    int clock_khz = 0, bus_bits = 0;
    check_cuda(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, d), "cudaDeviceGetAttribute(memory clock)");
    check_cuda(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, d),
               "cudaDeviceGetAttribute(memory bus width)");
    const double bw = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e6 * 0.89;
    return bw > 0.0 ? bw : 4.27e6;  // a device that reports neither: the H200's
  });
}
}  // namespace

int device_sm(int device) {
  static std::atomic<int> cached[64] = {};
  return per_device(cached, device, [](int d) {
    int major = 0, minor = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d),
               "cudaDeviceGetAttribute(compute capability)");
    check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d),
               "cudaDeviceGetAttribute(compute capability)");
    return 10 * major + minor;
  });
}

namespace {
/// Compiled with the same architecture flags as every kernel: its attributes say which
/// code the driver picked for this device.
__global__ void arch_probe_kernel() {}
}  // namespace

void fail_no_kernel_image(const char* what) {
  int dev = 0, major = 0, minor = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  cudaGetLastError();
  fail(ErrorCode::kUnsupported, what, ": this build of pagedattn has no code for the GPU present (device ", dev,
       ", compute capability ", major, ".", minor, "); it was built for CUDA architectures ", PAGEDATTN_CUDA_ARCHS,
       ". Rebuild with -DCMAKE_CUDA_ARCHITECTURES=", major, minor, " (or =native on this machine)");
}

int code_sm(int device) {
  static std::atomic<int> cached[64] = {};
  return per_device(cached, device, [](int) {  // the current device (the callers' guard made it `device`)
    cudaFuncAttributes a{};
    check_cuda(cudaFuncGetAttributes(&a, arch_probe_kernel), "cudaFuncGetAttributes");
    return a.ptxVersion;  // the virtual architecture the code was compiled for (__CUDA_ARCH__ / 10)
  });
}

bool pdl_enabled() {
  static const bool allowed = [] {
    const char* v = std::getenv("PAGEDATTN_PDL");
    return v == nullptr || std::string(v) != "0";
  }();
  if (!allowed) return false;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  return device_sm(dev) >= 90;
}

const std::vector<KernelSpec>& kernel_specs() {
  static const std::vector<KernelSpec> specs = {
      {"cuda_core_r1", 1, kSpanAlign, false, false, 0},
      {"cuda_core_r2", 2, kSpanAlign, false, false, 0},
      {"cuda_core_r4", 4, kSpanAlign, false, false, 0},
#if PAGEDATTN_MAX_HEADS_PER_CTA >= 8
      {"cuda_core_r8", 8, kSpanAlign, false, false, 0},
#endif
      {"tensor_core_r8", kMmaHeads, kSpanAlign, true, false, 0},
      {"hopper_bulk_r8", kBulkRows, kStageTokens, true, true, 90},
      // ~125 tokens/us a CTA at head 128, 16-bit or fp8 cache (H200, docs/performance.md v0.10)
      {"hopper_bulk_r8_deep", kBulkRows, kStageTokens, true, true, 90, 0, kBulkMaxRing, 125.0},
      {"hopper_bulk_r16", kBulkRows * kBulkMaxGroups, kStageTokens, true, true, 90, 0, kBulkMaxRing},
      {"hopper_bulk_r32", 2 * kBulkRows * kBulkMaxGroups, kStageTokens, true, true, 90, kBulkWideMaxHead, kBulkMaxRing},
  };
  return specs;
}

namespace {
// The pinned kernel and the last one launched: entries of kernel_specs() (a static table, so
// the pointers stay valid), nullptr for none. Atomics: choose_kernel and every launch read or
// write them, so they cost no lock and no string copy on the call path.
std::atomic<const KernelSpec*> g_forced{nullptr};
std::atomic<const KernelSpec*> g_last{nullptr};

const KernelSpec* find_spec(const std::string& name) {
  for (const auto& k : kernel_specs())
    if (name == k.name) return &k;
  return nullptr;
}
/// The kernel of the registry with these rows per CTA on CUDA or tensor cores (and ring size).
const KernelSpec& spec_with(bool tensor_cores, bool bulk_copy, int rows_per_cta, int ring = 0) {
  for (const auto& k : kernel_specs())
    if (k.tensor_cores == tensor_cores && k.bulk_copy == bulk_copy && k.rows_per_cta == rows_per_cta &&
        (ring == 0 || k.ring == ring))
      return k;
  fail(ErrorCode::kBackendError, "kernel registry: no ", tensor_cores ? "tensor-core" : "CUDA-core", " kernel with ",
       rows_per_cta, " rows per CTA");
}
}  // namespace

namespace {
std::atomic<int> g_forced_splits{0};
}  // namespace

void force_splits(int num_splits) {
  if (num_splits < 0)
    fail(ErrorCode::kInvalidArgument, "force_splits: num_splits is ", num_splits, "; allowed: 0 (the planner) or more");
  g_forced_splits.store(num_splits);
}

int forced_splits() { return g_forced_splits.load(); }

void force_kernel(const std::string& name) {
  const KernelSpec* spec = nullptr;
  if (!name.empty()) {
    spec = find_spec(name);
    if (spec == nullptr) {
      std::string names;
      for (const auto& k : kernel_specs()) names += cat(names.empty() ? "" : ", ", k.name);
      fail(ErrorCode::kInvalidArgument, "force_kernel: unknown kernel '", name, "'; kernels: ", names);
    }
  }
  g_forced.store(spec);
}

std::string forced_kernel() {
  const KernelSpec* k = g_forced.load();
  return k != nullptr ? k->name : "";
}

void clear_last_kernel() { g_last.store(nullptr); }

std::string last_kernel() {
  const KernelSpec* k = g_last.load();
  return k != nullptr ? k->name : "";
}

std::string kernel_unsupported_reason(const KernelSpec& spec, bool has_tensor_core_instance, bool has_bulk_instance,
                                      int device_sm, int code_sm, int head_size) {
  if (spec.max_head_size > 0 && head_size > spec.max_head_size)
    return cat(spec.name, " needs head_size <= ", spec.max_head_size, "; head_size is ", head_size);
  if (spec.bulk_copy) {
    if (!has_bulk_instance)
      return cat(spec.name, " needs float16/bfloat16 queries (and a build with PAGEDATTN_BULK_COPY=ON)");
  } else if (spec.tensor_cores && !has_tensor_core_instance) {
    return cat(spec.name, " needs float16/bfloat16 queries and head_size <= 128 (and a build with "
               "PAGEDATTN_TENSOR_CORES=ON)");
  }
  if (spec.min_sm > 0 && device_sm >= spec.min_sm && code_sm < spec.min_sm)
    return cat(spec.name, " needs code compiled for compute capability ", spec.min_sm / 10, ".", spec.min_sm % 10,
               " or newer; this device runs this build's code for ", code_sm / 10, ".", code_sm % 10,
               " (CUDA architectures ", PAGEDATTN_CUDA_ARCHS, "; rebuild with -DCMAKE_CUDA_ARCHITECTURES=",
               device_sm, ")");
  if (spec.min_sm > 0 && device_sm < spec.min_sm) {
    if (device_sm < 0) return cat(spec.name, " needs a GPU of compute capability ", spec.min_sm / 10, ".", spec.min_sm % 10,
                                  " or newer; no CUDA device is present");
    return cat(spec.name, " needs a GPU of compute capability ", spec.min_sm / 10, ".", spec.min_sm % 10,
               " or newer (bulk copies and mbarriers); this device is ", device_sm / 10, ".", device_sm % 10);
  }
  return {};
}

std::string kernel_unsupported_reason(const std::string& name, DType dtype, CacheDType cache, int head_size) {
  try {
    const AttentionInstance& inst = find_instance(dtype, cache, head_size);
    const KernelSpec* k = find_spec(name);
    if (k == nullptr) return cat("unknown kernel '", name, "'");
    int dev = 0, sm = -1, code = -1;
    if (cudaGetDevice(&dev) == cudaSuccess) {
      int n = 0;
      if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) {
        sm = device_sm(dev);
        code = code_sm(dev);
      }
    }
    cudaGetLastError();  // a machine without a GPU leaves an error behind
    return kernel_unsupported_reason(*k, PAGEDATTN_TENSOR_CORES && inst.launch_mma != nullptr,
                                     inst.launch_bulk != nullptr, sm, code, head_size);
  } catch (const Error& e) {
    return e.what();
  }
}

void KernelChoice::launch(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) const {
  g_last.store(spec);
  if (bulk) return inst->launch_bulk(kp, heads, spec->ring, grid, stream);
  if (mma) return inst->launch_mma(kp, grid, stream);
  inst->launch(kp, heads, grid, stream);
}

const KernelSpec& auto_kernel(const AutoRuleInput& in) {
  // Measured on the H200 (docs/performance.md, v0.5 and v0.6): on sm_90 the bulk-copy kernel is
  // the fastest or equal on every case with 2 or more rows (GQA groups, several query tokens;
  // +5-45% over the other kernels, fp8 included, heads 192/256 and block sizes 8/32 included)
  // and on one-row fp8 caches with heads above 128 (no tensor-core instance there); one-row fp8
  // caches up to head 128 run fastest on the tensor-core kernel, one-row 16-bit caches on the
  // CUDA-core kernel (equal to the bulk-copy kernel, fewer resources). More than 8 rows: the
  // bulk kernel with two row groups (16 rows per CTA; since v0.7 with twice the ring, as it has
  // the SM alone): +17% at group 16, +10% at 12 rows, +1.5% at q_len 4 x group 4, +74% at head
  // 256 (two CTAs re-reading each page miss L2), +1.5-2% on MQA's 32 rows.
  // V2's fixed 512-token partitions (16 stages per CTA: the ring's fill weighs more): 3-4 rows
  // of a 16-bit cache up to head 128 run fastest on the CUDA-core kernel (-3-7%; at head 256 the
  // bulk kernel is 16% faster), fp8 caches with 2-4 rows on the tensor-core kernel (-5%), as
  // before the bulk kernel. Before sm_90 (the H100's v0.3 measurements): tensor cores for more
  // than 4 rows and for fp8 caches with 2 or more, the CUDA-core kernel otherwise (91-102% of
  // copy on MHA and 16-bit caches up to 4 rows).
  const long long rows = in.rows;
  const bool hopper = in.has_bulk_instance && in.device_sm >= 90 && in.code_sm >= 90;
  const bool has_mma = in.has_tensor_core_instance;
  bool bulk = false, mma = false;
  if (hopper) {
    mma = has_mma && ((rows == 1 && in.fp8) || (in.fixed_partitions && in.fp8 && rows >= 2 && rows <= 4));
    const bool v2_core = in.fixed_partitions && !in.fp8 && rows >= 3 && rows <= 4 && in.head_size <= 128;
    bulk = !mma && !v2_core && (rows >= 2 || in.fp8);
  } else {
    mma = has_mma && (rows > 4 || (in.fp8 && rows >= 2));
  }
  if (bulk) {
    // More than 16 rows (MQA, groups of 32, several query tokens of a GQA group): two row
    // groups of warps on 16 rows each (hopper_bulk_r32, up to kBulkWideMaxHead), so one CTA
    // and one read of each page serve 32 rows, not two 16-row CTAs each streaming the kv
    // head — where the call has CTAs enough. Measured on the H200 (docs/performance.md, v0.9):
    // r32 +24-81% where its CTAs number at least half the SMs (MQA batch 128 x 8k 73% -> 91-92%
    // of copy, fp8 MQA +57%, head-64 MQA +81%, q_len 8 x group 4 +31%); with fewer, a 32-row
    // CTA's consumer work per byte (twice a 16-row one's) bounds the few CTAs there are, and
    // r16's twice as many CTAs (the second reading the pages from L2) win: r32 took 16% longer
    // on MQA batch 16 x 8k and 27% on batch 1 x 128k (its first build); batch 64 (64 r32 CTAs on
    // 132 SMs) ties.
    const long long r32_ctas = in.kv_streams * ((rows + 4 * kBulkRows - 1) / (4 * kBulkRows));
    const bool r32_fills = in.kv_streams == 0 || in.sm_count == 0 || 2 * r32_ctas >= in.sm_count;
    if (rows > 2 * kBulkRows && in.head_size <= kBulkWideMaxHead && r32_fills) return spec_with(true, true, 4 * kBulkRows);
    if (rows > kBulkRows) return spec_with(true, true, kBulkRows * kBulkMaxGroups);
    // 8 rows or fewer: a grid of no more (sequence, kv head) CTAs than SMs leaves every SM with
    // one CTA at most, so each gets the ring of two (hopper_bulk_r8_deep; the auto path's
    // planner then splits only within one CTA per SM). Measured on the H200 (docs/performance.md,
    // v0.10), best plan of each against best plan of each: +4-18% from batch 8 x 512 to batch
    // 16 x 8k (32/8 batch 8 x 4k 40.9 -> 38.2 us, batch 16 x 8k 129.6 -> 125.0 us), fp8 batch
    // 8 x 8k -2%; with more CTAs than SMs two r8 CTAs per SM win (32/8 batch 32 x 8k: -1%).
    const long long ctas = in.kv_streams * std::max(in.fixed_splits, 1);
    const bool deep = in.kv_streams > 0 && in.sm_count > 0 && ctas <= in.sm_count;
    return spec_with(true, true, kBulkRows, deep ? kBulkMaxRing : 1);
  }
  const int cc_rows = rows <= 1 ? 1 : rows <= 2 ? 2 : (rows <= 4 || PAGEDATTN_MAX_HEADS_PER_CTA < 8) ? 4 : 8;
  return spec_with(mma, false, mma ? kMmaHeads : cc_rows);
}

KernelChoice choose_kernel(const PagedAttentionParams& p, const AttentionShape& s, bool fixed_partitions) {
  KernelChoice k{};
  k.inst = &find_instance(s.dtype, p.kv_cache_dtype, s.head_size);
  const long long rows = static_cast<long long>(s.max_q_len) * s.group_size();  // query rows of one kv head
  const bool has_mma = PAGEDATTN_TENSOR_CORES && k.inst->launch_mma != nullptr;
  const bool has_bulk = k.inst->launch_bulk != nullptr;
  const int sm = device_sm(s.device.index);
  const int code = code_sm(s.device.index);  // also: no code for this GPU fails here, clearly
  if (const KernelSpec* forced = g_forced.load()) {
    k.spec = forced;
    k.pinned = true;
    const std::string why = kernel_unsupported_reason(*k.spec, has_mma, has_bulk, sm, code, s.head_size);
    if (!why.empty())
      fail(ErrorCode::kUnsupported, "forced kernel ", forced->name, " cannot run query dtype ", dtype_name(s.dtype),
           ", kv_cache_dtype ", cache_dtype_name(p.kv_cache_dtype), ", head_size ", s.head_size, ": ", why);
  } else {
    AutoRuleInput in;
    in.rows = rows;
    in.fp8 = p.kv_cache_dtype != CacheDType::kAuto;
    in.head_size = s.head_size;
    in.fixed_partitions = fixed_partitions;
    in.has_tensor_core_instance = has_mma;
    in.has_bulk_instance = has_bulk;
    in.device_sm = sm;
    in.code_sm = code;
    in.kv_streams = static_cast<long long>(s.num_seqs) * s.num_kv_heads;
    in.fixed_splits = fixed_partitions ? s.max_num_partitions : 1;
    in.sm_count = sm_count(s.device.index);
    k.spec = &auto_kernel(in);
  }
  k.mma = k.spec->tensor_cores && !k.spec->bulk_copy;
  k.bulk = k.spec->bulk_copy;
  k.heads = k.spec->rows_per_cta;
  k.head_tiles = static_cast<int>((rows + k.heads - 1) / k.heads);
  k.ctas_per_sm = k.bulk ? k.inst->bulk_ctas_per_sm(k.heads, k.spec->ring) : k.mma ? k.inst->mma_ctas_per_sm() : k.inst->ctas_per_sm(k.heads);
  return k;
}

KernelChoice for_cta_tokens(const KernelChoice& k, long long tokens_per_cta) {
  const KernelSpec& deep = spec_with(true, true, kBulkRows, kBulkMaxRing);
  if (k.pinned || k.spec != &deep || tokens_per_cta > static_cast<long long>(kBulkConsumers) * kStageTokens) return k;
  KernelChoice r = k;  // same rows, tiles and paths: only the ring (and so the occupancy) differs
  r.spec = &spec_with(true, true, kBulkRows, 1);
  r.ctas_per_sm = k.inst->bulk_ctas_per_sm(r.heads, r.spec->ring);
  return r;
}

SplitInputs split_inputs(const PagedAttentionParams& p, const AttentionShape& s, const KernelChoice& k) {
  SplitInputs in;
  in.num_seqs = s.num_seqs;
  in.num_kv_heads = s.num_kv_heads;
  in.head_tiles = k.head_tiles;
  // the planner sizes work from the attended span: with a window, at most q_len + window_left
  // tokens (plus the alignment of its start), whatever the sequence's length
  long long span = p.max_seq_len;
  if (p.window_left >= 0) span = std::min<long long>(span, static_cast<long long>(s.max_q_len) + p.window_left + kSpanAlign - 1);
  in.max_seq_len = static_cast<int>(span);
  // the mixed-length hint counts tokens, not spans: meaningless under a window
  in.total_tokens = p.window_left >= 0 ? 0 : p.total_tokens;
  in.batch_invariant = p.batch_invariant;
  in.sm_count = sm_count(s.device.index);
  in.ctas_per_sm = k.ctas_per_sm;
  in.pinned_splits = forced_splits();
  if (k.spec->cta_tokens_per_us > 0.0) {
    const long long elem = p.kv_cache_dtype != CacheDType::kAuto ? 1 : static_cast<long long>(dtype_size(s.dtype));
    in.kv_bytes_per_token = 2LL * s.head_size * elem;
    in.mem_bytes_per_us = memory_bytes_per_us(s.device.index);
    in.cta_tokens_per_us = k.spec->cta_tokens_per_us * 128.0 / std::max(s.head_size, 128);
  }
  return in;
}

}  // namespace pagedattn::detail::cuda
