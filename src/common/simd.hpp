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

// Whether the AVX2 paths run: the CPU has AVX2 (and so F16C) and SIMD is enabled.
inline bool avx2_enabled() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx2");
  return has && simd_enabled();
#else
  return false;
#endif
}

}  // namespace kvcodec::detail
