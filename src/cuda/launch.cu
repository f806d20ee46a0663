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
#include <string>

#include "core/check.h"
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
int sm_count(int device) {
  static int cached[64] = {0};
  if (device >= 0 && device < 64 && cached[device] > 0) return cached[device];
  int n = 0;
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute(SM count)");
  if (device >= 0 && device < 64) cached[device] = n;
  return n;
}
}  // namespace

const std::vector<KernelSpec>& kernel_specs() {
  static const std::vector<KernelSpec> specs = {
      {"cuda_core_r1", 1, kSpanAlign, false},
      {"cuda_core_r2", 2, kSpanAlign, false},
      {"cuda_core_r4", 4, kSpanAlign, false},
#if PAGEDATTN_MAX_HEADS_PER_CTA >= 8
      {"cuda_core_r8", 8, kSpanAlign, false},
#endif
      {"tensor_core_r8", kMmaHeads, kSpanAlign, true},
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
/// The kernel of the registry with these rows per CTA on CUDA or tensor cores.
const KernelSpec& spec_with(bool tensor_cores, int rows_per_cta) {
  for (const auto& k : kernel_specs())
    if (k.tensor_cores == tensor_cores && k.rows_per_cta == rows_per_cta) return k;
  fail(ErrorCode::kBackendError, "kernel registry: no ", tensor_cores ? "tensor-core" : "CUDA-core", " kernel with ",
       rows_per_cta, " rows per CTA");
}
}  // namespace

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

std::string last_kernel() {
  const KernelSpec* k = g_last.load();
  return k != nullptr ? k->name : "";
}

std::string kernel_unsupported_reason(const KernelSpec& spec, bool has_tensor_core_instance) {
  if (spec.tensor_cores && !has_tensor_core_instance)
    return cat(spec.name, " needs float16/bfloat16 queries and head_size <= 128 (and a build with "
               "PAGEDATTN_TENSOR_CORES=ON)");
  return {};
}

std::string kernel_unsupported_reason(const std::string& name, DType dtype, CacheDType cache, int head_size) {
  try {
    const AttentionInstance& inst = find_instance(dtype, cache, head_size);
    const KernelSpec* k = find_spec(name);
    if (k == nullptr) return cat("unknown kernel '", name, "'");
    return kernel_unsupported_reason(*k, PAGEDATTN_TENSOR_CORES && inst.launch_mma != nullptr);
  } catch (const Error& e) {
    return e.what();
  }
}

void KernelChoice::launch(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) const {
  g_last.store(spec);
  if (mma) return inst->launch_mma(kp, grid, stream);
  inst->launch(kp, heads, grid, stream);
}

KernelChoice choose_kernel(const PagedAttentionParams& p, const AttentionShape& s) {
  KernelChoice k{};
  k.inst = &find_instance(s.dtype, p.kv_cache_dtype, s.head_size);
  const long long rows = static_cast<long long>(s.max_q_len) * s.group_size();  // query rows of one kv head
  const bool has_mma = PAGEDATTN_TENSOR_CORES && k.inst->launch_mma != nullptr;
  if (const KernelSpec* forced = g_forced.load()) {
    k.spec = forced;
    const std::string why = kernel_unsupported_reason(*k.spec, has_mma);
    if (!why.empty())
      fail(ErrorCode::kUnsupported, "forced kernel ", forced->name, " cannot run query dtype ", dtype_name(s.dtype),
           ", kv_cache_dtype ", cache_dtype_name(p.kv_cache_dtype), ", head_size ", s.head_size, ": ", why);
  } else {
    // Tensor cores where they measured faster on the H100 (docs/performance.md, v0.3): more
    // than 4 rows (the CUDA-core kernel splits them over several CTAs and runs out of issue
    // slots) and fp8 caches with 2 or more (conversion + FMA bound on CUDA cores). MHA and
    // 16-bit caches with up to 4 rows stay on the CUDA-core kernel, which reads them at
    // 91-102% of copy.
    const bool fp8 = p.kv_cache_dtype != CacheDType::kAuto;
    const bool mma = has_mma && (rows > 4 || (fp8 && rows >= 2));
    const int cc_rows = rows <= 1 ? 1 : rows <= 2 ? 2 : (rows <= 4 || PAGEDATTN_MAX_HEADS_PER_CTA < 8) ? 4 : 8;
    k.spec = &spec_with(mma, mma ? kMmaHeads : cc_rows);
  }
  k.mma = k.spec->tensor_cores;
  k.heads = k.spec->rows_per_cta;
  k.head_tiles = static_cast<int>((rows + k.heads - 1) / k.heads);
  k.ctas_per_sm = k.mma ? k.inst->mma_ctas_per_sm() : k.inst->ctas_per_sm(k.heads);
  return k;
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
  return in;
}

}  // namespace pagedattn::detail::cuda
