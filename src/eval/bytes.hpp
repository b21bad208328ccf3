// Little-endian serialization helpers and fp16 rounding shared by the baseline schemes.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "kvcodec/baselines.hpp"
#include "common/dtype.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec::eval::internal {

// Appends little-endian fields to a byte vector.
class ByteWriter {
 public:
  explicit ByteWriter(std::vector<uint8_t>& out) : out_(out) {}
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { put(&v, 2); }
  void u32(uint32_t v) { put(&v, 4); }
  void f16(float v) { u16(detail::f32_to_f16(v)); }
  void bytes(std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  size_t size() const noexcept { return out_.size(); }

 private:
  void put(const void* p, size_t n) {  // the library targets little-endian hosts only
    const auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  std::vector<uint8_t>& out_;
};

// Reads little-endian fields; every read is bounds-checked and a short buffer latches an error.
class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> in) : in_(in) {}
  uint8_t u8() { return take(1) ? in_[pos_ - 1] : 0; }
  uint16_t u16() { return get<uint16_t>(); }
  uint32_t u32() { return get<uint32_t>(); }
  float f16() { return detail::f16_to_f32(u16()); }
  // The next n bytes (empty and an error when fewer remain).
  std::span<const uint8_t> bytes(size_t n) {
    return take(n) ? in_.subspan(pos_ - n, n) : std::span<const uint8_t>{};
  }
  bool ok() const noexcept { return ok_; }
  bool at_end() const noexcept { return pos_ == in_.size(); }
  Status finish(const char* what) const {
    if (!ok_) return CorruptData(std::string(what) + ": truncated stream");
    if (!at_end()) return CorruptData(std::string(what) + ": trailing bytes");
    return Status::Ok();
  }

 private:
  template <typename T>
  T get() {
    T v{};
    if (take(sizeof(T))) std::memcpy(&v, in_.data() + pos_ - sizeof(T), sizeof(T));
    return v;
  }
  bool take(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return false;
    }
    pos_ += n;
    return true;
  }
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  bool ok_ = true;
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
