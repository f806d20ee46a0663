// Tensor-core variant of the paged-attention kernel for float16/bfloat16 queries (any cache
// dtype) and head sizes up to 128.
//
// Same work split as attention_kernel.cuh (one CTA per sequence, kv head, up to 8 query
// heads of its group, split; four warps on 32-token tiles; online softmax; fixed-order warp
// merge), but both products run on mma.sync m16n8k16 with float32 accumulation, computed
// transposed so the 8 query heads are the narrow n dimension:
//   S^T[16 tokens x 8 heads]  = K[16 tokens x d] . Q^T[d x 8 heads]
//   O^T[16 dims x 8 heads]   += V^T[16 dims x 16 tokens] . P^T[16 tokens x 8 heads]
// The reduction index of each product may be permuted freely as long as both operands use
// the same permutation; it is chosen so every fragment register holds a whole 16-byte
// vector of the cache layouts ([.., head_size/x, block_size, x] keys, [.., head_size,
// block_size] values), unchanged. K and V go through a per-warp cp.async ring in shared
// memory (three half-tile slots, issued three half-tiles ahead), so the loads of the next
// tiles are in flight while one is computed:
//   keys:   lane (r = lane/4, q = lane%4) reads chunk 4*kb + q (E consecutive dims) of
//           tokens r and r+8; mma k-step s of that 4E-dim block uses elements 4s..4s+3.
//           They are copied lane-per-token (whole 512-byte runs of a page; copying each
//           lane's own fragments, 128-byte runs, measured 3-9 points slower).
//   values: lane copies and reads 8 consecutive tokens 8q..8q+7 of dims r and r+8; k-step
//           s (16 tokens) uses tokens 8q+4s..8q+4s+3.
// fp8 caches are converted to the mma's 16-bit type after the load (hardware pair
// conversions; exact). Probabilities go through shared memory once per tile to change
// from the S^T accumulator layout to the P^T operand layout.
#pragma once

#include <cstdint>

#include "cuda/attention_kernel.cuh"

namespace pagedattn::detail::cuda {


template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

/// Two floats packed as the mma's 16-bit pair type.
template <typename T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<std::uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<std::uint32_t*>(&h);
  }
}

/// Converts the 16-byte-vector words of a cache load into pairs of T (16-bit) words.
/// 16-bit caches are already in T; fp8 goes fp8x2 -> f16x2 (fp8x2_to_f16x2, exact), and for
/// bfloat16 on to bf16x2 (exact: every fp8 value is a bf16 value).
template <typename T, CacheKind C>
__device__ __forceinline__ std::uint32_t fp8x2_to_pair(std::uint32_t two_bytes) {
  const std::uint32_t h = fp8x2_to_f16x2<C>(two_bytes);
  if constexpr (std::is_same_v<T, __half>) {
    return h;
  } else {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
    return pack2<T>(f.x, f.y);
  }
}

template <typename T, CacheKind C, int D>
struct MmaTraits {
  using CacheT = typename CacheElem<T, C>::type;
  static constexpr int kE = 16 / static_cast<int>(sizeof(CacheT));  ///< elements per 16-byte load (8 or 16)
  static constexpr int kChunks = (D + kE - 1) / kE;                  ///< 16-byte key chunks per token
  static constexpr int kKBlocks = (kChunks + 3) / 4;                 ///< blocks of 4 chunks (4E dims)
  static constexpr int kKSteps = kE / 4;                             ///< mma k-steps per key block
  static constexpr int kDTiles = (D + 15) / 16;                      ///< 16-dim tiles of the output
  static constexpr int kVBytes = 8 * static_cast<int>(sizeof(CacheT));  ///< one value load: 8 tokens
  // cp.async ring (three half-tile slots per warp, as in attention_kernel.cuh): a lane's
  // key entries (16 bytes: token half mt, key block kb, token row hf) and value entries
  // (kVBytes: dim tile t, row half hf), each at [entry][lane].
  static constexpr int kKEntries = 2 * kKBlocks * 2;
  static constexpr int kVEntries = 2 * kDTiles;
  static constexpr int kSlots = 3;
  static constexpr int kSlotBytes = 32 * (kKEntries * 16 > kVEntries * kVBytes ? kKEntries * 16 : kVEntries * kVBytes);
  // shared memory: queries (main loop), probabilities per warp, the ring; merge buffers alias
  static constexpr int kQFloats = kMmaHeads * D;
  static constexpr int kPHalves = kWarps * kMmaHeads * kTile;
  static constexpr int kRingOffset = 4 * kQFloats + 2 * kPHalves;
  static constexpr int kMainBytes = kRingOffset + kSlots * kWarps * kSlotBytes;
  static constexpr int kMergeBytes = 4 * (kWarps * kMmaHeads * D + 2 * kWarps * kMmaHeads);
  static constexpr int kSmemBytes = kMainBytes > kMergeBytes ? kMainBytes : kMergeBytes;
  static_assert(D <= 128, "the tensor-core path keeps the output in registers: head_size <= 128");
};

