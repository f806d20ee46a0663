// Shared test helpers: a per-run seeded RNG that reports its seed on failure, fill and
// poisoning helpers for host buffers, and a builder for random paged-attention problems.
// Everything lives on the host; a device test copies HostTensor::storage to the device and
// rebuilds each view with device_view(), keeping shapes, strides and offsets.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/numeric.h"
#include "pagedattn/attention.h"
#include "pagedattn/fp8.h"
#include "pagedattn/types.h"

namespace pagedattn::test {

// ---------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------

/// The run's base seed: PAGEDATTN_TEST_SEED if set, else fresh from std::random_device.
/// Computed once per process.
inline std::uint64_t base_seed() {
  static const std::uint64_t seed = [] {
    if (const char* env = std::getenv("PAGEDATTN_TEST_SEED"); env && *env)
      return static_cast<std::uint64_t>(std::strtoull(env, nullptr, 0));
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  }();
  return seed;
}

/// The seed of the running test: the base seed mixed with the test's full name, so a test
/// rerun alone (--gtest_filter) with the same PAGEDATTN_TEST_SEED sees the same data.
inline std::uint64_t test_seed() {
  std::string name = "no-test";
  if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info())
    name = std::string(info->test_suite_name()) + "." + info->name();
  // splitmix64 of (base ^ hash(name)): well mixed, stable across runs and platforms.
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  std::uint64_t z = base_seed() ^ h;
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// The line printed with every failing assertion of a seeded test.
inline std::string seed_message() {
  return "PAGEDATTN_TEST_SEED=" + std::to_string(base_seed()) + " reproduces this run";
}

/// A seeded random source.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : gen_(seed) {}
  /// Uniform real in [lo, hi).
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gen_); }
  /// Uniform integer in [lo, hi] (inclusive).
  std::int64_t randint(std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(gen_);
  }
  bool coin(double p_true = 0.5) { return uniform(0.0, 1.0) < p_true; }
  template <typename It>
  void shuffle(It first, It last) { std::shuffle(first, last, gen_); }

 private:
  std::mt19937_64 gen_;
};

/// Declares `Rng var` seeded for the running test, and makes every failing assertion in
/// the enclosing scope print the base seed (gtest SCOPED_TRACE). Also records the seed as
/// a test property (it lands in --gtest_output=xml reports).
#define PAGEDATTN_TEST_RNG(var)                                                               \
  ::pagedattn::test::Rng var(::pagedattn::test::test_seed());                                \
  ::testing::Test::RecordProperty("pagedattn_test_seed", std::to_string(::pagedattn::test::base_seed())); \
  SCOPED_TRACE(::pagedattn::test::seed_message())

// ---------------------------------------------------------------------------------------
// Element access and fills
// ---------------------------------------------------------------------------------------

/// Stores `v` as element `i` of a host array of `dtype` (float32/float16/bfloat16 round to
/// nearest even; kUInt8 stores the byte static_cast<uint8_t>(v); int32/int64 truncate).
inline void store_value(void* base, DType dtype, std::int64_t i, double v) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(base)[i] = static_cast<float>(v); return;
    case DType::kFloat16: static_cast<std::uint16_t*>(base)[i] = detail::float_to_half(static_cast<float>(v)); return;
    case DType::kBFloat16: static_cast<std::uint16_t*>(base)[i] = detail::float_to_bf16(static_cast<float>(v)); return;
    case DType::kUInt8: static_cast<std::uint8_t*>(base)[i] = static_cast<std::uint8_t>(v); return;
    case DType::kInt32: static_cast<std::int32_t*>(base)[i] = static_cast<std::int32_t>(v); return;
    case DType::kInt64: static_cast<std::int64_t*>(base)[i] = static_cast<std::int64_t>(v); return;
  }
}

