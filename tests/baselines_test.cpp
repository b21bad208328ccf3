// Baselines: each scheme round-trips within its own error bound and its size is what its
// layout says; the range coder round-trips and codes close to the entropy.
#include "kvcodec/baselines.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include "kvcodec/config.hpp"
#include "common/dtype.hpp"
#include "test_util.hpp"

namespace kvcodec::eval {
namespace {

float to_f16(float v) { return detail::f16_to_f32(detail::f32_to_f16(v)); }

// A cache with KV-like structure: per-channel offsets and scales, a few outlier channels, and
// values correlated along tokens. Shapes deliberately not multiples of 32 or 256.
FloatKV make_cache(const KVShape& shape, uint32_t seed) {
  FloatKV kv = FloatKV::zeros(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t c_count = shape.channels();
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      std::vector<float> centre(c_count), scale(c_count), walk(c_count, 0.0f);
      for (size_t c = 0; c < c_count; ++c) {
        centre[c] = normal(rng);
        scale[c] = (c % 7 == 3 ? 8.0f : 1.0f) * std::exp(0.5f * normal(rng));
      }
      float* x = kv.slice(l, k);
      for (uint32_t t = 0; t < shape.tokens; ++t) {
        for (size_t c = 0; c < c_count; ++c) {
          walk[c] = 0.9f * walk[c] + 0.45f * normal(rng);
          x[t * c_count + c] = to_f16(centre[c] + scale[c] * walk[c]);
        }
      }
    }
  }
  return kv;
}

const KVShape kShape{3, 300, 2, 12};  // 24 channels, 300 tokens

SchemeList schemes_or_die(std::string_view list) {
  auto s = make_schemes(list);
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return s.ok() ? std::move(*s) : SchemeList{};
}

// ---- Range coder -----------------------------------------------------------------------------

TEST(RangeCoder, RoundTripsAndCodesNearTheEntropy) {
  std::mt19937 rng(7);
  for (int alphabet : {2, 5, 17, 33}) {
    // A skewed distribution and a table built from the exact counts of the message.
    std::vector<double> p(alphabet);
    for (int s = 0; s < alphabet; ++s) p[s] = std::exp(-0.4 * s);
    std::discrete_distribution<uint32_t> dist(p.begin(), p.end());
    std::vector<uint32_t> msg(20000), counts(alphabet, 0);
    for (uint32_t& s : msg) ++counts[s = dist(rng)];
    const std::vector<uint32_t> cdf = cachegen_cdf(counts);

    std::vector<uint8_t> bytes;
    RangeEncoder enc(bytes);
    for (uint32_t s : msg) enc.encode(cdf, s);
    enc.finish();

    RangeDecoder dec(bytes);
    for (size_t i = 0; i < msg.size(); ++i) {
      auto s = dec.decode(cdf);
      ASSERT_TRUE(s.ok()) << s.status().to_string();
      ASSERT_EQ(*s, msg[i]) << "symbol " << i << " of alphabet " << alphabet;
    }
    // Cost of the message under the table, in bytes: the coder may add only its flush.
    double ideal_bits = 0;
    for (uint32_t s : msg) ideal_bits -= std::log2(double(cdf[s + 1] - cdf[s]) / 65536.0);
    EXPECT_LE(double(bytes.size()), ideal_bits / 8 * 1.001 + 5) << "alphabet " << alphabet;
    EXPECT_GE(double(bytes.size()), ideal_bits / 8 * 0.999) << "alphabet " << alphabet;
  }
}

TEST(RangeCoder, CarriesPropagateThroughRunsOfFF) {
  // Symbols at the very top of the range push carries through pending 0xFF bytes.
  const std::vector<uint32_t> cdf = {0, 1, 65535, 65536};
  std::mt19937 rng(3);
  std::vector<uint32_t> msg(5000);
  for (uint32_t& s : msg) s = rng() % 8 == 0 ? 0 : (rng() % 2 ? 1 : 2);
  std::vector<uint8_t> bytes;
  RangeEncoder enc(bytes);
  for (uint32_t s : msg) enc.encode(cdf, s);
  enc.finish();
  RangeDecoder dec(bytes);
  for (uint32_t s : msg) {
    auto d = dec.decode(cdf);
    ASSERT_TRUE(d.ok());
    ASSERT_EQ(*d, s);
  }
}

TEST(RangeCoder, TruncatedStreamIsAnError) {
  const std::vector<uint32_t> cdf = cachegen_cdf(std::vector<uint32_t>{5, 3, 2, 1});
  std::vector<uint8_t> bytes;
  RangeEncoder enc(bytes);
  for (int i = 0; i < 400; ++i) enc.encode(cdf, uint32_t(i % 4));
  enc.finish();
  bytes.resize(bytes.size() - 2);
  RangeDecoder dec(bytes);
  bool failed = false;
  for (int i = 0; i < 400 && !failed; ++i) failed = !dec.decode(cdf).ok();
  EXPECT_TRUE(failed);
}

TEST(RangeCoder, MalformedTableIsAnError) {
  const std::vector<uint8_t> bytes(16, 0x55);
  RangeDecoder dec(bytes);
  const std::vector<uint32_t> flat = {0, 0, 0};  // no symbol has a frequency
  EXPECT_FALSE(dec.decode(flat).ok());
}

TEST(CacheGenCdf, MatchesTheShippedFormula) {
  // cdf[k] = round(P(X < k) * (65536 - n)) + k with n = 3 symbols.
  const std::vector<uint32_t> cdf = cachegen_cdf(std::vector<uint32_t>{2, 0, 2});
  ASSERT_EQ(cdf.size(), 4u);
  EXPECT_EQ(cdf[0], 0u);
  EXPECT_EQ(cdf[1], uint32_t(std::nearbyint(0.5 * 65533)) + 1);
  EXPECT_EQ(cdf[2], uint32_t(std::nearbyint(0.5 * 65533)) + 2);  // the absent symbol keeps 1
  EXPECT_EQ(cdf[3], 65536u);
}

// ---- Scheme list -----------------------------------------------------------------------------

TEST(MakeSchemes, ExpandsEntriesIntoSettings) {
  SchemeList all = schemes_or_die(kDefaultSchemes);
  // fp16, zstd, int8, kivi x3, cachegen x3, zfp x6, kvcodec x10.
  EXPECT_EQ(all.size(), 1u + 1 + 1 + 3 + 3 + 6 + 10);

  SchemeList v = schemes_or_die("kvcodec:group=10:levels=3-4,kivi:bits=2:residual=16");
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[0]->name(), "kvcodec:group=10");
  EXPECT_EQ(v[0]->level(), 3);
  EXPECT_EQ(v[1]->level(), 4);
  EXPECT_EQ(v[2]->name(), "kivi:residual=16");
  EXPECT_EQ(v[2]->setting(), "2-bit");
}

