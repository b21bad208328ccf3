// Transform coding with a per-model PROFILE (issue 10; spec: docs/format.md 2.1 and 8).
//
// A profile holds, per (layer, K/V, kv head), the mean and the principal axes (PCA / KLT) of
// the head_dim channels, calibrated once per model on caches of other contexts (`kvcodec
// calibrate`). Encoding with a profile codes the coefficients y = A (x - mean) of every (token,
// head) row -- keys rotated back to before RoPE first when the profile says so -- with the
// ordinary quantizer and entropy coder; the frame (format version 4) names the profile by its
// digest, and decoding needs that profile: without it, or with another, decode fails with
// kInvalidArgument and writes nothing. Level 0 (lossless) has no transform.
//
// Determinism: the transforms are fixed sequences of IEEE double operations (no FMA, no libm:
// RoPE uses the profile's cos/sin tables of 2^k * frequency, composed bit by bit of the
// position), so encoder and decoder give the same bytes and values on every machine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kvcodec/codec.hpp"  // FrameStats
#include "kvcodec/config.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

inline constexpr uint8_t kProfileMagic[4] = {'K', 'V', 'P', 'F'};
// Version 1: means, axes, RoPE tables. Version 2 adds the stored layer models (docs/format.md 8):
// a profile is written as version 2 exactly when it has them, so version 1 files are unchanged.
inline constexpr uint16_t kProfileVersion = 2;

struct Profile {
  uint32_t layers = 0, kv_heads = 0, head_dim = 0;
  bool keys_before_rope = false;
  double rope_theta = 0;       // informational (the tables below are what is applied)
  std::vector<float> means;    // [(l * 2 + kv) * kv_heads + h][head_dim]
  std::vector<float> axes;     // [(l * 2 + kv) * kv_heads + h][component][head_dim]
  // keys_before_rope: cos / sin of 2^k * theta^(-2i / head_dim), [pair i][k], k < 24.
  std::vector<double> rope_cos, rope_sin;
  // Version 2: per level n = 1..9 and (layer, K/V), a layer model (docs/format.md 2, lossy fp32,
  // one slot) calibrated at that level: its step codes and centres are the grids a frame coded
  // with this profile uses, and a frame may reference its tables instead of carrying its own
  // (kFrameFlagProfileModels). Index ((n - 1) * layers + l) * 2 + kv. Empty: version 1.
  std::vector<std::vector<uint8_t>> models;
  uint64_t digest = 0;         // checksum of the serialized profile (set by make / parse)

  size_t heads() const noexcept { return size_t(layers) * 2 * kv_heads; }
};

// Builds a profile from means and axes (rows of unit length), computing its RoPE tables (with
// libm, once: afterwards only the stored tables are used) and digest. kInvalidArgument for
// inconsistent sizes, non-finite values, an odd head_dim with keys_before_rope.
StatusOr<Profile> make_profile(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, std::vector<float> means,
                               std::vector<float> axes, bool keys_before_rope, double rope_theta);
// The profile file (docs/format.md 8) and its parser: kCorruptData for anything malformed
// (magic, sizes, non-finite values, digest mismatch), kUnsupportedVersion for another version.
std::vector<uint8_t> serialize_profile(const Profile& p);
// serialize_profile(p).size() without serializing: the profile file's bytes (what `kvcodec put`
// and `calibrate` report, Python's Profile.size, kvcodec_profile_size).
uint64_t serialized_profile_size(const Profile& p) noexcept;
StatusOr<Profile> parse_profile(std::span<const uint8_t> bytes);
// Adds (replaces) the stored layer models (version 2) and recomputes the digest:
// kInvalidArgument unless there are 9 * 2 * layers of them and each parses.
Status set_profile_models(Profile& p, std::vector<std::vector<uint8_t>> models);

// Calibrates the profile's stored layer models (version 2; set_profile_models) on caches of the
// profile's model (other contexts than those it will code; each cache's token 0 at position 0):
// per level 1..9 the coefficients of all caches, coded as one f32 cache (table_groups 16, one
// step per (layer, K/V)), give the grids and tables, the tables smoothed so that every value of
// their window and the escape keep a non-zero frequency.
// sensitivity (optional, 2 * layers values, index l * 2 + kv): what a unit of mean squared error
// in each (layer, K/V) costs (e.g. next-token KL per unit MSE, measured at calibration). Given,
// the steps are allocated by rate-distortion theory instead of by layer_factor and the tensor's
// RMS alone: with plain = kLevelStep[n] * layer_factor * RMS and full = kLevelStep[n] * K /
// sqrt(sensitivity) (K keeping the geometric mean of the full steps that of the plain ones, so
// levels keep their average rate), step(l, kv) = sqrt(plain * full), within 2x of plain.
// component_weight (optional, with sensitivity; 2 * layers * kv_heads * head_dim values, index
// (l * 2 + kv) * C + h * head_dim + k): the relative cost of an error in component k of head h
// (e.g. for keys, the queries' energy along the component's axis); steps within a (layer, K/V)
// then scale with 1 / sqrt(weight / mean weight of the (layer, K/V)).
Status calibrate_profile_models(Profile& p, std::span<const KVView> caches, std::span<const double> sensitivity = {},
                                std::span<const double> component_weight = {});

// Forward transform of every (layer, K/V, token, head) row of src into fp32 coefficients,
// contiguous [layer][kv][token][channel] (channel h * head_dim + k is component k of head h).
// kInvalidArgument when the shape differs from the profile's or a value is not finite.
Status profile_forward(const Profile& p, const KVView& src, uint32_t first_position, std::vector<float>& coef);

// max_encoded_size for a frame encoded with a profile (coefficients are coded as fp32).
size_t max_encoded_size(const KVShape& shape, DType dtype, const EncodeOptions& options,
                        const Profile& profile) noexcept;
// Encodes with the profile (levels 1..9). first_position: RoPE position of token 0 (profiles
// with keys before RoPE; first_position + tokens <= 2^24).
StatusOr<size_t> encode_into(const KVView& src, const EncodeOptions& options, const Profile& profile,
                             std::span<uint8_t> dst, uint32_t first_position = 0);
// Decodes a frame encoded with `profile` (chunk / layer ranges as decode_into). Frames of
// versions 1-3 decode as without a profile (the profile is not used).
Status decode_into(std::span<const uint8_t> frame, const Profile& profile, const KVView& dst,
                   const DecodeOptions& options = {});
// decode_chunk_into (codec.hpp) for frames encoded with `profile`; streaming clients that decode
// many chunks of one frame open a FrameDecoder with the profile once instead.
Status decode_chunk_into(std::span<const uint8_t> head, uint32_t chunk, std::span<const uint8_t> chunk_body,
                         const Profile& profile, const KVView& dst, const DecodeOptions& options = {});
// analyze_frame (codec.hpp) of a version 4 frame's coefficients, with its profile (needed when the
// frame references the profile's layer models, docs/format.md 2.2); other frames as without.
StatusOr<FrameStats> analyze_frame(std::span<const uint8_t> frame, const Profile& profile);

}  // namespace kvcodec
