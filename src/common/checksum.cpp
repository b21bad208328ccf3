// frame_checksum_host (common/checksum.hpp): version-2 segments hashed sixteen at a time with
// AVX-512 where the CPU has it. Each XXH64 is a chain of two 64-bit multiplies per 8 bytes, so
// one segment at a time leaves the multiplier idle between them; sixteen segments in flight (two
// per register, each segment's four accumulators in one half) keep it busy. Same value as
// frame_checksum by construction: the same steps, lane for lane.
#include <cstdint>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/checksum.hpp"
#include "common/simd.hpp"

namespace kvcodec::detail {
namespace {

constexpr uint32_t kGroupSegments = 16;

#if defined(__x86_64__)
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_* operands.
#pragma GCC diagnostic push
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// mix_lane on eight accumulators.
__attribute__((target("avx512f,avx512dq,avx512vl"), always_inline)) inline __m512i mix(__m512i acc, __m512i x,
                                                                                       __m512i p1, __m512i p2) {
  const __m512i t = _mm512_add_epi64(acc, _mm512_mullo_epi64(x, p2));
  return _mm512_mullo_epi64(_mm512_rol_epi64(t, 31), p1);
}

// The XXH64 digests of the kGroupSegments whole segments at p (segment i at p + i * 4 KiB).
__attribute__((target("avx512f,avx512dq,avx512vl"))) void group_digests_avx512(const uint8_t* p, uint64_t* out) {
  using namespace xxh64_impl;
  constexpr uint32_t kRegs = kGroupSegments / 2;
  const __m512i p1 = _mm512_set1_epi64(int64_t(kPrime1)), p2 = _mm512_set1_epi64(int64_t(kPrime2));
  Lanes seed;  // seed 0
  seed.init(0);
  const __m512i init = _mm512_setr_epi64(int64_t(seed.v[0]), int64_t(seed.v[1]), int64_t(seed.v[2]),
                                         int64_t(seed.v[3]), int64_t(seed.v[0]), int64_t(seed.v[1]),
                                         int64_t(seed.v[2]), int64_t(seed.v[3]));
  __m512i acc[kRegs];
  for (uint32_t r = 0; r < kRegs; ++r) acc[r] = init;
  // Two stripes of two segments per register and step: [a's stripe s, b's stripe s], then s + 1.
  for (uint32_t off = 0; off < kChecksumSegmentBytes; off += 2 * kStripeBytes)
    for (uint32_t r = 0; r < kRegs; ++r) {
      const uint8_t* a = p + size_t(2 * r) * kChecksumSegmentBytes + off;
      const __m512i x = _mm512_loadu_si512(a), y = _mm512_loadu_si512(a + kChecksumSegmentBytes);
      acc[r] = mix(acc[r], _mm512_shuffle_i64x2(x, y, 0x44), p1, p2);
      acc[r] = mix(acc[r], _mm512_shuffle_i64x2(x, y, 0xee), p1, p2);
    }
  for (uint32_t r = 0; r < kRegs; ++r) {
    alignas(64) uint64_t v[8];
    _mm512_store_si512(v, acc[r]);
    for (uint32_t h = 0; h < 2; ++h) {
      Lanes l;
      for (uint32_t k = 0; k < 4; ++k) l.v[k] = v[4 * h + k];
      out[2 * r + h] = finish(l.converge() + kChecksumSegmentBytes, nullptr, 0);
    }
  }
}
#pragma GCC diagnostic pop
#endif

}  // namespace

uint64_t frame_checksum_host(uint16_t version, const uint8_t* data, uint64_t size) {
#if defined(__x86_64__)
  if (version >= 2 && avx512_enabled()) {
    DigestHasher h;
    const uint64_t whole = size / kChecksumSegmentBytes;
    uint64_t i = 0;
    for (uint64_t d[kGroupSegments]; i + kGroupSegments <= whole; i += kGroupSegments) {
      group_digests_avx512(data + i * kChecksumSegmentBytes, d);
      for (uint64_t x : d) h.add(x);
    }
    const ChecksumInput in{data, size, nullptr, 0};
    for (const uint64_t n = checksum_segments(size); i < n; ++i) h.add(segment_digest(in, i));
    return h.value();
  }
#endif
  return frame_checksum(version, data, size);
}

}  // namespace kvcodec::detail
