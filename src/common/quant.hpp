// Per-value quantization maths shared by the CPU and CUDA codecs (format v1).
//
// A channel (layer, K/V, channel) is quantized on the grid { (center + q) * step : q integer }.
// step is coded as a 16-bit "step code" k: step = kStepMantissa[k mod 16] * 2^floor(k / 16), an
// exact fp32 value on every machine (a table lookup and a power-of-two scaling, no libm).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/dtype.hpp"
#include "common/host_device.hpp"

namespace kvcodec::detail {

// Step codes are limited to [kMinStepCode, kMaxStepCode]: steps 2^-40 .. 2^40.
inline constexpr int32_t kMinStepCode = -640;
inline constexpr int32_t kMaxStepCode = 640;
// Grid centres satisfy |center| <= kMaxCenter and coded symbols |q| <= 255, so center + q is an
// integer exactly representable in fp32.
inline constexpr int32_t kMaxCenter = 1 << 22;

// 2^(m/16) for m = 0..15, rounded to nearest fp32, as bit patterns (docs/format.md lists them).
KVCODEC_HD float step_mantissa(uint32_t m) {
  constexpr uint32_t kBits[16] = {
      0x3f800000u, 0x3f85aac3u, 0x3f8b95c2u, 0x3f91c3d3u, 0x3f9837f0u, 0x3f9ef532u,
      0x3fa5fed7u, 0x3fad583fu, 0x3fb504f3u, 0x3fbd08a4u, 0x3fc5672au, 0x3fce248cu,
      0x3fd744fdu, 0x3fe0ccdfu, 0x3feac0c7u, 0x3ff5257du};
  return bits_f32(kBits[m & 15]);
}

// Exact power of two 2^e for |e| <= 126, built from bits (no ldexp, identical on CPU and GPU).
KVCODEC_HD float pow2_f32(int32_t e) { return bits_f32(uint32_t(e + 127) << 23); }

KVCODEC_HD float step_from_code(int32_t code) {
  const int32_t e = code >= 0 ? code / 16 : -((-code + 15) / 16);  // floor(code / 16)
  const uint32_t m = uint32_t(code - e * 16);
  return step_mantissa(m) * pow2_f32(e);
}

// The reconstruction of grid index n = center + q, in fp32 (one correctly rounded multiply).
KVCODEC_HD float dequantize(int32_t n, float step) { return float(n) * step; }

// Exact power of two 2^e as a double for |e| <= 1022.
KVCODEC_HD double pow2_f64(int32_t e) {
  const uint64_t bits = uint64_t(e + 1023) << 52;
#if defined(__CUDA_ARCH__)
  return __longlong_as_double((long long)bits);
#else
  double d;
  std::memcpy(&d, &bits, 8);
  return d;
#endif
}

// Rounds v to dtype dt and back to fp32 (the value a decoder stores).
KVCODEC_HD float round_to_dtype(float v, uint8_t dt) {
  switch (dt) {
    case 1: return v;
    case 2: return f16_to_f32(f32_to_f16(v));
    case 3: return bf16_to_f32(f32_to_bf16(v));
    default: return f8e4m3_to_f32(f32_to_f8e4m3(v));
  }
}

// Spacing of dtype dt at the representable value v: the gap to the next value away from zero
// (at the largest finite value, the gap below it). From the exponent bits, so exact.
KVCODEC_HD double ulp_at(float v, uint8_t dt) {
  const uint32_t b = f32_bits(v);
  switch (dt) {
    case 1: {
      const int32_t e = int32_t((b >> 23) & 0xff);
      return pow2_f64((e ? e : 1) - 150);
    }
    case 2: {
      const int32_t e = int32_t((f32_to_f16(v) >> 10) & 0x1f);
      return pow2_f64((e ? e : 1) - 25);
    }
    case 3: {
      const int32_t e = int32_t((f32_to_bf16(v) >> 7) & 0xff);
      return pow2_f64((e ? e : 1) - 134);
    }
    default: {
      const int32_t e = int32_t((f32_to_f8e4m3(v) >> 3) & 0xf);
      return pow2_f64((e ? e : 1) - 10);
    }
  }
}

// Marks an escaped value (quantize_grid's result).
inline constexpr int32_t kEscapeIndex = INT32_MIN;

// Largest finite value of dtype dt.
KVCODEC_HD float max_finite(uint8_t dt) {
  switch (dt) {
    case 1: return 3.40282346638528859812e+38f;
    case 2: return 65504.0f;
    case 3: return 3.38953138925153547590e+38f;
    default: return 448.0f;
  }
}

// The grid index n of x (|n - center| <= 255) whose decoded value -- n * step in fp32, rounded to
// dt -- is within step/2 + ulp/2 of x; kEscapeIndex when x is not finite or no grid point
// qualifies. inv_step is 1.0 / double(step).
//  Fast path: n = nearest(x * inv_step); if the fp32 product is within step/2 of x (an exact test:
//  two floats differ exactly in double) and finite in dt, rounding to dt adds at most ulp/2, so
//  the bound holds without rounding anything. Otherwise n and its neighbours are checked fully.
KVCODEC_HD int32_t quantize_grid(float x, float step, double inv_step, int32_t center, uint8_t dt) {
  if (!(x - x == 0.0f)) return kEscapeIndex;  // inf or nan
  const double n0 = nearbyint(double(x) * inv_step);
  if (!(n0 - center <= 256.0 && n0 - center >= -256.0)) return kEscapeIndex;
  const int32_t base = int32_t(n0);
  const double half = 0.5 * double(step);
  if (base - center >= -255 && base - center <= 255) {
    const float p = dequantize(base, step);
    const double err = double(x) - double(p);
    if (err <= half && -err <= half && p <= max_finite(dt) && -p <= max_finite(dt)) return base;
  }
  for (int32_t k = 0; k < 3; ++k) {
    const int32_t n = base + (k == 0 ? 0 : k == 1 ? -1 : 1);
    if (n - center < -255 || n - center > 255) continue;
    const float xh = round_to_dtype(dequantize(n, step), dt);
    const double err = double(x) > double(xh) ? double(x) - double(xh) : double(xh) - double(x);
    if (err <= half + 0.5 * ulp_at(xh, dt)) return n;
  }
  return kEscapeIndex;
}

}  // namespace kvcodec::detail
