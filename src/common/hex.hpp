// A digest or checksum as 16 lowercase hex digits: how messages, reports and the CLI name a
// profile (its digest) or a value's XXH64.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace kvcodec::detail {

inline std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace kvcodec::detail
