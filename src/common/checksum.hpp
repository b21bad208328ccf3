// Frame checksums (docs/format.md, "Checksums"), shared by the CPU codec and the CUDA backend.
//
// Format version 2 checksums a byte string S in two levels: S is cut into segments of
// kChecksumSegmentBytes (the last one shorter; an empty S has none), each segment is hashed
// with XXH64, and the checksum is the XXH64 of the segments' digests written as little-endian
// u64 in order. Segments are independent, so a GPU hashes a chunk with one thread per segment
// and a CPU could with one core per segment range; the second level reads 8 bytes per 4 KiB.
// Version 1 frames (still read) used the plain XXH64 of S.
//
// S is given as two byte ranges back to back (ChecksumInput): the head checksum covers header
// bytes 0..55 and then the head from byte 64 on (the checksum field itself is skipped); a chunk
// body is one range.
#pragma once

#include <cstdint>

#include "common/host_device.hpp"
#include "common/xxh64.hpp"

namespace kvcodec::detail {

inline constexpr uint32_t kChecksumSegmentBytes = 4096;

struct ChecksumInput {
  const uint8_t* a = nullptr;
  uint64_t a_size = 0;
  const uint8_t* b = nullptr;  // may be null when b_size is 0
  uint64_t b_size = 0;

  KVCODEC_HD uint64_t size() const { return a_size + b_size; }
};

KVCODEC_HD uint64_t checksum_segments(uint64_t size) {
  return (size + kChecksumSegmentBytes - 1) / kChecksumSegmentBytes;
}

// XXH64 of segment i (< checksum_segments(in.size())).
KVCODEC_HD uint64_t segment_digest(const ChecksumInput& in, uint64_t i) {
  const uint64_t begin = i * kChecksumSegmentBytes;
  const uint64_t end = begin + kChecksumSegmentBytes < in.size() ? begin + kChecksumSegmentBytes : in.size();
  if (end <= in.a_size) return xxh64(in.a + begin, end - begin);
  if (begin >= in.a_size) return xxh64(in.b + (begin - in.a_size), end - begin);
  Xxh64State st;  // the segment straddles the two ranges
  st.update(in.a + begin, in.a_size - begin);
  st.update(in.b, end - in.a_size);
  return st.digest();
}

// Second level: the XXH64 of the digests' little-endian bytes, fed one digest at a time. Four
// digests make one XXH64 stripe, so they are mixed in directly (no byte buffer).
class DigestHasher {
 public:
  KVCODEC_HD DigestHasher() { lanes_.init(0); }
  KVCODEC_HD void add(uint64_t digest) {
    pending_[count_ % 4] = digest;
    if (++count_ % 4 == 0)
      for (int i = 0; i < 4; ++i) lanes_.v[i] = xxh64_impl::mix_lane(lanes_.v[i], pending_[i]);
  }
  KVCODEC_HD uint64_t value() const {
    using namespace xxh64_impl;
    const uint64_t total = 8 * count_;
    const uint64_t h = total >= kStripeBytes ? lanes_.converge() : kPrime5;  // seed 0
    uint8_t tail[24];  // the < 4 digests not yet in a stripe
    const uint32_t rest = uint32_t(count_ % 4);
    for (uint32_t i = 0; i < rest; ++i)
      for (int k = 0; k < 8; ++k) tail[8 * i + k] = uint8_t(pending_[i] >> (8 * k));
    return finish(h + total, tail, 8 * rest);
  }

 private:
  xxh64_impl::Lanes lanes_;
  uint64_t pending_[4] = {0, 0, 0, 0};
  uint64_t count_ = 0;
};

// The version-2 checksum from the digests of all segments, in order.
KVCODEC_HD uint64_t combine_digests(const uint64_t* digests, uint64_t n) {
  DigestHasher h;
  for (uint64_t i = 0; i < n; ++i) h.add(digests[i]);
  return h.value();
}

// The checksum of `in` as format version `version` defines it (1: plain XXH64; 2: segmented),
// computed sequentially.
KVCODEC_HD uint64_t frame_checksum(uint16_t version, const ChecksumInput& in) {
  if (version < 2) {
    Xxh64State st;
    st.update(in.a, in.a_size);
    if (in.b_size) st.update(in.b, in.b_size);
    return st.digest();
  }
  DigestHasher h;
  const uint64_t n = checksum_segments(in.size());
  for (uint64_t i = 0; i < n; ++i) h.add(segment_digest(in, i));
  return h.value();
}

KVCODEC_HD uint64_t frame_checksum(uint16_t version, const uint8_t* data, uint64_t size) {
  return frame_checksum(version, ChecksumInput{data, size, nullptr, 0});
}

// frame_checksum of one range, for host code: the same value, with the version-2 segments hashed
// sixteen at a time where the CPU has AVX-512 (checksum.cpp).
uint64_t frame_checksum_host(uint16_t version, const uint8_t* data, uint64_t size);

}  // namespace kvcodec::detail
