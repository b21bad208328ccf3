// The round-trip contract of the codec, checked element by element, and random inputs that try
// to break it. Shared by roundtrip_property_test.cpp and the fuzz target fuzz_roundtrip.cpp (no
// GoogleTest here).
//
// The contract (docs/format.md 4.3, quantize.hpp): level 0 is bit-exact; at levels 1..9 a finite
// input x decodes to x_hat with |x - x_hat| <= step / 2 + ulp(x_hat) / 2, where step is the grid
// step the FRAME records for the element's (layer, K/V, channel) -- read back from the frame's
// model section, not recomputed the way the encoder computes it -- and NaN / +-Inf come back
// bit-exact (they are escaped).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/frame.hpp"
#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "kvcodec/format.hpp"
#include "encode/quantize.hpp"

namespace kvcodec::test {

struct RoundTripInput {
  KVShape shape;
  DType dtype = DType::kF16;
  EncodeOptions options;
  std::vector<uint8_t> raw;  // contiguous [L, 2, T, H, D]
};

// Encodes `in`, decodes the frame and checks every element against the contract. Returns "" when
// it holds, else what broke (the first wrong element and how many are wrong).
inline std::string check_round_trip(const RoundTripInput& in) {
  const KVShape& s = in.shape;
  const DType dt = in.dtype;
  const size_t es = dtype_size(dt);
  std::vector<uint8_t> raw = in.raw;  // encode_into takes a mutable view
  std::vector<uint8_t> frame(max_encoded_size(s, dt, in.options));
  if (frame.empty()) return "max_encoded_size is 0 for valid options";
  auto n = encode_into(contiguous_view(raw.data(), dt, s), in.options, frame);
  if (!n.ok()) return "encode: " + n.status().to_string();
  frame.resize(*n);
  if (Status v = verify_frame(frame); !v.ok()) return "verify: " + v.to_string();
  std::vector<uint8_t> out(raw.size(), 0xCD);
  if (Status d = decode_into(frame, contiguous_view(out.data(), dt, s)); !d.ok()) return "decode: " + d.to_string();
  if (in.options.level == 0) return out == raw ? "" : "lossless round trip is not bit-exact";

  auto head = detail::parse_head(frame);
  if (!head.ok()) return "parse_head: " + head.status().to_string();
  const size_t C = s.channels();
  size_t wrong = 0;
  std::string first;
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv) {
      const detail::LayerModel& m = head->layers[size_t(l) * 2 + kv];
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (size_t c = 0; c < C; ++c) {
          const size_t i = ((size_t(l) * 2 + kv) * s.tokens + t) * C + c;
          const float x = detail::load_as_f32(&raw[i * es], uint8_t(dt));
          const float xh = detail::load_as_f32(&out[i * es], uint8_t(dt));
          bool ok;
          double bound = 0;
          if (!std::isfinite(x)) {
            ok = std::memcmp(&raw[i * es], &out[i * es], es) == 0;  // escaped: bit-exact
          } else {
            const double step = double(step_from_code(m.step_code[c]));
            bound = error_bound(step, xh, dt);
            ok = std::isfinite(xh) && std::fabs(double(x) - double(xh)) <= bound;
          }
          if (!ok && wrong++ == 0)
            first = "layer " + std::to_string(l) + (kv ? " V" : " K") + " token " + std::to_string(t) + " channel " +
                    std::to_string(c) + ": " + std::to_string(x) + " decoded as " + std::to_string(xh) +
                    " (bound " + std::to_string(bound) + ")";
        }
    }
  return wrong ? std::to_string(wrong) + " elements outside the contract; first: " + first : "";
}

