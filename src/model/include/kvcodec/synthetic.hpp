// Synthetic KV caches at the shapes of large models, with statistics fitted to real caches.
//
// The reference models here are small; codec speed and streaming must also be measured at the
// size of Llama-3-8B or -70B, whose weights are not available. A synthetic cache reproduces the
// per-channel statistics that matter to a KV codec, as measured on real caches of kvc-bytes-a
// (docs/synthetic.md has the figures and the command that fits them):
//   * channel scale: the standard deviation of each (head, dim) channel is log-normal around a
//     per-layer centre with a linear trend over the RoPE pair index (keys of some layers are
//     larger in their low- or high-frequency pairs), plus outlier channels several times larger;
//   * channel mean: an offset per channel, proportional to its scale;
//   * token-to-token correlation: each channel is an AR(1) process over tokens, with a
//     per-channel coefficient;
//   * tails: the AR(1) innovations are a two-component scale mixture of normals matching the
//     fitted kurtosis (layer 0 of the reference model is far from normal);
//   * RoPE: keys are generated before rotation and then rotated pair-wise, (2i, 2i+1) by
//     position * theta^(-2i / head_dim), as a model caches them; values are not rotated;
//   * depth: every figure is fitted per layer and interpolated over the relative depth of the
//     target model (deeper layers of the reference model have a wider spread).
// Cross-channel correlation and attention-sink tokens are not modelled. Synthetic caches are
// labelled as such wherever results are reported; quality is only ever measured on real caches.
//
// Generation is deterministic for a given seed, independent of the thread count.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/io.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

// Statistics of one layer's K or V (keys before RoPE), over its channels. A channel is one
// (head, dim) column; its pair position is u = (dim / 2) / (head_dim / 2 - 1) in [0, 1], 0 for
// the highest RoPE frequency.
struct ChannelStats {
  // Channel scale: ln(std) of a non-outlier channel is
  //   log_std_mean + log_std_slope * (u - 1/2) + log_std_spread * N(0, 1).
  float log_std_mean = 0.0f;
  float log_std_slope = 0.0f;
  float log_std_spread = 0.0f;
  // Outliers: channels whose std exceeds kOutlierFactor times the median std; their share of
  // the channels and their mean std relative to exp(log_std_mean).
  float outlier_fraction = 0.0f;
  float outlier_scale = 0.0f;
  // Channel mean relative to the channel std: root mean square over channels of mean/std.
  float mean_to_std = 0.0f;
  // Lag-1 autocorrelation of each channel over tokens: mean and standard deviation over channels.
  float ar1_mean = 0.0f;
  float ar1_spread = 0.0f;
  // Median over channels of the kurtosis of a channel's values (3 for a normal distribution).
  float kurtosis = 3.0f;

  static constexpr float kOutlierFactor = 4.0f;
};

// Per layer, index 0 keys and 1 values.
struct KVStats {
  std::vector<std::array<ChannelStats, 2>> layers;
};

// Fits KVStats to real caches whose keys were rotated with RoPE of base `rope_theta` (the
// rotation is undone first; a token's position is its index in the cache). With several caches
// (contexts of one model) every figure is the mean of the per-cache fits. Each cache needs at
// least 16 tokens; all must have the same layer count. kInvalidArgument for no cache, fewer
// tokens, an odd head_dim, differing layer counts or a malformed cache.
StatusOr<KVStats> fit_kv_stats(std::span<const KVCache> caches, float rope_theta = 10000.0f);

// The figures fitted to kvc-bytes-a (docs/synthetic.md), the default for make_synthetic.
const KVStats& reference_kv_stats();

// A model whose cache geometry the synthetic generator imitates.
struct SyntheticShape {
  const char* name;  // "llama3-8b", "mistral-7b", "llama3-70b", "deepseek-v3-mla"
  uint32_t layers;
  uint32_t kv_heads;
  uint32_t head_dim;
  float rope_theta;  // the model's RoPE base (keys are rotated with it)
  // An MLA latent cache (tensor.hpp mla_shape): {layers, tokens, 1, latent_dim / 2}, the two
  // halves of the latent row as "K" and "V" (deepseek-v3-mla: latent 576 = 512 + 64 rope).
  bool mla;
};
std::span<const SyntheticShape> synthetic_shapes() noexcept;

// A synthetic cache of `shape` in `dtype`, from `stats` interpolated over depth, keys rotated
// with RoPE base `rope_theta`. Errors: kInvalidArgument for an invalid shape, odd head_dim,
// empty stats; kResourceExhausted when the cache cannot be allocated.
StatusOr<KVCache> make_synthetic(const KVShape& shape, DType dtype, uint64_t seed,
                                 const KVStats& stats, float rope_theta);
// The same for a named shape of synthetic_shapes() with reference_kv_stats(); kNotFound for an
// unknown name.
StatusOr<KVCache> make_synthetic(std::string_view shape_name, uint32_t tokens, DType dtype,
                                 uint64_t seed);

}  // namespace kvcodec
