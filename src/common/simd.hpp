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

// AVX-512 paths can be switched off alone (tests compare them with the AVX2 ones).
inline std::atomic<bool>& avx512_flag() {
  static std::atomic<bool> on{true};
  return on;
}
inline void set_avx512_enabled(bool on) { avx512_flag().store(on, std::memory_order_relaxed); }

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

namespace kvcodec::detail {

// Whether the AVX-512 paths run: the CPU has AVX-512 F, VL, BW and DQ, and SIMD and AVX-512 are
// enabled.
inline bool avx512_enabled() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  return has && simd_enabled() && avx512_flag().load(std::memory_order_relaxed);
#else
  return false;
#endif
}

}  // namespace kvcodec::detail
