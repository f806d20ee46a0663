#include "bench_run.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <future>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>

#include "pagedattn/attention.h"
#include "reference/reference.h"

namespace pagedattn::bench {
namespace {

constexpr float kFp8Scale = 0.5f;  // k_scale = v_scale for fp8 caches: exercises the dequantisation

/// lse check: |lse - ref| <= kLseAtol + kLseRtol * |ref| (float32 output whatever the dtype:
/// float32 accumulation of the exponentials and a float log).
constexpr double kLseAtol = 1e-3;
constexpr double kLseRtol = 1e-4;

/// Per-kv-head fp8 scale of head `g`: m / 8 with m in [2, 12]. At most 4 significant bits, so a
/// dequantised e4m3/e5m2 code (4 or 3 bits) stays exact in float16 and bfloat16, whichever the
/// kernel converts to.
float per_head_scale(std::uint64_t seed, int g) {
  return static_cast<float>(2 + hash64(seed, static_cast<std::uint64_t>(g)) % 11) / 8.0f;
}

FillKind fill_kind_of(DType t, CacheDType kv, bool cache) {
  if (cache && kv == CacheDType::kFp8E4M3) return FillKind::kFp8E4M3;
  if (cache && kv == CacheDType::kFp8E5M2) return FillKind::kFp8E5M2;
  switch (t) {
    case DType::kFloat32: return FillKind::kFloat32;
    case DType::kBFloat16: return FillKind::kBFloat16;
    default: return FillKind::kFloat16;
  }
}

/// FNV-1a of the case's configuration: the same case gets the same data wherever it sits in a run.
std::uint64_t case_seed(const Case& c, std::uint64_t seed) {
  const std::string key = c.config_key() + " L" + std::to_string(c.seq_len);
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : key) h = (h ^ ch) * 1099511628211ull;
  return hash64(seed, h);
}

std::string gib(double bytes) {
  std::ostringstream os;
  os.precision(3);
  os << bytes / double(1ull << 30) << " GiB";
  return os.str();
}

/// A case's tensors on the backend, with KV rotated over `num_buffers` block tables that
/// point into disjoint, randomly permuted parts of one pool.
struct Problem {
  Case c;
  Device device;
  void* stream = nullptr;
  DType cache_dtype = DType::kFloat32;
  int x = 0;
  std::vector<int> seq_lens;
  int max_seq_len = 0;
  int max_blocks = 0;                 // block table row length
  std::int64_t blocks_per_buffer = 0;  // blocks one buffer's sequences use
  int num_buffers = 1;
  std::int64_t pool_blocks = 0;
  std::vector<std::int32_t> tables;  // [num_buffers, batch, max_blocks]
  std::vector<float> alibi;
  std::vector<std::int32_t> query_start_loc;  // [batch + 1], with Case::q_len
  std::vector<float> k_scales, v_scales;      // [num_kv_heads], with Case::per_head_scales

  Buffer query, out, key_cache, value_cache, block_tables, seq_lens_dev, alibi_dev;
  Buffer qsl_dev, k_scales_dev, v_scales_dev, lse_dev;
  Buffer exp_sums, max_logits, tmp_out, auto_ws;
  std::size_t auto_ws_bytes = 0;
  /// Built once per case (nothing but the launch happens inside a timed call): the call's
  /// parameters for each rotation buffer, and the V2 workspace views.
  std::vector<PagedAttentionParams> calls;
  V2Workspace v2;

  std::size_t dtype_bytes() const { return dtype_size(c.dtype); }
  std::size_t cache_bytes() const { return dtype_size(cache_dtype); }
  /// 16-byte key chunks per token: ceil(head_size / x) (fp8 with head 120: 8 chunks, 8 padding elements).
  int key_chunks() const { return (c.head_size + x - 1) / x; }
  std::size_t block_elems() const { return std::size_t(c.num_kv_heads) * c.head_size * c.block_size; }  // V
  std::size_t key_block_elems() const { return std::size_t(c.num_kv_heads) * key_chunks() * x * c.block_size; }
  std::size_t block_bytes() const { return block_elems() * cache_bytes(); }  // one block of V
  std::size_t key_block_bytes() const { return key_block_elems() * cache_bytes(); }  // one block of K
  std::size_t row_bytes() const { return std::size_t(c.num_heads) * c.head_size * dtype_bytes(); }
  /// Query (and out) rows per sequence, and in all.
  int q() const { return c.rows_per_seq(); }
  std::int64_t rows() const { return std::int64_t(c.batch) * q(); }
  int parts() const { return v2_max_num_partitions(max_seq_len); }

