// One warp's worth of lanes, for code written once and run both as a CUDA warp and, on the
// host, as a plain loop over 32 lanes ("warp emulation", used by the tests of machines without
// a GPU).
//
// Code is written in SIMT style against a warp type W:
//   typename W::template Lanes<T> v;      one T per lane (a single register on the device)
//   for (uint32_t j : w.lanes()) { ... }   per-lane work: all 32 lanes on the host, the
//                                          thread's own lane on the device
//   w.ballot(p), w.shfl(v, src), w.sum(v)  collectives: every lane calls them, outside
//                                          per-lane loops, with uniform control flow
// Per-lane loops must not communicate through memory without w.sync() in between.
#pragma once

#include <cstdint>

#include "common/host_device.hpp"

namespace kvcodec::detail {

inline constexpr uint32_t kWarpLanes = 32;

KVCODEC_HD uint32_t popc32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return uint32_t(__popc(x));
#else
  return uint32_t(__builtin_popcount(x));
#endif
}

// Lanes below j: the mask a lane ANDs with a ballot to count its predecessors.
KVCODEC_HD uint32_t lanes_below(uint32_t j) { return (1u << j) - 1u; }

struct LaneRange {
  uint32_t first, last;
  struct It {
    uint32_t j;
    KVCODEC_HD uint32_t operator*() const { return j; }
    KVCODEC_HD It& operator++() {
      ++j;
      return *this;
    }
    KVCODEC_HD bool operator!=(const It& o) const { return j != o.j; }
  };
  KVCODEC_HD It begin() const { return {first}; }
  KVCODEC_HD It end() const { return {last}; }
};

// The host emulation: 32 lanes in lock step, collectives as loops.
struct HostWarp {
  template <typename T>
  struct Lanes {
    T v[kWarpLanes];
    T& operator[](uint32_t j) { return v[j]; }
    const T& operator[](uint32_t j) const { return v[j]; }
  };
  LaneRange lanes() const { return {0, kWarpLanes}; }
  uint32_t ballot(const Lanes<bool>& p) const {
    uint32_t m = 0;
    for (uint32_t j = 0; j < kWarpLanes; ++j) m |= uint32_t(p[j]) << j;
    return m;
  }
  template <typename T>
  Lanes<T> shfl(const Lanes<T>& v, const Lanes<uint32_t>& src) const {
    Lanes<T> r;
    for (uint32_t j = 0; j < kWarpLanes; ++j) r[j] = v[src[j] & (kWarpLanes - 1)];
    return r;
  }
  uint64_t sum(const Lanes<uint64_t>& v) const {
    uint64_t s = 0;
    for (uint32_t j = 0; j < kWarpLanes; ++j) s += v[j];
    return s;
  }
  void sync() const {}
};

#if defined(__CUDACC__)
// The real warp: one thread per lane; all 32 threads of the warp must take part.
struct DeviceWarp {
  static constexpr uint32_t kAll = 0xffffffffu;
  template <typename T>
  struct Lanes {
    T v;
    __device__ __forceinline__ T& operator[](uint32_t) { return v; }
    __device__ __forceinline__ const T& operator[](uint32_t) const { return v; }
  };
  uint32_t lane;
  __device__ __forceinline__ LaneRange lanes() const { return {lane, lane + 1}; }
  __device__ __forceinline__ uint32_t ballot(const Lanes<bool>& p) const { return __ballot_sync(kAll, p.v); }
  template <typename T>
  __device__ __forceinline__ Lanes<T> shfl(const Lanes<T>& v, const Lanes<uint32_t>& src) const {
    return {__shfl_sync(kAll, v.v, int(src.v))};
  }
  __device__ __forceinline__ uint64_t sum(const Lanes<uint64_t>& v) const {
    uint64_t s = v.v;
    for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(kAll, s, d);
    return s;
  }
  __device__ __forceinline__ void sync() const { __syncwarp(); }
};
#endif

}  // namespace kvcodec::detail
