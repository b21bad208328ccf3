// The lossy error bound checked against the INPUT, independently of the encoder's arithmetic.
//
// docs/format.md section 7 and config.hpp promise, for a frame at lossy level n, that every
// decoded element satisfies
//     |x - x_hat| <= step / 2 + ulp(x_hat) / 2,  step <= kLevelStep[n] * layer_factor(l) * scale
// or comes back exact (non-finite values, outliers), where scale is the RMS deviation of the
// (layer, K/V) tensor from its per-channel means (StepMode::kLayer) or of the channel alone
// (kChannel), over its finite values. This header checks both halves on every element:
//   * the steps are read from the frame's model section by a parser written here from
//     docs/format.md (not the library's), and the step code table is the one printed there;
//   * the scale is computed here in double from the input, as the documentation defines it;
//   * ulp is the spacing of the output dtype at x_hat, from its exponent and mantissa widths.
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "kvcodec/codec.hpp"
#include "kvcodec/config.hpp"
#include "common/dtype.hpp"
#include "kvcodec/io.hpp"

namespace kvcodec::test {

// ---- A reader of the model section, from docs/format.md ----------------------------------------

class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> b, size_t pos = 0) : b_(b), pos_(pos) {}
  bool ok() const { return ok_; }
  uint64_t le(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t(byte()) << (8 * i);
    return v;
  }
  uint8_t byte() {
    if (pos_ >= b_.size()) {
      ok_ = false;
      return 0;
    }
    return b_[pos_++];
  }
  uint32_t varint() {  // LEB128, at most 5 bytes
    uint32_t v = 0;
    for (int shift = 0; shift < 35; shift += 7) {
      const uint8_t c = byte();
      v |= uint32_t(c & 0x7f) << shift;
      if (!(c & 0x80)) return v;
    }
    ok_ = false;
    return 0;
  }
  int32_t zigzag() {
    const uint32_t u = varint();
    return (u & 1) ? -int32_t(u >> 1) - 1 : int32_t(u >> 1);
  }

 private:
  std::span<const uint8_t> b_;
  size_t pos_;
  bool ok_ = true;
};

// step(code) = M[code mod 16] * 2^floor(code / 16), M as printed in docs/format.md.
inline float documented_step(int32_t code) {
  static constexpr uint32_t kM[16] = {0x3f800000, 0x3f85aac3, 0x3f8b95c2, 0x3f91c3d3, 0x3f9837f0, 0x3f9ef532,
                                      0x3fa5fed7, 0x3fad583f, 0x3fb504f3, 0x3fbd08a4, 0x3fc5672a, 0x3fce248c,
                                      0x3fd744fd, 0x3fe0ccdf, 0x3feac0c7, 0x3ff5257d};
  const int32_t m = ((code % 16) + 16) % 16, e = (code - m) / 16;
  return std::ldexp(std::bit_cast<float>(kM[m]), e);
}

// The step of every (layer, K/V, channel) of a lossy frame, index (l * 2 + kv) * C + c; nullopt
// when the frame cannot be read (or is lossless).
inline std::optional<std::vector<float>> frame_steps(std::span<const uint8_t> frame,
                                                      std::vector<int32_t>* centers = nullptr) {
  ByteReader h(frame, 8);
  const uint32_t dtype_size = std::vector<uint32_t>{0, 4, 2, 2, 1}.at(std::min<size_t>(h.byte(), 4));
  const int level = h.byte();
  ByteReader f(frame, 12);
  const uint32_t layers = uint32_t(f.le(4)), tokens = uint32_t(f.le(4)), heads = uint32_t(f.le(4)),
                 dim = uint32_t(f.le(4));
  (void)tokens;
  f.le(4);  // chunk_tokens
  const uint32_t group_tokens = uint32_t(f.le(2));
  if (!f.ok() || level == 0 || dtype_size == 0) return std::nullopt;
  const uint32_t C = heads * dim, slots = group_tokens == 1 ? 1 : 2;
  std::vector<float> steps;
  ByteReader r(frame, 64);
  for (uint32_t u = 0; u < 2 * layers; ++u) {
    const uint32_t groups = r.byte();
    for (uint32_t t = 0; t < groups * slots; ++t) {
      const uint32_t n = r.byte() + 1u;
      r.le(2);  // qmin
      for (uint32_t s = 0; s < n; ++s) r.varint();
    }
    for (uint32_t i = 0; i < (C + 1) / 2; ++i) r.byte();  // channel groups
    int32_t code = 0;
    for (uint32_t c = 0; c < C; ++c) {
      code += r.zigzag();
      steps.push_back(documented_step(code));
    }
    for (uint32_t c = 0; c < C; ++c) {
      const int32_t center = r.zigzag();
      if (centers) centers->push_back(center);
    }
  }
  if (!r.ok()) return std::nullopt;
  return steps;
}

