// Probability tables and the interleaved rANS coder.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/log2.hpp"
#include "common/entropy.hpp"
#include "common/rans_lanes.hpp"
#include "common/simd.hpp"
#include "encode/model_values.hpp"

namespace kvcodec {
namespace {

TEST(FreqTable, NormalisesToTheTotalKeepingSeenSymbols) {
  std::vector<uint64_t> counts = {1000000, 1, 0, 3, 250000, 1, 1};
  auto t = FreqTable::from_counts(counts);
  ASSERT_TRUE(t.ok());
  uint32_t sum = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    sum += t->freq[s];
    EXPECT_EQ(t->freq[s] == 0, counts[s] == 0) << s;
  }
  EXPECT_EQ(sum, 1u << kProbBits);
  EXPECT_EQ(t->cum[4], t->freq[0] + t->freq[1] + t->freq[2] + t->freq[3]);
  // Cost close to the entropy (skewed distribution, 12-bit probabilities).
  EXPECT_LT(t->cost_bits(counts), entropy_bits(counts) * 1.01 + 40);
}

TEST(FreqTable, SingleSymbolAndErrors) {
  std::vector<uint64_t> one = {0, 0, 5};
  auto t = FreqTable::from_counts(one);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->freq[2], 1u << kProbBits);
  EXPECT_FALSE(FreqTable::from_counts(std::vector<uint64_t>{0, 0}).ok());
  EXPECT_FALSE(FreqTable::from_counts(std::vector<uint64_t>(257, 1)).ok());
  std::vector<uint16_t> bad = {100, 200};
  EXPECT_EQ(FreqTable::from_freqs(bad).status().code(), StatusCode::kCorruptData);
}

// The normalisation as docs/format.md states it, one step at a time with a scan of every symbol
// (the choice the device model builder makes too): from_counts must pick the same steps.
std::vector<uint16_t> reference_freqs(const std::vector<uint64_t>& counts) {
  const size_t n = counts.size();
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  std::vector<uint32_t> f(n);
  int64_t sum = 0;
  for (size_t s = 0; s < n; ++s) sum += f[s] = detail::initial_freq(counts[s], total);
  const bool add = sum < int64_t(detail::kRansM);
  while (sum != int64_t(detail::kRansM)) {
    size_t best = n;
    unsigned __int128 best_score = 0;
    for (size_t s = 0; s < n; ++s) {
      if (!detail::freq_step_allowed(counts[s], f[s], add)) continue;
      const unsigned __int128 score = (unsigned __int128)counts[s] * detail::freq_step_dlog(f[s], add);
      if (best == n || (add ? score > best_score : score < best_score)) {
        best = s;
        best_score = score;
      }
    }
    if (best == n) return {};
    f[best] += add ? 1 : -1;
    sum += add ? 1 : -1;
  }
  return std::vector<uint16_t>(f.begin(), f.end());
}

TEST(FreqTable, CorrectionStepsAreTheReferenceScans) {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 3000; ++trial) {
    const size_t n = 1 + rng() % 256;
    std::vector<uint64_t> counts(n);
    const int shape = trial % 4;  // geometric, flat, a few large with many ones, ties everywhere
    for (size_t s = 0; s < n; ++s) {
      const uint64_t r = rng();
      counts[s] = shape == 0 ? (r % 3 ? (uint64_t(1) << (r % 40)) >> (s % 20) : 0)
                : shape == 1 ? r % 1000
                : shape == 2 ? (r % 7 == 0 ? r % 5000000 : r % 2)
                             : (r % 2 ? 7 : 0);
    }
    counts[rng() % n] += 1;  // at least one counted symbol
    const std::vector<uint16_t> want = reference_freqs(counts);
    auto t = FreqTable::from_counts(counts);
    if (want.empty()) {
      EXPECT_FALSE(t.ok()) << "trial " << trial;
      continue;
    }
    ASSERT_TRUE(t.ok()) << "trial " << trial;
    EXPECT_EQ(t->freq, want) << "trial " << trial << " shape " << shape << " n " << n;
  }
}

TEST(Log2Fixed, MatchesLibmClosely) {
  for (uint64_t x : {1ull, 2ull, 3ull, 10ull, 4095ull, 4096ull, 123456789ull, 1ull << 40, (1ull << 62) + 12345}) {
    const double got = double(detail::log2_q32(x)) / 4294967296.0;
    EXPECT_NEAR(got, std::log2(double(x)), 1e-8) << x;
  }
}

class RansRoundTrip : public ::testing::TestWithParam<size_t> {};

TEST_P(RansRoundTrip, DecodesWhatWasEncoded) {
  const size_t n = GetParam();
  std::mt19937 rng{uint32_t(n)};
  std::geometric_distribution<int> geo(0.3);
  std::vector<uint8_t> sym(n);
  std::vector<uint64_t> counts(40, 0);
  for (auto& s : sym) {
    s = uint8_t(std::min(geo(rng), 39));
    ++counts[s];
  }
  if (n == 0) counts[0] = 1;
  auto t = FreqTable::from_counts(counts);
  ASSERT_TRUE(t.ok());
  std::vector<uint8_t> stream;
  ASSERT_TRUE(rans_encode(sym, *t, stream).ok());
  std::vector<uint8_t> back(n);
  auto used = rans_decode(stream, *t, back);
  ASSERT_TRUE(used.ok()) << used.status().to_string();
  EXPECT_EQ(*used, stream.size());
  EXPECT_EQ(back, sym);
  if (n >= 100000) {
    // Payload within 1% of the model cost (lane states are 128 bytes of overhead).
    const double payload_bits = 8.0 * double(stream.size());
    EXPECT_LT(payload_bits, t->cost_bits(counts) * 1.01 + 8 * 132);
  }
}
INSTANTIATE_TEST_SUITE_P(Sizes, RansRoundTrip, ::testing::Values(0, 1, 31, 32, 33, 1000, 100000, 300001));

