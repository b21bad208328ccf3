// An identity profile (zero means, unit axes) of a shape: what the fuzzers decode version 4
// frames with (its digest replaced by the frame's, so mutated frames reach the transform), and
// what the seed frames are encoded with.
#pragma once

#include "kvcodec/profile.hpp"

namespace kvcodec {

inline StatusOr<Profile> fuzz_identity_profile(const KVShape& s, bool keys_before_rope) {
  const size_t d = s.head_dim, heads = size_t(s.layers) * 2 * s.kv_heads;
  if (heads * d * d > (size_t(1) << 22)) return ResourceExhausted("profile too large for fuzzing");
  std::vector<float> axes(heads * d * d, 0.0f);
  for (size_t h = 0; h < heads; ++h)
    for (size_t k = 0; k < d; ++k) axes[(h * d + k) * d + k] = 1.0f;
  return make_profile(s.layers, s.kv_heads, s.head_dim, std::vector<float>(heads * d, 0.0f), std::move(axes),
                      keys_before_rope && d % 2 == 0, 10000.0);
}

}  // namespace kvcodec
