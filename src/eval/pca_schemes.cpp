// Transform-coding schemes of the eval harness, both on a calibrated per-head PCA profile
// (transform.hpp): kvpca (the transform in front of kvcodec's own quantizer and entropy coder:
// issue 10's proposal, measured before it enters the format) and kvtc (a KVTC-style baseline).
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "bytes.hpp"
#include "kvcodec/codec.hpp"
#include "schemes.hpp"
#include "transform.hpp"

namespace kvcodec::eval::internal {
namespace {

// A scheme on a calibrated profile: calibrate() builds it, run() needs it.
class ProfileScheme : public Scheme {
 public:
  bool needs_calibration() const noexcept override { return true; }
  Status calibrate(const Calibration& cal) override {
    KVCODEC_ASSIGN_OR_RETURN(profile_, calibrate_profile(cal.caches, undo_rope_, cal.rope_theta));
    theta_ = cal.rope_theta;
    return Status::Ok();
  }

 protected:
  ProfileScheme(std::string name, int level, std::string setting, bool undo_rope)
      : Scheme(std::move(name), level, std::move(setting)), undo_rope_(undo_rope) {}
  Status check_calibrated() const { return profile_ ? Status::Ok() : Internal(name() + ": not calibrated"); }
  std::shared_ptr<const Profile> profile_;
  double theta_ = 10000.0;

 private:
  bool undo_rope_;
};

// ---- kvpca --------------------------------------------------------------------------------

class KvpcaScheme final : public ProfileScheme {
 public:
  KvpcaScheme(std::string name, const PcaParams& p)
      : ProfileScheme(std::move(name), p.options.level, level_label(p.options.level), p.undo_rope), p_(p) {}

  Status calibrate(const Calibration& cal) override {
    KVCODEC_RETURN_IF_ERROR(ProfileScheme::calibrate(cal));
    if (p_.library) {
      KVCODEC_ASSIGN_OR_RETURN(library_, to_library_profile(*profile_, theta_));
      if (p_.profile_models) {
        const std::vector<double> kw = p_.key_weights ? key_component_weights(*profile_, cal.query_pair_energy)
                                                       : std::vector<double>();
        KVCODEC_RETURN_IF_ERROR(add_profile_models(
            library_, cal.caches, p_.rd ? std::span<const double>(cal.sensitivity) : std::span<const double>(), kw));
      }
    }
    return Status::Ok();
  }

  bool needs_sensitivity() const noexcept override { return p_.rd; }

  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    KVCODEC_RETURN_IF_ERROR(check_calibrated());
    if (p_.library) return run_library(in, out);
    FloatKV coef;
    forward_transform(*profile_, theta_, in, coef);
    const KVShape& sh = in.shape;
    std::vector<uint16_t> half(coef.values.size());
    for (size_t i = 0; i < half.size(); ++i) half[i] = detail::f32_to_f16(coef.values[i]);
    std::vector<uint8_t> frame(max_encoded_size(sh, DType::kF16, p_.options));
    KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(contiguous_view(half.data(), DType::kF16, sh), p_.options, frame));
    frame.resize(n);
    KVCODEC_RETURN_IF_ERROR(decode_into(frame, contiguous_view(half.data(), DType::kF16, sh)));
    for (size_t i = 0; i < half.size(); ++i) coef.values[i] = detail::f16_to_f32(half[i]);
    inverse_transform(*profile_, theta_, coef, out);
    return uint64_t(n) + (p_.basis_in_frame ? profile_->stored_bytes() : 0);
  }

