// The GPU encoder's model building: from the histograms and clustering features of phase 1 to
// the lane encoders' code tables and the serialised model section, one CUDA block per
// (layer, K/V) unit. Written once against the block abstraction of block.hpp and run by the
// model kernel (cuda/encode.cu, DeviceBlock) and, on the host, by the emulation of the tests
// (HostBlock), which compares the frames with the CPU encoder's byte for byte.
//
// It makes exactly the decisions of the CPU's build_layer_model (src/encode/encode_model.cpp):
//  1. initial groups: channels sorted by feature (stable: ties in channel order) and split into
//     G = min(table_groups, C) quantiles. Sorted here as the unique keys feature << 16 | channel
//     (a bitonic sort, pass by pass);
//  2. up to 4 rounds of "move each channel to the group whose smoothed table codes its counts
//     (slots from first_slot on) in the fewest bits", ties to the lowest group, until nothing
//     moves. Group sums are integer atomics into the `sums` array (order-independent); the Q24
//     costs (log2_q32) replace them in place; one thread per channel then sums its cost under
//     every group, reading the [slot][bin][channel] rows coalesced and the costs as broadcasts;
//  3. groups renumbered densely in order of first use (the first channel of each, an atomic min);
//  4. group histograms over all slots (atomics again), then one warp per table: the window
//     (model_values.hpp, the CPU's own function), the counts, FreqTable::from_counts' rounding
//     and its one-unit-at-a-time correction (each lane caches the scores of its 8 symbols; a
//     warp arg-max per step, ties to the lowest symbol), the cumulative frequencies (a warp
//     scan) and the lane codes freq << 16 | cum (| kEscFlag);
//  5. the layer model serialised as write_layer_model does (docs/format.md, "Model section")
//     into the unit's staging slot: table offsets from the tables' sizes, varints placed by warp
//     and block prefix sums.
// Integer sums are the only order-dependent-looking steps, and they are exact; every choice is
// made on integers with the CPU's tie rules, so the bytes are the CPU encoder's.
//
// The unit's channel groups live in EncodeTables::table_base while the model is built (the
// group index) and end as the table base (group * slots) that the lane encoders read.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvcodec/config.hpp"
#include "common/block.hpp"
#include "encode/encode_values.hpp"
#include "common/log2.hpp"
#include "encode/model_values.hpp"
#include "common/warp.hpp"
#include "encode/warp_encode.hpp"
#include "kvcodec/format.hpp"
#include "encode/quantize.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::detail {

// Sort keys feature << 16 | channel are unique and order channels as a stable sort by feature:
// channels fit 16 bits and features (sums of at most kMaxTokens values below 256) 48.
static_assert(kMaxChannels <= (1u << 16), "sort keys hold the channel in 16 bits");
static_assert(uint64_t(kMaxTokens) * 256 < (1ull << 48), "sort keys hold the feature in 48 bits");

// Where the model builder of one encoding keeps things (sizes per unit; derived from the layout).
struct ModelLayout {
  uint32_t groups = 0;        // G = min(table_groups, C): the groups clustering starts with
  uint32_t first_slot = 0;    // clustering counts the slots from here (lossless: the top byte)
  uint32_t sort_n = 0;        // sort keys: a power of two >= C
  uint64_t model_stride = 0;  // staging bytes of one serialised layer model (worst case)
  uint64_t sums_bytes = 0;    // group sums: G * slots * bins uint64 (in shared memory if it fits)
  // Global scratch of one unit: sort keys, the tables' frequencies, and the group sums when
  // they are not in shared memory.
  uint64_t keys_offset = 0, freq_offset = 0, sums_offset = 0, scratch_stride = 0;
};

KVCODEC_HD uint64_t align256(uint64_t n) { return (n + 255) & ~uint64_t(255); }

KVCODEC_HD ModelLayout model_layout(const EncodeLayout& el) {
  ModelLayout ml;
  const uint32_t table_groups = el.max_tables / el.slots;
  ml.groups = table_groups < el.channels ? table_groups : el.channels;
  ml.first_slot = el.lossless ? el.slots - 1 : 0;
  ml.sort_n = 1;
  while (ml.sort_n < el.channels) ml.sort_n <<= 1;
  ml.model_stride = max_layer_model_bytes(el.channels, table_groups, el.slots, el.lossless);
  ml.sums_bytes = sizeof(uint64_t) * ml.groups * el.slots * el.bins;
  ml.keys_offset = 0;
  ml.freq_offset = align256(sizeof(uint64_t) * ml.sort_n);
  ml.sums_offset = ml.freq_offset + align256(sizeof(uint16_t) * el.max_tables * kLosslessBins);
  ml.scratch_stride = ml.sums_offset + align256(ml.sums_bytes);
  return ml;
}

