// The CPU quantizer's row loop (internal): vectorised fast path, exact per-element fallback.
#pragma once

#include <cstddef>
#include <cstdint>

#include "encode/quantize.hpp"

namespace kvcodec::detail {

// Per-channel constants of a (layer, K/V) grid, precomputed once.
struct RowGrid {
  const float* step;
  const double* inv_step;  // 1 / step
  const double* center;    // grid centre as a double
  const int32_t* center_i;
  // Optional (screen_constants): float 1 / step and step / 2 for the AVX-512 float screen, which
  // takes the fast path's decision in single precision where it provably equals the double one.
  const float* inv_f = nullptr;
  const float* half_f = nullptr;
};

// inv_f[c] = float(inv_step[c]); half_f[c] = step[c] / 2, or -1 where the screen must not be
// used (a step outside [2^-100, 2^100]: then every element takes the double-precision path).
void screen_constants(const float* step, const double* inv_step, uint32_t C, float* inv_f, float* half_f);

// Sentinel for an escaped value in quantize_row's output.
inline constexpr int16_t kEscapeQ = INT16_MIN;

// q[c] = quantize_grid(x[c], ...) - center[c] for the C values of one token, or kEscapeQ; the
// same result as the scalar detail::quantize_grid for every element (tests check it).
void quantize_row(const float* x, const RowGrid& g, uint32_t C, uint8_t dtype, int16_t* q);

// Running sums of each channel's finite values (encode_values.hpp's ChannelSums) in structure-of-
// arrays form: add_row_sums adds one token's values of n channels, vectorised across channels.
// Each channel's sums are still taken in token order, so they are add_sample's bit for bit.
struct ChannelSumsSoA {
  double* sum;
  double* sq;
  uint32_t* count;
};
void add_row_sums(const float* x, uint32_t n, const ChannelSumsSoA& s);
// lo[c] / hi[c]: the smallest / largest finite value of channel c so far, updated with one
// token's values of n channels (start at +inf / -inf).
void add_row_range(const float* x, uint32_t n, float* lo, float* hi);
// add_row_sums and add_row_range of every token [0, T) of C channels whose raw elements (dtype
// dt) are rows rp bytes apart: column blocks at a time, accumulators in registers (AVX-512), the
// same sums bit for bit. row: scratch of C floats.
void column_stats(const uint8_t* raw, size_t rp, uint8_t dt, uint32_t T, uint32_t C, float* row,
                  const ChannelSumsSoA& s, float* lo, float* hi);
// Element i = t * pitch + c of a (layer, K/V) tensor, of dtype code `dtype` (0 or kF32: fp32),
// for the robust passes (which widen them as widen_to_f32 does).
struct Columns {
  const void* base;
  size_t pitch;
  uint8_t dtype = 0;
};
// The grids of `channels` channels from their sums and ranges (compute_grids' last step),
// with the robust passes of encode_values.hpp over `tokens` tokens of `cols` where a channel
// has a value beyond kOutlierSigmas standard deviations.
void grids_from_sums(const ChannelSumsSoA& s, const float* lo, const float* hi, uint32_t channels, uint32_t tokens,
                     const Columns& cols, double rel_step, StepMode mode, ChannelGrid* grids);

// Channels [c0, c0 + n) (n <= kColumnBlock) of tokens [t0, t1) of a (layer, K/V) tensor of dtype
// `dtype` whose token rows start raw_pitch bytes apart (the anchors of these tokens' deltas are
// done already): val[t * val_pitch + c] = the symbol value -- the grid offset q (quantize_row) for an
// anchor token, delta_value(q, q_anchor) for the others (token groups of group_tokens inside
// chunks of chunk_tokens) -- or kEscapeQ. g: the grids of all C channels.
inline constexpr uint32_t kColumnBlock = 64;
void quantize_columns(const uint8_t* raw, size_t raw_pitch, uint8_t dtype, uint32_t t0, uint32_t t1, uint32_t c0,
                      uint32_t n,
                      const RowGrid& g, uint32_t chunk_tokens, uint32_t group_tokens, int16_t* val, size_t val_pitch);

// out[i] = the value of raw element i of dtype `dtype` as fp32 (F16C where available). Values
// are exact; NaN payloads may differ from load_as_f32's (the encoder escapes NaNs from the raw
// bytes, never from these values).
void widen_to_f32(const uint8_t* raw, uint8_t dtype, size_t n, float* out);

}  // namespace kvcodec::detail
