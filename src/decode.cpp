// Decoder: frame head -> decode tables -> per (chunk, layer) rANS lanes -> values -> layout view.
// Every read is bounds-checked; a corrupt frame yields a Status, never a crash or a silently
// wrong tensor (lanes must end in their initial state with every word and escape consumed).
#include <cstring>
#include <memory>
#include <string>

#include "detail/frame.hpp"
#include "detail/parallel.hpp"
#include "detail/rans_lanes.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/detail/quant.hpp"

namespace kvcodec {
namespace {

using detail::kRansM;

struct DecTable {
  uint8_t slot_sym[kRansM];
  uint16_t freq[256];
  uint16_t cum[256];
  int32_t qmin;
  uint32_t esc;  // escape symbol (lossy), or 256 (none)
};

struct DecLayer {
  uint32_t slots = 1;
  std::vector<DecTable> tables;
  std::vector<uint32_t> table_base;  // per channel: group * slots
  std::vector<float> step;
  std::vector<int32_t> center;
};

struct Decoder {
  FrameInfo info;
  size_t es = 0;
  std::vector<DecLayer> layers;  // [layer * 2 + kv]
};

StatusOr<std::unique_ptr<Decoder>> make_decoder(std::span<const uint8_t> head) {
  KVCODEC_ASSIGN_OR_RETURN(detail::FrameHead h, detail::parse_head(head));
  auto d = std::make_unique<Decoder>();
  d->info = std::move(h.info);
  d->es = dtype_size(d->info.dtype);
  const bool lossless = detail::is_lossless(d->info);
  d->layers.resize(h.layers.size());
  for (size_t i = 0; i < h.layers.size(); ++i) {
    const detail::LayerModel& m = h.layers[i];
    DecLayer& dl = d->layers[i];
    dl.slots = m.slots;
    dl.tables.resize(m.tables.size());
    for (size_t t = 0; t < m.tables.size(); ++t) {
      const FreqTable& ft = m.tables[t].table;
      DecTable& dt = dl.tables[t];
      for (size_t s = 0; s < ft.size(); ++s) {
        dt.freq[s] = ft.freq[s];
        dt.cum[s] = ft.cum[s];
        std::memset(dt.slot_sym + ft.cum[s], int(s), ft.freq[s]);
      }
      dt.qmin = m.tables[t].qmin;
      dt.esc = lossless ? 256u : uint32_t(ft.size() - 1);
    }
    dl.table_base.resize(m.channel_group.size());
    for (size_t c = 0; c < m.channel_group.size(); ++c) dl.table_base[c] = m.channel_group[c] * m.slots;
    if (!lossless) {
      dl.step.resize(m.step_code.size());
      for (size_t c = 0; c < m.step_code.size(); ++c) dl.step[c] = detail::step_from_code(m.step_code[c]);
      dl.center = m.center;
    }
  }
  return d;
}

// Scatters decoded rows [tokens][C] of (l, kv) into the view.
void scatter(const KVView& v, uint32_t l, uint32_t kv, uint32_t t0, uint32_t tokens, const uint8_t* rows) {
  const size_t es = dtype_size(v.dtype);
  const uint32_t H = v.shape.kv_heads, D = v.shape.head_dim;
  for (uint32_t t = 0; t < tokens; ++t)
    for (uint32_t h = 0; h < H; ++h) {
      const uint8_t* src = rows + (size_t(t) * H + h) * D * es;
      if (v.rows_contiguous()) {
        std::memcpy(v.element(l, kv, t0 + t, h, 0), src, D * es);
      } else {
        for (uint32_t d = 0; d < D; ++d) std::memcpy(v.element(l, kv, t0 + t, h, d), src + d * es, es);
      }
    }
}

// Decodes one lane stream of n symbols; sym(i, s) receives each symbol. table_of(i) gives the
// table of symbol i. Returns bytes consumed (padded to 4).
template <typename TableOf, typename Emit>
StatusOr<size_t> decode_lanes(const uint8_t* p, size_t avail, size_t n, TableOf&& table_of, Emit&& emit) {
  uint32_t x[kRansLanes];
  uint32_t words;
  KVCODEC_RETURN_IF_ERROR(detail::rans_read_header(p, avail, x, &words));
  const uint8_t* wp = p + detail::kLaneStreamHeader;
  const uint8_t* we = wp + 2 * size_t(words);
  for (size_t i = 0; i < n; ++i) {
    uint32_t& xs = x[i % kRansLanes];
    const DecTable& tb = table_of(i);
    const uint32_t s = tb.slot_sym[xs & (kRansM - 1)];
    if (detail::rans_dec_advance(xs, tb.freq[s], tb.cum[s])) {
      if (wp == we) return CorruptData("rANS stream ran out of words");
      uint16_t w;
      std::memcpy(&w, wp, 2);
      wp += 2;
      xs = (xs << 16) | w;
    }
    if (!emit(i, tb, s)) return CorruptData("escape stream exhausted");
  }
  if (wp != we) return CorruptData("rANS stream has unread words");
  for (uint32_t j = 0; j < kRansLanes; ++j)
    if (x[j] != detail::kRansL) return CorruptData("rANS lane did not end in its initial state");
  const size_t used = (detail::kLaneStreamHeader + 2 * size_t(words) + 3) & ~size_t(3);
  if (used > avail) return CorruptData("rANS stream padding truncated");
  return used;
}

// Decodes the unit of (layer l, K/V kv) of chunk k into rows [tokens][C] (raw elements).
Status decode_unit(const Decoder& d, uint32_t l, uint32_t kv, uint32_t tokens, const uint8_t* p, size_t size,
                   uint8_t* rows) {
  const DecLayer& dl = d.layers[size_t(l) * 2 + kv];
  const uint32_t C = uint32_t(d.info.shape.channels());
  const size_t n = size_t(tokens) * C;
  const size_t es = d.es;
  if (detail::is_lossless(d.info)) {
    size_t off = 0;
    for (uint32_t plane = 0; plane < es; ++plane) {
      KVCODEC_ASSIGN_OR_RETURN(
          size_t used,
          decode_lanes(
              p + off, size - off, n,
              [&](size_t i) -> const DecTable& { return dl.tables[dl.table_base[i % C] + plane]; },
              [&](size_t i, const DecTable&, uint32_t s) {
                rows[i * es + plane] = uint8_t(s);
                return true;
              }));
      off += used;
    }
    if (off != size) return CorruptData("unit has trailing bytes");
    return Status::Ok();
  }
  // Lossy: the lane stream, then u32 escape count and the escaped raw elements.
  const uint32_t GT = d.info.group_tokens;
  const uint8_t dt = uint8_t(d.info.dtype);
  std::vector<int32_t> ref(C, 0);
  // Escape block position is known only after the lane stream: read its header first.
  if (size < detail::kLaneStreamHeader) return CorruptData("unit shorter than a lane header");
  const size_t lane_bytes = (detail::kLaneStreamHeader + 2 * size_t(detail::get_u32(p)) + 3) & ~size_t(3);
  if (lane_bytes + 4 > size) return CorruptData("unit truncated before its escapes");
  const uint32_t n_esc = detail::get_u32(p + lane_bytes);
  const uint8_t* esc = p + lane_bytes + 4;
  if ((size - lane_bytes - 4) / es < n_esc) return CorruptData("escape block truncated");
  if (((lane_bytes + 4 + size_t(n_esc) * es + 3) & ~size_t(3)) != size) return CorruptData("unit size mismatch");
  uint32_t esc_used = 0;
  KVCODEC_ASSIGN_OR_RETURN(
      size_t used,
      decode_lanes(
          p, lane_bytes, n,
          [&](size_t i) -> const DecTable& {
            const uint32_t t = uint32_t(i / C);
            return dl.tables[dl.table_base[i % C] + (t % GT == 0 ? 0 : 1)];
          },
          [&](size_t i, const DecTable& tb, uint32_t s) {
            const uint32_t c = uint32_t(i % C);
            const bool anchor = (i / C) % GT == 0;
            uint8_t* out = rows + i * es;
            if (s == tb.esc) {
              if (esc_used == n_esc) return false;
              std::memcpy(out, esc + size_t(esc_used++) * es, es);
              if (anchor) ref[c] = 0;
              return true;
            }
            int32_t q = tb.qmin + int32_t(s);
            if (!anchor) q += ref[c];
            else ref[c] = q;
            detail::store_from_f32(out, dt, detail::dequantize(dl.center[c] + q, dl.step[c]));
            return true;
          }));
  (void)used;
  if (esc_used != n_esc) return CorruptData("unused escaped values");
  return Status::Ok();
}

// Decodes the layers [lb, le) of chunk k from its body.
Status decode_chunk(const Decoder& d, uint32_t k, std::span<const uint8_t> body, const KVView& dst, uint32_t lb,
                    uint32_t le, bool verify, int threads) {
  const ChunkInfo& ci = d.info.chunks[k];
  if (body.size() != ci.size) return CorruptData("chunk " + std::to_string(k) + " has the wrong size");
  if (verify && detail::xxh64(body.data(), body.size()) != ci.checksum)
    return ChecksumMismatch("chunk " + std::to_string(k) + " checksum mismatch");
  const uint32_t L = d.info.shape.layers;
  const size_t dir = size_t(L) * 2 * 4;
  if (body.size() < dir) return CorruptData("chunk shorter than its unit directory");
  std::vector<uint64_t> off(size_t(L) * 2 + 1, dir);
  for (size_t i = 0; i < size_t(L) * 2; ++i) off[i + 1] = off[i] + detail::get_u32(body.data() + 4 * i);
  if (off.back() != body.size()) return CorruptData("chunk " + std::to_string(k) + " unit sizes do not add up");
  const size_t row_bytes = size_t(ci.tokens) * d.info.shape.channels() * d.es;
  std::vector<Status> st(size_t(le - lb) * 2);
  detail::parallel_for(st.size(), threads, [&](size_t task) {
    const uint32_t l = lb + uint32_t(task / 2), kv = uint32_t(task % 2);
    const size_t u = size_t(l) * 2 + kv;
    std::vector<uint8_t> rows(row_bytes);
    st[task] = decode_unit(d, l, kv, ci.tokens, body.data() + off[u], off[u + 1] - off[u], rows.data());
    if (st[task].ok()) scatter(dst, l, kv, ci.token_begin, ci.tokens, rows.data());
  });
  for (size_t i = 0; i < st.size(); ++i)
    if (!st[i].ok())
      return st[i].with_context("chunk " + std::to_string(k) + " layer " + std::to_string(lb + i / 2));
  return Status::Ok();
}

Status check_destination(const FrameInfo& f, const KVView& dst) {
  if (dst.dtype != f.dtype)
    return InvalidArgument(std::string("destination dtype ") + dtype_name(dst.dtype) + " differs from the frame's " +
                           dtype_name(f.dtype));
  if (!(dst.shape == f.shape)) return InvalidArgument("destination shape differs from the frame's");
  return validate_view(dst);
}

}  // namespace

Status decode_into(std::span<const uint8_t> frame, const KVView& dst, const DecodeOptions& o) {
  KVCODEC_ASSIGN_OR_RETURN(auto d, make_decoder(frame));
  KVCODEC_RETURN_IF_ERROR(check_destination(d->info, dst));
  if (frame.size() < d->info.frame_bytes)
    return BufferTooSmall("frame truncated: " + std::to_string(frame.size()) + " of " +
                          std::to_string(d->info.frame_bytes) + " bytes");
  const uint32_t n = uint32_t(d->info.chunks.size()), L = d->info.shape.layers;
  const uint32_t ce = std::min(o.chunk_end, n), le = std::min(o.layer_end, L);
  if (o.chunk_begin >= ce || o.layer_begin >= le) return OutOfRange("empty chunk or layer range");
  // Parallelise across chunks; each chunk runs its layers serially then.
  std::vector<Status> st(ce - o.chunk_begin);
  const bool across_chunks = st.size() > 1;
  detail::parallel_for(st.size(), across_chunks ? o.threads : 1, [&](size_t i) {
    const uint32_t k = o.chunk_begin + uint32_t(i);
    const ChunkInfo& ci = d->info.chunks[k];
    st[i] = decode_chunk(*d, k, frame.subspan(ci.offset, ci.size), dst, o.layer_begin, le, o.verify_checksums,
                         across_chunks ? 1 : o.threads);
  });
  for (const Status& s : st) KVCODEC_RETURN_IF_ERROR(s);
  return Status::Ok();
}

Status decode_chunk_into(std::span<const uint8_t> head, uint32_t chunk, std::span<const uint8_t> body,
                         const KVView& dst, const DecodeOptions& o) {
  KVCODEC_ASSIGN_OR_RETURN(auto d, make_decoder(head));
  KVCODEC_RETURN_IF_ERROR(check_destination(d->info, dst));
  if (chunk >= d->info.chunks.size())
    return OutOfRange("chunk " + std::to_string(chunk) + " of a frame with " + std::to_string(d->info.chunks.size()));
  const uint32_t L = d->info.shape.layers, le = std::min(o.layer_end, L);
  if (o.layer_begin >= le) return OutOfRange("empty layer range");
  return decode_chunk(*d, chunk, body, dst, o.layer_begin, le, o.verify_checksums, o.threads);
}

}  // namespace kvcodec
