// float64 reference of SPEC §3 and §3b. Straightforward loops over the definition; every
// tensor is read through its TensorView's strides so views and padded rows behave like the
// API. Nothing here is shared with the backends it judges.
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
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::int32_t load_i32(const TensorView& t, std::int64_t offset) {
  return static_cast<const std::int32_t*>(t.data)[offset];
}

int num_seqs_of(const PagedAttentionParams& p) { return static_cast<int>(p.seq_lens.shape[0]); }

int seq_len_of(const PagedAttentionParams& p, int seq) { return load_i32(p.seq_lens, seq * p.seq_lens.strides[0]); }

/// Physical block holding token `t` of sequence `seq`.
std::int64_t physical_block(const PagedAttentionParams& p, int seq, std::int64_t t) {
  const std::int64_t b = t / p.block_size;
  return load_i32(p.block_tables, seq * p.block_tables.strides[0] + b * p.block_tables.strides[1]);
}

/// The larger of a and b, NaN when either is NaN (std::max would drop a NaN in one position).
/// Ties keep `a`.
double nan_max(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return kNaN;
  return a < b ? b : a;
}

/// Dequantisation scale of kv head `g` for an fp8 cache: the per-head array when given, else
/// the scalar.
double fp8_scale_of(const TensorView& per_head, float scalar, int g) {
  if (per_head.defined()) return static_cast<const float*>(per_head.data)[g * per_head.strides[0]];
  return static_cast<double>(scalar);
}

/// Reads one cache element at element offset `off`, dequantised (fp8: decode * scale; an
/// "auto" cache holds the values themselves and no scale applies).
double load_cache(const PagedAttentionParams& p, const TensorView& cache, std::int64_t off, double fp8_scale) {
  if (p.kv_cache_dtype == CacheDType::kAuto) return load_as_double(cache.data, cache.dtype, off);
  const std::uint8_t code = static_cast<const std::uint8_t*>(cache.data)[off];
  return static_cast<double>(fp8_to_float(code, p.kv_cache_dtype)) * fp8_scale;
}

/// Element d of key t: key_cache[pb, g, d / x, t % block_size, d % x].
double key_elem(const PagedAttentionParams& p, std::int64_t pb, int g, std::int64_t t, int d) {
  const TensorView& k = p.key_cache;
  const std::int64_t x = k.shape[4];
  const std::int64_t off = pb * k.strides[0] + g * k.strides[1] + (d / x) * k.strides[2] +
                           (t % p.block_size) * k.strides[3] + (d % x) * k.strides[4];
  return load_cache(p, k, off, fp8_scale_of(p.k_scales, p.k_scale, g));
}

/// Element d of value t: value_cache[pb, g, d, t % block_size].
double value_elem(const PagedAttentionParams& p, std::int64_t pb, int g, std::int64_t t, int d) {
  const TensorView& v = p.value_cache;
  const std::int64_t off = pb * v.strides[0] + g * v.strides[1] + d * v.strides[2] + (t % p.block_size) * v.strides[3];
  return load_cache(p, v, off, fp8_scale_of(p.v_scales, p.v_scale, g));
}

int kv_head_of(const PagedAttentionParams& p, int head) {
  const int num_heads = static_cast<int>(p.query.shape[1]);
  return head / (num_heads / p.num_kv_heads);
}

/// The logits of one (row, head) over its sequence's tokens 0 .. L-1 and which of them are
/// attended. A token that is not attended is never read and its logit is -inf.
struct RowLogits {
  std::vector<double> s;
  std::vector<char> keep;
};

RowLogits row_logits(const PagedAttentionParams& p, std::int64_t row, const QueryRow& r, int head) {
  RowLogits out;
  if (r.seq < 0) return out;
  const int len = std::max(seq_len_of(p, r.seq), 0);
  const int head_size = static_cast<int>(p.query.shape[2]);
  const int g = kv_head_of(p, head);
  out.s.assign(len, kNegInf);
  out.keep.assign(len, 0);

  const std::int64_t q_off = row * p.query.strides[0] + head * p.query.strides[1];
  std::vector<double> q(head_size);
  for (int d = 0; d < head_size; ++d) q[d] = load_as_double(p.query.data, p.query.dtype, q_off + d * p.query.strides[2]);
  const bool alibi = p.alibi_slopes.defined();
  const double slope =
      alibi ? load_as_double(p.alibi_slopes.data, DType::kFloat32, head * p.alibi_slopes.strides[0]) : 0.0;
  const bool capped = p.logits_soft_cap > 0.0f;
  const double cap = static_cast<double>(p.logits_soft_cap);

  for (std::int64_t t = 0; t < len; ++t) {
    if (t > r.pos) continue;                                        // causal
    if (p.window_left >= 0 && t < r.pos - p.window_left) continue;  // sliding window
    const std::int64_t t0 = t - t % p.block_size;                   // first token of the cache block
    if (!block_attended_at(p, r.pos, head, t0)) continue;           // block-sparse
    const std::int64_t pb = physical_block(p, r.seq, t);
    double dot = 0.0;
    for (int d = 0; d < head_size; ++d) dot += q[d] * key_elem(p, pb, g, t, d);
    double v = static_cast<double>(p.scale) * dot;
    if (capped) v = cap * std::tanh(v / cap);
    if (alibi) v += slope * static_cast<double>(t - r.pos);
    out.s[t] = v;
    out.keep[t] = 1;
  }
  return out;
}