/// Reads element `i` of a host float32/float16/bfloat16 array.
inline double load_value(const void* base, DType dtype, std::int64_t i) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(base)[i];
    case DType::kFloat16: return detail::half_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case DType::kBFloat16: return detail::bf16_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case DType::kUInt8: return static_cast<const std::uint8_t*>(base)[i];
    case DType::kInt32: return static_cast<const std::int32_t*>(base)[i];
    case DType::kInt64: return static_cast<double>(static_cast<const std::int64_t*>(base)[i]);
  }
  return 0.0;
}

/// The byte a poisoned fp8 element holds: 0x7F is NaN in both E4M3 and E5M2.
inline constexpr std::uint8_t kFp8NaN = 0x7F;

/// Writes NaN into element `i` (fp8 caches, stored as kUInt8: the NaN code 0x7F).
inline void poison_elem(void* base, DType dtype, std::int64_t i) {
  if (dtype == DType::kUInt8) {
    static_cast<std::uint8_t*>(base)[i] = kFp8NaN;
    return;
  }
  store_value(base, dtype, i, std::numeric_limits<double>::quiet_NaN());
}

/// Poisons `count` elements starting at element 0.
inline void poison(void* base, DType dtype, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) poison_elem(base, dtype, i);
}

/// Fills `count` elements with uniform values in [lo, hi), rounded to `dtype`. For kUInt8
/// (an fp8 cache) pass `fp8` to encode the values in that format (saturating).
inline void fill_uniform(void* base, DType dtype, std::int64_t count, double lo, double hi, Rng& rng,
                         CacheDType fp8 = CacheDType::kAuto) {
  for (std::int64_t i = 0; i < count; ++i) {
    const double v = rng.uniform(lo, hi);
    if (dtype == DType::kUInt8 && fp8 != CacheDType::kAuto)
      static_cast<std::uint8_t*>(base)[i] = float_to_fp8(static_cast<float>(v), fp8);
    else
      store_value(base, dtype, i, v);
  }
}

// ---------------------------------------------------------------------------------------
// Host tensors
// ---------------------------------------------------------------------------------------

/// An owning host buffer plus a (possibly strided, possibly offset) view into it. Copies
/// rebind the view to the copy's storage.
struct HostTensor {
  std::vector<std::uint8_t> storage;  ///< all bytes of the allocation, padding included
  std::size_t offset_bytes = 0;       ///< where view.data starts inside storage
  TensorView view;                    ///< view.data == storage.data() + offset_bytes (or null)

  HostTensor() = default;
  HostTensor(const HostTensor& o) : storage(o.storage), offset_bytes(o.offset_bytes), view(o.view) { rebind(); }
  HostTensor& operator=(const HostTensor& o) {
    storage = o.storage;
    offset_bytes = o.offset_bytes;
    view = o.view;
    rebind();
    return *this;
  }
  HostTensor(HostTensor&&) noexcept = default;  // vector moves keep their heap pointer
  HostTensor& operator=(HostTensor&&) noexcept = default;

  void rebind() { view.data = storage.empty() ? nullptr : storage.data() + offset_bytes; }
  /// Element count of the whole allocation (in the view's dtype).
  std::int64_t alloc_elems() const { return static_cast<std::int64_t>(storage.size() / dtype_size(view.dtype)); }
  /// The allocation's base pointer typed as the view's elements start (element 0 of storage).
  void* base() { return storage.data(); }
  /// The same view over another copy of the storage (e.g. device memory at `device_base`).
  TensorView device_view(void* device_base, Device device) const {
    TensorView t = view;
    t.data = storage.empty() ? nullptr : static_cast<std::uint8_t*>(device_base) + offset_bytes;
    t.device = device;
    return t;
  }
};

