// Decoding one (chunk, layer, K/V) unit with one warp: 32 lanes = the 32 rANS states of the
// format, so each step of the loop decodes 32 consecutive symbols, one per lane. Written once
// against the warp abstraction of warp.hpp and run by the CUDA kernel (cuda/decode.cu) and by
// the host emulation (tests), so the tests of a machine without a GPU execute this very code.
//
// How the sequential format maps onto a warp (docs/format.md, "rANS lanes"):
//  * symbol i of a unit (i = t_local * C + c) is in lane i % 32, so step k holds symbols
//    32k .. 32k+31 and lane j decodes symbol 32k + j;
//  * the sequential decoder reads the next 16-bit word whenever a symbol's state drops below
//    2^16, in symbol order; within a step that is lane order, so lane j's word is at
//    `consumed + popc(need & lanes_below(j))` (one ballot per step). Words come from a 64-word
//    window held one word per lane in two registers and are fetched with shuffles;
//  * escapes are numbered in symbol order the same way (a second ballot);
//  * delta tokens (group_tokens > 1) add the q of their group's anchor: taken by a shuffle when
//    the anchor is in the same step, else from `refs`, the last anchor q per channel written at
//    the end of earlier steps.
// Corruption is detected as the CPU decoder detects it (sizes, word overrun, unread words,
// final states, escape counts) and returned as a UnitError; the destination may then hold
// partial output, but nothing is read or written out of bounds: paged block table entries are
// checked on use.
#pragma once

#include <cstdint>

#include "common/bytes.hpp"
#include "common/dtype.hpp"
#include "common/quant.hpp"
#include "common/rans.hpp"
#include "common/rans_step.hpp"
#include "common/stored_unit.hpp"
#include "common/unit.hpp"
#include "common/warp.hpp"
#include "decode/packed_model.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::detail {

// One lane stream being decoded by a warp: a state per lane and the word window.
template <typename W>
struct WarpStream {
  typename W::template Lanes<uint32_t> x, win, next;
  const uint8_t* words = nullptr;
  uint32_t count = 0;  // words in the stream
  uint32_t pos = 0;    // words consumed
  uint32_t base = 0;   // stream index of win's lane 0 (next holds base + 32 ..)

  KVCODEC_HD uint32_t word(uint32_t k) const { return k < count ? load_le16(words + 2 * uint64_t(k)) : 0u; }

  // Reads the stream header at p (validated by the caller to lie inside the unit).
  KVCODEC_HD uint32_t init(W& w, const uint8_t* p) {
    count = load_le32(p);
    words = p + kLaneHeaderBytes;
    typename W::template Lanes<bool> bad;
    for (uint32_t j : w.lanes()) {
      x[j] = load_le32(p + 4 + 4 * j);
      bad[j] = x[j] < kRansL;
      win[j] = word(j);
      next[j] = word(kWarpLanes + j);
    }
    return w.ballot(bad) ? kUnitBadInitialState : kUnitOk;
  }

  // Shifts a word into every lane with need[j] set, in lane order.
  KVCODEC_HD uint32_t refill(W& w, const typename W::template Lanes<bool>& need) {
    const uint32_t mask = w.ballot(need);
    const uint32_t k = popc32(mask);
    if (k > count - pos) return kUnitWordOverrun;
    typename W::template Lanes<uint32_t> rel;
    for (uint32_t j : w.lanes()) rel[j] = pos - base + popc32(mask & lanes_below(j));  // < 64
    const auto a = w.shfl(win, rel);
    const auto b = w.shfl(next, rel);
    for (uint32_t j : w.lanes())
      if (need[j]) rans_shift_in(x[j], rel[j] < kWarpLanes ? a[j] : b[j]);
    pos += k;
    if (pos - base >= kWarpLanes) {
      base += kWarpLanes;
      for (uint32_t j : w.lanes()) {
        win[j] = next[j];
        next[j] = word(base + kWarpLanes + j);
      }
    }
    return kUnitOk;
  }

  KVCODEC_HD uint32_t finish(W& w) const {
    if (pos != count) return kUnitUnreadWords;
    typename W::template Lanes<bool> bad;
    for (uint32_t j : w.lanes()) bad[j] = x[j] != kRansL;
    return w.ballot(bad) ? kUnitBadFinalState : kUnitOk;
  }
};

// Everything one warp needs to decode one unit.
struct UnitJob {
  const PackedLayout* layout;
  ModelView model;
  const DecTable* tables;  // the (layer, K/V)'s tables (may be a shared-memory copy)
  const uint8_t* body;     // chunk body
  uint32_t body_size;
  uint32_t layer, kv;
  uint32_t token_begin, tokens;
  UnitDst dst;
  int16_t* refs;  // channels entries, scratch for anchors (group_tokens > 1)
};

