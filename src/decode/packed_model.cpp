#include "decode/packed_model.hpp"

#include <algorithm>
#include <cstring>

#include "common/frame.hpp"
#include "common/quant.hpp"

namespace kvcodec::detail {
namespace {

uint64_t align16(uint64_t n) { return (n + 15) & ~uint64_t(15); }

}  // namespace

StatusOr<PackedModel> pack_model(std::span<const uint8_t> head) {
  KVCODEC_ASSIGN_OR_RETURN(FrameHead h, parse_head(head));
  const FrameInfo& f = h.info;
  // The GPU kernels do not apply the inverse transform yet (docs/design.md, "Not done").
  if (f.transformed) return Unavailable("transform-coded frames (format version 4) are not decoded by the GPU backend yet");
  PackedModel pm;
  PackedLayout& l = pm.layout;
  l.dtype = uint8_t(f.dtype);
  l.lossless = is_lossless(f) ? 1 : 0;
  l.stored_units = f.format_version >= kStoredUnitsFormatVersion ? 1 : 0;
  l.elem_size = uint8_t(dtype_size(f.dtype));
  l.layers = f.shape.layers;
  l.tokens = f.shape.tokens;
  l.kv_heads = f.shape.kv_heads;
  l.head_dim = f.shape.head_dim;
  l.channels = uint32_t(f.shape.channels());
  l.chunk_tokens = f.chunk_tokens;
  l.group_tokens = f.group_tokens;
  l.num_chunks = uint32_t(f.chunks.size());

  const uint64_t units = uint64_t(l.layers) * 2, per_channel = units * l.channels;
  uint64_t tables = 0;
  for (const LayerModel& m : h.layers) {
    tables += m.tables.size();
    l.max_layer_tables = std::max<uint32_t>(l.max_layer_tables, uint32_t(m.tables.size()));
  }
  uint64_t off = 0;
  auto place = [&](uint64_t bytes) {
    const uint64_t at = off;
    off = align16(off + bytes);
    return at;
  };
  l.off_layers = place(units * sizeof(LayerDesc));
  l.off_tables = place(tables * sizeof(DecTable));
  l.off_table_base = place(per_channel * sizeof(uint16_t));
  l.off_step = place(l.lossless ? 0 : per_channel * sizeof(float));
  l.off_center = place(l.lossless ? 0 : per_channel * sizeof(int32_t));
  l.off_chunks = place(uint64_t(l.num_chunks) * sizeof(ChunkDesc));
  l.bytes = off;
  pm.block.assign(l.bytes, 0);

  uint8_t* b = pm.block.data();
  auto* ld = reinterpret_cast<LayerDesc*>(b + l.off_layers);
  auto* dt = reinterpret_cast<DecTable*>(b + l.off_tables);
  auto* tbase = reinterpret_cast<uint16_t*>(b + l.off_table_base);
  auto* step = reinterpret_cast<float*>(b + l.off_step);
  auto* center = reinterpret_cast<int32_t*>(b + l.off_center);
  auto* cd = reinterpret_cast<ChunkDesc*>(b + l.off_chunks);
  uint32_t next_table = 0;
  for (uint64_t u = 0; u < units; ++u) {
    const LayerModel& m = h.layers[u];
    ld[u] = {next_table, uint32_t(m.tables.size()), m.slots, m.raw_planes};
    for (const TableSpec& ts : m.tables) {
      DecTable& t = dt[next_table++];
      const FreqTable& ft = ts.table;
      for (size_t s = 0; s < ft.size(); ++s) {
        t.freq[s] = ft.freq[s];
        t.cum[s] = ft.cum[s];
        std::memset(t.slot_sym + ft.cum[s], int(s), ft.freq[s]);
      }
      t.qmin = ts.qmin;
      t.esc = l.lossless ? 256u : uint32_t(ft.size() - 1);
    }
    for (uint32_t c = 0; c < l.channels; ++c) {
      const uint64_t i = u * l.channels + c;
      tbase[i] = uint16_t(m.channel_group[c] * m.slots);
      if (!l.lossless) {
        step[i] = step_from_code(m.step_code[c]);
        center[i] = m.center[c];
      }
    }
  }
  for (uint32_t k = 0; k < l.num_chunks; ++k)
    cd[k] = {f.chunks[k].token_begin, f.chunks[k].tokens, f.chunks[k].size, 0};
  pm.info = std::move(h.info);
  return pm;
}

}  // namespace kvcodec::detail
