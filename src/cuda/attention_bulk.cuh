// Hopper (sm_90) producer/consumer paged-attention kernel: whole cache pages stream into a
// multi-stage shared-memory ring by bulk copies (cp.async.bulk, completion counted in bytes
// on an mbarrier), and four consumer warps run both products on tensor cores.
//
// Work split: the same CTAs as the other kernels (cta_work: sequence, kv head, a tile of
// query rows, split), 8 rows (query token x head of the GQA group) per row group of four
// consumer warps: one group (hopper_bulk_r8, 192 threads) or two (hopper_bulk_r16, 320
// threads, chosen at launch); or, up to head 128, two groups of 16 rows, each warp on two mma
// n-tiles that share every K and V fragment it loads (hopper_bulk_r32, template NH = 2). So
// one read of each page serves every row of a kv head up to 32 (MQA, groups of 16 or 32,
// several query tokens of a GQA group).
//
// The warps after the consumers are the producers (kBulkProducers, stages alternating between
// them). For stage s (32 tokens = kSpanAlign, 1-4 pages) one reads the block table, waits until
// the slot is free, and issues one bulk copy for a page's keys
// ([head_size/x, block_size, x], contiguous per kv head) and one for its values
// ([head_size, block_size]); pages no row attends are not copied (producer and consumers
// compute that mask alike, stage_pages). 4-24 slots of ~8-32 KB keep 64-192 KB per CTA in
// flight without any register staging (BulkTraits::stages: r16 CTAs have the SM's shared
// memory alone and take twice the ring of r8).
//
// Consumer warp w of each row group takes stages w, w+4, ...: it waits on the slot's full
// barrier (the slot's pages serve both groups: its empty barrier counts every lane of the
// warps reading it), computes for its group's 8 rows (per n-tile),
// transposed so the rows are the narrow n dimension (an m of 16 rows would double the mma
// work, and mma.sync throughput is what bounds a consumer warp: measured on the H200),
//   S^T[32 tokens x 8 rows] = K . Q^T                     (2 m-tiles of 16 tokens)
//   O^T[d x 8 rows]        += V^T . P^T                   (P^T from S^T by 4 shuffles a step)
// with mma.sync m16n8k16 (float32 accumulation), an online softmax per row, and releases the
// slot. Keys and values are read with ldmatrix from the page layout as copied (16-bit caches:
// a 16-byte key chunk is one matrix row, a value row of 8 tokens another), or with 32/16-bit
// shared loads and the hardware fp8 pair conversion (fp8 caches; the queries' dims are stored
// permuted within each 16-dim group so one 32-bit key load is one k-step's operand pair; P . V
// runs in f16 whatever the query type, as the values decode to f16 in one instruction).
// A consumer warp's instructions per stage are what bound the two-group and fp8 CTAs (profiled
// on the H200: docs/performance.md, v0.8), so the common stage runs the fewest: logits in log2
// units (one ex2 per exponential), the soft-cap / ALiBi and per-token masks only where a call
// or a stage needs them, and no rescale of the output while the rows' maxima hold.
// The four warps' states merge in a fixed order through write_merged (deterministic).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/attention_mma.cuh"

