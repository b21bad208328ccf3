// common/xxh64.hpp: our XXH64 must equal the reference xxHash for every input, seed and split,
// since frame checksums (docs/format.md) and the golden frames depend on it.
#include "common/xxh64.hpp"

#include <gtest/gtest.h>

#include "test_util.hpp"

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

// Where the reference library's header is installed, compare against it directly as well.
#if __has_include(<xxhash.h>)
#define XXH_INLINE_ALL
#include <xxhash.h>
#define KVCODEC_HAVE_REFERENCE_XXHASH 1
#endif

namespace kvcodec::detail {
namespace {

// 1000 bytes from a fixed linear congruential generator; the vectors below hash its prefixes.
std::vector<uint8_t> pattern() {
  std::vector<uint8_t> b(1000);
  uint32_t x = 2654435761u;
  for (uint8_t& c : b) {
    x = x * 1664525u + 1013904223u;
    c = uint8_t(x >> 24);
  }
  return b;
}

// Expected values computed once with libxxhash 0.8.1, XXH64(pattern(), len, seed). Lengths
// cover every path: no stripe, the 8-, 4- and 1-byte tails, exactly one and several stripes.
struct Vector {
  size_t len;
  uint64_t seed;
  uint64_t hash;
};
constexpr Vector kVectors[] = {
    {0, 0, 0xEF46DB3751D8E999ull},  // the published XXH64 of the empty input
    {1, 0, 0x6D69E28F063257F9ull},
    {3, 0, 0xA398A51B214C81C7ull},
    {4, 0, 0x1E904D1B80500CE1ull},
    {7, 0, 0x5121CC916DB67A05ull},
    {8, 0, 0xA7B5F33BBF8646CDull},
    {9, 0, 0x2AE285EC5752D5A8ull},
    {31, 0, 0x66B01F7F60AA151Cull},
    {32, 0, 0x7C9D7F1C912DEC98ull},
    {33, 0, 0x7F176B5D7C8E472Cull},
    {63, 0, 0xB592E5B40080B1C8ull},
    {64, 0, 0x136815DBD2A2D175ull},
    {65, 0, 0xBE4AFBF7A44C9CA9ull},
    {100, 0, 0x390656C43D63F4A0ull},
    {1000, 0, 0x55CFF8F8CCB96E2Full},
    {0, 1, 0xD5AFBA1336A3BE4Bull},
    {4, 1, 0x0E29CD9F0E574543ull},
    {32, 1, 0x6D14ECC258609F33ull},
    {100, 1, 0x791829D7B939F4E0ull},
    {0, 0x9E3779B97F4A7C15ull, 0xC4349FC93C010000ull},
    {7, 0x9E3779B97F4A7C15ull, 0x4B36EF181AEADBB5ull},
    {32, 0x9E3779B97F4A7C15ull, 0x9E0B1F1AD9FBE4BCull},
    {1000, 0x9E3779B97F4A7C15ull, 0x17C961083486BE52ull},
    {0, ~0ull, 0x298F4C84B24F5380ull},
    {31, ~0ull, 0x8BD4B69B0EE88954ull},
    {65, ~0ull, 0x88310449FD929964ull},
    {1000, ~0ull, 0xA84A53E662E50C38ull},
};

TEST(Xxh64, KnownVectorsOneShotAndStreaming) {
  const std::vector<uint8_t> b = pattern();
  for (const Vector& v : kVectors) {
    EXPECT_EQ(xxh64(b.data(), v.len, v.seed), v.hash) << "len " << v.len << " seed " << v.seed;
    Xxh64State st(v.seed);
    for (size_t i = 0; i < v.len; ++i) st.update(&b[i], 1);
    EXPECT_EQ(st.digest(), v.hash) << "byte at a time, len " << v.len << " seed " << v.seed;
  }
  EXPECT_EQ(xxh64(nullptr, 0), 0xEF46DB3751D8E999ull);
}

TEST(Xxh64, StreamingEqualsOneShotForAnySplit) {
  std::mt19937_64 rng(7);
  std::vector<uint8_t> b(1000);
  for (uint8_t& c : b) c = uint8_t(rng());
  for (size_t len = 0; len <= b.size(); len += 7) {
    const uint64_t seed = rng();
    Xxh64State st;
    st.reset(seed);
    for (size_t pos = 0; pos < len;) {
      const size_t n = std::min<size_t>(len - pos, rng() % 80);  // empty updates too
      st.update(b.data() + pos, n);
      pos += n;
    }
    EXPECT_EQ(st.digest(), xxh64(b.data(), len, seed)) << "len " << len;
  }
}

TEST(Xxh64, DigestDoesNotEndTheStreamAndResetRestarts) {
  const std::vector<uint8_t> b = pattern();
  Xxh64State st;
  st.update(b.data(), 40);
  EXPECT_EQ(st.digest(), xxh64(b.data(), 40));
  st.update(b.data() + 40, 60);
  EXPECT_EQ(st.digest(), xxh64(b.data(), 100));
  st.reset(5);
  st.update(b.data(), 3);
  EXPECT_EQ(st.digest(), xxh64(b.data(), 3, 5));
}

TEST(Xxh64, IndependentOfAlignment) {
  const std::vector<uint8_t> b = pattern();
  for (size_t shift = 1; shift < 8; ++shift) {
    std::vector<uint8_t> moved(shift + 200);
    std::copy(b.begin(), b.begin() + 200, moved.begin() + ptrdiff_t(shift));
    EXPECT_EQ(xxh64(moved.data() + shift, 200, 3), xxh64(b.data(), 200, 3)) << "shift " << shift;
  }
}

TEST(Xxh64, SingleBitChangesChangeTheHash) {
  std::vector<uint8_t> b = pattern();
  const uint64_t h = xxh64(b.data(), 64);
  for (size_t bit = 0; bit < 64 * 8; bit += 13) {
    b[bit / 8] ^= uint8_t(1u << (bit % 8));
    EXPECT_NE(xxh64(b.data(), 64), h) << "bit " << bit;
    b[bit / 8] ^= uint8_t(1u << (bit % 8));
  }
}

#if defined(KVCODEC_HAVE_REFERENCE_XXHASH)
TEST(Xxh64, MatchesReferenceLibraryOnRandomInputs) {
  std::mt19937_64 rng(2024);
  std::vector<uint8_t> b(1000);
  for (size_t len = 0; len <= b.size(); ++len) {
    for (uint8_t& c : b) c = uint8_t(rng());
    const uint64_t seed = len % 3 == 0 ? 0 : rng();
    ASSERT_EQ(xxh64(b.data(), len, seed), XXH64(b.data(), len, seed)) << "len " << len << " seed " << seed;
  }
}
#else
TEST(Xxh64, MatchesReferenceLibraryOnRandomInputs) {
  KVCODEC_SKIP_OR_FAIL_IN_CI("xxhash.h not installed (libxxhash-dev)");
}
#endif

}  // namespace
}  // namespace kvcodec::detail
