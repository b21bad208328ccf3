// XXH64, the 64-bit xxHash: frame checksums (docs/format.md) and stream message checksums.
//
// Written from the public algorithm description (xxHash's doc/xxhash_spec.md, "XXH64"), so the
// core library needs no third-party header and GPU code can verify chunks with the same
// function. Values equal the reference library's XXH64(data, len, seed) for every input.
//
// Read me first:
//   * Input is read as little-endian 64/32-bit words one byte at a time, so the hash does not
//     depend on the host's byte order or on alignment; compilers merge the byte loads into
//     one load on little-endian targets.
//   * All arithmetic is modulo 2^64 (unsigned wrap-around is the algorithm, not a bug).
//   * One-shot and streaming share every step, so they cannot disagree: both consume 32-byte
//     stripes with four accumulators, then fold the remaining < 32 bytes into one value.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/bytes.hpp"
#include "common/host_device.hpp"

namespace kvcodec {
namespace detail {
namespace xxh64_impl {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ull;
constexpr uint64_t kPrime4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kPrime5 = 0x27D4EB2F165667C5ull;
constexpr size_t kStripeBytes = 32;

// r is a constant in 1..63 at every call site, so neither shift is by 64.
KVCODEC_HD uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// One accumulator step over an 8-byte lane.
KVCODEC_HD uint64_t mix_lane(uint64_t acc, uint64_t lane) { return rotl(acc + lane * kPrime2, 31) * kPrime1; }

// The four stripe accumulators.
struct Lanes {
  uint64_t v[4];

  KVCODEC_HD void init(uint64_t seed) {
    v[0] = seed + kPrime1 + kPrime2;
    v[1] = seed + kPrime2;
    v[2] = seed;
    v[3] = seed - kPrime1;
  }
  // Consumes one 32-byte stripe: lane i takes bytes 8i..8i+7. Written out rather than looped
  // so that -O2 keeps the four independent chains in registers (the hash's whole speed).
  KVCODEC_HD void stripe(const uint8_t* p) {
    v[0] = mix_lane(v[0], load_le64(p));
    v[1] = mix_lane(v[1], load_le64(p + 8));
    v[2] = mix_lane(v[2], load_le64(p + 16));
    v[3] = mix_lane(v[3], load_le64(p + 24));
  }
  // The accumulators folded into one value (for inputs of at least one stripe).
  KVCODEC_HD uint64_t converge() const {
    uint64_t h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
    for (int i = 0; i < 4; ++i) h = (h ^ mix_lane(0, v[i])) * kPrime1 + kPrime4;
    return h;
  }
};

// Folds the last `len` (< 32) input bytes into h, which already includes the total input
// length, and mixes the result (the "avalanche").
KVCODEC_HD uint64_t finish(uint64_t h, const uint8_t* p, size_t len) {
  for (; len >= 8; p += 8, len -= 8) h = rotl(h ^ mix_lane(0, load_le64(p)), 27) * kPrime1 + kPrime4;
  if (len >= 4) {
    h = rotl(h ^ uint64_t(load_le32(p)) * kPrime1, 23) * kPrime2 + kPrime3;
    p += 4;
    len -= 4;
  }
  for (; len > 0; ++p, --len) h = rotl(h ^ uint64_t(*p) * kPrime5, 11) * kPrime1;
  h ^= h >> 33;
  h *= kPrime2;
  h ^= h >> 29;
  h *= kPrime3;
  h ^= h >> 32;
  return h;
}

}  // namespace xxh64_impl

// XXH64 of `size` bytes at `data` (may be null when size is 0).
KVCODEC_HD uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0) {
  using namespace xxh64_impl;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  size_t left = size;
  uint64_t h = seed + kPrime5;
  if (left >= kStripeBytes) {
    Lanes lanes;
    lanes.init(seed);
    for (; left >= kStripeBytes; p += kStripeBytes, left -= kStripeBytes) lanes.stripe(p);
    h = lanes.converge();
  }
  return finish(h + uint64_t(size), p, left);
}

// Incremental XXH64: reset(seed), any number of update() calls, digest(). The digest equals
// xxh64() of the concatenated input, however it was split; digest() does not end the stream.
// Fixed size, trivially copyable, no allocation: usable per thread in GPU code.
class Xxh64State {
 public:
  KVCODEC_HD explicit Xxh64State(uint64_t seed = 0) { reset(seed); }

  KVCODEC_HD void reset(uint64_t seed = 0) {
    seed_ = seed;
    total_ = 0;
    buffered_ = 0;
    lanes_.init(seed);
  }

  KVCODEC_HD void update(const void* data, size_t size) {
    using namespace xxh64_impl;
    const uint8_t* p = static_cast<const uint8_t*>(data);
    total_ += size;
    // Complete a partly filled stripe first.
    if (buffered_ > 0) {
      const size_t take = size < kStripeBytes - buffered_ ? size : kStripeBytes - buffered_;
      for (size_t i = 0; i < take; ++i) buf_[buffered_ + i] = p[i];
      buffered_ += uint32_t(take);
      p += take;
      size -= take;
      if (buffered_ < kStripeBytes) return;
      lanes_.stripe(buf_);
      buffered_ = 0;
    }
    // A local copy: the input bytes may alias *this, which would pin lanes_ to memory.
    Lanes lanes = lanes_;
    for (; size >= kStripeBytes; p += kStripeBytes, size -= kStripeBytes) lanes.stripe(p);
    lanes_ = lanes;
    for (size_t i = 0; i < size; ++i) buf_[i] = p[i];
    buffered_ = uint32_t(size);
  }

  KVCODEC_HD uint64_t digest() const {
    using namespace xxh64_impl;
    const uint64_t h = total_ >= kStripeBytes ? lanes_.converge() : seed_ + kPrime5;
    return finish(h + total_, buf_, buffered_);
  }

 private:
  xxh64_impl::Lanes lanes_;
  uint64_t seed_;
  uint64_t total_;  // bytes passed to update() since reset(); the spec adds it modulo 2^64
  uint8_t buf_[xxh64_impl::kStripeBytes];
  uint32_t buffered_;  // bytes of buf_ in use, < 32 between calls
};

}  // namespace detail
}  // namespace kvcodec