namespace pagedattn::detail::cuda {

inline constexpr int kBulkRows = kMmaHeads;  ///< query rows of one mma n-tile
/// Widest head of the kernel with two n-tiles (16 rows) per consumer warp (hopper_bulk_r32):
/// its accumulators (O^T and Q^T fragments of both tiles) must fit the 168 registers a thread
/// of a 320-thread CTA gets (10 warps: three on some SM sub-partition of 16K registers).
inline constexpr int kBulkWideMaxHead = 128;
inline constexpr int kBulkConsumers = 4;   ///< consumer warps (write_merged merges kWarps states)
inline constexpr int kBulkMaxGroups = 2;  ///< row groups of kBulkConsumers warps (8 or 16 rows each)
/// Producer warps: stage s is issued by producer s % kBulkProducers. Profiled on the H200
/// (v0.8), one producer's per-stage chain (free-slot check, page mask, block-table entry, the
/// bulk copies) is what bounded the CTAs that need a stage every ~0.5 us: fp8 caches (8 KB
/// stages) and the 16-row CTAs (one per SM); their consumers waited on data 37-45% of the time
/// while the producer never waited on a free slot.
inline constexpr int kBulkProducers = 2;
/// Threads of a CTA with `groups` row groups: their consumer warps, then the producer warps.
constexpr int bulk_threads(int groups) { return (kBulkConsumers * groups + kBulkProducers) * 32; }
inline constexpr int kBulkMaxThreads = bulk_threads(kBulkMaxGroups);
inline constexpr int kStageTokens = 32;    ///< tokens per ring stage
/// Ring bytes aimed at, in ring units (the launch's ring size: 1 or 2). One unit
/// (hopper_bulk_r8, 192 threads, up to 2 CTAs per SM): measured on the H200 (fp8 32/8, batch 32
/// x 8k), 96 KB (12 slots, 3 per consumer warp, 2 CTAs per SM) 85.7% of copy, 64 KB (8 slots,
/// up to 3 CTAs per SM) 73.8%: a consumer warp needs more than one stage in flight while it
/// computes another. Two units: the CTAs that have the SM's shared memory alone (two row groups,
/// hopper_bulk_r16/_r32, and hopper_bulk_r8_deep: one row group for grids that leave SMs
/// without a second CTA), so one CTA keeps as many bytes in flight per SM as two r8 CTAs do.
constexpr int bulk_ring_target(int ring) { return ring * 96 * 1024; }
/// Shared memory a one-row-group launch with a one-unit ring asks at least, so that no more than
/// two of its CTAs share an SM (228 KB per SM, 1 KB reserved per CTA): measured on the H200
/// (v0.8), once the consumer's registers fell from ~155 to ~130 a third r8 CTA fit beside two
/// wherever the ring is 64 KB, and grids of just under four CTAs per SM (32/8, batch 64 x 4k) ran
/// 7% slower; the ring itself cannot take the room (its slots come in fours).
inline constexpr int kBulkOneGroupMinSmem = 80 * 1024;
/// Slots at most, per ring unit count (the mbarrier pairs are 16 bytes each).
constexpr int bulk_max_stages(int ring) { return ring * 12; }
inline constexpr int kBulkMaxRing = 2;  ///< ring units at most
static_assert(kStageTokens == kSpanAlign, "a split starts on a stage boundary");
static_assert(kBulkConsumers == kWarps, "write_merged merges kWarps warp states");

/// NH: mma n-tiles of 8 query rows per consumer warp (1, or 2 for hopper_bulk_r32: each K and
/// V fragment a warp loads serves 16 rows).
template <typename T, CacheKind C, int D, int NH = 1>
struct BulkTraits {
  using CacheT = typename CacheElem<T, C>::type;
  static constexpr int kElem = static_cast<int>(sizeof(CacheT));
  static constexpr int kE = 16 / kElem;                 ///< cache elements per 16-byte key chunk
  static constexpr int kChunks = (D + kE - 1) / kE;     ///< key chunks per token
  static constexpr int kKSteps = (D + 15) / 16;         ///< mma k-steps of QK
  static constexpr int kDTiles = (D + 15) / 16;         ///< 16-dim m-tiles of the output
  static_assert(D % 8 == 0, "head sizes are multiples of 8");
  static constexpr int kKStageBytes = kChunks * 16 * kStageTokens;
  static constexpr int kVStageBytes = D * kElem * kStageTokens;
  static constexpr int kStageBytes = (kKStageBytes + kVStageBytes + 127) / 128 * 128;
  /// Ring slots of a ring of `ring` units: a multiple of the consumer count, so that stage s
  /// uses slot s % stages and is consumed by warp s % 4 (every slot belongs to one warp of each
  /// group). Otherwise a warp could wait on a slot's full barrier one phase ahead of the warp
  /// still reading it, and the parity wait would pass at once (measured: with 6 slots,
  /// unspecified launch failures on the H200).
  static constexpr int stages(int ring) {
    const int wanted = bulk_ring_target(ring) / kStageBytes / kBulkConsumers * kBulkConsumers;
    return wanted < kBulkConsumers ? kBulkConsumers : wanted > bulk_max_stages(ring) ? bulk_max_stages(ring) : wanted;
  }
  static constexpr int kGroupRows = kBulkRows * NH;  ///< query rows of a row group
  static_assert(NH == 1 || (NH == 2 && D <= kBulkWideMaxHead), "two n-tiles per warp up to kBulkWideMaxHead");
  /// queries [groups x kGroupRows][kQPitch] in T; +8 elements so the 8 rows' fragment loads hit
  /// distinct banks
  static constexpr int kQPitch = kKSteps * 16 + 8;
  static constexpr int kQBytes = (kBulkMaxGroups * kGroupRows * kQPitch * 2 + 15) / 16 * 16;
  /// then a BulkRow per query row: what the rare per-row paths (ALiBi, soft-cap, masked
  /// stages) read, kept out of the consumers' registers (16-row warps need them for the
  /// accumulators)
  static constexpr int kRowBytes = kBulkMaxGroups * kGroupRows * 16;
  /// shared-memory layout: the ring, the queries, the rows, then a (full, empty) mbarrier pair
  /// per slot
  static constexpr int ring_bytes(int ring) { return stages(ring) * kStageBytes; }
  static constexpr int bar_offset(int ring) { return ring_bytes(ring) + kQBytes + kRowBytes; }
  static constexpr int smem_bytes(int ring) { return bar_offset(ring) + stages(ring) * (8 + 8); }
  /// Dynamic shared memory of a launch (the layout, or kBulkOneGroupMinSmem for a one-unit ring)
  static constexpr int launch_bytes(int ring) {
    return ring == 1 && smem_bytes(1) < kBulkOneGroupMinSmem ? kBulkOneGroupMinSmem : smem_bytes(ring);
  }
  /// The kernel's shared-memory attribute: the larger launch
  static constexpr int attr_bytes() {
    return launch_bytes(1) > launch_bytes(kBulkMaxRing) ? launch_bytes(1) : launch_bytes(kBulkMaxRing);
  }
  static_assert(stages(1) % kBulkConsumers == 0 && stages(kBulkMaxRing) % kBulkConsumers == 0,
                "each ring slot must belong to one consumer warp of each group");
  static_assert(smem_bytes(kBulkMaxRing) <= 227 * 1024, "the ring must fit an sm_90 CTA's shared memory");
  /// the epilogue's merge buffers (one per row group) alias the ring, the queries and the rows
  /// (all free by then: every stage consumed, the queries in registers since the start)
  static constexpr int kRedBytes = 4 * (kWarps * kGroupRows * D + 2 * kWarps * kGroupRows);
  static_assert(kBulkMaxGroups * kRedBytes <= bar_offset(1), "merge buffers must fit in the ring and queries");
};

/// One query row of a bulk CTA: its ALiBi slope, the position of its query token (it attends
/// t <= pos), the first token it attends, its query head.
struct BulkRow {
  float slope;
  int pos, lo, head;
};
static_assert(sizeof(BulkRow) == 16, "BulkTraits::kRowBytes holds 16 bytes a row");

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(std::uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/// Bulk copy of `bytes` (multiple of 16, both addresses 16-byte aligned) global -> shared,
/// counted on `bar`; `policy` is an L2 cache policy (evict-first for a stream read once).
__device__ __forceinline__ void bulk_copy(std::uint32_t dst, const void* src, std::uint32_t bytes, std::uint32_t bar,
                                          std::uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}
#endif

__device__ __forceinline__ void ldsm_x4(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
/// Two 8x8 matrices: lanes 0-7 address the rows of the first, lanes 8-15 of the second.
__device__ __forceinline__ void ldsm_x2(std::uint32_t addr, std::uint32_t& r0, std::uint32_t& r1) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}
__device__ __forceinline__ std::uint32_t lds_u32(std::uint32_t addr) {
  std::uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ std::uint32_t lds_u16(std::uint32_t addr) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(addr));
  return v;
}
/// Named barrier of the consumer warps (the producer warp has left).
/// Every consumer warp of the CTA (`threads` of them: the producer warp does not take part).
__device__ __forceinline__ void consumers_sync(int threads) { asm volatile("bar.sync 1, %0;\n" ::"r"(threads) : "memory"); }
/// The four consumer warps of row group g.
__device__ __forceinline__ void group_sync(int g) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(2 + g), "n"(kBulkConsumers * 32) : "memory");
}