// Spacing of dtype dt's values at |v| (its exponent, or the subnormal one): the "ulp(x_hat)" of
// the bound. Mantissa bits and minimum normal exponent per dtype: f32 23/-126, f16 10/-14,
// bf16 7/-126, f8e4m3 3/-6.
inline double dtype_ulp(double v, DType dt) {
  int mant = 23, emin = -126;
  switch (dt) {
    case DType::kF32: break;
    case DType::kF16: mant = 10, emin = -14; break;
    case DType::kBF16: mant = 7, emin = -126; break;
    case DType::kF8E4M3: mant = 3, emin = -6; break;
  }
  const int e = v == 0 || !std::isfinite(v) ? emin : std::max(emin, std::ilogb(v));
  return std::ldexp(1.0, e - mant);
}

struct BoundReport {
  size_t checked = 0;     // finite input elements within the bound
  size_t exact = 0;       // of which bit-exact (escaped or on the grid)
  size_t non_finite = 0;  // non-finite inputs, each required to come back bit-exact
  size_t violations = 0;
  double worst_error_over_bound = 0;  // max |x - x_hat| / bound over the finite elements
  double rms_rel_error = 0;           // ||x - x_hat|| / ||x|| over the finite elements
  std::string first;                  // the first violation, readable
};

inline double element_of(const KVCache& kv, size_t i) {
  return double(detail::load_as_f32(kv.data.data() + i * dtype_size(kv.dtype), uint8_t(kv.dtype)));
}

// The documented maximum step of every (layer, K/V, channel) at `level`, index
// (l * 2 + kv) * C + c: kLevelStep[level] * layer_factor(l) * scale, scale the RMS deviation of
// the finite values from their channel means, over the whole (layer, K/V) tensor (kLayer) or the
// channel (kChannel). 0 where that scale is 0 (the documentation gives no step then).
inline std::vector<double> documented_max_steps(const KVCache& input, int level, StepMode mode) {
  const KVShape s = input.shape;
  const size_t C = s.channels(), T = s.tokens;
  std::vector<double> out;
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv) {
      const size_t base = (size_t(l) * 2 + kv) * T * C;
      std::vector<double> sum(C, 0), n(C, 0), dev2(C, 0);
      for (size_t t = 0; t < T; ++t)
        for (size_t c = 0; c < C; ++c)
          if (const double x = element_of(input, base + t * C + c); std::isfinite(x)) sum[c] += x, n[c] += 1;
      for (size_t t = 0; t < T; ++t)
        for (size_t c = 0; c < C; ++c)
          if (const double x = element_of(input, base + t * C + c); std::isfinite(x)) {
            const double d = x - sum[c] / n[c];
            dev2[c] += d * d;
          }
      double all2 = 0, all_n = 0;
      for (size_t c = 0; c < C; ++c) all2 += dev2[c], all_n += n[c];
      const double rel = double(kLevelStep[level]) * double(layer_factor(l, s.layers));
      for (size_t c = 0; c < C; ++c)
        out.push_back(rel * (mode == StepMode::kLayer ? std::sqrt(all_n ? all2 / all_n : 0)
                                                      : std::sqrt(n[c] ? dev2[c] / n[c] : 0)));
    }
  return out;
}

