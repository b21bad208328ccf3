#include "kvcodec/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvcodec/detail/dtype.hpp"
#include "kvcodec/detail/quant.hpp"

namespace kvcodec {

using namespace detail;

float step_from_code(int32_t code) noexcept { return detail::step_from_code(code); }

int32_t step_code_floor(double step) noexcept {
  if (!(step > 0)) return kMinStepCode;
  int32_t code = int32_t(std::floor(16.0 * std::log2(step)));
  code = std::clamp(code, kMinStepCode, kMaxStepCode);
  // log2 is not exact: settle on the largest code whose exact step is <= step.
  while (code > kMinStepCode && double(detail::step_from_code(code)) > step) --code;
  while (code < kMaxStepCode && double(detail::step_from_code(code + 1)) <= step) ++code;
  return code;
}

namespace {

// Distance from v to the next representable value of dt away from zero (the last gap at the
// largest finite value).
double ulp_of(float v, DType dt) noexcept {
  const double a = std::fabs(double(v));
  switch (dt) {
    case DType::kF32: {
      float n = std::nextafter(std::fabs(v), INFINITY);
      if (std::isinf(n)) return double(std::fabs(v)) - double(std::nextafter(std::fabs(v), 0.0f));
      return double(n) - a;
    }
    case DType::kF16: {
      if (a < 6.103515625e-05) return 5.9604644775390625e-08;  // subnormal spacing 2^-24
      int e;
      std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
      return std::ldexp(1.0, e - 11);
    }
    case DType::kBF16: {
      if (a < 1.1754943508222875e-38) return std::ldexp(1.0, -133);
      int e;
      std::frexp(a, &e);
      return std::ldexp(1.0, e - 8);
    }
    case DType::kF8E4M3: {
      if (a < 0.015625) return 0.001953125;  // 2^-9
      int e;
      std::frexp(a, &e);
      return std::ldexp(1.0, e - 4);
    }
  }
  return 0;
}

float round_trip(float v, DType dt) noexcept {
  switch (dt) {
    case DType::kF32: return v;
    case DType::kF16: return f16_to_f32(f32_to_f16(v));
    case DType::kBF16: return bf16_to_f32(f32_to_bf16(v));
    case DType::kF8E4M3: return f8e4m3_to_f32(f32_to_f8e4m3(v));
  }
  return v;
}

}  // namespace

double error_bound(double step, float x_hat, DType dt) noexcept { return 0.5 * step + 0.5 * ulp_of(x_hat, dt); }

void compute_grids(const float* x, uint32_t tokens, uint32_t channels, double rel_step, StepMode mode,
                   ChannelGrid* grids) noexcept {
  std::vector<double> sum(channels, 0.0), sq(channels, 0.0);
  std::vector<uint32_t> count(channels, 0);
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* row = x + size_t(t) * channels;
    for (uint32_t c = 0; c < channels; ++c) {
      const float v = row[c];
      if (!std::isfinite(v)) continue;
      sum[c] += v;
      sq[c] += double(v) * v;
      ++count[c];
    }
  }
  std::vector<double> mean(channels), scale(channels);
  double layer_ms = 0;
  uint64_t layer_n = 0;
  for (uint32_t c = 0; c < channels; ++c) {
    const double n = count[c];
    mean[c] = n ? sum[c] / n : 0.0;
    const double var = n ? std::max(0.0, sq[c] / n - mean[c] * mean[c]) : 0.0;
    scale[c] = std::sqrt(var);
    layer_ms += var * n;
    layer_n += count[c];
  }
  const double layer_scale = layer_n ? std::sqrt(layer_ms / double(layer_n)) : 0.0;
  for (uint32_t c = 0; c < channels; ++c) {
    double s = mode == StepMode::kLayer ? layer_scale : scale[c];
    // A constant channel still needs a grid fine enough to hit its value.
    if (!(s > 0)) s = std::fabs(mean[c]) > 0 ? std::fabs(mean[c]) * 0x1p-10 : 1.0;
    const int32_t code = step_code_floor(rel_step * s);
    const double step = detail::step_from_code(code);
    const double center = std::nearbyint(mean[c] / step);
    grids[c].step_code = code;
    grids[c].center = int32_t(std::clamp(center, double(-kMaxCenter), double(kMaxCenter)));
  }
}

int32_t quantize_value(float x, float step, int32_t center, DType dt) noexcept {
  if (!std::isfinite(x)) return kEscape;
  const double n0 = std::nearbyint(double(x) / double(step));
  if (std::fabs(n0 - center) > 255) return kEscape;
  // The nearest grid point nearly always satisfies the bound; rounding of the fp32 product or of
  // the output dtype can push a value just past it, so its neighbours are tried before escaping.
  for (int d : {0, -1, 1}) {
    const int32_t n = int32_t(n0) + d;
    if (n - center < -255 || n - center > 255) continue;
    const float xh = round_trip(detail::dequantize(n, step), dt);
    if (std::fabs(double(x) - double(xh)) <= error_bound(step, xh, dt)) return n;
  }
  return kEscape;
}

}  // namespace kvcodec
