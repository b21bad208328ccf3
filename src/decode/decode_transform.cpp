// Decoding a transform-coded frame (format version 4, docs/format.md 2.1) with its profile: the
// frame is re-framed as the version 3 frame of its fp32 coefficients (transform block removed),
// decoded by the ordinary decoder into fp32 scratch, and every (token, head) row of the
// requested range is transformed back and rounded to the frame's dtype.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/bytes.hpp"
#include "common/dtype.hpp"
#include "common/frame.hpp"
#include "common/hex.hpp"
#include "common/parallel.hpp"
#include "common/profile_rows.hpp"
#include "common/simd.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/profile.hpp"

namespace kvcodec {
namespace {

Status check_transform_decode(const FrameInfo& f, std::span<const uint8_t> frame, const Profile& p, const KVView& dst,
                              const DecodeOptions& o) {
  KVCODEC_RETURN_IF_ERROR(detail::check_frame_profile(f, &p));
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

// Rows of fp32 to f16 with F16C's round-to-nearest-even (what f32_to_f16 computes; decode.cpp
// converts its f16 output the same way).
#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) void store_f16_f16c(const float* x, size_t n, uint16_t* out) {
  size_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm256_cvtps_ph(_mm256_loadu_ps(x + j), _MM_FROUND_TO_NEAREST_INT));
  for (; j < n; ++j) out[j] = detail::f32_to_f16(x[j]);
}
#endif

// Transforms back the coefficient rows of one (layer, K/V, head) for tokens [t0, t1) (row t at
// y + (t - t0) * C) and stores them in dst's dtype, a block of rows at a time.
void inverse_head(const Profile& p, uint32_t l, uint32_t kv, uint32_t h, const float* y, size_t C, uint32_t t0,
                  uint32_t t1, const std::vector<double>& cs, const KVView& dst) {
  constexpr uint32_t kRows = 64;  // enough rows for rows_product to pack the axes' column blocks
  const uint32_t d = p.head_dim;
  const size_t head = detail::profile_head(p, l, kv, h);
  std::vector<double> axes;
  detail::head_axes(p, head, axes);
  detail::RowScratch w;
  w.size_for(kRows, d);
  std::vector<float> x(size_t(kRows) * d);
  const uint8_t dt = uint8_t(dst.dtype);
  const int64_t step = dst.stride[4] * int64_t(dtype_size(dst.dtype));
  [[maybe_unused]] const bool fast_f16 = dst.dtype == DType::kF16 && step == 2 && detail::avx2_enabled();
  for (uint32_t t = t0; t < t1; t += kRows) {
    const uint32_t n = std::min(kRows, t1 - t);
    const double* c = cs.empty() ? nullptr : cs.data() + size_t(t - t0) * d;
    detail::inverse_rows(p, head, axes.data(), kv, c, y + size_t(t - t0) * C, C, n, w, x.data());
    for (uint32_t r = 0; r < n; ++r) {
      uint8_t* out = static_cast<uint8_t*>(dst.element(l, kv, t + r, h, 0));
#if defined(__x86_64__)
      if (fast_f16) {
        store_f16_f16c(x.data() + size_t(r) * d, d, reinterpret_cast<uint16_t*>(out));
        continue;
      }
#endif
      for (uint32_t j = 0; j < d; ++j) detail::store_from_f32(out + int64_t(j) * step, dt, x[size_t(r) * d + j]);
    }
  }
}

}  // namespace