// Inputs and outputs of the model builder, all units (device or host memory).
struct ModelArgs {
  const uint32_t* hist;       // [unit][slot][bin][channel], phase 1
  const uint64_t* feature;    // [unit][channel], phase 1
  const ChannelGrid* grids;   // [unit][channel], phase 1 (lossy)
  uint32_t* codes;            // [unit][max_tables][bins] out: EncodeTables::codes
  uint16_t* table_base;       // [unit][channel] out: EncodeTables::table_base
  uint8_t* models;            // [unit][model_stride] out: the serialised layer models
  uint32_t* model_size;       // [unit] out: their sizes
  uint8_t* scratch;           // [unit][scratch_stride]
  uint32_t* raw_planes;       // [unit] out: EncodeTables::raw_planes (lossless byte planes kept raw)
};

// One table as the serialisation needs it.
struct TableInfo {
  uint32_t n;      // symbols
  int32_t qmin;    // lossy: grid offset of symbol 0
  uint32_t bytes;  // serialised size
  uint32_t offset; // in the layer model
};

// The block's small shared state.
struct ModelShared {
  uint64_t log_total[kMaxTableGroups * 2];  // per clustering row (group, slot): log2_q32(2 * total + bins)
  uint32_t bin_lo[4], bin_hi[4];            // per slot: the bins any channel counts (lo > hi: none)
  uint32_t first[kMaxTableGroups];          // first channel of each group
  uint32_t remap[kMaxTableGroups];          // group -> dense number in order of first use
  uint32_t used, moved, failed;
  uint32_t raw_planes;                      // lossless: bit p = byte plane p kept raw (docs/format.md 4.5)
  uint32_t plane_raw[4];                    // per plane while deciding: 1 = raw
  uint32_t channels_offset, model_bytes;    // in the layer model
  TableInfo table[kMaxTableGroups * 4];
  uint32_t part_steps[kBlockThreads], part_centers[kBlockThreads];  // per-part varint bytes, then offsets
};

// Symbols of a table per warp lane: lane j holds symbols 8j .. 8j + 7 (at most 256 symbols).
inline constexpr uint32_t kTableSymbolsPerLane = 8;
inline constexpr uint32_t kNoSymbol = 0xffffffffu;

// 64 x 64 -> 128-bit product (the CPU's unsigned __int128 score), as (hi, lo).
KVCODEC_HD void mul_wide(uint64_t a, uint64_t b, uint64_t* hi, uint64_t* lo) {
#if defined(__CUDA_ARCH__)
  *lo = a * b;
  *hi = __umul64hi(a, b);
#else
  const unsigned __int128 p = (unsigned __int128)a * b;
  *hi = uint64_t(p >> 64);
  *lo = uint64_t(p);
#endif
}

// Whether candidate (oh, ol, oi) beats (bh, bl, bi) in from_counts' correction: a symbol at all,
// then the larger score (add) or the smaller (remove), then the lower symbol.
KVCODEC_HD bool step_beats(uint64_t oh, uint64_t ol, uint32_t oi, uint64_t bh, uint64_t bl, uint32_t bi, bool add) {
  if (oi == kNoSymbol) return false;
  if (bi == kNoSymbol) return true;
  if (oh != bh || ol != bl) return add ? (oh > bh || (oh == bh && ol > bl)) : (oh < bh || (oh == bh && ol < bl));
  return oi < bi;
}

// Exclusive prefix sum over the lanes.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W>
KVCODEC_HD typename W::template Lanes<uint32_t> warp_exclusive_scan(W& w,
                                                                    const typename W::template Lanes<uint32_t>& v) {
  typename W::template Lanes<uint32_t> incl = v, src, other, out;
  for (uint32_t d = 1; d < kWarpLanes; d <<= 1) {
    for (uint32_t j : w.lanes()) src[j] = j >= d ? j - d : j;
    other = w.shfl(incl, src);
    for (uint32_t j : w.lanes())
      if (j >= d) incl[j] += other[j];
  }
  for (uint32_t j : w.lanes()) out[j] = incl[j] - v[j];
  return out;
}