TEST(MakeSchemes, RejectsBadEntries) {
  for (const char* bad : {"", "fp16,", "foo", "fp16:x=1", "kivi:bits=9", "kivi:bits", "kvcodec:levels=4-2",
                          "kvcodec:levels=10", "kvcodec:step=token", "zfp:tol=0", "zfp:tol=a", "cachegen:levels=4",
                          "kvcodec:layerlevels=0/1", "zstd:level=3:level=4"}) {
    auto s = make_schemes(bad);
    EXPECT_FALSE(s.ok()) << "accepted '" << bad << "'";
    if (!s.ok()) EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  }
}

// ---- Schemes ---------------------------------------------------------------------------------

TEST(Fp16AndZstd, AreLosslessAndSizedExactly) {
  const FloatKV in = make_cache(kShape, 1);
  FloatKV out;
  SchemeList s = schemes_or_die("fp16,zstd");
  auto fp16 = s[0]->run(in, out);
  ASSERT_TRUE(fp16.ok());
  EXPECT_EQ(*fp16, 16 + 2 * kShape.elements());  // shape header + fp16 values
  EXPECT_EQ(out.values, in.values);
  EXPECT_TRUE(s[0]->lossless());

  auto zstd = s[1]->run(in, out);
  ASSERT_TRUE(zstd.ok());
  EXPECT_EQ(out.values, in.values);
  EXPECT_LT(*zstd, *fp16);  // smooth fp16 data compresses a little
  EXPECT_TRUE(s[1]->lossless());
}

