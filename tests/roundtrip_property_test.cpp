// Round-trip property: random shapes, dtypes, levels and options (token groups, table groups,
// step modes), outlier channels, values at the dtype's range, NaN and +-Inf; every element must
// meet the documented contract against the steps the frame records (roundtrip_check.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/dtype.hpp"
#include "roundtrip_check.hpp"

namespace kvcodec {
namespace {

std::string describe(const test::RoundTripInput& in) {
  const EncodeOptions& o = in.options;
  return std::string(dtype_name(in.dtype)) + " L" + std::to_string(in.shape.layers) + " T" +
         std::to_string(in.shape.tokens) + " H" + std::to_string(in.shape.kv_heads) + " D" +
         std::to_string(in.shape.head_dim) + " level " + std::to_string(o.level) + " chunk " +
         std::to_string(o.chunk_tokens) + " group " + std::to_string(o.group_tokens) + " tables " +
         std::to_string(o.table_groups) + (o.step_mode == StepMode::kLayer ? " layer-steps" : " channel-steps");
}

// Issue 11, item 1 (roundtrip_check.hpp, escaped_anchor_input).
TEST(RoundTripProperty, EscapedAnchorKeepsItsDeltasRight) {
  for (uint32_t g : {4u, 2u, 3u, 8u, 64u})
    EXPECT_EQ(test::check_round_trip(test::escaped_anchor_input(g)), "") << "group_tokens " << g;
}

TEST(RoundTripProperty, RandomInputsMeetTheContract) {
  std::mt19937_64 rng(20261206);
  for (int i = 0; i < 400; ++i) {
    const test::RoundTripInput in = test::random_round_trip_input(rng);
    const std::string err = test::check_round_trip(in);
    ASSERT_EQ(err, "") << "case " << i << ": " << describe(in);
  }
}

}  // namespace
}  // namespace kvcodec
