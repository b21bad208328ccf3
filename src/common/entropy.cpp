// Probability tables as read from a frame, the empirical entropy, and the reference rANS
// decoder of one stream. Building tables from counts and encoding are encode/entropy_encode.cpp.
#include "common/entropy.hpp"

#include <cmath>
#include <cstring>

#include "common/rans_lanes.hpp"
#include "common/rans_step.hpp"

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
  // slot -> packed decode entry
  std::vector<uint32_t> entry(kRansM);
  for (size_t s = 0; s < table.size(); ++s)
    for (uint32_t k = 0; k < table.freq[s]; ++k)
      entry[table.cum[s] + k] = detail::rans_pack_entry(table.freq[s], k, uint32_t(s));
  const uint8_t* wp = stream.data() + detail::kLaneStreamHeader;
  const uint8_t* we = wp + 2 * size_t(words);
  bool overrun = false;
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = uint8_t(detail::rans_decode_symbol(x[i % kRansLanes], entry.data(), wp, we, overrun));
    if (overrun) return CorruptData("rANS stream ran out of words");
  }
  KVCODEC_RETURN_IF_ERROR(detail::rans_check_end(x, wp == we));
  return detail::kLaneStreamHeader + 2 * size_t(words);
}

}  // namespace kvcodec
