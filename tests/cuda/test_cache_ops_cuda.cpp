// GPU cache operations against the CPU backend (bit for bit) and against their definition.
#include <gtest/gtest.h>

#include <cstring>

#include "cuda/device_problem.h"
#include "pagedattn/cache_ops.h"

namespace pagedattn::test {
namespace {

struct CacheCase {
  HostTensor key, value, key_cache, value_cache, slots;
  ReshapeAndCacheParams params;
};

CacheCase make_cache_case(DType dtype, CacheDType cache, Rng& rng) {
  const int T = 37, KVH = 3, D = 120, BS = 16, NB = 6;
  const DType storage = cache == CacheDType::kAuto ? dtype : DType::kUInt8;
  const int x = static_cast<int>(16 / dtype_size(storage));
  CacheCase c;
  c.key = make_tensor(dtype, {T, KVH, D});
  c.value = make_tensor(dtype, {T, KVH, D});
  fill_uniform(c.key.base(), dtype, c.key.alloc_elems(), -600.0, 600.0, rng);  // saturates e4m3 at scale 1
  fill_uniform(c.value.base(), dtype, c.value.alloc_elems(), -3.0, 3.0, rng);
  c.key_cache = make_tensor(storage, {NB, KVH, (D + x - 1) / x, BS, x});
  c.value_cache = make_tensor(storage, {NB, KVH, D, BS});
  fill_uniform(c.key_cache.base(), storage, c.key_cache.alloc_elems(), 0, 100, rng);
  fill_uniform(c.value_cache.base(), storage, c.value_cache.alloc_elems(), 0, 100, rng);
  c.slots = make_tensor(DType::kInt64, {T});
  std::vector<std::int64_t> perm(NB * BS);
  for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = std::int64_t(i);
  rng.shuffle(perm.begin(), perm.end());
  for (int t = 0; t < T; ++t) static_cast<std::int64_t*>(c.slots.view.data)[t] = rng.coin(0.15) ? -1 : perm[t];
  c.params.key = c.key.view;
  c.params.value = c.value.view;
  c.params.key_cache = c.key_cache.view;
  c.params.value_cache = c.value_cache.view;
  c.params.slot_mapping = c.slots.view;
  c.params.kv_cache_dtype = cache;
  if (cache != CacheDType::kAuto) {
    c.params.k_scale = static_cast<float>(rng.uniform(0.5, 2.0));
    c.params.v_scale = static_cast<float>(rng.uniform(0.01, 0.1));
  }
  return c;
}

/// Device copies of a CacheCase's tensors, and its params pointing at them (checked mode on).
struct DeviceCacheCase {
  DeviceTensor k, v, kc, vc, sl;
  ReshapeAndCacheParams params;
  explicit DeviceCacheCase(const CacheCase& c)
      : k(DeviceTensor::from(c.key)), v(DeviceTensor::from(c.value)), kc(DeviceTensor::from(c.key_cache)),
        vc(DeviceTensor::from(c.value_cache)), sl(DeviceTensor::from(c.slots)), params(c.params) {
    params.key = k.view;
    params.value = v.view;
    params.key_cache = kc.view;
    params.value_cache = vc.view;
    params.slot_mapping = sl.view;
    params.checked = true;
  }
};

class CudaReshapeAndCache : public ::testing::TestWithParam<std::tuple<DType, CacheDType>> {};

TEST_P(CudaReshapeAndCache, BitExactWithCpuBackend) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  const auto [dtype, cache] = GetParam();
  CacheCase c = make_cache_case(dtype, cache, rng);
  const DeviceCacheCase d(c);
  const ReshapeAndCacheParams& g = d.params;
  reshape_and_cache(g);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  reshape_and_cache(c.params);  // CPU backend on the same inputs
  HostTensor gk = c.key_cache, gv = c.value_cache;
  d.kc.to_host(gk);
  d.vc.to_host(gv);
  EXPECT_EQ(gk.storage, c.key_cache.storage) << "key cache differs from the CPU backend";
  EXPECT_EQ(gv.storage, c.value_cache.storage) << "value cache differs from the CPU backend";
}

// Per-kv-head fp8 scales: kv head g encodes with k_scales[g] / v_scales[g], read on the device.
TEST_P(CudaReshapeAndCache, PerHeadScalesBitExactWithCpuBackend) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  const auto [dtype, cache] = GetParam();
  if (cache == CacheDType::kAuto) GTEST_SKIP() << "per-head scales apply to fp8 caches only (validation tests cover auto)";
  CacheCase c = make_cache_case(dtype, cache, rng);
  const int KVH = static_cast<int>(c.key.view.shape[1]);
  HostTensor ks = make_tensor(DType::kFloat32, {KVH}), vs = make_tensor(DType::kFloat32, {KVH});
  for (int g = 0; g < KVH; ++g) {  // scales far apart, so a kernel that used one head's scale for all fails
    static_cast<float*>(ks.view.data)[g] = static_cast<float>(rng.uniform(0.5, 2.0) * (g + 1));
    static_cast<float*>(vs.view.data)[g] = static_cast<float>(rng.uniform(0.01, 0.1) * (g + 1));
  }
  c.params.k_scale = c.params.v_scale = 1.0f;
  c.params.k_scales = ks.view;
  c.params.v_scales = vs.view;
  DeviceCacheCase d(c);
  const DeviceTensor dks = DeviceTensor::from(ks), dvs = DeviceTensor::from(vs);
  d.params.k_scales = dks.view;
  d.params.v_scales = dvs.view;
  reshape_and_cache(d.params);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  HostTensor before = c.key_cache;
  reshape_and_cache(c.params);  // CPU backend on the same inputs
  EXPECT_NE(before.storage, c.key_cache.storage) << "the CPU call wrote nothing (test set-up)";
  HostTensor gk = c.key_cache, gv = c.value_cache;
  d.kc.to_host(gk);
  d.vc.to_host(gv);
  EXPECT_EQ(gk.storage, c.key_cache.storage) << "key cache differs from the CPU backend";
  EXPECT_EQ(gv.storage, c.value_cache.storage) << "value cache differs from the CPU backend";
}

