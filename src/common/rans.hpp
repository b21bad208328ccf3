// rANS primitives shared by the CPU and CUDA coders (format v1: 32-bit state, 16-bit words,
// kProbBits-bit probabilities, kRansLanes interleaved lanes).
//
// Read me first -- the traps (after ryg_rans):
//  * The encoder runs BACKWARDS over the symbols and emits words in reverse; the stream is the
//    reversed word list, so the decoder reads forwards. Symbol i belongs to lane i % kRansLanes;
//    encode visits i = N-1 .. 0, decode visits i = 0 .. N-1, so within one step the lanes emit in
//    descending and read in ascending order. A GPU warp (one lane per thread) therefore reads its
//    words with one ballot + prefix count per step and produces the same bytes.
//  * State invariant: x in [kRansL, 2^32). Encoding a symbol of frequency f first renormalises
//    (emits the low 16 bits) while x >= f << (32 - kProbBits) -- at most once, because kRansL is 2^16
//    -- then x' = (x / f) << kProbBits + x % f + cum. f may equal 1 << kProbBits (a certain
//    symbol), hence the 64-bit comparison.
//  * Decoding: slot = x & (M-1); the symbol s with cum[s] <= slot < cum[s]+f[s];
//    x' = f * (x >> kProbBits) + slot - cum; while x' < kRansL read one word. Decoding reads at
//    most one word per symbol too.
//  * Every lane starts (encoder) and must end (decoder) in state kRansL: the decoder checks it,
//    which with the exact word count detects nearly all corruption of a stream.
#pragma once

#include <cstdint>

#include "common/host_device.hpp"

namespace kvcodec::detail {

inline constexpr uint32_t kRansL = 1u << 16;
inline constexpr uint32_t kRansProbBits = 12;
inline constexpr uint32_t kRansM = 1u << kRansProbBits;

// Encodes one symbol (freq, cum) into state x. Returns true and sets *word when a 16-bit word
// was emitted (before the update, as rANS requires).
KVCODEC_HD bool rans_enc_put(uint32_t& x, uint32_t freq, uint32_t cum, uint16_t* word) {
  bool emitted = false;
  if (uint64_t(x) >= (uint64_t(freq) << (32 - kRansProbBits))) {
    *word = uint16_t(x & 0xffffu);
    x >>= 16;
    emitted = true;
  }
  const uint32_t q = x / freq;
  x = (q << kRansProbBits) + (x - q * freq) + cum;
  return emitted;
}

// The decoder's per-symbol step (slot lookup, state update, renormalisation) is rans_step.hpp.

}  // namespace kvcodec::detail