namespace detail {

Status check_frame_profile(const FrameInfo& f, const Profile* p, std::string_view option) {
  if (!f.transformed) return Status::Ok();
  const std::string need = "transform-coded frame (format version 4) needs profile " + hex64(f.profile_digest);
  const std::string given = option.empty() ? std::string("the profile given") : std::string(option);
  if (!p) return InvalidArgument(need + (option.empty() ? ": none given" : ": pass " + given + " with it"));
  if (f.profile_digest != p->digest) return InvalidArgument(need + ", " + given + " has digest " + hex64(p->digest));
  return check_profile_shape(*p, f.shape);
}

Status decode_transformed_chunk(const Profile& p, const FrameInfo& f, const Decoder& coded, uint32_t k,
                                std::span<const uint8_t> body, const KVView& dst, uint32_t lb, uint32_t le,
                                bool verify, int threads) {
  const ChunkInfo& ci = f.chunks[k];
  const KVShape& s = f.shape;
  const size_t C = s.channels(), plane = size_t(f.chunk_tokens) * C;
  // fp32 scratch of the chunk's coefficients: a paged view whose single block of chunk_tokens
  // tokens every chunk maps to, K and V of layer l at block_of[l] and block_of[l] + plane.
  std::vector<float> coef(size_t(le - lb) * 2 * plane);
  std::vector<void*> block_of(s.layers, coef.data());
  for (uint32_t l = lb; l < le; ++l) block_of[l] = coef.data() + size_t(l - lb) * 2 * plane;
  const std::vector<int32_t> table(f.chunks.size(), 0);
  const KVView scratch = vllm_paged_view(block_of.data(), DType::kF32, s, table.data(), 1, f.chunk_tokens);
  KVCODEC_RETURN_IF_ERROR(decode_plain_chunk(coded, k, body, scratch, lb, le, verify, threads));
  std::vector<double> cs;
  if (p.keys_before_rope) rope_table(p, f.first_position + ci.token_begin, ci.tokens, cs);
  return parallel_for(size_t(le - lb) * 2 * s.kv_heads, threads, [&](size_t i) {
    const uint32_t l = lb + uint32_t(i / (2 * s.kv_heads)), kv = uint32_t(i / s.kv_heads % 2), h = uint32_t(i % s.kv_heads);
    const float* y = coef.data() + (size_t(l - lb) * 2 + kv) * plane + size_t(h) * s.head_dim;
    inverse_head(p, l, kv, h, y, C, ci.token_begin, ci.token_begin + ci.tokens, cs, dst);
  });
}

namespace {

// The coefficients' version 3 frame of a frame with profile models (docs/format.md 2.2): the
// model section rebuilt from the frame's own models (their groups, tables and channel groups, then
// the profile model's step codes and centres) and the profile's referenced ones; bodies as they
// are. Byte splicing only (the decoder has no frame writer).
StatusOr<std::vector<uint8_t>> expand_profile_models(std::span<const uint8_t> frame, const Profile* profile) {
  KVCODEC_ASSIGN_OR_RETURN(FrameHead h, parse_head(frame));
  const FrameInfo& f = h.info;
  if (!profile || profile->digest != f.profile_digest)
    return InvalidArgument("frame needs the layer models of profile " + hex64(f.profile_digest));
  if (profile->models.size() != size_t(kMaxLevel) * 2 * f.shape.layers)
    return InvalidArgument("frame references the layer models of its profile, which has none (profile version 1)");
  const uint32_t C = uint32_t(f.shape.channels());
  const uint8_t* section = frame.data() + kHeaderBytes;
  size_t pos = kTransformBlockBytes;
  std::vector<uint8_t> model;
  for (size_t i = 0; i < h.layers.size(); ++i) {
    const std::vector<uint8_t>& pm = profile->models[size_t(f.level - 1) * 2 * f.shape.layers + i];
    ++pos;  // the source byte
    if (h.layers[i].from_profile) {
      model.insert(model.end(), pm.begin(), pm.end());
      continue;
    }
    const size_t own = layer_model_prefix_bytes(h.layers[i], false);
    model.insert(model.end(), section + pos, section + pos + own);
    pos += own;
    LayerModel grids;
    KVCODEC_RETURN_IF_ERROR(parse_profile_model(pm, C, grids));
    model.insert(model.end(), pm.begin() + std::ptrdiff_t(layer_model_prefix_bytes(grids, false)), pm.end());
  }
  if (pos != f.model_bytes) return Internal("profile models: model section sizes disagree");
  if (model.size() > UINT32_MAX) return ResourceExhausted("model section over 4 GiB");
  // `frame` may be the head alone (coefficient_head): the output holds what the input does.
  std::vector<uint8_t> inner(frame.size() - f.model_bytes + model.size());
  reframe(frame, uint32_t(f.model_bytes), model, kStoredUnitsFormatVersion, 0, uint8_t(DType::kF32), inner);
  inner[kOffTableGroups] = uint8_t(kMaxTableGroups);  // a profile's model may have up to 16 groups
  store_le64(inner.data() + kOffHeadChecksum,
             head_checksum(kStoredUnitsFormatVersion, inner.data(), inner.size() - (frame.size() - f.head_bytes)));
  return inner;
}

// The coefficients' version 3 frame, or head, of `bytes` (a version 4 frame or head described
// by f): the transform block removed, profile-referenced layer models written out.
StatusOr<std::vector<uint8_t>> coefficients_of(std::span<const uint8_t> bytes, const FrameInfo& f,
                                               const Profile* profile) {
  if (f.profile_models) return expand_profile_models(bytes, profile);
  std::vector<uint8_t> inner(bytes.size() - kTransformBlockBytes);
  reframe(bytes, kTransformBlockBytes, {}, kStoredUnitsFormatVersion, 0, uint8_t(DType::kF32), inner);
  return inner;
}

}  // namespace

StatusOr<std::vector<uint8_t>> coefficient_head(std::span<const uint8_t> head, const Profile* profile) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo f, read_frame_info(head));
  if (!f.transformed) return InvalidArgument("not a transform-coded frame");
  return coefficients_of(head.first(f.head_bytes), f, profile);
}

