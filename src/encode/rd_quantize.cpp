// Rate-distortion optimised quantization (rd_quantize.hpp).
#include "encode/rd_quantize.hpp"

#include "common/log2.hpp"
#include "common/quant.hpp"
#include "encode/encode_values.hpp"
#include "kvcodec/format.hpp"

namespace kvcodec::detail {

void rd_tables(const std::vector<uint32_t>& codes, RdTables& t) {
  const size_t n = codes.size();
  t.bits.resize(n);
  t.escape.resize(n);
  t.up.resize(n);
  t.down.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t freq = (codes[i] & ~kEscFlag) >> 16;
    const bool esc = (codes[i] & kEscFlag) != 0;
    // -log2(freq / 2^kProbBits) from log2_q32 (exact integers), then in bits as a double; a
    // frequency of 0 (an escape symbol that no value used) costs the most a symbol can.
    const uint64_t q32 = (uint64_t(kProbBits) << 32) - (freq ? log2_q32(freq) : 0);
    t.bits[i] = double(q32) * 0x1p-32 + (esc ? 32.0 : 0.0);
    t.escape[i] = esc ? 1 : 0;
  }
  // Moving a value at offset |f| from grid point n to its other neighbour adds (1 - 2|f|) step^2
  // of squared error: it can gain only when 1 - 2|f| < -kRdLambda * (bits of the neighbour -
  // bits of n), i.e. |f| > (1 + kRdLambda * delta) / 2.
  for (size_t g = 0; g < n / kLossyBins; ++g)
    for (uint32_t b = 0; b < kLossyBins; ++b) {
      const size_t i = g * kLossyBins + b;
      auto screen = [&](uint32_t nb) {
        if (b == kEscBin || nb >= kEscBin) return 1.0;  // never: the escape bin, or beyond the window
        if (t.escape[i] || t.escape[g * kLossyBins + nb]) return -1.0;
        return 0.5 * (1.0 + kRdLambda * (t.bits[g * kLossyBins + nb] - t.bits[i]));
      };
      t.up[i] = screen(b + 1);
      t.down[i] = b == 0 ? 1.0 : screen(b - 1);
    }
}

namespace {

// The squared error of coding x as grid index n (step s): 0 where the table escapes it.
double sq_error(float x, int32_t n, float s, bool esc) {
  if (esc) return 0.0;
  const double e = double(x) - double(dequantize(n, s));
  return e * e;
}

// The squared error of the block's values [c0, c1) of one token as coded now.
double block_error(const RdQuantizeInput& in, const float* xr, const int16_t* vr, uint32_t c0, uint32_t c1) {
  double err = 0;
  for (uint32_t c = c0; c < c1; ++c) {
    if (vr[c] == kEscapeValue) continue;
    const size_t at = size_t(in.group[c]) * kLossyBins + lossy_bin(vr[c]);
    err += sq_error(xr[c], vr[c] + in.center[c], in.step[c], in.tables->escape[at] != 0);
  }
  return err;
}

}  // namespace

size_t rd_quantize(const RdQuantizeInput& in, int16_t* val, size_t val_pitch) {
  size_t moved = 0;
  const uint32_t C = in.channels;
  const RdTables& tb = *in.tables;
  for (uint32_t t = 0; t < in.tokens; ++t) {
    const float* xr = in.x + size_t(t) * in.x_pitch;
    int16_t* vr = val + size_t(t) * val_pitch;
    for (uint32_t c0 = 0; c0 < C; c0 += in.block) {
      const uint32_t c1 = c0 + in.block < C ? c0 + in.block : C;
      double budget = -1, err = 0;  // the block's allowed and current squared error, once needed
      for (uint32_t c = c0; c < c1; ++c) {
        const int32_t q = vr[c];
        if (q == kEscapeValue) continue;
        const int32_t n = q + in.center[c];
        const size_t g = size_t(in.group[c]) * kLossyBins;
        const size_t a0 = g + lossy_bin(q);
        // The other neighbouring grid point is on the far side of x from n.
        const double f = double(xr[c]) * in.inv_step[c] - double(n);
        if (f > 0 ? !(f > tb.up[a0]) : !(-f > tb.down[a0])) continue;  // screen: cannot gain
        const int32_t q1 = f > 0 ? q + 1 : q - 1;
        const size_t a1 = g + lossy_bin(q1);
        const float s = in.step[c];
        const double e0 = sq_error(xr[c], n, s, tb.escape[a0] != 0);
        const double e1 = sq_error(xr[c], q1 + in.center[c], s, tb.escape[a1] != 0);
        if (e1 - e0 + kRdLambda * double(s) * double(s) * (tb.bits[a1] - tb.bits[a0]) >= 0) continue;
        if (budget < 0) {
          budget = 0;
          for (uint32_t k = c0; k < c1; ++k) budget += 0.25 * double(in.step[k]) * double(in.step[k]);
          err = block_error(in, xr, vr, c0, c1);
        }
        if (err + (e1 - e0) > budget) continue;
        err += e1 - e0;
        vr[c] = int16_t(q1);
        ++moved;
      }
    }
  }
  return moved;
}

}  // namespace kvcodec::detail