template <typename T, CacheKind C, int D, bool kVar>
__global__ void __launch_bounds__(kThreads)
    paged_attention_mma_kernel(const __grid_constant__ AttentionKernelParams p) {
  pdl_wait();  // the previous kernel's writes (queries, tables, partials) are visible
  using Tr = MmaTraits<T, C, D>;
  using CacheT = typename Tr::CacheT;
  constexpr int kE = Tr::kE;
  constexpr int H = kMmaHeads;

  const CtaWork work = cta_work<H>(p);
  if (work.empty) return;
  const int seq = work.seq, kv_head = work.kv_head, nh = work.nr;
  const int start = work.start, end = work.end;
  const CtaScales scales = cta_scales(p, kv_head);

  extern __shared__ float4 smem4[];
  float* q_s = reinterpret_cast<float*>(smem4);  // [H][D] unscaled queries (exact in T)
  T* p_s = reinterpret_cast<T*>(q_s + Tr::kQFloats);  // [kWarps][H][kTile] probabilities

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int r = lane / 4;  // fragment row group
  const int q = lane % 4;  // fragment column pair

  const T* qg = static_cast<const T*>(p.query);
  for (int i = tid; i < H * D; i += kThreads) {
    const int h = i / D;
    q_s[i] = h < nh ? to_float(qg[static_cast<std::int64_t>(work.qrow(h)) * p.q_stride +
                                   static_cast<std::int64_t>(work.head(h)) * D + i % D])
                    : 0.0f;
  }
  __syncthreads();

  // Q^T operand (B of the first product): head r, dims E*q + 4s + {0,1} and {2,3} of each
  // key block, in the same permuted order the key loads produce.
  std::uint32_t qb[Tr::kKBlocks][Tr::kKSteps][2];
#pragma unroll
  for (int kb = 0; kb < Tr::kKBlocks; ++kb)
#pragma unroll
    for (int s = 0; s < Tr::kKSteps; ++s)
#pragma unroll
      for (int w = 0; w < 2; ++w) {
        const int d = kb * 4 * kE + kE * q + 4 * s + 2 * w;
        const float lo = d < D ? q_s[r * D + d] : 0.0f;
        const float hi = d + 1 < D ? q_s[r * D + d + 1] : 0.0f;
        qb[kb][s][w] = pack2<T>(lo, hi);
      }
  // This thread's two rows in the S^T / O^T accumulators: 2q and 2q+1.
  float slope[2];
  int row_pos[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    slope[e] = (p.alibi_slopes != nullptr && 2 * q + e < nh) ? p.alibi_slopes[work.head(2 * q + e)] : 0.0f;
    row_pos[e] = kVar ? work.pos(2 * q + e) : work.seq_len - 1;  // plain instances: one token at the end
  }
  // attended tokens [lo, hi] of every row (the lane-per-token masks need all of them)
  int lo[H], hi[H];
  row_bounds<H>(p, work, lo, hi);

  const std::int32_t* bt = p.block_tables + static_cast<std::int64_t>(seq) * p.bt_stride;
  const CacheT* kbase = static_cast<const CacheT*>(p.key_cache) + static_cast<std::int64_t>(kv_head) * p.k_head_stride;
  const CacheT* vbase = static_cast<const CacheT*>(p.value_cache) + static_cast<std::int64_t>(kv_head) * p.v_head_stride;
  const int bs = p.block_size;

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[Tr::kDTiles][4];
#pragma unroll
  for (int t = 0; t < Tr::kDTiles; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  T* my_p = p_s + warp * H * kTile;

  // K and V stream through a per-warp ring of three shared-memory slots filled by cp.async,
  // issued three half-tiles ahead of use (keys of tile i, its values, keys of tile i+1, ...).
  // Values are copied by the lane whose fragments they are (it waits only for its own
  // copies); keys are copied lane-per-token for whole 512-byte runs, into a bank-swizzled
  // slot, and read after a __syncwarp.
  static_assert(Tr::kSlots == 3, "the issue order below assumes three slots");
  unsigned char* ring = reinterpret_cast<unsigned char*>(smem4) + Tr::kRingOffset + warp * Tr::kSlots * Tr::kSlotBytes;
  auto slot = [&](int h) { return ring + (h % Tr::kSlots) * Tr::kSlotBytes; };
  constexpr int kStride = kWarps * kTile;
  const int first = start + warp * kTile;
  const int ntiles = first < end ? (end - first + kStride - 1) / kStride : 0;
  struct TileState {
    int tpage;       // cache block of token `lane` of the tile (keys are copied lane-per-token)
    unsigned tmask;  // rows attending it (0 past the split)
    // the fragment lanes' view, derived by shuffles once the block-table read has landed:
    unsigned bits;  // tokens mt*16 + r + 8*hf (k = 2*mt + hf), 3 bits each: heads 2q, 2q+1 (bits
                    // 0, 1) and any active head (bit 2); 0 past the split
    int vpage;      // cache block of tokens 8q..8q+7; -1: past the split or no row attends any of them
  };
  auto tile_state = [&](int i) {  // one block-table read per lane
    TileState st{0, 0u, 0u, -1};
    const int t = first + i * kStride + lane;
    if (t < end) {
      const int lb = t >> p.block_shift;
      st.tpage = bt[lb];
      st.tmask = rows_attending<H, kVar>(p, work, lo, hi, t, lb);
    }
    return st;
  };
  // Lane-per-token state -> the fragment lanes' view (after the block-table read has landed).
  auto derive = [&](TileState& st) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const unsigned m = __shfl_sync(0xffffffffu, st.tmask, (k >> 1) * 16 + r + 8 * (k & 1));
      st.bits |= (((m >> (2 * q)) & 3u) | (m != 0u ? 4u : 0u)) << (3 * k);
    }
    const int vp = __shfl_sync(0xffffffffu, st.tpage, 8 * q);  // tokens 8q..8q+7 share one page
    if constexpr (kVar) {  // per-token masks: any of the 8 tokens attended by any row
      const unsigned any = __ballot_sync(0xffffffffu, st.tmask != 0u);
      st.vpage = ((any >> (8 * q)) & 0xffu) != 0u ? vp : -1;
    } else {  // masks are per block: token 8q speaks for the run
      const unsigned vm = __shfl_sync(0xffffffffu, st.tmask, 8 * q);
      st.vpage = vm != 0u ? vp : -1;
    }
  };
  // key slot entry of (chunk, token of the tile); swizzled when copied lane-per-token so the
  // fragment reads (8 lanes: 2 tokens x 4 chunks) hit 8 different banks
  auto key_entry = [&](int chunk, int tok) { return chunk * 32 + (tok ^ ((chunk & 3) << 1)); };
  // keys: lane = token, 16 bytes per chunk, so one copy instruction reads 512 contiguous bytes
  // (two 256-byte runs with 16-token blocks)
  auto issue_keys = [&](int i, const TileState& st) {
    uint4* dst = reinterpret_cast<uint4*>(slot(2 * i));
    if (st.tmask != 0u) {
      const int t = first + i * kStride + lane;
      const CacheT* kp = kbase + static_cast<std::int64_t>(st.tpage) * p.k_block_stride + (t & (bs - 1)) * kE;
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c)
        cp_async<16>(dst + key_entry(c, lane), kp + static_cast<std::int64_t>(c) * bs * kE, true);
    }
    cp_async_commit();
  };
  auto issue_values = [&](int i, const TileState& st) {
    unsigned char* dst = slot(2 * i + 1);
    if (st.vpage >= 0) {
      const int vt = first + i * kStride + 8 * q;
      const CacheT* vp = vbase + static_cast<std::int64_t>(st.vpage) * p.v_block_stride + (vt & (bs - 1));
#pragma unroll
      for (int t = 0; t < Tr::kDTiles; ++t)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int d = 16 * t + r + 8 * hf;
          if (d < D)
            cp_async<Tr::kVBytes>(dst + ((2 * t + hf) * 32 + lane) * Tr::kVBytes,
                                                     vp + static_cast<std::int64_t>(d) * bs, true);
        }
    }
    cp_async_commit();
  };

  TileState st0 = tile_state(0), st1 = tile_state(1);
  derive(st0);
  derive(st1);
  issue_keys(0, st0);
  issue_values(0, st0);
  issue_keys(1, st1);
  for (int i = 0; i < ntiles; ++i) {
    const TileState st2 = tile_state(i + 2);  // block table read two tiles ahead of its use (derived at the end)
    const int t0 = first + i * kStride;
    cp_async_wait<Tr::kSlots - 1>();  // keys of tile i
    __syncwarp();  // keys were copied by other lanes
    // ---- S^T = K . Q^T
    const uint4* ks = reinterpret_cast<const uint4*>(slot(2 * i));
    float sacc[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      sacc[mt][0] = sacc[mt][1] = sacc[mt][2] = sacc[mt][3] = 0.0f;
      std::uint32_t raw[Tr::kKBlocks][2][4];
#pragma unroll
      for (int kb = 0; kb < Tr::kKBlocks; ++kb)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int chunk = kb * 4 + q;
          raw[kb][hf][0] = raw[kb][hf][1] = raw[kb][hf][2] = raw[kb][hf][3] = 0u;
          // chunks not copied stay zero: padding dims meet zero queries, and a stale NaN would not
          if (chunk < Tr::kChunks && ((st0.bits >> (3 * (2 * mt + hf) + 2)) & 1u)) {
            const uint4 w = ks[key_entry(chunk, mt * 16 + r + 8 * hf)];
            raw[kb][hf][0] = w.x;
            raw[kb][hf][1] = w.y;
            raw[kb][hf][2] = w.z;
            raw[kb][hf][3] = w.w;
            if ((chunk + 1) * kE > D) {  // padding of a partial last chunk (fp8, head 120): may hold NaN
#pragma unroll
              for (int w2 = 0; w2 < 4; ++w2)
                if (chunk * kE + w2 * (kE / 4) >= D) raw[kb][hf][w2] = 0u;
            }
          }
        }
#pragma unroll
      for (int kb = 0; kb < Tr::kKBlocks; ++kb)
#pragma unroll
        for (int s = 0; s < Tr::kKSteps; ++s) {
          std::uint32_t a[4];
          // a0/a2: token r, elements 4s..4s+1 / 4s+2..4s+3; a1/a3: token r+8
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            if constexpr (C == CacheKind::kSame) {
              a[hf] = raw[kb][hf][2 * s];
              a[2 + hf] = raw[kb][hf][2 * s + 1];
            } else {
              const std::uint32_t word = raw[kb][hf][s];  // bytes 4s..4s+3
              a[hf] = fp8x2_to_pair<T, C>(word & 0xffffu);
              a[2 + hf] = fp8x2_to_pair<T, C>(word >> 16);
            }
          }
          mma_16816<T>(sacc[mt], a, qb[kb][s][0], qb[kb][s][1]);
        }
    }
    // ---- online softmax for heads 2q, 2q+1 over this tile's 32 tokens
    float alpha[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float sv[4];
      float mx = -INFINITY;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int t = t0 + mt * 16 + r + 8 * hf;
          float v = -INFINITY;
          if ((st0.bits >> (3 * (2 * mt + hf) + e)) & 1u)
            v = row_logit<kVar>(p, sacc[mt][2 * hf + e] * scales.qk, slope[e], t, row_pos[e]);
          sv[mt * 2 + hf] = v;
          mx = max_nan(mx, v);
        }
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = max_nan(m[e], mx);
      alpha[e] = m_new == -INFINITY ? 1.0f : __expf(m[e] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int i2 = 0; i2 < 4; ++i2) {
        const float pv = m_new == -INFINITY ? 0.0f : __expf(sv[i2] - m_new);
        sum += pv;
        const int mt = i2 / 2, hf = i2 % 2;
        my_p[(2 * q + e) * kTile + mt * 16 + r + 8 * hf] = from_float<T>(pv);
      }
      m[e] = m_new;
      l[e] = l[e] * alpha[e] + sum;
    }
    __syncwarp();
