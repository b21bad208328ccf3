// Internal representation of a frame's head (docs/format.md): read by common/format.cpp (for the
// decoder and read_frame_info), written by encode/frame_writer.cpp.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/entropy.hpp"
#include "kvcodec/format.hpp"
#include "common/checksum.hpp"

namespace kvcodec::detail {

// Header field offsets (docs/format.md, "Header").
enum : size_t {
  kOffMagic = 0,
  kOffVersion = 4,
  kOffFlags = 6,
  kOffDType = 8,
  kOffLevel = 9,
  kOffLanes = 10,
  kOffProbBits = 11,
  kOffLayers = 12,
  kOffTokens = 16,
  kOffKVHeads = 20,
  kOffHeadDim = 24,
  kOffChunkTokens = 28,
  kOffGroupTokens = 32,
  kOffTableGroups = 34,
  kOffStepMode = 35,
  kOffNumChunks = 36,
  kOffModelBytes = 40,
  kOffReserved = 44,
  kOffFrameBytes = 48,
  kOffHeadChecksum = 56,
};

// One probability table of the model section. Lossy tables code grid offsets q = qmin + s for
// s < size()-1; the last symbol is the escape (value stored raw). Lossless tables code bytes.
struct TableSpec {
  int16_t qmin = 0;
  FreqTable table;
};

// The model of one (layer, K/V): channel groups, their tables, per-channel grid.
struct LayerModel {
  uint32_t groups = 1;
  uint32_t slots = 1;                 // tables per group: roles (lossy: anchor[, delta]) or byte planes
  std::vector<TableSpec> tables;      // [group * slots + slot]
  std::vector<uint8_t> channel_group; // per channel
  std::vector<int32_t> step_code;     // per channel (lossy)
  std::vector<int32_t> center;        // per channel (lossy)
  bool from_profile = false;          // kFrameFlagProfileModels: the profile's model (nothing parsed)
  uint32_t raw_planes = 0;            // lossless, version 5: bit p = byte plane p is raw (its tables unused)
};

struct FrameHead {
  FrameInfo info;
  std::vector<LayerModel> layers;  // [layer * 2 + kv]
};

inline bool is_lossless(const FrameInfo& f) { return f.level == 0; }
// Table slots per group: lossless -> one per byte plane; lossy -> anchor (+ delta).
inline uint32_t table_slots(const FrameInfo& f, size_t elem_size) {
  if (is_lossless(f)) return uint32_t(elem_size);
  return f.group_tokens > 1 ? 2u : 1u;
}
inline uint32_t num_chunks_for(uint32_t tokens, uint32_t chunk_tokens) {
  return uint32_t((uint64_t(tokens) + chunk_tokens - 1) / chunk_tokens);
}

// Checksum of a head (header with its checksum field skipped, model section, chunk index).
uint64_t head_checksum(uint16_t version, const uint8_t* head, size_t head_bytes);
// Appends the serialized model of one (layer, K/V); returns the bytes spent on tables. grids =
// false: without step codes and centres (a frame with profile models, docs/format.md 2.2).
size_t write_layer_model(const FrameInfo& f, const LayerModel& m, std::vector<uint8_t>& out, bool grids = true);
// Writes header, model section and chunk index (checksummed) into `out` (resized to head_bytes).
// f.chunks must hold sizes and checksums; offsets are assigned here, as are head/frame sizes.
void write_head(FrameInfo& f, std::span<const uint8_t> model_section, std::vector<uint8_t>& out);
// kInvalidArgument for a transform-coded frame (version 4), which only the profile decoder
// (decode/decode_transform.cpp) reads; OK otherwise.
Status require_plain_frame(const FrameInfo& f);
// Bytes of a parsed layer model's serialization before its step codes and centres: groups,
// tables, channel groups (all of it for lossless models).
size_t layer_model_prefix_bytes(const LayerModel& m, bool lossless);
// Parses one layer model of `channels` channels as a profile stores it (docs/format.md 8: lossy,
// fp32, one slot, at most kMaxTableGroups groups), consuming all of `bytes`.
Status parse_profile_model(std::span<const uint8_t> bytes, uint32_t channels, LayerModel& m);
// The FrameInfo a profile's layer models are written and parsed with (fp32, lossy, one slot).
FrameInfo profile_model_info(uint32_t channels);
// Parses and validates a head, including the model section.
StatusOr<FrameHead> parse_head(std::span<const uint8_t> bytes);

}  // namespace kvcodec::detail
