// Codec parameters: meaning, unit, range, default and cost of each (docs/design.md explains why).
#pragma once

#include <cstdint>

#include "kvcodec/metrics.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec {

// ---- Quality levels -------------------------------------------------------------------------
// Level 0 is lossless: decoding returns every element bit for bit (f32, f16, bf16, f8e4m3).
// Levels 1..kMaxLevel are lossy and increasingly aggressive. Level n quantizes every element of
// (layer l, K/V, channel c) on a uniform grid centred on the channel's mean, of step
//     step(l, kv, c) <= kLevelStep[n] * layer_factor(l) * scale
// where scale is the root-mean-square deviation of the (layer, K/V) tensor from its per-channel
// means (StepMode::kLayer, the default) or of channel c alone (StepMode::kChannel).
// Guarantee (tested): every decoded element satisfies
//     |x - x_hat| <= step(l, kv, c) / 2 + ulp(x_hat) / 2
// where ulp is that of the output dtype (the rounding of the fp32 reconstruction to it).
// Values too far from the channel's centre to code on the grid are escaped and come back exact.
// Scales and centres are robust: values more than 8 standard deviations from their channel's
// mean are left out of its statistics (up to three passes), so a few outliers are escaped or
// coded far out instead of flattening the tensor; the robust scale never exceeds the plain RMS.
inline constexpr int kMaxLevel = 9;
inline constexpr int kDefaultLevel = 4;
inline constexpr float kLevelStep[kMaxLevel + 1] = {
    0.0f,                           // 0: lossless
    0.03f, 0.06f, 0.12f, 0.20f,     // 1-4: near-lossless to high quality
    0.30f, 0.45f, 0.65f, 0.90f,     // 5-8: CacheGen-like sizes and below
    1.30f,                          // 9: most aggressive
};
// Layer-wise sensitivity (CacheGen): shallow layers hurt output quality most, so the first
// third of the layers uses the level's step, the middle third kLayerFactor[1] times it and the
// last third kLayerFactor[2] times it.
inline constexpr float kLayerFactor[3] = {1.0f, 1.25f, 1.5f};

// Multiplier on the level's step for layer `layer` of `layers`.
float layer_factor(uint32_t layer, uint32_t layers) noexcept;

// How the step of a channel's grid is scaled. Measured on real caches (docs/results/quality.md),
// one step for the whole (layer, K/V) -- the same absolute error in every channel, as rate-
// distortion theory prescribes for a sum of squared errors -- needs ~20% fewer bits than
// per-channel steps for the same next-token KL on kvc-bytes-a (head_dim 64, GQA) and ~10% on
// babyllama105; stories260K is indifferent. Both keep a per-channel centre.
enum class StepMode : uint8_t {
  kChannel = 0,  // step relative to each channel's RMS deviation (per-channel scales)
  kLayer = 1,    // one step per (layer, K/V): relative to the RMS deviation of the whole tensor
};

struct EncodeOptions {
  // Quality level, 0 (lossless) .. kMaxLevel. Default kDefaultLevel.
  int level = kDefaultLevel;
  // Tokens per chunk, 1..kMaxChunkTokens. Each chunk decodes on its own (given the frame head),
  // is checksummed and can be fetched alone. Smaller chunks: finer random access and streaming
  // decisions, slightly more per-chunk overhead (rANS lane states, index entry). Default 256.
  uint32_t chunk_tokens = 256;
  // Tokens per anchor group inside a chunk, 1..kMaxGroupTokens. The first token of a group (the
  // anchor) is coded on its own, the others as the difference to the anchor on the same grid
  // (no effect on error). 1 = no deltas. Default 1: measured on real caches, deltas cost bits
  // (docs/results/quality.md). Ignored at level 0.
  uint32_t group_tokens = 1;
  // Probability tables per (layer, K/V) (channel groups of similar statistics), 1..16. More
  // groups: closer fit to each channel, more table bytes. Default 8.
  uint32_t table_groups = 8;
  // Default kLayer (see StepMode).
  StepMode step_mode = StepMode::kLayer;
  // With a profile (version 4 frames) only: rate-distortion optimised quantization, each
  // coefficient coded as the nearer or the other neighbouring grid point, whichever costs less
  // squared error + lambda * bits under the frame's tables (lambda = step^2 * 2 ln 2 / 12), within
  // the row error bound of docs/format.md 7. Off by default: it saves 1-4 % of the bytes at equal
  // level but raised the next-token KL more than that (docs/results/quality.md, issue 10 RDOQ).
  // Frames without a profile are not affected.
  bool rd_quantize = false;
  // Worker threads, 0 = all hardware threads. Output bytes do not depend on it.
  int threads = 1;
  // Receives a kEncode event per frame (metrics.hpp); not owned. nullptr (default): none, no cost.
  // Output bytes do not depend on it.
  MetricsSink* metrics = nullptr;
};

inline constexpr uint32_t kMaxChunkTokens = 8192;
inline constexpr uint32_t kMaxGroupTokens = 64;
inline constexpr uint32_t kMaxTableGroups = 16;

Status validate_options(const EncodeOptions& o);

struct DecodeOptions {
  // Decode only chunks [chunk_begin, chunk_end) and layers [layer_begin, layer_end); the rest of
  // the destination is left untouched. Ends are clamped to the frame's counts.
  uint32_t chunk_begin = 0;
  uint32_t chunk_end = UINT32_MAX;
  uint32_t layer_begin = 0;
  uint32_t layer_end = UINT32_MAX;
  // Verify per-chunk checksums before decoding (cheap; turning it off is for benchmarks only).
  bool verify_checksums = true;
  int threads = 1;  // 0 = all hardware threads
  // Largest decoded size, in bytes, of the requested range (decoded_bytes) that a decode accepts;
  // a larger one is kResourceExhausted before anything is decoded. A frame of a few kilobytes can
  // describe gigabytes (a constant cache codes in almost no bits), so a caller that sizes its
  // buffers from a frame it did not make should set it (the CLI's --max-decoded-bytes does).
  // 0 = no limit (the default: the caller's destination already holds the range).
  uint64_t max_decoded_bytes = 0;
  // Receives a kDecode event per call, kChecksumFailure when verification fails (metrics.hpp);
  // not owned. nullptr (default): none, no cost.
  MetricsSink* metrics = nullptr;
};

}  // namespace kvcodec
