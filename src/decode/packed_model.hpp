// A frame's model section flattened into one position-independent block of plain arrays, the
// form in which lane decoders that cannot chase host pointers -- the CUDA kernels, and the
// host "warp emulation" that runs the same code -- read it. Built on the host from a parsed
// head (src/decode/packed_model.cpp), uploaded as one copy, addressed through ModelView.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/host_device.hpp"
#include "common/rans.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec::detail {

// Decode table of one probability table: slot -> symbol, and each symbol's frequency and
// cumulative frequency. 5128 bytes.
struct DecTable {
  uint8_t slot_sym[kRansM];
  uint16_t freq[256];
  uint16_t cum[256];
  int32_t qmin;  // lossy: symbol s codes q = qmin + s
  uint32_t esc;  // lossy: the escape symbol; lossless: 256 (none)
};

// Where the tables and per-channel arrays of one (layer, K/V) start.
struct LayerDesc {
  uint32_t first_table;  // index into tables
  uint32_t num_tables;   // groups * slots
  uint32_t slots;        // tables per channel group
  uint32_t raw_planes;   // lossless, version 5: bit p = byte plane p is raw (docs/format.md 4.5)
};

struct ChunkDesc {
  uint32_t token_begin;
  uint32_t tokens;
  uint32_t size;  // body bytes
  uint32_t reserved;
};

// Shape of the block: scalars of the frame and byte offsets of each array (16-byte aligned).
struct PackedLayout {
  uint8_t dtype = 0;      // DType code
  uint8_t lossless = 0;
  uint8_t elem_size = 0;
  uint8_t stored_units = 0;  // format version >= 3: directory bit 31 marks a stored unit
  uint32_t layers = 0, tokens = 0, kv_heads = 0, head_dim = 0, channels = 0;
  uint32_t chunk_tokens = 0, group_tokens = 0, num_chunks = 0;
  uint32_t max_layer_tables = 0;  // the most tables of one (layer, K/V)
  uint64_t off_layers = 0;        // LayerDesc[2 * layers]
  uint64_t off_tables = 0;        // DecTable[]
  uint64_t off_table_base = 0;    // uint16_t[2 * layers * channels]: group * slots per channel
  uint64_t off_step = 0;          // float[2 * layers * channels] (lossy)
  uint64_t off_center = 0;        // int32_t[2 * layers * channels] (lossy)
  uint64_t off_chunks = 0;        // ChunkDesc[num_chunks]
  uint64_t bytes = 0;             // size of the whole block
};

// Typed pointers into a packed block at `base` (host or device memory).
struct ModelView {
  const LayerDesc* layers;
  const DecTable* tables;
  const uint16_t* table_base;
  const float* step;
  const int32_t* center;
  const ChunkDesc* chunks;
};

KVCODEC_HD ModelView model_view(const void* base, const PackedLayout& l) {
  const char* b = static_cast<const char*>(base);
  return {reinterpret_cast<const LayerDesc*>(b + l.off_layers), reinterpret_cast<const DecTable*>(b + l.off_tables),
          reinterpret_cast<const uint16_t*>(b + l.off_table_base), reinterpret_cast<const float*>(b + l.off_step),
          reinterpret_cast<const int32_t*>(b + l.off_center), reinterpret_cast<const ChunkDesc*>(b + l.off_chunks)};
}

struct PackedModel {
  FrameInfo info;
  PackedLayout layout;
  std::vector<uint8_t> block;  // layout.bytes
};

// Parses and validates a frame head (read_frame_info's checks) and packs its model.
StatusOr<PackedModel> pack_model(std::span<const uint8_t> head);

}  // namespace kvcodec::detail
