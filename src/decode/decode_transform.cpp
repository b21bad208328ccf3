// Decoding a transform-coded frame (format version 4, docs/format.md 2.1) with its profile: the
// frame is re-framed as the version 3 frame of its fp32 coefficients (transform block removed),
// decoded by the ordinary decoder into fp32 scratch, and every (token, head) row of the
// requested range is transformed back and rounded to the frame's dtype.
#include <cstdio>
#include <string>

#include "common/dtype.hpp"
#include "common/frame.hpp"
#include "common/parallel.hpp"
#include "common/profile_rows.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/profile.hpp"

namespace kvcodec {
namespace {

std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

Status check_transform_decode(const FrameInfo& f, std::span<const uint8_t> frame, const Profile& p, const KVView& dst,
                              const DecodeOptions& o) {
  if (f.profile_digest != p.digest)
    return InvalidArgument("frame needs profile " + hex64(f.profile_digest) + ", got profile " + hex64(p.digest));
  KVCODEC_RETURN_IF_ERROR(detail::check_profile_shape(p, f.shape));
  if (dst.dtype != f.dtype || !(dst.shape == f.shape))
    return InvalidArgument("destination dtype or shape differs from the frame's");
  KVCODEC_RETURN_IF_ERROR(validate_view(dst));
  if (frame.size() < f.frame_bytes)
    return BufferTooSmall("frame truncated: " + std::to_string(frame.size()) + " of " + std::to_string(f.frame_bytes) +
                          " bytes");
  if (frame.size() > f.frame_bytes)
    return CorruptData(std::to_string(frame.size() - f.frame_bytes) + " bytes after the frame's " +
                       std::to_string(f.frame_bytes));
  const uint64_t bytes = decoded_bytes(f, o);
  if (bytes == 0) return OutOfRange("empty chunk or layer range");
  if (o.max_decoded_bytes && bytes > o.max_decoded_bytes)
    return ResourceExhausted("the frame decodes to " + std::to_string(bytes) + " bytes, over the limit of " +
                             std::to_string(o.max_decoded_bytes) + " (max_decoded_bytes)");
  return Status::Ok();
}

}  // namespace

namespace detail {

StatusOr<std::vector<uint8_t>> coefficient_frame(std::span<const uint8_t> frame) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo f, read_frame_info(frame));
  if (!f.transformed) return InvalidArgument("not a transform-coded frame");
  if (frame.size() < f.frame_bytes) return BufferTooSmall("frame truncated");
  if (frame.size() > f.frame_bytes) return CorruptData("bytes after the frame");
  std::vector<uint8_t> inner(f.frame_bytes - kTransformBlockBytes);
  reframe(frame, kTransformBlockBytes, {}, kStoredUnitsFormatVersion, 0, uint8_t(DType::kF32), inner);
  return inner;
}

}  // namespace detail

Status decode_into(std::span<const uint8_t> frame, const Profile& profile, const KVView& dst, const DecodeOptions& o) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo f, read_frame_info(frame));
  if (!f.transformed) return decode_into(frame, dst, o);
  KVCODEC_RETURN_IF_ERROR(check_transform_decode(f, frame, profile, dst, o));
  KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> inner, detail::coefficient_frame(frame));
  const KVShape& s = f.shape;
  const uint32_t lb = o.layer_begin, le = std::min(o.layer_end, s.layers);
  const uint32_t ce = std::min<size_t>(o.chunk_end, f.chunks.size());
  const uint32_t t0 = f.chunks[o.chunk_begin].token_begin, t1 = f.chunks[ce - 1].token_begin + f.chunks[ce - 1].tokens;
  const uint32_t d = s.head_dim, C = uint32_t(s.channels());
  // fp32 scratch for the requested layers only: a per-layer view whose other layers (never
  // written: the decode is limited to [lb, le)) point at the scratch's start.
  const size_t plane = size_t(s.tokens) * C;
  std::vector<float> coef(size_t(le - lb) * 2 * plane);
  std::vector<void*> keys(s.layers, coef.data()), values(s.layers, coef.data());
  auto coef_plane = [&](uint32_t l, uint32_t kv) { return coef.data() + (size_t(l - lb) * 2 + kv) * plane; };
  for (uint32_t l = lb; l < le; ++l) {
    keys[l] = coef_plane(l, 0);
    values[l] = coef_plane(l, 1);
  }
  KVView scratch = per_layer_view(keys.data(), values.data(), DType::kF32, s, false);
  DecodeOptions io = o;
  io.max_decoded_bytes = 0;
  io.metrics = nullptr;
  KVCODEC_RETURN_IF_ERROR(decode_into(inner, scratch, io));
  const uint8_t dt = uint8_t(f.dtype);
  const size_t es = dtype_size(f.dtype);
  return detail::parallel_for(size_t(le - lb) * 2, o.threads, [&](size_t i) {
    const uint32_t l = lb + uint32_t(i / 2), kv = uint32_t(i % 2);
    std::vector<float> x(d);
    for (uint32_t t = t0; t < t1; ++t)
      for (uint32_t h = 0; h < s.kv_heads; ++h) {
        const float* y = coef_plane(l, kv) + size_t(t) * C + size_t(h) * d;
        detail::inverse_row(profile, detail::profile_head(profile, l, kv, h), kv, f.first_position + t, y, x.data());
        uint8_t* out = static_cast<uint8_t*>(dst.element(l, kv, t, h, 0));
        for (uint32_t j = 0; j < d; ++j) detail::store_from_f32(out + int64_t(j) * dst.stride[4] * int64_t(es), dt, x[j]);
      }
  });
}

}  // namespace kvcodec
