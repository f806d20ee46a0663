// The CPU attention backend (SPEC §3, §3b): V1 and V2 with the same partial-result contract
// as the GPU kernels; V1 also carries every §3b variant (the auto entry point runs it).
//
// This file is the driver: it cuts a call into work items, runs them on OpenMP threads
// through the SIMD kernel (attention_kernel.h / .cpp: one tile of query rows of a (sequence,
// kv head) over a token range, one page at a time), and writes what the rows' softmax states
// give (out, lse, V2's partials).
//
// Work items (V1 / auto): (sequence, kv head, tile of query tokens, KV split). A tile holds
// every query row of its kv head for up to kTileRows rows (the group's heads times the query
// tokens), so each cached element is decoded once per tile. A sequence's attended span is
// cut into KV splits when the call has too few (sequence, kv head) items to keep the threads
// busy (a batch of one, say): the number of splits depends on the shape only — never on the
// thread count — and the splits' states are merged in a fixed order, so the output is the same
// bits at any thread count. V2: one item per (sequence, kv head, 512-token partition).
//
// Scales: the query is multiplied by the call's scale and by the key cache's decode factor
// (fp8: k_scale, times 2^8 for e4m3, whose bytes the kernel decodes as value / 2^8) before
// the kernel sees it; the value decode factor multiplies the output in the epilogue.
// NaN (SPEC §3): a NaN logit makes a row's m NaN, and the epilogue writes NaN for it; a NaN
// value reaches the rows whose weights meet it through the arithmetic.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <vector>

#include "core/attention_rules.h"
#include "core/backend.h"
#include "core/check.h"
#include "cpu/attention_kernel.h"
#include "cpu/elem.h"