/// Advises the 2 MiB-aligned interior of a large host allocation as transparent huge pages
/// (a cache read page by page from scattered places misses the TLB far less; advice only,
/// ignored where THP is off). The allocation stays a std::vector, whose resize has already
/// zero-filled it with small pages: the advice lets khugepaged collapse them (the bench, whose
/// KV pools are large, advises its pools before first touch: tools/bench_cpu.cpp).
inline void advise_huge_pages(void* p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t(2) << 20;
  if (bytes < 2 * kHuge) return;
  const std::uintptr_t lo = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t hi = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

/// A packed row-major tensor, zero-filled.
inline HostTensor make_tensor(DType dtype, std::initializer_list<std::int64_t> shape) {
  HostTensor h;
  h.view = TensorView::contiguous(nullptr, dtype, shape);
  h.storage.assign(static_cast<std::size_t>(std::max<std::int64_t>(h.view.numel(), 1)) * dtype_size(dtype), 0);
  h.rebind();
  return h;
}

/// A strided view over an allocation of `alloc_elems` elements, starting at element `offset`.
inline HostTensor make_strided(DType dtype, std::initializer_list<std::int64_t> shape,
                               std::initializer_list<std::int64_t> strides, std::int64_t alloc_elems,
                               std::int64_t offset = 0) {
  HostTensor h;
  h.view = TensorView::strided(nullptr, dtype, shape, strides);
  h.storage.assign(static_cast<std::size_t>(std::max<std::int64_t>(alloc_elems, 1)) * dtype_size(dtype), 0);
  advise_huge_pages(h.storage.data(), h.storage.size());
  h.offset_bytes = static_cast<std::size_t>(offset) * dtype_size(dtype);
  h.rebind();
  return h;
}

// ---------------------------------------------------------------------------------------
// Random paged-attention problems
// ---------------------------------------------------------------------------------------

/// What build_problem() makes. Defaults: a small valid float32 MHA problem.
struct ProblemConfig {
  int num_seqs = 2;
  int num_heads = 4;
  int num_kv_heads = 4;
  int head_size = 64;
  int block_size = 16;
  DType dtype = DType::kFloat32;                  ///< query/out dtype (and cache dtype for kAuto)
  CacheDType kv_cache_dtype = CacheDType::kAuto;
  std::vector<int> seq_lens;                      ///< explicit lengths (sets num_seqs); empty: random in [min_len, max_len]
  int min_len = 1;
  int max_len = 100;
  int max_seq_len = -1;                           ///< passed to params; -1: the largest seq_len
  int extra_blocks = 3;                           ///< unreferenced physical blocks (poisoned)
  int extra_table_cols = 1;                       ///< block_tables columns beyond the longest sequence
  std::int32_t table_pad = -1;                    ///< value of block_tables entries past a sequence's end
  std::int64_t q_row_pad = 0;                     ///< query stride(0) = num_heads*head_size + q_row_pad
  std::int64_t bt_row_pad = 0;                    ///< block_tables stride(0) = cols + bt_row_pad
  bool cache_views = false;                       ///< caches are views with padded head/block strides and an offset
  bool permute_blocks = true;                     ///< physical ids are a random permutation (else 0, 1, 2, ...)
  bool alibi = false;
  float scale = 0.0f;                             ///< 0: 1/sqrt(head_size)
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  int tp_rank = 0;
  BlockSparseParams blocksparse{};
  double q_range = 1.0;                           ///< query values uniform in [-q_range, q_range)
  double kv_range = 1.0;                          ///< cache values (before fp8 scaling) in [-kv_range, kv_range)
  /// Also poison each (block, kv head) that block-sparsity masks for every query head of that
  /// kv head, so a kernel that reads a masked block produces NaN.
  bool poison_masked = false;
  bool checked = true;
  // ---- variants (SPEC §3b)
  std::vector<int> q_lens;     ///< query tokens per sequence (sets query_start_loc); empty: one each, no query_start_loc
  int window_left = -1;
  float logits_soft_cap = 0.0f;
  bool lse = false;            ///< ask for the lse output (NaN-poisoned)
  bool per_head_scales = false;  ///< fp8: random k_scales / v_scales per kv head instead of k_scale / v_scale
};

/// Host buffers of one problem and the params pointing at them. Copyable (views rebind).
struct HostProblem {
  ProblemConfig cfg;
  std::int64_t num_blocks = 0;
  int max_blocks_per_seq = 0;  ///< block_tables columns
  int x = 0;                   ///< 16 / sizeof(cache element)
  HostTensor query, out, key_cache, value_cache, block_tables, seq_lens, alibi_slopes;
  HostTensor query_start_loc, lse, k_scales, v_scales;  ///< variants; empty when not asked for
  int num_rows = 0;  ///< query rows: sum of q_lens, or num_seqs
  PagedAttentionParams params;

  HostProblem() = default;
  HostProblem(const HostProblem& o) { *this = o; }
  HostProblem& operator=(const HostProblem& o) {
    cfg = o.cfg;
    num_blocks = o.num_blocks;
    max_blocks_per_seq = o.max_blocks_per_seq;
    x = o.x;
    query = o.query;
    out = o.out;
    key_cache = o.key_cache;
    value_cache = o.value_cache;
    block_tables = o.block_tables;
    seq_lens = o.seq_lens;
    alibi_slopes = o.alibi_slopes;
    query_start_loc = o.query_start_loc;
    lse = o.lse;
    k_scales = o.k_scales;
    v_scales = o.v_scales;
    num_rows = o.num_rows;
    params = o.params;
    rebind();
    return *this;
  }
  HostProblem(HostProblem&&) noexcept = default;
  HostProblem& operator=(HostProblem&&) noexcept = default;

  /// Points params' views at this object's buffers.
  void rebind() {
    params.query = query.view;
    params.out = out.view;
    params.key_cache = key_cache.view;
    params.value_cache = value_cache.view;
    params.block_tables = block_tables.view;
    params.seq_lens = seq_lens.view;
    params.alibi_slopes = cfg.alibi ? alibi_slopes.view : TensorView{};
    params.query_start_loc = cfg.q_lens.empty() ? TensorView{} : query_start_loc.view;
    params.lse = cfg.lse ? lse.view : TensorView{};
    params.k_scales = cfg.per_head_scales ? k_scales.view : TensorView{};
    params.v_scales = cfg.per_head_scales ? v_scales.view : TensorView{};
  }
  /// q_len of sequence i (1 without query_start_loc).
  int q_len(int i) const {
    if (cfg.q_lens.empty()) return 1;
    const auto* qsl = static_cast<const std::int32_t*>(query_start_loc.view.data);
    return qsl[i + 1] - qsl[i];
  }
  /// Reads lse as doubles, [num_rows, num_heads].
  std::vector<double> lse_values() const {
    std::vector<double> r(static_cast<std::size_t>(lse.view.numel()));
    for (std::size_t i = 0; i < r.size(); ++i) r[i] = static_cast<const float*>(lse.view.data)[i];
    return r;
  }

  int seq_len(int i) const { return static_cast<const std::int32_t*>(seq_lens.view.data)[i]; }
  std::int32_t& table(int i, int b) {
    return static_cast<std::int32_t*>(block_tables.view.data)[i * block_tables.view.strides[0] + b];
  }
  DType cache_storage() const { return key_cache.view.dtype; }
  /// Element offset of key element d of token slot o in physical block pb, kv head g.
  std::int64_t key_offset(std::int64_t pb, int g, int d, int o) const {
    const auto& k = key_cache.view;
    return pb * k.strides[0] + g * k.strides[1] + (d / x) * k.strides[2] + o * k.strides[3] + (d % x);
  }
  std::int64_t value_offset(std::int64_t pb, int g, int d, int o) const {
    const auto& v = value_cache.view;
    return pb * v.strides[0] + g * v.strides[1] + d * v.strides[2] + o;
  }

  /// V2 workspace buffers for `max_num_partitions` (default: what max_seq_len needs), NaN-poisoned.
  struct Workspace {
    HostTensor exp_sums, max_logits, tmp_out;
    V2Workspace views() const { return V2Workspace{exp_sums.view, max_logits.view, tmp_out.view}; }
  };
  Workspace make_workspace(int max_num_partitions = 0) const {
    const int parts = max_num_partitions > 0 ? max_num_partitions : v2_max_num_partitions(params.max_seq_len);
    Workspace w;
    w.exp_sums = make_tensor(DType::kFloat32, {cfg.num_seqs, cfg.num_heads, parts});
    w.max_logits = make_tensor(DType::kFloat32, {cfg.num_seqs, cfg.num_heads, parts});
    w.tmp_out = make_tensor(cfg.dtype, {cfg.num_seqs, cfg.num_heads, parts, cfg.head_size});
    poison(w.exp_sums.base(), DType::kFloat32, w.exp_sums.alloc_elems());
    poison(w.max_logits.base(), DType::kFloat32, w.max_logits.alloc_elems());
    poison(w.tmp_out.base(), cfg.dtype, w.tmp_out.alloc_elems());
    return w;
  }

  /// Reads out as doubles, [num_seqs, num_heads, head_size] row-major.
  std::vector<double> out_values() const {
    std::vector<double> r(static_cast<std::size_t>(out.view.numel()));
    for (std::size_t i = 0; i < r.size(); ++i) r[i] = load_value(out.view.data, cfg.dtype, std::int64_t(i));
    return r;
  }
};

/// Builds a random problem per `cfg` (see ProblemConfig). out is NaN-poisoned.
inline HostProblem build_problem(const ProblemConfig& cfg, Rng& rng) {
  HostProblem pb;
  pb.cfg = cfg;
  if (!cfg.seq_lens.empty()) pb.cfg.num_seqs = static_cast<int>(cfg.seq_lens.size());  // explicit lengths win
  const int S = pb.cfg.num_seqs, H = cfg.num_heads, KVH = cfg.num_kv_heads, D = cfg.head_size, BS = cfg.block_size;
  const bool fp8 = cfg.kv_cache_dtype != CacheDType::kAuto;
  const DType storage = fp8 ? DType::kUInt8 : cfg.dtype;
  pb.x = static_cast<int>(16 / dtype_size(storage));

  // Lengths and block counts.
  std::vector<int> lens = cfg.seq_lens;
  if (lens.empty())
    for (int i = 0; i < S; ++i) lens.push_back(static_cast<int>(rng.randint(cfg.min_len, cfg.max_len)));
  lens.resize(static_cast<std::size_t>(S), 0);
  const bool multi = !cfg.q_lens.empty();
  if (multi) {  // a sequence's new tokens are in its cache: seq_len >= q_len
    pb.cfg.q_lens.resize(static_cast<std::size_t>(S), 1);
    for (int i = 0; i < S; ++i) lens[i] = std::max(lens[i], pb.cfg.q_lens[i]);
  }
  pb.num_rows = S;
  if (multi) {
    pb.num_rows = 0;
    pb.query_start_loc = make_tensor(DType::kInt32, {S + 1});
    auto* qsl = static_cast<std::int32_t*>(pb.query_start_loc.view.data);
    qsl[0] = 0;
    for (int i = 0; i < S; ++i) qsl[i + 1] = qsl[i] + pb.cfg.q_lens[i];
    pb.num_rows = qsl[S];
  }
  const int R = pb.num_rows;
  const int longest = lens.empty() ? 0 : *std::max_element(lens.begin(), lens.end());
  std::vector<int> nblk(lens.size());
  std::int64_t used = 0;
  for (std::size_t i = 0; i < lens.size(); ++i) used += nblk[i] = (lens[i] + BS - 1) / BS;
  pb.num_blocks = used + cfg.extra_blocks;
  pb.max_blocks_per_seq = (longest + BS - 1) / BS + cfg.extra_table_cols;

  pb.seq_lens = make_tensor(DType::kInt32, {S});
  for (int i = 0; i < S; ++i) static_cast<std::int32_t*>(pb.seq_lens.view.data)[i] = lens[i];

  // Block tables: a permutation of the physical blocks, dealt to the sequences in order.
  const std::int64_t cols = pb.max_blocks_per_seq, bt_stride = cols + cfg.bt_row_pad;
  pb.block_tables = make_strided(DType::kInt32, {S, cols}, {bt_stride, 1}, std::max<std::int64_t>(S * bt_stride, 1));
  std::vector<std::int32_t> ids(static_cast<std::size_t>(pb.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  if (cfg.permute_blocks) rng.shuffle(ids.begin(), ids.end());
  {
    auto* bt = static_cast<std::int32_t*>(pb.block_tables.base());
    std::fill(bt, bt + pb.block_tables.alloc_elems(), cfg.table_pad);
    std::size_t next = 0;
    for (int i = 0; i < S; ++i)
      for (int b = 0; b < nblk[i]; ++b) bt[i * bt_stride + b] = ids[next++];
  }

  // Query (rows possibly padded), out (poisoned).
  const std::int64_t q_stride = std::int64_t(H) * D + cfg.q_row_pad;
  pb.query = make_strided(cfg.dtype, {R, H, D}, {q_stride, D, 1}, std::max<std::int64_t>(R * q_stride, 1));
  poison(pb.query.base(), cfg.dtype, pb.query.alloc_elems());
  for (int i = 0; i < R; ++i)
    for (std::int64_t e = 0; e < std::int64_t(H) * D; ++e)
      store_value(pb.query.view.data, cfg.dtype, i * q_stride + e, rng.uniform(-cfg.q_range, cfg.q_range));
  pb.out = make_tensor(cfg.dtype, {R, H, D});
  poison(pb.out.base(), cfg.dtype, pb.out.alloc_elems());
  pb.lse = make_tensor(DType::kFloat32, {R, H});
  poison(pb.lse.base(), DType::kFloat32, pb.lse.alloc_elems());
  // per-kv-head scales: powers of two times a random factor, so encode/decode round trips stay meaningful
  pb.k_scales = make_tensor(DType::kFloat32, {KVH});
  pb.v_scales = make_tensor(DType::kFloat32, {KVH});
  for (int g = 0; g < KVH; ++g) {
    store_value(pb.k_scales.view.data, DType::kFloat32, g, rng.uniform(0.25, 2.0));
    store_value(pb.v_scales.view.data, DType::kFloat32, g, rng.uniform(0.25, 2.0));
  }

  // Caches: inner [D/x, BS, x] / [D, BS] packed; heads and blocks optionally padded.
  const std::int64_t chunks = (D + pb.x - 1) / pb.x;  // ceil: fp8 head_size 120 has 8 chunks of 16
  const std::int64_t inner = chunks * pb.x * BS;       // >= the value cache's D * BS
  const std::int64_t head_pad = cfg.cache_views ? 3 * pb.x : 0;
  const std::int64_t block_pad = cfg.cache_views ? 5 * pb.x : 0;
  const std::int64_t lead = cfg.cache_views ? pb.x : 0;  // view starts 16 bytes in (GPU loads need 16-byte alignment)
  const std::int64_t hs = inner + head_pad, bs_stride = KVH * hs + block_pad;
  const std::int64_t alloc = lead + pb.num_blocks * bs_stride + head_pad;
  pb.key_cache = make_strided(storage, {pb.num_blocks, KVH, chunks, BS, pb.x},
                              {bs_stride, hs, std::int64_t(BS) * pb.x, pb.x, 1}, alloc, lead);
  pb.value_cache = make_strided(storage, {pb.num_blocks, KVH, D, BS}, {bs_stride, hs, BS, 1}, alloc, lead);
  poison(pb.key_cache.base(), storage, alloc);
  poison(pb.value_cache.base(), storage, alloc);
  auto random_cache_value = [&](void* base, std::int64_t off) {
    const double v = rng.uniform(-cfg.kv_range, cfg.kv_range);
    if (fp8)
      static_cast<std::uint8_t*>(base)[off] = float_to_fp8(static_cast<float>(v), cfg.kv_cache_dtype);
    else
      store_value(base, storage, off, v);
  };

  pb.alibi_slopes = make_tensor(DType::kFloat32, {H});
  for (int h = 0; h < H; ++h) store_value(pb.alibi_slopes.view.data, DType::kFloat32, h, rng.uniform(0.0, 0.5));

  PagedAttentionParams& p = pb.params;
  p.num_kv_heads = KVH;
  p.scale = cfg.scale != 0.0f ? cfg.scale : static_cast<float>(1.0 / std::sqrt(double(D)));
  p.block_size = BS;
  p.max_seq_len = cfg.max_seq_len >= 0 ? cfg.max_seq_len : longest;
  p.kv_cache_dtype = cfg.kv_cache_dtype;
  p.k_scale = cfg.k_scale;
  p.v_scale = cfg.v_scale;
  p.tp_rank = cfg.tp_rank;
  p.blocksparse = cfg.blocksparse;
  p.checked = cfg.checked;
  p.window_left = cfg.window_left;
  p.logits_soft_cap = cfg.logits_soft_cap;
  if (cfg.per_head_scales) p.k_scale = p.v_scale = 1.0f;
  pb.rebind();

  // Fill the used slots of every referenced block; everything else stays NaN.
  const int group = H / KVH;
  for (int i = 0; i < S; ++i) {
    for (int b = 0; b < nblk[i]; ++b) {
      const std::int64_t phys = pb.table(i, b);
      const int valid_slots = std::min(BS, lens[i] - b * BS);
      for (int g = 0; g < KVH; ++g) {
        const int first_pos = lens[i] - (multi ? pb.cfg.q_lens[i] : 1);  // position of the sequence's first query row
        // A block wholly before every row's window is never to be read: poison it too.
        if (cfg.poison_masked && cfg.window_left >= 0 && (b + 1) * BS <= first_pos - cfg.window_left) continue;
        bool masked_for_all = cfg.poison_masked && cfg.blocksparse.enabled();
        if (masked_for_all) {
          // Same rule as SPEC §3 (query block of the earliest row: local for one row is local
          // for some), evaluated here independently of the reference.
          const auto& s = cfg.blocksparse;
          const std::int64_t qb = std::int64_t(first_pos) / s.block_size, kb = std::int64_t(b) * BS / s.block_size;
          for (int h = g * group; h < (g + 1) * group && masked_for_all; ++h) {
            const std::int64_t off = s.head_sliding_step >= 0
                                         ? (std::int64_t(cfg.tp_rank) * H + h) * s.head_sliding_step + 1
                                         : (std::int64_t(cfg.tp_rank) * KVH + g) * -std::int64_t(s.head_sliding_step) + 1;
            if (kb > qb - s.local_blocks || (kb + off) % s.vert_stride == 0) masked_for_all = false;
          }
        }
        if (masked_for_all) continue;
        for (int o = 0; o < valid_slots; ++o)
          for (int d = 0; d < D; ++d) {
            random_cache_value(pb.key_cache.base(), lead + pb.key_offset(phys, g, d, o));
            random_cache_value(pb.value_cache.base(), lead + pb.value_offset(phys, g, d, o));
          }
      }
    }
  }
  return pb;
}

// ---------------------------------------------------------------------------------------
// Error paths
// ---------------------------------------------------------------------------------------
inline const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::kInvalidArgument: return "kInvalidArgument";
    case ErrorCode::kUnsupported: return "kUnsupported";
    case ErrorCode::kDataError: return "kDataError";
    case ErrorCode::kBackendError: return "kBackendError";
  }
  return "?";
}

/// Runs `f`, expects a pagedattn::Error with `code` whose message contains every needle.
inline void expect_error(const std::function<void()>& f, ErrorCode code, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "no error thrown; expected " << error_code_name(code);
  } catch (const Error& e) {
    EXPECT_EQ(error_code_name(e.code()), std::string(error_code_name(code))) << e.what();
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "'" << n << "' not in: " << e.what();
  }
}
/// One needle (a template so that a braced list of needles always picks the overload above).
template <class S, class = std::enable_if_t<std::is_convertible_v<const S&, std::string>>>
void expect_error(const std::function<void()>& f, ErrorCode code, const S& needle) {
  expect_error(f, code, std::vector<std::string>{std::string(needle)});
}


}  // namespace pagedattn::test