// Issue 11, item 1: f32 [1, 2, 256, 1, 16] standard normal with channel 5 of K set to
// 100 sin(t / 15), level 1, group_tokens 4. The channel's anchors fall outside their table's
// window and escape; the encoder used to take the group's deltas against the anchor's grid value
// while the decoder (docs/format.md 4.3) resets the reference to 0: 63 values decoded wrong with
// valid checksums.
inline RoundTripInput escaped_anchor_input(uint32_t group_tokens = 4) {
  RoundTripInput in;
  in.shape = KVShape{1, 256, 1, 16};
  in.dtype = DType::kF32;
  in.options.level = 1;
  in.options.group_tokens = group_tokens;
  std::mt19937_64 rng(11);
  std::normal_distribution<float> n01(0.f, 1.f);
  std::vector<float> x(in.shape.elements());
  for (float& v : x) v = n01(rng);
  for (uint32_t t = 0; t < 256; ++t) x[size_t(t) * 16 + 5] = 100.f * std::sin(float(t) / 15.f);  // K
  in.raw.resize(x.size() * 4);
  std::memcpy(in.raw.data(), x.data(), in.raw.size());
  return in;
}

// A random input from `rng`: shapes, dtypes, levels and options over their ranges; per-channel
// scales over orders of magnitude, large slow outlier channels (which escape anchors), values at
// the dtype's range (f16/bf16 overflow, f8e4m3 saturation), constant channels, NaN and +-Inf.
template <typename Rng>
RoundTripInput random_round_trip_input(Rng& rng) {
  auto pick = [&](uint32_t lo, uint32_t hi) { return uint32_t(std::uniform_int_distribution<uint32_t>(lo, hi)(rng)); };
  std::normal_distribution<double> n01(0.0, 1.0);
  RoundTripInput in;
  const DType dtypes[] = {DType::kF16, DType::kBF16, DType::kF32, DType::kF8E4M3};
  in.dtype = dtypes[pick(0, 3)];
  in.shape = KVShape{pick(1, 3), pick(1, 300), pick(1, 3), pick(1, 24)};
  EncodeOptions& o = in.options;
  o.level = int(pick(0, 9));
  o.chunk_tokens = pick(0, 3) == 0 ? pick(1, 8) : pick(1, 400);
  o.group_tokens = pick(0, 2) == 0 ? 1 : pick(2, pick(0, 4) == 0 ? kMaxGroupTokens : 8);
  o.table_groups = pick(1, kMaxTableGroups);
  o.step_mode = pick(0, 1) ? StepMode::kLayer : StepMode::kChannel;

  const KVShape& s = in.shape;
  const size_t C = s.channels(), es = dtype_size(in.dtype);
  const double range = in.dtype == DType::kF8E4M3 ? 448 : in.dtype == DType::kF16 ? 65504 : 3e38;
  in.raw.resize(s.elements() * es);
  const uint32_t special_rate = pick(0, 2) == 0 ? 0 : pick(1, 200);  // 1 in N elements, or none
  for (uint32_t lk = 0; lk < 2 * s.layers; ++lk)
    for (size_t c = 0; c < C; ++c) {
      const uint32_t kind = pick(0, 9);
      double scale = std::exp(3 * n01(rng)), mean = n01(rng) * scale, period = 2 + pick(0, 60);
      if (in.dtype == DType::kF8E4M3) scale = std::min(scale, 20.0);
      for (uint32_t t = 0; t < s.tokens; ++t) {
        double x;
        switch (kind) {
          case 0: x = 100 * scale * std::sin(t / period); break;                 // slow outlier channel
          case 1: x = mean; break;                                               // constant
          case 2: x = (pick(0, 1) ? 1 : -1) * range * (0.5 + 0.5 * pick(0, 4) / 4.0); break;  // at the range
          case 3: x = pick(0, 20) == 0 ? 1000 * scale * n01(rng) : mean + scale * n01(rng); break;  // spikes
          default: x = mean + scale * n01(rng);
        }
        if (special_rate && pick(1, special_rate) == 1) {
          const double specials[] = {NAN, INFINITY, -INFINITY, 0.0, -0.0, range, -range};
          x = specials[pick(0, 6)];
        }
        const size_t i = (size_t(lk) * s.tokens + t) * C + c;
        detail::store_from_f32(&in.raw[i * es], uint8_t(in.dtype), float(x));
      }
    }
  return in;
}

}  // namespace kvcodec::test
