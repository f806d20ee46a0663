// The CPU attention backend (SPEC §3): V1 and V2 with the same partial-result contract as
// the GPU kernels.
//
// Work is split over (sequence, kv head) — and, for V2, partition — with OpenMP. One work
// item handles every query head of its GQA group, so each cached key/value element is
// decoded exactly once per call. A work item runs two passes over its token range:
//   1. decode each key block (one contiguous run, in the cache's [head_size/x][block_size][x]
//      layout) into a float tile and compute the logits of the group heads, in tiles of up
//      to 4 heads, as 8-lane dot products;
//   2. softmax (max, exp, sum) per head, then decode each value block into a float tile
//      and accumulate p . v per head as 8-lane partial sums.
// The kernel (attention_kernel.inc) is compiled twice: for AVX2 + F16C, chosen at run time
// when the CPU has them, and for baseline x86-64; both give bitwise the same results.
// Cache blocks are software-prefetched two blocks ahead (the block table defeats the
// hardware prefetcher).
// All arithmetic is float32; the result is rounded to the query dtype once at the end.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/backend.h"
#include "core/check.h"
#include "cpu/elem.h"

// The AVX2 copy of the kernel is compiled with GCC's `#pragma GCC target`; other compilers
// (clang included) build the generic copy only.
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define PAGEDATTN_CPU_X86 1
#include <immintrin.h>
#else
#define PAGEDATTN_CPU_X86 0
#endif

namespace pagedattn::detail::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

/// Per-call constants every work item reads.
struct Call {
  const PagedAttentionParams* p = nullptr;
  const AttentionShape* s = nullptr;
  const std::int32_t* seq_lens = nullptr;
  const std::int32_t* block_tables = nullptr;
  const float* alibi = nullptr;  ///< [num_heads] or nullptr
  Fp8Table k_table, v_table;     ///< fp8 caches only
};

/// SPEC §3 block-sparse rule for query head `h` (kv head `g`) and the cache block starting at
/// token `t0` of a sequence of length `len`.
bool block_attended(const PagedAttentionParams& p, const AttentionShape& s, int len, int h, int g, int t0) {
  const BlockSparseParams& b = p.blocksparse;
  if (!b.enabled()) return true;
  const std::int64_t qb = (len - 1) / b.block_size;
  const std::int64_t kb = t0 / b.block_size;
  if (kb > qb - b.local_blocks) return true;
  const std::int64_t step = b.head_sliding_step;
  const std::int64_t off = step >= 0 ? (std::int64_t(p.tp_rank) * s.num_heads + h) * step + 1
                                     : (std::int64_t(p.tp_rank) * s.num_kv_heads + g) * (-step) + 1;
  return (kb + off) % b.vert_stride == 0;
}

// The kernel passes 8-lane vectors between inline functions; without AVX that would be an
// ABI change (-Wpsabi) if they were ever called across translation units, which they are not.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#define PAGEDATTN_CPU_ISA_NS generic
#define PAGEDATTN_CPU_F16C 0
#include "cpu/attention_kernel.inc"
#undef PAGEDATTN_CPU_ISA_NS
#undef PAGEDATTN_CPU_F16C

#if PAGEDATTN_CPU_X86
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#define PAGEDATTN_CPU_ISA_NS avx2
#define PAGEDATTN_CPU_F16C 1
#include "cpu/attention_kernel.inc"
#undef PAGEDATTN_CPU_ISA_NS
#undef PAGEDATTN_CPU_F16C
#pragma GCC pop_options
#endif
#pragma GCC diagnostic pop

/// Whether to run the avx2 copy of the kernel: the CPU (and OS) supports AVX2 and F16C, and
/// the environment variable PAGEDATTN_CPU_KERNEL is not "generic" (a testing knob: the
/// generic copy must give bitwise the same results, tests/cpu checks it).
[[maybe_unused]] bool use_avx2() {
#if PAGEDATTN_CPU_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  const char* force = std::getenv("PAGEDATTN_CPU_KERNEL");
  return ok && !(force != nullptr && std::strcmp(force, "generic") == 0);
#else
  return false;
#endif
}