// Builds table `h` (the group histogram of one slot: bins entries) with one warp: its window,
// its frequencies (FreqTable::from_counts), its lane codes (codes[bins]) and its frequencies for
// the serialisation (freq_out[n]). False only if the correction finds no symbol to move, which
// from_counts reports as an error and cannot happen for <= 256 symbols.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W>
KVCODEC_HD bool warp_build_table(W& w, bool lossless, const uint64_t* h, uint32_t* codes, uint16_t* freq_out,
                                 TableInfo* info) {
  constexpr uint32_t K = kTableSymbolsPerLane;
  using U32 = typename W::template Lanes<uint32_t>;
  using U64 = typename W::template Lanes<uint64_t>;
  // The window: the same sequential scan on every lane (uniform results, no communication).
  uint32_t n;
  int32_t lo = 0, hi = 0;
  if (lossless) {
    n = lossless_symbols(h);
  } else {
    lossy_window(h, &lo, &hi);
    n = uint32_t(hi - lo + 2);  // values + escape
  }

  // Counts: lossless symbol s is byte s; lossy symbol s < n - 1 is bin lo + s and the escape
  // symbol n - 1 takes every other bin.
  U64 cnt[K], part_all, part_in;
  for (uint32_t j : w.lanes()) {
    for (uint32_t k = 0; k < K; ++k) {
      const uint32_t s = K * j + k;
      cnt[k][j] = s < n && (lossless || s < n - 1) ? h[uint32_t(lo) + s] : 0;
    }
    part_all[j] = part_in[j] = 0;
    if (!lossless)
      for (uint32_t b = j; b < kLossyBins; b += kWarpLanes) {
        part_all[j] += h[b];
        if (int32_t(b) >= lo && int32_t(b) <= hi) part_in[j] += h[b];
      }
  }
  if (!lossless) {
    const uint64_t esc = w.sum(part_all) - w.sum(part_in);
    for (uint32_t j : w.lanes())
      for (uint32_t k = 0; k < K; ++k)
        if (K * j + k == n - 1) cnt[k][j] = esc;
  }
  U64 acc;
  for (uint32_t j : w.lanes()) {
    acc[j] = 0;
    for (uint32_t k = 0; k < K; ++k) acc[j] += cnt[k][j];
  }
  uint64_t total = w.sum(acc);
  if (total == 0) {  // nothing counted: symbol 0 stands in, as in lossless_table / lossy_table
    for (uint32_t j : w.lanes())
      if (j == 0) cnt[0][j] = 1;
    total = 1;
  }

  // from_counts: rounded frequencies, then the correction one unit at a time.
  U32 f[K];
  for (uint32_t j : w.lanes()) {
    acc[j] = 0;
    for (uint32_t k = 0; k < K; ++k) {
      f[k][j] = initial_freq(cnt[k][j], total);
      acc[j] += f[k][j];
    }
  }
  int64_t sum = int64_t(w.sum(acc));
  if (sum != int64_t(kRansM)) {
    const bool add = sum < int64_t(kRansM);  // the direction never changes on the way to kRansM
    U64 sh[K], sl[K];                        // each symbol's score (valid where the step is allowed)
    for (uint32_t j : w.lanes())
      for (uint32_t k = 0; k < K; ++k) mul_wide(cnt[k][j], freq_step_dlog(f[k][j], add), &sh[k][j], &sl[k][j]);
    U64 bh, bl, oh, ol;
    U32 bi, oi, src;
    while (sum != int64_t(kRansM)) {
      for (uint32_t j : w.lanes()) {  // the lane's best symbol (ascending: ties to the lowest)
        bi[j] = kNoSymbol;
        bh[j] = bl[j] = 0;
        for (uint32_t k = 0; k < K; ++k)
          if (freq_step_allowed(cnt[k][j], f[k][j], add) &&
              step_beats(sh[k][j], sl[k][j], K * j + k, bh[j], bl[j], bi[j], add)) {
            bi[j] = K * j + k;
            bh[j] = sh[k][j];
            bl[j] = sl[k][j];
          }
      }
      for (uint32_t d = kWarpLanes / 2; d > 0; d >>= 1) {  // butterfly: every lane ends with the best
        for (uint32_t j : w.lanes()) src[j] = j ^ d;
        oh = w.shfl(bh, src);
        ol = w.shfl(bl, src);
        oi = w.shfl(bi, src);
        for (uint32_t j : w.lanes())
          if (step_beats(oh[j], ol[j], oi[j], bh[j], bl[j], bi[j], add)) {
            bh[j] = oh[j];
            bl[j] = ol[j];
            bi[j] = oi[j];
          }
      }
      const uint32_t best = bi[0];  // uniform (DeviceWarp's Lanes ignore the index)
      if (best == kNoSymbol) return false;
      for (uint32_t j : w.lanes())
        for (uint32_t k = 0; k < K; ++k)
          if (K * j + k == best) {
            f[k][j] = add ? f[k][j] + 1 : f[k][j] - 1;
            mul_wide(cnt[k][j], freq_step_dlog(f[k][j], add), &sh[k][j], &sl[k][j]);
          }
      sum += add ? 1 : -1;
    }
  }

  // Cumulative frequencies and the lane codes.
  U32 lane_f, esc_code, src;
  for (uint32_t j : w.lanes()) {
    lane_f[j] = 0;
    for (uint32_t k = 0; k < K; ++k) lane_f[j] += f[k][j];
  }
  const U32 base = warp_exclusive_scan(w, lane_f);
  U64 bytes;
  for (uint32_t j : w.lanes()) {
    uint32_t cum = base[j];
    esc_code[j] = 0;
    bytes[j] = 0;
    for (uint32_t k = 0; k < K; ++k) {
      const uint32_t s = K * j + k, code = f[k][j] << 16 | cum;
      if (lossless) codes[s] = s < n ? code : 0u;
      else if (s < n - 1) codes[uint32_t(lo) + s] = code;
      else if (s == n - 1) esc_code[j] = code | kEscFlag;
      if (s < n) {
        freq_out[s] = uint16_t(f[k][j]);
        bytes[j] += varint_size(f[k][j]);
      }
      cum += f[k][j];
    }
  }
  if (!lossless) {  // every bin outside the window codes as the escape symbol
    for (uint32_t j : w.lanes()) src[j] = (n - 1) / K;
    const U32 esc = w.shfl(esc_code, src);
    for (uint32_t j : w.lanes())
      for (uint32_t b = j; b < kLossyBins; b += kWarpLanes)
        if (b == kEscBin || int32_t(b) < lo || int32_t(b) > hi) codes[b] = esc[j];
  }
  const uint64_t table_bytes = (lossless ? 1 : 3) + w.sum(bytes);
  for (uint32_t j : w.lanes())
    if (j == 0) {
      info->n = n;
      info->qmin = lo - kQLimit;
      info->bytes = uint32_t(table_bytes);
    }
  return true;
}