TEST(Int8, ErrorWithinHalfAStepAndSizeFromLayout) {
  const FloatKV in = make_cache(kShape, 2);
  FloatKV out;
  SchemeList s = schemes_or_die("int8");
  auto bytes = s[0]->run(in, out);
  ASSERT_TRUE(bytes.ok());
  const size_t c_count = kShape.channels();
  const size_t rows = size_t(kShape.layers) * 2 * kShape.tokens;
  EXPECT_EQ(*bytes, 16 + rows * (2 + c_count));  // per row: fp16 scale + one byte per channel
  for (size_t r = 0; r < rows; ++r) {
    float amax = 0;
    for (size_t c = 0; c < c_count; ++c) amax = std::max(amax, std::fabs(in.values[r * c_count + c]));
    const float half_step = amax / 127 * (1 + 1.0f / 1024) / 2;  // scale rounded up to fp16
    for (size_t c = 0; c < c_count; ++c) {
      const size_t i = r * c_count + c;
      ASSERT_LE(std::fabs(out.values[i] - in.values[i]), half_step * 1.0001f + 1e-7f) << "row " << r;
    }
  }
}

TEST(Kivi, ErrorWithinHalfAStepPerGroupAndSizeFromLayout) {
  const FloatKV in = make_cache(kShape, 3);
  const uint32_t c_count = uint32_t(kShape.channels());
  for (int bits : {2, 4}) {
    for (uint32_t residual : {0u, 20u}) {
      const uint32_t group = 32, tq = kShape.tokens - residual;
      SchemeList s = schemes_or_die("kivi:bits=" + std::to_string(bits) + ":residual=" + std::to_string(residual));
      FloatKV out;
      auto bytes = s[0]->run(in, out);
      ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
      // Keys: per channel, ceil(tq / 32) token groups; values: per token, ceil(C / 32) groups.
      const uint64_t groups = uint64_t(kShape.layers) * (c_count * ((tq + group - 1) / group) +
                                                        uint64_t(tq) * ((c_count + group - 1) / group));
      const uint64_t quantized = uint64_t(kShape.layers) * 2 * tq * c_count;
      const uint64_t fp16_tail = uint64_t(kShape.layers) * 2 * residual * c_count;
      EXPECT_EQ(*bytes, 16 + 4 * groups + (quantized * bits + 7) / 8 + 2 * fp16_tail);

      const float levels = float((1 << bits) - 1);
      for (uint32_t l = 0; l < kShape.layers; ++l) {
        const float* x = in.slice(l, 0);
        const float* y = out.slice(l, 0);
        for (uint32_t c = 0; c < c_count; ++c) {  // key groups along tokens
          for (uint32_t t0 = 0; t0 < tq; t0 += group) {
            float lo = INFINITY, hi = -INFINITY;
            for (uint32_t t = t0; t < std::min(tq, t0 + group); ++t) {
              lo = std::min(lo, x[t * c_count + c]);
              hi = std::max(hi, x[t * c_count + c]);
            }
            const float half_step = (hi - lo) / levels * (1 + 1.0f / 1024) / 2;
            for (uint32_t t = t0; t < std::min(tq, t0 + group); ++t)
              ASSERT_LE(std::fabs(y[t * c_count + c] - x[t * c_count + c]), half_step * 1.0001f + 1e-6f);
          }
        }
        const float* xv = in.slice(l, 1);
        const float* yv = out.slice(l, 1);
        for (uint32_t t = 0; t < tq; ++t) {  // value groups along channels
          for (uint32_t c0 = 0; c0 < c_count; c0 += group) {
            const uint32_t c1 = std::min(c_count, c0 + group);
            const auto [lo, hi] = std::minmax_element(xv + t * c_count + c0, xv + t * c_count + c1);
            const float half_step = (*hi - *lo) / levels * (1 + 1.0f / 1024) / 2;
            for (uint32_t c = c0; c < c1; ++c)
              ASSERT_LE(std::fabs(yv[t * c_count + c] - xv[t * c_count + c]), half_step * 1.0001f + 1e-6f);
          }
        }
        for (uint32_t kv = 0; kv < 2; ++kv)  // the residual window is exact
          for (size_t i = size_t(tq) * c_count; i < in.slice_size(); ++i)
            ASSERT_EQ(out.slice(l, kv)[i], in.slice(l, kv)[i]);
      }
    }
  }
}

