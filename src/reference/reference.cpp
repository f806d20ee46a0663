// float64 reference of SPEC §3. Straightforward loops over the definition; every tensor is
// read through its TensorView's strides so views and padded rows behave like the API.
#include "reference/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/check.h"
#include "core/numeric.h"
#include "pagedattn/fp8.h"

namespace pagedattn::ref {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

std::int32_t load_i32(const TensorView& t, std::int64_t offset) {
  return static_cast<const std::int32_t*>(t.data)[offset];
}

int seq_len_of(const PagedAttentionParams& p, int seq) { return load_i32(p.seq_lens, seq * p.seq_lens.strides[0]); }

/// Physical block holding token `t` of sequence `seq`.
std::int64_t physical_block(const PagedAttentionParams& p, int seq, std::int64_t t) {
  const std::int64_t b = t / p.block_size;
  return load_i32(p.block_tables, seq * p.block_tables.strides[0] + b * p.block_tables.strides[1]);
}

/// Reads one cache element at element offset `off`, dequantised (fp8: decode * scale).
double load_cache(const PagedAttentionParams& p, const TensorView& cache, std::int64_t off, float fp8_scale) {
  if (p.kv_cache_dtype == CacheDType::kAuto) return load_as_double(cache.data, cache.dtype, off);
  const std::uint8_t code = static_cast<const std::uint8_t*>(cache.data)[off];
  return static_cast<double>(fp8_to_float(code, p.kv_cache_dtype)) * static_cast<double>(fp8_scale);
}

/// Element d of key t: key_cache[pb, g, d / x, t % block_size, d % x].
double key_elem(const PagedAttentionParams& p, std::int64_t pb, int g, std::int64_t t, int d) {
  const TensorView& k = p.key_cache;
  const std::int64_t x = k.shape[4];
  const std::int64_t off = pb * k.strides[0] + g * k.strides[1] + (d / x) * k.strides[2] +
                           (t % p.block_size) * k.strides[3] + (d % x) * k.strides[4];
  return load_cache(p, k, off, p.k_scale);
}

/// Element d of value t: value_cache[pb, g, d, t % block_size].
double value_elem(const PagedAttentionParams& p, std::int64_t pb, int g, std::int64_t t, int d) {
  const TensorView& v = p.value_cache;
  const std::int64_t off = pb * v.strides[0] + g * v.strides[1] + d * v.strides[2] + (t % p.block_size) * v.strides[3];
  return load_cache(p, v, off, p.v_scale);
}

int kv_head_of(const PagedAttentionParams& p, int head) {
  const int num_heads = static_cast<int>(p.query.shape[1]);
  return head / (num_heads / p.num_kv_heads);
}

/// Softmax-weighted sum of values over tokens [begin, end) of (seq, head) given that
/// range's logits `s` (indexed from `begin`). Returns false when no token is attended.
/// On success m = max logit, l = sum exp(s - m), o = sum exp(s - m) v / l.
bool partial(const PagedAttentionParams& p, int seq, int head, std::int64_t begin, std::int64_t end,
             const std::vector<double>& s, double& m, double& l, double* o) {
  const int head_size = static_cast<int>(p.query.shape[2]);
  const int g = kv_head_of(p, head);
  m = kNegInf;
  for (std::int64_t t = begin; t < end; ++t) m = std::max(m, s[t]);
  l = 0.0;
  std::fill(o, o + head_size, 0.0);
  if (m == kNegInf) return false;
  for (std::int64_t t = begin; t < end; ++t) {
    if (s[t] == kNegInf) continue;  // masked: read nothing of it
    const double w = std::exp(s[t] - m);
    l += w;
    const std::int64_t pb = physical_block(p, seq, t);
    for (int d = 0; d < head_size; ++d) o[d] += w * value_elem(p, pb, g, t, d);
  }
  for (int d = 0; d < head_size; ++d) o[d] /= l;
  return true;
}

}  // namespace

double load_as_double(const void* base, DType t, std::int64_t i) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(base)[i];
    case DType::kFloat16: return detail::half_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case DType::kBFloat16: return detail::bf16_to_float(static_cast<const std::uint16_t*>(base)[i]);
    default: break;
  }
  detail::fail(ErrorCode::kInvalidArgument, "ref::load_as_double: dtype ", dtype_name(t),
               " is not a floating-point type; supported: float32, float16, bfloat16");
}

bool block_attended(const PagedAttentionParams& p, int seq_len, int head, int t0) {
  const BlockSparseParams& bs = p.blocksparse;
  if (!bs.enabled()) return true;
  const std::int64_t qb = (static_cast<std::int64_t>(seq_len) - 1) / bs.block_size;
  const std::int64_t kb = t0 / bs.block_size;
  if (kb > qb - bs.local_blocks) return true;  // local
  const std::int64_t num_heads = p.query.shape[1];
  const std::int64_t step = bs.head_sliding_step;
  const std::int64_t off = step >= 0 ? (p.tp_rank * num_heads + head) * step + 1
                                     : (p.tp_rank * std::int64_t(p.num_kv_heads) + kv_head_of(p, head)) * (-step) + 1;
  return (kb + off) % bs.vert_stride == 0;  // vertical
}