namespace pagedattn::detail::cpu {
namespace {

/// Rows of one tile at most: a sequence with more query tokens runs them in tiles of
/// kTileRows / group_size tokens (at least one).
constexpr int kTileRows = 128;
/// KV splits: a call with fewer (sequence, kv head, tile) items than kSplitTarget cuts each
/// span into up to kSplitTarget / items splits of at least kSplitMinTokens tokens, at
/// multiples of kSplitAlign tokens.
constexpr int kSplitTarget = 16;
constexpr int kSplitMinTokens = 2048;
constexpr int kSplitAlign = 256;

/// Cache bytes (K and V) prefetched ahead of the page being computed, by default: enough to
/// cover DRAM latency at this machine's bandwidth per core (docs/performance.md has the
/// measured distances). PAGEDATTN_CPU_PREFETCH=N sets N blocks instead (for measurements).
constexpr int kPrefetchBytes = 16 << 10;

int prefetch_blocks(const AttentionShape& s) {
  if (const char* e = std::getenv("PAGEDATTN_CPU_PREFETCH"); e != nullptr && std::atoi(e) > 0) return std::atoi(e);
  const int elem = static_cast<int>(dtype_size(s.cache_storage));
  const int page = (s.head_size + s.x - 1) / s.x * s.x * s.block_size * elem + s.head_size * s.block_size * elem;
  return std::max(1, (kPrefetchBytes + page - 1) / page);
}

/// Decode factor of a cache for kv head g: what the stored value times it is (fp8 only).
float decode_factor(const PagedAttentionParams& p, bool key, int g) {
  if (p.kv_cache_dtype == CacheDType::kAuto) return 1.0f;
  float s = key ? p.k_scale : p.v_scale;
  const TensorView& per_head = key ? p.k_scales : p.v_scales;
  if (per_head.defined()) s = static_cast<const float*>(per_head.data)[g];
  return p.kv_cache_dtype == CacheDType::kFp8E5M2 ? s : s * 256.0f;
}

CacheKind cache_kind(const PagedAttentionParams& p, const AttentionShape& s) {
  switch (p.kv_cache_dtype) {
    case CacheDType::kFp8E4M3: return CacheKind::kFp8E4M3;
    case CacheDType::kFp8E5M2: return CacheKind::kFp8E5M2;
    default: break;
  }
  switch (s.dtype) {
    case DType::kFloat32: return CacheKind::kF32;
    case DType::kFloat16: return CacheKind::kF16;
    case DType::kBFloat16: return CacheKind::kBF16;
    default: fail(ErrorCode::kUnsupported, "cpu attention: unsupported query dtype ", dtype_name(s.dtype));
  }
}

KernelCall make_kernel_call(const PagedAttentionParams& p, const AttentionShape& s) {
  if (s.block_size != 8 && s.block_size != 16 && s.block_size != 32)
    fail(ErrorCode::kUnsupported, "cpu attention: unsupported block_size ", s.block_size);
  KernelCall kc;
  kc.key_cache = p.key_cache.data;
  kc.value_cache = p.value_cache.data;
  kc.k_block_stride = s.kv_block_stride;
  kc.k_head_stride = s.k_head_stride;
  kc.v_block_stride = s.v_block_stride;
  kc.v_head_stride = s.v_head_stride;
  kc.block_tables = static_cast<const std::int32_t*>(p.block_tables.data);
  kc.bt_stride = s.bt_stride;
  kc.head_size = s.head_size;
  kc.block_size = s.block_size;
  kc.group = s.group_size();
  kc.cache = cache_kind(p, s);
  kc.rule = make_logits_rule(p, s);
  kc.alibi = p.alibi_slopes.defined() ? static_cast<const float*>(p.alibi_slopes.data) : nullptr;
  kc.prefetch_blocks = prefetch_blocks(s);
  kc.target = chosen_kernel_target();
  return kc;
}

/// Softmax state of a tile's rows: m, exact max, l, o [rows][D].
struct States {
  std::vector<float> m, m_max, l, o;
  void resize(int rows, int D) {
    m.resize(rows);
    m_max.resize(rows);
    l.resize(rows);
    o.resize(std::size_t(rows) * D);
  }
  void point(TileJob& job, std::size_t row0, int D) {
    job.m = &m[row0];
    job.m_max = &m_max[row0];
    job.l = &l[row0];
    job.o = &o[row0 * D];
  }
};

/// The tile's queries as floats: q[r][d] = query[row of r][head of r][d] * qscale.
template <class T>
void load_queries(const PagedAttentionParams& p, const AttentionShape& s, std::int64_t qrow, int g, int ntok,
                  float qscale, std::vector<float>& q) {
  const int G = s.group_size(), D = s.head_size;
  q.resize(std::size_t(ntok) * G * D);
  const auto* query = static_cast<const typename T::Storage*>(p.query.data);
  for (int k = 0; k < ntok; ++k) {
    const auto* src = query + (qrow + k) * s.q_stride + std::int64_t(g) * G * D;
    float* dst = &q[std::size_t(k) * G * D];
    for (int i = 0; i < G * D; ++i) dst[i] = T::load(src[i]) * qscale;
  }
}

/// Writes out (and lse) of query row `qrow`, head `head` from a state: out = o * vfac / l,
/// zeros when the row attended nothing (l == 0), NaN when a NaN logit entered (m is NaN).
template <class T>
void write_row(const PagedAttentionParams& p, const AttentionShape& s, std::int64_t qrow, int head, float m, float l,
               const float* o, float vfac) {
  const int D = s.head_size;
  auto* out = static_cast<typename T::Storage*>(p.out.data) + (qrow * s.num_heads + head) * D;
  float* lse = p.lse.defined() ? static_cast<float*>(p.lse.data) + qrow * s.num_heads + head : nullptr;
  if (std::isnan(m)) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int d = 0; d < D; ++d) out[d] = T::store(nan);
    if (lse != nullptr) *lse = nan;
    return;
  }
  if (l == 0.0f) {
    for (int d = 0; d < D; ++d) out[d] = T::store(0.0f);
  } else {
    const float f = vfac / l;
    for (int d = 0; d < D; ++d) out[d] = T::store(o[d] * f);
  }
  if (lse != nullptr) *lse = lse_of(m, l);
}

