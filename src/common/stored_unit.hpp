// Stored units (docs/format.md 4.4): when a unit is kept raw, and its size. Shared by the CPU
// and GPU encoders (the same decision, the same bytes), the decoders and max_encoded_size.
#pragma once

#include <cstdint>

#include "common/host_device.hpp"

namespace kvcodec::detail {

// Size of a unit of n elements stored raw: the elements, padded to 4 bytes.
KVCODEC_HD uint64_t stored_unit_bytes(uint64_t n, uint32_t elem_size) { return (n * elem_size + 3) & ~uint64_t(3); }
// The fixed part of a coded unit: word count and 32 lane states per lane stream, the escape count.
KVCODEC_HD uint64_t coded_unit_headers(uint32_t planes, bool lossless) {
  return uint64_t(planes) * (4 + 4 * 32) + (lossless ? 0 : 4);
}
// Whether a unit of n elements whose coded form takes `coded` bytes is stored raw instead: when
// what the coding adds to its fixed headers (words, escapes, padding) exceeds the raw elements.
// A unit thus never exceeds stored_unit_bytes(n) + coded_unit_headers, the CPU and GPU encoders
// decide alike, and small units whose headers outweigh their values stay coded.
KVCODEC_HD bool store_unit(uint64_t coded, uint64_t n, uint32_t elem_size, uint32_t planes, bool lossless) {
  return coded > stored_unit_bytes(n, elem_size) + coded_unit_headers(planes, lossless);
}

}  // namespace kvcodec::detail
