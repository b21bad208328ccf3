// The GPU encoder's per-thread and per-warp code, written once and run by the CUDA kernels
// (cuda/encode.cu) and, on the host, by the warp emulation of the tests, so machines without a
// GPU execute this very code against the CPU encoder (src/encode/encode.cpp).
//
// Pipeline (each step a kernel; "unit" = one (layer, K/V) of the context, u = 2 * layer + kv):
//  phase 1, statistics (device):
//   stats_channel       one thread per (unit, channel): finite-value sums in token order --
//                       the order and precision of compute_grids, so the sums are identical
//   grid_channel        the channel's grid (channel_grid of encode_values.hpp); the layer's
//                       RMS for StepMode::kLayer is summed in channel order by one thread
//   histogram_channel   one thread per (unit, channel): symbol values (quantize_grid, deltas)
//                       counted into the unit's [slot][bin][channel] histograms, plus the
//                       channel's clustering feature -- each count has one owner, no atomics
//  tables (device, encode/block_model.hpp):
//   block_build_model   one block per unit: channel clustering, table windows and normalisation,
//                       lane codes, and the unit's serialised layer model (the CPU's decisions)
//  phase 2, lanes and frame (device):
//   warp_encode_unit    one warp per (chunk, unit): the format's 32 rANS lanes, one per thread,
//                       run BACKWARDS over the unit's symbols as the CPU does. Within a step,
//                       lane j codes symbol s0 + j; the sequential encoder emits words in
//                       descending lane order, each below the previous, so in memory they sit in
//                       ascending lane order: a ballot and a prefix count place every lane's word
//                       (the decoder's scheme, mirrored). Words and escapes are staged per unit at
//                       the end of worst-case regions (at most one word per symbol).
//   assign_chunks       one thread (after place_models: the model section's layout and the head
//                       size): unit and chunk sizes -> chunk offsets and the frame size
//   block_write_model   one block per unit: its model into the head; unit 0's block the header
//   warp_write_unit     one warp per (chunk, unit): directory entry, lane headers, words, escapes
//                       copied to the unit's final place in the frame
//   chunk_segment_digest  one thread per checksum segment of a chunk body (checksum.hpp)
//   finish_chunk        one thread per chunk: the segments' digests -> the chunk's checksum and
//                       index entry; chunk 0's thread also writes the frame size
//   head_segment_digest one thread per checksum segment of the head
//   finish_head         one thread: the head checksum in the header
// Every step is deterministic: the frame equals kvcodec::encode_into's byte for byte.
#pragma once

#include <cstdint>

#include "common/checksum.hpp"
#include "common/dtype.hpp"
#include "common/quant.hpp"
#include "common/rans.hpp"
#include "common/unit.hpp"
#include "common/warp.hpp"
#include "common/stored_unit.hpp"
#include "encode/encode_values.hpp"
#include "encode/quantize.hpp"
#include "kvcodec/config.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::detail {

// Scalars of one encoding, passed by value to kernels (built by encode_layout, encode_plan.hpp).
struct EncodeLayout {
  uint8_t dtype = 0;  // DType code
  uint8_t elem_size = 0;
  uint8_t lossless = 0;
  StepMode step_mode = StepMode::kChannel;
  uint32_t layers = 0, tokens = 0, kv_heads = 0, head_dim = 0, channels = 0;
  uint32_t chunk_tokens = 0, group_tokens = 0, num_chunks = 0;
  uint32_t slots = 0;       // tables per channel group: byte planes, or anchor (+ delta)
  uint32_t bins = 0;        // histogram bins per slot: kLosslessBins or kLossyBins
  uint32_t planes = 0;      // lane streams per unit: elem_size (lossless) or 1
  uint32_t max_tables = 0;  // code tables reserved per unit: table_groups * slots

  KVCODEC_HD uint32_t units() const { return 2 * layers; }
  KVCODEC_HD uint32_t chunk_token_begin(uint32_t k) const { return k * chunk_tokens; }
  KVCODEC_HD uint32_t chunk_token_count(uint32_t k) const {
    const uint32_t t0 = k * chunk_tokens;
    return tokens - t0 < chunk_tokens ? tokens - t0 : chunk_tokens;
  }
  // First symbol of (chunk k, unit u) in the staging arrays: units are laid out chunk by chunk.
  KVCODEC_HD uint64_t stage_symbol(uint32_t k, uint32_t u) const {
    return (uint64_t(units()) * chunk_token_begin(k) + uint64_t(u) * chunk_token_count(k)) * channels;
  }
  KVCODEC_HD uint64_t hist_per_unit() const { return uint64_t(slots) * bins * channels; }
};