// Serialises a table built by warp_build_table at `out`: n - 1, (lossy) qmin, the frequencies.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W>
KVCODEC_HD void warp_write_table(W& w, bool lossless, const uint16_t* freq, const TableInfo& t, uint8_t* out) {
  constexpr uint32_t K = kTableSymbolsPerLane;
  typename W::template Lanes<uint32_t> len;
  for (uint32_t j : w.lanes()) {
    len[j] = 0;
    for (uint32_t k = 0; k < K; ++k)
      if (K * j + k < t.n) len[j] += varint_size(freq[K * j + k]);
  }
  const typename W::template Lanes<uint32_t> at = warp_exclusive_scan(w, len);
  const uint32_t head = lossless ? 1 : 3;
  for (uint32_t j : w.lanes()) {
    if (j == 0) {
      out[0] = uint8_t(t.n - 1);
      if (!lossless) st_u16(out + 1, uint16_t(int16_t(t.qmin)));
    }
    uint8_t* p = out + head + at[j];
    for (uint32_t k = 0; k < K; ++k)
      if (K * j + k < t.n) p += put_varint(p, freq[K * j + k]);
  }
}

// What the steps of block_build_model share about unit u: its shape, its histograms (count(s,
// b, c): channel c's occurrences of bin b in slot s) and its per-channel groups.
struct UnitModel {
  uint32_t C, S, bins, G, fs;
  bool lossless;
  const uint32_t* hist;
  uint16_t* group;
  KVCODEC_HD uint32_t count(uint32_t s, uint32_t b, uint32_t c) const { return hist[(uint64_t(s) * bins + b) * C + c]; }
};