  PagedAttentionParams params(int buffer) const {
    PagedAttentionParams p;
    const std::int64_t B = c.batch, H = c.num_heads, D = c.head_size, R = rows();
    p.out = TensorView::contiguous(out.get(), c.dtype, {R, H, D}, device);
    p.query = TensorView::contiguous(query.get(), c.dtype, {R, H, D}, device);
    p.key_cache = TensorView::contiguous(key_cache.get(), cache_dtype,
                                         {pool_blocks, c.num_kv_heads, key_chunks(), c.block_size, x}, device);
    p.value_cache =
        TensorView::contiguous(value_cache.get(), cache_dtype, {pool_blocks, c.num_kv_heads, D, c.block_size}, device);
    auto* bt = static_cast<std::int32_t*>(block_tables.get()) + std::size_t(buffer) * B * max_blocks;
    p.block_tables = TensorView::contiguous(bt, DType::kInt32, {B, max_blocks}, device);
    p.seq_lens = TensorView::contiguous(seq_lens_dev.get(), DType::kInt32, {B}, device);
    if (c.alibi) p.alibi_slopes = TensorView::contiguous(alibi_dev.get(), DType::kFloat32, {H}, device);
    p.num_kv_heads = c.num_kv_heads;
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_size));
    p.block_size = c.block_size;
    p.max_seq_len = max_seq_len;
    // the planner's length hint, as an engine that knows its batch on the host would pass it
    p.total_tokens = std::accumulate(seq_lens.begin(), seq_lens.end(), 0LL);
    p.kv_cache_dtype = c.kv_cache_dtype;
    if (c.kv_cache_dtype != CacheDType::kAuto) p.k_scale = p.v_scale = kFp8Scale;
    p.batch_invariant = c.batch_invariant;
    p.stream = stream;
    p.window_left = c.window_left;
    p.logits_soft_cap = c.soft_cap;
    if (c.q_len > 0) {
      p.query_start_loc = TensorView::contiguous(qsl_dev.get(), DType::kInt32, {B + 1}, device);
      p.max_query_len = c.q_len;
    }
    if (c.lse) p.lse = TensorView::contiguous(lse_dev.get(), DType::kFloat32, {R, H}, device);
    if (c.per_head_scales) {
      p.k_scale = p.v_scale = 1.0f;
      p.k_scales = TensorView::contiguous(k_scales_dev.get(), DType::kFloat32, {c.num_kv_heads}, device);
      p.v_scales = TensorView::contiguous(v_scales_dev.get(), DType::kFloat32, {c.num_kv_heads}, device);
    }
    return p;
  }

  V2Workspace v2_workspace() const {
    V2Workspace ws;
    const std::int64_t B = c.batch, H = c.num_heads, P = parts();
    ws.exp_sums = TensorView::contiguous(exp_sums.get(), DType::kFloat32, {B, H, P}, device);
    ws.max_logits = TensorView::contiguous(max_logits.get(), DType::kFloat32, {B, H, P}, device);
    ws.tmp_out = TensorView::contiguous(tmp_out.get(), c.dtype, {B, H, P, c.head_size}, device);
    return ws;
  }
};

std::vector<int> draw_seq_lens(const Case& c, std::mt19937_64& rng) {
  std::vector<int> lens(c.batch, c.seq_len);
  if (c.dist == SeqDist::kUniform) {
    // every sequence holds at least its q_len new tokens
    std::uniform_int_distribution<int> len(c.rows_per_seq(), c.seq_len);
    for (int& l : lens) l = len(rng);
    lens[std::uniform_int_distribution<int>(0, c.batch - 1)(rng)] = c.seq_len;
  }
  return lens;
}

/// Standard ALiBi slopes 2^(-8 (h+1) / H).
std::vector<float> alibi_slopes(int heads) {
  std::vector<float> s(heads);
  for (int h = 0; h < heads; ++h) s[h] = std::pow(2.0f, -8.0f * float(h + 1) / float(heads));
  return s;
}

