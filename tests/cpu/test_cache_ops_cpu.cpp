// Cache operations on host tensors (SPEC §6): reshape_and_cache against a direct
// computation, copy_blocks over several layers, swap_blocks CPU<->CPU, and every
// validation / checked-mode error with its message.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "common/test_util.h"
#include "core/check.h"
#include "pagedattn/cache_ops.h"
#include "pagedattn/fp8.h"

namespace pagedattn {
namespace {

using test::HostTensor;
using test::make_strided;
using test::make_tensor;

using test::expect_error;

void fill_bytes(HostTensor& t, test::Rng& rng) {
  for (auto& b : t.storage) b = static_cast<std::uint8_t>(rng.randint(0, 255));
}

/// A reshape_and_cache problem: random key/value, caches full of random bytes (so untouched
/// slots are recognisable), a slot mapping with padding entries.
struct ReshapeCase {
  int num_tokens = 0, kvh = 0, d = 0, bs = 0;
  std::int64_t num_blocks = 0;
  int x = 0;
  DType t = DType::kFloat32;
  CacheDType cd = CacheDType::kAuto;
  HostTensor key, value, key_cache, value_cache, slots;
  ReshapeAndCacheParams params() {
    ReshapeAndCacheParams p;
    p.key = key.view;
    p.value = value.view;
    p.key_cache = key_cache.view;
    p.value_cache = value_cache.view;
    p.slot_mapping = slots.view;
    p.kv_cache_dtype = cd;
    p.checked = true;
    return p;
  }
};

ReshapeCase make_reshape_case(DType t, CacheDType cd, int d, bool views, test::Rng& rng) {
  ReshapeCase c;
  c.num_tokens = 20;
  c.kvh = 2;
  c.d = d;
  c.bs = 8;
  c.num_blocks = 6;
  c.t = t;
  c.cd = cd;
  const DType storage = cd == CacheDType::kAuto ? t : DType::kUInt8;
  c.x = static_cast<int>(16 / dtype_size(storage));
  const std::int64_t row = std::int64_t(c.kvh) * d, key_stride = views ? row + 7 : row;
  c.key = make_strided(t, {c.num_tokens, c.kvh, d}, {key_stride, d, 1}, c.num_tokens * key_stride);
  c.value = make_tensor(t, {c.num_tokens, c.kvh, d});
  // Inputs up to +-300: with scale 0.25 an fp8 E4M3 cache saturates (|x / scale| > 448).
  test::fill_uniform(c.key.base(), t, c.key.alloc_elems(), -300, 300, rng);
  test::fill_uniform(c.value.base(), t, c.value.alloc_elems(), -300, 300, rng);
  const std::int64_t inner = std::int64_t(d) * c.bs;
  const std::int64_t hs = views ? inner + 3 * c.x : inner, blk = c.kvh * hs + (views ? c.x : 0);
  const std::int64_t alloc = c.num_blocks * blk + 5;
  c.key_cache = make_strided(storage, {c.num_blocks, c.kvh, d / c.x, c.bs, c.x},
                             {blk, hs, std::int64_t(c.bs) * c.x, c.x, 1}, alloc, views ? 5 : 0);
  c.value_cache = make_strided(storage, {c.num_blocks, c.kvh, d, c.bs}, {blk, hs, c.bs, 1}, alloc, views ? 5 : 0);
  fill_bytes(c.key_cache, rng);
  fill_bytes(c.value_cache, rng);
  // Distinct slots for the real tokens, -1 for every fourth (padding).
  std::vector<std::int64_t> all(static_cast<std::size_t>(c.num_blocks * c.bs));
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = std::int64_t(i);
  rng.shuffle(all.begin(), all.end());
  c.slots = make_tensor(DType::kInt64, {c.num_tokens});
  auto* s = static_cast<std::int64_t*>(c.slots.view.data);
  for (int i = 0; i < c.num_tokens; ++i) s[i] = (i % 4 == 3) ? -1 : all[i];
  return c;
}

/// The caches reshape_and_cache must produce, computed element by element; kv head g of an
/// fp8 cache is encoded with k_scales[g] / v_scales[g].
void expected_caches(const ReshapeCase& c, const std::vector<float>& k_scales, const std::vector<float>& v_scales,
                     HostTensor& kc, HostTensor& vc) {
  const auto* s = static_cast<const std::int64_t*>(c.slots.view.data);
  const std::size_t es_in = dtype_size(c.t);
  const std::size_t es_c = dtype_size(kc.view.dtype);
  for (int i = 0; i < c.num_tokens; ++i) {
    if (s[i] < 0) continue;
    const std::int64_t blk = s[i] / c.bs, off = s[i] % c.bs;
    for (int g = 0; g < c.kvh; ++g)
      for (int d = 0; d < c.d; ++d) {
        const std::int64_t ki = i * c.key.view.strides[0] + g * c.d + d;
        const std::int64_t vi = i * c.value.view.strides[0] + g * c.d + d;
        const std::int64_t kdst = blk * kc.view.strides[0] + g * kc.view.strides[1] + (d / c.x) * kc.view.strides[2] +
                                  off * c.x + d % c.x;
        const std::int64_t vdst = blk * vc.view.strides[0] + g * vc.view.strides[1] + d * c.bs + off;
        auto* kb = static_cast<std::uint8_t*>(kc.view.data);
        auto* vb = static_cast<std::uint8_t*>(vc.view.data);
        if (c.cd == CacheDType::kAuto) {  // the element, bit for bit
          std::memcpy(kb + kdst * es_c, static_cast<const std::uint8_t*>(c.key.view.data) + ki * es_in, es_in);
          std::memcpy(vb + vdst * es_c, static_cast<const std::uint8_t*>(c.value.view.data) + vi * es_in, es_in);
        } else {  // SPEC §6: encode(x / scale), in float
          const float kx = static_cast<float>(test::load_value(c.key.view.data, c.t, ki));
          const float vx = static_cast<float>(test::load_value(c.value.view.data, c.t, vi));
          kb[kdst] = float_to_fp8(kx / k_scales[g], c.cd);
          vb[vdst] = float_to_fp8(vx / v_scales[g], c.cd);
        }
      }
  }
}

TEST(CpuCacheOps, ReshapeAndCacheEveryDtype) {
  PAGEDATTN_TEST_RNG(rng);
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (CacheDType cd : {CacheDType::kAuto, CacheDType::kFp8E4M3, CacheDType::kFp8E5M2})
      for (bool views : {false, true}) {
        SCOPED_TRACE(detail::cat(dtype_name(t), " / ", cache_dtype_name(cd), views ? " / views" : ""));
        ReshapeCase c = make_reshape_case(t, cd, views ? 80 : 64, views, rng);
        ReshapeAndCacheParams p = c.params();
        if (cd != CacheDType::kAuto) {
          p.k_scale = 0.25f;
          p.v_scale = 3.0f;
        }
        HostTensor kc = c.key_cache, vc = c.value_cache;
        expected_caches(c, std::vector<float>(c.kvh, p.k_scale), std::vector<float>(c.kvh, p.v_scale), kc, vc);
        reshape_and_cache(p);
        // Whole allocations, so untouched slots (padding tokens included) are checked too.
        EXPECT_TRUE(kc.storage == c.key_cache.storage) << "key cache differs";
        EXPECT_TRUE(vc.storage == c.value_cache.storage) << "value cache differs";
      }
}

// Per-kv-head scales (SPEC §3b): kv head g is stored as encode(x / k_scales[g]) (the bytes,
// whole allocations compared), and decoding times the same scale gives x back within the
// format's rounding (half a unit in the last place: 2^-4 relative for E4M3, 2^-3 for E5M2,
// or the subnormal spacing near zero) unless x / scale saturates.
TEST(CpuCacheOps, ReshapeAndCachePerHeadScales) {
  PAGEDATTN_TEST_RNG(rng);
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (CacheDType cd : {CacheDType::kFp8E4M3, CacheDType::kFp8E5M2})
      for (bool views : {false, true}) {
        SCOPED_TRACE(detail::cat(dtype_name(t), " / ", cache_dtype_name(cd), views ? " / views" : ""));
        ReshapeCase c = make_reshape_case(t, cd, views ? 80 : 64, views, rng);
        // distinct per head, and far enough apart that one head's scale would give other bytes
        std::vector<float> ks(c.kvh), vs(c.kvh);
        for (int g = 0; g < c.kvh; ++g) {
          ks[g] = static_cast<float>(rng.uniform(0.75, 1.25) * (g + 1));
          vs[g] = static_cast<float>(rng.uniform(0.75, 1.25) * (3 - g));
        }
        HostTensor k_scales = make_tensor(DType::kFloat32, {c.kvh}), v_scales = make_tensor(DType::kFloat32, {c.kvh});
        std::memcpy(k_scales.view.data, ks.data(), sizeof(float) * ks.size());
        std::memcpy(v_scales.view.data, vs.data(), sizeof(float) * vs.size());
        ReshapeAndCacheParams p = c.params();
        p.k_scales = k_scales.view;
        p.v_scales = v_scales.view;
        HostTensor kc = c.key_cache, vc = c.value_cache;
        expected_caches(c, ks, vs, kc, vc);
        reshape_and_cache(p);
        EXPECT_TRUE(kc.storage == c.key_cache.storage) << "key cache differs";
        EXPECT_TRUE(vc.storage == c.value_cache.storage) << "value cache differs";

        // Round trip through the cache's layout.
        const double rel = cd == CacheDType::kFp8E4M3 ? 1.0 / 16 : 1.0 / 8;
        const double sub = cd == CacheDType::kFp8E4M3 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -17);
        const double max_finite = cd == CacheDType::kFp8E4M3 ? 448.0 : 57344.0;
        const auto* slots = static_cast<const std::int64_t*>(c.slots.view.data);
        const auto& kv = c.key_cache.view;
        const auto& vv = c.value_cache.view;
        int bad = 0, checked = 0;
        for (int i = 0; i < c.num_tokens; ++i) {
          if (slots[i] < 0) continue;
          const std::int64_t blk = slots[i] / c.bs, off = slots[i] % c.bs;
          for (int g = 0; g < c.kvh; ++g)
            for (int d = 0; d < c.d; ++d) {
              const std::int64_t kdst =
                  blk * kv.strides[0] + g * kv.strides[1] + (d / c.x) * kv.strides[2] + off * c.x + d % c.x;
              const std::int64_t vdst = blk * vv.strides[0] + g * vv.strides[1] + d * c.bs + off;
              const std::pair<double, double> pairs[] = {
                  {test::load_value(c.key.view.data, t, i * c.key.view.strides[0] + g * c.d + d),
                   double(fp8_to_float(static_cast<const std::uint8_t*>(kv.data)[kdst], cd)) * ks[g]},
                  {test::load_value(c.value.view.data, t, i * c.value.view.strides[0] + g * c.d + d),
                   double(fp8_to_float(static_cast<const std::uint8_t*>(vv.data)[vdst], cd)) * vs[g]},
              };
              for (int kvi = 0; kvi < 2; ++kvi) {
                const auto [x, back] = pairs[kvi];
                const double scale = kvi == 0 ? ks[g] : vs[g];
                if (std::abs(x / scale) > max_finite) continue;  // saturates (checked bytewise above)
                ++checked;
                if (!(std::abs(back - x) <= rel * std::abs(x) + sub * scale) && ++bad <= 5)
                  ADD_FAILURE() << (kvi == 0 ? "key" : "value") << " token " << i << " head " << g << " d " << d
                                << ": stored " << x << " decodes to " << back << " (scale " << scale << ")";
              }
            }
        }
        EXPECT_GT(checked, 0);
        EXPECT_EQ(bad, 0);
      }
}

TEST(CpuCacheOps, ReshapeAndCacheErrors) {
  PAGEDATTN_TEST_RNG(rng);
  ReshapeCase c = make_reshape_case(DType::kFloat16, CacheDType::kFp8E4M3, 64, false, rng);
  const std::vector<std::uint8_t> before = c.key_cache.storage;
  {  // checked: a slot past the cache, nothing written
    static_cast<std::int64_t*>(c.slots.view.data)[5] = c.num_blocks * c.bs;
    expect_error([&] { reshape_and_cache(c.params()); }, ErrorCode::kDataError,
                 "slot_mapping[5] = 48 is outside the cache; slots must be < num_blocks * block_size = 6 * 8 = 48");
    EXPECT_TRUE(before == c.key_cache.storage) << "cache written despite the error";
    static_cast<std::int64_t*>(c.slots.view.data)[5] = -7;  // any negative value is padding
    EXPECT_NO_THROW(reshape_and_cache(c.params()));
  }
  {
    ReshapeAndCacheParams p = c.params();
    p.kv_cache_dtype = CacheDType::kAuto;  // caches hold bytes, auto wants float16
    expect_error([&] { reshape_and_cache(p); }, ErrorCode::kInvalidArgument, "key_cache has dtype uint8");
  }
  {
    ReshapeAndCacheParams p = c.params();
    p.k_scale = 0.0f;
    expect_error([&] { reshape_and_cache(p); }, ErrorCode::kInvalidArgument, "nonzero scales");
  }
  {
    ReshapeAndCacheParams p = c.params();
    p.slot_mapping.dtype = DType::kInt32;
    expect_error([&] { reshape_and_cache(p); }, ErrorCode::kInvalidArgument, "slot_mapping has dtype int32");
  }
#ifndef PAGEDATTN_WITH_CUDA
  {
    ReshapeAndCacheParams p = c.params();
    for (TensorView* t : {&p.key, &p.value, &p.key_cache, &p.value_cache, &p.slot_mapping})
      t->device = Device{DeviceType::kCUDA, 0};
    expect_error([&] { reshape_and_cache(p); }, ErrorCode::kBackendError, "no CUDA backend");
  }
#endif
}

/// Layer caches for copy_blocks: key [nb, 2, 4, 8, 2] and value [nb, 2, 8, 8] float32, random.
struct Layers {
  std::vector<HostTensor> k, v;
  HostTensor mapping;
  CopyBlocksParams params() {
    CopyBlocksParams p;
    for (auto& t : k) p.key_caches.push_back(t.view);
    for (auto& t : v) p.value_caches.push_back(t.view);
    p.block_mapping = mapping.view;
    p.checked = true;
    return p;
  }
};

Layers make_layers(int layers, std::int64_t nb, const std::vector<std::int64_t>& pairs, test::Rng& rng) {
  Layers L;
  for (int l = 0; l < layers; ++l) {
    // Layer 1's caches are views with padded block/head strides.
    if (l == 1) {
      L.k.push_back(make_strided(DType::kFloat32, {nb, 2, 4, 8, 2}, {160, 70, 16, 2, 1}, nb * 160));
      L.v.push_back(make_strided(DType::kFloat32, {nb, 2, 8, 8}, {150, 64, 8, 1}, nb * 150));
    } else {
      L.k.push_back(make_tensor(DType::kFloat32, {nb, 2, 4, 8, 2}));
      L.v.push_back(make_tensor(DType::kFloat32, {nb, 2, 8, 8}));
    }
    test::fill_uniform(L.k.back().base(), DType::kFloat32, L.k.back().alloc_elems(), -1, 1, rng);
    test::fill_uniform(L.v.back().base(), DType::kFloat32, L.v.back().alloc_elems(), -1, 1, rng);
  }
  L.mapping = make_tensor(DType::kInt64, {static_cast<std::int64_t>(pairs.size() / 2), 2});
  std::copy(pairs.begin(), pairs.end(), static_cast<std::int64_t*>(L.mapping.view.data));
  return L;
}

/// Copies block src to dst of `t` element by element (the expected result).
void copy_block_slow(HostTensor& t, std::int64_t src, std::int64_t dst) {
  const TensorView& v = t.view;
  std::int64_t inner = 1;
  for (int d = 2; d < v.ndim; ++d) inner *= v.shape[d];
  auto* f = static_cast<float*>(v.data);
  for (std::int64_t h = 0; h < v.shape[1]; ++h)
    for (std::int64_t e = 0; e < inner; ++e) f[dst * v.strides[0] + h * v.strides[1] + e] = f[src * v.strides[0] + h * v.strides[1] + e];
}

TEST(CpuCacheOps, CopyBlocksEveryLayer) {
  PAGEDATTN_TEST_RNG(rng);
  const std::vector<std::int64_t> pairs = {0, 3, 2, 5, 3, 1, 4, 4};  // (3 -> 1) reads the earlier copy's dst
  Layers L = make_layers(3, 6, pairs, rng);
  Layers want = L;
  for (std::size_t l = 0; l < want.k.size(); ++l)
    for (std::size_t i = 0; i < pairs.size(); i += 2) {
      copy_block_slow(want.k[l], pairs[i], pairs[i + 1]);
      copy_block_slow(want.v[l], pairs[i], pairs[i + 1]);
    }
  copy_blocks(L.params());
  for (std::size_t l = 0; l < L.k.size(); ++l) {
    EXPECT_TRUE(L.k[l].storage == want.k[l].storage) << "key cache of layer " << l;
    EXPECT_TRUE(L.v[l].storage == want.v[l].storage) << "value cache of layer " << l;
  }
}

TEST(CpuCacheOps, CopyBlocksErrors) {
  PAGEDATTN_TEST_RNG(rng);
  const auto inv = ErrorCode::kInvalidArgument;
  Layers L = make_layers(2, 4, {0, 1}, rng);
  const Layers orig = L;
  auto expect = [&](CopyBlocksParams p, ErrorCode code, const std::string& msg) {
    expect_error([&] { copy_blocks(p); }, code, msg);
    for (std::size_t l = 0; l < L.k.size(); ++l) ASSERT_TRUE(L.k[l].storage == orig.k[l].storage) << "written";
  };
  {
    auto p = L.params();
    p.value_caches.pop_back();
    expect(p, inv, "copy_blocks: got 2 key caches but 1 value caches; need one of each per layer");
  }
  {
    HostTensor other = make_tensor(DType::kFloat32, {4, 2, 2, 8, 4});
    auto p = L.params();
    p.key_caches[1] = other.view;
    expect(p, inv, "key_caches[1] has shape [4, 2, 2, 8, 4] but key_caches[0] has shape [4, 2, 4, 8, 2]");
  }
  {
    auto p = L.params();
    p.value_caches[1].dtype = DType::kInt32;
    expect(p, inv, "value_caches[1] has dtype int32 but key_caches[0] has dtype float32");
  }
  {
    auto p = L.params();
    p.value_caches[1].device = Device{DeviceType::kCUDA, 0};
    expect(p, inv, "value_caches[1] is on cuda:0 but key_caches[0] is on cpu");
  }
  {
    auto p = L.params();
    p.value_caches[0].shape[0] = 3;
    p.value_caches[1].shape[0] = 3;
    expect(p, inv, "value_caches[0] has 3 blocks but key_caches[0] has 4");
  }
  {
    auto p = L.params();
    p.key_caches[0].strides[3] = 3;  // dims from 2 on must be packed
    expect(p, inv, "key_caches[0] must be contiguous from dimension 2 on");
  }
  {
    auto p = L.params();
    p.key_caches[0].ndim = 1;
    expect(p, inv, "key_caches[0] must have at least 2 dimensions");
  }
  {
    auto p = L.params();
    p.key_caches[1].data = nullptr;
    expect(p, inv, "key_caches[1] is missing");
  }
  {
    auto p = L.params();
    p.block_mapping.device = Device{DeviceType::kCUDA, 0};
    expect(p, inv, "block_mapping is on cuda:0 but the caches are on cpu");
  }
  {
    auto p = L.params();
    p.block_mapping.dtype = DType::kInt32;
    expect(p, inv, "block_mapping has dtype int32");
  }
  {
    auto p = L.params();
    p.block_mapping.shape[1] = 3;
    expect(p, inv, "block_mapping dimension 1 is 3 but must be 2");
  }
  for (auto [src, dst, msg] : {std::tuple{4L, 0L, "copy_blocks: checked mode: block_mapping[1]: source block 4 is outside [0, num_blocks = 4)"},
                               std::tuple{-1L, 0L, "source block -1"},
                               std::tuple{1L, 9L, "destination block 9 is outside [0, num_blocks = 4)"}}) {
    Layers bad = make_layers(2, 4, {0, 1, src, dst}, rng);
    const Layers keep = bad;
    expect_error([&] { copy_blocks(bad.params()); }, ErrorCode::kDataError, msg);
    EXPECT_TRUE(bad.k[0].storage == keep.k[0].storage) << "the valid first pair was applied before the check";
  }
#ifndef PAGEDATTN_WITH_CUDA
  {
    auto p = L.params();
    for (auto& t : p.key_caches) t.device = Device{DeviceType::kCUDA, 0};
    for (auto& t : p.value_caches) t.device = Device{DeviceType::kCUDA, 0};
    p.block_mapping.device = Device{DeviceType::kCUDA, 0};
    expect(p, ErrorCode::kBackendError, "copy_blocks: tensors are on a CUDA device");
  }
#endif
}

TEST(CpuCacheOps, SwapBlocksHostToHost) {
  PAGEDATTN_TEST_RNG(rng);
  for (DType t : {DType::kFloat16, DType::kUInt8, DType::kFloat32}) {
    SCOPED_TRACE(dtype_name(t));
    HostTensor src = make_tensor(t, {4, 2, 16, 8});
    // dst is a view whose blocks are 300 elements apart (room between blocks).
    HostTensor dst = make_strided(t, {6, 2, 16, 8}, {300, 128, 8, 1}, 6 * 300);
    fill_bytes(src, rng);
    fill_bytes(dst, rng);
    const std::vector<std::int64_t> pairs = {3, 0, 0, 5, 1, 2};
    HostTensor mapping = make_tensor(DType::kInt64, {3, 2});
    std::copy(pairs.begin(), pairs.end(), static_cast<std::int64_t*>(mapping.view.data));
    HostTensor want = dst;
    const std::size_t es = dtype_size(t), block_bytes = 2 * 16 * 8 * es;
    for (std::size_t i = 0; i < pairs.size(); i += 2)
      std::memcpy(want.storage.data() + pairs[i + 1] * 300 * es, src.storage.data() + pairs[i] * block_bytes,
                  block_bytes);
    swap_blocks({src.view, dst.view, mapping.view});
    EXPECT_TRUE(dst.storage == want.storage);
  }
}

TEST(CpuCacheOps, SwapBlocksErrors) {
  const auto inv = ErrorCode::kInvalidArgument;
  HostTensor src = make_tensor(DType::kFloat16, {4, 2, 16, 8});
  HostTensor dst = make_tensor(DType::kFloat16, {6, 2, 16, 8});
  HostTensor mapping = make_tensor(DType::kInt64, {1, 2});
  auto* m = static_cast<std::int64_t*>(mapping.view.data);
  auto params = [&] { return SwapBlocksParams{src.view, dst.view, mapping.view}; };
  {
    auto p = params();
    p.dst.shape[2] = 8;
    p.dst.strides[1] = 64;
    p.dst.strides[0] = 128;
    expect_error([&] { swap_blocks(p); }, inv,
                 "swap_blocks: src shape [4, 2, 16, 8] and dst shape [6, 2, 8, 8] disagree beyond dimension 0");
  }
  {
    auto p = params();
    p.dst.dtype = DType::kBFloat16;
    expect_error([&] { swap_blocks(p); }, inv, "src has dtype float16 but dst has dtype bfloat16");
  }
  {
    auto p = params();
    p.src.strides[1] = 200;  // a block must be one contiguous run
    expect_error([&] { swap_blocks(p); }, inv, "src must be contiguous from dimension 1 on");
  }
  {
    auto p = params();
    p.block_mapping.device = Device{DeviceType::kCUDA, 0};
    expect_error([&] { swap_blocks(p); }, inv, "block_mapping is on cuda:0; it must be in host memory");
  }
  {
    auto p = params();
    p.block_mapping.ndim = 1;
    expect_error([&] { swap_blocks(p); }, inv, "block_mapping must have 2 dimensions");
  }
  m[0] = 4;  // src has 4 blocks
  m[1] = 0;
  expect_error([&] { swap_blocks(params()); }, ErrorCode::kDataError, "source block 4 is outside [0, num_blocks = 4)");
  m[0] = 3;
  m[1] = 6;  // dst has 6 blocks
  expect_error([&] { swap_blocks(params()); }, ErrorCode::kDataError,
               "destination block 6 is outside [0, num_blocks = 6)");
  m[1] = 5;
  EXPECT_NO_THROW(swap_blocks(params()));
#ifndef PAGEDATTN_WITH_CUDA
  {
    auto p = params();
    p.dst.device = Device{DeviceType::kCUDA, 0};
    expect_error([&] { swap_blocks(p); }, ErrorCode::kBackendError, "swap_blocks: tensors are on a CUDA device");
  }
#endif
}

}  // namespace
}  // namespace pagedattn