// Step 2 of block_build_model: refinement rounds moving each channel to the group whose
// smoothed histogram codes it in the fewest bits, until no channel moves (at most 4 rounds).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename B>
KVCODEC_HD void block_refine_groups(B& blk, const UnitModel& m, ModelShared& sh, uint64_t* sums) {
  const uint32_t C = m.C, S = m.S, bins = m.bins, G = m.G, fs = m.fs;
  uint16_t* group = m.group;
  auto count = [&](uint32_t s, uint32_t b, uint32_t c) { return m.count(s, b, c); };
  // Row r = (s - fs) * bins + b of group g lives at sums[g * rows + r].
  const uint32_t rows = (S - fs) * bins;
  for (int round = 0; round < 4; ++round) {
    blk.for_range(G * rows, [&](uint32_t i) { sums[i] = 0; });
    blk.single([&] { sh.moved = 0; });
    blk.sync();
    blk.for_range(C, [&](uint32_t c) {
      uint64_t* gs = sums + uint64_t(group[c]) * rows;
      for (uint32_t s = fs; s < S; ++s)
        for (uint32_t b = sh.bin_lo[s]; b <= sh.bin_hi[s]; ++b)
          if (const uint32_t n = count(s, b, c)) blk.atomic_add(&gs[(s - fs) * bins + b], n);
    });
    blk.sync();
    blk.for_warps(G * (S - fs), [&](auto& w, uint32_t r) {
      typename std::remove_reference_t<decltype(w)>::template Lanes<uint64_t> part;
      for (uint32_t j : w.lanes()) {
        part[j] = 0;
        for (uint32_t b = j; b < bins; b += kWarpLanes) part[j] += sums[uint64_t(r) * bins + b];
      }
      const uint64_t total = w.sum(part);
      for (uint32_t j : w.lanes())
        if (j == 0) sh.log_total[r] = log2_q32(2 * total + bins);
    });
    blk.sync();
    // cost = -log2 of the smoothed probability, Q24 (cluster_channels' formula).
    blk.for_range(G * rows, [&](uint32_t i) {
      const uint64_t v = sums[i];
      sums[i] = (sh.log_total[i / bins] - (v ? log2_q32(2 * v + 1) : 0)) >> 8;
    });
    blk.sync();
    blk.for_range(C, [&](uint32_t c) {
      uint64_t cost[kMaxTableGroups];
      for (uint32_t g = 0; g < kMaxTableGroups; ++g) cost[g] = 0;
      for (uint32_t s = fs; s < S; ++s)
        for (uint32_t b = sh.bin_lo[s]; b <= sh.bin_hi[s]; ++b)
          if (const uint64_t n = count(s, b, c)) {
            const uint64_t* row = sums + (s - fs) * bins + b;
            for (uint32_t g = 0; g < kMaxTableGroups; ++g)
              if (g < G) cost[g] += n * row[uint64_t(g) * rows];
          }
      uint32_t best = group[c];
      uint64_t best_cost = ~uint64_t(0);
      for (uint32_t g = 0; g < kMaxTableGroups; ++g)
        if (g < G && cost[g] < best_cost) {
          best_cost = cost[g];
          best = g;
        }
      if (best != group[c]) {
        group[c] = uint16_t(best);
        sh.moved = 1;
      }
    });
    blk.sync();
    const bool moved = sh.moved != 0;
    blk.sync();  // everyone has read `moved` before the next round clears it
    if (!moved) break;
  }
}

