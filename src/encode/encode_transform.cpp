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
#include "encode/encode_model.hpp"
#include "encode/quantize.hpp"
#include "common/quant.hpp"
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

namespace {

// Whether frames of these options use the profile's layer models (docs/format.md 2.2).
bool uses_models(const EncodeOptions& o, const Profile& p) { return !p.models.empty() && o.group_tokens == 1; }

// The coefficients' frame (dtype f32, no transform block) into dst: with the profile's layer
// models for the level when the profile has them.
StatusOr<size_t> encode_coefficients(const KVView& cv, const EncodeOptions& o, const Profile& p, std::span<uint8_t> dst) {
  const uint32_t rd = o.rd_quantize ? p.head_dim : 0;  // error blocks of one head's coefficients
  if (!uses_models(o, p)) return detail::encode_coefficients_rd(cv, o, dst, rd);
  const size_t per_level = size_t(p.layers) * 2;
  std::vector<detail::LayerModel> fixed(per_level);
  for (size_t i = 0; i < per_level; ++i)
    KVCODEC_RETURN_IF_ERROR(detail::parse_profile_model(p.models[size_t(o.level - 1) * per_level + i],
                                                        uint32_t(cv.shape.channels()), fixed[i]));
  return detail::encode_with_models(cv, o, fixed, dst, rd);
}

// The coefficients' frame bound: a source byte per layer model more with profile models.
size_t coefficient_bound(const KVShape& shape, const EncodeOptions& o, const Profile& p) {
  const size_t n = max_encoded_size(shape, DType::kF32, o);
  return n && uses_models(o, p) ? n + size_t(shape.layers) * 2 : n;
}

}  // namespace

size_t max_encoded_size(const KVShape& shape, DType dtype, const EncodeOptions& options, const Profile& profile) noexcept {
  if (!is_valid_dtype(uint8_t(dtype))) return 0;
  const size_t n = coefficient_bound(shape, options, profile);
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
  const size_t bound = coefficient_bound(src.shape, options, profile);
  const uint16_t flags = kFrameFlagTransform | (uses_models(options, profile) ? kFrameFlagProfileModels : 0);
  if (dst.size() >= bound + kTransformBlockBytes) {
    // The coefficients' frame straight into dst, kTransformBlockBytes in; re-framed in place
    // (its header moved back, the block inserted), so the frame is never copied.
    KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_coefficients(cv, options, profile, dst.subspan(kTransformBlockBytes)));
    detail::reframe(dst.subspan(kTransformBlockBytes, n), 0, block, kTransformFormatVersion, flags, uint8_t(src.dtype),
                    dst.first(n + kTransformBlockBytes));
    return n + kTransformBlockBytes;
  }
  std::vector<uint8_t> inner(bound);
  KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_coefficients(cv, options, profile, inner));
  const size_t total = n + kTransformBlockBytes;
  if (dst.size() < total)
    return BufferTooSmall("frame needs " + std::to_string(total) + " bytes, buffer has " + std::to_string(dst.size()));
  detail::reframe(std::span<const uint8_t>(inner).first(n), 0, block, kTransformFormatVersion, flags, uint8_t(src.dtype),
                  dst.first(total));
  return total;
}

