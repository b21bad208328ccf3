// Serialization helpers and fp16 rounding shared by the baseline schemes.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.hpp"
#include "common/dtype.hpp"
#include "kvcodec/baselines.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec::eval::internal {

// The codec's byte writer and reader (common/bytes.hpp) with the baselines' fp16 fields.
class ByteWriter : public detail::ByteWriter {
 public:
  using detail::ByteWriter::ByteWriter;
  void f16(float v) { u16(detail::f32_to_f16(v)); }
};

class ByteReader : public detail::ByteReader {
 public:
  using detail::ByteReader::ByteReader;
  float f16() { return detail::f16_to_f32(u16()); }
  // OK when every field was present and nothing is left over.
  Status finish(const char* what) const {
    if (!ok()) return CorruptData(std::string(what) + ": truncated stream");
    if (!at_end()) return CorruptData(std::string(what) + ": trailing bytes");
    return Status::Ok();
  }
};

// Every baseline stream starts with the cache's shape: layers, tokens, kv_heads, head_dim as
// u32 (16 bytes), so that each stream decodes on its own.
inline constexpr size_t kShapeHeaderBytes = 16;
void write_shape(ByteWriter& w, const KVShape& s);
// Reads and validates the shape header (kvcodec's shape limits).
StatusOr<KVShape> read_shape(ByteReader& r);

// The smallest fp16 value >= v, and the largest <= v (v finite, within fp16 range).
float f16_ceil(float v) noexcept;
float f16_floor(float v) noexcept;

}  // namespace kvcodec::eval::internal