TEST(CacheGen, ErrorWithinHalfAStepPerTokenAndTablesCounted) {
  const FloatKV in = make_cache(kShape, 4);
  const size_t c_count = kShape.channels();
  SchemeList s = schemes_or_die("cachegen");
  ASSERT_EQ(s.size(), 3u);
  uint64_t previous = 0;
  for (const auto& scheme : s) {
    FloatKV out;
    auto bytes = scheme->run(in, out);
    ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
    // Fixed part per 256-token chunk (300 tokens: chunks of 256 and 44): fp16 max per
    // (layer, K/V, token), B + 1 16-bit CDF entries (B = the largest bin count: 16 at level 1,
    // 32 at levels 2 and 3) and one u32 length per (layer, K/V, channel). Every stream flushes
    // at least 4 bytes.
    const uint64_t streams = uint64_t(kShape.layers) * 2 * c_count;
    const uint64_t entries = scheme->level() == 1 ? 17 : 33;
    const uint64_t fixed = 16 + 2 * uint64_t(kShape.layers) * 2 * kShape.tokens + 2 * streams * (entries * 2 + 4);
    EXPECT_GE(*bytes, fixed + 2 * streams * 4);
    EXPECT_LE(*bytes, fixed + 2 * streams * 6 + kShape.elements() * 5 / 8);  // at most 5 bits per symbol
    EXPECT_GT(*bytes, previous) << "levels must grow in size";
    previous = *bytes;

    // Level 3 uses 32 bins everywhere: Q = 15, error <= max|x| / 30 per (layer, K/V, token).
    // Levels 1-2 use at least 12 bins: Q >= 5.
    const float q = scheme->level() == 3 ? 15.0f : 5.0f;
    for (size_t r = 0; r < size_t(kShape.layers) * 2 * kShape.tokens; ++r) {
      float amax = 0;
      for (size_t c = 0; c < c_count; ++c) amax = std::max(amax, std::fabs(in.values[r * c_count + c]));
      for (size_t c = 0; c < c_count; ++c) {
        const size_t i = r * c_count + c;
        ASSERT_LE(std::fabs(out.values[i] - in.values[i]), amax / (2 * q) * 1.0001f + 1e-6f) << "row " << r;
      }
    }
  }
}

TEST(CacheGen, SmallerChunksPayMoreTables) {
  const FloatKV in = make_cache(kShape, 5);
  FloatKV out;
  SchemeList s = schemes_or_die("cachegen:levels=2:chunk=64,cachegen:levels=2:chunk=256");
  auto small = s[0]->run(in, out);
  auto large = s[1]->run(in, out);
  ASSERT_TRUE(small.ok() && large.ok());
  EXPECT_GT(*small, *large);
}

// CacheGen as LMCache ships it (LMCache/LMCache, lmcache/storage_backend/serde/
// cachegen_encoder.py and cachegen_basics.py; compared in docs/results/quality.md): for each
// (layer, K/V, token), m = max |x| over the channels (heads merged), Q = bins / 2 - 1,
// symbol = round(x * Q / m + Q); LMCache's bins for its 32-layer models (CacheGenConfig, the
// 7B family): keys 32 bins in layers 0-9 and 16 from layer 10 on, values 32 in layers 0-1 and
// 16 after; the decoder returns (symbol - Q) * m / Q. Level 2 must be exactly that on a
// 32-layer cache, and its documented scaling to 5 layers (keys 2/3, values 1).
int lmcache_bins(uint32_t kv, uint32_t layer, uint32_t layers) {
  if (layers == 32) return kv == 0 ? (layer < 10 ? 32 : 16) : (layer < 2 ? 32 : 16);
  return kv == 0 ? (layer < 2 ? 32 : 16) : (layer < 1 ? 32 : 16);  // 5 layers, as documented
}