// Step 4b of block_build_model (lossless): the byte planes kept raw, as the CPU's raw_planes_of
// decides them (keep_plane_raw on each plane's symbols coded with its tables: the group
// histograms in `sums`, the frequencies in `freq`), one warp per plane; a raw plane's tables
// become 2-byte markers (sh.table[i].bytes). sh.raw_planes: the mask (0 for lossy units).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename B>
KVCODEC_HD void block_raw_planes(B& blk, const UnitModel& m, ModelShared& sh, const uint64_t* sums,
                                 const uint16_t* freq) {
  blk.single([&] { sh.raw_planes = 0; });
  blk.sync();
  if (!m.lossless) return;
  blk.for_warps(m.S, [&](auto& w, uint32_t p) {
    typename std::remove_reference_t<decltype(w)>::template Lanes<uint64_t> coded, symbols;
    for (uint32_t j : w.lanes()) {
      coded[j] = symbols[j] = 0;
      for (uint32_t g = 0; g < sh.used; ++g) {
        const uint32_t i = g * m.S + p;
        for (uint32_t b = j; b < sh.table[i].n; b += kWarpLanes)
          if (const uint64_t h = sums[uint64_t(i) * m.bins + b]) {
            coded[j] += h * symbol_cost_q16(freq[i * kLosslessBins + b]);
            symbols[j] += h;
          }
      }
    }
    const bool raw = keep_plane_raw(w.sum(coded), w.sum(symbols));
    for (uint32_t j : w.lanes())
      if (j == 0) sh.plane_raw[p] = raw ? 1u : 0u;
  });
  blk.sync();
  blk.single([&] {
    for (uint32_t p = 0; p < m.S; ++p) sh.raw_planes |= sh.plane_raw[p] << p;
    for (uint32_t i = 0; i < sh.used * m.S; ++i)
      if (sh.raw_planes >> (i % m.S) & 1) sh.table[i].bytes = kRawPlaneMarkerBytes;
  });
  blk.sync();
}

// Step 5 of block_build_model: serialises the model of unit u -- group count, tables, channel
// groups, (lossy) step codes and centres -- into its slot of a.models; sets sh.model_bytes.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename B>
KVCODEC_HD void block_write_model(B& blk, const UnitModel& m, const ModelLayout& ml, const ModelArgs& a, uint32_t u,
                                  ModelShared& sh, uint16_t* freq, uint32_t tables) {
  const uint32_t C = m.C;
  const bool lossless = m.lossless;
  const uint16_t* group = m.group;
  uint8_t* out = a.models + uint64_t(u) * ml.model_stride;
  blk.single([&] {
    out[0] = uint8_t(sh.used);
    uint32_t off = 1;
    for (uint32_t i = 0; i < tables; ++i) {
      sh.table[i].offset = off;
      off += sh.table[i].bytes;
    }
    sh.channels_offset = off;
    sh.model_bytes = off + (C + 1) / 2;
  });
  blk.sync();
  blk.for_warps(tables, [&](auto& w, uint32_t i) {
    if (sh.raw_planes >> (i % m.S) & 1) {  // a raw plane's marker: n - 1 = 0, frequency 0
      for (uint32_t j : w.lanes())
        if (j < kRawPlaneMarkerBytes) out[sh.table[i].offset + j] = 0;
      return;
    }
    warp_write_table(w, lossless, freq + i * kLosslessBins, sh.table[i], out + sh.table[i].offset);
  });
  blk.for_range((C + 1) / 2, [&](uint32_t i) {
    const uint32_t c = 2 * i;
    out[sh.channels_offset + i] = uint8_t(group[c] | (c + 1 < C ? group[c + 1] << 4 : 0));
  });
  if (!lossless) {
    // Varint bytes per part of the channels, their offsets (one thread), then the varints.
    const uint32_t parts = blk.threads();
    const ChannelGrid* g = a.grids + uint64_t(u) * C;
    auto step_delta = [&](uint32_t c) { return zigzag32(g[c].step_code - (c ? g[c - 1].step_code : 0)); };
    blk.for_range(parts, [&](uint32_t p) {
      const uint32_t c0 = uint32_t(uint64_t(p) * C / parts), c1 = uint32_t(uint64_t(p + 1) * C / parts);
      uint32_t steps = 0, centers = 0;
      for (uint32_t c = c0; c < c1; ++c) {
        steps += varint_size(step_delta(c));
        centers += varint_size(zigzag32(g[c].center));
      }
      sh.part_steps[p] = steps;
      sh.part_centers[p] = centers;
    });
    blk.sync();
    blk.single([&] {
      uint32_t off = sh.model_bytes;
      for (uint32_t p = 0; p < parts; ++p) {
        const uint32_t n = sh.part_steps[p];
        sh.part_steps[p] = off;
        off += n;
      }
      for (uint32_t p = 0; p < parts; ++p) {
        const uint32_t n = sh.part_centers[p];
        sh.part_centers[p] = off;
        off += n;
      }
      sh.model_bytes = off;
    });
    blk.sync();
    blk.for_range(parts, [&](uint32_t p) {
      const uint32_t c0 = uint32_t(uint64_t(p) * C / parts), c1 = uint32_t(uint64_t(p + 1) * C / parts);
      uint8_t* ps = out + sh.part_steps[p];
      uint8_t* pc = out + sh.part_centers[p];
      for (uint32_t c = c0; c < c1; ++c) {
        ps += put_varint(ps, step_delta(c));
        pc += put_varint(pc, zigzag32(g[c].center));
      }
    });
  }
}

