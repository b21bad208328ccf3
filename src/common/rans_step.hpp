// The per-symbol rANS decode step, written once for every lane decoder: the scalar CPU loop
// (one lane at a time), the AVX2 loop (8 lanes per vector) and the warp decoder (one lane per
// GPU thread, and its host emulation). U is the lane type: uint32_t, or on the host an 8-lane
// GCC/clang vector of uint32_t. Arguments and results pass by reference, so a 32-byte vector
// never crosses a function boundary compiled without AVX (the calls inline into the caller).
//
// One step, for the lane's state x in [kRansL, 2^32) (rans.hpp has the format's rules):
//   1. slot lookup:  slot = x & (M - 1); the symbol s with cum[s] <= slot < cum[s] + freq[s]
//      and its bias = slot - cum[s] come from the caller's table -- a packed entry per slot
//      (CPU, rans_pack_entry) or the GPU's compact slot -> symbol table (rans_compact_lookup);
//   2. state update: x = freq * (x >> kProbBits) + bias;
//   3. renormalisation: when x < kRansL the lane takes the next 16-bit word, x = x << 16 | w
//      (words in symbol order; how a decoder finds its lane's word is its own: a cursor, a
//      permutation of 8 words, a warp ballot).
#pragma once

#include <cstdint>

#include "common/host_device.hpp"
#include "common/rans.hpp"

namespace kvcodec::detail {

// 1. The slot of state x.
template <typename U>
KVCODEC_HD void rans_slot(const U& x, U& slot) {
  slot = x & (kRansM - 1);
}

// A packed decode entry, one per slot: (freq - 1) << 20 | bias << 8 | symbol (freq in
// 1..4096, bias < 4096, symbol < 256), so one load yields the symbol and the state update.
KVCODEC_HD uint32_t rans_pack_entry(uint32_t freq, uint32_t bias, uint32_t sym) {
  return (freq - 1) << 20 | bias << 8 | sym;
}

// The GPU's compact table (5 KB, fits shared memory): slot -> symbol, then the symbol's
// frequency and cumulative frequency. Gives the symbol, its frequency and the slot's bias.
KVCODEC_HD uint32_t rans_compact_lookup(const uint8_t* slot_sym, const uint16_t* freq, const uint16_t* cum,
                                        uint32_t slot, uint32_t& f, uint32_t& bias) {
  const uint32_t s = slot_sym[slot];
  f = freq[s];
  bias = slot - cum[s];
  return s;
}

// 2. The state update for the symbol found in the slot.
template <typename U>
KVCODEC_HD void rans_update(U& x, const U& freq, const U& bias) {
  x = freq * (x >> kRansProbBits) + bias;
}

// 1 + 2 from a packed entry e: the symbol into sym, the state updated.
template <typename U>
KVCODEC_HD void rans_apply_entry(U& x, const U& e, U& sym) {
  sym = e & 0xffu;
  const U freq = (e >> 20) + 1u, bias = (e >> 8) & (kRansM - 1);
  rans_update(x, freq, bias);
}

// 3. Whether the lane takes a word (per lane: a bool, or a vector mask of all-ones lanes).
template <typename U, typename Need>
KVCODEC_HD void rans_needs_word(const U& x, Need& need) {
  need = x < kRansL;
}
// ... and taking it.
template <typename U>
KVCODEC_HD void rans_shift_in(U& x, const U& word) {
  x = (x << 16) | word;
}

// The whole step for one scalar lane with a packed table and a word cursor [*wp, we): returns
// the symbol. A lane that needs a word past the end sets *overrun and reads nothing (a corrupt
// stream; the caller reports it).
KVCODEC_HD uint32_t rans_decode_symbol(uint32_t& x, const uint32_t* entries, const uint8_t*& wp,
                                       const uint8_t* we, bool& overrun) {
  uint32_t slot, sym;
  rans_slot(x, slot);
  rans_apply_entry(x, entries[slot], sym);
  bool need;
  rans_needs_word(x, need);
  if (need) {
    if (wp < we) {
      rans_shift_in(x, uint32_t(wp[0]) | uint32_t(wp[1]) << 8);
      wp += 2;
    } else {
      overrun = true;
    }
  }
  return sym;
}

}  // namespace kvcodec::detail