/// Softmax-weighted sum of values over tokens [begin, end) of `seq`, kv head of `head`, from
/// that sequence's logits. Returns false when no token in the range is attended (m = -inf,
/// l = 0, o = 0). Otherwise m = max logit, l = sum exp(s - m), o = sum exp(s - m) v / l; a
/// NaN logit or value makes m / l / o NaN as plain arithmetic would.
bool partial(const PagedAttentionParams& p, int seq, int head, std::int64_t begin, std::int64_t end,
             const RowLogits& lg, double& m, double& l, double* o) {
  const int head_size = static_cast<int>(p.query.shape[2]);
  const int g = kv_head_of(p, head);
  m = kNegInf;
  l = 0.0;
  std::fill(o, o + head_size, 0.0);
  bool any = false;
  for (std::int64_t t = begin; t < end; ++t) {
    if (!lg.keep[t]) continue;
    m = any ? nan_max(m, lg.s[t]) : lg.s[t];
    any = true;
  }
  if (!any) return false;
  for (std::int64_t t = begin; t < end; ++t) {
    if (!lg.keep[t]) continue;  // masked: read nothing of it
    const double w = std::exp(lg.s[t] - m);
    l += w;
    const std::int64_t pb = physical_block(p, seq, t);
    for (int d = 0; d < head_size; ++d) o[d] += w * value_elem(p, pb, g, t, d);
  }
  for (int d = 0; d < head_size; ++d) o[d] /= l;
  return true;
}