 private:
  // The format itself: the f16 cache encoded with the library's profile (format version 4) and
  // decoded with it; bytes = the whole frame.
  StatusOr<uint64_t> run_library(const FloatKV& in, FloatKV& out) const {
    const KVShape& sh = in.shape;
    std::vector<uint16_t> half(in.values.size());
    for (size_t i = 0; i < half.size(); ++i) half[i] = detail::f32_to_f16(in.values[i]);
    std::vector<uint8_t> frame(max_encoded_size(sh, DType::kF16, p_.options, library_));
    KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(contiguous_view(half.data(), DType::kF16, sh), p_.options, library_, frame));
    frame.resize(n);
    KVCODEC_RETURN_IF_ERROR(decode_into(frame, library_, contiguous_view(half.data(), DType::kF16, sh)));
    out = FloatKV::zeros(sh);
    for (size_t i = 0; i < half.size(); ++i) out.values[i] = detail::f16_to_f32(half[i]);
    return uint64_t(n);
  }

  PcaParams p_;
  kvcodec::Profile library_;
};

// ---- kvtc ---------------------------------------------------------------------------------

// Optimal uniform quantizer of a unit Gaussian with 2^b levels (Max, 1960): step and MSE.
constexpr int kMaxBits = 8;
constexpr double kGaussStep[kMaxBits + 1] = {0, 1.596, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308};
constexpr double kGaussMse[kMaxBits + 1] = {1.0, 0.3634, 0.1188, 0.03744, 0.01154, 0.003490, 0.001035, 0.0003,
                                            0.0000870};

// Bits per component minimising sum var_k * mse(b_k) with sum b_k = budget (dynamic programming).
std::vector<int> allocate_bits(const std::vector<double>& var, int budget) {
  const size_t d = var.size();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> cost(d + 1, std::vector<double>(budget + 1, inf));
  std::vector<std::vector<int>> pick(d + 1, std::vector<int>(budget + 1, 0));
  cost[0][0] = 0;
  for (size_t k = 0; k < d; ++k)
    for (int used = 0; used <= budget; ++used) {
      if (cost[k][used] == inf) continue;
      for (int b = 0; b <= kMaxBits && used + b <= budget; ++b) {
        const double c = cost[k][used] + var[k] * kGaussMse[b];
        if (c < cost[k + 1][used + b]) {
          cost[k + 1][used + b] = c;
          pick[k + 1][used + b] = b;
        }
      }
    }
  int best = 0;
  for (int used = 0; used <= budget; ++used)
    if (cost[d][used] < cost[d][best]) best = used;
  std::vector<int> bits(d);
  for (size_t k = d; k-- > 0;) {
    bits[k] = pick[k + 1][best];
    best -= bits[k];
  }
  return bits;
}

class KvtcScheme final : public ProfileScheme {
 public:
  KvtcScheme(std::string name, int level, const KvtcParams& p)
      : ProfileScheme(std::move(name), level, std::to_string(p.bits).substr(0, 4) + " bits", p.undo_rope), p_(p) {}

