// Frames: the self-describing container of one encoded context (spec: docs/format.md).
//
// A frame is   head = [header | model section | chunk index]   followed by the chunk bodies.
// The head alone describes everything needed to decode any chunk: a streaming client fetches
// the head first and then chunks in any order (decode_chunk_into in codec.hpp).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvcodec/config.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

// Bytes 0..3 of every frame.
inline constexpr uint8_t kFrameMagic[4] = {'K', 'V', 'C', 0x1A};
// Versions of the frame format (independent of the library version). Encoders write
// kFormatVersion, or kStoredUnitsFormatVersion when the frame holds a stored unit (a unit kept raw
// because coding would have made it larger, docs/format.md 4.4); readers accept
// kMinFormatVersion..kMaxFormatVersion and reject others. Version 2 differs from version 1 only
// in its checksums (segmented XXH64, docs/format.md "Checksums"), version 3 from version 2 only
// in allowing stored units.
inline constexpr uint16_t kFormatVersion = 2;
inline constexpr uint16_t kStoredUnitsFormatVersion = 3;
// Version 4: transform-coded frames (docs/format.md 2.1): header flag kFrameFlagTransform, the
// model section starts with a transform block naming the profile (include/kvcodec/profile.hpp)
// by digest; encoders write it only for frames encoded with a profile.
inline constexpr uint16_t kTransformFormatVersion = 4;
// Version 5: lossless frames with raw byte planes (docs/format.md 4.5): a plane of a (layer, K/V)
// whose coding would save under 1/64 of its bytes is kept as its bytes, marked in the model
// section by a raw-plane marker table; encoders write it only for such frames, and version 2 or 3
// otherwise, byte for byte as before.
inline constexpr uint16_t kRawPlanesFormatVersion = 5;
inline constexpr uint16_t kMaxFormatVersion = 5;
inline constexpr uint16_t kFrameFlagTransform = 1;
// Version 4, bit 1 (with bit 0): every layer model starts with a source byte, 0 = the model
// follows as in version 3, 1 = the profile's stored model of (level, layer, K/V) (docs/format.md
// 2.2; profiles of version 2): the frame carries no tables, steps or centres for it.
inline constexpr uint16_t kFrameFlagProfileModels = 2;
inline constexpr uint32_t kTransformBlockBytes = 16;
// RoPE positions of a transform-coded frame with keys before RoPE: first_position + tokens <= 2^24.
inline constexpr uint32_t kRopePositionBits = 24;
inline constexpr uint16_t kMinFormatVersion = 1;
// Bit 31 of a unit directory entry (version 3): the unit is stored raw; bits 0..30 its size.
inline constexpr uint32_t kStoredUnitFlag = 0x80000000u;
// Fixed parameters of the format.
inline constexpr uint32_t kRansLanes = 32;      // interleaved rANS states per stream
inline constexpr uint32_t kProbBits = 12;       // probability tables sum to 1 << kProbBits
inline constexpr uint32_t kHeaderBytes = 64;    // fixed-size header
inline constexpr uint32_t kIndexEntryBytes = 24;

struct ChunkInfo {
  uint64_t offset = 0;       // from the start of the frame
  uint32_t size = 0;         // bytes of the chunk body
  uint32_t token_begin = 0;  // first token of the context in this chunk
  uint32_t tokens = 0;
  uint64_t checksum = 0;     // of the chunk body (docs/format.md, "Checksums")
};

struct FrameInfo {
  uint16_t format_version = 0;
  DType dtype = DType::kF16;
  KVShape shape;
  int level = 0;
  uint32_t chunk_tokens = 0;
  uint32_t group_tokens = 0;
  uint32_t table_groups = 0;
  StepMode step_mode = StepMode::kChannel;
  uint64_t head_bytes = 0;    // header + model section + chunk index
  uint64_t model_bytes = 0;   // model section alone: tables, steps, centres
  uint64_t table_bytes = 0;   // the probability tables inside the model section
  uint64_t frame_bytes = 0;   // whole frame
  std::vector<ChunkInfo> chunks;
  // Version 4 transform-coded frames: decode needs the profile of this digest (profile.hpp).
  bool transformed = false;
  uint64_t profile_digest = 0;
  uint32_t first_position = 0;  // RoPE position of token 0 (profiles with keys before RoPE)
  bool profile_models = false;  // kFrameFlagProfileModels: layer models may be the profile's
  uint32_t profile_model_refs = 0;  // how many layer models are the profile's (not in the frame)

  uint64_t payload_bytes() const noexcept { return frame_bytes - head_bytes; }
  double bits_per_element() const noexcept {
    return shape.elements() ? 8.0 * double(frame_bytes) / double(shape.elements()) : 0.0;
  }
};

// Parses and validates the head of a frame (magic, version, limits, header checksum, index
// consistency). `bytes` may be the whole frame or just its first head_bytes; when shorter than
// the head, returns kBufferTooSmall with the needed size in the message (call
// frame_head_size first to learn it from the first kHeaderBytes).
StatusOr<FrameInfo> read_frame_info(std::span<const uint8_t> bytes);
// Size of the head, from the first kHeaderBytes of a frame (validates the header).
StatusOr<uint64_t> frame_head_size(std::span<const uint8_t> header);
// Verifies every chunk checksum of a whole frame: exactly frame_bytes long (shorter is
// kBufferTooSmall, longer kCorruptData). OK, or the first kChecksumMismatch.
Status verify_frame(std::span<const uint8_t> frame);

}  // namespace kvcodec