Call make_call(const PagedAttentionParams& p, const AttentionShape& s) {
  Call c;
  c.p = &p;
  c.s = &s;
  c.seq_lens = static_cast<const std::int32_t*>(p.seq_lens.data);
  c.block_tables = static_cast<const std::int32_t*>(p.block_tables.data);
  c.alibi = p.alibi_slopes.defined() ? static_cast<const float*>(p.alibi_slopes.data) : nullptr;
  if (p.kv_cache_dtype != CacheDType::kAuto) {
    c.k_table = Fp8Table(p.kv_cache_dtype, p.k_scale);
    c.v_table = Fp8Table(p.kv_cache_dtype, p.v_scale);
  }
  return c;
}

template <class T, class C, int BS, class Worker>
void v1_impl(const Call& c) {
  const AttentionShape& s = *c.s;
  const int G = s.group_size();
  const int D = s.head_size;
  auto* out = static_cast<typename T::Storage*>(c.p->out.data);
  const std::int64_t items = std::int64_t(s.num_seqs) * s.num_kv_heads;
#pragma omp parallel
  {
    Worker w(c);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t it = 0; it < items; ++it) {
      const int seq = static_cast<int>(it / s.num_kv_heads);
      const int g = static_cast<int>(it % s.num_kv_heads);
      const int len = c.seq_lens[seq];
      if (len > 0) w.run(seq, g, len, 0, len);
      for (int j = 0; j < G; ++j) {
        auto* o = out + (std::int64_t(seq) * s.num_heads + g * G + j) * D;
        const float l = len > 0 ? w.exp_sum(j) : 0.0f;
        if (l > 0.0f) {
          const float inv = 1.0f / l;
          const float* acc = w.acc(j);
          for (int d = 0; d < D; ++d) o[d] = T::store(acc[d] * inv);
        } else {
          for (int d = 0; d < D; ++d) o[d] = T::store(0.0f);
        }
      }
    }
  }
}

template <class T, class C, int BS, class Worker>
void v2_impl(const Call& c, const V2Workspace& ws) {
  const AttentionShape& s = *c.s;
  const int G = s.group_size();
  const int D = s.head_size;
  const std::int64_t P = ws.exp_sums.shape[2];  // partition stride of the workspace
  const int parts = s.max_num_partitions;
  auto* exp_sums = static_cast<float*>(ws.exp_sums.data);
  auto* max_logits = static_cast<float*>(ws.max_logits.data);
  auto* tmp_out = static_cast<typename T::Storage*>(ws.tmp_out.data);
  auto* out = static_cast<typename T::Storage*>(c.p->out.data);

  // Step 1: partial results per (sequence, kv head, partition).
  const std::int64_t items = std::int64_t(s.num_seqs) * s.num_kv_heads * parts;
#pragma omp parallel
  {
    Worker w(c);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t it = 0; it < items; ++it) {
      const int part = static_cast<int>(it % parts);
      const int g = static_cast<int>((it / parts) % s.num_kv_heads);
      const int seq = static_cast<int>(it / (std::int64_t(parts) * s.num_kv_heads));
      const int len = c.seq_lens[seq];
      const int t_begin = part * kPartitionSize;
      if (t_begin >= len) continue;  // partitions past the end are skipped
      const int t_end = std::min(len, t_begin + kPartitionSize);
      w.run(seq, g, len, t_begin, t_end);
      for (int j = 0; j < G; ++j) {
        const std::int64_t row = (std::int64_t(seq) * s.num_heads + g * G + j) * P + part;
        const float l = w.exp_sum(j);
        max_logits[row] = w.max_logit(j);
        exp_sums[row] = l;
        auto* o = tmp_out + row * D;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        const float* acc = w.acc(j);
        for (int d = 0; d < D; ++d) o[d] = T::store(acc[d] * inv);
      }
    }
  }

  // Step 2: reduce per (sequence, head).
  const std::int64_t rows = std::int64_t(s.num_seqs) * s.num_heads;
