// The quantizer: per-(layer, K/V, channel) uniform grids, layer-wise step sizes, token groups.
//
// Every channel c of a (layer, K/V) tensor gets a grid { (center_c + q) * step_c }. step_c is
// chosen from the level (kLevelStep), the layer (layer_factor) and the channel's scale (its RMS
// deviation from its mean; or the tensor's, in StepMode::kLayer), rounded DOWN to a step code
// (1/16-octave steps) so the documented error bound holds. center_c is the channel mean in grid
// units. A value is coded as its grid offset q, or escaped (stored raw, exact) when no grid point
// is within the bound or q is outside the table's window. Inside a chunk, tokens form groups of
// group_tokens: the first (anchor) codes q, the others q - q_anchor (same grid, same error).
#pragma once

#include <cstdint>

#include "kvcodec/config.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

// Grid of one channel as stored in a frame.
struct ChannelGrid {
  int32_t step_code = 0;  // step = step_from_code(step_code)
  int32_t center = 0;     // grid index of the channel's centre
};

// step_from_code(code) = 2^(code / 16), exact in fp32 (docs/format.md, "Step codes").
float step_from_code(int32_t code) noexcept;
// Largest valid code whose step does not exceed `step` (clamped to the valid range).
int32_t step_code_floor(double step) noexcept;

// The error bound of a decoded value x_hat whose grid step is `step`, for output dtype `dt`:
// step / 2 + ulp(x_hat) / 2 (ulp of dt at x_hat).
double error_bound(double step, float x_hat, DType dt) noexcept;

// Computes the grids of one (layer, K/V) tensor x[tokens][channels] (fp32, non-finite values
// ignored) for a relative step (kLevelStep[level] * layer_factor).
void compute_grids(const float* x, uint32_t tokens, uint32_t channels, double rel_step, StepMode mode,
                   ChannelGrid* grids) noexcept;

// Sentinel for an escaped value in quantize_value's result.
inline constexpr int32_t kEscape = INT32_MIN;

// Grid index n (so q = n - center) of value x whose decoded value (rounded to dt) is within
// error_bound; kEscape when none is, when x is not finite or when |n - center| > 255.
int32_t quantize_value(float x, float step, int32_t center, DType dt) noexcept;

}  // namespace kvcodec