// Checks `decoded` against `input` (both contiguous [layers, 2, tokens, kv_heads, head_dim], same
// dtype) on tokens [token_begin, token_end) with one step per (layer, K/V, channel): every finite
// input within step / 2 + ulp(x_hat) / 2 or exact, every non-finite one exact.
inline BoundReport check_against_steps(const KVCache& input, const KVCache& decoded, const std::vector<double>& steps,
                                       uint32_t token_begin, uint32_t token_end) {
  BoundReport rep;
  const KVShape s = input.shape;
  if (!(decoded.shape == s) || decoded.dtype != input.dtype || steps.size() != 2 * size_t(s.layers) * s.channels()) {
    rep.violations = 1;
    rep.first = "shapes differ";
    return rep;
  }
  const size_t C = s.channels(), T = s.tokens, es = dtype_size(input.dtype);
  double err2 = 0, ref2 = 0;
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (size_t t = token_begin; t < token_end; ++t)
        for (size_t c = 0; c < C; ++c) {
          const size_t i = ((size_t(l) * 2 + kv) * T + t) * C + c;
          const double step = steps[(size_t(l) * 2 + kv) * C + c];
          const bool same = std::memcmp(&input.data[i * es], &decoded.data[i * es], es) == 0;
          const double x = element_of(input, i), xh = element_of(decoded, i);
          std::ostringstream m;
          m << "layer " << l << " kv " << kv << " token " << t << " channel " << c << ": ";
          if (!std::isfinite(x)) {
            ++rep.non_finite;
            if (!same && rep.violations++ == 0) rep.first = m.str() + "non-finite input not restored exactly";
            continue;
          }
          const double err = std::fabs(x - xh), bound = step / 2 + dtype_ulp(xh, input.dtype) / 2;
          err2 += err * err;
          ref2 += x * x;
          rep.exact += same;
          if (!same) rep.worst_error_over_bound = std::max(rep.worst_error_over_bound, err / bound);
          if (same || err <= bound) {
            ++rep.checked;
          } else if (rep.violations++ == 0) {
            m << "x " << x << " x_hat " << xh << " |error| " << err << " > bound " << bound << " (step " << step << ")";
            rep.first = m.str();
          }
        }
  rep.rms_rel_error = ref2 > 0 ? std::sqrt(err2 / ref2) : 0;
  return rep;
}

// Checks a decoded frame against its input with the steps recorded in the frame, and checks
// that each recorded step is at most the documented maximum.
inline BoundReport check_bound(std::span<const uint8_t> frame, const KVCache& input, const KVCache& decoded) {
  auto info = read_frame_info(frame);
  auto steps = frame_steps(frame);
  if (!info.ok() || !steps || !(input.shape == info->shape) || input.dtype != info->dtype) {
    BoundReport rep;
    rep.violations = 1;
    rep.first = "frame unreadable or not of this input";
    return rep;
  }
  const std::vector<double> recorded(steps->begin(), steps->end());
  BoundReport rep = check_against_steps(input, decoded, recorded, 0, info->shape.tokens);
  const std::vector<double> max_steps = documented_max_steps(input, info->level, info->step_mode);
  for (size_t u = 0; u < recorded.size(); ++u)
    if (max_steps[u] > 0 && recorded[u] > max_steps[u] * (1 + 1e-6) && rep.violations++ == 0)
      rep.first = "(layer, K/V, channel) " + std::to_string(u) + ": recorded step " + std::to_string(recorded[u]) +
                  " > documented maximum " + std::to_string(max_steps[u]);
  return rep;
}

// Encodes `input` with `o`, decodes it, and checks the bound on every element (gtest assertions).
inline BoundReport expect_within_bound(const KVCache& input, const EncodeOptions& o, const std::string& label) {
  std::vector<uint8_t> frame(max_encoded_size(input.shape, input.dtype, o));
  auto size = encode_into(const_cast<KVCache&>(input).view(), o, frame);  // encode only reads it
  EXPECT_TRUE(size.ok()) << label << ": " << size.status().to_string();
  if (!size.ok()) return {};
  frame.resize(*size);
  auto out = KVCache::allocate(input.dtype, input.shape);
  EXPECT_TRUE(out.ok());
  if (!out.ok()) return {};
  const Status d = decode_into(frame, out->view());
  EXPECT_TRUE(d.ok()) << label << ": " << d.to_string();
  const BoundReport r = check_bound(frame, input, *out);
  EXPECT_EQ(r.violations, 0u) << label << ": " << r.violations << " elements outside the documented bound; first: "
                              << r.first;
  EXPECT_EQ(r.checked + r.non_finite, input.shape.elements()) << label;
  return r;
}

}  // namespace kvcodec::test
