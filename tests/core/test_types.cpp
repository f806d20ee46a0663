#include <gtest/gtest.h>

#include "common/test_util.h"
#include "pagedattn/types.h"

namespace pagedattn {
namespace {

TEST(Types, ParseCacheDType) {
  EXPECT_EQ(parse_cache_dtype("auto"), CacheDType::kAuto);
  EXPECT_EQ(parse_cache_dtype("fp8"), CacheDType::kFp8E4M3);
  EXPECT_EQ(parse_cache_dtype("fp8_e4m3"), CacheDType::kFp8E4M3);
  EXPECT_EQ(parse_cache_dtype("fp8_e5m2"), CacheDType::kFp8E5M2);
  test::expect_error([] { parse_cache_dtype("int8"); }, ErrorCode::kUnsupported, {"\"int8\"", "fp8_e5m2"});
}

TEST(Types, ContiguousStrides) {
  int dummy = 0;
  auto t = TensorView::contiguous(&dummy, DType::kInt32, {2, 3, 4});
  EXPECT_EQ(t.strides[0], 12);
  EXPECT_EQ(t.strides[1], 4);
  EXPECT_EQ(t.strides[2], 1);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_TRUE(t.is_contiguous());
  auto s = TensorView::strided(&dummy, DType::kInt32, {2, 3, 4}, {20, 4, 1});
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_TRUE(s.is_contiguous_from(1));
}

}  // namespace
}  // namespace pagedattn