TEST(CacheGen, Level2IsLMCachesQuantizationAndBinSchedule) {
  SchemeList s = schemes_or_die("cachegen:levels=2");
  ASSERT_EQ(s.size(), 1u);
  for (uint32_t layers : {32u, 5u}) {
    const KVShape shape{layers, 20, 2, 8};
    const FloatKV in = make_cache(shape, 9);
    FloatKV out;
    auto bytes = s[0]->run(in, out);
    ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
    const size_t C = shape.channels();
    size_t checked = 0;
    for (uint32_t l = 0; l < layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const double q = lmcache_bins(kv, l, layers) / 2 - 1;
        for (uint32_t t = 0; t < shape.tokens; ++t) {
          const float* x = in.slice(l, kv) + size_t(t) * C;
          const float* y = out.slice(l, kv) + size_t(t) * C;
          double m = 0;
          for (size_t c = 0; c < C; ++c) m = std::max(m, std::fabs(double(x[c])));
          for (size_t c = 0; c < C; ++c, ++checked) {
            const double symbol = std::nearbyint(double(x[c]) * q / m + q);
            ASSERT_NEAR(y[c], (symbol - q) * m / q, 1e-5 * m)
                << layers << " layers: layer " << l << " kv " << kv << " token " << t << " channel " << c;
          }
        }
      }
    EXPECT_EQ(checked, shape.elements());
    // Per 256-token chunk (one here): fp16 maxima per (layer, K/V, token), a 33-entry 16-bit
    // CDF (LMCache's value_range 32 + 1) and an int32 stream length per (layer, K/V, channel),
    // after a 16-byte shape header.
    const uint64_t fixed = 16 + 2 * uint64_t(layers) * 2 * shape.tokens + uint64_t(layers) * 2 * C * (33 * 2 + 4);
    EXPECT_GE(*bytes, fixed);
    EXPECT_LE(*bytes, fixed + uint64_t(layers) * 2 * C * 8 + shape.elements());
  }
}

TEST(Zfp, ErrorWithinTheTolerance) {
  const FloatKV in = make_cache(kShape, 6);
  SchemeList s = schemes_or_die("zfp:tol=1/0.125");
  uint64_t previous = 0;
  for (size_t k = 0; k < s.size(); ++k) {
    const double fraction = k == 0 ? 1.0 : 0.125;
    FloatKV out;
    auto bytes = s[k]->run(in, out);
    ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
    EXPECT_GT(*bytes, previous);  // a tighter tolerance costs more
    previous = *bytes;
    for (uint32_t l = 0; l < kShape.layers; ++l) {
      for (uint32_t kv = 0; kv < 2; ++kv) {
        double sum2 = 0;
        for (size_t i = 0; i < in.slice_size(); ++i) sum2 += double(in.slice(l, kv)[i]) * in.slice(l, kv)[i];
        const double tol = fraction * std::sqrt(sum2 / double(in.slice_size()));
        for (size_t i = 0; i < in.slice_size(); ++i)
          ASSERT_LE(std::fabs(out.slice(l, kv)[i] - in.slice(l, kv)[i]), tol);
      }
    }
  }
}

TEST(Kvcodec, LevelZeroIsLosslessAndLossyLevelsShrink) {
  const FloatKV in = make_cache(kShape, 8);
  SchemeList s = schemes_or_die("kvcodec:levels=0/2/6,kvcodec:levels=4:layerlevels=0/1/2");
  FloatKV out;
  auto l0 = s[0]->run(in, out);
  ASSERT_TRUE(l0.ok()) << l0.status().to_string();
  EXPECT_EQ(out.values, in.values);
  auto l2 = s[1]->run(in, out);
  ASSERT_TRUE(l2.ok());
  auto l6 = s[2]->run(in, out);
  ASSERT_TRUE(l6.ok());
  EXPECT_LT(*l2, *l0);
  EXPECT_LT(*l6, *l2);
  // Per-layer frames: three layers at levels 4, 5, 6.
  auto per_layer = s[3]->run(in, out);
  ASSERT_TRUE(per_layer.ok()) << per_layer.status().to_string();
  EXPECT_EQ(s[3]->name(), "kvcodec:layerlevels=0/1/2");
  EXPECT_NE(out.values, in.values);
}

