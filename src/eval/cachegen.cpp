// CacheGen as it ships (LMCache's "cachegen" serde; facts in ../shared/design/cachegen.md).
//
// Quantization: for each (layer, K/V, token), over all channels (heads merged),
//   m = max|x|,  Q = bins/2 - 1,  q = round(x * Q / m + Q) in [0, 2Q],  x_hat = (q - Q) * m / Q.
// Bins per layer: the CacheGen repository's three levels for 32-layer models, with layer
// boundaries scaled to the model (see bins_for_layer). Level 2 is LMCache's only setting. The
// continuous sweep (cachegen:bins=4-32) uses one bin count B in every layer and for K and V, with
// tables over B symbols (smaller than LMCache's 33-entry tables: it favours CacheGen), so its
// rate-distortion curve has a point every bin count instead of three far-apart levels.
// Entropy coding, per chunk of `chunk_tokens` tokens: one CDF per (layer, K/V, channel) built
// from the chunk itself over the full alphabet of the largest bin count (B symbols, B + 1 16-bit
// entries), and one range-coded stream per (layer, K/V, channel) whose int32 length is shipped.
//
// Stream layout: shape header, then per chunk:
//   maxes   fp16 [layers][2][chunk tokens]
//   cdfs    u16  [layers][2][channels][B_kv + 1]   (the final entry 2^16 is stored as 0, as an
//                                                    int16 tensor holds it)
//   lengths u32  [layers][2][channels]
//   streams the range-coded bytes, in the same order.
// The bin schedule is not stored: as shipped, the decoder rebuilds it from the model.
#include <algorithm>
#include <cmath>
#include <string>

#include "bytes.hpp"
#include "schemes.hpp"

namespace kvcodec::eval::internal {
namespace {

// Bins of the CacheGen repository's levels for 32-layer models: keys in three layer ranges
// split at layers 10 and 20, values in two split at layer 2.
struct BinSchedule {
  int key[3];
  int value[2];
};
constexpr BinSchedule kLevels[3] = {
    {{16, 16, 12}, {16, 12}},  // level 1
    {{32, 16, 16}, {32, 16}},  // level 2 (LMCache)
    {{32, 32, 32}, {32, 32}},  // level 3
};
constexpr uint32_t kReferenceLayers = 32;

// A 32-layer boundary scaled to `layers`, rounded to nearest, at least one layer.
uint32_t scaled_boundary(uint32_t boundary, uint32_t layers) {
  uint32_t b = uint32_t((uint64_t(boundary) * layers * 2 + kReferenceLayers) / (2 * kReferenceLayers));
  return std::clamp<uint32_t>(b, 1, layers);
}

// level > 0: the repository's schedule of that level; level <= 0: -level bins in every layer
// (the continuous sweep, cachegen:bins=...).
int bins_for_layer(int level, uint32_t kv, uint32_t layer, uint32_t layers) {
  if (level <= 0) return -level;
  const BinSchedule& s = kLevels[level - 1];
  if (kv == 0) {
    if (layer < scaled_boundary(10, layers)) return s.key[0];
    if (layer < scaled_boundary(20, layers)) return s.key[1];
    return s.key[2];
  }
  return layer < scaled_boundary(2, layers) ? s.value[0] : s.value[1];
}

int max_bins(int level, uint32_t kv, uint32_t layers) {
  int b = 0;
  for (uint32_t l = 0; l < layers; ++l) b = std::max(b, bins_for_layer(level, kv, l, layers));
  return b;
}

class CacheGenScheme final : public Scheme {
 public:
  // level 1..3: a shipped schedule; level <= 0: -level bins in every layer (setting "B bins").
  CacheGenScheme(std::string name, int level, uint32_t chunk_tokens)
      : Scheme(std::move(name), level > 0 ? level : -level,
               level > 0 ? level_label(level) : std::to_string(-level) + " bins"),
        level_(level), chunk_tokens_(chunk_tokens) {}

  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    std::vector<uint8_t> bytes;
    ByteWriter w(bytes);
    write_shape(w, in.shape);
    for (uint32_t t0 = 0; t0 < in.shape.tokens; t0 += chunk_tokens_)
      encode_chunk(in, t0, std::min(in.shape.tokens, t0 + chunk_tokens_), bytes);
    KVCODEC_RETURN_IF_ERROR(decode(bytes, out));
    return uint64_t(bytes.size());
  }