// A stored unit (docs/format.md 4.4): its raw elements, in stream order, copied to the destination.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W>
KVCODEC_HD uint32_t warp_copy_stored_unit(W& w, const UnitJob& job, const uint8_t* p, uint64_t size) {
  const uint32_t C = job.layout->channels, es = job.layout->elem_size;
  const uint64_t n = uint64_t(job.tokens) * C;
  if (size != stored_unit_bytes(n, es)) return kUnitSizeMismatch;
  typename W::template Lanes<uint64_t> bad;
  for (uint32_t j : w.lanes()) {
    bad[j] = 0;
    for (uint64_t i = j; i < n; i += kWarpLanes) {
      int64_t row;
      if (!job.dst.token_offset(job.token_begin + uint32_t(i / C), &row)) {
        bad[j] = 1;
        break;
      }
      char* e = job.dst.base + (row + job.dst.channel_offset(uint32_t(i % C))) * int64_t(es);
      for (uint32_t b = 0; b < es; ++b) e[b] = char(p[i * es + b]);
    }
  }
  return w.sum(bad) ? kUnitBadBlock : kUnitOk;
}

// P = lane streams per unit: 1 (lossy) or the element size (lossless byte planes). A template
// parameter so that the per-plane state stays in registers on the device.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W, uint32_t P>
KVCODEC_HD uint32_t warp_decode_unit_planes(W& w, const UnitJob& job) {
  const PackedLayout& pl = *job.layout;
  const uint32_t units = 2 * pl.layers, u = 2 * job.layer + job.kv;
  const uint32_t C = pl.channels, es = pl.elem_size;
  const bool lossless = pl.lossless != 0;

  // The unit's place in the chunk body and its streams (common/unit.hpp checks every size).
  uint64_t unit_off = 0, size = 0;
  bool stored = false;
  if (uint32_t e = locate_unit(w, job.body, job.body_size, units, u, &unit_off, &size, pl.stored_units != 0, &stored))
    return e;
  const uint8_t* p = job.body + unit_off;
  if (stored) return warp_copy_stored_unit(w, job, p, size);
  UnitLayout ul;
  // Raw byte planes (version 5, docs/format.md 4.5): their bytes in stream order, no lane stream.
  const uint32_t raw = lossless ? job.model.layers[u].raw_planes : 0u;
  if (uint32_t e = parse_unit(p, size, P, lossless, es, &ul, raw, uint64_t(job.tokens) * C)) return e;
  const uint8_t* stream_at[P];
  for (uint32_t q = 0; q < P; ++q) stream_at[q] = p + ul.stream[q];
  const uint8_t* esc = p + ul.escapes;
  const uint32_t n_esc = ul.n_esc;

  WarpStream<W> st[P];
  for (uint32_t q = 0; q < P; ++q)
    if (!(raw >> q & 1))
      if (uint32_t e = st[q].init(w, stream_at[q])) return e;

  const DecTable* tables = job.tables;
  const uint64_t chan0 = uint64_t(u) * C;
  const uint16_t* tbase = job.model.table_base + chan0;
  const float* step = lossless ? nullptr : job.model.step + chan0;
  const int32_t* center = lossless ? nullptr : job.model.center + chan0;
  const uint32_t GT = pl.group_tokens;
  const bool deltas = !lossless && GT > 1;
  const uint8_t dt = pl.dtype;  // DType code
  const uint64_t n = uint64_t(job.tokens) * C;
  // Lane j's symbol moves by 32 each step: advance (token, channel) without dividing.
  const uint32_t dt_step = kWarpLanes / C, dc_step = kWarpLanes % C;

  typename W::template Lanes<uint32_t> t, c, sym[P], src;
  typename W::template Lanes<int64_t> row;  // element offset of token t's row
  typename W::template Lanes<uint32_t> row_t;
  typename W::template Lanes<bool> active, need, is_esc, bad;
  typename W::template Lanes<int32_t> q;
  for (uint32_t j : w.lanes()) {
    t[j] = j / C;
    c[j] = j % C;
    row_t[j] = UINT32_MAX;
    row[j] = 0;
  }
  uint32_t esc_used = 0;

  for (uint64_t s0 = 0; s0 < n; s0 += kWarpLanes) {
    for (uint32_t pq = 0; pq < P; ++pq) {
      if (raw >> pq & 1) {
        for (uint32_t j : w.lanes()) {
          active[j] = s0 + j < n;
          sym[pq][j] = active[j] ? stream_at[pq][s0 + j] : 0u;
        }
        continue;
      }
      for (uint32_t j : w.lanes()) {
        active[j] = s0 + j < n;
        need[j] = false;
        if (!active[j]) continue;
        const uint32_t slot = lossless ? pq : (t[j] % GT == 0 ? 0u : 1u);
        const DecTable& tb = tables[tbase[c[j]] + slot];
        uint32_t& x = st[pq].x[j];
        uint32_t at, freq, bias;  // the step of common/rans_step.hpp, on the compact table
        rans_slot(x, at);
        sym[pq][j] = rans_compact_lookup(tb.slot_sym, tb.freq, tb.cum, at, freq, bias);
        rans_update(x, freq, bias);
        rans_needs_word(x, need[j]);
      }
      if (uint32_t e = st[pq].refill(w, need)) return e;
    }

    // Destination rows (a block table lookup for paged views, once per token change).
    for (uint32_t j : w.lanes()) {
      bad[j] = false;
      if (active[j] && row_t[j] != t[j]) {
        row_t[j] = t[j];
        bad[j] = !job.dst.token_offset(job.token_begin + t[j], &row[j]);
      }
    }
    if (w.ballot(bad)) return kUnitBadBlock;

    if (lossless) {
      for (uint32_t j : w.lanes()) {
        if (!active[j]) continue;
        uint32_t bits = 0;
        for (uint32_t pq = 0; pq < P; ++pq) bits |= sym[pq][j] << (8 * pq);
        store_raw(job.dst.base + (row[j] + job.dst.channel_offset(c[j])) * es, es, bits);
      }
    } else {
      // Escapes, numbered in symbol order.
      for (uint32_t j : w.lanes()) {
        is_esc[j] = false;
        q[j] = 0;
        if (!active[j]) continue;
        const uint32_t slot = t[j] % GT == 0 ? 0u : 1u;
        const DecTable& tb = tables[tbase[c[j]] + slot];
        is_esc[j] = sym[0][j] == tb.esc;
        q[j] = is_esc[j] ? 0 : tb.qmin + int32_t(sym[0][j]);  // an escaped anchor refers as 0
      }
      const uint32_t esc_mask = w.ballot(is_esc);
      if (popc32(esc_mask) > n_esc - esc_used) return kUnitEscapeOverrun;
      if (deltas) {
        // The anchor of (t, c) is symbol i - (t % GT) * C: in this step (shuffle) or earlier (refs).
        for (uint32_t j : w.lanes()) {
          const uint64_t ia = s0 + j - uint64_t(t[j] % GT) * C;
          src[j] = ia >= s0 ? uint32_t(ia - s0) : j;
        }
        const auto anchor_q = w.shfl(q, src);
        for (uint32_t j : w.lanes()) {
          if (!active[j] || t[j] % GT == 0 || is_esc[j]) continue;
          q[j] += src[j] != j ? anchor_q[j] : int32_t(job.refs[c[j]]);
        }
      }
      for (uint32_t j : w.lanes()) {
        if (!active[j]) continue;
        char* out = job.dst.base + (row[j] + job.dst.channel_offset(c[j])) * es;
        if (is_esc[j]) {
          const uint32_t k = esc_used + popc32(esc_mask & lanes_below(j));
          store_raw(out, es, load_raw(esc + uint64_t(k) * es, es));
        } else {
          store_from_f32(out, dt, dequantize(center[c[j]] + q[j], step[c[j]]));
        }
      }
      esc_used += popc32(esc_mask);
      if (deltas) {
        // Publish anchors for later steps, after every read of this step; an anchor whose
        // channel has a later anchor in this step leaves the write to that one.
        w.sync();
        for (uint32_t j : w.lanes()) {
          if (!active[j] || t[j] % GT != 0) continue;
          if (s0 + j + uint64_t(GT) * C >= s0 + kWarpLanes) job.refs[c[j]] = int16_t(q[j]);
        }
        w.sync();
      }
    }

    for (uint32_t j : w.lanes()) {
      t[j] += dt_step;
      c[j] += dc_step;
      if (c[j] >= C) {
        c[j] -= C;
        ++t[j];
      }
    }
  }
  for (uint32_t pq = 0; pq < P; ++pq)
    if (!(raw >> pq & 1))
      if (uint32_t e = st[pq].finish(w)) return e;
  if (esc_used != n_esc) return kUnitUnusedEscapes;
  return kUnitOk;
}