  // The basis comes from the profile (per model); everything per context is counted: per (layer,
  // K/V, head, component) two fp16 values (its minimum and maximum, or its mean when it gets no
  // bits; with range=gauss its mean and standard deviation) and its bit count (one byte), the
  // zstd-compressed codes, the sink tokens in fp16 and the shape header. The bit allocation
  // (dynamic programming) runs on the context's own variances.
  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    KVCODEC_RETURN_IF_ERROR(check_calibrated());
    const KVShape& sh = in.shape;
    const uint32_t H = sh.kv_heads, d = sh.head_dim, C = uint32_t(sh.channels()), T = sh.tokens;
    const uint32_t sink = std::min(p_.sink, T);
    FloatKV coef;
    forward_transform(*profile_, theta_, in, coef);
    std::vector<uint8_t> codes;  // component-major per head: [layer][kv][head][component][token]
    codes.reserve(size_t(sh.layers) * 2 * C * T);
    uint64_t side = 0;
    for (uint32_t l = 0; l < sh.layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv)
        for (uint32_t h = 0; h < H; ++h) {
          std::vector<double> mean(d, 0.0), var(d, 0.0), lo_v(d, 0.0), hi_v(d, 0.0);
          for (uint32_t k = 0; k < d; ++k) {
            const float* y = coef.slice(l, kv) + size_t(h) * d + k;
            double s = 0, s2 = 0, mn = INFINITY, mx = -INFINITY;
            for (uint32_t t = sink; t < T; ++t) {
              s += y[size_t(t) * C];
              s2 += double(y[size_t(t) * C]) * y[size_t(t) * C];
              mn = std::min(mn, double(y[size_t(t) * C]));
              mx = std::max(mx, double(y[size_t(t) * C]));
            }
            const double n = std::max<uint32_t>(1, T - sink);
            lo_v[k] = T > sink ? to_f16(float(mn)) : 0.0;
            hi_v[k] = T > sink ? to_f16(float(mx)) : 0.0;
            mean[k] = to_f16(float(s / n));
            var[k] = std::max(0.0, s2 / n - (s / n) * (s / n));
            var[k] = double(to_f16(float(std::sqrt(var[k])))) * to_f16(float(std::sqrt(var[k])));
          }
          const std::vector<int> bits = allocate_bits(var, int(std::lround(p_.bits * d)));
          side += uint64_t(d) * 5;
          for (uint32_t k = 0; k < d; ++k) {
            float* y = coef.slice(l, kv) + size_t(h) * d + k;
            const int b = bits[k];
            // gauss: the step optimal for a Gaussian of the component's variance, centred on its
            // mean, values beyond 2^(b-1) steps clipped; minmax: 2^b steps spanning min..max.
            const double step = !b          ? 0.0
                                : p_.minmax ? (hi_v[k] - lo_v[k]) / double(1 << b)
                                            : kGaussStep[b] * std::sqrt(var[k]);
            const double origin = p_.minmax && b ? lo_v[k] + double(1 << (b - 1)) * step : mean[k];
            const int lo = b ? -(1 << (b - 1)) : 0, hi = b ? (1 << (b - 1)) - 1 : 0;
            for (uint32_t t = sink; t < T; ++t) {
              float& v = y[size_t(t) * C];
              if (b == 0 || !(step > 0)) {
                v = float(mean[k]);
                continue;
              }
              const int q = std::clamp(int(std::floor((double(v) - origin) / step)), lo, hi);
              codes.push_back(uint8_t(q - lo));
              v = float(origin + (q + 0.5) * step);
            }
          }
        }
    std::vector<uint8_t> packed(ZSTD_compressBound(codes.size()));
    const size_t n = ZSTD_compress(packed.data(), packed.size(), codes.data(), codes.size(), 3);
    if (ZSTD_isError(n)) return Internal(std::string("ZSTD_compress: ") + ZSTD_getErrorName(n));
    std::vector<uint8_t> back(codes.size());
    const size_t m = ZSTD_decompress(back.data(), back.size(), packed.data(), n);
    if (ZSTD_isError(m) || m != codes.size() || back != codes) return Internal("kvtc: zstd round trip failed");
    inverse_transform(*profile_, theta_, coef, out);
    for (uint32_t l = 0; l < sh.layers; ++l)  // the sink tokens go as fp16, exactly
      for (uint32_t kv = 0; kv < 2; ++kv) std::copy(in.slice(l, kv), in.slice(l, kv) + size_t(sink) * C, out.slice(l, kv));
    return uint64_t(n) + side + uint64_t(sh.layers) * 2 * sink * C * 2 + kShapeHeaderBytes;
  }

 private:
  static float to_f16(float v) { return detail::f16_to_f32(detail::f32_to_f16(v)); }
  KvtcParams p_;
};

}  // namespace

std::unique_ptr<Scheme> make_kvpca(std::string name, const PcaParams& params) {
  return std::make_unique<KvpcaScheme>(std::move(name), params);
}
std::unique_ptr<Scheme> make_kvtc(std::string name, int level, const KvtcParams& params) {
  return std::make_unique<KvtcScheme>(std::move(name), level, params);
}

}  // namespace kvcodec::eval::internal