/// One V1 work item.
struct Item {
  int seq, g;
  int j0, ntok;  ///< the tile's query tokens [j0, j0 + ntok) of the sequence
  int lo, hi;    ///< cache tokens of this split
  int split, nsplit;
  std::int64_t state;  ///< first row of its state in the split states (nsplit > 1), else -1
};

/// Splits of a span of n tokens when the call has `items` (sequence, kv head, tile) items.
int num_splits(int n, std::int64_t items) {
  if (items >= kSplitTarget) return 1;
  const int want = static_cast<int>((kSplitTarget + items - 1) / items);
  return std::max(1, std::min(want, n / kSplitMinTokens));
}

template <class T>
void v1_impl(const PagedAttentionParams& p, const AttentionShape& s, const KernelCall& kc) {
  const int G = s.group_size(), D = s.head_size, BS = s.block_size;
  const auto* seq_lens = static_cast<const std::int32_t*>(p.seq_lens.data);
  const auto* qsl = s.multi_token ? static_cast<const std::int32_t*>(p.query_start_loc.data) : nullptr;
  const int tile_tokens = std::max(1, kTileRows / G);

  // Items: tiles first, then each tile's splits.
  struct TileSpan {
    int seq, g, j0, ntok;
    Span span;
  };
  std::vector<TileSpan> tiles;
  for (int seq = 0; seq < s.num_seqs; ++seq) {
    const QueryRows qr = query_rows(qsl, seq);
    const int len = seq_lens[seq];
    for (int g = 0; g < s.num_kv_heads; ++g)
      for (int j0 = 0; j0 < qr.count; j0 += tile_tokens) {
        const int ntok = std::min(tile_tokens, qr.count - j0);
        const int pos0 = len - qr.count + j0;
        // tokens the tile's rows attend: its rows as the last ntok of pos0 + ntok tokens
        tiles.push_back({seq, g, j0, ntok, attended_span(kc.rule, pos0 + ntok, ntok, BS)});
      }
  }
  std::vector<Item> items;
  items.reserve(tiles.size());
  std::int64_t state_rows = 0;
  for (const TileSpan& t : tiles) {
    const int n = std::max(0, t.span.hi - t.span.lo);
    const int ns = n == 0 ? 1 : num_splits(n, static_cast<std::int64_t>(tiles.size()));
    const int chunk = (n + ns - 1) / ns;
    const int step = (chunk + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
    const int nsplit = ns == 1 ? 1 : (n + step - 1) / step;
    for (int k = 0; k < nsplit; ++k) {
      const int lo = t.span.lo + k * step, hi = nsplit == 1 ? t.span.hi : std::min(t.span.hi, lo + step);
      items.push_back({t.seq, t.g, t.j0, t.ntok, lo, hi, k, nsplit, nsplit > 1 ? state_rows : -1});
      if (nsplit > 1) state_rows += std::int64_t(t.ntok) * G;
    }
  }
  States split_states;
  split_states.resize(static_cast<int>(state_rows), D);

  const std::int64_t nitems = static_cast<std::int64_t>(items.size());
#pragma omp parallel
  {
    std::vector<float> q;
    States own;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t it = 0; it < nitems; ++it) {
      const Item& w = items[it];
      const QueryRows qr = query_rows(qsl, w.seq);
      const int len = seq_lens[w.seq];
      const std::int64_t qrow = std::int64_t(qr.first) + w.j0;
      const int rows = w.ntok * G;
      const float vfac = decode_factor(p, false, w.g);
      TileJob job;
      job.seq = w.seq;
      job.kv_head = w.g;
      job.ntok = w.ntok;
      job.pos0 = len - qr.count + w.j0;
      job.t_begin = w.lo;
      job.t_end = w.hi;
      if (w.nsplit > 1) {
        split_states.point(job, static_cast<std::size_t>(w.state), D);
      } else {
        own.resize(rows, D);
        own.point(job, 0, D);
      }
      if (w.hi > w.lo) {
        load_queries<T>(p, s, qrow, w.g, w.ntok, p.scale * decode_factor(p, true, w.g), q);
        job.q = q.data();
        attend_tile(kc, job);
      } else {
        for (int r = 0; r < rows; ++r) {
          job.m[r] = job.m_max[r] = neg_inf();
          job.l[r] = 0.0f;
        }
      }
      if (w.nsplit == 1)
        for (int r = 0; r < rows; ++r)
          write_row<T>(p, s, qrow + r / G, w.g * G + r % G, job.m[r], job.l[r], job.o + std::size_t(r) * D, vfac);
    }

    // Merge the splits of each split tile, in split order: M = max m, weights exp(m - M).
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t it = 0; it < nitems; ++it) {
      const Item& w = items[it];
      if (w.nsplit == 1 || w.split != 0) continue;
      const QueryRows qr = query_rows(qsl, w.seq);
      const std::int64_t qrow = std::int64_t(qr.first) + w.j0;
      const int rows = w.ntok * G;
      const float vfac = decode_factor(p, false, w.g);
      std::vector<float> o(D);
      for (int r = 0; r < rows; ++r) {
        float M = neg_inf();
        for (int k = 0; k < w.nsplit; ++k) M = max_nan(M, split_states.m[items[it + k].state + r]);
        float l = 0.0f;
        std::fill(o.begin(), o.end(), 0.0f);
        for (int k = 0; k < w.nsplit; ++k) {
          const std::int64_t sr = items[it + k].state + r;
          if (split_states.l[sr] == 0.0f) continue;  // an empty split is not multiplied in
          const float a = rescale(split_states.m[sr], M);
          l += a * split_states.l[sr];
          const float* os = &split_states.o[std::size_t(sr) * D];
          for (int d = 0; d < D; ++d) o[d] += a * os[d];
        }
        write_row<T>(p, s, qrow + r / G, w.g * G + r % G, M, l, o.data(), vfac);
      }
    }
  }
}