/// Mask of the 16-bit halves of a pair register: tokens (lo, hi) kept when valid.
__device__ __forceinline__ std::uint32_t half_mask(bool lo, bool hi) {
  return (lo ? 0x0000ffffu : 0u) | (hi ? 0xffff0000u : 0u);
}

/// The token ranges a set of rows attends (window and causal position; the block-sparse rule
/// is per page). Rows are token-major, so positions grow with the row and each row attends
/// [first_token(pos), pos]: consecutive positions give overlapping ranges, so some row attends
/// [any_lo, any_hi] (their union) and every row attends [all_lo, all_hi] (their intersection,
/// empty when all_lo > all_hi). Computed once per CTA / row group: no per-stage loop over rows.
struct RowRanges {
  int any_lo, any_hi, all_lo, all_hi;
};
template <bool kVar>
__device__ __forceinline__ RowRanges row_ranges(const AttentionKernelParams& p, const CtaWork& w) {
  const int last = w.nr > 0 ? w.nr - 1 : 0;
  const int pos_first = kVar ? w.pos(0) : w.seq_len - 1, pos_last = kVar ? w.pos(last) : w.seq_len - 1;
  return {p.rule.first_token(pos_first), pos_last, p.rule.first_token(pos_last), pos_first};
}

/// Whether some active row of the CTA attends a token of the page [first, last] (inclusive)
/// inside the split: the producer copies only those pages.
template <bool kVar>
__device__ __forceinline__ bool page_attended(const AttentionKernelParams& p, const CtaWork& w, const RowRanges& rr,
                                              int first, int last) {
  const bool ranges = kVar && p.rows_vary;
  if (!ranges && !p.rule.sparse) return true;
  if (ranges && (rr.any_hi < first || rr.any_lo > last)) return false;
  if (!p.rule.sparse) return true;
  for (int i = 0; i < w.nr; ++i) {
    const int pos = kVar ? w.pos(i) : w.seq_len - 1;
    if (ranges && (pos < first || p.rule.first_token(pos) > last)) continue;
    if (!p.rule.block_attended(pos, w.head(i), w.kv_head, first)) continue;
    return true;
  }
  return false;
}

/// Pages of the stage starting at token t0 that are copied (bit j: page j of the stage): the
/// producer and the consumers compute the same mask from the same inputs, so no shared-memory
/// word passes it between warps. Called by a whole warp.
template <bool kVar>
__device__ __forceinline__ unsigned stage_pages(const AttentionKernelParams& p, const CtaWork& w, const RowRanges& rr,
                                                int t0, int lane) {
  const int bs = p.block_size, first = t0 + lane * bs;
  const bool need = lane < (kStageTokens >> p.block_shift) && first < w.end &&
                    page_attended<kVar>(p, w, rr, first, min(first + bs, w.end) - 1);
  return __ballot_sync(0xffffffffu, need);
}

/// Calls f(h, e, k) for each logit a consumer lane holds per stage (unrolled): n-tile h, its
/// row 8h + 2q + e, element k = 2mt + hf (token 16mt + 8hf + r).
template <int NH, typename F>
__device__ __forceinline__ void each_logit(F&& f) {
#pragma unroll
  for (int h = 0; h < NH; ++h)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int k = 0; k < 4; ++k) f(h, e, k);
}

