// The unit: the coded (chunk, layer, K/V) -- the format's unit of parallel decoding -- as both
// directions and both backends see it: its error codes, its lane-stream header, and where the
// elements of one (layer, K/V) live in a KVView. docs/format.md, "Chunk bodies", is the spec.
#pragma once

#include <cstdint>

#include "common/bytes.hpp"
#include "common/host_device.hpp"
#include "common/warp.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::detail {

enum UnitError : uint32_t {
  kUnitOk = 0,
  kUnitBadDirectory = 1,
  kUnitTruncated = 2,
  kUnitSizeMismatch = 3,
  kUnitBadInitialState = 4,
  kUnitWordOverrun = 5,
  kUnitUnreadWords = 6,
  kUnitBadFinalState = 7,
  kUnitEscapeOverrun = 8,
  kUnitUnusedEscapes = 9,
  kUnitBadBlock = 10,
};

inline const char* unit_error_message(uint32_t e) {
  switch (e) {
    case kUnitOk: return "ok";
    case kUnitBadDirectory: return "unit sizes do not add up to the chunk size";
    case kUnitTruncated: return "rANS stream or escape block truncated";
    case kUnitSizeMismatch: return "unit size mismatch";
    case kUnitBadInitialState: return "rANS lane state below the renormalisation bound";
    case kUnitWordOverrun: return "rANS stream ran out of words";
    case kUnitUnreadWords: return "rANS stream has unread words";
    case kUnitBadFinalState: return "rANS lane did not end in its initial state";
    case kUnitEscapeOverrun: return "escape stream exhausted";
    case kUnitUnusedEscapes: return "unused escaped values";
    case kUnitBadBlock: return "paged destination: block table or slot mapping entry out of range";
  }
  return "unknown unit error";
}

KVCODEC_HD uint64_t pad4(uint64_t n) { return (n + 3) & ~uint64_t(3); }

inline constexpr uint32_t kLaneHeaderBytes = 4 + 4 * kWarpLanes;  // word count + states

// Where the elements of one (layer, K/V) of a KVView live: base pointer + per-token and
// per-channel element offsets. Mirrors KVView::element for views whose pointers (data,
// layer arrays, block table) are valid where this runs.
struct UnitDst {
  char* base;
  KVView::Kind kind;
  uint32_t es;
  int64_t s_tok, s_head, s_dim, slot_stride;
  uint32_t head_dim, block_size, num_blocks;
  bool flat_channels;  // channel c is at c * s_dim (heads packed: s_head == head_dim * s_dim)
  const int32_t* block_table;
  const int64_t* slot_mapping;  // paged: token -> slot instead of the block table, or null

  KVCODEC_HD static UnitDst make(const KVView& v, uint32_t l, uint32_t kv) {
    UnitDst u;
    u.kind = v.kind;
    u.es = v.dtype == DType::kF32 ? 4u : v.dtype == DType::kF8E4M3 ? 1u : 2u;
    int64_t off = 0;
    switch (v.kind) {
      case KVView::Kind::kStrided:
        u.base = static_cast<char*>(v.data);
        off = int64_t(l) * v.stride[0] + int64_t(kv) * v.stride[1];
        break;
      case KVView::Kind::kPerLayer: u.base = static_cast<char*>(kv ? v.layer_v[l] : v.layer_k[l]); break;
      default:  // paged; separate K and V pools when layer_v is set
        u.base = static_cast<char*>(v.layer_v && kv ? v.layer_v[l] : v.layer_k[l]);
        off = v.layer_v ? 0 : int64_t(kv) * v.stride[1];
        break;
    }
    u.base += off * int64_t(u.es);
    u.s_tok = v.stride[2];
    u.s_head = v.stride[3];
    u.s_dim = v.stride[4];
    u.slot_stride = v.slot_stride;
    u.head_dim = v.shape.head_dim;
    u.block_size = v.block_size;
    u.num_blocks = v.num_blocks;
    u.block_table = v.block_table;
    u.slot_mapping = v.slot_mapping;
    u.flat_channels = v.stride[3] == int64_t(v.shape.head_dim) * v.stride[4];
    return u;
  }
  // Element offset of token t of the context; false when a paged block (or slot) entry is out of range.
  KVCODEC_HD bool token_offset(uint32_t t, int64_t* off) const {
    if (kind != KVView::Kind::kPaged) {
      *off = int64_t(t) * s_tok;
      return true;
    }
    if (slot_mapping) {
      const int64_t slot = slot_mapping[t];
      if (slot < 0 || slot >= int64_t(num_blocks) * block_size) return false;
      *off = (slot / block_size) * s_tok + (slot % block_size) * slot_stride;
      return true;
    }
    const int32_t b = block_table[t / block_size];
    if (b < 0 || uint32_t(b) >= num_blocks) return false;
    *off = int64_t(b) * s_tok + int64_t(t % block_size) * slot_stride;
    return true;
  }
  KVCODEC_HD int64_t channel_offset(uint32_t c) const {
    if (flat_channels) return int64_t(c) * s_dim;
    return int64_t(c / head_dim) * s_head + int64_t(c % head_dim) * s_dim;
  }
};