// ---- Continuous CacheGen sweep and the calibrated transform schemes (issue 10) -------------

double rel_error(const FloatKV& a, const FloatKV& b) {
  double e = 0, r = 0;
  for (size_t i = 0; i < a.values.size(); ++i) {
    const double d = double(a.values[i]) - b.values[i];
    e += d * d;
    r += double(a.values[i]) * a.values[i];
  }
  return std::sqrt(e / r);
}

TEST(CacheGen, ContinuousBinsSweepShrinksTheErrorAsBinsGrow) {
  const FloatKV in = make_cache(kShape, 21);
  SchemeList s = schemes_or_die("cachegen:bins=4/8/16/32");
  ASSERT_EQ(s.size(), 4u);
  double last_err = 1e9;
  uint64_t last_bytes = 0;
  for (const auto& scheme : s) {
    EXPECT_EQ(scheme->name(), "cachegen:bins");
    FloatKV out;
    auto bytes = scheme->run(in, out);
    ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
    const double err = rel_error(in, out);
    EXPECT_LT(err, last_err) << scheme->setting();
    EXPECT_GT(*bytes, last_bytes) << scheme->setting();
    last_err = err;
    last_bytes = *bytes;
  }
  EXPECT_FALSE(make_schemes("cachegen:bins=8:levels=2").ok());
  EXPECT_FALSE(make_schemes("cachegen:bins=3").ok());
}

// Caches whose channels inside a head are strongly correlated: each head's vector is a random
// mix of a few latent factors plus a little noise, as PCA assumes.
FloatKV make_correlated_cache(const KVShape& shape, uint32_t seed, uint32_t mix_seed) {
  FloatKV kv = FloatKV::zeros(shape);
  std::mt19937 rng(seed), mix_rng(mix_seed);  // the mixing matrices are the "model"
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const uint32_t d = shape.head_dim, C = uint32_t(shape.channels()), factors = 3;
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t h = 0; h < shape.kv_heads; ++h) {
        std::vector<float> mix(size_t(d) * factors);
        for (float& m : mix) m = normal(mix_rng);
        for (uint32_t t = 0; t < shape.tokens; ++t) {
          float z[factors];
          for (float& f : z) f = normal(rng);
          for (uint32_t i = 0; i < d; ++i) {
            float v = 0.05f * normal(rng);
            for (uint32_t f = 0; f < factors; ++f) v += mix[size_t(i) * factors + f] * z[f];
            kv.slice(l, k)[size_t(t) * C + h * d + i] = to_f16(v);
          }
        }
      }
  return kv;
}

Calibration calibration_of(const KVShape& shape) {
  Calibration cal;
  for (uint32_t i = 0; i < 3; ++i) cal.caches.push_back(make_correlated_cache(shape, 100 + i, 7));
  return cal;
}

TEST(Kvpca, NeedsCalibrationAndSavesBitsOnCorrelatedChannels) {
  const KVShape shape{2, 256, 2, 16};
  const FloatKV in = make_correlated_cache(shape, 1, 7);
  SchemeList s = schemes_or_die("kvcodec:levels=5,kvpca:levels=5:rope=keep,kvpca:levels=5:rope=keep:basis=frame");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_FALSE(s[0]->needs_calibration());
  EXPECT_TRUE(s[1]->needs_calibration());
  FloatKV out;
  EXPECT_FALSE(s[1]->run(in, out).ok());  // not calibrated
  const Calibration cal = calibration_of(shape);
  ASSERT_TRUE(s[1]->calibrate(cal).ok());
  ASSERT_TRUE(s[2]->calibrate(cal).ok());
  auto plain = s[0]->run(in, out);
  ASSERT_TRUE(plain.ok());
  const double plain_err = rel_error(in, out);
  auto pca = s[1]->run(in, out);
  ASSERT_TRUE(pca.ok()) << pca.status().to_string();
  const double pca_err = rel_error(in, out);
  EXPECT_LT(*pca, *plain * 0.8) << "3 factors in 16 channels: the transform must pay";
  EXPECT_LT(pca_err, plain_err * 1.5);
  auto framed = s[2]->run(in, out);
  ASSERT_TRUE(framed.ok());
  EXPECT_EQ(*framed, *pca + uint64_t(2 * 2 * 2) * (16 * 16 + 16) * 2);  // fp16 basis and mean per head
}