template <typename T, CacheKind C, int D, int NH, bool kVar>
__global__ void __launch_bounds__(kBulkMaxThreads) paged_attention_bulk_kernel(const __grid_constant__ AttentionKernelParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using Tr = BulkTraits<T, C, D, NH>;
  pdl_wait();  // the previous kernel's writes (queries, tables, partials) are visible
  constexpr int R = Tr::kGroupRows;  // rows of a row group: NH n-tiles of kBulkRows
  constexpr bool kFp8 = C != CacheKind::kSame;
  // the P . V product's 16-bit type: T, or f16 for fp8 caches (the values decode to f16 in one
  // instruction, to bf16 in four; P in [0, 1] keeps more bits in f16 than in bf16)
  using PT = std::conditional_t<kFp8, __half, T>;

  const int groups = blockDim.x / (32 * kBulkConsumers);  // row groups: (4 groups + kBulkProducers) warps
  const CtaWork work = cta_work_rows(p, R * groups);
  if (work.empty) return;
  const int start = work.start, end = work.end;
  const int nstages = (end - start + kStageTokens - 1) / kStageTokens;
  const int bs = p.block_size, shift = p.block_shift;
  const int k_page = Tr::kChunks * 16 * bs;  // bytes of one page's keys (one kv head)
  const RowRanges cta_ranges = row_ranges<kVar>(p, work);
  const int v_page = D * Tr::kElem * bs;

  extern __shared__ __align__(128) unsigned char smem[];
  // the launch gave this CTA smem_bytes(ring): a ring of `nslots` slots
  const int nslots = p.ring_slots;  // Tr::stages(ring units of the launch)
  T* q_s = reinterpret_cast<T*>(smem + nslots * Tr::kStageBytes);
  BulkRow* rows_s = reinterpret_cast<BulkRow*>(smem + nslots * Tr::kStageBytes + Tr::kQBytes);
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(smem + nslots * Tr::kStageBytes + Tr::kQBytes + Tr::kRowBytes);
  std::uint64_t* empty = full + nslots;
  const std::uint32_t ring = smem_u32(smem);

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  if (tid == 0) {
    for (int i = 0; i < nslots; ++i) {
      mbar_init(smem_u32(full + i), 1);   // the producer's arrive (+ the copies' bytes)
      mbar_init(smem_u32(empty + i), 32 * groups);  // the consuming warps' release: each lane's own arrive
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // Queries as T (exact), unscaled, zero in padding rows and dims. fp8 caches: dims permuted
  // within each 16-dim group so that element k of the group holds dim pi(k), pi(2j+e) = 4j+e,
  // pi(8+2j+e) = 4j+2+e: the order one 32-bit load of 4 fp8 key bytes produces.
  {
    const T* qg = static_cast<const T*>(p.query);
    auto row_ptr = [&](int row) {
      return qg + static_cast<std::int64_t>(work.qrow(row)) * p.q_stride + static_cast<std::int64_t>(work.head(row)) * D;
    };
    constexpr int kRowChunks = Tr::kQPitch / 8;  // 16-byte chunks of a q_s row (8 dims each)
    static_assert(Tr::kQPitch % 8 == 0 && D % 8 == 0, "a query chunk is 8 dims, all in or all out of the head");
    if (reinterpret_cast<std::uintptr_t>(qg) % 16 == 0 && p.q_stride % 8 == 0) {
      // one 16-byte load per chunk, all issued at once (a CTA's whole prologue waits on them)
      for (int i = tid; i < groups * R * kRowChunks; i += static_cast<int>(blockDim.x)) {
        const int row = i / kRowChunks, c8 = i % kRowChunks;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (row < work.nr && 8 * c8 < D) v = *reinterpret_cast<const uint4*>(row_ptr(row) + 8 * c8);
        T* dst = q_s + row * Tr::kQPitch;
        if (!kFp8 || c8 >= 2 * Tr::kKSteps) {
          *reinterpret_cast<uint4*>(dst + 8 * c8) = v;
        } else {
          // dims 8h + (0,1 | 2,3 | 4,5 | 6,7) of group g = c8 / 2 (half h) go to its slots
          // (4h | 8 + 4h | 4h + 2 | 8 + 4h + 2): words (2h | 4 + 2h | 2h + 1 | 4 + 2h + 1)
          std::uint32_t* gw = reinterpret_cast<std::uint32_t*>(dst + 16 * (c8 >> 1)) + 2 * (c8 & 1);
          *reinterpret_cast<uint2*>(gw) = make_uint2(v.x, v.z);
          *reinterpret_cast<uint2*>(gw + 4) = make_uint2(v.y, v.w);
        }
      }
    } else {
      for (int i = tid; i < groups * R * Tr::kQPitch; i += static_cast<int>(blockDim.x)) {
        const int row = i / Tr::kQPitch, c = i % Tr::kQPitch;
        int d = c;
        if constexpr (kFp8) {
          const int k = c & 15, j = (k & 7) >> 1;
          d = (c & ~15) + 4 * j + (k >= 8 ? 2 : 0) + (k & 1);
        }
        T v = from_float<T>(0.0f);
        if (row < work.nr && c < Tr::kKSteps * 16 && d < D) v = row_ptr(row)[d];
        q_s[i] = v;
      }
    }
  }
  __syncthreads();

  if (warp >= kBulkConsumers * groups) {  // ------------------------------------- producers
    const int producer = warp - kBulkConsumers * groups;  // issues stages producer, + kBulkProducers, ...
    const std::int32_t* bt = p.block_tables + static_cast<std::int64_t>(work.seq) * p.bt_stride;
    const unsigned char* kg = static_cast<const unsigned char*>(p.key_cache) +
                              static_cast<std::int64_t>(work.kv_head) * p.k_head_stride * Tr::kElem;
    const unsigned char* vg = static_cast<const unsigned char*>(p.value_cache) +
                              static_cast<std::int64_t>(work.kv_head) * p.v_head_stride * Tr::kElem;
    std::uint64_t policy;
    if (p.row_tiles > 1)  // other CTAs read the same pages: keep them in L2
      asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
    else
      asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    // 16-bit caches: block-table entries come in batches of 32 pages (one coalesced warp load:
    // lane i holds the entry of page first_page + 32 b + i), the next batch loaded while this
    // one is used, so no stage waits on a block-table read (measured on the H200: +1-5 points
    // of copy on fp16, +4.7 at block size 8). fp8 caches read one entry per stage, before the
    // wait for the free slot so the read overlaps it: with batches they measured 6-7 points
    // slower (v0.5, one producer; not explained yet).
    constexpr bool kBatchTable = !kFp8;
    const int pages = kStageTokens >> shift;  // pages per stage (1-4)
    const int spb = 32 / pages;               // stages per batch (8-32: a producer visits every batch)
    const int first_page = start >> shift, last_page = (end - 1) >> shift;
    auto load_batch = [&](int b) {
      const int pg = first_page + 32 * b + lane;
      return pg <= last_page ? bt[pg] : 0;
    };
    int cur = 0, nxt = 0, cur_batch = 0;
    if constexpr (kBatchTable) {
      cur = load_batch(0);
      if (nstages > spb) nxt = load_batch(1);
    }
    // stage s fills slot s % nslots in round s / nslots (phase parity: round & 1); nslots is a
    // multiple of the producer count, so each slot has one producer
    static_assert(kBulkConsumers % kBulkProducers == 0, "slots come in multiples of the consumer count");
    for (int s = producer, slot = producer, round = 0; s < nstages; s += kBulkProducers) {
      const int t0 = start + s * kStageTokens;
      const unsigned mask = stage_pages<kVar>(p, work, cta_ranges, t0, lane);
      const bool need = (mask >> lane) & 1u;
      int page = 0;
      if constexpr (kBatchTable) {
        const int b = s / spb;
        if (b != cur_batch) {  // b grows by one at most: kBulkProducers <= spb
          cur = nxt;
          cur_batch = b;
          if ((b + 1) * spb < nstages) nxt = load_batch(b + 1);
        }
        page = __shfl_sync(0xffffffffu, cur, ((s - b * spb) * pages + lane) & 31);
      } else {
        if (need) page = bt[(t0 + lane * bs) >> shift];
      }
      if (round > 0) {
        mbar_wait(smem_u32(empty + slot), (round - 1) & 1);
        // the consumers' reads of the slot's previous contents (generic proxy, released by
        // their arrives, acquired by the wait above) before the bulk copies (async proxy)
        // overwrite it
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      }
      if (lane == 0)
        mbar_arrive_expect_tx(smem_u32(full + slot), static_cast<std::uint32_t>(__popc(mask) * (k_page + v_page)));
      __syncwarp();
      if (need) {
        const std::uint32_t dst = ring + slot * Tr::kStageBytes;
        const std::uint32_t bar = smem_u32(full + slot);
        bulk_copy(dst + lane * k_page, kg + static_cast<std::int64_t>(page) * p.k_block_stride * Tr::kElem, k_page, bar,
                  policy);
        bulk_copy(dst + Tr::kKStageBytes + lane * v_page, vg + static_cast<std::int64_t>(page) * p.v_block_stride * Tr::kElem,
                  v_page, bar, policy);
      }
      slot += kBulkProducers;
      if (slot >= nslots) {
        slot -= nslots;
        ++round;
      }
    }
    return;
  }

  // ------------------------------------------------------------------------- consumers
  const CtaScales scales = cta_scales(p, work.kv_head);
  // this warp's row group and its place in it; rw: the group's R rows of the CTA's (none when
  // the CTA's last tile is short)
  const int cgroup = warp / kBulkConsumers, cwarp = warp % kBulkConsumers;
  {
    // the group's rows: slope, position, first token, head (inactive rows: the last position,
    // no slope); written here, after the producers have started, not before the CTA's
    // barrier (a short CTA waits on its first copies)
    const int t = tid - cgroup * kBulkConsumers * 32, row = R * cgroup + t;
    if (t < R) {
      const bool active = row < work.nr;
      BulkRow info;
      info.head = active ? work.head(row) : 0;
      info.slope = (p.alibi_slopes != nullptr && active) ? p.alibi_slopes[info.head] : 0.0f;
      info.pos = kVar && active ? work.pos(row) : work.seq_len - 1;
      info.lo = kVar && p.rows_vary ? p.rule.first_token(info.pos) : 0;
      rows_s[row] = info;
    }
    group_sync(cgroup);
  }
  CtaWork rw = work;
  rw.row0 += R * cgroup;
  rw.nr = min(R, work.nr - R * cgroup);
  const int r = lane >> 2, q = lane & 3;  // fragment row group / column pair
  const bool ranges = kVar && p.rows_vary;
  const bool masked = ranges || p.rule.sparse;  // per-(row, token) masks beyond the split's end
  // this lane's rows 8h + 2q and 8h + 2q + 1 of n-tile h (the n dimension of both products):
  // their BulkRow, read where a path needs it
  const BulkRow* lane_rows = rows_s + R * cgroup + 2 * q;
  const RowRanges group_ranges = row_ranges<kVar>(p, rw);  // this group's rows
  // logits without soft-cap or ALiBi are the scaled dot product alone: one multiply into log2 units
  const bool plain_logits = p.alibi_slopes == nullptr && !(kVar && p.rule.soft_cap > 0.0f);
  const float qk2 = scales.qk * kLog2e;
  // Q^T operand (B of S^T = K . Q^T) of n-tile h: row 8h + r, dims 16ks + 2q, +1 and
  // 16ks + 8 + 2q, +1 (as stored)
  std::uint32_t qb[NH][Tr::kKSteps][2];
#pragma unroll
  for (int h = 0; h < NH; ++h) {
    const std::uint32_t qrow = smem_u32(q_s) + ((R * cgroup + 8 * h + r) * Tr::kQPitch + 2 * q) * 2;
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks) {
      qb[h][ks][0] = lds_u32(qrow + ks * 32);
      qb[h][ks][1] = lds_u32(qrow + ks * 32 + 16);
    }
  }

  float m[NH][2], l[NH][2];
  float o[NH][Tr::kDTiles][4];  // O^T of n-tile h: dims 16t + r (+8) x rows 8h + 2q, +1
#pragma unroll
  for (int h = 0; h < NH; ++h) {
    m[h][0] = m[h][1] = -INFINITY;
    l[h][0] = l[h][1] = 0.0f;
#pragma unroll
    for (int t = 0; t < Tr::kDTiles; ++t) o[h][t][0] = o[h][t][1] = o[h][t][2] = o[h][t][3] = 0.0f;
  }
  const unsigned all_pages = (1u << (kStageTokens >> shift)) - 1u;
  const int mi = lane >> 3, i8 = lane & 7;  // ldmatrix: matrix and row this lane addresses
  // P^T operand sources: tokens 2q and 2q + 1 of a 16-token step sit in lanes 4 (2q) + r/2 and
  // 4 (2q + 1) + r/2, as pairs of rows (r & ~1, r | 1): keep the half of row r
  const int src0 = 8 * q + (r >> 1), src1 = src0 + 4;
  const unsigned half_sel = (r & 1) ? 0x7632u : 0x5410u;

  // stage s in slot s % nslots, round s / nslots; nslots is a multiple of the consumer count, so
  // a warp's slots cycle without a division
  for (int s = cwarp, slot = cwarp, round = 0; s < nstages; s += kBulkConsumers) {
    const int t0 = start + s * kStageTokens;
    const unsigned copied = stage_pages<kVar>(p, work, cta_ranges, t0, lane);  // as the producer computed it
    mbar_wait(smem_u32(full + slot), round & 1);
    const int nvalid = min(kStageTokens, end - t0);
    const bool whole = nvalid == kStageTokens && copied == all_pages;
    // per-(row, token) masks only where some row's range (window, causal position) cuts the
    // stage or the block-sparse rule applies: a multi-token call masks its last stages only
    const bool stage_masked =
        masked && (p.rule.sparse || t0 < group_ranges.all_lo || t0 + kStageTokens - 1 > group_ranges.all_hi);
    const std::uint32_t kst = ring + slot * Tr::kStageBytes;
    const std::uint32_t vst = kst + Tr::kKStageBytes;
    auto tok_ok = [&](int tt) { return tt < nvalid && ((copied >> (tt >> shift)) & 1u); };

    // ---- S^T = K . Q^T: m-tile mt = tokens 16mt.. (c0/c1: token 16mt + r, rows 2q, 2q + 1 of
    // the n-tile; c2/c3: token 16mt + r + 8); each K fragment serves the NH n-tiles
    float sacc[NH][2][4];
#pragma unroll
    for (int h = 0; h < NH; ++h)
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) sacc[h][mt][0] = sacc[h][mt][1] = sacc[h][mt][2] = sacc[h][mt][3] = 0.0f;
    if constexpr (!kFp8) {
      // ldmatrix.x4 per (m-tile, k-step): (tokens +0..7, chunk 2ks), (+8..15, 2ks),
      // (+0..7, 2ks + 1), (+8..15, 2ks + 1) -> a0..a3; a matrix row is one 16-byte key chunk
      std::uint32_t kaddr[2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int t = 16 * mt + 8 * (mi & 1) + i8;
        kaddr[mt] = kst + (t >> shift) * k_page + (t & (bs - 1)) * 16 + (mi >> 1) * bs * 16;
      }
#pragma unroll
      for (int ks = 0; ks < Tr::kKSteps; ++ks)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          std::uint32_t a[4];
          if (2 * ks + 1 < Tr::kChunks) {  // compile time
            ldsm_x4(kaddr[mt] + 2 * ks * bs * 16, a);
          } else {
            // head 120: no chunk 15; lanes 0-15 address chunk 2ks (tokens +0..7, +8..15), so
            // nothing past the page is read (the bytes after it are another slot being filled)
            ldsm_x2(kaddr[mt] + 2 * ks * bs * 16, a[0], a[1]);
            a[2] = a[3] = 0u;
          }
#pragma unroll
          for (int h = 0; h < NH; ++h) mma_16816<T>(sacc[h][mt], a, qb[h][ks][0], qb[h][ks][1]);
        }
    } else {
      // one 32-bit load: fp8 dims 16ks + 4q.. of one token -> a0/a2 (token r) or a1/a3 (r + 8)
      std::uint32_t kaddr[2][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int t = 16 * mt + 8 * hf + r;
          kaddr[mt][hf] = kst + (t >> shift) * k_page + (t & (bs - 1)) * 16 + 4 * q;
        }
#pragma unroll
      for (int ks = 0; ks < Tr::kKSteps; ++ks) {
        const bool pad = 16 * ks + 4 * q >= D;  // padding dims of a partial last chunk (head 120)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          std::uint32_t w0 = lds_u32(kaddr[mt][0] + ks * bs * 16);
          std::uint32_t w1 = lds_u32(kaddr[mt][1] + ks * bs * 16);
          if (16 * (ks + 1) > D && pad) w0 = w1 = 0u;
          const std::uint32_t a[4] = {fp8x2_to_pair<T, C>(w0 & 0xffffu), fp8x2_to_pair<T, C>(w1 & 0xffffu),
                                      fp8x2_to_pair<T, C>(w0 >> 16), fp8x2_to_pair<T, C>(w1 >> 16)};
#pragma unroll
          for (int h = 0; h < NH; ++h) mma_16816<T>(sacc[h][mt], a, qb[h][ks][0], qb[h][ks][1]);
        }
      }
    }

    // ---- online softmax of rows 8h + 2q + e, in log2 units (logit x log2(e): each exponential
    // is one ex2); element k = 2mt + hf is token 16mt + 8hf + r
    float pr[NH][2][4];
    each_logit<NH>([&](int h, int e, int k) { pr[h][e][k] = sacc[h][k >> 1][2 * (k & 1) + e]; });
    if (plain_logits) {
      each_logit<NH>([&](int h, int e, int k) { pr[h][e][k] *= qk2; });
    } else {
      each_logit<NH>([&](int h, int e, int k) {
        const BulkRow& ri = lane_rows[8 * h + e];
        pr[h][e][k] = row_logit<kVar>(p, pr[h][e][k] * scales.qk, ri.slope, t0 + 16 * (k >> 1) + 8 * (k & 1) + r, ri.pos) * kLog2e;
      });
    }
    if (!whole || stage_masked) {
      each_logit<NH>([&](int h, int e, int k) {
        const int tt = 16 * (k >> 1) + 8 * (k & 1) + r;
        const int t = t0 + tt;
        bool ok = tok_ok(tt);
        if (stage_masked) {
          const BulkRow& ri = lane_rows[8 * h + e];
          ok = ok && t >= ri.lo && t <= ri.pos &&
               (!p.rule.sparse || p.rule.block_attended(ri.pos, ri.head, work.kv_head, (t >> shift) << shift));
        }
        if (!ok) pr[h][e][k] = -INFINITY;
      });
    }
    float alpha[NH][2];
    bool rescale = false;