StatusOr<std::vector<uint8_t>> coefficient_frame(std::span<const uint8_t> frame, const Profile* profile) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo f, read_frame_info(frame));
  if (!f.transformed) return InvalidArgument("not a transform-coded frame");
  if (frame.size() < f.frame_bytes) return BufferTooSmall("frame truncated");
  if (frame.size() > f.frame_bytes) return CorruptData("bytes after the frame");
  return coefficients_of(frame, f, profile);
}

}  // namespace detail

Status decode_into(std::span<const uint8_t> frame, const Profile& profile, const KVView& dst, const DecodeOptions& o) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo f, read_frame_info(frame));
  if (!f.transformed) return decode_into(frame, dst, o);
  KVCODEC_RETURN_IF_ERROR(check_transform_decode(f, frame, profile, dst, o));
  KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> inner, detail::coefficient_frame(frame, &profile));
  const KVShape& s = f.shape;
  const uint32_t lb = o.layer_begin, le = std::min(o.layer_end, s.layers);
  const uint32_t ce = std::min<size_t>(o.chunk_end, f.chunks.size());
  const uint32_t t0 = f.chunks[o.chunk_begin].token_begin, t1 = f.chunks[ce - 1].token_begin + f.chunks[ce - 1].tokens;
  const uint32_t C = uint32_t(s.channels());
  // RoPE's (cos, sin) per (token, pair): the same for every layer and head, composed once.
  std::vector<double> cs;
  if (profile.keys_before_rope) detail::rope_table(profile, f.first_position + t0, t1 - t0, cs);
  // Layers are decoded a group at a time (one per thread) into fp32 scratch of that group, then
  // transformed back per (layer, K/V, head) task; checksums are verified on the first pass.
  const uint32_t group = uint32_t(std::min<size_t>(le - lb, detail::resolve_threads(o.threads)));
  const size_t plane = size_t(s.tokens) * C;
  std::vector<float> coef(size_t(group) * 2 * plane);
  std::vector<void*> keys(s.layers, coef.data()), values(s.layers, coef.data());
  for (uint32_t g = lb; g < le; g += group) {
    const uint32_t ge = std::min(le, g + group);
    auto coef_plane = [&](uint32_t l, uint32_t kv) { return coef.data() + (size_t(l - g) * 2 + kv) * plane; };
    for (uint32_t l = g; l < ge; ++l) {
      keys[l] = coef_plane(l, 0);
      values[l] = coef_plane(l, 1);
    }
    KVView scratch = per_layer_view(keys.data(), values.data(), DType::kF32, s, false);
    DecodeOptions io = o;
    io.layer_begin = g;
    io.layer_end = ge;
    io.verify_checksums = o.verify_checksums && g == lb;
    io.max_decoded_bytes = 0;
    io.metrics = nullptr;
    KVCODEC_RETURN_IF_ERROR(decode_into(inner, scratch, io));
    for (uint32_t l = g; l < ge; ++l) keys[l] = values[l] = coef.data();
    KVCODEC_RETURN_IF_ERROR(detail::parallel_for(size_t(ge - g) * 2 * s.kv_heads, o.threads, [&](size_t i) {
      const uint32_t l = g + uint32_t(i / (2 * s.kv_heads)), kv = uint32_t(i / s.kv_heads % 2), h = uint32_t(i % s.kv_heads);
      inverse_head(profile, l, kv, h, coef_plane(l, kv) + size_t(t0) * C + size_t(h) * s.head_dim, C, t0, t1, cs,
                   dst);
    }));
  }
  return Status::Ok();
}

Status decode_chunk_into(std::span<const uint8_t> head, uint32_t chunk, std::span<const uint8_t> body,
                         const Profile& profile, const KVView& dst, const DecodeOptions& o) {
  // The decoder shares the profile for this call only (aliasing, not owning).
  KVCODEC_ASSIGN_OR_RETURN(FrameDecoder f,
                           FrameDecoder::open(head, std::shared_ptr<const Profile>(std::shared_ptr<const Profile>(), &profile)));
  return f.decode_chunk(chunk, body, dst, o);
}

StatusOr<FrameStats> analyze_frame(std::span<const uint8_t> frame, const Profile& profile) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo f, read_frame_info(frame));
  if (!f.profile_models) return analyze_frame(frame);
  KVCODEC_RETURN_IF_ERROR(verify_frame(frame));
  KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> inner, detail::coefficient_frame(frame, &profile));
  return analyze_frame(inner);
}

}  // namespace kvcodec