// The piecewise lane encoder (the encoder's: codes given a piece at a time, last piece first)
// writes rans_encode_codes' bytes, for pieces of any multiple of the lane count, on every path.
TEST(Rans, PiecewiseLaneEncoderMatchesWholeStream) {
  std::mt19937 rng(5);
  for (int path = 0; path < 3; ++path) {
    detail::set_simd_enabled(path != 2);
    detail::set_avx512_enabled(path == 0);
    for (size_t n : {size_t(0), size_t(17), size_t(32), size_t(1000), size_t(100003)}) {
      std::vector<uint32_t> codes(n);
      for (auto& c : codes) {
        const uint32_t f = 1 + (rng() % detail::kRansM) / (1 + rng() % 64);
        c = f << 16 | uint32_t(rng() % (detail::kRansM - f + 1));
      }
      std::vector<uint16_t> scratch;
      std::vector<uint8_t> whole, pieces;
      detail::rans_encode_codes(codes.data(), n, scratch, whole);
      detail::LaneStreamEncoder e;
      for (int again = 0; again < 2; ++again) {  // the word buffer reused
        pieces.clear();
        e.begin(n);
        for (size_t s1 = n; s1 > 0;) {
          const size_t s0 = s1 > 32 ? (s1 - 1 - (rng() % std::min<size_t>(s1 - 1, 5000))) / 32 * 32 : 0;
          e.put(codes.data() + s0, s0, s1);
          s1 = s0;
        }
        e.finish(pieces);
        EXPECT_EQ(pieces, whole) << "path " << path << " n " << n;
      }
    }
  }
  detail::set_simd_enabled(true);
  detail::set_avx512_enabled(true);
}

// The vector lane encoders (AVX-512, AVX2; the quotient from a float reciprocal, corrected in
// integers) write the scalar lanes' bytes for every frequency 1..4096, in long streams (lane
// states over the whole range) whose length is not a multiple of 8 or 16.
TEST(Rans, VectorLaneEncodersMatchTheScalarOne) {
  std::mt19937 rng(77);
  for (int round = 0; round < 4; ++round) {
    std::vector<uint32_t> codes(200003 + round);
    for (size_t i = 0; i < codes.size(); ++i) {
      // Skewed towards small frequencies (many words, large quotients), every frequency seen.
      uint32_t f = round == 0 ? uint32_t(i % detail::kRansM) + 1 : 1 + (rng() % detail::kRansM) / (1 + rng() % 64);
      if (round == 3) f = (i % 7 == 0) ? detail::kRansM : 1 + rng() % 3;
      const uint32_t cum = f == detail::kRansM ? 0 : uint32_t(rng() % (detail::kRansM - f + 1));
      codes[i] = f << 16 | cum;
    }
    std::vector<uint16_t> scratch;
    std::vector<uint8_t> fast, avx2, scalar;
    detail::rans_encode_codes(codes.data(), codes.size(), scratch, fast);
    detail::set_avx512_enabled(false);
    detail::rans_encode_codes(codes.data(), codes.size(), scratch, avx2);
    detail::set_avx512_enabled(true);
    detail::set_simd_enabled(false);
    detail::rans_encode_codes(codes.data(), codes.size(), scratch, scalar);
    detail::set_simd_enabled(true);
    EXPECT_EQ(fast, scalar) << "round " << round;
    EXPECT_EQ(avx2, scalar) << "round " << round;
  }
}

TEST(Rans, CorruptStreamsAreErrors) {
  std::vector<uint8_t> sym(5000);
  std::vector<uint64_t> counts(4, 0);
  std::mt19937 rng(3);
  for (auto& s : sym) ++counts[s = uint8_t(rng() % 4)];
  auto t = FreqTable::from_counts(counts);
  ASSERT_TRUE(t.ok());
  std::vector<uint8_t> stream;
  ASSERT_TRUE(rans_encode(sym, *t, stream).ok());
  std::vector<uint8_t> back(sym.size());
  // Truncated.
  EXPECT_FALSE(rans_decode(std::span<const uint8_t>(stream).first(stream.size() - 2), *t, back).ok());
  EXPECT_FALSE(rans_decode(std::span<const uint8_t>(stream).first(10), *t, back).ok());
  // Flipped bits: decoded symbols differ or an error is reported; never silently equal-length garbage
  // that passes the end-state check (bar astronomically rare cases).
  int errors = 0;
  for (size_t pos = 0; pos < stream.size(); pos += 7) {
    auto s = stream;
    s[pos] ^= 0x04;
    auto r = rans_decode(s, *t, back);
    errors += !r.ok();
  }
  EXPECT_GT(errors, int(stream.size() / 7) * 95 / 100);
}

}  // namespace
}  // namespace kvcodec