#pragma omp parallel
  {
    std::vector<float> acc(D), w(parts);
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const int seq = static_cast<int>(r / s.num_heads);
      const int len = c.seq_lens[seq];
      auto* o = out + r * D;
      // step 1 wrote at most `parts` partitions: with unchecked data a seq_len beyond
      // max_seq_len must not index past the workspace (the CUDA reduce clamps the same way)
      const int np = std::min((len + kPartitionSize - 1) / kPartitionSize, parts);
      if (np == 1) {  // one partition: its normalised output is the answer
        const auto* src = tmp_out + r * P * D;
        std::copy(src, src + D, o);
        continue;
      }
      float M = kNegInf;
      for (int j = 0; j < np; ++j) M = std::max(M, max_logits[r * P + j]);
      float wsum = 0.0f;
      if (M != kNegInf) {
        for (int j = 0; j < np; ++j) {
          const float l = exp_sums[r * P + j];
          w[j] = l > 0.0f ? l * std::exp(max_logits[r * P + j] - M) : 0.0f;
          wsum += w[j];
        }
      }
      if (np == 0 || !(wsum > 0.0f)) {  // empty sequence, or every token masked
        for (int d = 0; d < D; ++d) o[d] = T::store(0.0f);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int j = 0; j < np; ++j) {
        if (w[j] == 0.0f) continue;
        const auto* src = tmp_out + (r * P + j) * D;
        for (int d = 0; d < D; ++d) acc[d] += w[j] * T::load(src[d]);
      }
      const float inv = 1.0f / wsum;
      for (int d = 0; d < D; ++d) o[d] = T::store(acc[d] * inv);
    }
  }
}

/// Calls f.template operator()<T, C>() for the (query dtype, cache format) pair of the call.
template <class F>
void dispatch(const AttentionShape& s, CacheDType cache, F&& f) {
  const bool fp8 = cache != CacheDType::kAuto;
  switch (s.dtype) {
    case DType::kFloat32:
      return fp8 ? f.template operator()<F32, Fp8>() : f.template operator()<F32, F32>();
    case DType::kFloat16:
      return fp8 ? f.template operator()<F16, Fp8>() : f.template operator()<F16, F16>();
    case DType::kBFloat16:
      return fp8 ? f.template operator()<BF16, Fp8>() : f.template operator()<BF16, BF16>();
    default:
      fail(ErrorCode::kUnsupported, "cpu attention: unsupported query dtype ", dtype_name(s.dtype));
  }
}

/// Turns the runtime block size into the compile-time one.
template <class T, class C, class F>
void with_block_size(int block_size, F&& f) {
  switch (block_size) {
    case 8: return f.template operator()<T, C, 8>();
    case 16: return f.template operator()<T, C, 16>();
    case 32: return f.template operator()<T, C, 32>();
    default: fail(ErrorCode::kUnsupported, "cpu attention: unsupported block_size ", block_size);
  }
}

struct RunV1 {
  const Call& c;
  template <class T, class C, int BS>
  void operator()() const {
#if PAGEDATTN_CPU_X86
    if (use_avx2()) return v1_impl<T, C, BS, avx2::GroupWorker<T, C, BS>>(c);
#endif
    v1_impl<T, C, BS, generic::GroupWorker<T, C, BS>>(c);
  }
};

struct RunV2 {
  const Call& c;
  const V2Workspace& ws;
  template <class T, class C, int BS>
  void operator()() const {
#if PAGEDATTN_CPU_X86
    if (use_avx2()) return v2_impl<T, C, BS, avx2::GroupWorker<T, C, BS>>(c, ws);
#endif
    v2_impl<T, C, BS, generic::GroupWorker<T, C, BS>>(c, ws);
  }
};

/// Adapts a (T, C, BS) functor to dispatch()'s (T, C) call.
template <class F>
struct BlockSizeSwitch {
  int block_size;
  F f;
  template <class T, class C>
  void operator()() const { with_block_size<T, C>(block_size, f); }
};

}  // namespace

void attention_v1(const PagedAttentionParams& p, const AttentionShape& s) {
  const Call c = make_call(p, s);
  dispatch(s, p.kv_cache_dtype, BlockSizeSwitch<RunV1>{s.block_size, RunV1{c}});
}

void attention_v2(const PagedAttentionParams& p, const AttentionShape& s, const V2Workspace& ws) {
  const Call c = make_call(p, s);
  dispatch(s, p.kv_cache_dtype, BlockSizeSwitch<RunV2>{s.block_size, RunV2{c, ws}});
}

}  // namespace pagedattn::detail::cpu
