// Encoder: layout view -> per-(layer, K/V) grids -> symbols -> channel groups and tables ->
// rANS lanes per chunk -> frame. Each (layer, K/V) is one task; tasks run in parallel and are
// assembled in a fixed order, so the bytes never depend on the thread count.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "encode/encode_model.hpp"
#include "common/frame.hpp"
#include "common/metrics.hpp"
#include "common/stored_unit.hpp"
#include "common/parallel.hpp"
#include "encode/quantize_row.hpp"
#include "common/rans_lanes.hpp"
#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "encode/encode_values.hpp"
#include "common/quant.hpp"
#include "encode/quantize.hpp"

namespace kvcodec {
namespace {

using detail::Histograms;
using detail::kEscFlag;
using detail::LayerModel;

size_t pad4(size_t n) { return (n + 3) & ~size_t(3); }

// Copies the raw elements of (layer l, K/V kv) into out[t][h][d].
void gather(const KVView& v, uint32_t l, uint32_t kv, uint8_t* out) {
  const size_t es = dtype_size(v.dtype);
  const uint32_t H = v.shape.kv_heads, D = v.shape.head_dim;
  for (uint32_t t = 0; t < v.shape.tokens; ++t)
    for (uint32_t h = 0; h < H; ++h) {
      uint8_t* dst = out + (size_t(t) * H + h) * D * es;
      if (v.rows_contiguous()) {
        std::memcpy(dst, v.element(l, kv, t, h, 0), D * es);
      } else {
        for (uint32_t d = 0; d < D; ++d) std::memcpy(dst + d * es, v.element(l, kv, t, h, d), es);
      }
    }
}

// rANS-codes symbols given as freq << 16 | cum (in stream order) and pads the unit to 4 bytes.
void encode_symbols(const std::vector<uint32_t>& fc, std::vector<uint16_t>& scratch, std::vector<uint8_t>& unit) {
  detail::rans_encode_codes(fc.data(), fc.size(), scratch, unit);
  unit.resize(pad4(unit.size()), 0);
}

// Everything one (layer, K/V) task produces.
struct LayerOutput {
  LayerModel model;
  std::vector<std::vector<uint8_t>> units;  // per chunk
  std::vector<uint8_t> stored;              // per chunk: 1 if the unit is stored raw
  Status status;
};

struct Context {
  const KVView& src;
  const EncodeOptions& opt;
  uint32_t chunks;
  size_t es;
};

// Lossless: each byte plane of the elements is coded with per-(group, plane) tables.
void encode_lossless(const Context& cx, const uint8_t* raw, LayerOutput& out) {
  const KVShape& sh = cx.src.shape;
  const uint32_t T = sh.tokens, C = uint32_t(sh.channels());
  const uint32_t P = uint32_t(cx.es);
  std::vector<uint32_t> counts(size_t(P) * detail::kLosslessBins * C, 0);
  const Histograms hs{C, P, detail::kLosslessBins, counts.data()};
  std::vector<uint64_t> feature(C, 0);
  for (uint32_t t = 0; t < T; ++t)
    for (uint32_t c = 0; c < C; ++c) {
      const uint8_t* e = raw + (size_t(t) * C + c) * P;
      for (uint32_t p = 0; p < P; ++p) ++hs.row(p, e[p])[c];
      feature[c] += e[P - 1] & 0x7f;  // magnitude bits of the top byte
    }
  LayerModel& m = out.model;
  std::vector<uint32_t> codes;  // [group * P + plane][byte]: lane code
  out.status = detail::build_layer_model(hs, feature.data(), true, cx.opt.table_groups, m, codes);
  if (!out.status.ok()) return;
  std::vector<uint16_t> scratch;
  std::vector<uint32_t> fc;
  out.units.resize(cx.chunks);
  for (uint32_t k = 0; k < cx.chunks; ++k) {
    const uint32_t t0 = k * cx.opt.chunk_tokens, t1 = std::min(T, t0 + cx.opt.chunk_tokens);
    fc.resize(size_t(t1 - t0) * C);
    for (uint32_t p = 0; p < P; ++p) {
      const uint8_t* e = raw + size_t(t0) * C * P + p;
      uint32_t* f = fc.data();
      for (uint32_t t = t0; t < t1; ++t)
        for (uint32_t c = 0; c < C; ++c, e += P) {
          *f++ = codes[(size_t(m.channel_group[c]) * P + p) * detail::kLosslessBins + *e];
        }
      encode_symbols(fc, scratch, out.units[k]);
    }
  }
}

// Counts the lossy symbol values val[t][c] of slots [slot0, slot1) into hs and (slot 0) the
// clustering feature. Counted in blocks of 64 channels over all tokens: the counters one block
// touches stay in L1 (a token-major pass hits a different cache line of the 2 x 512 x C table per
// channel).
void count_lossy(const int16_t* val, uint32_t T, uint32_t C, uint32_t CT, uint32_t GT, uint32_t slot0, uint32_t slot1,
                 const Histograms& hs, uint64_t* feature) {
  for (uint32_t c0 = 0; c0 < C; c0 += 64) {
    const uint32_t c1 = std::min(C, c0 + 64);
    for (uint32_t t = 0; t < T; ++t) {
      const uint32_t slot = (t % CT) % GT == 0 ? 0 : 1;
      if (slot < slot0 || slot >= slot1) continue;
      const int16_t* vr = &val[size_t(t) * C];
      for (uint32_t c = c0; c < c1; ++c) {
        const int16_t v = vr[c];
        ++hs.row(slot, detail::lossy_bin(v))[c];
        if (slot == 0 && v != detail::kEscapeQ) feature[c] += uint64_t(v < 0 ? -v : v);
      }
    }
  }
}

// Escapes the deltas of every anchor that its table codes as the escape symbol although it has a
// grid value (outside the table's window): the decoder then resets the channel's reference to 0
// (docs/format.md 4.3), and the deltas were taken against the anchor's grid value. True if any
// delta changed (its histograms must then be counted again).
bool escape_orphaned_deltas(int16_t* val, uint32_t T, uint32_t C, uint32_t CT, uint32_t GT, const LayerModel& m,
                            const std::vector<uint32_t>& fc_lut) {
  bool changed = false;
  for (uint32_t t = 0; t < T; ++t) {
    const uint32_t local = t % CT;
    if (local % GT) continue;
    const uint32_t end = std::min({T, t - local + CT, t + GT});  // the group ends with its chunk
    const int16_t* ar = &val[size_t(t) * C];
    for (uint32_t c = 0; c < C; ++c) {
      const uint32_t code = fc_lut[size_t(m.channel_group[c]) * 2 * detail::kLossyBins + detail::lossy_bin(ar[c])];
      if (!detail::orphans_deltas(ar[c], code)) continue;
      for (uint32_t d = t + 1; d < end; ++d) {
        int16_t& v = val[size_t(d) * C + c];
        changed |= v != detail::kEscapeQ;
        v = detail::kEscapeQ;
      }
    }
  }
  return changed;
}

// Lossy: grids, symbols (anchors and deltas), windows, tables, lanes + escapes per chunk.
void encode_lossy(const Context& cx, uint32_t layer, const uint8_t* raw, LayerOutput& out) {
  const KVShape& sh = cx.src.shape;
  const DType dt = cx.src.dtype;
  const uint32_t T = sh.tokens, C = uint32_t(sh.channels());
  const uint32_t GT = cx.opt.group_tokens, CT = cx.opt.chunk_tokens;
  const uint32_t slots = GT > 1 ? 2 : 1;

  // Scratch arrays are fully written before being read: no zero-initialisation (it showed up as
  // ~8% of encode time in profiles).
  const std::unique_ptr<float[]> x(new float[size_t(T) * C]);
  detail::widen_to_f32(raw, uint8_t(dt), size_t(T) * C, x.get());

  std::vector<ChannelGrid> grids(C);
  const double rel = double(kLevelStep[cx.opt.level]) * layer_factor(layer, sh.layers);
  compute_grids(x.get(), T, C, rel, cx.opt.step_mode, grids.data());
  std::vector<float> step(C);
  std::vector<double> inv_step(C), center(C);
  std::vector<int32_t> center_i(C);
  for (uint32_t c = 0; c < C; ++c) {
    step[c] = step_from_code(grids[c].step_code);
    inv_step[c] = 1.0 / double(step[c]);
    center[c] = grids[c].center;
    center_i[c] = grids[c].center;
  }
  const detail::RowGrid rg{step.data(), inv_step.data(), center.data(), center_i.data()};

  // Symbol values: q = n - center for anchors, q - q_anchor for deltas; kEscape when escaped.
  const std::unique_ptr<int16_t[]> val(new int16_t[size_t(T) * C]);
  for (uint32_t t = 0; t < T; ++t) {
    const uint32_t local = t % CT;
    const bool anchor = local % GT == 0;
    const int16_t* aval = anchor ? nullptr : &val[size_t(t - local % GT) * C];
    const float* xr = &x[size_t(t) * C];
    int16_t* vr = &val[size_t(t) * C];
    detail::quantize_row(xr, rg, C, uint8_t(dt), vr);
    if (anchor) continue;
    for (uint32_t c = 0; c < C; ++c) vr[c] = int16_t(detail::delta_value(vr[c], aval[c]));  // deltas to the anchor
  }

  std::vector<uint32_t> counts(size_t(slots) * detail::kLossyBins * C, 0);
  const Histograms hs{C, slots, detail::kLossyBins, counts.data()};
  std::vector<uint64_t> feature(C, 0);
  count_lossy(val.get(), T, C, CT, GT, 0, slots, hs, feature.data());
  LayerModel& m = out.model;
  std::vector<uint32_t> fc_lut;  // [group * slots + role][value bin]: lane code
  out.status = detail::build_layer_model(hs, feature.data(), false, cx.opt.table_groups, m, fc_lut);
  if (!out.status.ok()) return;
  if (GT > 1 && escape_orphaned_deltas(val.get(), T, C, CT, GT, m, fc_lut)) {
    // Second pass: the delta histograms again, the tables rebuilt on the same channel groups (so
    // the anchor tables, and which anchors escape, stay as they are).
    std::fill(counts.begin() + size_t(detail::kLossyBins) * C, counts.end(), 0u);
    count_lossy(val.get(), T, C, CT, GT, 1, 2, hs, nullptr);
    out.status = detail::build_layer_tables(hs, false, m, fc_lut);
    if (!out.status.ok()) return;
  }
  m.step_code.resize(C);
  m.center.resize(C);
  for (uint32_t c = 0; c < C; ++c) {
    m.step_code[c] = grids[c].step_code;
    m.center[c] = grids[c].center;
  }

  // Per channel and role, its table's bin -> code map.
  std::vector<const uint32_t*> chan_lut(size_t(slots) * C);
  for (uint32_t r = 0; r < slots; ++r)
    for (uint32_t c = 0; c < C; ++c)
      chan_lut[size_t(r) * C + c] = &fc_lut[(size_t(m.channel_group[c]) * slots + r) * detail::kLossyBins];
  std::vector<uint16_t> scratch;
  std::vector<uint32_t> fc;  // per symbol of the chunk: freq << 16 | cum
  std::vector<uint32_t> esc_at;  // symbol indices (in the chunk) of escaped values
  out.units.resize(cx.chunks);
  for (uint32_t k = 0; k < cx.chunks; ++k) {
    const uint32_t t0 = k * CT, t1 = std::min(T, t0 + CT);
    fc.resize(size_t(t1 - t0) * C);
    esc_at.clear();
    uint32_t* const f = fc.data();
    size_t i = 0;
    for (uint32_t t = t0; t < t1; ++t) {
      const uint32_t* const* row_lut = &chan_lut[(t - t0) % GT == 0 ? 0 : C];
      const int16_t* vr = &val[size_t(t) * C];
      for (uint32_t c = 0; c < C; ++c, ++i) {
        const uint32_t code = row_lut[c][detail::lossy_bin(vr[c])];
        f[i] = code & ~kEscFlag;
        if (code & kEscFlag) [[unlikely]] esc_at.push_back(uint32_t(i));
      }
    }
    auto& unit = out.units[k];
    encode_symbols(fc, scratch, unit);
    // The escaped values' raw elements, in symbol order, after their count.
    const size_t base = unit.size();
    unit.resize(pad4(base + 4 + esc_at.size() * cx.es), 0);
    detail::store_le32(unit.data() + base, uint32_t(esc_at.size()));
    uint8_t* e = unit.data() + base + 4;
    for (uint32_t j : esc_at) {
      std::memcpy(e, raw + (size_t(t0) * C + j) * cx.es, cx.es);
      e += cx.es;
    }
  }
}

// Replaces every unit whose coded form is larger than the raw elements plus its fixed headers by
// the raw elements (a stored unit, docs/format.md 4.4). raw: the (layer, K/V)'s [tokens][C].
void store_large_units(const Context& cx, const uint8_t* raw, LayerOutput& out) {
  const uint64_t C = cx.src.shape.channels();
  const bool lossless = cx.opt.level == 0;
  const uint32_t planes = lossless ? uint32_t(cx.es) : 1;
  out.stored.assign(cx.chunks, 0);
  for (uint32_t k = 0; k < cx.chunks; ++k) {
    const uint32_t t0 = k * cx.opt.chunk_tokens, t1 = std::min(cx.src.shape.tokens, t0 + cx.opt.chunk_tokens);
    const uint64_t n = uint64_t(t1 - t0) * C;
    if (!detail::store_unit(out.units[k].size(), n, uint32_t(cx.es), planes, lossless)) continue;
    const uint8_t* first = raw + size_t(t0) * C * cx.es;
    out.units[k].assign(first, first + n * cx.es);
    out.units[k].resize(detail::stored_unit_bytes(n, uint32_t(cx.es)), 0);
    out.stored[k] = 1;
  }
}

}  // namespace

size_t max_encoded_size(const KVShape& shape, DType dtype, const EncodeOptions& o) noexcept {
  if (!validate_shape(shape).ok() || !validate_options(o).ok() || !is_valid_dtype(uint8_t(dtype))) return 0;
  const bool lossless = o.level == 0;
  const uint64_t es = dtype_size(dtype), C = shape.channels(), L = shape.layers;
  const uint32_t slots = lossless ? uint32_t(es) : (o.group_tokens > 1 ? 2 : 1);
  const uint64_t chunks = detail::num_chunks_for(shape.tokens, o.chunk_tokens);
  uint64_t total = kHeaderBytes + chunks * kIndexEntryBytes;
  total += 2 * L * detail::max_layer_model_bytes(C, o.table_groups, slots, lossless);
  // Per chunk: unit directory; per unit at most its raw elements (padded) plus the fixed headers
  // of a coded unit -- larger coded units are stored raw (store_large_units).
  const uint32_t planes = lossless ? uint32_t(es) : 1;
  const uint64_t headers = detail::coded_unit_headers(planes, lossless);
  const uint64_t full = shape.tokens / o.chunk_tokens, rest = shape.tokens % o.chunk_tokens;
  total += chunks * 2 * L * (4 + headers);
  total += 2 * L * full * detail::stored_unit_bytes(uint64_t(o.chunk_tokens) * C, uint32_t(es));
  if (rest) total += 2 * L * detail::stored_unit_bytes(rest * C, uint32_t(es));
  if (total > uint64_t(SIZE_MAX)) return 0;
  return size_t(total);
}

// encode_into without the metrics.
static StatusOr<size_t> encode_frame(const KVView& src, const EncodeOptions& o, std::span<uint8_t> dst) {
  KVCODEC_RETURN_IF_ERROR(validate_options(o));
  KVCODEC_RETURN_IF_ERROR(validate_view(src));
  const KVShape& sh = src.shape;
  const uint32_t L = sh.layers;
  const uint32_t chunks = detail::num_chunks_for(sh.tokens, o.chunk_tokens);
  const Context cx{src, o, chunks, dtype_size(src.dtype)};

  std::vector<LayerOutput> outs(size_t(L) * 2);
  KVCODEC_RETURN_IF_ERROR(detail::parallel_for(outs.size(), o.threads, [&](size_t task) {
    const uint32_t l = uint32_t(task / 2), kv = uint32_t(task % 2);
    const std::unique_ptr<uint8_t[]> raw(new uint8_t[size_t(sh.tokens) * sh.channels() * cx.es]);  // gathered next
    gather(src, l, kv, raw.get());
    if (o.level == 0) encode_lossless(cx, raw.get(), outs[task]);
    else encode_lossy(cx, l, raw.get(), outs[task]);
    if (outs[task].status.ok()) store_large_units(cx, raw.get(), outs[task]);
  }));
  for (size_t i = 0; i < outs.size(); ++i)
    if (!outs[i].status.ok())
      return outs[i].status.with_context("layer " + std::to_string(i / 2) + (i % 2 ? " V" : " K"));

  FrameInfo f = detail::frame_info_for(sh, src.dtype, o);
  for (const auto& lo : outs)
    if (std::find(lo.stored.begin(), lo.stored.end(), 1) != lo.stored.end()) f.format_version = kStoredUnitsFormatVersion;
  std::vector<uint8_t> model;
  for (const auto& lo : outs) f.table_bytes += detail::write_layer_model(f, lo.model, model);

  f.chunks.resize(chunks);
  const size_t dir_bytes = size_t(L) * 2 * 4;
  for (uint32_t k = 0; k < chunks; ++k) {
    uint64_t size = dir_bytes;
    for (const auto& lo : outs) {
      size += lo.units[k].size();
      if (f.format_version == kStoredUnitsFormatVersion && lo.units[k].size() >= kStoredUnitFlag)
        return ResourceExhausted("unit of 2 GiB or more in a frame with stored units: use smaller chunk_tokens");
    }
    if (size > UINT32_MAX) return ResourceExhausted("chunk larger than 4 GiB: use smaller chunk_tokens");
    f.chunks[k].size = uint32_t(size);
    f.chunks[k].tokens = std::min(o.chunk_tokens, sh.tokens - k * o.chunk_tokens);
  }
  // Assign offsets (write_head) before copying bodies; checksums are patched in afterwards.
  std::vector<uint8_t> head;
  detail::write_head(f, model, head);
  if (f.frame_bytes > dst.size())
    return BufferTooSmall("frame needs " + std::to_string(f.frame_bytes) + " bytes, buffer has " +
                          std::to_string(dst.size()));
  KVCODEC_RETURN_IF_ERROR(detail::parallel_for(chunks, o.threads, [&](size_t k) {
    uint8_t* p = dst.data() + f.chunks[k].offset;
    uint8_t* unit = p + dir_bytes;
    for (size_t i = 0; i < outs.size(); ++i) {
      const auto& u = outs[i].units[k];
      detail::store_le32(p + 4 * i, uint32_t(u.size()) | (outs[i].stored[k] ? kStoredUnitFlag : 0));
      std::memcpy(unit, u.data(), u.size());
      unit += u.size();
    }
    f.chunks[k].checksum = detail::frame_checksum(f.format_version, p, f.chunks[k].size);
  }));
  detail::write_head(f, model, head);
  std::memcpy(dst.data(), head.data(), head.size());
  return size_t(f.frame_bytes);
}

StatusOr<size_t> encode_into(const KVView& src, const EncodeOptions& o, std::span<uint8_t> dst) {
  const detail::MetricTimer timer(o.metrics);
  StatusOr<size_t> size = encode_frame(src, o, dst);
  if (timer.sink() && size.ok()) {
    MetricEvent e;
    e.kind = MetricKind::kEncode;
    e.level = o.level;
    e.seconds = timer.seconds();
    e.raw_bytes = src.shape.elements() * dtype_size(src.dtype);
    e.coded_bytes = *size;
    e.elements = src.shape.elements();
    timer.sink()->record(e);
  }
  return size;
}

}  // namespace kvcodec