#pragma unroll
    for (int h = 0; h < NH; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float mx = max_nan(max_nan(pr[h][e][0], pr[h][e][1]), max_nan(pr[h][e][2], pr[h][e][3]));
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        const float m_new = max_nan(m[h][e], mx);
        alpha[h][e] = m_new == -INFINITY ? 1.0f : exp2_ftz(m[h][e] - m_new);
        rescale = rescale || alpha[h][e] != 1.0f;
        float sum = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float pv = m_new == -INFINITY ? 0.0f : exp2_ftz(pr[h][e][k] - m_new);
          pr[h][e][k] = pv;
          sum += pv;
        }
        m[h][e] = m_new;
        l[h][e] = l[h][e] * alpha[h][e] + sum;  // lane-partial; reduced over the 8 lanes of the row at the end
      }
    // once a row's max has settled (most stages of a long sequence) nothing needs rescaling
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int h = 0; h < NH; ++h)
#pragma unroll
        for (int t = 0; t < Tr::kDTiles; ++t) {
          o[h][t][0] *= alpha[h][0];
          o[h][t][1] *= alpha[h][1];
          o[h][t][2] *= alpha[h][0];
          o[h][t][3] *= alpha[h][1];
        }
    }

    // ---- O^T += V^T . P^T, two k-steps of 16 tokens. P^T operand by shuffles from S^T's
    // layout: b0 = tokens 2q, 2q + 1 of row r, b1 = +8
    std::uint32_t pb[NH][2][2];