/// Output and log-sum-exp of every (row, head). `out` may be null.
void attention_and_lse(const PagedAttentionParams& p, std::vector<double>* out, std::vector<double>* lse_out) {
  const std::vector<QueryRow> rows = query_rows(p);
  const int num_rows = static_cast<int>(rows.size());
  const int num_heads = static_cast<int>(p.query.shape[1]);
  const int head_size = static_cast<int>(p.query.shape[2]);
  if (out) out->assign(std::size_t(num_rows) * num_heads * head_size, 0.0);
  if (lse_out) lse_out->assign(std::size_t(num_rows) * num_heads, kNegInf);
  std::vector<double> scratch(head_size);
  for (int r = 0; r < num_rows; ++r) {
    for (int h = 0; h < num_heads; ++h) {
      const RowLogits lg = row_logits(p, r, rows[r], h);
      double* o = out ? &(*out)[(std::size_t(r) * num_heads + h) * head_size] : scratch.data();
      double m = 0.0, l = 0.0;
      const bool any = partial(p, rows[r].seq, h, 0, static_cast<std::int64_t>(lg.s.size()), lg, m, l, o);
      if (lse_out && any) (*lse_out)[std::size_t(r) * num_heads + h] = m + std::log(l);
    }
  }
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

std::vector<QueryRow> query_rows(const PagedAttentionParams& p) {
  const std::int64_t num_rows = p.query.shape[0];
  const int num_seqs = num_seqs_of(p);
  std::vector<QueryRow> rows(static_cast<std::size_t>(std::max<std::int64_t>(num_rows, 0)));
  if (!p.query_start_loc.defined()) {
    for (int i = 0; i < num_seqs && i < num_rows; ++i) rows[i] = QueryRow{i, std::int64_t(seq_len_of(p, i)) - 1};
    return rows;
  }
  const TensorView& qsl = p.query_start_loc;
  for (int i = 0; i < num_seqs; ++i) {
    const std::int64_t first = load_i32(qsl, i * qsl.strides[0]);
    const std::int64_t last = load_i32(qsl, (i + 1) * qsl.strides[0]);  // one past
    const std::int64_t q_len = last - first;
    const std::int64_t len = seq_len_of(p, i);
    for (std::int64_t r = std::max<std::int64_t>(first, 0); r < last && r < num_rows; ++r)
      rows[r] = QueryRow{i, len - q_len + (r - first)};
  }
  return rows;
}

bool block_attended_at(const PagedAttentionParams& p, std::int64_t pos, int head, std::int64_t t0) {
  const BlockSparseParams& bs = p.blocksparse;
  if (!bs.enabled()) return true;
  const std::int64_t qb = pos / bs.block_size;
  const std::int64_t kb = t0 / bs.block_size;
  if (kb > qb - bs.local_blocks) return true;  // local
  const std::int64_t num_heads = p.query.shape[1];
  const std::int64_t step = bs.head_sliding_step;
  const std::int64_t off = step >= 0 ? (p.tp_rank * num_heads + head) * step + 1
                                     : (p.tp_rank * std::int64_t(p.num_kv_heads) + kv_head_of(p, head)) * (-step) + 1;
  return (kb + off) % bs.vert_stride == 0;  // vertical
}

bool block_attended(const PagedAttentionParams& p, int seq_len, int head, int t0) {
  return block_attended_at(p, static_cast<std::int64_t>(seq_len) - 1, head, t0);
}

std::vector<double> logits(const PagedAttentionParams& p, int row, int head) {
  const std::vector<QueryRow> rows = query_rows(p);
  return row_logits(p, row, rows.at(static_cast<std::size_t>(row)), head).s;
}

std::vector<double> attention(const PagedAttentionParams& p) {
  std::vector<double> out;
  attention_and_lse(p, &out, nullptr);
  return out;
}

std::vector<double> lse(const PagedAttentionParams& p) {
  std::vector<double> l;
  attention_and_lse(p, nullptr, &l);
  return l;
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
    const QueryRow qr{i, len - 1};
    for (int h = 0; h < r.num_heads; ++h) {
      const RowLogits lg = row_logits(p, i, qr, h);
      for (int j = 0; j < r.num_partitions; ++j) {
        const std::int64_t begin = std::int64_t(partition_size) * j;
        if (begin >= len) break;  // this and later partitions lie past the end: valid = 0
        const std::int64_t end = std::min<std::int64_t>(begin + partition_size, len);
        const std::size_t row = (std::size_t(i) * r.num_heads + h) * r.num_partitions + j;
        r.valid[row] = 1;
        partial(p, i, h, begin, end, lg, r.max_logits[row], r.exp_sums[row], &r.out[row * r.head_size]);
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
      for (std::int64_t j = 0; j < n; ++j) M = nan_max(M, parts.max_logits[base + j]);
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

MergedStates merge_states(const std::vector<double>& out_a, const std::vector<double>& lse_a,
                          const std::vector<double>& out_b, const std::vector<double>& lse_b, int head_size) {
  const std::size_t n = lse_a.size();
  const std::size_t D = static_cast<std::size_t>(std::max(head_size, 0));
  if (head_size <= 0 || lse_b.size() != n || out_a.size() != n * D || out_b.size() != n * D)
    detail::fail(ErrorCode::kInvalidArgument, "ref::merge_states: sizes disagree (lse_a ", lse_a.size(), ", lse_b ",
                 lse_b.size(), ", out_a ", out_a.size(), ", out_b ", out_b.size(), ", head_size ", head_size,
                 "); expected lse_b == lse_a and out_x == lse_a * head_size");
  MergedStates r;
  r.out.assign(n * D, 0.0);
  r.lse.assign(n, kNegInf);
  for (std::size_t k = 0; k < n; ++k) {
    const double la = lse_a[k], lb = lse_b[k];
    double* o = &r.out[k * D];
    const double* oa = &out_a[k * D];
    const double* ob = &out_b[k * D];
    if (std::isnan(la) || std::isnan(lb)) {
      std::fill(o, o + D, kNaN);
      r.lse[k] = kNaN;
    } else if (la == kNegInf && lb == kNegInf) {
      // nothing attended on either side: zeros and -inf (already there)
    } else if (la == kNegInf) {  // a contributes nothing: w_b = 1, out = out_b
      std::copy(ob, ob + D, o);
      r.lse[k] = lb;
    } else if (lb == kNegInf) {
      std::copy(oa, oa + D, o);
      r.lse[k] = la;
    } else {
      const double M = la < lb ? lb : la;
      const double wa = std::exp(la - M), wb = std::exp(lb - M);
      const double w = wa + wb;
      for (std::size_t d = 0; d < D; ++d) o[d] = (wa * oa[d] + wb * ob[d]) / w;
      r.lse[k] = M + std::log(w);
    }
  }
  return r;
}

}  // namespace pagedattn::ref
