// Baseline KV-cache compression schemes, measured side by side with kvcodec (kvcodec eval).
//
// Every scheme turns a KV cache into bytes and back, and reports the EXACT size of everything a
// decoder needs: codes, scales, zero points, probability tables, stream lengths and a shape
// header. Nothing is estimated: each scheme serializes into a byte buffer and decodes from that
// buffer alone (plus what the format fixes by convention, such as CacheGen's bin schedule).
//
// Schemes, by family name (make_schemes):
//   fp16      the raw fp16 cache: 16 bits per element plus the 16-byte shape header.
//   zstd      zstd (default level 3) on the fp16 serialization; lossless.
//   int8      8-bit symmetric quantization, one fp16 scale per (layer, K/V, token): CacheGen's
//             "quantization baseline".
//   kivi      KIVI: b-bit asymmetric quantization, keys per channel (groups of `group` tokens),
//             values per token (groups of `group` channels), fp16 scale and zero per group. An
//             optional residual window keeps the last `residual` tokens in fp16 (default 0:
//             every token quantized, which is what a cache written once and fetched later gets).
//   cachegen  CacheGen as it ships in LMCache: per-(layer, K/V, token) symmetric quantization
//             q = round(x * Q / max|x| + Q), Q = bins/2 - 1, with LMCache's bin schedule scaled
//             to the layer count; per chunk (256 tokens) one 16-bit CDF per (layer, K/V, channel)
//             over the full bin alphabet and one int32 stream length per (layer, K/V, channel),
//             all shipped in the payload; a 32-bit range coder.
//   zfp       ZFP fixed-accuracy mode on each (layer, K/V) [tokens, channels] array widened to
//             fp32, tolerance = t * RMS of that array.
//   kvcodec   this library's frames (encode_into / decode_into) at the given levels.
//
// Thread-safety: a constructed Scheme is immutable; run() may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::eval {

// A KV cache held in float32, in kvcodec's contiguous layout [layers][2][tokens][channels]
// (channels = kv_heads * head_dim, K at index 0 and V at index 1).
struct FloatKV {
  KVShape shape;
  std::vector<float> values;  // shape.elements() floats

  static FloatKV zeros(const KVShape& shape);
  // The [tokens][channels] array of one layer's K (kv = 0) or V (kv = 1).
  float* slice(uint32_t layer, uint32_t kv) noexcept {
    return values.data() + (size_t(layer) * 2 + kv) * slice_size();
  }
  const float* slice(uint32_t layer, uint32_t kv) const noexcept {
    return values.data() + (size_t(layer) * 2 + kv) * slice_size();
  }
  size_t slice_size() const noexcept { return size_t(shape.tokens) * shape.channels(); }
};

// Rounds every value to the nearest fp16 (ties to even), in place: the storage precision of the
// caches being compared. Schemes expect fp16-representable input.
void round_to_f16(FloatKV& kv) noexcept;

// What schemes calibrated per model (kvpca, kvtc) learn from: caches of OTHER contexts than the
// ones measured (the harness takes them from other offsets or another text), with the model's
// RoPE base (keys are cached with RoPE applied at positions 0..tokens-1).
struct Calibration {
  std::vector<FloatKV> caches;
  double rope_theta = 10000.0;
  // When a scheme asks for it (needs_sensitivity): per (layer, K/V), index l * 2 + kv, the mean
  // next-token KL of the calibration contexts' continuations per unit of mean squared error
  // added to that tensor alone (measured with noise, see eval.cpp): what the error of each
  // tensor costs, for rate-distortion allocation.
  std::vector<double> sensitivity;
  // With sensitivity: the continuation queries' mean energy per (layer, kv head, RoPE pair i):
  // q[2i]^2 + q[2i+1]^2 summed over the query heads of the kv head; [layer][kv_head][pair].
  std::vector<double> query_pair_energy;
};

// One setting of one scheme: a point on that scheme's rate-distortion curve.
class Scheme {
 public:
  virtual ~Scheme() = default;

  // Curve name: the family plus any non-default options, e.g. "kivi", "kvcodec:group=10".
  const std::string& name() const noexcept { return name_; }
  // Position along the curve (kvcodec level, CacheGen level, KIVI bits, ZFP tolerance index).
  int level() const noexcept { return level_; }
  // Human-readable setting, e.g. "L4", "2-bit", "tol=rms/8".
  const std::string& setting() const noexcept { return setting_; }
  // True when decoding returns the input bit for bit.
  virtual bool lossless() const noexcept { return false; }
  // True for schemes that must be calibrated (calibrate) before run.
  virtual bool needs_calibration() const noexcept { return false; }
  // True for calibrated schemes that also need Calibration::sensitivity.
  virtual bool needs_sensitivity() const noexcept { return false; }
  // Learns the scheme's per-model side information (e.g. a PCA profile) from `cal`; called once,
  // before any run(). The result is not counted in run()'s bytes unless the scheme says so.
  virtual Status calibrate(const Calibration& cal) { (void)cal; return Status::Ok(); }