namespace {

// A calibrated table smoothed for coding other caches: every value of its window widened by up to
// kWiden values each side, and the escape, keep a non-zero frequency.
StatusOr<detail::TableSpec> smoothed_table(const detail::TableSpec& t) {
  constexpr int32_t kWiden = 4, kWeight = 4;
  const int32_t n = int32_t(t.table.size()), lo = std::max<int32_t>(-255, t.qmin - kWiden);
  const int32_t hi = std::min<int32_t>({255, t.qmin + n - 2 + kWiden, lo + 254});
  std::vector<uint64_t> counts(size_t(hi - lo + 2), 1);
  for (int32_t s = 0; s + 1 < n; ++s)
    if (t.qmin + s >= lo && t.qmin + s <= hi) counts[size_t(t.qmin + s - lo)] += uint64_t(kWeight) * t.table.freq[size_t(s)];
  counts.back() += uint64_t(kWeight) * t.table.freq[size_t(n - 1)];
  detail::TableSpec out;
  out.qmin = int16_t(lo);
  KVCODEC_ASSIGN_OR_RETURN(out.table, FreqTable::from_counts(counts));
  return out;
}

constexpr double kMaxRdStepRatio = 2.0;
// The allocation moves each step half way (in log) from the plain RMS-relative step to the
// rate-distortion one: the sensitivity is measured on other texts, and followed in full it cost
// babyllama105 on its own training text 12-19 % bits (results/quality.md, "every scheme in one
// run, half-strength rate-distortion steps"); half way keeps most of the gain where it transfers.
constexpr double kRdStrength = 0.5;

// What rate-distortion allocation needs of the calibration coefficients, the same at every level:
// per (layer, K/V) the channel means, the RMS deviation and the sensitivity weight, and log K, the
// log of the geometric mean of layer_factor * rms * sqrt(weight) (it keeps the levels' mean steps).
struct RdStats {
  std::vector<std::vector<double>> mean;
  std::vector<double> rms, w;
  double log_k = 0;
};

RdStats rd_stats(const std::vector<float>& coef, const KVShape& s, std::span<const double> sensitivity) {
  const uint32_t L = s.layers, T = s.tokens, C = uint32_t(s.channels());
  RdStats r{std::vector<std::vector<double>>(size_t(L) * 2, std::vector<double>(C, 0.0)),
            std::vector<double>(size_t(L) * 2, 0.0), std::vector<double>(size_t(L) * 2), 0.0};
  double wmax = 0;
  for (double v : sensitivity) wmax = std::max(wmax, v);
  for (size_t u = 0; u < size_t(L) * 2; ++u) {
    const float* y = coef.data() + u * T * C;
    std::vector<double>& mean = r.mean[u];
    double ss = 0;
    for (uint32_t t = 0; t < T; ++t)
      for (uint32_t c = 0; c < C; ++c) mean[c] += y[size_t(t) * C + c];
    for (double& m : mean) m /= T;
    for (uint32_t t = 0; t < T; ++t)
      for (uint32_t c = 0; c < C; ++c) ss += (y[size_t(t) * C + c] - mean[c]) * (y[size_t(t) * C + c] - mean[c]);
    r.rms[u] = std::max(std::sqrt(ss / (double(T) * C)), 1e-30);
    r.w[u] = std::max(sensitivity[u], wmax * 1e-9 + 1e-300);
    r.log_k += std::log(double(layer_factor(uint32_t(u / 2), L)) * r.rms[u]) + 0.5 * std::log(r.w[u]);
  }
  r.log_k /= double(L) * 2;
  return r;
}

// Grids of every (layer, K/V) at `level` by rate-distortion allocation (calibrate_profile_models):
// models without tables, step codes and centres set.
std::vector<detail::LayerModel> allocated_grids(const RdStats& r, const KVShape& s, std::span<const double> cw,
                                                int level) {
  const uint32_t L = s.layers, C = uint32_t(s.channels());
  std::vector<detail::LayerModel> out(size_t(L) * 2);
  for (size_t u = 0; u < out.size(); ++u) {
    // At most kMaxRdStepRatio from the RMS-relative step the frame would use without the
    // allocation: the sensitivity is one noise probe on a few calibration contexts, and followed
    // unbounded it moved stories260K's value steps 3.8x coarser and its key steps 4x finer
    // (bits at KL 0.01 +37 %); kvc-bytes-a's and babyllama105's allocations stay within 0.46-2.5x.
    const double plain = double(kLevelStep[level]) * double(layer_factor(uint32_t(u / 2), L)) * r.rms[u];
    const double full = double(kLevelStep[level]) * std::exp(r.log_k) / std::sqrt(r.w[u]);
    const double step = std::clamp(plain * std::pow(full / plain, kRdStrength), plain / kMaxRdStepRatio,
                                   plain * kMaxRdStepRatio);
    double wsum = 0, wmax_c = 0;
    for (uint32_t c = 0; c < C && !cw.empty(); ++c) {
      wsum += cw[u * C + c];
      wmax_c = std::max(wmax_c, cw[u * C + c]);
    }
    out[u].step_code.resize(C);
    out[u].center.resize(C);
    for (uint32_t c = 0; c < C; ++c) {
      // Within the (layer, K/V): step ~ 1 / sqrt(weight / mean weight) (reverse water-filling).
      const double rel = wsum > 0 ? std::max(cw[u * C + c], wmax_c * 1e-6) / (wsum / C) : 1.0;
      const int32_t code = detail::step_code_floor(step / std::sqrt(rel));
      const double st = double(detail::step_from_code(code));
      out[u].step_code[c] = code;
      out[u].center[c] = int32_t(std::clamp(std::llround(r.mean[u][c] / st), -(long long)detail::kMaxCenter,
                                            (long long)detail::kMaxCenter));
    }
  }
  return out;
}

}  // namespace