// Stores the low es bytes of `bits` (an element's raw encoding) at p.
KVCODEC_HD void store_raw(void* p, uint32_t es, uint32_t bits) {
  if (es == 4) *static_cast<uint32_t*>(p) = bits;
  else if (es == 2) *static_cast<uint16_t*>(p) = uint16_t(bits);
  else *static_cast<uint8_t*>(p) = uint8_t(bits);
}
KVCODEC_HD uint32_t load_raw(const uint8_t* p, uint32_t es) {
  return es == 4 ? load_le32(p) : es == 2 ? load_le16(p) : uint32_t(p[0]);
}

// ---- Parsing a chunk body into units, and a unit into its streams ----------------------------
// The one parser of the chunk and unit layouts (docs/format.md, "Chunk bodies"), used by the CPU
// decoder, analyze_frame and the GPU decoder: every size is checked against the bytes that hold
// it before anything is read through it.

// The unit directory: a chunk body starts with the u32 size of each of its `units` units
// (2 * layers: layer-major, K then V), followed by the units in that order; the sizes add up to
// the body exactly. Finds the offset (from the body's start) and size of unit u, or returns
// kUnitBadDirectory. Written for a warp (each lane sums every 32nd entry); the CPU runs it with
// HostWarp. In frames of version 3 (stored_units) bit 31 of an entry marks a stored unit
// (docs/format.md 4.4): it is not part of the size, and *stored says whether unit u is one.
template <typename W>
KVCODEC_HD uint32_t locate_unit(W& w, const uint8_t* body, uint64_t body_size, uint32_t units, uint32_t u,
                                uint64_t* offset, uint64_t* size, bool stored_units = false,
                                bool* stored = nullptr) {
  const uint64_t dir = 4ull * units;
  if (body_size < dir) return kUnitBadDirectory;
  const uint32_t size_mask = stored_units ? ~kStoredUnitFlag : 0xffffffffu;
  typename W::template Lanes<uint64_t> before, total;
  for (uint32_t j : w.lanes()) {
    before[j] = total[j] = 0;
    for (uint32_t k = j; k < units; k += kWarpLanes) {
      const uint32_t s = load_le32(body + 4ull * k) & size_mask;
      total[j] += s;
      if (k < u) before[j] += s;
    }
  }
  if (dir + w.sum(total) != body_size) return kUnitBadDirectory;
  *offset = dir + w.sum(before);
  const uint32_t entry = load_le32(body + 4ull * u);
  *size = entry & size_mask;
  if (stored) *stored = (entry & ~size_mask) != 0;
  return kUnitOk;
}

// Most lane streams in one unit: one per byte plane of a lossless f32 unit.
inline constexpr uint32_t kMaxUnitStreams = 4;

// Where the parts of one unit are, as offsets from the unit's start.
struct UnitLayout {
  uint64_t stream[kMaxUnitStreams];  // lane streams: u32 word count, u32 states[32], u16 words
  uint32_t words[kMaxUnitStreams];   // their word counts
  uint64_t streams_end = 0;          // the end of the last stream (lossy: where the count is)
  uint64_t escapes = 0;              // lossy: the escaped raw elements (after their u32 count)
  uint32_t n_esc = 0;                // lossy: how many
  uint64_t size = 0;                 // the whole unit
};

// The layout of a unit of `size` bytes at p: `streams` lane streams (the element size for
// lossless units, 1 for lossy ones), each padded to 4 bytes, then for lossy units a u32 escape
// count and that many raw elements of es bytes, padded to 4. The parts must fill the unit
// exactly: kUnitTruncated when they do not fit, kUnitSizeMismatch when bytes are left over.
// raw_planes (lossless, version 5: docs/format.md 4.5): bit q = stream q is a raw plane, its n
// bytes padded to 4 (stream[q] is where they start, words[q] = 0).
KVCODEC_HD uint32_t parse_unit(const uint8_t* p, uint64_t size, uint32_t streams, bool lossless, uint32_t es,
                               UnitLayout* out, uint32_t raw_planes = 0, uint64_t n = 0) {
  uint64_t used = 0;
  for (uint32_t q = 0; q < streams; ++q) {
    if (raw_planes >> q & 1) {
      if (size - used < pad4(n)) return kUnitTruncated;
      out->stream[q] = used;
      out->words[q] = 0;
      used += pad4(n);
      continue;
    }
    if (size - used < kLaneHeaderBytes) return kUnitTruncated;
    const uint32_t n_words = load_le32(p + used);
    if ((size - used - kLaneHeaderBytes) / 2 < n_words) return kUnitTruncated;
    out->stream[q] = used;
    out->words[q] = n_words;
    used += pad4(kLaneHeaderBytes + 2ull * n_words);
    if (used > size) return kUnitTruncated;
  }
  out->streams_end = used;
  out->size = size;
  if (lossless) {
    out->escapes = used;
    out->n_esc = 0;
    return used == size ? kUnitOk : kUnitSizeMismatch;
  }
  if (used + 4 > size) return kUnitTruncated;
  out->n_esc = load_le32(p + used);
  out->escapes = used + 4;
  if ((size - used - 4) / es < out->n_esc) return kUnitTruncated;
  return pad4(used + 4 + uint64_t(out->n_esc) * es) == size ? kUnitOk : kUnitSizeMismatch;
}

}  // namespace kvcodec::detail