 private:
  void encode_chunk(const FloatKV& in, uint32_t t0, uint32_t t1, std::vector<uint8_t>& out) const {
    const KVShape& sh = in.shape;
    const uint32_t c_count = uint32_t(sh.channels());
    const uint32_t n = t1 - t0;
    ByteWriter w(out);
    // Quantize, writing the per-token maxima; codes kept as [layer][kv][token][channel].
    std::vector<uint8_t> q(size_t(sh.layers) * 2 * n * c_count);
    for (uint32_t l = 0; l < sh.layers; ++l) {
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const float qm = float(bins_for_layer(level_, kv, l, sh.layers) / 2 - 1);
        for (uint32_t t = 0; t < n; ++t) {
          const float* x = in.slice(l, kv) + size_t(t0 + t) * c_count;
          float amax = 0.0f;
          for (uint32_t c = 0; c < c_count; ++c) amax = std::max(amax, std::fabs(x[c]));
          const float m = f16_ceil(amax);  // shipped as the cache's fp16
          w.f16(m);
          const float factor = m > 0.0f ? qm / m : 0.0f;
          uint8_t* qrow = q.data() + ((size_t(l) * 2 + kv) * n + t) * c_count;
          for (uint32_t c = 0; c < c_count; ++c)
            qrow[c] = uint8_t(std::clamp(std::nearbyint(x[c] * factor + qm), 0.0f, 2.0f * qm));
        }
      }
    }
    // Tables, then streams (lengths are written before the streams they describe).
    std::vector<std::vector<uint32_t>> cdfs;
    for (uint32_t l = 0; l < sh.layers; ++l) {
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const int alphabet = max_bins(level_, kv, sh.layers);
        for (uint32_t c = 0; c < c_count; ++c) {
          std::vector<uint32_t> counts(alphabet, 0);
          const uint8_t* qs = q.data() + (size_t(l) * 2 + kv) * n * c_count + c;
          for (uint32_t t = 0; t < n; ++t) ++counts[qs[size_t(t) * c_count]];
          cdfs.push_back(cachegen_cdf(counts));
          for (uint32_t e : cdfs.back()) w.u16(uint16_t(e));
        }
      }
    }
    std::vector<uint8_t> streams;
    std::vector<uint32_t> lengths;
    size_t stream = 0;
    for (uint32_t l = 0; l < sh.layers; ++l) {
      for (uint32_t kv = 0; kv < 2; ++kv) {
        for (uint32_t c = 0; c < c_count; ++c, ++stream) {
          const size_t before = streams.size();
          RangeEncoder enc(streams);
          const uint8_t* qs = q.data() + (size_t(l) * 2 + kv) * n * c_count + c;
          for (uint32_t t = 0; t < n; ++t) enc.encode(cdfs[stream], qs[size_t(t) * c_count]);
          enc.finish();
          lengths.push_back(uint32_t(streams.size() - before));
        }
      }
    }
    for (uint32_t len : lengths) w.u32(len);
    w.bytes(streams);
  }

  Status decode(std::span<const uint8_t> bytes, FloatKV& out) const {
    ByteReader r(bytes);
    KVCODEC_ASSIGN_OR_RETURN(KVShape sh, read_shape(r));
    out = FloatKV::zeros(sh);
    const uint32_t c_count = uint32_t(sh.channels());
    const size_t streams_per_chunk = size_t(sh.layers) * 2 * c_count;
    for (uint32_t t0 = 0; t0 < sh.tokens; t0 += chunk_tokens_) {
      const uint32_t n = std::min(sh.tokens, t0 + chunk_tokens_) - t0;
      std::vector<float> maxes(size_t(sh.layers) * 2 * n);
      for (float& m : maxes) m = r.f16();
      std::vector<std::vector<uint32_t>> cdfs(streams_per_chunk);
      for (size_t s = 0; s < streams_per_chunk; ++s) {
        const uint32_t kv = uint32_t((s / c_count) % 2);
        const int alphabet = max_bins(level_, kv, sh.layers);
        cdfs[s].resize(alphabet + 1);
        for (uint32_t& e : cdfs[s]) e = r.u16();
        cdfs[s].back() = 1u << kRangeCdfBits;  // stored as 0 (2^16 in 16 bits)
      }
      std::vector<uint32_t> lengths(streams_per_chunk);
      for (uint32_t& len : lengths) len = r.u32();
      if (!r.ok()) return CorruptData("cachegen: truncated chunk head");
      for (size_t s = 0; s < streams_per_chunk; ++s) {
        const uint32_t l = uint32_t(s / (2 * c_count));
        const uint32_t kv = uint32_t((s / c_count) % 2);
        const uint32_t c = uint32_t(s % c_count);
        const float qm = float(bins_for_layer(level_, kv, l, sh.layers) / 2 - 1);
        std::span<const uint8_t> body = r.bytes(lengths[s]);
        if (!r.ok()) return CorruptData("cachegen: truncated stream");
        RangeDecoder dec(body);
        float* y = out.slice(l, kv) + size_t(t0) * c_count + c;
        for (uint32_t t = 0; t < n; ++t) {
          KVCODEC_ASSIGN_OR_RETURN(uint32_t sym, dec.decode(cdfs[s]));
          const float m = maxes[(size_t(l) * 2 + kv) * n + t];
          y[size_t(t) * c_count] = m > 0.0f ? (float(sym) - qm) * m / qm : 0.0f;
        }
      }
    }
    return r.finish("cachegen");
  }

  int level_;
  uint32_t chunk_tokens_;
};

}  // namespace

std::unique_ptr<Scheme> make_cachegen(std::string name, int level, uint32_t chunk_tokens) {
  return std::make_unique<CacheGenScheme>(std::move(name), level, chunk_tokens);
}

}  // namespace kvcodec::eval::internal
