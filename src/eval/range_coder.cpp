// The 32-bit range coder of the CacheGen baseline (see baselines.hpp).
//
// Encoder state: `low_` (33 bits used: bit 32 is a pending carry) and `range_`. Coding a symbol
// narrows [low, low + range) to its sub-interval; whenever range drops below 2^24 the top byte
// of low is settled and shifted out. A settled byte of 0xFF may still receive a carry, so runs of
// 0xFF are held back (`pending_`) until a byte that cannot overflow arrives (the LZMA scheme).
#include <algorithm>
#include <cmath>

#include "kvcodec/baselines.hpp"

namespace kvcodec::eval {

namespace {
constexpr uint32_t kTop = 1u << 24;
constexpr uint32_t kCdfTotal = 1u << kRangeCdfBits;
}  // namespace

void RangeEncoder::encode(std::span<const uint32_t> cdf, uint32_t s) {
  const uint32_t r = range_ >> kRangeCdfBits;
  low_ += uint64_t(r) * cdf[s];
  range_ = r * (cdf[s + 1] - cdf[s]);
  while (range_ < kTop) {
    range_ <<= 8;
    shift_low();
  }
}

void RangeEncoder::shift_low() {
  if (uint32_t(low_) < 0xFF000000u || (low_ >> 32) != 0) {
    const uint8_t carry = uint8_t(low_ >> 32);
    uint8_t byte = cache_;
    do {
      // The interval never leaves the initial [0, 2^32), so the very first byte is always 0
      // and carries nothing: it is not written (the decoder starts one byte later).
      if (!first_) out_.push_back(uint8_t(byte + carry));
      first_ = false;
      byte = 0xFF;
    } while (--pending_ != 0);
    cache_ = uint8_t(low_ >> 24);
  }
  ++pending_;
  low_ = (low_ & 0x00FFFFFFu) << 8;
}

void RangeEncoder::finish() {
  // Settles the cache byte and the four bytes of low.
  for (int i = 0; i < 5; ++i) shift_low();
}

RangeDecoder::RangeDecoder(std::span<const uint8_t> in) : in_(in) {
  for (int i = 0; i < 4; ++i) code_ = (code_ << 8) | next_byte();
}

uint8_t RangeDecoder::next_byte() {
  if (pos_ < in_.size()) return in_[pos_++];
  ++overrun_;
  return 0;
}

StatusOr<uint32_t> RangeDecoder::decode(std::span<const uint32_t> cdf) {
  if (cdf.size() < 2) return InvalidArgument("range coder: empty table");
  const uint32_t r = range_ >> kRangeCdfBits;
  const uint32_t v = code_ / r;
  if (v >= cdf.back()) return CorruptData("range coder: code outside the table");
  // The symbol s with cdf[s] <= v < cdf[s + 1].
  const size_t above = size_t(std::upper_bound(cdf.begin(), cdf.end(), v) - cdf.begin());
  if (above == 0 || above >= cdf.size() || cdf[above - 1] > v || cdf[above] <= v)  // bad table
    return InvalidArgument("range coder: malformed table");
  const uint32_t s = uint32_t(above - 1);
  code_ -= r * cdf[s];
  range_ = r * (cdf[s + 1] - cdf[s]);
  while (range_ < kTop) {
    code_ = (code_ << 8) | next_byte();
    range_ <<= 8;
  }
  // The encoder flushes exactly the bytes a decoder reads: reading past the end means a
  // truncated stream.
  if (overrun_ > 0) return CorruptData("range coder: stream truncated");
  return s;
}

std::vector<uint32_t> cachegen_cdf(std::span<const uint32_t> counts) {
  const size_t n = counts.size();
  uint64_t total = 0;
  for (uint32_t c : counts) total += c;
  std::vector<uint32_t> cdf(n + 1);
  const double spread = double(kCdfTotal - n);  // leaves one unit per symbol for the +k term
  uint64_t below = 0;
  for (size_t k = 0; k <= n; ++k) {
    const double p = total ? double(below) / double(total) : double(k) / double(n);
    cdf[k] = uint32_t(std::nearbyint(p * spread)) + uint32_t(k);
    if (k < n) below += counts[k];
  }
  return cdf;
}

}  // namespace kvcodec::eval
