// Per-channel encoder maths shared by the CPU encoder (src/encode/quantize.cpp, src/encode/encode.cpp) and the
// CUDA encoder (cuda/encode.cu): channel statistics -> grid, and grid offsets -> the symbol
// values that the tables code. Every function is exact (integer, or IEEE operations with no
// contraction and no libm result that reaches the output), so both backends get the same bits.
#pragma once

#include <cmath>
#include <cstdint>

#include "kvcodec/config.hpp"
#include "common/host_device.hpp"
#include "common/quant.hpp"
#include "encode/quantize.hpp"

namespace kvcodec::detail {

// ---- statistics and grids ------------------------------------------------------------------

// Running sums of one channel's finite values, accumulated in token order (the order fixes the
// rounding of the double sums).
struct ChannelSums {
  double sum = 0;
  double sq = 0;
  uint32_t count = 0;   // values in the sums
  uint32_t weight = 0;  // finite values of the channel (its weight in layer_scale); set by finish_sums
  float lo = 0, hi = 0;  // smallest and largest value in the sums (valid when count > 0)
};

KVCODEC_HD void add_sample(ChannelSums& s, float v) {
  if (!(v - v == 0.0f)) return;  // inf or nan
  s.sum += v;
  s.sq += double(v) * v;
  if (s.count == 0 || v < s.lo) s.lo = v;
  if (s.count == 0 || v > s.hi) s.hi = v;
  ++s.count;
}

// Mean and variance (population, clamped at 0) of a channel.
KVCODEC_HD void channel_moments(const ChannelSums& s, double* mean, double* var) {
  const double n = s.count;
  *mean = s.count ? s.sum / n : 0.0;
  const double v = s.count ? s.sq / n - *mean * *mean : 0.0;
  *var = v > 0.0 ? v : 0.0;
}

// ---- robust statistics (issue 10, item 4) -----------------------------------------------------
// A few outliers must not set a channel's centre or the tensor's step: four values of 5000 in a
// 1024 x 16 tensor of unit-scale values would raise the RMS ~80x and flatten every other value to
// its channel mean. So a channel's statistics are re-taken without the values further than
// kOutlierSigmas standard deviations from its mean, up to kRobustPasses times (each pass only when
// such a value exists: a Gaussian sample of any realistic size never has one, so ordinary channels
// keep their plain moments). The excluded values are then coded far from the centre or, beyond
// 255 steps, escaped (exact). Removing values beyond one standard deviation can only lower the
// variance, so the robust scale never exceeds the plain RMS and the documented bound still holds.
inline constexpr double kOutlierSigmas = 8.0;
inline constexpr int kRobustPasses = 3;

// The range [*a, *b] of values a robust pass keeps, and whether the channel has a value outside it.
KVCODEC_HD bool outlier_range(const ChannelSums& s, double* a, double* b) {
  double mean, var;
  channel_moments(s, &mean, &var);
  if (!(var > 0)) return false;
  const double r = kOutlierSigmas * sqrt(var);
  *a = mean - r;
  *b = mean + r;
  return double(s.lo) < *a || double(s.hi) > *b;
}

// One robust pass: the sums of the values of `next` within [a, b], in token order. Keeps the
// previous sums (returns false) when the pass would leave no spread (the scale must stay > 0).
KVCODEC_HD void add_sample_in(ChannelSums& s, float v, double a, double b) {
  if (double(v) >= a && double(v) <= b) add_sample(s, v);
}
KVCODEC_HD bool accept_pass(ChannelSums& s, const ChannelSums& next) {
  double mean, var;
  channel_moments(next, &mean, &var);
  if (!(var > 0)) return false;
  const uint32_t w = s.weight;
  s = next;
  s.weight = w;
  return true;
}

// Records the channel's finite-value count as its weight (call after the plain pass).
KVCODEC_HD void finish_sums(ChannelSums& s) { s.weight = s.count; }

// RMS deviation of a whole (layer, K/V) tensor: the channels' (robust) variances weighted by
// their finite-value counts, summed in channel order.
KVCODEC_HD double layer_scale(const ChannelSums* s, uint32_t channels) {
  double ms = 0;
  uint64_t n = 0;
  for (uint32_t c = 0; c < channels; ++c) {
    double mean, var;
    channel_moments(s[c], &mean, &var);
    ms += var * double(s[c].weight);
    n += s[c].weight;
  }
  return n ? sqrt(ms / double(n)) : 0.0;
}

// Largest valid step code whose exact step does not exceed `step`. The log2 guess may differ
// between libm and the GPU; the two loops settle on the exact answer either way.
KVCODEC_HD int32_t step_code_floor(double step) {
  if (!(step > 0)) return kMinStepCode;
  int32_t code = int32_t(floor(16.0 * log2(step)));
  code = code < kMinStepCode ? kMinStepCode : code > kMaxStepCode ? kMaxStepCode : code;
  while (code > kMinStepCode && double(step_from_code(code)) > step) --code;
  while (code < kMaxStepCode && double(step_from_code(code + 1)) <= step) ++code;
  return code;
}

// The grid of a channel with sums `s`, for a relative step rel_step (kLevelStep[level] *
// layer_factor) and the tensor's layer_scale (used in StepMode::kLayer).
KVCODEC_HD ChannelGrid channel_grid(const ChannelSums& s, double layer_rms, StepMode mode, double rel_step) {
  double mean, var;
  channel_moments(s, &mean, &var);
  double scale = mode == StepMode::kLayer ? layer_rms : sqrt(var);
  // A constant channel still needs a grid fine enough to hit its value.
  if (!(scale > 0)) scale = fabs(mean) > 0 ? fabs(mean) * 0x1p-10 : 1.0;
  ChannelGrid g;
  g.step_code = step_code_floor(rel_step * scale);
  const double center = nearbyint(mean / double(step_from_code(g.step_code)));
  g.center = center < -kMaxCenter ? -kMaxCenter : center > kMaxCenter ? kMaxCenter : int32_t(center);
  return g;
}

// ---- symbol values ---------------------------------------------------------------------------

// Lossy symbol values -- q = n - center for anchors, q - q_anchor for deltas -- are kept in
// [-kQLimit, kQLimit]; histograms index them by bin v + kQLimit, with one more bin for escapes.
inline constexpr int32_t kQLimit = 255;
inline constexpr uint32_t kLossyBins = 2 * kQLimit + 2;
inline constexpr uint32_t kEscBin = kLossyBins - 1;
// Byte-plane symbols of lossless levels.
inline constexpr uint32_t kLosslessBins = 256;
// An escaped lossy value.
inline constexpr int32_t kEscapeValue = INT16_MIN;
// Lane encoders code a symbol through a table entry freq << 16 | cum, bit 31 marking the
// table's escape symbol (the element then goes raw into the unit's escape block).
inline constexpr uint32_t kEscFlag = 1u << 31;

// Grid offset q of value x on a channel's grid, or kEscapeValue.
KVCODEC_HD int32_t grid_offset(float x, float step, double inv_step, int32_t center, uint8_t dtype) {
  const int32_t n = quantize_grid(x, step, inv_step, center, dtype);
  return n == kEscapeIndex ? kEscapeValue : n - center;
}

// The symbol value of a delta token whose grid offset is q and whose anchor's is q_anchor (an
// escaped anchor counts as 0); escaped when out of range.
KVCODEC_HD int32_t delta_value(int32_t q, int32_t q_anchor) {
  if (q == kEscapeValue) return kEscapeValue;
  const int32_t d = q - (q_anchor == kEscapeValue ? 0 : q_anchor);
  return d < -kQLimit || d > kQLimit ? kEscapeValue : d;
}

KVCODEC_HD uint32_t lossy_bin(int32_t v) { return v == kEscapeValue ? kEscBin : uint32_t(v + kQLimit); }

// Whether the deltas of an anchor with symbol value `a` and lane code `anchor_code` (in its
// anchor table) must be escaped: when the table codes the anchor as the escape symbol although it
// has a grid value (a outside the table's window). The decoder then resets the channel's
// reference to 0 (docs/format.md 4.3) while the deltas were taken against a; both encoders escape
// them, count them as escapes and rebuild the delta tables on the same channel groups. (An anchor
// without a grid value counts as 0 in delta_value already.)
KVCODEC_HD bool orphans_deltas(int32_t a, uint32_t anchor_code) {
  return a != kEscapeValue && (anchor_code & kEscFlag) != 0;
}

// Token t (counted from the start of the context) is an anchor when it opens a group of its chunk.
KVCODEC_HD bool is_anchor(uint32_t t, uint32_t chunk_tokens, uint32_t group_tokens) {
  return (t % chunk_tokens) % group_tokens == 0;
}

}  // namespace kvcodec::detail
