// Bit-exact conversions between the storage dtypes and float, shared by CPU and CUDA code.
// Rounding is always round-to-nearest-even; NaN stays NaN; values beyond a format's range
// become infinity (f16, bf16) or saturate to +-448 (f8e4m3, which has no infinity).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/host_device.hpp"

namespace kvcodec::detail {

KVCODEC_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

KVCODEC_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

KVCODEC_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    // subnormal: mant * 2^-24, exact in f32
    float v = float(mant) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

KVCODEC_HD uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or nan
    return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
  }
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {  // below the smallest normal f16 (2^-14): subnormal or zero
    if (ax < 0x33000000u) return uint16_t(sign);  // < 2^-25: rounds to zero
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // value = m * 2^(e-150); f16 subnormal unit 2^-24
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return uint16_t(sign | q);
  }
  uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);  // round to nearest even at bit 13
  return uint16_t(sign | ((r - 0x38000000u) >> 13));
}

KVCODEC_HD float bf16_to_f32(uint16_t b) { return bits_f32(uint32_t(b) << 16); }

KVCODEC_HD uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet nan
  uint32_t r = x + 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(r >> 16);
}

// OCP FP8 E4M3 (e4m3fn): bias 7, no infinities, S.1111.111 is NaN, max normal 448.
KVCODEC_HD float f8e4m3_to_f32(uint8_t v) {
  uint32_t sign = uint32_t(v & 0x80u) << 24;
  uint32_t exp = (v >> 3) & 0xf;
  uint32_t mant = v & 0x7u;
  if (exp == 0xf && mant == 0x7) return bits_f32(sign | 0x7fc00000u);
  if (exp == 0) {
    float r = float(mant) * 0.001953125f;  // mant * 2^-9
    return sign ? -r : r;
  }
  return bits_f32(sign | ((exp + 120) << 23) | (mant << 20));
}

KVCODEC_HD uint8_t f32_to_f8e4m3(float f) {
  uint32_t x = f32_bits(f);
  uint8_t sign = uint8_t((x >> 24) & 0x80u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return uint8_t(sign | 0x7f);  // nan
  if (ax >= 0x43e80000u) return uint8_t(sign | 0x7e);  // >= 464 (incl. inf): saturate to 448
  if (ax < 0x3c800000u) {  // below 2^-6: subnormal range, unit 2^-9
    float a = bits_f32(ax) * 512.0f;  // exact scaling
    // round half to even on an integer in [0, 8]
    uint32_t q = uint32_t(a);
    float frac = a - float(q);
    if (frac > 0.5f || (frac == 0.5f && (q & 1))) ++q;
    return uint8_t(sign | q);  // q == 8 encodes 2^-6, the smallest normal: same bits
  }
  uint32_t r = ax + 0x7ffffu + ((ax >> 20) & 1u);
  uint32_t e = (r >> 23) - 120;
  uint32_t m = (r >> 20) & 0x7u;
  uint32_t out = (e << 3) | m;
  if (out > 0x7e) out = 0x7e;
  return uint8_t(sign | out);
}

// Loads one element of dtype code `dt` (DType values) as float.
KVCODEC_HD float load_as_f32(const void* p, uint8_t dt) {
  switch (dt) {
    case 1: return static_cast<const float*>(p)[0];
    case 2: return f16_to_f32(static_cast<const uint16_t*>(p)[0]);
    case 3: return bf16_to_f32(static_cast<const uint16_t*>(p)[0]);
    default: return f8e4m3_to_f32(static_cast<const uint8_t*>(p)[0]);
  }
}

// Rounds an fp32 value to dtype `dt` (DType code) and stores it at p (the inverse of
// load_as_f32 for representable values).
KVCODEC_HD void store_from_f32(void* p, uint8_t dt, float v) {
  switch (dt) {
    case 1: *static_cast<float*>(p) = v; break;
    case 2: *static_cast<uint16_t*>(p) = f32_to_f16(v); break;
    case 3: *static_cast<uint16_t*>(p) = f32_to_bf16(v); break;
    default: *static_cast<uint8_t*>(p) = f32_to_f8e4m3(v); break;
  }
}

}  // namespace kvcodec::detail