#pragma unroll
    for (int h = 0; h < NH; ++h)
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        const std::uint32_t lo = pack2<PT>(pr[h][0][2 * kk], pr[h][1][2 * kk]);          // token 16kk + r
        const std::uint32_t hi = pack2<PT>(pr[h][0][2 * kk + 1], pr[h][1][2 * kk + 1]);  // token 16kk + r + 8
        pb[h][kk][0] = __byte_perm(__shfl_sync(0xffffffffu, lo, src0), __shfl_sync(0xffffffffu, lo, src1), half_sel);
        pb[h][kk][1] = __byte_perm(__shfl_sync(0xffffffffu, hi, src0), __shfl_sync(0xffffffffu, hi, src1), half_sel);
      }
    // values of tokens past the split or of pages not copied may hold anything (NaN): a stage
    // that has such tokens zeroes them (P is 0 there, but 0 * NaN is NaN); whole stages skip
    // the masks. Each V fragment serves the NH n-tiles.
    auto pv_product = [&](auto masked_tag) {
      constexpr bool kMasked = decltype(masked_tag)::value;
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        std::uint32_t keep0 = 0xffffffffu, keep1 = 0xffffffffu;
        if constexpr (kMasked) {
          const int tt = 16 * kk + 2 * q;
          keep0 = half_mask(tok_ok(tt), tok_ok(tt + 1));
          keep1 = half_mask(tok_ok(tt + 8), tok_ok(tt + 9));
        }
        if constexpr (!kFp8) {
          // ldmatrix.x4 per 16 dims: (dims +0..7, tokens +0..7), (+8..15, +0..7), (+0..7, +8..15),
          // (+8..15, +8..15) -> a0..a3; a matrix row is 8 tokens of one dim (16 bytes)
          const int t = 16 * kk + 8 * (mi >> 1);
          const std::uint32_t vaddr = vst + (t >> shift) * v_page + ((8 * (mi & 1) + i8) * bs + (t & (bs - 1))) * 2;
#pragma unroll
          for (int dt = 0; dt < Tr::kDTiles; ++dt) {
            std::uint32_t a[4];
            if (16 * dt + 8 < D) {  // compile time
              ldsm_x4(vaddr + dt * 16 * bs * 2, a);
            } else {
              // head 120: the last tile has dims +0..7 only; lanes 0-15 address (dims +0..7,
              // tokens +0..7) and (+0..7, +8..15), so nothing past the page is read
              const int th = 16 * kk + 8 * ((lane >> 3) & 1);
              ldsm_x2(vst + (th >> shift) * v_page + (i8 * bs + (th & (bs - 1))) * 2 + dt * 16 * bs * 2, a[0], a[2]);
              a[1] = a[3] = 0u;
            }
            if constexpr (kMasked) {
              a[0] &= keep0;
              a[2] &= keep1;
              a[1] &= keep0;
              a[3] &= keep1;
            }
#pragma unroll
            for (int h = 0; h < NH; ++h) mma_16816<PT>(o[h][dt], a, pb[h][kk][0], pb[h][kk][1]);
          }
        } else {
          // 16-bit loads: tokens 16kk + 2q, +1 (a0/a1) and 16kk + 8 + 2q, +1 (a2/a3) of dims
          // 16dt + r (a0/a2) and 16dt + r + 8 (a1/a3)
          const int ta = 16 * kk + 2 * q, tb = ta + 8;
          const std::uint32_t va = vst + (ta >> shift) * v_page + r * bs + (ta & (bs - 1));
          const std::uint32_t vb = vst + (tb >> shift) * v_page + r * bs + (tb & (bs - 1));
#pragma unroll
          for (int dt = 0; dt < Tr::kDTiles; ++dt) {
            std::uint32_t a[4];
            a[0] = fp8x2_to_pair<PT, C>(lds_u16(va + dt * 16 * bs)) & keep0;
            a[2] = fp8x2_to_pair<PT, C>(lds_u16(vb + dt * 16 * bs)) & keep1;
            if (16 * dt + 8 < D) {
              a[1] = fp8x2_to_pair<PT, C>(lds_u16(va + (dt * 16 + 8) * bs)) & keep0;
              a[3] = fp8x2_to_pair<PT, C>(lds_u16(vb + (dt * 16 + 8) * bs)) & keep1;
            } else {
              a[1] = a[3] = 0u;
            }
#pragma unroll
            for (int h = 0; h < NH; ++h) mma_16816<PT>(o[h][dt], a, pb[h][kk][0], pb[h][kk][1]);
          }
        }
      }
    };
    if (whole)
      pv_product(std::false_type{});
    else
      pv_product(std::true_type{});
    // the slot may be refilled: every lane arrives after its own reads (an arrive releases
    // only the accesses of the thread that executes it; the barrier counts 32)
    mbar_arrive(smem_u32(empty + slot));
    slot += kBulkConsumers;
    if (slot >= nslots) {
      slot -= nslots;
      ++round;
    }
  }

  // ---- merge the four consumer warps in a fixed order (deterministic)