std::vector<double> logits(const PagedAttentionParams& p, int seq, int head) {
  const int len = seq_len_of(p, seq);
  const int head_size = static_cast<int>(p.query.shape[2]);
  const int g = kv_head_of(p, head);
  const std::int64_t q_off = seq * p.query.strides[0] + head * p.query.strides[1];
  std::vector<double> q(head_size);
  for (int d = 0; d < head_size; ++d) q[d] = load_as_double(p.query.data, p.query.dtype, q_off + d * p.query.strides[2]);
  const bool alibi = p.alibi_slopes.defined();
  const double slope =
      alibi ? load_as_double(p.alibi_slopes.data, DType::kFloat32, head * p.alibi_slopes.strides[0]) : 0.0;

  std::vector<double> s(std::max(len, 0), kNegInf);
  for (std::int64_t t = 0; t < len; ++t) {
    const std::int64_t t0 = t - t % p.block_size;  // first token of the cache block
    if (!block_attended(p, len, head, static_cast<int>(t0))) continue;
    const std::int64_t pb = physical_block(p, seq, t);
    double dot = 0.0;
    for (int d = 0; d < head_size; ++d) dot += q[d] * key_elem(p, pb, g, t, d);
    double v = static_cast<double>(p.scale) * dot;
    if (alibi) v += slope * static_cast<double>(t - len + 1);
    s[t] = v;
  }
  return s;
}

std::vector<double> attention(const PagedAttentionParams& p) {
  const int num_seqs = static_cast<int>(p.query.shape[0]);
  const int num_heads = static_cast<int>(p.query.shape[1]);
  const int head_size = static_cast<int>(p.query.shape[2]);
  std::vector<double> out(std::size_t(num_seqs) * num_heads * head_size, 0.0);
  for (int i = 0; i < num_seqs; ++i) {
    const int len = seq_len_of(p, i);
    for (int h = 0; h < num_heads; ++h) {
      const std::vector<double> s = logits(p, i, h);
      double m = 0.0, l = 0.0;
      partial(p, i, h, 0, std::max(len, 0), s, m, l, &out[(std::size_t(i) * num_heads + h) * head_size]);
    }
  }
  return out;
}

Partials attention_partitions(const PagedAttentionParams& p, int partition_size) {
  Partials r;
  r.num_seqs = static_cast<int>(p.query.shape[0]);
  r.num_heads = static_cast<int>(p.query.shape[1]);
  r.head_size = static_cast<int>(p.query.shape[2]);
  r.num_partitions = std::max(1, (p.max_seq_len + partition_size - 1) / partition_size);
  const std::size_t rows = std::size_t(r.num_seqs) * r.num_heads * r.num_partitions;
  r.max_logits.assign(rows, kNegInf);
  r.exp_sums.assign(rows, 0.0);
  r.out.assign(rows * r.head_size, 0.0);
  r.valid.assign(rows, 0);
  for (int i = 0; i < r.num_seqs; ++i) {
    const std::int64_t len = seq_len_of(p, i);
    for (int h = 0; h < r.num_heads; ++h) {
      const std::vector<double> s = logits(p, i, h);
      for (int j = 0; j < r.num_partitions; ++j) {
        const std::int64_t begin = std::int64_t(partition_size) * j;
        if (begin >= len) break;  // this and later partitions lie past the end: valid = 0
        const std::int64_t end = std::min<std::int64_t>(begin + partition_size, len);
        const std::size_t row = (std::size_t(i) * r.num_heads + h) * r.num_partitions + j;
        r.valid[row] = 1;
        partial(p, i, h, begin, end, s, r.max_logits[row], r.exp_sums[row], &r.out[row * r.head_size]);
      }
    }
  }
  return r;
}

std::vector<double> reduce_partitions(const Partials& parts, const std::int32_t* seq_lens, int partition_size) {
  const int D = parts.head_size;
  std::vector<double> out(std::size_t(parts.num_seqs) * parts.num_heads * D, 0.0);
  for (int i = 0; i < parts.num_seqs; ++i) {
    const std::int64_t len = seq_lens[i];
    // Partitions that start before the sequence's end; the rest are skipped.
    std::int64_t n = len <= 0 ? 0 : (len + partition_size - 1) / partition_size;
    n = std::min<std::int64_t>(n, parts.num_partitions);
    for (int h = 0; h < parts.num_heads; ++h) {
      const std::size_t base = (std::size_t(i) * parts.num_heads + h) * parts.num_partitions;
      double* o = &out[(std::size_t(i) * parts.num_heads + h) * D];
      if (n == 1) {  // SPEC: with one partition out = o_0 (exactly; zeros when nothing is attended)
        std::copy(&parts.out[base * D], &parts.out[base * D] + D, o);
        continue;
      }
      double M = kNegInf;
      for (std::int64_t j = 0; j < n; ++j) M = std::max(M, parts.max_logits[base + j]);
      if (M == kNegInf) continue;  // no partition attends anything: zeros
      double wsum = 0.0;
      for (std::int64_t j = 0; j < n; ++j) {
        if (parts.exp_sums[base + j] == 0.0) continue;  // fully masked partition (m_j = -inf)
        const double w = parts.exp_sums[base + j] * std::exp(parts.max_logits[base + j] - M);
        wsum += w;
        for (int d = 0; d < D; ++d) o[d] += w * parts.out[(base + j) * D + d];
      }
      for (int d = 0; d < D; ++d) o[d] /= wsum;
    }
  }
  return out;
}

}  // namespace pagedattn::ref
