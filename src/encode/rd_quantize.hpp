// Rate-distortion optimised quantization of transform coefficients (version 4 frames; internal).
// The plain quantizer picks the nearest grid point of every value; this pass may move a value to
// its other neighbouring grid point when that lowers err^2 + lambda * bits under the frame's own
// tables, lambda = kRdLambda * step^2. The decoder is unchanged: it decodes the symbols written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvcodec::detail {

// lambda / step^2: the slope -dD/dR of an entropy-coded uniform quantizer at high rate
// (D = step^2 / 12 falls by 2 ln 2 * D per bit), so that a move is taken when it saves more bits
// than the plain quantizer's own rate-distortion trade gives for the same distortion.
inline constexpr double kRdLambda = 0.11552453009332421;  // 2 ln 2 / 12

// What the pass needs of a lossy model's tables, per (group, value bin) (index g * kLossyBins +
// bin): the code length in bits (escapes include the escaped element's 32 bits), whether the
// table escapes the bin (the value then decodes exactly: no error), and the screen: a value at
// offset f (in steps, |f| <= 1/2) from its grid point can only gain by moving up when f > up,
// down when -f > down (from the code lengths alone; 1 where a move never gains, -1 where the
// exact test must decide: escapes).
struct RdTables {
  std::vector<double> bits, up, down;
  std::vector<uint8_t> escape;
};

// The tables of a lossy model's lane codes ([table][value bin], freq << 16 | cum | kEscFlag as
// lossy_model_codes gives them), one table per group (slots 1).
void rd_tables(const std::vector<uint32_t>& codes, RdTables& t);

// The lossy symbol values of one (layer, K/V) and what choosing among them needs.
struct RdQuantizeInput {
  const float* x;         // the coefficients [tokens][channels], rows x_pitch floats apart
  size_t x_pitch;
  uint32_t tokens, channels;
  uint32_t block;         // channels per error block (the head_dim of a version 4 frame)
  const float* step;      // per channel
  const double* inv_step; // 1.0 / double(step), per channel
  const int32_t* center;  // per channel
  const RdTables* tables;
  const uint8_t* group;   // channel c uses the tables of group[c]
};

// Moves values of val ([tokens][channels], rows val_pitch apart; q = n - center or the escape
// value) to their other neighbouring grid point where that lowers err^2 + kRdLambda * step^2 *
// bits, in (token, channel) order, keeping each (token, block)'s squared error within the sum
// of its (step / 2)^2 (the version 4 row bound, docs/format.md 7); a value its table escapes
// counts no error (it decodes exactly). Values the quantizer escaped, and moves beyond the
// 255-step window, are never taken. Returns the values moved.
size_t rd_quantize(const RdQuantizeInput& in, int16_t* val, size_t val_pitch);

}  // namespace kvcodec::detail
