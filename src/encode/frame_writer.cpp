// Frame head writer (docs/format.md): the model section of each (layer, K/V), then the header,
// the model section and the chunk index. The reading side is common/format.cpp.
#include <cstring>
#include <vector>

#include "common/bytes.hpp"
#include "common/frame.hpp"
#include "encode/model_values.hpp"

namespace kvcodec::detail {
namespace {

void put_varint(std::vector<uint8_t>& out, uint32_t v) {
  uint8_t b[5];
  out.insert(out.end(), b, b + detail::put_varint(b, v));
}

}  // namespace

size_t write_layer_model(const FrameInfo& f, const LayerModel& m, std::vector<uint8_t>& out, bool grids) {
  out.push_back(uint8_t(m.groups));
  const size_t tables_begin = out.size();
  for (size_t i = 0; i < m.tables.size(); ++i) {
    const TableSpec& t = m.tables[i];
    if (m.raw_planes >> (i % m.slots) & 1) {  // a raw plane's marker (docs/format.md 4.5)
      out.push_back(0);
      out.push_back(0);
      continue;
    }
    out.push_back(uint8_t(t.table.size() - 1));
    if (!is_lossless(f)) {
      out.resize(out.size() + 2);
      store_le16(out.data() + out.size() - 2, uint16_t(t.qmin));
    }
    for (uint16_t q : t.table.freq) put_varint(out, q);
  }
  const size_t table_bytes = out.size() - tables_begin;
  const size_t C = m.channel_group.size();
  for (size_t c = 0; c < C; c += 2)
    out.push_back(uint8_t(m.channel_group[c] | (c + 1 < C ? m.channel_group[c + 1] << 4 : 0)));
  if (!is_lossless(f) && grids) {
    int32_t prev = 0;
    for (int32_t code : m.step_code) {
      put_varint(out, zigzag32(code - prev));
      prev = code;
    }
    for (int32_t c : m.center) put_varint(out, zigzag32(c));
  }
  return table_bytes;
}

void write_head(FrameInfo& f, std::span<const uint8_t> model, std::vector<uint8_t>& out) {
  const uint32_t n = uint32_t(f.chunks.size());
  // Version 2, or 3 when the encoder put a stored unit in the frame (docs/format.md 4.4), or 5
  // when it kept a byte plane raw (4.5).
  if (f.format_version != kStoredUnitsFormatVersion && f.format_version != kRawPlanesFormatVersion)
    f.format_version = kFormatVersion;
  f.model_bytes = model.size();
  f.head_bytes = kHeaderBytes + model.size() + uint64_t(n) * kIndexEntryBytes;
  uint64_t offset = f.head_bytes;
  for (uint32_t i = 0; i < n; ++i) {
    f.chunks[i].offset = offset;
    f.chunks[i].token_begin = i * f.chunk_tokens;
    offset += f.chunks[i].size;
  }
  f.frame_bytes = offset;

  out.assign(f.head_bytes, 0);
  uint8_t* p = out.data();
  std::memcpy(p + kOffMagic, kFrameMagic, 4);
  store_le16(p + kOffVersion, f.format_version);
  p[kOffDType] = uint8_t(f.dtype);
  p[kOffLevel] = uint8_t(f.level);
  p[kOffLanes] = uint8_t(kRansLanes);
  p[kOffProbBits] = uint8_t(kProbBits);
  store_le32(p + kOffLayers, f.shape.layers);
  store_le32(p + kOffTokens, f.shape.tokens);
  store_le32(p + kOffKVHeads, f.shape.kv_heads);
  store_le32(p + kOffHeadDim, f.shape.head_dim);
  store_le32(p + kOffChunkTokens, f.chunk_tokens);
  store_le16(p + kOffGroupTokens, uint16_t(f.group_tokens));
  p[kOffTableGroups] = uint8_t(f.table_groups);
  p[kOffStepMode] = uint8_t(f.step_mode);
  store_le32(p + kOffNumChunks, n);
  store_le32(p + kOffModelBytes, uint32_t(model.size()));
  store_le64(p + kOffFrameBytes, f.frame_bytes);
  if (!model.empty()) std::memcpy(p + kHeaderBytes, model.data(), model.size());
  uint8_t* idx = p + kHeaderBytes + model.size();
  for (uint32_t i = 0; i < n; ++i, idx += kIndexEntryBytes) {
    store_le64(idx, f.chunks[i].offset);
    store_le32(idx + 8, f.chunks[i].size);
    store_le32(idx + 12, 0);
    store_le64(idx + 16, f.chunks[i].checksum);
  }
  store_le64(p + kOffHeadChecksum, head_checksum(f.format_version, p, f.head_bytes));
}

}  // namespace kvcodec::detail
