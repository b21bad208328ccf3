#include "kvcodec/entropy.hpp"

#include <cmath>
#include <limits>

#include "detail/rans_lanes.hpp"
#include "kvcodec/detail/log2.hpp"

namespace kvcodec {

using detail::kRansM;

StatusOr<FreqTable> FreqTable::from_counts(std::span<const uint64_t> counts) {
  const size_t n = counts.size();
  if (n == 0 || n > 256) return InvalidArgument("a table has 1..256 symbols");
  uint64_t total = 0;
  for (uint64_t c : counts) {
    total += c;
  }
  if (total == 0) return InvalidArgument("a table needs at least one counted symbol");
  FreqTable t;
  t.freq.assign(n, 0);
  int64_t sum = 0;
  for (size_t s = 0; s < n; ++s) {
    if (!counts[s]) continue;
    const double exact = double(counts[s]) * kRansM / double(total);
    const int64_t f = std::max<int64_t>(1, std::llround(exact));
    t.freq[s] = uint16_t(std::min<int64_t>(f, kRansM));
    sum += t.freq[s];
  }
  // Correct the rounding one unit at a time where it costs the fewest bits: adding a unit to s
  // saves counts[s] * log2((f+1)/f) bits, removing one costs counts[s] * log2(f/(f-1)). Integer
  // fixed-point logs keep the choice identical on every machine (detail/log2.hpp).
  while (sum != int64_t(kRansM)) {
    const bool add = sum < int64_t(kRansM);
    size_t best = n;
    unsigned __int128 best_score = 0;
    for (size_t s = 0; s < n; ++s) {
      if (!counts[s] || (!add && t.freq[s] <= 1)) continue;
      const uint64_t f = t.freq[s];
      const uint64_t dlog = add ? detail::log2_q32(f + 1) - detail::log2_q32(f)
                                : detail::log2_q32(f) - detail::log2_q32(f - 1);
      const unsigned __int128 score = (unsigned __int128)counts[s] * dlog;
      // add: the largest saving; remove: the smallest loss. Ties go to the lowest symbol.
      if (best == n || (add ? score > best_score : score < best_score)) {
        best = s;
        best_score = score;
      }
    }
    if (best == n) return InvalidArgument("more distinct symbols than probability slots");
    if (add) {
      ++t.freq[best];
      ++sum;
    } else {
      --t.freq[best];
      --sum;
    }
  }
  t.cum.assign(n, 0);
  for (size_t s = 1; s < n; ++s) t.cum[s] = uint16_t(t.cum[s - 1] + t.freq[s - 1]);
  return t;
}

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

double FreqTable::cost_bits(std::span<const uint64_t> counts) const noexcept {
  double bits = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (!counts[s]) continue;
    if (s >= freq.size() || !freq[s]) return std::numeric_limits<double>::infinity();
    bits += double(counts[s]) * (detail::kRansProbBits - std::log2(double(freq[s])));
  }
  return bits;
}

double entropy_bits(std::span<const uint64_t> counts) noexcept {
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  double bits = 0;
  for (uint64_t c : counts)
    if (c) bits += double(c) * std::log2(double(total) / double(c));
  return bits;
}

Status rans_encode(std::span<const uint8_t> symbols, const FreqTable& table, std::vector<uint8_t>& out) {
  for (uint8_t s : symbols)
    if (s >= table.size() || !table.freq[s]) return InvalidArgument("symbol not in the table");
  std::vector<uint16_t> scratch;
  detail::rans_encode_lanes(
      symbols.size(),
      [&](size_t i, uint32_t* f, uint32_t* c) {
        *f = table.freq[symbols[i]];
        *c = table.cum[symbols[i]];
      },
      scratch, out);
  return Status::Ok();
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
  KVCODEC_RETURN_IF_ERROR(detail::rans_check_end(x, wp, we));
  return detail::kLaneStreamHeader + 2 * size_t(words);
}

}  // namespace kvcodec
