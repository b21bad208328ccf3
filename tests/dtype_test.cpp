// Bit-exact dtype conversions (shared by CPU and CUDA code).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/dtype.hpp"
#include "common/quant.hpp"
#include "encode/quantize.hpp"

namespace kvcodec {
namespace {

TEST(DType, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = detail::f16_to_f32(uint16_t(h));
    const uint16_t back = detail::f32_to_f16(f);
    if (std::isnan(f)) EXPECT_TRUE(std::isnan(detail::f16_to_f32(back)));
    else EXPECT_EQ(back, h) << std::hex << h;
  }
}

TEST(DType, F16RoundsToNearestEven) {
  EXPECT_EQ(detail::f32_to_f16(1.0f + 0x1p-11f), 0x3c00);              // tie -> even (down)
  EXPECT_EQ(detail::f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);          // tie -> even (up)
  EXPECT_EQ(detail::f32_to_f16(65519.0f), 0x7bff);                      // below the rounding edge
  EXPECT_EQ(detail::f32_to_f16(65520.0f), 0x7c00);                      // rounds to inf
  EXPECT_EQ(detail::f32_to_f16(0x1p-25f), 0x0000);                      // tie -> zero
  EXPECT_EQ(detail::f32_to_f16(0x1.8p-25f), 0x0001);                    // smallest subnormal
  EXPECT_EQ(detail::f32_to_f16(-0x1p-14f), 0x8400);
}

TEST(DType, BF16AndF8RoundTripEveryValue) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = detail::bf16_to_f32(uint16_t(b));
    if (!std::isnan(f)) EXPECT_EQ(detail::f32_to_bf16(f), b);
  }
  for (uint32_t v = 0; v < 256; ++v) {
    const float f = detail::f8e4m3_to_f32(uint8_t(v));
    if (!std::isnan(f)) EXPECT_EQ(detail::f32_to_f8e4m3(f), v) << v;
  }
  EXPECT_EQ(detail::f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(detail::f32_to_f8e4m3(1e6f), 0x7e);  // saturates
}

TEST(StepCodes, ExactPowersAndFloor) {
  EXPECT_EQ(step_from_code(0), 1.0f);
  EXPECT_EQ(step_from_code(16), 2.0f);
  EXPECT_EQ(step_from_code(-16), 0.5f);
  EXPECT_EQ(step_from_code(8), std::sqrt(2.0f));
  for (int32_t c = detail::kMinStepCode; c < detail::kMaxStepCode; ++c)
    ASSERT_LT(step_from_code(c), step_from_code(c + 1));
  for (double s : {1e-9, 0.01, 0.3, 1.0, 7.5, 1e9}) {
    const int32_t c = step_code_floor(s);
    EXPECT_LE(step_from_code(c), s);
    EXPECT_GT(step_from_code(c + 1), s);
  }
}

}  // namespace
}  // namespace kvcodec
