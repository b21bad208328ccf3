// Per-value quantization maths shared by the CPU and CUDA codecs (format v1).
//
// A channel (layer, K/V, channel) is quantized on the grid { (center + q) * step : q integer }.
// step is coded as a 16-bit "step code" k: step = kStepMantissa[k mod 16] * 2^floor(k / 16), an
// exact fp32 value on every machine (a table lookup and a power-of-two scaling, no libm).
#pragma once

#include <cstdint>

#include "kvcodec/detail/dtype.hpp"
#include "kvcodec/detail/host_device.hpp"

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

// Rounds an fp32 value to dtype `dt` (DType code) and stores it at p.
KVCODEC_HD void store_from_f32(void* p, uint8_t dt, float v) {
  switch (dt) {
    case 1: *static_cast<float*>(p) = v; break;
    case 2: *static_cast<uint16_t*>(p) = f32_to_f16(v); break;
    case 3: *static_cast<uint16_t*>(p) = f32_to_bf16(v); break;
    default: *static_cast<uint8_t*>(p) = f32_to_f8e4m3(v); break;
  }
}

}  // namespace kvcodec::detail
