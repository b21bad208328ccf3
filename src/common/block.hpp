// One CUDA block's worth of threads, for code written once and run both as a CUDA block and, on
// the host, as plain loops ("block emulation", the block-level sibling of warp.hpp).
//
// Code is written as phases separated by barriers, against a block type B:
//   blk.for_range(n, f)       f(i) for every i < n, spread over the block's threads. The calls of
//                             one for_range must be independent (any order, any interleaving):
//                             they may share memory only through atomics.
//   blk.for_warps(n, f)       f(w, i) for every i < n, one warp (warp.hpp's W) per item.
//   blk.single(f)             f() once (by thread 0).
//   blk.sync()                barrier: what any thread wrote before it, every thread sees after.
//   blk.atomic_add/min(p, v)  integer read-modify-write (shared or global memory), for sums and
//                             minima whose result does not depend on the order of the updates.
//   blk.threads()             threads of the block: a fixed partition count for code that splits
//                             work into per-thread parts (the host runs the same parts).
// Every thread must reach every sync() (uniform control flow around phases), and a value read
// after a barrier that some thread will overwrite later needs another barrier in between.
// The host emulation runs each phase to completion before the next, so it checks the phases'
// logic, not their synchronisation; run in reverse (HostBlock::reverse), it also checks that no
// call of a phase depends on another's having run first.
#pragma once

#include <cstdint>

#include "common/host_device.hpp"
#include "common/warp.hpp"

namespace kvcodec::detail {

// Threads per block of the block-level kernels (and parts of the host emulation).
inline constexpr uint32_t kBlockThreads = 256;

struct HostBlock {
  using Warp = HostWarp;
  bool reverse = false;  // run every phase's calls in descending order
  uint32_t threads() const { return kBlockThreads; }
  template <typename F>
  void for_range(uint32_t n, F&& f) const {
    for (uint32_t k = 0; k < n; ++k) f(reverse ? n - 1 - k : k);
  }
  template <typename F>
  void for_warps(uint32_t n, F&& f) const {
    for (uint32_t k = 0; k < n; ++k) {
      HostWarp w;
      f(w, reverse ? n - 1 - k : k);
    }
  }
  template <typename F>
  void single(F&& f) const {
    f();
  }
  void sync() const {}
  void atomic_add(uint64_t* p, uint64_t v) const { *p += v; }
  void atomic_min(uint32_t* p, uint32_t v) const {
    if (v < *p) *p = v;
  }
};

#if defined(__CUDACC__)
// The real block: blockDim.x threads (a multiple of 32, at most kBlockThreads), all taking part.
struct DeviceBlock {
  using Warp = DeviceWarp;
  __device__ __forceinline__ uint32_t threads() const { return blockDim.x; }
  template <typename F>
  __device__ __forceinline__ void for_range(uint32_t n, F&& f) const {
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
  }
  template <typename F>
  __device__ __forceinline__ void for_warps(uint32_t n, F&& f) const {
    DeviceWarp w{threadIdx.x % kWarpLanes};
    for (uint32_t i = threadIdx.x / kWarpLanes; i < n; i += blockDim.x / kWarpLanes) f(w, i);
  }
  template <typename F>
  __device__ __forceinline__ void single(F&& f) const {
    if (threadIdx.x == 0) f();
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  __device__ __forceinline__ void atomic_add(uint64_t* p, uint64_t v) const {
    atomicAdd(reinterpret_cast<unsigned long long*>(p), (unsigned long long)v);
  }
  __device__ __forceinline__ void atomic_min(uint32_t* p, uint32_t v) const { atomicMin(p, v); }
};
#endif

}  // namespace kvcodec::detail