#pragma unroll
  for (int h = 0; h < NH; ++h)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      m[h][e] *= kLn2;  // the running max back in natural units (-inf, NaN stay)
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) l[h][e] += __shfl_xor_sync(0xffffffffu, l[h][e], off);
    }
  // every stage consumed by both groups and every query in registers: ring and queries are free
  consumers_sync(kBulkConsumers * 32 * groups);
  float* red_acc = reinterpret_cast<float*>(smem + cgroup * Tr::kRedBytes);  // [kWarps][R][D] per group
  float* red_m = red_acc + kWarps * R * D;          // [kWarps][R]
  float* red_l = red_m + kWarps * R;
  if (r == 0) {
#pragma unroll
    for (int h = 0; h < NH; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        red_m[cwarp * R + 8 * h + 2 * q + e] = m[h][e];
        red_l[cwarp * R + 8 * h + 2 * q + e] = l[h][e];
      }
  }
  group_sync(cgroup);
#pragma unroll
  for (int h = 0; h < NH; ++h)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int row = 8 * h + 2 * q + e;
      float mx = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) mx = max_nan(mx, red_m[w * R + row]);
      const float f = m[h][e] == -INFINITY ? 0.0f : __expf(m[h][e] - mx);
      float* dst = red_acc + (cwarp * R + row) * D + r;
#pragma unroll
      for (int t = 0; t < Tr::kDTiles; ++t) {
        dst[16 * t] = o[h][t][e] * f;
        if (16 * t + 8 < D) dst[16 * t + 8] = o[h][t][2 + e] * f;
      }
    }
  group_sync(cgroup);
  write_merged<T, R, D>(p, rw, red_acc, red_m, red_l, scales.v, tid - cgroup * kBulkConsumers * 32);
#else
  __trap();  // the registry launches this kernel on sm_90+ only
#endif
}

}  // namespace pagedattn::detail::cuda