// Builds the model of unit u (see the top of this file). `sums` holds ml.sums_bytes (shared
// memory on the device when it fits, else the unit's global scratch). Every thread returns the
// same value: false if a table could not be normalised (unreachable; see warp_build_table).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename B>
KVCODEC_HD bool block_build_model(B& blk, const EncodeLayout& el, const ModelLayout& ml, const ModelArgs& a,
                                  uint32_t u, ModelShared& sh, uint64_t* sums, bool keep_groups = false) {
  const uint32_t C = el.channels, S = el.slots, bins = el.bins, G = ml.groups, fs = ml.first_slot;
  const bool lossless = el.lossless != 0;
  const uint32_t* hist = a.hist + uint64_t(u) * el.hist_per_unit();
  const uint64_t* feature = a.feature + uint64_t(u) * C;
  uint16_t* group = a.table_base + uint64_t(u) * C;
  uint8_t* scratch = a.scratch + uint64_t(u) * ml.scratch_stride;
  uint64_t* keys = reinterpret_cast<uint64_t*>(scratch + ml.keys_offset);
  uint16_t* freq = reinterpret_cast<uint16_t*>(scratch + ml.freq_offset);
  const UnitModel m{C, S, bins, G, fs, lossless, hist, group};
  auto count = [&](uint32_t s, uint32_t b, uint32_t c) { return m.count(s, b, c); };

  // The bins any channel counts, per slot (every later pass reads only those rows), and the
  // sort keys.
  blk.single([&] {
    for (uint32_t s = 0; s < S; ++s) {
      sh.bin_lo[s] = bins;
      sh.bin_hi[s] = 0;  // stored as bins - 1 - hi while the minimum is taken
    }
    for (uint32_t g = 0; g < G; ++g) sh.first[g] = C;
    sh.failed = 0;
  });
  blk.for_range(ml.sort_n, [&](uint32_t i) { keys[i] = i < C ? feature[i] << 16 | i : ~uint64_t(0); });
  blk.sync();
  blk.for_range(C, [&](uint32_t c) {
    for (uint32_t s = 0; s < S; ++s) {
      uint32_t lo = bins, hi = 0;
      for (uint32_t b = 0; b < bins; ++b)
        if (count(s, b, c)) {
          if (lo == bins) lo = b;
          hi = b;
        }
      if (lo < bins) {
        blk.atomic_min(&sh.bin_lo[s], lo);
        blk.atomic_min(&sh.bin_hi[s], bins - 1 - hi);
      }
    }
  });
  blk.sync();
  blk.single([&] {
    for (uint32_t s = 0; s < S; ++s) sh.bin_hi[s] = sh.bin_lo[s] < bins ? bins - 1 - sh.bin_hi[s] : 0;
  });

  // keep_groups (the second pass of recount_deltas_channel): the groups of the first pass, which
  // left table_base = group * slots; dense in order of first use, so step 3 keeps them.
  if (keep_groups) {
    blk.for_range(C, [&](uint32_t c) { group[c] = uint16_t(group[c] / S); });
    blk.sync();
  }

  // 1. Bitonic sort of the keys (ascending), then quantile groups.
  for (uint32_t k = 2; !keep_groups && k <= ml.sort_n; k <<= 1)
    for (uint32_t j = k >> 1; j > 0; j >>= 1) {
      blk.for_range(ml.sort_n / 2, [&](uint32_t t) {
        const uint32_t i = (t / j) * 2 * j + t % j, l = i + j;
        const bool up = (i & k) == 0;
        if ((keys[i] > keys[l]) == up) {
          const uint64_t x = keys[i];
          keys[i] = keys[l];
          keys[l] = x;
        }
      });
      blk.sync();
    }
  blk.sync();
  if (!keep_groups) blk.for_range(C, [&](uint32_t i) { group[keys[i] & 0xffff] = uint16_t(uint64_t(i) * G / C); });
  blk.sync();

  // 2. Refinement rounds.
  if (G > 1 && !keep_groups) block_refine_groups(blk, m, sh, sums);

  // 3. Dense renumbering in order of first use.
  blk.for_range(C, [&](uint32_t c) { blk.atomic_min(&sh.first[group[c]], c); });
  blk.sync();
  blk.single([&] {
    sh.used = 0;
    for (uint32_t g = 0; g < G; ++g) {
      sh.remap[g] = 0;
      if (sh.first[g] == C) continue;
      ++sh.used;
      for (uint32_t o = 0; o < G; ++o) sh.remap[g] += sh.first[o] < sh.first[g];
    }
  });
  blk.sync();
  blk.for_range(C, [&](uint32_t c) { group[c] = uint16_t(sh.remap[group[c]]); });
  const uint32_t tables = sh.used * S;
  blk.for_range(tables * bins, [&](uint32_t i) { sums[i] = 0; });
  blk.sync();

  // 4. Group histograms over all slots, [group * slots + slot][bin], and the tables.
  blk.for_range(C, [&](uint32_t c) {
    uint64_t* gs = sums + uint64_t(group[c]) * S * bins;
    for (uint32_t s = 0; s < S; ++s)
      for (uint32_t b = sh.bin_lo[s]; b <= sh.bin_hi[s]; ++b)
        if (const uint32_t n = count(s, b, c)) blk.atomic_add(&gs[s * bins + b], n);
  });
  blk.sync();
  uint32_t* codes = a.codes + uint64_t(u) * el.max_tables * bins;
  blk.for_warps(tables, [&](auto& w, uint32_t i) {
    if (!warp_build_table(w, lossless, sums + uint64_t(i) * bins, codes + uint64_t(i) * bins,
                          freq + i * kLosslessBins, &sh.table[i]))
      sh.failed = 1;
  });
  blk.sync();
  block_raw_planes(blk, m, sh, sums, freq);

  // 5. Serialisation: group count, tables, channel groups, (lossy) step codes and centres.
  block_write_model(blk, m, ml, a, u, sh, freq, tables);
  blk.sync();
  blk.single([&] {
    a.model_size[u] = sh.model_bytes;
    if (a.raw_planes) a.raw_planes[u] = sh.raw_planes;
  });
  blk.for_range(C, [&](uint32_t c) { group[c] = uint16_t(group[c] * S); });  // the lane encoders' table base
  blk.sync();
  return sh.failed == 0;
}