// Decodes one unit (see the top of this file); returns a UnitError.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename W>
KVCODEC_HD uint32_t warp_decode_unit(W& w, const UnitJob& job) {
  const uint32_t planes = job.layout->lossless ? job.layout->elem_size : 1u;
  switch (planes) {
    case 1: return warp_decode_unit_planes<W, 1>(w, job);
    case 2: return warp_decode_unit_planes<W, 2>(w, job);
    default: return warp_decode_unit_planes<W, 4>(w, job);
  }
}

// Job of unit (layer, kv) of chunk `chunk` whose body is at `body`.
KVCODEC_HD UnitJob make_unit_job(const PackedLayout& pl, const void* model_base, const DecTable* tables,
                                 uint32_t chunk, const uint8_t* body, uint32_t layer, uint32_t kv,
                                 const KVView& dst, int16_t* refs) {
  UnitJob job;
  job.layout = &pl;
  job.model = model_view(model_base, pl);
  job.tables = tables ? tables : job.model.tables + job.model.layers[2 * layer + kv].first_table;
  const ChunkDesc cd = job.model.chunks[chunk];
  job.body = body;
  job.body_size = cd.size;
  job.layer = layer;
  job.kv = kv;
  job.token_begin = cd.token_begin;
  job.tokens = cd.tokens;
  job.dst = UnitDst::make(dst, layer, kv);
  job.refs = refs;
  return job;
}

}  // namespace kvcodec::detail
