// Run-time switch for the CPU's SIMD code paths (internal). They produce exactly the bytes and
// values of the scalar paths; tests turn SIMD off to check that.
#pragma once

#include <atomic>

namespace kvcodec::detail {

inline std::atomic<bool>& simd_flag() {
  static std::atomic<bool> on{true};
  return on;
}
inline bool simd_enabled() { return simd_flag().load(std::memory_order_relaxed); }
inline void set_simd_enabled(bool on) { simd_flag().store(on, std::memory_order_relaxed); }

}  // namespace kvcodec::detail
