// Per-head decorrelating transforms for the transform-coding schemes of the eval harness
// (issue 10, items 1-3 and 5): a PROFILE holds, per (layer, K/V, kv head), the mean and the
// principal axes (KLT / PCA) of the head_dim channels, calibrated on caches of OTHER contexts.
// Keys may be taken before RoPE: the cache's keys (RoPE applied at positions 0..T-1, as the
// reference model caches them) are rotated back first and RoPE is re-applied after decoding.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "kvcodec/baselines.hpp"
#include "kvcodec/profile.hpp"

namespace kvcodec::eval::internal {

struct HeadBasis {
  std::vector<double> mean;    // [head_dim]
  std::vector<double> axes;    // [component][head_dim], components by decreasing variance
  std::vector<double> var;     // [component]: the calibration variance along each axis
};

struct Profile {
  KVShape shape;             // layers, kv_heads, head_dim (tokens unused)
  bool keys_before_rope = false;
  std::vector<HeadBasis> heads;  // [(layer * 2 + kv) * kv_heads + head]

  const HeadBasis& head(uint32_t layer, uint32_t kv, uint32_t h) const {
    return heads[(size_t(layer) * 2 + kv) * shape.kv_heads + h];
  }
  // Bytes of the profile stored as fp16 (means and axes), as a per-model file or in a frame.
  uint64_t stored_bytes() const {
    return uint64_t(heads.size()) * (uint64_t(shape.head_dim) * shape.head_dim + shape.head_dim) * 2;
  }
};

// Calibrates a profile from caches of the same model (same layers, heads, head_dim).
StatusOr<std::shared_ptr<const Profile>> calibrate_profile(const std::vector<FloatKV>& caches, bool keys_before_rope,
                                                           double rope_theta);

// The library's profile (fp32 means and axes, RoPE tables) of an eval profile: what frames of
// format version 4 are coded with.
StatusOr<kvcodec::Profile> to_library_profile(const Profile& p, double rope_theta);

// Calibrates p's stored layer models (profile version 2) on the calibration caches.
Status add_profile_models(kvcodec::Profile& p, const std::vector<FloatKV>& caches,
                          std::span<const double> sensitivity = {}, std::span<const double> component_weight = {});
// Per (layer, K/V, channel) weights for calibrate_profile_models: for keys (before RoPE), the
// queries' energy along each component's axis, sum over RoPE pairs i of E_i * (a[2i]^2 + a[2i+1]^2)
// (RoPE averages the cross terms out); 1 for values. query_pair_energy: Calibration's.
std::vector<double> key_component_weights(const Profile& p, const std::vector<double>& query_pair_energy);

// y = axes * (x - mean) per head, keys un-rotated first when the profile says so. `coef` gets
// in's shape: channel h * head_dim + i is component i of head h.
void forward_transform(const Profile& p, double rope_theta, const FloatKV& in, FloatKV& coef);
// The inverse: x = axes^T y + mean, RoPE re-applied to keys when the profile says so.
void inverse_transform(const Profile& p, double rope_theta, const FloatKV& coef, FloatKV& out);

}  // namespace kvcodec::eval::internal
