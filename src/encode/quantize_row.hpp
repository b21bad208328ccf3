// The CPU quantizer's row loop (internal): vectorised fast path, exact per-element fallback.
#pragma once

#include <cstdint>

namespace kvcodec::detail {

// Per-channel constants of a (layer, K/V) grid, precomputed once.
struct RowGrid {
  const float* step;
  const double* inv_step;  // 1 / step
  const double* center;    // grid centre as a double
  const int32_t* center_i;
};

// Sentinel for an escaped value in quantize_row's output.
inline constexpr int16_t kEscapeQ = INT16_MIN;

// q[c] = quantize_grid(x[c], ...) - center[c] for the C values of one token, or kEscapeQ; the
// same result as the scalar detail::quantize_grid for every element (tests check it).
void quantize_row(const float* x, const RowGrid& g, uint32_t C, uint8_t dtype, int16_t* q);

// out[i] = the value of raw element i of dtype `dtype` as fp32 (F16C where available). Values
// are exact; NaN payloads may differ from load_as_f32's (the encoder escapes NaNs from the raw
// bytes, never from these values).
void widen_to_f32(const uint8_t* raw, uint8_t dtype, size_t n, float* out);

}  // namespace kvcodec::detail
