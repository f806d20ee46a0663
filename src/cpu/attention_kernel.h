// The interface between the CPU attention driver (attention_cpu.cpp: work items, threads,
// split merges, epilogues) and the SIMD kernel (attention_kernel.cpp: one copy per
// instruction set, chosen at run time through Google Highway's dynamic dispatch).
//
// The kernel computes one *tile*: the query rows of one (sequence, kv head) — query token k
// of the tile times head j of the GQA group, row r = k * group + j — over one range of
// cache tokens, and leaves each row's online-softmax state (m, l, o). The driver turns
// states into outputs (out, lse, V2 partials) and merges the states of a split sequence.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/attention_rules.h"

namespace pagedattn::detail::cpu {

/// Storage format of the paged cache, as the kernel decodes it.
enum class CacheKind : int { kF32, kF16, kBF16, kFp8E4M3, kFp8E5M2 };

/// Per-call constants of the kernel (the cache, its strides, the logits rule).
struct KernelCall {
  const void* key_cache = nullptr;    ///< [num_blocks, num_kv_heads, ceil(D/x), block_size, x]
  const void* value_cache = nullptr;  ///< [num_blocks, num_kv_heads, D, block_size]
  std::int64_t k_block_stride = 0, k_head_stride = 0;  ///< elements
  std::int64_t v_block_stride = 0, v_head_stride = 0;  ///< elements
  const std::int32_t* block_tables = nullptr;          ///< [num_seqs, bt_stride]
  std::int64_t bt_stride = 0;
  int head_size = 0;   ///< D
  int block_size = 0;  ///< 8, 16 or 32
  int group = 1;       ///< query heads per kv head
  CacheKind cache = CacheKind::kF32;
  LogitsRule rule;                ///< soft-cap, window, block-sparse
  const float* alibi = nullptr;   ///< [num_heads] slopes or nullptr
  int prefetch_blocks = 4;        ///< cache blocks prefetched ahead of the one computed
  int target = 0;                 ///< the kernel copy to run: chosen_kernel_target(), once per call
};

/// One tile: its rows, the token range, and where the rows' states go.
struct TileJob {
  int seq = 0;      ///< sequence (row of block_tables)
  int kv_head = 0;  ///< g; rows use query heads g * group .. g * group + group - 1
  int ntok = 1;     ///< query tokens of the tile; rows = ntok * group
  int pos0 = 0;     ///< cache position of the tile's first query token
  int t_begin = 0;  ///< first cache token (a multiple of block_size)
  int t_end = 0;    ///< one past the last cache token (<= the sequence's length)
  /// [rows][D] float queries, already multiplied by the call's scale and by the key cache's
  /// decode factor (fp8: k_scale, times 2^8 for e4m3; see attention_kernel.cpp).
  const float* q = nullptr;
  // Outputs, one per row. The state is relative to m: l = sum exp(s - m), o = sum exp(s - m) v
  // (v as decoded, before the value cache's decode factor). m may sit below the true max by
  // less than kLazyRescale (the kernel rescales lazily); m_max is the exact max logit. A row
  // that attended nothing has m = m_max = -inf, l = 0, o = 0; a NaN logit makes m NaN (the
  // epilogue then writes NaN whatever l and o hold).
  float* m = nullptr;
  float* m_max = nullptr;
  float* l = nullptr;
  float* o = nullptr;  ///< [rows][D]
};

/// The kernel rescales a row's accumulator only when its max grows by more than this (the
/// weights exp(s - m) then stay below e^8; the state is exact either way).
constexpr float kLazyRescale = 8.0f;

/// The kernel copy to run (an index for KernelCall::target): the one PAGEDATTN_CPU_KERNEL names
/// when this CPU runs it, else the best. Read once per call by the driver, so a test or a
/// measurement can switch copies between calls.
int chosen_kernel_target();
/// Runs one tile on the kernel copy kc.target.
void attend_tile(const KernelCall& kc, const TileJob& job);

/// Name of the instruction set attend_tile runs: Highway's name of the best target this CPU
/// supports ("AVX3", "AVX2", "SCALAR"), or the one PAGEDATTN_CPU_KERNEL names (a testing
/// and measuring knob; an unknown or unsupported name falls back to the best target).
std::string cpu_kernel_target();
/// Names of the compiled targets this CPU can run, best first.
std::vector<std::string> cpu_kernel_targets();

}  // namespace pagedattn::detail::cpu
