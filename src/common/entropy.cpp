// Probability tables as read from a frame, the empirical entropy, and the reference rANS
// decoder of one stream. Building tables from counts and encoding are encode/entropy_encode.cpp.
#include "common/entropy.hpp"

#include <cmath>
#include <cstring>

#include "common/rans_lanes.hpp"

namespace kvcodec {

using detail::kRansM;

StatusOr<FreqTable> FreqTable::from_freqs(std::span<const uint16_t> freqs) {
  if (freqs.empty() || freqs.size() > 256) return CorruptData("a table has 1..256 symbols");
  FreqTable t;
  t.freq.assign(freqs.begin(), freqs.end());
  t.cum.assign(freqs.size(), 0);
  uint32_t sum = 0;
  for (size_t s = 0; s < freqs.size(); ++s) {
    t.cum[s] = uint16_t(sum);
    sum += freqs[s];
    if (sum > kRansM) return CorruptData("table frequencies exceed the probability total");
  }
  if (sum != kRansM) return CorruptData("table frequencies do not sum to the probability total");
  return t;
}

double entropy_bits(std::span<const uint64_t> counts) noexcept {
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  double bits = 0;
  for (uint64_t c : counts)
    if (c) bits += double(c) * std::log2(double(total) / double(c));
  return bits;
}

StatusOr<size_t> rans_decode(std::span<const uint8_t> stream, const FreqTable& table, std::span<uint8_t> out) {
  uint32_t x[kRansLanes];
  uint32_t words;
  KVCODEC_RETURN_IF_ERROR(detail::rans_read_header(stream.data(), stream.size(), x, &words));
  // slot -> symbol lookup
  std::vector<uint8_t> slot_sym(kRansM);
  for (size_t s = 0; s < table.size(); ++s)
    for (uint32_t k = 0; k < table.freq[s]; ++k) slot_sym[table.cum[s] + k] = uint8_t(s);
  std::vector<uint16_t> w(words);
  std::memcpy(w.data(), stream.data() + detail::kLaneStreamHeader, 2 * size_t(words));
  const uint16_t* wp = w.data();
  const uint16_t* we = wp + words;
  for (size_t i = 0; i < out.size(); ++i) {
    uint32_t& xs = x[i % kRansLanes];
    const uint8_t s = slot_sym[xs & (kRansM - 1)];
    out[i] = s;
    if (detail::rans_dec_advance(xs, table.freq[s], table.cum[s])) {
      if (wp == we) return CorruptData("rANS stream ran out of words");
      xs = (xs << 16) | *wp++;
    }
  }
  KVCODEC_RETURN_IF_ERROR(detail::rans_check_end(x, wp == we));
  return detail::kLaneStreamHeader + 2 * size_t(words);
}

}  // namespace kvcodec
