// Helpers of the transform-coding tests (profile_test, profile_stream_test): correlated caches,
// deterministic orthonormal test profiles, and encoding with a profile.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "common/dtype.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/profile.hpp"

namespace kvcodec::test {

inline uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// Uniform in [-1, 1) with 2^-20 resolution (exact in float).
inline float uniform(uint64_t key) { return float(int32_t(splitmix(key) >> 43) - (1 << 20)) / float(1 << 20); }

// A correlated cache: every head row is a few latent factors mixed into head_dim channels plus
// small noise and a per-channel offset, so a PCA basis concentrates it.
inline std::vector<float> make_cache(const KVShape& s, uint64_t seed) {
  std::vector<float> x(size_t(s.elements()));
  const uint32_t d = s.head_dim, C = uint32_t(s.channels());
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (uint32_t h = 0; h < s.kv_heads; ++h) {
          const uint64_t row = ((uint64_t(l) * 2 + kv) * s.tokens + t) * s.kv_heads + h;
          const float f0 = 4.0f * uniform(seed * 1000003 + row * 3), f1 = 2.0f * uniform(seed * 1000003 + row * 3 + 1);
          for (uint32_t i = 0; i < d; ++i) {
            const float mix0 = uniform(seed + 77 + (l * 64 + h) * 4096 + i), mix1 = uniform(seed + 99 + (l * 64 + h) * 4096 + i);
            x[((size_t(l) * 2 + kv) * s.tokens + t) * C + size_t(h) * d + i] =
                0.5f * uniform(seed + i + 17 * h) + f0 * mix0 + f1 * mix1 + 0.05f * uniform(seed * 7 + row * 4096 + i);
          }
        }
  return x;
}

// A profile whose axes are a Householder reflection I - 2 v v^T / |v|^2 per head (orthonormal),
// means from the hash; keys_before_rope as asked.
inline Profile make_test_profile(const KVShape& s, bool rope, uint64_t seed) {
  const uint32_t d = s.head_dim;
  const size_t heads = size_t(s.layers) * 2 * s.kv_heads;
  std::vector<float> means(heads * d), axes(heads * d * d);
  for (size_t hd = 0; hd < heads; ++hd) {
    std::vector<double> v(d);
    double n2 = 0;
    for (uint32_t i = 0; i < d; ++i) {
      v[i] = uniform(seed + hd * 131 + i) + (i == 0 ? 2.0 : 0.0);
      n2 += v[i] * v[i];
      means[hd * d + i] = 0.5f * uniform(seed + 5 + i);
    }
    for (uint32_t k = 0; k < d; ++k)
      for (uint32_t i = 0; i < d; ++i)
        axes[(hd * d + k) * d + i] = float((k == i ? 1.0 : 0.0) - 2.0 * v[k] * v[i] / n2);
  }
  auto p = make_profile(s.layers, s.kv_heads, d, std::move(means), std::move(axes), rope, 10000.0);
  EXPECT_TRUE(p.ok()) << p.status().to_string();
  return *p;
}

inline std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = detail::f32_to_f16(x[i]);
  return h;
}

inline StatusOr<std::vector<uint8_t>> encode_with(const std::vector<uint16_t>& in, const KVShape& s, const EncodeOptions& o,
                                           const Profile& p, uint32_t first = 0) {
  std::vector<uint8_t> frame(max_encoded_size(s, DType::kF16, o, p));
  KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(contiguous_view(const_cast<uint16_t*>(in.data()), DType::kF16, s), o, p,
                                                 frame, first));
  frame.resize(n);
  return frame;
}

}  // namespace kvcodec::test
