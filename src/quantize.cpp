#include "kvcodec/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvcodec/detail/dtype.hpp"
#include "detail/quantize_row.hpp"
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

double error_bound(double step, float x_hat, DType dt) noexcept {
  return 0.5 * step + 0.5 * detail::ulp_at(x_hat, uint8_t(dt));
}

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
  const int32_t n = detail::quantize_grid(x, step, 1.0 / double(step), center, uint8_t(dt));
  return n == detail::kEscapeIndex ? kEscape : n;
}

namespace detail {

// The fast path of quantize_grid for a whole row, written branch-free so the compiler
// vectorises it (an AVX2 clone is selected at run time where available; the arithmetic is the
// same IEEE operations either way, so results do not depend on the clone). Elements that miss
// the fast path are marked and redone by the scalar function.
__attribute__((target_clones("avx2", "default"))) static void quantize_row_fast(
    const float* x, const RowGrid& g, uint32_t C, float maxf, int32_t* n, uint8_t* ok) {
  for (uint32_t c = 0; c < C; ++c) {
    const double xd = double(x[c]);
    const double n0 = __builtin_nearbyint(xd * g.inv_step[c]);
    const double d = n0 - g.center[c];
    const double nc = d >= -255.0 && d <= 255.0 ? n0 : 0.0;  // keep conversions in range
    const float p = float(int32_t(nc)) * g.step[c];
    const double err = xd - double(p);
    const double half = 0.5 * double(g.step[c]);
    const bool good = d >= -255.0 && d <= 255.0 && err <= half && -err <= half && p <= maxf && -p <= maxf;
    n[c] = int32_t(nc);
    ok[c] = good;
  }
}

void quantize_row(const float* x, const RowGrid& g, uint32_t C, uint8_t dt, int16_t* q) {
  thread_local std::vector<int32_t> n;
  thread_local std::vector<uint8_t> ok;
  n.resize(C);
  ok.resize(C);
  quantize_row_fast(x, g, C, max_finite(dt), n.data(), ok.data());
  for (uint32_t c = 0; c < C; ++c) {
    int32_t v = n[c];
    if (!ok[c]) v = quantize_grid(x[c], g.step[c], g.inv_step[c], g.center_i[c], dt);
    q[c] = v == kEscapeIndex ? kEscapeQ : int16_t(v - g.center_i[c]);
  }
}

}  // namespace detail
}  // namespace kvcodec