void build_problem(Backend& b, const RunOptions& o, Problem& pr, Result& proto) {
  const Case& c = pr.c;
  if (c.batch <= 0 || c.seq_len <= 0 || c.num_kv_heads <= 0 || c.num_heads <= 0)
    throw std::invalid_argument("batch, seq_len and head counts must be positive");
  if (c.q_len > c.seq_len)
    throw std::invalid_argument("q_len " + std::to_string(c.q_len) + " exceeds seq_len " + std::to_string(c.seq_len) +
                                " (the new tokens count in the sequence's length)");
  if (c.per_head_scales && c.kv_cache_dtype == CacheDType::kAuto)
    throw std::invalid_argument("per-head scales need an fp8 cache");
  pr.device = b.device();
  pr.stream = b.stream();
  pr.cache_dtype = c.kv_cache_dtype == CacheDType::kAuto ? c.dtype : DType::kUInt8;
  pr.x = static_cast<int>(16 / dtype_size(pr.cache_dtype));

  const std::uint64_t seed = case_seed(c, o.seed);
  std::mt19937_64 rng(seed);
  pr.seq_lens = draw_seq_lens(c, rng);
  pr.max_seq_len = *std::max_element(pr.seq_lens.begin(), pr.seq_lens.end());
  pr.max_blocks = (pr.max_seq_len + c.block_size - 1) / c.block_size;
  std::int64_t tokens = 0, attended = 0;
  for (int l : pr.seq_lens) {
    tokens += l;
    attended += c.attended_tokens(l);
    pr.blocks_per_buffer += (l + c.block_size - 1) / c.block_size;
  }

  proto.seq_lens = pr.seq_lens;
  proto.total_tokens = tokens;
  proto.attended_tokens = attended;
  proto.query_rows = pr.rows();
  proto.max_seq_len = pr.max_seq_len;
  proto.mean_seq_len = double(tokens) / c.batch;
  // only what the kernels read: with a window, the attended span of each sequence
  proto.kv_bytes = attended * c.num_kv_heads * c.head_size * 2 * std::int64_t(pr.cache_bytes());
  proto.qo_bytes = 2 * pr.rows() * std::int64_t(pr.row_bytes()) +
                   (c.lse ? pr.rows() * c.num_heads * std::int64_t(sizeof(float)) : 0);
  proto.bytes = proto.kv_bytes + proto.qo_bytes;
  proto.page_bytes = std::int64_t(c.block_size) * c.head_size * pr.cache_bytes();

  // How many KV buffers: enough that more than rotate_bytes of KV is read between two reads of
  // the same byte, as many as fit.
  const std::int64_t want = std::min<std::int64_t>(o.rotate_bytes / std::max<std::int64_t>(proto.kv_bytes, 1) + 1,
                                                   std::max(1, o.max_buffers));
  const std::int64_t per_buffer = pr.blocks_per_buffer * std::int64_t(pr.block_bytes() + pr.key_block_bytes());
  const std::int64_t v2_bytes = std::int64_t(c.batch) * c.num_heads * pr.parts() * (8 + c.head_size * std::int64_t(pr.dtype_bytes()));
  const std::int64_t fixed = proto.qo_bytes + 2 * v2_bytes + (std::int64_t(256) << 20);
  const std::int64_t avail = static_cast<std::int64_t>(0.9 * double(b.free_bytes())) - fixed;
  const std::int64_t fit = avail > 0 ? avail / std::max<std::int64_t>(per_buffer, 1) : 0;
  if (fit < 1)
    throw std::runtime_error("case does not fit: one KV buffer needs " + gib(double(per_buffer)) + ", about " +
                             gib(double(std::max<std::int64_t>(avail, 0))) + " usable");
  pr.num_buffers = static_cast<int>(std::min(want, fit));
  pr.pool_blocks = pr.blocks_per_buffer * pr.num_buffers;
  if (pr.pool_blocks > std::int64_t(INT32_MAX)) throw std::runtime_error("block pool exceeds int32 block ids");
  proto.num_buffers = pr.num_buffers;
  proto.reuse_distance_bytes = proto.kv_bytes * pr.num_buffers;

  // Block tables: a random permutation of the pool, cut into one table set per buffer.
  std::vector<std::int32_t> perm(static_cast<std::size_t>(pr.pool_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  pr.tables.assign(std::size_t(pr.num_buffers) * c.batch * pr.max_blocks, 0);
  std::size_t next = 0;
  for (int j = 0; j < pr.num_buffers; ++j) {
    for (int i = 0; i < c.batch; ++i) {
      std::int32_t* row = &pr.tables[(std::size_t(j) * c.batch + i) * pr.max_blocks];
      const int nb = (pr.seq_lens[i] + c.block_size - 1) / c.block_size;
      for (int k = 0; k < nb; ++k) row[k] = perm[next++];
      for (int k = nb; k < pr.max_blocks; ++k) row[k] = row[0];  // unreferenced: any valid id
    }
  }

  const std::size_t pool_elems = std::size_t(pr.pool_blocks) * pr.block_elems();
  const std::size_t key_pool_elems = std::size_t(pr.pool_blocks) * pr.key_block_elems();
  const std::size_t qo_elems = std::size_t(pr.rows()) * c.num_heads * c.head_size;
  pr.query = Buffer(&b, qo_elems * pr.dtype_bytes());
  pr.out = Buffer(&b, qo_elems * pr.dtype_bytes());
  pr.key_cache = Buffer(&b, key_pool_elems * pr.cache_bytes());
  pr.value_cache = Buffer(&b, pool_elems * pr.cache_bytes());
  pr.block_tables = Buffer(&b, pr.tables.size() * sizeof(std::int32_t));
  pr.seq_lens_dev = Buffer(&b, pr.seq_lens.size() * sizeof(std::int32_t));
  b.fill_random(pr.query.get(), qo_elems, fill_kind_of(c.dtype, c.kv_cache_dtype, false), hash64(seed, 1));
  b.fill_random(pr.key_cache.get(), key_pool_elems, fill_kind_of(c.dtype, c.kv_cache_dtype, true), hash64(seed, 2));
  b.fill_random(pr.value_cache.get(), pool_elems, fill_kind_of(c.dtype, c.kv_cache_dtype, true), hash64(seed, 3));
  b.fill_random(pr.out.get(), qo_elems, fill_kind_of(c.dtype, c.kv_cache_dtype, false), hash64(seed, 4));
  b.upload(pr.block_tables.get(), pr.tables.data(), pr.tables.size() * sizeof(std::int32_t));
  std::vector<std::int32_t> lens32(pr.seq_lens.begin(), pr.seq_lens.end());
  b.upload(pr.seq_lens_dev.get(), lens32.data(), lens32.size() * sizeof(std::int32_t));
  if (c.alibi) {
    pr.alibi = alibi_slopes(c.num_heads);
    pr.alibi_dev = Buffer(&b, pr.alibi.size() * sizeof(float));
    b.upload(pr.alibi_dev.get(), pr.alibi.data(), pr.alibi.size() * sizeof(float));
  }
  if (c.q_len > 0) {
    pr.query_start_loc.resize(std::size_t(c.batch) + 1);
    for (int i = 0; i <= c.batch; ++i) pr.query_start_loc[i] = i * c.q_len;
    pr.qsl_dev = Buffer(&b, pr.query_start_loc.size() * sizeof(std::int32_t));
    b.upload(pr.qsl_dev.get(), pr.query_start_loc.data(), pr.query_start_loc.size() * sizeof(std::int32_t));
  }
  if (c.per_head_scales) {
    for (int g = 0; g < c.num_kv_heads; ++g) {
      pr.k_scales.push_back(per_head_scale(hash64(seed, 5), g));
      pr.v_scales.push_back(per_head_scale(hash64(seed, 6), g));
    }
    pr.k_scales_dev = Buffer(&b, pr.k_scales.size() * sizeof(float));
    pr.v_scales_dev = Buffer(&b, pr.v_scales.size() * sizeof(float));
    b.upload(pr.k_scales_dev.get(), pr.k_scales.data(), pr.k_scales.size() * sizeof(float));
    b.upload(pr.v_scales_dev.get(), pr.v_scales.data(), pr.v_scales.size() * sizeof(float));
  }
  if (c.lse) pr.lse_dev = Buffer(&b, std::size_t(pr.rows()) * c.num_heads * sizeof(float));

  const bool needs_v2 = !c.has_variant() && std::any_of(o.algos.begin(), o.algos.end(), [](Algo a) {
    return a == Algo::kV2 || a == Algo::kVllm;
  });
  if (needs_v2) {
    const std::size_t n = std::size_t(c.batch) * c.num_heads * pr.parts();
    pr.exp_sums = Buffer(&b, n * sizeof(float));
    pr.max_logits = Buffer(&b, n * sizeof(float));
    pr.tmp_out = Buffer(&b, n * c.head_size * pr.dtype_bytes());
  }
  if (std::find(o.algos.begin(), o.algos.end(), Algo::kAuto) != o.algos.end()) {
    // sized for the kernel the auto path will run: a pinned kernel may plan more splits
    b.pin_kernel(c.kernel);
    try {
      pr.auto_ws_bytes = paged_attention_workspace_size(pr.params(0));
    } catch (...) {
      b.pin_kernel("");
      throw;
    }
    b.pin_kernel("");
    if (pr.auto_ws_bytes > 0) pr.auto_ws = Buffer(&b, pr.auto_ws_bytes);
  }
  for (int k = 0; k < pr.num_buffers; ++k) pr.calls.push_back(pr.params(k));
  if (needs_v2) pr.v2 = pr.v2_workspace();
  b.synchronize();
}

void invoke(Algo a, const Problem& pr, const PagedAttentionParams& p) {
  switch (a) {
    case Algo::kV1: return paged_attention_v1(p);
    case Algo::kV2: return paged_attention_v2(p, pr.v2);
    case Algo::kAuto: return paged_attention(p, pr.auto_ws.get(), pr.auto_ws_bytes);
    case Algo::kVllm: break;
  }
  throw std::logic_error("invoke: vllm must be resolved to v1 or v2 first");
}

/// The sampled sequences, copied page by page from buffer 0 into a compact host problem, and
/// the float64 reference output for them.
struct HostCheck {
  std::vector<int> seqs;
  std::vector<unsigned char> query, out, key_cache, value_cache;
  std::vector<std::int32_t> tables, lens, query_start_loc;
  std::vector<float> alibi, k_scales, v_scales, lse;
  PagedAttentionParams params;
  std::vector<double> ref;      // [seqs x q rows, heads, head_size]
  std::vector<double> ref_lse;  // [seqs x q rows, heads], with Case::lse
};

/// Reference work allowed per case, in query-key products (seq_len x q rows x heads x head_size
/// summed over the sampled sequences): past it, fewer sequences are sampled (never fewer than one).
constexpr std::int64_t kCheckBudget = std::int64_t(1) << 28;

/// Up to `n` sequences to check: the longest, the shortest, the last (catches grids that stop
/// one short), then random ones, within kCheckBudget.
std::vector<int> sample_seqs(const Problem& pr, int n, std::uint64_t seed) {
  const int batch = pr.c.batch;
  std::vector<int> order;
  auto add = [&order](int s) {
    if (std::find(order.begin(), order.end(), s) == order.end()) order.push_back(s);
  };
  add(static_cast<int>(std::max_element(pr.seq_lens.begin(), pr.seq_lens.end()) - pr.seq_lens.begin()));
  add(static_cast<int>(std::min_element(pr.seq_lens.begin(), pr.seq_lens.end()) - pr.seq_lens.begin()));
  add(batch - 1);
  std::mt19937_64 rng(seed);
  for (int tries = 0; static_cast<int>(order.size()) < std::min(n, batch) && tries < 64 * n; ++tries)
    add(std::uniform_int_distribution<int>(0, batch - 1)(rng));
  std::vector<int> pick;
  std::int64_t work = 0;
  for (int s : order) {
    const std::int64_t cost = std::int64_t(pr.seq_lens[s]) * pr.q() * pr.c.num_heads * pr.c.head_size;
    if (static_cast<int>(pick.size()) >= n || (!pick.empty() && work + cost > kCheckBudget)) break;
    pick.push_back(s);
    work += cost;
  }
  std::sort(pick.begin(), pick.end());
  return pick;
}

void build_host_check(Backend& b, const Problem& pr, const std::vector<int>& seqs, HostCheck& hc) {
  const Case& c = pr.c;
  const std::int64_t S = static_cast<std::int64_t>(seqs.size()), H = c.num_heads, D = c.head_size;
  const std::int64_t Q = pr.q(), R = S * Q;
  const std::size_t seq_rows_bytes = std::size_t(Q) * pr.row_bytes();  // one sequence's query rows
  hc.seqs = seqs;
  hc.query.resize(std::size_t(S) * seq_rows_bytes);
  std::int64_t blocks = 0;
  int max_blocks = 1;
  for (int s : seqs) {
    const int nb = (pr.seq_lens[s] + c.block_size - 1) / c.block_size;
    blocks += nb;
    max_blocks = std::max(max_blocks, nb);
  }
  blocks = std::max<std::int64_t>(blocks, 1);
  hc.key_cache.resize(std::size_t(blocks) * pr.key_block_bytes());
  hc.value_cache.resize(std::size_t(blocks) * pr.block_bytes());
  hc.tables.assign(std::size_t(S) * max_blocks, 0);
  hc.lens.resize(S);
  const auto* q_dev = static_cast<const unsigned char*>(pr.query.get());
  const auto* k_dev = static_cast<const unsigned char*>(pr.key_cache.get());
  const auto* v_dev = static_cast<const unsigned char*>(pr.value_cache.get());
  std::int32_t next = 0;
  for (std::int64_t j = 0; j < S; ++j) {
    const int s = seqs[j];
    hc.lens[j] = pr.seq_lens[s];
    b.download(hc.query.data() + j * seq_rows_bytes, q_dev + std::size_t(s) * seq_rows_bytes, seq_rows_bytes);
    const int nb = (pr.seq_lens[s] + c.block_size - 1) / c.block_size;
    const std::int32_t* row = &pr.tables[std::size_t(s) * pr.max_blocks];  // buffer 0
    for (int k = 0; k < nb; ++k) {
      b.download(hc.key_cache.data() + std::size_t(next) * pr.key_block_bytes(),
                 k_dev + std::size_t(row[k]) * pr.key_block_bytes(), pr.key_block_bytes());
      b.download(hc.value_cache.data() + std::size_t(next) * pr.block_bytes(),
                 v_dev + std::size_t(row[k]) * pr.block_bytes(), pr.block_bytes());
      hc.tables[j * max_blocks + k] = next++;
    }
  }
  hc.alibi = pr.alibi;

  PagedAttentionParams p = pr.params(0);
  const Device host{DeviceType::kCPU, 0};
  p.query = TensorView::contiguous(hc.query.data(), c.dtype, {R, H, D}, host);
  hc.out.assign(hc.query.size(), 0);  // unused by the reference, which returns its result; kept valid
  p.out = TensorView::contiguous(hc.out.data(), c.dtype, {R, H, D}, host);
  p.key_cache = TensorView::contiguous(hc.key_cache.data(), pr.cache_dtype, {blocks, c.num_kv_heads, pr.key_chunks(), c.block_size, pr.x}, host);
  p.value_cache = TensorView::contiguous(hc.value_cache.data(), pr.cache_dtype, {blocks, c.num_kv_heads, D, c.block_size}, host);
  p.block_tables = TensorView::contiguous(hc.tables.data(), DType::kInt32, {S, max_blocks}, host);
  p.seq_lens = TensorView::contiguous(hc.lens.data(), DType::kInt32, {S}, host);
  if (c.alibi) p.alibi_slopes = TensorView::contiguous(hc.alibi.data(), DType::kFloat32, {H}, host);
  p.max_seq_len = *std::max_element(hc.lens.begin(), hc.lens.end());
  p.stream = nullptr;
  if (c.q_len > 0) {
    hc.query_start_loc.resize(std::size_t(S) + 1);
    for (std::int64_t j = 0; j <= S; ++j) hc.query_start_loc[j] = static_cast<std::int32_t>(j * Q);
    p.query_start_loc = TensorView::contiguous(hc.query_start_loc.data(), DType::kInt32, {S + 1}, host);
  }
  if (c.lse) {
    hc.lse.assign(std::size_t(R * H), 0.0f);  // unused by the reference; kept valid
    p.lse = TensorView::contiguous(hc.lse.data(), DType::kFloat32, {R, H}, host);
  }
  if (c.per_head_scales) {
    hc.k_scales = pr.k_scales;
    hc.v_scales = pr.v_scales;
    p.k_scales = TensorView::contiguous(hc.k_scales.data(), DType::kFloat32, {c.num_kv_heads}, host);
    p.v_scales = TensorView::contiguous(hc.v_scales.data(), DType::kFloat32, {c.num_kv_heads}, host);
  }
  hc.params = p;
}

/// Runs `a` once on buffer 0 into an `out` (and `lse`) poisoned with NaN, then compares the
/// sampled sequences' rows.
void check_algo(Backend& b, const Problem& pr, Algo a, const HostCheck& hc, Result& r) {
  b.memset_bytes(pr.out.get(), 0xFF, pr.out.bytes());  // all-ones bits: NaN in fp32/fp16/bf16
  if (pr.c.lse) b.memset_bytes(pr.lse_dev.get(), 0xFF, pr.lse_dev.bytes());
  PagedAttentionParams p = pr.params(0);
  p.checked = true;
  invoke(a, pr, p);
  b.synchronize();
  const Tolerance tol = tolerance_for(pr.c.dtype);
  const std::size_t Q = static_cast<std::size_t>(pr.q());
  const std::size_t seq_elems = Q * pr.c.num_heads * pr.c.head_size;  // one sequence's out rows
  const std::size_t seq_bytes = Q * pr.row_bytes();
  std::vector<unsigned char> rows(seq_bytes);
  double max_err = 0.0, worst = 0.0;
  bool ok = true;
  for (std::size_t j = 0; j < hc.seqs.size(); ++j) {
    b.download(rows.data(), static_cast<const unsigned char*>(pr.out.get()) + std::size_t(hc.seqs[j]) * seq_bytes,
               seq_bytes);
    for (std::size_t e = 0; e < seq_elems; ++e) {
      const double got = ref::load_as_double(rows.data(), pr.c.dtype, static_cast<std::int64_t>(e));
      const double want = hc.ref[j * seq_elems + e];
      const double err = std::fabs(got - want);
      if (!std::isfinite(got)) {
        ok = false;
        max_err = INFINITY;
        worst = INFINITY;
        continue;
      }
      max_err = std::max(max_err, err);
      worst = std::max(worst, err / (tol.atol + tol.rtol * std::fabs(want)));
    }
  }
  if (pr.c.lse) {
    const std::size_t seq_lse = Q * pr.c.num_heads;
    std::vector<float> got(seq_lse);
    double lse_err = 0.0;
    for (std::size_t j = 0; j < hc.seqs.size(); ++j) {
      b.download(got.data(), static_cast<const float*>(pr.lse_dev.get()) + std::size_t(hc.seqs[j]) * seq_lse,
                 seq_lse * sizeof(float));
      for (std::size_t e = 0; e < seq_lse; ++e) {
        const double want = hc.ref_lse[j * seq_lse + e];
        const double g = got[e];
        if (std::isinf(want) || !std::isfinite(g)) {  // -inf only where the reference has it
          if (g != want) ok = false, lse_err = INFINITY;
          continue;
        }
        const double err = std::fabs(g - want);
        lse_err = std::max(lse_err, err);
        if (err > kLseAtol + kLseRtol * std::fabs(want)) ok = false;
      }
    }
    r.max_lse_err = lse_err;
  }
  r.max_abs_err = max_err;
  r.worst_err_over_tol = worst;
  r.checked_seqs = hc.seqs;
  r.check = ok && worst <= 1.0 ? CheckStatus::kPass : CheckStatus::kFail;
}

void fill_timing(const Samples& s, const RunOptions& o, Result& r) {
  if (s.us.empty()) return;
  r.iters = static_cast<int>(s.us.size());
  r.median_us = median(s.us);
  r.min_us = *std::min_element(s.us.begin(), s.us.end());
  r.max_us = *std::max_element(s.us.begin(), s.us.end());
  r.gbps = double(r.bytes) / (r.median_us * 1e3);
  r.pct_copy = o.copy_gbps > 0 ? 100.0 * r.gbps / o.copy_gbps : 0.0;
  if (o.walls.measured()) {
    r.pct_read = 100.0 * r.gbps / o.walls.seq_gbps;
    const double g = o.walls.gather_for(r.page_bytes);
    r.pct_gather = g > 0 ? 100.0 * r.gbps / g : 0.0;
  }
}

/// Why `a` does not apply to `c` ("" when it does): v1/v2 keep vLLM's contract.
std::string not_applicable_reason(const Case& c, Algo a) {
  if (a == Algo::kAuto || !c.has_variant()) return {};
  return "v1/v2 (and vLLM's rule, which picks one of them) reject the SPEC 3b variants: auto only";
}

std::string what_of(const std::exception& e) {
  std::string w = e.what();
  return w.empty() ? "unknown error" : w;
}

}  // namespace

std::vector<Result> run_case(Backend& b, const Case& c, int case_index, const RunOptions& o) {
  std::vector<TimingMode> modes;
  if (o.eager) modes.push_back(TimingMode::kEager);
  if (o.graph && b.supports_graphs()) modes.push_back(TimingMode::kGraph);
  if (modes.empty()) modes.push_back(TimingMode::kEager);

  Result proto;
  proto.case_index = case_index;
  proto.c = c;
  // the longest drawn length is the case's seq_len for both length distributions
  const Algo vllm_choice = vllm_rule_prefers_v1(c.batch, c.num_heads, c.seq_len) ? Algo::kV1 : Algo::kV2;
  const auto ran_of = [vllm_choice](Algo a) { return a == Algo::kVllm ? vllm_choice : a; };
  // One row per (algo, mode) in output order: n/a rows are final; the others carry `err` here
  // and are replaced by their timed rows at the end.
  auto make_rows = [&](const std::string& err) {
    std::vector<Result> rows;
    for (Algo a : o.algos)
      for (TimingMode m : modes) {
        Result r = proto;
        r.algo = a;
        r.ran = ran_of(a);
        r.mode = m;
        r.not_applicable = not_applicable_reason(c, a);
        if (!r.not_applicable.empty()) {
          r.check = CheckStatus::kNotApplicable;
        } else {
          r.error = err;
        }
        rows.push_back(r);
      }
    return rows;
  };

  // Every distinct entry point that applies, timed once (vllm reuses the row of its choice).
  std::vector<Algo> order;
  for (Algo a : o.algos) {
    if (!not_applicable_reason(c, a).empty()) continue;
    const Algo ran = ran_of(a);
    if (std::find(order.begin(), order.end(), ran) == order.end()) order.push_back(ran);
  }
  if (order.empty()) return make_rows("");

  Problem pr;
  pr.c = c;
  HostCheck hc;
  std::future<void> ref_done;
  try {
    build_problem(b, o, pr, proto);
    if (o.check) {
      build_host_check(b, pr, sample_seqs(pr, std::max(1, o.check_seqs), case_seed(c, o.seed) + 7), hc);
      auto compute = [&hc, &c] {
        hc.ref = ref::attention(hc.params);
        if (c.lse) hc.ref_lse = ref::lse(hc.params);
      };
      if (o.async_reference) {
        ref_done = std::async(std::launch::async, compute);
      } else {
        compute();
      }
    }
  } catch (const std::exception& e) {
    if (ref_done.valid()) ref_done.wait();
    return make_rows(what_of(e));
  }

  // The case's kernel pin holds for every entry point of the library (V1, V2, auto; vLLM's rule
  // runs V1 or V2), so the kernels can be compared on each: pinned once for the timed and the
  // checked runs (bench_main has validated the name), released at the end.
  b.pin_kernel(c.kernel);
  std::map<std::pair<Algo, TimingMode>, Result> timed;
  for (Algo ran : order) {
    for (TimingMode m : modes) {
      Result r = proto;
      r.algo = r.ran = ran;
      r.mode = m;
      try {
        const auto call = [&pr, ran](int k) { invoke(ran, pr, pr.calls[k % pr.num_buffers]); };
        Samples s;
        if (m == TimingMode::kEager) {
          s = b.time_eager(call, o.warmup, o.iters);
        } else {
          // whole rotations, so every buffer is read equally often per replay
          r.calls_per_graph = (std::max(o.graph_calls, pr.num_buffers) + pr.num_buffers - 1) / pr.num_buffers *
                              pr.num_buffers;
          s = b.time_graph(call, r.calls_per_graph, std::max(2, o.warmup), o.graph_iters);
        }
        fill_timing(s, o, r);
        r.kernel_ran = b.last_kernel();
      } catch (const std::exception& e) {
        r.error = what_of(e);
        try {
          b.synchronize();
        } catch (const std::exception&) {
        }
      }
      timed[{ran, m}] = r;
    }
  }

  if (ref_done.valid()) {
    try {
      ref_done.get();
    } catch (const std::exception& e) {
      for (auto& [k, r] : timed)
        if (r.error.empty()) r.error = "reference failed: " + what_of(e);
    }
  }
  if (o.check) {
    for (Algo ran : order) {
      Result& eager = timed[{ran, modes.front()}];
      if (!eager.error.empty() || hc.ref.empty()) continue;
      try {
        check_algo(b, pr, ran, hc, eager);
      } catch (const std::exception& e) {
        eager.error = "check run failed: " + what_of(e);
      }
      for (TimingMode m : modes) {  // graph rows run the same kernels: share the check
        Result& r = timed[{ran, m}];
        if (&r == &eager || !r.error.empty()) continue;
        r.check = eager.check;
        r.max_abs_err = eager.max_abs_err;
        r.worst_err_over_tol = eager.worst_err_over_tol;
        r.max_lse_err = eager.max_lse_err;
        r.checked_seqs = eager.checked_seqs;
      }
    }
  }
  try {
    b.pin_kernel("");
  } catch (const std::exception&) {
  }

  std::vector<Result> rows = make_rows("");
  for (Result& row : rows) {
    if (!row.not_applicable.empty()) continue;
    const Algo a = row.algo;
    row = timed[{row.ran, row.mode}];
    row.algo = a;
    row.reused = a == Algo::kVllm && std::count(o.algos.begin(), o.algos.end(), row.ran) > 0;
  }
  return rows;
}

void relate_baselines(std::vector<Result>& rows) {
  for (Result& r : rows) {
    r.vs_baseline = 0.0;
    r.goal_met = false;
    if (r.c.baseline <= 0 || r.iters == 0 || !r.error.empty()) continue;
    for (const Result& base : rows) {
      if (base.case_index != r.c.baseline || base.algo != r.algo || base.mode != r.mode) continue;
      if (base.iters == 0 || !base.error.empty() || base.median_us <= 0.0) break;
      r.vs_baseline = r.median_us / base.median_us;
      r.goal_met = r.c.goal > 0.0 && r.vs_baseline <= r.c.goal;
      break;
    }
  }
}

}  // namespace pagedattn::bench
