// The encoder's row quantizer (AVX-512 float screen, AVX-512 / AVX2 double path, scalar) against
// the exact scalar quantize_value, on values placed at and next to rounding ties.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.hpp"
#include "common/simd.hpp"
#include "encode/quantize.hpp"
#include "encode/quantize_row.hpp"

namespace kvcodec {
namespace {

// Restores the SIMD switches when a test ends.
struct SimdPath {
  explicit SimdPath(int path) {  // 0 all, 1 AVX2 (no AVX-512), 2 scalar
    detail::set_simd_enabled(path != 2);
    detail::set_avx512_enabled(path == 0);
  }
  ~SimdPath() {
    detail::set_simd_enabled(true);
    detail::set_avx512_enabled(true);
  }
};

// Per-channel grids of C channels and the row quantizer's constants, screen included.
struct Grids {
  std::vector<float> step, inv_f, half_f;
  std::vector<double> inv, center;
  std::vector<int32_t> center_i;
  explicit Grids(const std::vector<std::pair<int32_t, int32_t>>& code_center) {
    for (auto [code, c] : code_center) {
      step.push_back(step_from_code(code));
      inv.push_back(1.0 / double(step.back()));
      center.push_back(c);
      center_i.push_back(c);
    }
    inv_f.resize(step.size());
    half_f.resize(step.size());
    detail::screen_constants(step.data(), inv.data(), uint32_t(step.size()), inv_f.data(), half_f.data());
  }
  detail::RowGrid row(bool screen) const {
    return {step.data(), inv.data(), center.data(), center_i.data(), screen ? inv_f.data() : nullptr,
            screen ? half_f.data() : nullptr};
  }
};

int16_t expected(float x, float step, int32_t center, DType dt) {
  const int32_t n = quantize_value(x, step, center, dt);
  return n == kEscape ? detail::kEscapeQ : int16_t(n - center);
}

// Rows of C = 48 fp32 values: channel c's values at k + 1/2 grid steps from its centre, and up
// to 3 ulps either side, for k across the offset range and beyond; non-finite values too.
TEST(QuantizeRow, TiesAndNeighboursMatchScalar) {
  constexpr uint32_t C = 48;
  std::mt19937 rng(7);
  std::vector<std::pair<int32_t, int32_t>> cc;
  for (uint32_t c = 0; c < C; ++c) {
    const int32_t code = c < 8 ? int32_t(-640 + 160 * c) : int32_t(rng() % 400) - 300;  // steps 2^-40 .. 2^40
    const int32_t center = c % 5 == 0 ? int32_t(rng() % 1040000) - 520000 : int32_t(rng() % 4000) - 2000;
    cc.emplace_back(code, center);
  }
  const Grids g(cc);
  for (int path = 0; path < 3; ++path) {
    const SimdPath sp(path);
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      size_t checked = 0;
      for (int k = -270; k <= 270; ++k)
        for (int ulps = -3; ulps <= 3; ++ulps) {
          std::vector<float> x(C);
          for (uint32_t c = 0; c < C; ++c) {
            float v = float((double(g.center_i[c]) + k + 0.5) * double(g.step[c]));
            for (int u = 0; u < std::abs(ulps); ++u) v = std::nextafter(v, ulps > 0 ? INFINITY : -INFINITY);
            x[c] = v;
          }
          if (k == 0 && ulps == 0) x[1] = NAN, x[2] = INFINITY, x[3] = -INFINITY, x[4] = 0.0f, x[5] = -0.0f;
          std::vector<int16_t> q(C);
          for (bool screen : {true, false}) {
            detail::quantize_row(x.data(), g.row(screen), C, uint8_t(dt), q.data());
            for (uint32_t c = 0; c < C; ++c) {
              ASSERT_EQ(q[c], expected(x[c], g.step[c], g.center_i[c], dt))
                  << "path " << path << " dtype " << int(dt) << " channel " << c << " k " << k << " ulps " << ulps;
              ++checked;
            }
          }
        }
      EXPECT_EQ(checked, size_t(541) * 7 * C * 2);
    }
  }
}

// Every fp16 value through the fp16 column path (the encoder's, widening in registers), under
// grids of several steps and centres.
TEST(QuantizeRow, EveryF16ValueMatchesScalar) {
  constexpr uint32_t C = 64, T = 1024;  // T * C = 65536 values
  std::vector<uint16_t> raw(size_t(T) * C);
  for (uint32_t i = 0; i < T * C; ++i) raw[i] = uint16_t(i);
  for (int set = 0; set < 4; ++set) {
    std::vector<std::pair<int32_t, int32_t>> cc;
    for (uint32_t c = 0; c < C; ++c) cc.emplace_back(-16 * int32_t(set * 3 + c % 9) - int32_t(c % 16), int32_t(c * 37 % 301) - 150);
    const Grids g(cc);
    for (int path = 0; path < 3; ++path) {
      const SimdPath sp(path);
      std::vector<int16_t> val(size_t(T) * C);
      detail::quantize_columns(reinterpret_cast<const uint8_t*>(raw.data()), C * 2, uint8_t(DType::kF16), 0, T, 0, C,
                               g.row(true), T, 1, val.data(), C);
      for (uint32_t i = 0; i < T * C; ++i) {
        const uint32_t c = i % C;
        ASSERT_EQ(val[i], expected(detail::f16_to_f32(raw[i]), g.step[c], g.center_i[c], DType::kF16))
            << "set " << set << " path " << path << " fp16 0x" << std::hex << raw[i];
      }
    }
  }
}

}  // namespace
}  // namespace kvcodec