INSTANTIATE_TEST_SUITE_P(All, CudaReshapeAndCache,
                         ::testing::Combine(::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(CacheDType::kAuto, CacheDType::kFp8E4M3,
                                                              CacheDType::kFp8E5M2)));

TEST(CudaCacheOps, CheckedReshapeRejectsBadSlot) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  CacheCase c = make_cache_case(DType::kFloat16, CacheDType::kAuto, rng);
  static_cast<std::int64_t*>(c.slots.view.data)[5] = 6 * 16;  // one past the last slot
  const DeviceCacheCase d(c);
  const ReshapeAndCacheParams& g = d.params;
  test::expect_error([&] { reshape_and_cache(g); }, ErrorCode::kDataError, "slot_mapping[5] = 96");
  HostTensor gk = c.key_cache;
  d.kc.to_host(gk);
  EXPECT_EQ(gk.storage, c.key_cache.storage) << "cache written despite the error";
}

TEST(CudaCacheOps, CopyBlocksAcrossLayersMatchesCpu) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  const int layers = 3, NB = 9;
  std::vector<HostTensor> hk, hv;
  std::vector<DeviceTensor> dk, dv;
  for (int l = 0; l < layers; ++l) {
    hk.push_back(make_tensor(DType::kBFloat16, {NB, 2, 8, 16, 8}));
    hv.push_back(make_tensor(DType::kBFloat16, {NB, 2, 64, 16}));
    fill_uniform(hk.back().base(), DType::kBFloat16, hk.back().alloc_elems(), -1, 1, rng);
    fill_uniform(hv.back().base(), DType::kBFloat16, hv.back().alloc_elems(), -1, 1, rng);
  }
  for (int l = 0; l < layers; ++l) {
    dk.push_back(DeviceTensor::from(hk[l]));
    dv.push_back(DeviceTensor::from(hv[l]));
  }
  HostTensor map = make_tensor(DType::kInt64, {3, 2});
  const std::int64_t pairs[] = {0, 5, 7, 1, 3, 8};
  std::memcpy(map.base(), pairs, sizeof(pairs));
  DeviceTensor dmap = DeviceTensor::from(map);
  CopyBlocksParams g, c;
  for (int l = 0; l < layers; ++l) {
    g.key_caches.push_back(dk[l].view);
    g.value_caches.push_back(dv[l].view);
    c.key_caches.push_back(hk[l].view);
    c.value_caches.push_back(hv[l].view);
  }
  g.block_mapping = dmap.view;
  g.checked = true;
  c.block_mapping = map.view;
  copy_blocks(g);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  copy_blocks(c);
  for (int l = 0; l < layers; ++l) {
    HostTensor k = hk[l], v = hv[l];
    dk[l].to_host(k);
    dv[l].to_host(v);
    EXPECT_EQ(k.storage, hk[l].storage) << "layer " << l;
    EXPECT_EQ(v.storage, hv[l].storage) << "layer " << l;
  }
}

TEST(CudaCacheOps, SwapBlocksBetweenHostAndDevice) {
  PAGEDATTN_REQUIRE_GPU();
  PAGEDATTN_TEST_RNG(rng);
  HostTensor host = make_tensor(DType::kFloat16, {5, 2, 64, 16});
  fill_uniform(host.base(), DType::kFloat16, host.alloc_elems(), -1, 1, rng);
  HostTensor dev_init = make_tensor(DType::kFloat16, {7, 2, 64, 16});
  fill_uniform(dev_init.base(), DType::kFloat16, dev_init.alloc_elems(), -1, 1, rng);
  DeviceTensor dev = DeviceTensor::from(dev_init);
  HostTensor map = make_tensor(DType::kInt64, {2, 2});
  const std::int64_t pairs[] = {4, 0, 1, 6};
  std::memcpy(map.base(), pairs, sizeof(pairs));
  SwapBlocksParams in{host.view, dev.view, map.view, nullptr};
  swap_blocks(in);  // host -> device
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  HostTensor back = dev_init;
  dev.to_host(back);
  const std::size_t block = 2 * 64 * 16 * 2;
  for (int b = 0; b < 7; ++b) {
    const std::uint8_t* want = b == 0 ? host.storage.data() + 4 * block
                             : b == 6 ? host.storage.data() + 1 * block
                                      : dev_init.storage.data() + b * block;
    EXPECT_EQ(std::memcmp(back.storage.data() + b * block, want, block), 0) << "device block " << b;
  }
  HostTensor host2 = make_tensor(DType::kFloat16, {5, 2, 64, 16});
  const std::int64_t pairs2[] = {6, 2, 3, 3};
  std::memcpy(map.base(), pairs2, sizeof(pairs2));
  SwapBlocksParams out{dev.view, host2.view, map.view, nullptr};
  swap_blocks(out);  // device -> host
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(std::memcmp(host2.storage.data() + 2 * block, back.storage.data() + 6 * block, block), 0);
  EXPECT_EQ(std::memcmp(host2.storage.data() + 3 * block, back.storage.data() + 3 * block, block), 0);
}

}  // namespace
}  // namespace pagedattn::test
