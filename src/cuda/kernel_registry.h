// The attention kernels the CUDA backend can launch, by name, without CUDA types (tests and
// the benchmark include it from plain C++). Each (query dtype, cache dtype, head size)
// instance has up to eight kernels:
//   cuda_core_r1 / _r2 / _r4: the CUDA-core kernel (attention_kernel.cuh) with 1, 2 or 4 query
//                             rows per CTA (every instance);
//   tensor_core_r8:           the tensor-core kernel (attention_mma.cuh), 8 rows per CTA
//                             (float16/bfloat16 queries, head_size <= 128);
//   hopper_bulk_r8 / _r16 / _r32: the Hopper producer/consumer kernel (attention_bulk.cuh):
//                             bulk copies of whole pages into a shared-memory ring, tensor
//                             cores, 8, 16 or 32 rows per CTA (one or two row groups of
//                             consumer warps, each warp on 8 rows, or 16 for _r32; float16/
//                             bfloat16 queries, every head size, _r32 up to head_size 128; a
//                             device of compute capability 9.0 or newer);
//   hopper_bulk_r8_deep:      hopper_bulk_r8 with twice the ring, one CTA per SM (grids with
//                             fewer CTAs than SMs: as many bytes in flight per SM as two).
// A CTA's rows are (query token x head) of one kv head's GQA group; a call needs
// ceil(rows / rows_per_cta) CTAs per (sequence, kv head, split). The auto rule picks one;
// force_kernel() pins one (tests run every kernel on purpose; the benchmark compares them).
#pragma once

#include <string>
#include <vector>

#include "pagedattn/types.h"

namespace pagedattn::detail::cuda {

struct KernelSpec {
  const char* name;
  int rows_per_cta;
  int tile_tokens;  ///< tokens a warp streams per step
  bool tensor_cores;
  bool bulk_copy;  ///< the Hopper kernel: needs min_sm
  int min_sm;      ///< lowest compute capability (10 * major + minor) it runs on; 0: any
  int max_head_size = 0;  ///< widest head it has code for; 0: any
  /// Bulk kernels: the shared-memory ring in units of 96 KB aimed at (1: two CTAs fit an SM; 2:
  /// the CTA has the SM's shared memory alone). 1 for the others.
  int ring = 1;
  /// The split planner's time model (core/split_plan.h): tokens per microsecond one CTA
  /// consumes at head 128 (scaled by 128 / head_size above it), measured; 0: the token-unit
  /// model.
  double cta_tokens_per_us = 0.0;
};

/// Every kernel of the registry, in the auto rule's order of preference among equals.
const std::vector<KernelSpec>& kernel_specs();

/// Pins the kernel every later attention call of this process uses (V1, V2 and auto); "" =
/// the auto rule. An unknown name throws kInvalidArgument; a call the pinned kernel does not
/// support throws kUnsupported naming why.
void force_kernel(const std::string& name);
std::string forced_kernel();
/// Pins the auto path's split count for every later call of this process (0: the planner's
/// plan): a measurement knob (the benchmark's --splits), so a plan can be timed against the
/// planner's. The partitions are the span's tokens / n rounded up to 32 (fixed_split_plan);
/// the workspace size queried under the pin holds that plan. A negative count throws
/// kInvalidArgument.
void force_splits(int num_splits);
int forced_splits();
/// Name of the kernel the last attention launch of this process ran ("" before any, or since
/// clear_last_kernel(): a call with no query rows launches nothing).
std::string last_kernel();
void clear_last_kernel();

/// Why `spec` cannot run an instance (empty: it can): the instance lacks it in this build, the
/// device (compute capability `device_sm` = 10 * major + minor; < 0: no device) is too old, or
/// the code the device runs was compiled for an older architecture (`code_sm`, e.g. 80 when only
/// compute_80 PTX is embedded and the driver JIT-compiles it for an sm_90 card).
std::string kernel_unsupported_reason(const KernelSpec& spec, bool has_tensor_core_instance, bool has_bulk_instance,
                                      int device_sm, int code_sm = 1000, int head_size = 0);
/// What the auto rule looks at.
struct AutoRuleInput {
  long long rows = 1;           ///< query rows per kv head: GQA group x the longest q_len
  bool fp8 = false;             ///< an fp8 cache
  int head_size = 128;
  bool fixed_partitions = false;  ///< V2: 512-token partitions (the auto path plans its own splits)
  bool has_tensor_core_instance = false, has_bulk_instance = false;  ///< kernels the instance has
  int device_sm = 0, code_sm = 0;  ///< the device's compute capability, the architecture of its code
  long long kv_streams = 0;        ///< sequences x kv heads of the call (0: unknown)
  int fixed_splits = 1;            ///< V2: the call's partitions (its grid's third dimension)
  int sm_count = 0;                ///< SMs of the device (0: unknown)
};
/// The auto rule (a pure function): the registry kernel for a call.
const KernelSpec& auto_kernel(const AutoRuleInput& in);
/// The architecture (10 * major + minor) of the code this build runs on `device`: the
/// virtual architecture its kernels were compiled for. Throws kUnsupported, naming the
/// device's capability and the built architectures, when the build has no code for it.
int code_sm(int device);
/// The same for the instance (query dtype, cache dtype, head size) on the current device; also
/// names an instance this build does not hold at all.
std::string kernel_unsupported_reason(const std::string& name, DType dtype, CacheDType cache, int head_size);
/// RAII: pins a kernel for a scope (tests), restoring the previous choice.
class ScopedKernel {
 public:
  explicit ScopedKernel(const std::string& name) : prev_(forced_kernel()) { force_kernel(name); }
  ~ScopedKernel() { force_kernel(prev_); }
  ScopedKernel(const ScopedKernel&) = delete;
  ScopedKernel& operator=(const ScopedKernel&) = delete;

 private:
  std::string prev_;
};

}  // namespace pagedattn::detail::cuda
