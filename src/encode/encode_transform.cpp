// Encoding with a profile (include/kvcodec/profile.hpp, docs/format.md 2.1): the forward
// transform into fp32 coefficients, today's encoder on them (a version 2/3 frame of dtype f32),
// then the frame rewritten as version 4: header flag, the input's dtype, the transform block in
// front of the model section. The chunk bodies (and their checksums) are the coefficient frame's.
#include <cmath>
#include <cstring>
#include <string>

#include "common/bytes.hpp"
#include "common/dtype.hpp"
#include "common/frame.hpp"
#include "common/profile_rows.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/profile.hpp"

namespace kvcodec {

Status profile_forward(const Profile& p, const KVView& src, uint32_t first_position, std::vector<float>& coef) {
  KVCODEC_RETURN_IF_ERROR(validate_view(src));
  KVCODEC_RETURN_IF_ERROR(detail::check_profile_shape(p, src.shape));
  const KVShape& s = src.shape;
  if (p.keys_before_rope && uint64_t(first_position) + s.tokens > (uint64_t(1) << kRopePositionBits))
    return InvalidArgument("first_position + tokens exceeds 2^24");
  const uint32_t d = s.head_dim, C = uint32_t(s.channels());
  coef.resize(size_t(s.elements()));
  std::vector<float> row(d);
  const uint8_t dt = uint8_t(src.dtype);
  const size_t es = dtype_size(src.dtype);
  std::vector<double> at;
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t h = 0; h < s.kv_heads; ++h) {
        const size_t head = detail::profile_head(p, l, kv, h);
        detail::transposed_axes(p, head, at);
        for (uint32_t t = 0; t < s.tokens; ++t) {
          const uint8_t* base = static_cast<const uint8_t*>(src.element(l, kv, t, h, 0));
          for (uint32_t i = 0; i < d; ++i) {
            row[i] = detail::load_as_f32(base + int64_t(i) * src.stride[4] * int64_t(es), dt);
            if (!std::isfinite(row[i]))
              return InvalidArgument("encoding with a profile needs finite values (layer " + std::to_string(l) +
                                     ", token " + std::to_string(t) + ")");
          }
          float* y = coef.data() + ((size_t(l) * 2 + kv) * s.tokens + t) * C + size_t(h) * d;
          detail::forward_row(p, head, at.data(), kv, first_position + t, row.data(), y);
        }
      }
  return Status::Ok();
}

size_t max_encoded_size(const KVShape& shape, DType dtype, const EncodeOptions& options, const Profile&) noexcept {
  if (!is_valid_dtype(uint8_t(dtype))) return 0;
  const size_t n = max_encoded_size(shape, DType::kF32, options);
  return n ? n + kTransformBlockBytes : 0;
}

StatusOr<size_t> encode_into(const KVView& src, const EncodeOptions& options, const Profile& profile,
                             std::span<uint8_t> dst, uint32_t first_position) {
  KVCODEC_RETURN_IF_ERROR(validate_options(options));
  if (options.level == 0) return InvalidArgument("level 0 (lossless) has no transform: encode without a profile");
  std::vector<float> coef;
  KVCODEC_RETURN_IF_ERROR(profile_forward(profile, src, first_position, coef));
  std::vector<uint8_t> inner(max_encoded_size(src.shape, DType::kF32, options));
  KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(contiguous_view(coef.data(), DType::kF32, src.shape), options, inner));
  const size_t total = n + kTransformBlockBytes;
  if (dst.size() < total)
    return BufferTooSmall("frame needs " + std::to_string(total) + " bytes, buffer has " + std::to_string(dst.size()));
  uint8_t block[kTransformBlockBytes] = {};
  detail::store_le64(block, profile.digest);
  detail::store_le32(block + 8, first_position);
  block[12] = uint8_t(DType::kF32);
  detail::reframe(std::span<const uint8_t>(inner).first(n), 0, block, kTransformFormatVersion, kFrameFlagTransform,
                  uint8_t(src.dtype), dst.first(total));
  return total;
}

}  // namespace kvcodec
