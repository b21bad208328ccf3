// Robust scales (issue 10, item 4): a few outliers in a (layer, K/V) tensor must not set its
// step or its channels' centres. They are escaped or coded far out; every other value keeps the
// error it has without them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.hpp"
#include "common/simd.hpp"
#include "kvcodec/codec.hpp"

namespace kvcodec {
namespace {

struct Errors {
  double others = 0;    // ||x - x_hat|| / ||x|| over the K values that are not outliers
  double outliers = 0;  // max |x - x_hat| over the outliers
};

// One layer, 1024 tokens, one K/V head of 16 channels, f16, unit-scale Gaussian values with
// per-channel offsets; the K values at `spots` set to `spike`. Encoded at `level`, decoded.
Errors round_trip(const std::vector<std::pair<uint32_t, uint32_t>>& spots, float spike, int level) {
  const KVShape shape{1, 1024, 1, 16};
  const size_t T = shape.tokens, C = shape.channels(), n = shape.elements();
  std::mt19937_64 rng(5);
  std::normal_distribution<float> n01(0, 1);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = float(i % C) * 0.25f + n01(rng);
  std::vector<bool> is_spike(n, false);
  for (auto [t, c] : spots) {
    x[t * C + c] = spike;  // K plane: the first T * C elements
    is_spike[t * C + c] = true;
  }
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = detail::f32_to_f16(x[i]);
  for (size_t i = 0; i < n; ++i) x[i] = detail::f16_to_f32(h[i]);

  EncodeOptions o;
  o.level = level;
  std::vector<uint8_t> frame(max_encoded_size(shape, DType::kF16, o));
  auto size = encode_into(contiguous_view(h.data(), DType::kF16, shape), o, frame);
  EXPECT_TRUE(size.ok()) << size.status().to_string();
  frame.resize(*size);
  std::vector<uint16_t> out(n);
  EXPECT_TRUE(decode_into(frame, contiguous_view(out.data(), DType::kF16, shape)).ok());

  Errors e;
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < T * C; ++i) {
    const double d = double(detail::f16_to_f32(out[i])) - x[i];
    if (is_spike[i]) {
      e.outliers = std::max(e.outliers, std::fabs(d));
      continue;
    }
    err2 += d * d;
    ref2 += double(x[i]) * x[i];
  }
  e.others = std::sqrt(err2 / ref2);
  return e;
}

// The case: four values of 5000 raised the other values' relative error at level 4 from
// 0.056 to 1.0 (they all decoded to their channel means).
TEST(RobustScale, FourOutliersDoNotFlattenTheTensor) {
  const Errors clean = round_trip({}, 0, 4);
  const Errors spiked = round_trip({{3, 2}, {100, 2}, {517, 9}, {1000, 15}}, 5000.0f, 4);
  EXPECT_LT(clean.others, 0.1);
  EXPECT_LE(spiked.others, clean.others * 1.05) << "clean " << clean.others;
  EXPECT_EQ(spiked.outliers, 0.0);  // beyond 255 steps: escaped, exact
}

// All four in one channel: its centre must not move to ~20 either.
TEST(RobustScale, OutliersInOneChannelKeepItsCentre) {
  const Errors clean = round_trip({}, 0, 4);
  const Errors spiked = round_trip({{1, 7}, {2, 7}, {3, 7}, {4, 7}}, 5000.0f, 4);
  EXPECT_LE(spiked.others, clean.others * 1.05) << "clean " << clean.others;
  EXPECT_EQ(spiked.outliers, 0.0);
}

// Moderate outliers (within 255 steps) are coded on the grid, within its bound, at every level.
TEST(RobustScale, ModerateOutliersAreCodedWithinTheStep) {
  for (int level = 1; level <= kMaxLevel; ++level) {
    const Errors clean = round_trip({}, 0, level);
    const Errors spiked = round_trip({{10, 0}, {20, 5}, {30, 10}, {40, 15}}, 20.0f, level);
    EXPECT_LE(spiked.others, clean.others * 1.05) << "level " << level;
    EXPECT_LE(spiked.outliers, 0.5 * kLevelStep[level] * 1.5 * 1.5 + 0.02) << "level " << level;
  }
}

// The robust passes take the same samples in the same order on every path (AVX-512: 16 channels
// per vector; AVX2 and scalar: channel by channel, or whole rows when many channels pass), so
// the frames agree. Layer 0 has a few outlier channels (one needs a second pass, one is constant
// apart from its spike, so its pass is refused; non-finite values in between), layer 1 outliers
// in every channel; C = 40 leaves a partial vector of channels.
TEST(RobustScale, EveryPathTakesTheSamePasses) {
  const KVShape shape{2, 200, 2, 20};
  const size_t T = shape.tokens, C = shape.channels();
  std::mt19937_64 rng(11);
  std::normal_distribution<float> n01(0, 1);
  std::vector<float> x(shape.elements());
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % C) * 0.5f - 3.0f + n01(rng);
  auto at = [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t c) -> float& { return x[((l * 2 + kv) * T + t) * C + c]; };
  for (uint32_t t = 0; t < T; ++t) at(0, 0, t, 7) = 1.5f;  // constant but for its spike
  struct Spike {
    uint32_t t, c;
    float v;
  };
  const Spike spikes[] = {{20, 5, 400.0f}, {30, 9, -60.0f}, {31, 9, 9000.0f}, {40, 17, 120.0f}, {60, 7, 50.0f}, {70, 33, -0.0f}};
  for (uint32_t kv = 0; kv < 2; ++kv) {
    for (const Spike& s : spikes) at(0, kv, s.t, s.c) = s.v;
    at(0, kv, 50, 5) = INFINITY;
    at(0, kv, 51, 9) = NAN;
    for (uint32_t c = 0; c < C; ++c) at(1, kv, (c * 7) % T, c) = c % 2 ? 700.0f : -300.0f;
  }
  for (DType dt : {DType::kF16, DType::kBF16, DType::kF32, DType::kF8E4M3}) {
    std::vector<uint8_t> raw(x.size() * dtype_size(dt));
    for (size_t i = 0; i < x.size(); ++i) {
      if (dt == DType::kF32) std::memcpy(&raw[i * 4], &x[i], 4);
      else if (dt == DType::kF16) { const uint16_t h = detail::f32_to_f16(x[i]); std::memcpy(&raw[i * 2], &h, 2); }
      else if (dt == DType::kBF16) { const uint16_t h = detail::f32_to_bf16(x[i]); std::memcpy(&raw[i * 2], &h, 2); }
      else raw[i] = detail::f32_to_f8e4m3(x[i]);
    }
    for (int level : {1, 6})
      for (StepMode mode : {StepMode::kLayer, StepMode::kChannel}) {
        EncodeOptions o;
        o.level = level;
        o.step_mode = mode;
        std::vector<uint8_t> frames[3];
        for (int path = 0; path < 3; ++path) {
          detail::set_avx512_enabled(path == 0);
          detail::set_simd_enabled(path < 2);
          frames[path].resize(max_encoded_size(shape, dt, o));
          auto n = encode_into(contiguous_view(raw.data(), dt, shape), o, frames[path]);
          ASSERT_TRUE(n.ok()) << n.status().to_string();
          frames[path].resize(*n);
        }
        detail::set_avx512_enabled(true);
        detail::set_simd_enabled(true);
        EXPECT_EQ(frames[0], frames[1]) << dtype_name(dt) << " level " << level << ": AVX-512 and AVX2 differ";
        EXPECT_EQ(frames[0], frames[2]) << dtype_name(dt) << " level " << level << ": AVX-512 and scalar differ";
      }
  }
}

}  // namespace
}  // namespace kvcodec
