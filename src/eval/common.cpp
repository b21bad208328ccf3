#include <cmath>
#include <string>

#include "bytes.hpp"

namespace kvcodec::eval {

FloatKV FloatKV::zeros(const KVShape& shape) {
  FloatKV kv;
  kv.shape = shape;
  kv.values.assign(shape.elements(), 0.0f);
  return kv;
}

void round_to_f16(FloatKV& kv) noexcept {
  for (float& v : kv.values) v = detail::f16_to_f32(detail::f32_to_f16(v));
}

namespace internal {

void write_shape(ByteWriter& w, const KVShape& s) {
  w.u32(s.layers);
  w.u32(s.tokens);
  w.u32(s.kv_heads);
  w.u32(s.head_dim);
}

StatusOr<KVShape> read_shape(ByteReader& r) {
  KVShape s;
  s.layers = r.u32();
  s.tokens = r.u32();
  s.kv_heads = r.u32();
  s.head_dim = r.u32();
  if (!r.ok()) return CorruptData("stream shorter than its shape header");
  KVCODEC_RETURN_IF_ERROR(validate_shape(s));
  return s;
}

// fp16 neighbours: for a finite non-NaN half h, the next representable value towards +inf is
// h + 1 for positive h (and +0), h - 1 for negative h, and the smallest subnormal for -0.
static uint16_t f16_next_up(uint16_t h) noexcept {
  if (h == 0x8000u) return 0x0001u;
  return (h & 0x8000u) ? uint16_t(h - 1) : uint16_t(h + 1);
}
static uint16_t f16_next_down(uint16_t h) noexcept {
  if (h == 0x0000u) return 0x8001u;
  return (h & 0x8000u) ? uint16_t(h + 1) : uint16_t(h - 1);
}

float f16_ceil(float v) noexcept {
  uint16_t h = detail::f32_to_f16(v);
  if (detail::f16_to_f32(h) < v) h = f16_next_up(h);
  return detail::f16_to_f32(h);
}

float f16_floor(float v) noexcept {
  uint16_t h = detail::f32_to_f16(v);
  if (detail::f16_to_f32(h) > v) h = f16_next_down(h);
  return detail::f16_to_f32(h);
}

}  // namespace internal
}  // namespace kvcodec::eval
