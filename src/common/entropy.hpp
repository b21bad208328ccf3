// Static probability tables and the interleaved rANS coder of format v1.
//
// Tables: frequencies of symbols 0..n-1 (n <= 256) summing to exactly 1 << kProbBits. A symbol
// seen in the data always gets a frequency >= 1. Tables are built once per (layer, K/V, channel
// group) over the whole context and shared by all its chunks.
//
// Streams: N symbols coded by kRansLanes interleaved rANS states (symbol i in lane i % lanes).
// Layout of one coded stream (little endian):
//     u32 word_count | u32 states[kRansLanes] | u16 words[word_count]
// The lanes make the stream decodable by a SIMD loop on the CPU or by one GPU warp.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvcodec/format.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec {

struct FreqTable {
  std::vector<uint16_t> freq;  // per symbol; 0 = the symbol never occurs
  std::vector<uint16_t> cum;   // cum[s] = sum of freq[0..s)

  size_t size() const noexcept { return freq.size(); }
  // Builds a table from symbol counts (at most 256 symbols, at least one non-zero count).
  // Frequencies are proportional to the counts, every seen symbol keeps >= 1, and the rounding
  // is corrected where it costs the fewest bits.
  static StatusOr<FreqTable> from_counts(std::span<const uint64_t> counts);
  // Builds from frequencies already normalised (as read from a frame); validates them.
  static StatusOr<FreqTable> from_freqs(std::span<const uint16_t> freqs);
  // Bits needed to code `counts` with this table (Inf if a counted symbol has frequency 0).
  double cost_bits(std::span<const uint64_t> counts) const noexcept;
};

// Empirical entropy in bits of data with these symbol counts: sum c * log2(total / c).
double entropy_bits(std::span<const uint64_t> counts) noexcept;

// Encodes symbols (each < table.size() with non-zero frequency) with one table into the stream
// layout above, appended to `out`. Used by tests and benchmarks; the codec inlines the same
// steps with per-symbol tables.
Status rans_encode(std::span<const uint8_t> symbols, const FreqTable& table, std::vector<uint8_t>& out);
// Decodes `out.size()` symbols from `stream`; returns the bytes consumed. Fails with
// kCorruptData when the stream is short, has words left over, or lanes do not end in the
// initial state.
StatusOr<size_t> rans_decode(std::span<const uint8_t> stream, const FreqTable& table, std::span<uint8_t> out);

}  // namespace kvcodec
