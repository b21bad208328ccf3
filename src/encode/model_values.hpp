// Per-value maths of model building -- table windows, the normalisation of counts into
// frequencies, the serialisation of the model section -- shared by the CPU encoder
// (src/encode/encode_model.cpp, src/common/entropy.cpp, src/common/format.cpp) and the device model builder
// (encode/block_model.hpp), so both make the same decisions and write the same bytes.
// Every decision is integer arithmetic or an exactly specified IEEE operation.
#pragma once

#include <cmath>
#include <cstdint>

#include "encode/encode_values.hpp"
#include "common/host_device.hpp"
#include "common/log2.hpp"
#include "common/rans.hpp"

namespace kvcodec::detail {

// ---- raw byte planes (docs/format.md 4.5) ---------------------------------------------------

// Q16 bits of coding one symbol of frequency freq (1..4096) under a 12-bit table.
KVCODEC_HD uint64_t symbol_cost_q16(uint32_t freq) { return ((uint64_t(kRansProbBits) << 32) - log2_q32(freq)) >> 16; }
// Whether a lossless byte plane of `symbols` symbols whose coding costs `coded` (Q16 bits: the sum
// of symbol_cost_q16 over its symbols under its tables) is kept raw: when coding would save less
// than 1/64 of its 8 bits per symbol. Integers only, so every encoder and backend decides alike.
KVCODEC_HD bool keep_plane_raw(uint64_t coded, uint64_t symbols) {
  const uint64_t raw = symbols << 19;  // 8 bits, Q16
  return coded >= raw - (raw >> 6);
}
// The marker table of a raw plane in the model section: n - 1 = 0, one frequency 0.
inline constexpr uint32_t kRawPlaneMarkerBytes = 2;

// ---- table windows ---------------------------------------------------------------------------

// Lossless tables code the byte values up to the last one seen (at least one symbol).
KVCODEC_HD uint32_t lossless_symbols(const uint64_t* h) {
  uint32_t n = kLosslessBins;
  while (n > 1 && h[n - 1] == 0) --n;
  return n;
}

// Lossy tables code the value bins [lo, hi] (hi - lo < 255) and an escape symbol: the bins seen,
// or when they span more than 255 the 255-wide window holding the most occurrences (the first
// such). [kQLimit, kQLimit] when nothing but escapes was seen. h has kLossyBins entries.
KVCODEC_HD void lossy_window(const uint64_t* h, int32_t* lo_out, int32_t* hi_out) {
  int32_t lo = -1, hi = -1;
  for (uint32_t b = 0; b < kEscBin; ++b)
    if (h[b]) {
      if (lo < 0) lo = int32_t(b);
      hi = int32_t(b);
    }
  if (lo < 0) lo = hi = kQLimit;
  if (hi - lo + 1 > 255) {  // slide a 255-wide window to the densest position
    uint64_t run = 0, best = 0;
    int32_t best_lo = lo;
    for (int32_t b = lo; b <= hi; ++b) {
      run += h[b];
      if (b - lo >= 255) run -= h[b - 255];
      if (b - lo >= 254 && run > best) {
        best = run;
        best_lo = b - 254;
      }
    }
    lo = best_lo;
    hi = lo + 254;
  }
  *lo_out = lo;
  *hi_out = hi;
}

// ---- normalisation (FreqTable::from_counts) ----------------------------------------------------

// First guess of a symbol's frequency: count * M / total rounded to nearest (llround: halves
// away from zero), at least 1 for a seen symbol and at most M. The product by M = 2^12 is exact
// and the division correctly rounded on every IEEE machine.
KVCODEC_HD uint32_t initial_freq(uint64_t count, uint64_t total) {
  if (!count) return 0;
  const long long f = llround(double(count) * kRansM / double(total));
  return f < 1 ? 1u : f > (long long)kRansM ? kRansM : uint32_t(f);
}

// The correction then moves one unit at a time where it costs the fewest bits: adding a unit to
// a symbol of frequency f saves count * log2((f+1)/f) bits, removing one costs
// count * log2(f/(f-1)). This is the log2 difference in Q32 (f >= 2 when removing).
KVCODEC_HD uint64_t freq_step_dlog(uint32_t f, bool add) {
  return add ? log2_q32(uint64_t(f) + 1) - log2_q32(f) : log2_q32(f) - log2_q32(uint64_t(f) - 1);
}

// Whether a symbol may take the next correction step: it is seen, and keeps >= 1 when removing.
KVCODEC_HD bool freq_step_allowed(uint64_t count, uint32_t f, bool add) { return count && (add || f > 1); }

// ---- serialisation -------------------------------------------------------------------------

// LEB128 varints (at most 5 bytes) and zigzag, as docs/format.md defines them.
KVCODEC_HD uint32_t varint_size(uint32_t v) {
  uint32_t n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}
KVCODEC_HD uint32_t put_varint(uint8_t* p, uint32_t v) {
  uint32_t n = 0;
  for (; v >= 0x80; v >>= 7) p[n++] = uint8_t(v | 0x80);
  p[n++] = uint8_t(v);
  return n;
}
KVCODEC_HD uint32_t zigzag32(int32_t v) { return (uint32_t(v) << 1) ^ uint32_t(v >> 31); }

// Worst-case size of one (layer, K/V) model in the model section: group count, tables (n - 1,
// lossy qmin, frequencies <= 4096 in <= 2 varint bytes), channel-group nibbles and, lossy, step
// codes (deltas of codes in [-640, 640]: zigzag < 2^14, <= 2 varint bytes) and centres
// (|center| <= 2^22: zigzag < 2^23, <= 4 varint bytes).
KVCODEC_HD uint64_t max_layer_model_bytes(uint64_t C, uint32_t groups, uint32_t slots, bool lossless) {
  const uint64_t table = 1 + (lossless ? 0 : 2) + 256 * 2;
  return 1 + uint64_t(groups) * slots * table + (C + 1) / 2 + (lossless ? 0 : C * (2 + 4));
}

}  // namespace kvcodec::detail
