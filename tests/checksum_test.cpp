// common/checksum.hpp: the segmented checksum of format version 2 must equal its definition in
// docs/format.md ("Checksums") whichever way it is computed: sequentially (the CPU codec), from
// per-segment digests in any order (the GPU, one thread per segment), and over an input split
// into two ranges anywhere (the head checksum skips its own field), and by the host's
// frame_checksum_host (sixteen segments at a time with AVX-512).
#include "common/checksum.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "common/simd.hpp"

namespace kvcodec::detail {
namespace {

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(n);
  for (uint8_t& c : b) c = uint8_t(rng());
  return b;
}

// The definition, written out: XXH64 of the concatenated little-endian XXH64s of 4 KiB segments.
uint64_t by_definition(const std::vector<uint8_t>& s) {
  std::vector<uint8_t> digests;
  for (size_t at = 0; at < s.size(); at += kChecksumSegmentBytes) {
    const size_t len = std::min<size_t>(kChecksumSegmentBytes, s.size() - at);
    const uint64_t d = xxh64(s.data() + at, len);
    for (int k = 0; k < 8; ++k) digests.push_back(uint8_t(d >> (8 * k)));
  }
  return xxh64(digests.data(), digests.size());
}

const size_t kSizes[] = {0, 1, 31, 32, 4095, 4096, 4097, 8192, 3 * 4096 + 17, 40 * 4096 + 4095};

TEST(Checksum, SegmentedEqualsDefinition) {
  for (size_t n : kSizes) {
    const auto s = random_bytes(n, uint32_t(n));
    EXPECT_EQ(frame_checksum(2, s.data(), n), by_definition(s)) << n;
    EXPECT_EQ(checksum_segments(n), (n + 4095) / 4096) << n;
  }
}

TEST(Checksum, Version1IsPlainXxh64) {
  for (size_t n : kSizes) {
    const auto s = random_bytes(n, uint32_t(n) + 7);
    EXPECT_EQ(frame_checksum(1, s.data(), n), xxh64(s.data(), n)) << n;
  }
}

TEST(Checksum, DigestHasherEqualsXxh64OfTheDigestBytes) {
  for (size_t count = 0; count <= 9; ++count) {
    std::vector<uint64_t> d(count);
    std::vector<uint8_t> bytes;
    for (size_t i = 0; i < count; ++i) {
      d[i] = 0x9E3779B97F4A7C15ull * (i + 1) ^ (i << 40);
      for (int k = 0; k < 8; ++k) bytes.push_back(uint8_t(d[i] >> (8 * k)));
    }
    EXPECT_EQ(combine_digests(d.data(), count), xxh64(bytes.data(), bytes.size())) << count;
  }
}

// The GPU's way: every segment's digest computed independently (here in reverse order), then
// combined; and the two-range input split at every interesting point.
TEST(Checksum, ParallelSegmentsAndSplitInputsAgree) {
  for (size_t n : kSizes) {
    const auto s = random_bytes(n, uint32_t(n) + 99);
    const uint64_t want = by_definition(s);
    const ChecksumInput whole{s.data(), n};
    std::vector<uint64_t> digests(checksum_segments(n));
    for (size_t i = digests.size(); i-- > 0;) digests[i] = segment_digest(whole, i);
    EXPECT_EQ(combine_digests(digests.data(), digests.size()), want) << n;
    for (size_t split : {size_t(0), size_t(1), size_t(56), size_t(4095), size_t(4096), size_t(4097), n / 2, n}) {
      if (split > n) continue;
      const ChecksumInput two{s.data(), split, s.data() + split, n - split};
      EXPECT_EQ(frame_checksum(2, two), want) << n << " split at " << split;
      for (size_t i = 0; i < digests.size(); ++i) EXPECT_EQ(segment_digest(two, i), digests[i]) << n << " " << split;
    }
  }
}

TEST(Checksum, AnyFlippedBitChangesIt) {
  auto s = random_bytes(3 * 4096 + 100, 5);
  const uint64_t base = frame_checksum(2, s.data(), s.size());
  for (size_t at : {size_t(0), size_t(4095), size_t(4096), s.size() - 1}) {
    s[at] ^= 0x10;
    EXPECT_NE(frame_checksum(2, s.data(), s.size()), base) << at;
    s[at] ^= 0x10;
  }
}

TEST(Checksum, HostVersionEqualsDefinitionOnEveryPath) {
  // Around the 16-segment groups of the AVX-512 path: none, one, one and a partial segment,
  // several with whole and partial segments left over; an offset start (unaligned loads).
  const size_t seg = kChecksumSegmentBytes;
  const std::vector<uint8_t> big = random_bytes(50 * seg + 100, 11);
  for (size_t size : {size_t(0), size_t(1), seg - 1, seg, 15 * seg + 7, 16 * seg, 16 * seg + 1, 17 * seg,
                      33 * seg + 4095, 48 * seg, 50 * seg + 99}) {
    for (size_t start : {size_t(0), size_t(1)}) {
      const std::vector<uint8_t> s(big.begin() + std::ptrdiff_t(start), big.begin() + std::ptrdiff_t(start + size));
      const uint64_t want = by_definition(s);
      for (bool avx512 : {true, false}) {
        set_avx512_enabled(avx512);
        EXPECT_EQ(frame_checksum_host(2, big.data() + start, size), want) << size << " bytes, AVX-512 " << avx512;
        EXPECT_EQ(frame_checksum_host(1, big.data() + start, size), xxh64(s.data(), s.size())) << size;
      }
      set_avx512_enabled(true);
    }
  }
  // A changed byte in the last segment of a group, and in the group's first.
  std::vector<uint8_t> s(big.begin(), big.begin() + std::ptrdiff_t(32 * seg));
  const uint64_t before = frame_checksum_host(2, s.data(), s.size());
  for (size_t at : {15 * seg + 4000, 16 * seg + 8}) {
    s[at] ^= 0x10;
    EXPECT_NE(frame_checksum_host(2, s.data(), s.size()), before) << at;
    EXPECT_EQ(frame_checksum_host(2, s.data(), s.size()), by_definition(s)) << at;
    s[at] ^= 0x10;
  }
}

}  // namespace
}  // namespace kvcodec::detail
