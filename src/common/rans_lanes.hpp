// The interleaved-lane rANS loops of the CPU codec, templated on how a symbol index maps to its
// table so the per-symbol lookup inlines. Internal to src/.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common/bytes.hpp"
#include "common/rans.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec::detail {

// Fixed-size header of one lane stream: word count + one state per lane.
inline constexpr size_t kLaneStreamHeader = 4 + 4 * kRansLanes;


// floor(x / f) for x < 2^32 and 1 <= f <= 4096 by one multiplication with m = floor(2^44 / f) + 1:
// the error term x * (m - 2^44/f) / 2^44 < 2^-12 <= 1/f never crosses an integer.
struct Reciprocals {
  uint64_t m[kRansM + 1];
  Reciprocals() {
    m[0] = 0;
    for (uint32_t f = 1; f <= kRansM; ++f) m[f] = (uint64_t(1) << 44) / f + 1;
  }
};
inline const Reciprocals& reciprocals() {
  static const Reciprocals r;
  return r;
}

// One lane stream -- word count, final lane states, then the `words` 16-bit words at w (already
// in reading order) -- written to p (kLaneStreamHeader + 2 * words bytes), or appended to out.
inline void write_lane_stream(const uint32_t* x, const uint16_t* w, size_t words, uint8_t* p) {
  store_le32(p, uint32_t(words));
  for (uint32_t j = 0; j < kRansLanes; ++j) store_le32(p + 4 + 4 * j, x[j]);
  std::memcpy(p + kLaneStreamHeader, w, 2 * words);
}
inline void append_lane_stream(const uint32_t* x, const uint16_t* w, size_t words, std::vector<uint8_t>& out) {
  const size_t base = out.size();
  out.resize(base + kLaneStreamHeader + 2 * words);
  write_lane_stream(x, w, words, out.data() + base);
}

// Encodes symbols 0..n-1 backwards. `sym_of(i, &freq, &cum)` gives symbol i's frequency and
// cumulative frequency. Appends header + words to out. `scratch` is reused across calls.
template <typename SymOf>
void rans_encode_lanes(size_t n, SymOf&& sym_of, std::vector<uint16_t>& scratch, std::vector<uint8_t>& out) {
  uint32_t x[kRansLanes];
  for (auto& s : x) s = kRansL;
  scratch.resize(n + 2 * kRansLanes);  // at most one word per symbol
  uint16_t* w = scratch.data() + scratch.size();  // filled downwards: ends up in reading order
  const uint64_t* rcp = reciprocals().m;
  for (size_t i = n; i-- > 0;) {
    uint32_t freq, cum;
    sym_of(i, &freq, &cum);
    // rans_enc_put with the division replaced by its exact reciprocal.
    uint32_t& xs = x[i % kRansLanes];
    if (uint64_t(xs) >= (uint64_t(freq) << (32 - kRansProbBits))) {
      *--w = uint16_t(xs & 0xffffu);
      xs >>= 16;
    }
    const uint32_t q = uint32_t((static_cast<unsigned __int128>(xs) * rcp[freq]) >> 44);
    xs = (q << kRansProbBits) + (xs - q * freq) + cum;
  }
  append_lane_stream(x, w, size_t(scratch.data() + scratch.size() - w), out);
}

// Encodes symbols given as codes freq << 16 | cum (freq in 1..4096), in stream order; the same
// bytes as rans_encode_lanes. Uses AVX2 (8 lanes per step) where the CPU has it.
void rans_encode_codes(const uint32_t* codes, size_t n, std::vector<uint16_t>& scratch, std::vector<uint8_t>& out);

// The stream of rans_encode_codes (the same bytes) from codes given a piece at a time, the last
// piece first, so that a caller need not hold the codes of a whole unit: begin(n), then
// put(codes, s0, s1) for symbols [s0, s1) (codes[i - s0] is symbol i's), s1 = n first and the
// previous piece's s0 after, each s0 a multiple of kRansLanes (or 0); then finish(out). The word
// buffer is kept across streams and never cleared, so only the pages written are resident.
class LaneStreamEncoder {
 public:
  void begin(size_t n);
  void put(const uint32_t* codes, size_t s0, size_t s1);
  void finish(std::vector<uint8_t>& out);
  // The stream finish() appends: its size, or written to p (stream_bytes() of room).
  size_t stream_bytes() const { return kLaneStreamHeader + 2 * size_t(end_ - w_); }
  void finish_into(uint8_t* p) const;

 private:
  std::unique_ptr<uint16_t[]> buf_;
  size_t cap_ = 0;
  uint16_t *end_ = nullptr, *w_ = nullptr;
  uint32_t x_[kRansLanes];
  bool avx2_ = false, avx512_ = false;
};

// Reads the lane header; returns the word count, or an error if the stream is too short.
inline Status rans_read_header(const uint8_t* p, size_t avail, uint32_t* x, uint32_t* words) {
  if (avail < kLaneStreamHeader) return CorruptData("rANS stream shorter than its header");
  *words = load_le32(p);
  if ((avail - kLaneStreamHeader) / 2 < *words) return CorruptData("rANS stream truncated");
  for (uint32_t j = 0; j < kRansLanes; ++j) {
    x[j] = load_le32(p + 4 + 4 * j);
    if (x[j] < kRansL) return CorruptData("rANS lane state below the renormalisation bound");
  }
  return Status::Ok();
}

// Checks that decoding ended exactly where the encoder started.
inline Status rans_check_end(const uint32_t* x, bool all_words_read) {
  if (!all_words_read) return CorruptData("rANS stream has unread words");
  for (uint32_t j = 0; j < kRansLanes; ++j)
    if (x[j] != kRansL) return CorruptData("rANS lane did not end in its initial state");
  return Status::Ok();
}

}  // namespace kvcodec::detail
