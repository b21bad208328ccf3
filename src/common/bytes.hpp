// Little-endian fields: the one way the codec, the GPU kernels, the file readers, the stream
// library and the baselines read and write multi-byte values.
//   load_le* / store_le*  fixed-width integers at byte addresses of any alignment, host and
//                         device. They assemble bytes explicitly, so they are right on any host
//                         byte order; compilers turn each into a single load or store.
//   ByteReader            a bounds-checked cursor over untrusted bytes (host): every read checks
//                         the remaining length first; after a failed read ok() is false and
//                         every further read returns 0, so a parser reads a whole record and
//                         checks once.
//   ByteWriter            appends fields to a byte vector (host).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/host_device.hpp"

namespace kvcodec::detail {

KVCODEC_HD uint16_t load_le16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
KVCODEC_HD uint32_t load_le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
KVCODEC_HD uint64_t load_le64(const uint8_t* p) { return load_le32(p) | uint64_t(load_le32(p + 4)) << 32; }

KVCODEC_HD void store_le16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
KVCODEC_HD void store_le32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
KVCODEC_HD void store_le64(uint8_t* p, uint64_t v) {
  store_le32(p, uint32_t(v));
  store_le32(p + 4, uint32_t(v >> 32));
}


class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> in) : in_(in) {}
  uint8_t u8() { return uint8_t(get(1)); }
  uint16_t u16() { return uint16_t(get(2)); }
  uint32_t u32() { return uint32_t(get(4)); }
  uint64_t u64() { return get(8); }
  int16_t i16() { return int16_t(u16()); }
  // An unsigned LEB128 value (7 bits per byte, least significant first) below 2^32; an encoding
  // longer than 5 bytes, above 32 bits or overlong (a zero last byte after the first) fails.
  uint32_t varint() {
    uint32_t v = 0;
    for (int shift = 0; shift < 35; shift += 7) {
      const uint8_t b = u8();
      if (!ok_ || (shift == 28 && (b & 0xf0))) return fail();
      v |= uint32_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return shift > 0 && b == 0 ? fail() : v;  // overlong: not canonical
    }
    return fail();
  }
  // The next n bytes (empty, and a failure, when fewer remain).
  std::span<const uint8_t> bytes(size_t n) {
    if (!ok_ || remaining() < n) {
      fail();
      return {};
    }
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  size_t remaining() const noexcept { return in_.size() - pos_; }
  size_t position() const noexcept { return pos_; }
  bool at_end() const noexcept { return pos_ == in_.size(); }
  bool ok() const noexcept { return ok_; }

 private:
  uint32_t fail() {
    ok_ = false;
    return 0;
  }
  uint64_t get(size_t n) {
    if (!ok_ || remaining() < n) return fail();
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(in_[pos_ + i]) << (8 * i);
    pos_ += n;
    return v;
  }
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

class ByteWriter {
 public:
  explicit ByteWriter(std::vector<uint8_t>& out) : out_(out) {}
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void bytes(std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void bytes(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }
  size_t size() const noexcept { return out_.size(); }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(uint8_t(v >> (8 * i)));
  }
  std::vector<uint8_t>& out_;
};

}  // namespace kvcodec::detail