template <class T>
void v2_impl(const PagedAttentionParams& p, const AttentionShape& s, const KernelCall& kc, const V2Workspace& ws) {
  const int G = s.group_size();
  const int D = s.head_size;
  const auto* seq_lens = static_cast<const std::int32_t*>(p.seq_lens.data);
  const std::int64_t P = ws.exp_sums.shape[2];  // partition stride of the workspace
  const int parts = s.max_num_partitions;
  auto* exp_sums = static_cast<float*>(ws.exp_sums.data);
  auto* max_logits = static_cast<float*>(ws.max_logits.data);
  auto* tmp_out = static_cast<typename T::Storage*>(ws.tmp_out.data);
  auto* out = static_cast<typename T::Storage*>(p.out.data);

  // Step 1: partial results per (sequence, kv head, partition). V2 keeps vLLM's contract: one
  // query row per sequence, at position len - 1.
  const std::int64_t items = std::int64_t(s.num_seqs) * s.num_kv_heads * parts;
#pragma omp parallel
  {
    std::vector<float> q;
    States st;
    st.resize(G, D);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t it = 0; it < items; ++it) {
      const int part = static_cast<int>(it % parts);
      const int g = static_cast<int>((it / parts) % s.num_kv_heads);
      const int seq = static_cast<int>(it / (std::int64_t(parts) * s.num_kv_heads));
      const int len = seq_lens[seq];
      const int t_begin = part * kPartitionSize;
      if (t_begin >= len) continue;  // partitions past the end are skipped
      TileJob job;
      job.seq = seq;
      job.kv_head = g;
      job.ntok = 1;
      job.pos0 = len - 1;
      job.t_begin = t_begin;
      job.t_end = std::min(len, t_begin + kPartitionSize);
      load_queries<T>(p, s, seq, g, 1, p.scale * decode_factor(p, true, g), q);
      job.q = q.data();
      st.point(job, 0, D);
      attend_tile(kc, job);
      const float vfac = decode_factor(p, false, g);
      for (int j = 0; j < G; ++j) {
        const std::int64_t row = (std::int64_t(seq) * s.num_heads + g * G + j) * P + part;
        const float m = st.m[j], l = st.l[j], mx = st.m_max[j];
        auto* o = tmp_out + row * D;
        const float* acc = &st.o[std::size_t(j) * D];
        if (std::isnan(m)) {
          const float nan = std::numeric_limits<float>::quiet_NaN();
          max_logits[row] = exp_sums[row] = nan;
          for (int d = 0; d < D; ++d) o[d] = T::store(nan);
          continue;
        }
        // the state is relative to m (lazy rescaling); SPEC's partials are relative to the max
        max_logits[row] = mx;
        exp_sums[row] = l == 0.0f ? 0.0f : l * std::exp(m - mx);
        const float f = l == 0.0f ? 0.0f : vfac / l;
        for (int d = 0; d < D; ++d) o[d] = T::store(acc[d] * f);
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
      const int len = seq_lens[seq];
      auto* o = out + r * D;
      // step 1 wrote at most `parts` partitions: with unchecked data a seq_len beyond
      // max_seq_len must not index past the workspace (the CUDA reduce clamps the same way)
      const int np = std::min((len + kPartitionSize - 1) / kPartitionSize, parts);
      if (np == 1) {  // one partition: its normalised output is the answer
        const auto* src = tmp_out + r * P * D;
        std::copy(src, src + D, o);
        continue;
      }
      float M = neg_inf();
      for (int j = 0; j < np; ++j) M = max_nan(M, max_logits[r * P + j]);
      float wsum = 0.0f;
      for (int j = 0; j < np; ++j) {
        w[j] = merge_weight(max_logits[r * P + j], exp_sums[r * P + j], M);  // 0 for an empty partition
        wsum += w[j];
      }
      if (wsum == 0.0f) {  // empty sequence, or every token masked
        for (int d = 0; d < D; ++d) o[d] = T::store(0.0f);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int j = 0; j < np; ++j) {
        if (exp_sums[r * P + j] == 0.0f) continue;  // an empty partition is not multiplied in
        const auto* src = tmp_out + (r * P + j) * D;
        for (int d = 0; d < D; ++d) acc[d] += w[j] * T::load(src[d]);
      }
      const float inv = 1.0f / wsum;
      for (int d = 0; d < D; ++d) o[d] = T::store(acc[d] * inv);
    }
  }
}

}  // namespace

void attention_v1(const PagedAttentionParams& p, const AttentionShape& s) {
  const KernelCall kc = make_kernel_call(p, s);
  switch (s.dtype) {
    case DType::kFloat32: return v1_impl<F32>(p, s, kc);
    case DType::kFloat16: return v1_impl<F16>(p, s, kc);
    case DType::kBFloat16: return v1_impl<BF16>(p, s, kc);
    default: fail(ErrorCode::kUnsupported, "cpu attention: unsupported query dtype ", dtype_name(s.dtype));
  }
}

void attention_v2(const PagedAttentionParams& p, const AttentionShape& s, const V2Workspace& ws) {
  const KernelCall kc = make_kernel_call(p, s);
  switch (s.dtype) {
    case DType::kFloat32: return v2_impl<F32>(p, s, kc, ws);
    case DType::kFloat16: return v2_impl<F16>(p, s, kc, ws);
    case DType::kBFloat16: return v2_impl<BF16>(p, s, kc, ws);
    default: fail(ErrorCode::kUnsupported, "cpu attention: unsupported query dtype ", dtype_name(s.dtype));
  }
}

}  // namespace pagedattn::detail::cpu