#pragma unroll
    for (int t = 0; t < Tr::kDTiles; ++t) {
      o[t][0] *= alpha[0];
      o[t][1] *= alpha[1];
      o[t][2] *= alpha[0];
      o[t][3] *= alpha[1];
    }
    issue_values(i + 1, st1);
    cp_async_wait<Tr::kSlots - 1>();  // values of tile i
    // ---- O^T += V^T . P^T: values of tokens 8q..8q+7 for dims 16t + r and 16t + r + 8
    const bool v_needed = st0.vpage >= 0;  // masked pages are not copied (may hold anything)
    const int vvalid = end - (t0 + 8 * q);  // tokens of the 8 inside the split
    const unsigned char* vs = slot(2 * i + 1);
    // P^T operand: head r, tokens 8q + 4s + {0,1} / {2,3}
    std::uint32_t pb[2][2];
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const std::uint32_t* row = reinterpret_cast<const std::uint32_t*>(my_p + r * kTile + 8 * q + 4 * s);
      pb[s][0] = row[0];
      pb[s][1] = row[1];
    }
#pragma unroll
    for (int t = 0; t < Tr::kDTiles; ++t) {
      std::uint32_t raw[2][4];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int d = 16 * t + r + 8 * hf;
        raw[hf][0] = raw[hf][1] = raw[hf][2] = raw[hf][3] = 0u;
        if (v_needed && d < D) {
          const unsigned char* e = vs + ((2 * t + hf) * 32 + lane) * Tr::kVBytes;
          if constexpr (Tr::kVBytes == 16) {
            const uint4 w = *reinterpret_cast<const uint4*>(e);
            raw[hf][0] = w.x;
            raw[hf][1] = w.y;
            raw[hf][2] = w.z;
            raw[hf][3] = w.w;
          } else {
            const uint2 w = *reinterpret_cast<const uint2*>(e);
            raw[hf][0] = w.x;
            raw[hf][1] = w.y;
          }
          if (vvalid < 8) {  // tokens past the end: unused slots may hold NaN
            constexpr int kPerWord = 4 / static_cast<int>(sizeof(CacheT));
#pragma unroll
            for (int w = 0; w < Tr::kVBytes / 4; ++w)
#pragma unroll
              for (int e2 = 0; e2 < kPerWord; ++e2)
                if (w * kPerWord + e2 >= vvalid) raw[hf][w] &= ~(((1u << (8 * sizeof(CacheT))) - 1u) << (8 * sizeof(CacheT) * e2));
          }
        }
      }
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        std::uint32_t a[4];
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          if constexpr (C == CacheKind::kSame) {
            a[hf] = raw[hf][2 * s];
            a[2 + hf] = raw[hf][2 * s + 1];
          } else {
            const std::uint32_t word = raw[hf][s];  // tokens 4s..4s+3 of the 8
            a[hf] = fp8x2_to_pair<T, C>(word & 0xffffu);
            a[2 + hf] = fp8x2_to_pair<T, C>(word >> 16);
          }
        }
        mma_16816<T>(o[t], a, pb[s][0], pb[s][1]);
      }
    }
    __syncwarp();  // my_p is rewritten by the next tile
    TileState next = st2;
    issue_keys(i + 2, next);
    derive(next);
    st0 = st1;
    st1 = next;
  }
  cp_async_wait<0>();

  // ---- merge the warps in a fixed order (deterministic)