TEST(Kvpca, UndoingRopeRoundTripsTheKeys) {
  // At the finest level the round trip through un-RoPE, PCA and back is accurate.
  const KVShape shape{1, 128, 1, 8};
  const FloatKV in = make_correlated_cache(shape, 2, 9);
  SchemeList s = schemes_or_die("kvpca:levels=1");
  Calibration cal;
  cal.caches.push_back(make_correlated_cache(shape, 3, 9));
  ASSERT_TRUE(s[0]->calibrate(cal).ok());
  FloatKV out;
  ASSERT_TRUE(s[0]->run(in, out).ok());
  EXPECT_LT(rel_error(in, out), 0.02);
}

TEST(Kvtc, MoreBitsLessErrorAndSinkTokensExact) {
  const KVShape shape{2, 200, 2, 16};
  const FloatKV in = make_correlated_cache(shape, 4, 7);
  SchemeList s = schemes_or_die("kvtc:bits=0.5/1/2/4:rope=keep:sink=4");
  ASSERT_EQ(s.size(), 4u);
  const Calibration cal = calibration_of(shape);
  double last_err = 1e9;
  uint64_t last_bytes = 0;
  for (const auto& scheme : s) {
    FloatKV out;
    EXPECT_FALSE(scheme->run(in, out).ok());  // not calibrated yet
    ASSERT_TRUE(scheme->calibrate(cal).ok());
    auto bytes = scheme->run(in, out);
    ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
    const double err = rel_error(in, out);
    EXPECT_LT(err, last_err) << scheme->setting();
    EXPECT_GT(*bytes, last_bytes) << scheme->setting();
    // Sink tokens, per-component side information and the shape header are counted.
    EXPECT_GE(*bytes, uint64_t(2 * 2 * 4 * 32 * 2 + 16 + 2 * 2 * 2 * 16 * 5));
    for (uint32_t l = 0; l < 2; ++l)
      for (uint32_t k = 0; k < 2; ++k)
        for (size_t i = 0; i < 4 * 32; ++i) ASSERT_EQ(out.slice(l, k)[i], in.slice(l, k)[i]);
    last_err = err;
    last_bytes = *bytes;
  }
  EXPECT_LT(last_err, 0.05);
}

TEST(Kvtc, OutlierTokensAreNotClippedByDefault) {
  // One token 30x the others in every channel of one (layer, K/V, head): the min..max grid (the
  // default) keeps it to a small error; range=gauss clips it at about 4 deviations.
  const KVShape shape{1, 200, 1, 16};
  FloatKV in = make_correlated_cache(shape, 5, 7);
  float* row = in.slice(0, 0) + size_t(100) * shape.channels();
  for (uint32_t c = 0; c < shape.head_dim; ++c) row[c] *= 30.0f;
  SchemeList s = schemes_or_die("kvtc:bits=6:rope=keep,kvtc:bits=6:rope=keep:range=gauss");
  ASSERT_EQ(s.size(), 2u);
  const Calibration cal = calibration_of(shape);
  std::vector<double> row_err;
  for (const auto& scheme : s) {
    ASSERT_TRUE(scheme->calibrate(cal).ok());
    FloatKV out;
    ASSERT_TRUE(scheme->run(in, out).ok());
    const float* got = out.slice(0, 0) + size_t(100) * shape.channels();
    double e = 0, n = 0;
    for (uint32_t c = 0; c < shape.head_dim; ++c) {
      e += double(got[c] - row[c]) * (got[c] - row[c]);
      n += double(row[c]) * row[c];
    }
    row_err.push_back(std::sqrt(e / n));
  }
  EXPECT_LT(row_err[0], 0.05);
  EXPECT_GT(row_err[1], 0.3);
}

}  // namespace
}  // namespace kvcodec::eval