// A channel's grid as the lane encoders use it.
struct LaneGrid {
  double inv_step;  // 1 / step, as the CPU quantizer computes it
  float step;
  int32_t center;
};

// What warp_encode_unit leaves for the frame assembly: per lane stream its word count and final
// states, the escape count and the unit's size in the frame.
struct UnitStage {
  uint32_t words[4];
  uint32_t escapes;
  uint32_t bytes;   // in the frame: coded, or stored (raw) when `stored`
  uint32_t stored;  // 1: the unit is stored raw (docs/format.md 4.4; store_unit decides)
  uint32_t raw;     // its model's raw byte planes (docs/format.md 4.5): bit p = plane p's bytes, no lane stream
  uint32_t state[4][kWarpLanes];
};

// Header fields that only the frame assembly fills in (docs/format.md, "Header", "Chunk index").
inline constexpr uint32_t kHeaderFrameBytesOffset = 48;
inline constexpr uint32_t kHeaderChecksumOffset = 56;

KVCODEC_HD void st_u16(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
KVCODEC_HD void st_u32(uint8_t* p, uint32_t v) {
  st_u16(p, v);
  st_u16(p + 2, v >> 16);
}
KVCODEC_HD void st_u64(uint8_t* p, uint64_t v) {
  st_u32(p, uint32_t(v));
  st_u32(p + 4, uint32_t(v >> 32));
}

// Address of element (token t, channel c) of a unit; false for a paged block entry out of range.
KVCODEC_HD bool element_at(const UnitDst& src, uint32_t t, uint32_t c, const uint8_t** p) {
  int64_t row;
  if (!src.token_offset(t, &row)) return false;
  *p = reinterpret_cast<const uint8_t*>(src.base) + (row + src.channel_offset(c)) * int64_t(src.es);
  return true;
}

// ---- phase 1 ---------------------------------------------------------------------------------

// Sums of channel c of unit u into sums[u * C + c]. False when the source's block table is bad.
KVCODEC_HD bool stats_channel(const EncodeLayout& el, const KVView& src, uint32_t u, uint32_t c, ChannelSums* sums) {
  const UnitDst s = UnitDst::make(src, u / 2, u % 2);
  ChannelSums acc;
  for (uint32_t t = 0; t < el.tokens; ++t) {
    const uint8_t* e;
    if (!element_at(s, t, c, &e)) return false;
    add_sample(acc, load_as_f32(e, el.dtype));
  }
  finish_sums(acc);
  double a, b;  // robust passes, as compute_grids takes them (encode_values.hpp)
  for (int pass = 0; pass < kRobustPasses && outlier_range(acc, &a, &b); ++pass) {
    ChannelSums next;
    for (uint32_t t = 0; t < el.tokens; ++t) {
      const uint8_t* e;
      if (!element_at(s, t, c, &e)) return false;
      add_sample_in(next, load_as_f32(e, el.dtype), a, b);
    }
    if (!accept_pass(acc, next)) break;
  }
  sums[uint64_t(u) * el.channels + c] = acc;
  return true;
}

// Grid of channel c of unit u, for the unit's relative step and (StepMode::kLayer) its RMS.
KVCODEC_HD void grid_channel(const EncodeLayout& el, double rel_step, double layer_rms, const ChannelSums* sums,
                             uint32_t u, uint32_t c, ChannelGrid* grids, LaneGrid* lane) {
  const uint64_t i = uint64_t(u) * el.channels + c;
  const ChannelGrid g = channel_grid(sums[i], layer_rms, el.step_mode, rel_step);
  grids[i] = g;
  const float step = step_from_code(g.step_code);
  lane[i] = {1.0 / double(step), step, g.center};
}

// Symbol value (lossy) of token t (of the context), channel c: its grid offset, or for a delta
// token the difference to its anchor's (escaped when the anchor's code in anchor_codes, the
// channel's anchor table, orphans it: encode_values.hpp, orphans_deltas).
KVCODEC_HD bool lossy_value(const EncodeLayout& el, const UnitDst& s, const LaneGrid& g, const uint32_t* anchor_codes,
                            uint32_t t, uint32_t c, int32_t* v, const uint8_t** elem) {
  if (!element_at(s, t, c, elem)) return false;
  const int32_t q = grid_offset(load_as_f32(*elem, el.dtype), g.step, g.inv_step, g.center, el.dtype);
  const uint32_t in_group = (t % el.chunk_tokens) % el.group_tokens;
  if (in_group == 0) {
    *v = q;
    return true;
  }
  const uint8_t* a;
  if (!element_at(s, t - in_group, c, &a)) return false;
  const int32_t qa = grid_offset(load_as_f32(a, el.dtype), g.step, g.inv_step, g.center, el.dtype);
  *v = orphans_deltas(qa, anchor_codes[lossy_bin(qa)]) ? kEscapeValue : delta_value(q, qa);
  return true;
}

// Histograms (hist: all units, [unit][slot][bin][channel], zeroed by the caller) and clustering
// feature (feature[u * C + c]) of channel c of unit u: as the CPU encoder counts them.
KVCODEC_HD bool histogram_channel(const EncodeLayout& el, const KVView& src, uint32_t u, uint32_t c,
                                  const LaneGrid* lane, uint32_t* hist, uint64_t* feature) {
  const UnitDst s = UnitDst::make(src, u / 2, u % 2);
  const uint32_t C = el.channels;
  uint32_t* h = hist + uint64_t(u) * el.hist_per_unit() + c;
  uint64_t f = 0;
  if (el.lossless) {
    for (uint32_t t = 0; t < el.tokens; ++t) {
      const uint8_t* e;
      if (!element_at(s, t, c, &e)) return false;
      const uint32_t bits = load_raw(e, el.elem_size);
      for (uint32_t p = 0; p < el.elem_size; ++p) ++h[(uint64_t(p) * el.bins + ((bits >> (8 * p)) & 0xff)) * C];
      f += (bits >> (8 * (el.elem_size - 1))) & 0x7f;  // magnitude bits of the top byte
    }
  } else {
    // Anchors are visited before their deltas: keep the last anchor's value instead of
    // quantizing it again (lossy_value does, for the warp encoder's random access).
    const LaneGrid g = lane[uint64_t(u) * C + c];
    int32_t anchor = 0;
    for (uint32_t t = 0; t < el.tokens; ++t) {
      const uint8_t* e;
      if (!element_at(s, t, c, &e)) return false;
      int32_t v = grid_offset(load_as_f32(e, el.dtype), g.step, g.inv_step, g.center, el.dtype);
      const bool is_anchor_token = is_anchor(t, el.chunk_tokens, el.group_tokens);
      if (is_anchor_token) anchor = v;
      else v = delta_value(v, anchor);
      ++h[(uint64_t(is_anchor_token ? 0 : 1) * el.bins + lossy_bin(v)) * C];
      if (is_anchor_token && v != kEscapeValue) f += uint64_t(v < 0 ? -v : v);
    }
  }
  feature[uint64_t(u) * C + c] = f;
  return true;
}

// The second pass over the deltas of channel c of unit u (lossy, group_tokens > 1), after the
// model: its delta histogram counted again with the deltas of the anchors the anchor table
// escapes also escaped (orphans_deltas). `codes` and `table_base` are the model's (table_base
// holds group * slots). The model is then rebuilt on the same groups (block_build_model with
// keep_groups), as the CPU encoder does; nothing changes for a unit none of whose anchors escape.
KVCODEC_HD bool recount_deltas_channel(const EncodeLayout& el, const KVView& src, uint32_t u, uint32_t c,
                                       const LaneGrid* lane, const uint32_t* codes, const uint16_t* table_base,
                                       uint32_t* hist) {
  const UnitDst s = UnitDst::make(src, u / 2, u % 2);
  const uint32_t C = el.channels;
  uint32_t* h = hist + uint64_t(u) * el.hist_per_unit() + uint64_t(el.bins) * C + c;  // slot 1
  for (uint32_t b = 0; b < el.bins; ++b) h[uint64_t(b) * C] = 0;
  const LaneGrid g = lane[uint64_t(u) * C + c];
  const uint32_t* anchor_codes = codes + (uint64_t(u) * el.max_tables + table_base[uint64_t(u) * C + c]) * el.bins;
  int32_t anchor = 0;
  bool orphaned = false;
  for (uint32_t t = 0; t < el.tokens; ++t) {
    const uint8_t* e;
    if (!element_at(s, t, c, &e)) return false;
    const int32_t v = grid_offset(load_as_f32(e, el.dtype), g.step, g.inv_step, g.center, el.dtype);
    if (is_anchor(t, el.chunk_tokens, el.group_tokens)) {
      anchor = v;
      orphaned = orphans_deltas(v, anchor_codes[lossy_bin(v)]);
      continue;
    }
    ++h[uint64_t(lossy_bin(orphaned ? kEscapeValue : delta_value(v, anchor))) * C];
  }
  return true;
}

// ---- phase 2 ---------------------------------------------------------------------------------

// Inputs of the lane encoders, all units (device or host memory).
struct EncodeTables {
  const uint32_t* codes;       // [unit][max_tables][bins]: freq << 16 | cum | kEscFlag
  const uint16_t* table_base;  // [unit][channel]: the channel's group * slots
  const LaneGrid* lane;        // [unit][channel] (lossy)
  const uint32_t* raw_planes;  // [unit]: lossless byte planes kept raw (ModelArgs::raw_planes)
};

// Staging of every unit: words[planes * stage_symbol], escapes[elem_size * stage_symbol], and
// one UnitStage per (chunk, unit).
struct EncodeStaging {
  uint16_t* words;
  uint8_t* escapes;
  UnitStage* stages;  // [chunk][unit]
};

// Size in the frame of a unit of n symbols per plane with these word and escape counts and raw
// planes (UnitStage::bytes keeps it as a u32: assign_chunks recomputes it in 64 bits and rejects
// chunks of 4 GiB or more).
KVCODEC_HD uint64_t unit_bytes(const EncodeLayout& el, const UnitStage& st, uint64_t n) {
  uint64_t b = 0;
  for (uint32_t p = 0; p < el.planes; ++p) b += st.raw >> p & 1 ? pad4(n) : pad4(kLaneHeaderBytes + 2ull * st.words[p]);
  if (!el.lossless) b += pad4(4 + uint64_t(st.escapes) * el.elem_size);
  return b;
}

// Size in the frame of unit st of a chunk of n symbols per plane: stored or coded.
KVCODEC_HD uint64_t frame_unit_bytes(const EncodeLayout& el, const UnitStage& st, uint64_t n) {
  return st.stored ? stored_unit_bytes(n, el.elem_size) : unit_bytes(el, st, n);
}

// Checksum segments of the largest chunk body the layout allows (every symbol a word in every
// lane stream and, lossy, an escape): bounds the digests of any chunk.
KVCODEC_HD uint64_t max_chunk_segments(const EncodeLayout& el) {
  UnitStage worst{};
  const uint32_t n = el.chunk_tokens * el.channels;
  for (uint32_t p = 0; p < el.planes; ++p) worst.words[p] = n;
  worst.escapes = el.lossless ? 0 : n;  // no raw planes: a lane stream is larger than a raw plane
  return checksum_segments(4ull * el.units() + uint64_t(el.units()) * unit_bytes(el, worst, n));
}

// rANS-codes unit u of chunk k with one warp (see the top of this file). P = lane streams.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W, uint32_t P>
KVCODEC_HD uint32_t warp_encode_unit_planes(W& w, const EncodeLayout& el, const KVView& src, const EncodeTables& tab,
                                            const EncodeStaging& stg, uint32_t k, uint32_t u) {
  const UnitDst s = UnitDst::make(src, u / 2, u % 2);
  const uint32_t C = el.channels, es = el.elem_size, bins = el.bins;
  const uint32_t t0 = el.chunk_token_begin(k);
  const uint32_t n = el.chunk_token_count(k) * C;  // < 2^29: chunk_tokens * channels
  const uint64_t sym0 = el.stage_symbol(k, u);
  uint16_t* words = stg.words + uint64_t(P) * sym0;
  uint8_t* escapes = el.lossless ? nullptr : stg.escapes + uint64_t(es) * sym0;  // none staged when lossless
  const uint32_t* codes = tab.codes + uint64_t(u) * el.max_tables * bins;
  const uint16_t* tbase = tab.table_base + uint64_t(u) * C;
  const LaneGrid* lane = tab.lane + uint64_t(u) * C;
  const uint32_t raw_planes = el.lossless && tab.raw_planes ? tab.raw_planes[u] : 0u;  // written by warp_write_unit

  typename W::template Lanes<uint32_t> x[P], code[P], word, raw;
  typename W::template Lanes<bool> active, bad, esc, emit;
  for (uint32_t j : w.lanes())
    for (uint32_t p = 0; p < P; ++p) x[p][j] = kRansL;
  uint32_t wpos[P];  // lowest staged word of each stream (filled downwards)
  for (uint32_t p = 0; p < P; ++p) wpos[p] = n;
  uint32_t epos = n;  // lowest staged escape

  for (uint32_t s0 = (n - 1) / kWarpLanes * kWarpLanes + kWarpLanes; s0 > 0;) {
    s0 -= kWarpLanes;
    for (uint32_t j : w.lanes()) {
      const uint32_t i = s0 + j;
      active[j] = i < n;
      bad[j] = esc[j] = false;
      if (!active[j]) continue;
      const uint32_t t = t0 + i / C, c = i % C;
      const uint8_t* e;
      if (el.lossless) {
        bad[j] = !element_at(s, t, c, &e);
        if (bad[j]) continue;
        raw[j] = load_raw(e, es);
        for (uint32_t p = 0; p < P; ++p) code[p][j] = codes[(uint64_t(tbase[c]) + p) * bins + ((raw[j] >> (8 * p)) & 0xff)];
      } else {
        int32_t v;
        bad[j] = !lossy_value(el, s, lane[c], codes + uint64_t(tbase[c]) * bins, t, c, &v, &e);
        if (bad[j]) continue;
        raw[j] = load_raw(e, es);
        const uint32_t slot = is_anchor(t, el.chunk_tokens, el.group_tokens) ? 0u : 1u;
        code[0][j] = codes[(uint64_t(tbase[c]) + slot) * bins + lossy_bin(v)];
        esc[j] = (code[0][j] & kEscFlag) != 0;
      }
    }
    if (w.ballot(bad)) return kUnitBadBlock;

    if (!el.lossless) {  // escapes keep symbol order, placed below those of later steps
      const uint32_t mask = w.ballot(esc);
      epos -= popc32(mask);
      for (uint32_t j : w.lanes())
        if (esc[j]) store_raw(escapes + uint64_t(epos + popc32(mask & lanes_below(j))) * es, es, raw[j]);
    }
    for (uint32_t p = 0; p < P; ++p) {
      if (raw_planes >> p & 1) continue;
      for (uint32_t j : w.lanes()) {
        emit[j] = false;
        if (!active[j]) continue;
        uint16_t wd = 0;
        const uint32_t cd = code[p][j] & ~kEscFlag;
        emit[j] = rans_enc_put(x[p][j], cd >> 16, cd & 0xffffu, &wd);
        word[j] = wd;
      }
      const uint32_t mask = w.ballot(emit);
      wpos[p] -= popc32(mask);
      for (uint32_t j : w.lanes())
        if (emit[j]) words[uint64_t(p) * n + wpos[p] + popc32(mask & lanes_below(j))] = uint16_t(word[j]);
    }
  }

  UnitStage* st = stg.stages + uint64_t(k) * el.units() + u;
  UnitStage counts;
  for (uint32_t p = 0; p < P; ++p) counts.words[p] = n - wpos[p];
  counts.escapes = n - epos;
  counts.raw = raw_planes;
  const uint64_t coded = unit_bytes(el, counts, n);
  const bool stored = store_unit(coded, n, el.elem_size, P, el.lossless != 0);
  for (uint32_t j : w.lanes()) {
    for (uint32_t p = 0; p < P; ++p) st->state[p][j] = x[p][j];
    if (j == 0) {
      for (uint32_t p = 0; p < P; ++p) st->words[p] = counts.words[p];
      st->escapes = counts.escapes;
      st->raw = raw_planes;
      st->stored = stored ? 1u : 0u;
      st->bytes = uint32_t(stored ? stored_unit_bytes(n, el.elem_size) : coded);
    }
  }
  return kUnitOk;
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W>
KVCODEC_HD uint32_t warp_encode_unit(W& w, const EncodeLayout& el, const KVView& src, const EncodeTables& tab,
                                     const EncodeStaging& stg, uint32_t k, uint32_t u) {
  switch (el.planes) {
    case 1: return warp_encode_unit_planes<W, 1>(w, el, src, tab, stg, k, u);
    case 2: return warp_encode_unit_planes<W, 2>(w, el, src, tab, stg, k, u);
    default: return warp_encode_unit_planes<W, 4>(w, el, src, tab, stg, k, u);
  }
}

// Chunk sizes (directory + units), their offsets after a head of head_bytes, and the frame size.
// kAssignTooSmall when the frame would exceed `capacity` bytes; kAssignChunkTooLarge, with
// nothing more written, when a chunk reaches 4 GiB, or a unit 2 GiB in a frame with stored units
// (the CPU encoder's kResourceExhausted).
enum AssignResult : uint32_t { kAssignOk = 0, kAssignTooSmall = 1, kAssignChunkTooLarge = 2 };
KVCODEC_HD uint32_t assign_chunks(const EncodeLayout& el, const UnitStage* stages, uint64_t head_bytes,
                                  uint64_t capacity, uint64_t* chunk_offset, uint32_t* chunk_size,
                                  uint64_t* frame_bytes) {
  bool any_stored = false;
  uint64_t largest = 0;
  for (uint64_t i = 0; i < uint64_t(el.num_chunks) * el.units(); ++i) any_stored |= stages[i].stored != 0;
  uint64_t off = head_bytes;
  for (uint32_t k = 0; k < el.num_chunks; ++k) {
    uint64_t size = 4ull * el.units();
    const uint64_t n = uint64_t(el.chunk_token_count(k)) * el.channels;
    for (uint32_t u = 0; u < el.units(); ++u) {
      const uint64_t b = frame_unit_bytes(el, stages[uint64_t(k) * el.units() + u], n);
      largest = b > largest ? b : largest;
      size += b;
    }
    if (any_stored && largest >= kStoredUnitFlag) return kAssignChunkTooLarge;
    if (size > 0xffffffffull) return kAssignChunkTooLarge;  // the index holds u32 sizes (as encode_into)
    chunk_offset[k] = off;
    chunk_size[k] = uint32_t(size);
    off += size;
  }
  *frame_bytes = off;
  return off <= capacity ? kAssignOk : kAssignTooSmall;
}

// Writes unit u of chunk k -- its directory entry and its bytes -- into the frame at dst.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W>
KVCODEC_HD void warp_write_unit(W& w, const EncodeLayout& el, const KVView& src, const EncodeStaging& stg,
                                const uint64_t* chunk_offset, uint32_t k, uint32_t u, uint8_t* dst) {
  const uint32_t units = el.units(), es = el.elem_size, P = el.planes;
  const UnitStage* chunk_stages = stg.stages + uint64_t(k) * units;
  const UnitStage& st = chunk_stages[u];
  const uint32_t n = el.chunk_token_count(k) * el.channels;
  const uint64_t sym0 = el.stage_symbol(k, u);
  uint8_t* body = dst + chunk_offset[k];
  typename W::template Lanes<uint64_t> before;
  for (uint32_t j : w.lanes()) {
    before[j] = 0;
    for (uint32_t v = j; v < u; v += kWarpLanes) before[j] += chunk_stages[v].bytes;
    if (j == 0) st_u32(body + 4ull * u, st.bytes | (st.stored ? kStoredUnitFlag : 0u));
  }
  uint8_t* out = body + 4ull * units + w.sum(before);
  if (k == 0 && u == 0) {  // the frame's version: 5 with raw planes, 3 with stored units, else 2 (the header's)
    bool any_raw = false, any_stored = false;
    for (uint64_t i = 0; i < uint64_t(el.num_chunks) * units; ++i) {
      any_raw |= stg.stages[i].raw != 0;
      any_stored |= stg.stages[i].stored != 0;
    }
    for (uint32_t j : w.lanes())
      if (j == 0 && (any_raw || any_stored)) st_u16(dst + 4, any_raw ? kRawPlanesFormatVersion : kStoredUnitsFormatVersion);
  }
  const UnitDst s = UnitDst::make(src, u / 2, u % 2);
  const uint32_t t0 = k * el.chunk_tokens;
  if (st.stored) {  // the raw elements in stream order
    for (uint32_t j : w.lanes()) {
      for (uint64_t i = j; i < n; i += kWarpLanes) {
        const uint8_t* e = nullptr;
        if (element_at(s, t0 + uint32_t(i / el.channels), uint32_t(i % el.channels), &e))
          for (uint32_t b = 0; b < es; ++b) out[i * es + b] = e[b];
      }
      for (uint64_t i = uint64_t(n) * es + j; i < st.bytes; i += kWarpLanes) out[i] = 0;
    }
    return;
  }
  for (uint32_t p = 0; p < P; ++p) {
    if (st.raw >> p & 1) {  // a raw plane: byte p of each element in stream order, padded
      for (uint32_t j : w.lanes()) {
        for (uint64_t i = j; i < n; i += kWarpLanes) {
          const uint8_t* e = nullptr;
          if (element_at(s, t0 + uint32_t(i / el.channels), uint32_t(i % el.channels), &e)) out[i] = e[p];
        }
        for (uint64_t i = n + j; i < pad4(n); i += kWarpLanes) out[i] = 0;
      }
      out += pad4(n);
      continue;
    }
    const uint32_t count = st.words[p];
    const uint16_t* words = stg.words + uint64_t(P) * sym0 + uint64_t(p) * n + (n - count);
    const uint64_t len = kLaneHeaderBytes + 2ull * count;
    for (uint32_t j : w.lanes()) {
      if (j == 0) st_u32(out, count);
      st_u32(out + 4 + 4 * j, st.state[p][j]);
      for (uint64_t i = j; i < count; i += kWarpLanes) st_u16(out + kLaneHeaderBytes + 2 * i, words[i]);
      for (uint64_t i = len + j; i < pad4(len); i += kWarpLanes) out[i] = 0;
    }
    out += pad4(len);
  }
  if (!el.lossless) {
    const uint64_t len = 4 + uint64_t(st.escapes) * es;
    const uint8_t* esc = stg.escapes + uint64_t(es) * (sym0 + n - st.escapes);
    for (uint32_t j : w.lanes()) {
      if (j == 0) st_u32(out, st.escapes);
      for (uint64_t i = j; i < len - 4; i += kWarpLanes) out[4 + i] = esc[i];
      for (uint64_t i = len + j; i < pad4(len); i += kWarpLanes) out[i] = 0;
    }
  }
}

// Checksum segments (checksum.hpp) of the bodies of a frame's chunks: digests of chunk k are
// stored from digests[k * max_segments] on, where max_segments bounds every chunk's count.
KVCODEC_HD void chunk_segment_digest(const uint64_t* chunk_offset, const uint32_t* chunk_size, uint32_t k, uint64_t s,
                                     uint64_t max_segments, const uint8_t* dst, uint64_t* digests) {
  if (s < checksum_segments(chunk_size[k]))
    digests[k * max_segments + s] = segment_digest(ChecksumInput{dst + chunk_offset[k], chunk_size[k]}, s);
}

// Chunk k's index entry (offset, size, checksum of its body from its segments' digests) in the
// head at dst; chunk 0 also writes the frame size into the header, which the head checksum covers.
KVCODEC_HD void finish_chunk(uint64_t model_bytes, const uint64_t* chunk_offset, const uint32_t* chunk_size,
                             const uint64_t* digests, uint64_t max_segments, uint64_t frame_bytes, uint32_t k,
                             uint8_t* dst) {
  uint8_t* e = dst + kHeaderBytes + model_bytes + uint64_t(k) * kIndexEntryBytes;
  st_u64(e, chunk_offset[k]);
  st_u32(e + 8, chunk_size[k]);
  st_u32(e + 12, 0);
  st_u64(e + 16, combine_digests(digests + k * max_segments, checksum_segments(chunk_size[k])));
  if (k == 0) st_u64(dst + kHeaderFrameBytesOffset, frame_bytes);
}

// The bytes the head checksum covers: header bytes 0..55, then the head from byte 64 on.
KVCODEC_HD ChecksumInput head_checksum_input(const uint8_t* dst, uint64_t head_bytes) {
  return ChecksumInput{dst, kHeaderChecksumOffset, dst + kHeaderBytes, head_bytes - kHeaderBytes};
}

// Digest of checksum segment s of the head, once every index entry and the frame size are in place.
KVCODEC_HD void head_segment_digest(uint64_t head_bytes, uint64_t s, const uint8_t* dst, uint64_t* digests) {
  const ChecksumInput in = head_checksum_input(dst, head_bytes);
  if (s < checksum_segments(in.size())) digests[s] = segment_digest(in, s);
}

// The head checksum from its segments' digests.
KVCODEC_HD void finish_head(uint64_t head_bytes, const uint64_t* digests, uint8_t* dst) {
  st_u64(dst + kHeaderChecksumOffset,
         combine_digests(digests, checksum_segments(head_checksum_input(dst, head_bytes).size())));
}

}  // namespace kvcodec::detail