#pragma unroll
  for (int e = 0; e < 2; ++e)
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) l[e] += __shfl_xor_sync(0xffffffffu, l[e], off);
  __syncthreads();
  float* red_acc = reinterpret_cast<float*>(smem4);  // [kWarps][H][D]
  float* red_m = red_acc + kWarps * H * D;           // [kWarps][H]
  float* red_l = red_m + kWarps * H;
  if (r == 0) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      red_m[warp * H + 2 * q + e] = m[e];
      red_l[warp * H + 2 * q + e] = l[e];
    }
  }
  __syncthreads();
  float f[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = max_nan(mx, red_m[w * H + 2 * q + e]);
    f[e] = m[e] == -INFINITY ? 0.0f : __expf(m[e] - mx);
  }
#pragma unroll
  for (int t = 0; t < Tr::kDTiles; ++t)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int d = 16 * t + r + 8 * hf;
      if (d < D) {
        red_acc[(warp * H + 2 * q) * D + d] = o[t][2 * hf] * f[0];
        red_acc[(warp * H + 2 * q + 1) * D + d] = o[t][2 * hf + 1] * f[1];
      }
    }
  __syncthreads();

  write_merged<T, H, D>(p, work, red_acc, red_m, red_l, scales.v);
}

}  // namespace pagedattn::detail::cuda