Status calibrate_profile_models(Profile& p, std::span<const KVView> caches, std::span<const double> sensitivity,
                                std::span<const double> component_weight) {
  if (!sensitivity.empty() && sensitivity.size() != size_t(p.layers) * 2)
    return InvalidArgument("sensitivity: expected one value per (layer, K/V)");
  if (!component_weight.empty() &&
      (sensitivity.empty() || component_weight.size() != size_t(p.layers) * 2 * p.kv_heads * p.head_dim))
    return InvalidArgument("component weights: expected one per (layer, K/V, channel), with sensitivity");
  for (double v : component_weight)
    if (!(v >= 0) || !std::isfinite(v)) return InvalidArgument("component weights must be finite and >= 0");
  for (double v : sensitivity)
    if (!(v >= 0) || !std::isfinite(v)) return InvalidArgument("sensitivity: values must be finite and >= 0");
  if (caches.empty()) return InvalidArgument("no caches to calibrate the profile models on");
  uint64_t total = 0;
  for (const KVView& v : caches) {
    KVCODEC_RETURN_IF_ERROR(detail::check_profile_shape(p, v.shape));
    total += v.shape.tokens;
  }
  if (total > (uint64_t(1) << kRopePositionBits)) return InvalidArgument("calibration caches too long");
  Profile base = p;  // the coefficients use the means and axes only
  base.models.clear();
  const uint32_t L = p.layers, C = p.kv_heads * p.head_dim, T = uint32_t(total);
  std::vector<float> all(size_t(L) * 2 * T * C), coef;
  uint32_t t0 = 0;
  for (const KVView& v : caches) {  // [layer][kv][token][channel], the caches one after another
    KVCODEC_RETURN_IF_ERROR(profile_forward(base, v, 0, coef));
    const size_t plane = size_t(v.shape.tokens) * C;
    for (size_t u = 0; u < size_t(L) * 2; ++u)
      std::copy(coef.begin() + u * plane, coef.begin() + (u + 1) * plane, all.begin() + (u * T + t0) * C);
    t0 += v.shape.tokens;
  }
  const KVShape shape{L, T, p.kv_heads, p.head_dim};
  const KVView cv = contiguous_view(all.data(), DType::kF32, shape);
  const FrameInfo info = detail::profile_model_info(C);
  std::vector<std::vector<uint8_t>> models;
  std::vector<uint8_t> frame;
  const RdStats stats = sensitivity.empty() ? RdStats{} : rd_stats(all, shape, sensitivity);
  for (int level = 1; level <= kMaxLevel; ++level) {
    EncodeOptions o;
    o.level = level;
    o.table_groups = kMaxTableGroups;
    o.chunk_tokens = kMaxChunkTokens;
    frame.resize(max_encoded_size(shape, DType::kF32, o));
    size_t n = 0;
    if (sensitivity.empty()) {
      KVCODEC_ASSIGN_OR_RETURN(n, encode_into(cv, o, frame));
    } else {
      KVCODEC_ASSIGN_OR_RETURN(n, detail::encode_with_models(cv, o, allocated_grids(stats, shape, component_weight, level), frame));
    }
    KVCODEC_ASSIGN_OR_RETURN(detail::FrameHead h, detail::parse_head(std::span<const uint8_t>(frame).first(n)));
    for (detail::LayerModel& m : h.layers) {
      for (auto& t : m.tables) {
        KVCODEC_ASSIGN_OR_RETURN(detail::TableSpec smooth, smoothed_table(t));
        t = std::move(smooth);
      }
      models.emplace_back();
      detail::write_layer_model(info, m, models.back());
    }
  }
  return set_profile_models(p, std::move(models));
}

}  // namespace kvcodec