  // Encodes `in` (fp16-representable values) into bytes and decodes those bytes into `out`
  // (resized to in's shape). Returns the encoded size in bytes, everything included.
  virtual StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const = 0;

 protected:
  Scheme(std::string name, int level, std::string setting)
      : name_(std::move(name)), level_(level), setting_(std::move(setting)) {}

 private:
  std::string name_;
  int level_;
  std::string setting_;
};

using SchemeList = std::vector<std::unique_ptr<Scheme>>;

// The default list: every family at its default settings.
inline constexpr std::string_view kDefaultSchemes = "fp16,zstd,int8,kivi,cachegen,zfp,kvcodec";

// Parses a comma-separated scheme list. Each entry is a family name, optionally followed by
// ":key=value" options; list values are separated by '/', integer ranges written a-b. The
// options and their defaults:
//   zstd:level=3                          zstd level, 1..19
//   kivi:bits=2/3/4:group=32:residual=0
//   cachegen:levels=1-3:chunk=256
//   cachegen:bins=4-32:chunk=256          continuous sweep: B bins in every layer (curve "cachegen:bins")
//   zfp:tol=4/2/1/0.5/0.25/0.125          tolerances as fractions of each array's RMS
//   kvcodec:levels=0-9:chunk=256:group=1:tables=8:step=layer   (step=channel|layer; the
//                               defaults are those of EncodeOptions)
//   kvcodec:layerlevels=a/b/c   experiment: every layer a frame of its own, at the level plus
//                               a, b or c for the first, middle and last third of the layers
//   kvpca:levels=1-9:rope=undo:basis=profile:tables=8   transform coding (needs calibration): per
//                               (layer, K/V, kv head) PCA of head_dim from a calibrated profile
//                               (keys before RoPE with rope=undo), coefficients coded by kvcodec
//                               frames (one step per (layer, K/V): reverse water-filling);
//                               basis=frame adds the fp16 basis to every context's bytes
//   kvtc:bits=0.5/0.75/1/1.5/2/3/4:rope=undo:sink=4   KVTC-style (needs calibration): the same
//                               PCA basis, integer bits per component by dynamic programming on
//                               the context's variances for an average of `bits` per element,
//                               Gaussian-optimal uniform steps, zstd of the codes; the first
//                               `sink` tokens in fp16. Bytes: codes + per-component mean, sd
//                               (fp16) and bits (u8) + sink tokens + shape header
// The option listing a curve's points (level, bits, levels, tol) is not part of its name.
// Each entry expands to one Scheme per setting. kInvalidArgument names the bad entry.
StatusOr<SchemeList> make_schemes(std::string_view list);

// ---- The range coder of the CacheGen baseline -----------------------------------------------
// A 32-bit range coder (carry-propagating, byte-wise renormalization, as in LZMA) over static
// 16-bit cumulative frequency tables, the kind torchac implements. A table for an alphabet of n
// symbols has n + 1 entries: cdf[0] = 0 < cdf[1] < ... < cdf[n] = 1 << kRangeCdfBits; symbol s
// has frequency cdf[s + 1] - cdf[s] (at least 1).
inline constexpr int kRangeCdfBits = 16;

class RangeEncoder {
 public:
  explicit RangeEncoder(std::vector<uint8_t>& out) : out_(out) {}
  // Codes symbol s of the table (s < cdf.size() - 1; not checked on this hot path).
  void encode(std::span<const uint32_t> cdf, uint32_t s);
  // Writes the final bytes; the encoder must not be used afterwards.
  void finish();

 private:
  void shift_low();
  std::vector<uint8_t>& out_;
  uint64_t low_ = 0;
  uint32_t range_ = 0xFFFFFFFFu;
  uint8_t cache_ = 0;
  uint64_t pending_ = 1;  // bytes held back for carry propagation, the cache byte included
  bool first_ = true;     // the first byte out of the window is always 0 and is not written
};

class RangeDecoder {
 public:
  explicit RangeDecoder(std::span<const uint8_t> in);
  // Decodes one symbol with the same table the encoder used. kCorruptData when the stream is
  // inconsistent with the table or runs out of bytes.
  StatusOr<uint32_t> decode(std::span<const uint32_t> cdf);

 private:
  uint8_t next_byte();
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  size_t overrun_ = 0;
  uint32_t code_ = 0;
  uint32_t range_ = 0xFFFFFFFFu;
};

// Builds CacheGen's shipped table from symbol counts: cdf[k] = round(P(X < k) * (2^16 - n)) + k
// for k = 0..n, where n = counts.size(). Every symbol gets a frequency of at least 1, present or
// not, so any symbol of the alphabet can be coded.
std::vector<uint32_t> cachegen_cdf(std::span<const uint32_t> counts);

}  // namespace kvcodec::eval