// ---- the frame head --------------------------------------------------------------------------

// The header's model-section size (docs/format.md, "Header"); the frame size and head checksum
// offsets are in warp_encode.hpp.
inline constexpr uint32_t kHeaderModelBytesOffset = 40;

// The header of every frame of one encoding, with a zero model size, frame size and checksum
// (the host writes it once; the device fills in the rest).
struct HeaderTemplate {
  uint8_t bytes[kHeaderBytes];
};

// Offsets of the units' models in the model section and its size (one thread, units in order).
KVCODEC_HD uint64_t place_models(uint32_t units, const uint32_t* model_size, uint64_t* model_offset) {
  uint64_t off = 0;
  for (uint32_t u = 0; u < units; ++u) {
    model_offset[u] = off;
    off += model_size[u];
  }
  return off;
}

KVCODEC_HD uint64_t head_bytes_for(const EncodeLayout& el, uint64_t model_bytes) {
  return kHeaderBytes + model_bytes + uint64_t(el.num_chunks) * kIndexEntryBytes;
}

// Copies unit u's model into the frame's model section; unit 0 also writes the header (the
// template with the model size). The chunk index, frame size and checksum come later
// (finish_chunk, finish_head).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename B>
KVCODEC_HD void block_write_model(B& blk, const HeaderTemplate& hdr, const ModelLayout& ml, const uint8_t* models,
                                  const uint32_t* model_size, const uint64_t* model_offset, uint64_t model_bytes,
                                  uint32_t u, uint8_t* dst) {
  const uint8_t* m = models + uint64_t(u) * ml.model_stride;
  uint8_t* out = dst + kHeaderBytes + model_offset[u];
  blk.for_range(model_size[u], [&](uint32_t i) { out[i] = m[i]; });
  if (u == 0)
    blk.for_range(kHeaderBytes, [&](uint32_t i) {
      const uint32_t f = i - kHeaderModelBytesOffset;
      dst[i] = f < 4 ? uint8_t(model_bytes >> (8 * f)) : hdr.bytes[i];
    });
}

}  // namespace kvcodec::detail
