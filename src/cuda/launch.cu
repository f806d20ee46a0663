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
#include <string>

#include "core/check.h"
#include "cuda/common.cuh"

namespace pagedattn::detail::cuda {

inline constexpr int kMmaHeadsPerCta = 8;  // attention_mma.cuh's kMmaHeads

namespace {

const AttentionInstance kInstances[] = {
#include "instance_table.inc"
};

}  // namespace

int heads_per_cta(int group_size) {
  if (group_size <= 1) return 1;
  if (group_size <= 2) return 2;
  if (group_size <= 4 || PAGEDATTN_MAX_HEADS_PER_CTA < 8) return 4;
  return 8;
}

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

void KernelChoice::launch(const AttentionKernelParams& kp, dim3 grid, cudaStream_t stream) const {
  if (mma) return inst->launch_mma(kp, grid, stream);
  inst->launch(kp, heads, grid, stream);
}

KernelChoice choose_kernel(const PagedAttentionParams& p, const AttentionShape& s) {
  KernelChoice k{};
  k.inst = &find_instance(s.dtype, p.kv_cache_dtype, s.head_size);
  const int group = s.group_size();
  // Tensor cores where they measured faster on the H100 (docs/performance.md, v0.3): groups
  // above 4 (the CUDA-core kernel splits them over two CTAs and runs out of issue slots) and
  // fp8 caches under GQA (conversion + FMA bound on CUDA cores). MHA and 16-bit caches with
  // groups up to 4 stay on the CUDA-core kernel, which reads them at 91-102% of copy.
  const bool fp8 = p.kv_cache_dtype != CacheDType::kAuto;
  k.mma = PAGEDATTN_TENSOR_CORES && k.inst->launch_mma != nullptr && (group > 4 || (fp8 && group >= 2));
  k.heads = k.mma ? kMmaHeadsPerCta : heads_per_cta(group);
  k.head_tiles = (group + k.heads - 1) / k.heads;
  k.ctas_per_sm = k.mma ? k.inst->mma_ctas_per_sm() : k.inst->ctas_per_sm(k.heads);
  return k;
}

SplitPlan plan_splits(const PagedAttentionParams& p, const AttentionShape& s, const KernelChoice& k) {
  // Splits along the sequence so the (sequence, kv head, head tile, split) grid keeps every
  // SM streaming to the end. For each candidate split count (32-token partitions) a cost in
  // token units is modelled and the cheapest wins, fewer splits on ties:
  //  - uniform lengths, fewer base CTAs than SMs: the CTAs are latency-bound, so fill the
  //    resident slots: waves x (tokens per CTA + fixed cost), waves = ceil(CTAs / slots);
  //  - uniform lengths, at least one base CTA per SM: the SMs share the memory bandwidth,
  //    so what counts is the busiest SM: ceil(CTAs / SMs) x (tokens per CTA + fixed cost);
  //  - mixed lengths (total_tokens hint below num_seqs x max_seq_len): CTAs of different
  //    sizes are scheduled greedily, so the makespan is about the average SM load plus one
  //    CTA: (all tokens + fixed cost x CTAs) / SMs + tokens per CTA; partitions of at least
  //    512 tokens, so the workspace (sized without the hint) always holds the plan.
  // A split adds the reduce. The plan depends only on shapes, max_seq_len, the hint and the
  // device, never on the data, so the workspace size is fixed for a shape and the call is
  // safe under CUDA graph capture. Measured against fixed plans in docs/performance.md.
  constexpr int kMinPartition = 128;   // 4 tiles: one per warp
  constexpr long long kCtaCost = 96;   // fixed cost of a CTA (query load, merge, partial write) in tokens
  constexpr int kMaxSplits = 256;
  const long long heads = static_cast<long long>(s.num_kv_heads) * k.head_tiles;
  const long long base = s.num_seqs * heads;
  const long long sms = sm_count(s.device.index);
  const long long slots = sms * k.ctas_per_sm;
  const long long max_len = p.max_seq_len;
  if (p.batch_invariant) {  // the same partitions for a sequence whatever its batch-mates
    const int parts = v2_max_num_partitions(p.max_seq_len);
    return parts <= 1 ? SplitPlan{1 << 30, 1} : SplitPlan{kPartitionSize, parts};
  }
  if (max_len <= kMinPartition || base <= 0) return {1 << 30, 1};
  const long long total = p.total_tokens;
  const bool mixed = total > 0 && total < s.num_seqs * max_len;
  const long long most = std::min<long long>(kMaxSplits, (max_len + kMinPartition - 1) / kMinPartition);
  long long best_cost = -1;
  SplitPlan best{1 << 30, 1};
  for (long long n = 1; n <= most; ++n) {
    const long long part = ((max_len + n - 1) / n + 31) / 32 * 32;
    const long long splits = (max_len + part - 1) / part;
    if (splits != n) continue;  // this count is not reachable with 32-token partitions
    long long cost;
    if (mixed && part < kPartitionSize) continue;  // the workspace reserves SPEC's partitions at most
    if (mixed) {  // expected CTAs: every sequence rounds its last partition up by half a CTA
      const long long ctas = heads * (total / part + (splits > 1 ? s.num_seqs / 2 : s.num_seqs));
      cost = (heads * total + ctas * kCtaCost) / sms + part + kCtaCost;
    } else if (base < sms) {
      cost = (base * splits + slots - 1) / slots * (part + kCtaCost);
    } else {
      cost = (base * splits + sms - 1) / sms * (part + kCtaCost);
    }
    if (splits > 1) cost += kCtaCost;  // the reduce
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = splits == 1 ? SplitPlan{1 << 30, 1} : SplitPlan{static_cast<int>(part), static_cast<int>(splits)};
    }
  }
  return best;
}

}  // namespace pagedattn::detail::cuda
