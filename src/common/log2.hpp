// Deterministic fixed-point log2 for the encoder's decisions (table normalisation, channel
// clustering). Floating-point log2 differs between libm versions and GPUs; these integer
// routines give the same bits everywhere, so frames are byte-identical on every machine.
#pragma once

#include <cstdint>

#include "common/host_device.hpp"

namespace kvcodec::detail {

KVCODEC_HD uint32_t clz64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return uint32_t(__clzll((long long)x));
#else
  return uint32_t(__builtin_clzll(x));
#endif
}

// log2(x) * 2^32 for x >= 1, truncated (digit-by-digit squaring; error < 2^-28); 0 for x = 0
// (callers weigh it by a count that is then 0; clz of 0 is undefined).
KVCODEC_HD uint64_t log2_q32(uint64_t x) {
  if (x == 0) return 0;
  const uint32_t e = 63 - clz64(x);
  uint64_t y = (x << (63 - e)) >> 32;  // mantissa in Q31, [2^31, 2^32)
  uint64_t frac = 0;
  for (int i = 1; i <= 32; ++i) {
    y = (y * y) >> 31;  // square: Q31 in [2^31, 2^33)
    if (y >= (1ull << 32)) {
      y >>= 1;
      frac |= 1ull << (32 - i);
    }
  }
  return (uint64_t(e) << 32) | frac;
}

}  // namespace kvcodec::detail
