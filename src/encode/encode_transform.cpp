// Encoding with a profile (include/kvcodec/profile.hpp, docs/format.md 2.1): the forward
// transform into fp32 coefficients, today's encoder on them (a version 2/3 frame of dtype f32),
// then the frame rewritten as version 4: header flag, the input's dtype, the transform block in
// front of the model section. The chunk bodies (and their checksums) are the coefficient frame's.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/bytes.hpp"
#include "common/dtype.hpp"
#include "common/frame.hpp"
#include "common/parallel.hpp"
#include "common/profile_rows.hpp"
#include "common/simd.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/profile.hpp"

namespace kvcodec {

namespace {

// A contiguous f16 row widened to double (F16C: exact, as f16_to_f32); false when a value is
// not finite (exponent bits all ones), as the scalar path finds it.
#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) bool load_f16_row_f16c(const uint16_t* in, uint32_t d, double* row) {
  uint32_t bad = 0;
  for (uint32_t i = 0; i < d; ++i) bad |= uint32_t((in[i] & 0x7c00u) == 0x7c00u);
  if (bad) return false;
  uint32_t i = 0;
  for (; i + 8 <= d; i += 8) {
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)));
    _mm256_storeu_pd(row + i, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
    _mm256_storeu_pd(row + i + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
  }
  for (; i < d; ++i) row[i] = double(detail::f16_to_f32(in[i]));
  return true;
}
#endif

// Forward transform of one (layer, K/V, head)'s rows, a block of tokens at a time; returns the
// first token with a non-finite value (tokens when none).
uint32_t forward_head(const Profile& p, const KVView& src, uint32_t l, uint32_t kv, uint32_t h,
                      const std::vector<double>& cs, float* coef) {
  constexpr uint32_t kRows = 16;
  const KVShape& s = src.shape;
  const uint32_t d = s.head_dim;
  const size_t C = s.channels();
  const size_t head = detail::profile_head(p, l, kv, h);
  std::vector<double> at;
  detail::transposed_axes(p, head, at);
  detail::RowScratch w;
  w.size_for(kRows, d);
  const uint8_t dt = uint8_t(src.dtype);
  const int64_t step = src.stride[4] * int64_t(dtype_size(src.dtype));
  [[maybe_unused]] const bool fast_f16 = src.dtype == DType::kF16 && step == 2 && detail::avx2_enabled();
  for (uint32_t t = 0; t < s.tokens; t += kRows) {
    const uint32_t n = std::min(kRows, s.tokens - t);
    for (uint32_t r = 0; r < n; ++r) {
      const uint8_t* base = static_cast<const uint8_t*>(src.element(l, kv, t + r, h, 0));
      double* row = w.in.data() + size_t(r) * d;
#if defined(__x86_64__)
      if (fast_f16) {
        if (!load_f16_row_f16c(reinterpret_cast<const uint16_t*>(base), d, row)) return t + r;
        continue;
      }
#endif
      for (uint32_t i = 0; i < d; ++i) {
        const float v = detail::load_as_f32(base + int64_t(i) * step, dt);
        if (!std::isfinite(v)) return t + r;
        row[i] = v;
      }
    }
    const double* c = cs.empty() ? nullptr : cs.data() + size_t(t) * d;
    float* y = coef + ((size_t(l) * 2 + kv) * s.tokens + t) * C + size_t(h) * d;
    detail::forward_rows(p, head, at.data(), kv, c, n, w, y, C);
  }
  return s.tokens;
}

}  // namespace

namespace detail {

Status profile_forward(const Profile& p, const KVView& src, uint32_t first_position, float* coef, int threads) {
  KVCODEC_RETURN_IF_ERROR(validate_view(src));
  KVCODEC_RETURN_IF_ERROR(detail::check_profile_shape(p, src.shape));
  const KVShape& s = src.shape;
  if (p.keys_before_rope && uint64_t(first_position) + s.tokens > (uint64_t(1) << kRopePositionBits))
    return InvalidArgument("first_position + tokens exceeds 2^24");
  std::vector<double> cs;  // RoPE's (cos, sin) per (token, pair), shared by every head
  if (p.keys_before_rope) detail::rope_table(p, first_position, s.tokens, cs);
  const size_t tasks = size_t(s.layers) * 2 * s.kv_heads;
  std::vector<uint32_t> bad(tasks, s.tokens);  // first non-finite token per task
  KVCODEC_RETURN_IF_ERROR(detail::parallel_for(tasks, threads, [&](size_t i) {
    const uint32_t l = uint32_t(i / (2 * s.kv_heads)), kv = uint32_t(i / s.kv_heads % 2), h = uint32_t(i % s.kv_heads);
    bad[i] = forward_head(p, src, l, kv, h, cs, coef);
  }));
  for (size_t i = 0; i < tasks; ++i)  // the first in (layer, K/V, head, token) order, as one thread finds it
    if (bad[i] < s.tokens)
      return InvalidArgument("encoding with a profile needs finite values (layer " +
                             std::to_string(i / (2 * s.kv_heads)) + ", token " + std::to_string(bad[i]) + ")");
  return Status::Ok();
}

}  // namespace detail

Status profile_forward(const Profile& p, const KVView& src, uint32_t first_position, std::vector<float>& coef) {
  KVCODEC_RETURN_IF_ERROR(validate_view(src));
  coef.resize(size_t(src.shape.elements()));
  return detail::profile_forward(p, src, first_position, coef.data(), 1);
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
  KVCODEC_RETURN_IF_ERROR(validate_view(src));
  KVCODEC_RETURN_IF_ERROR(detail::check_profile_shape(profile, src.shape));
  // The coefficients (every one written by the transform: not zero-filled first).
  std::unique_ptr<float[]> coef(new float[size_t(src.shape.elements())]);
  KVCODEC_RETURN_IF_ERROR(detail::profile_forward(profile, src, first_position, coef.get(), options.threads));
  const KVView cv = contiguous_view(coef.get(), DType::kF32, src.shape);
  uint8_t block[kTransformBlockBytes] = {};
  detail::store_le64(block, profile.digest);
  detail::store_le32(block + 8, first_position);
  block[12] = uint8_t(DType::kF32);
  const size_t bound = max_encoded_size(src.shape, DType::kF32, options);
  if (dst.size() >= bound + kTransformBlockBytes) {
    // The coefficients' frame straight into dst, kTransformBlockBytes in; re-framed in place
    // (its header moved back, the block inserted), so the frame is never copied.
    KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(cv, options, dst.subspan(kTransformBlockBytes)));
    detail::reframe(dst.subspan(kTransformBlockBytes, n), 0, block, kTransformFormatVersion, kFrameFlagTransform,
                    uint8_t(src.dtype), dst.first(n + kTransformBlockBytes));
    return n + kTransformBlockBytes;
  }
  std::vector<uint8_t> inner(bound);
  KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(cv, options, inner));
  const size_t total = n + kTransformBlockBytes;
  if (dst.size() < total)
    return BufferTooSmall("frame needs " + std::to_string(total) + " bytes, buffer has " + std::to_string(dst.size()));
  detail::reframe(std::span<const uint8_t>(inner).first(n), 0, block, kTransformFormatVersion, kFrameFlagTransform,
                  uint8_t(src.dtype), dst.first(total));
  return total;
}

}  // namespace kvcodec
