#include <gtest/gtest.h>

#include "pagedattn/types.h"

namespace pagedattn {
namespace {

TEST(Types, ParseCacheDType) {
  EXPECT_EQ(parse_cache_dtype("auto"), CacheDType::kAuto);
  EXPECT_EQ(parse_cache_dtype("fp8"), CacheDType::kFp8E4M3);
  EXPECT_EQ(parse_cache_dtype("fp8_e4m3"), CacheDType::kFp8E4M3);
  EXPECT_EQ(parse_cache_dtype("fp8_e5m2"), CacheDType::kFp8E5M2);
  try {
    parse_cache_dtype("int8");
    FAIL() << "int8 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("\"int8\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("fp8_e5m2"), std::string::npos) << e.what();
  }
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
