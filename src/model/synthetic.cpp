// Synthetic KV caches with fitted statistics (see src/model/include/kvcodec/synthetic.hpp).
#include "kvcodec/synthetic.hpp"

#include <algorithm>
#include <cmath>
#include <new>
#include <thread>

#include "common/dtype.hpp"
#include "common/parallel.hpp"

namespace kvcodec {
namespace {

constexpr uint32_t kMinFitTokens = 16;

// ---- random numbers -------------------------------------------------------------------------

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// xoshiro256+ (Blackman and Vigna): fast, and good enough in its high bits for noise.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& s : s_) s = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t result = s_[0] + s_[3];
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = (s_[3] << 45) | (s_[3] >> 19);
    return result;
  }
  // Uniform in [0, 1).
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  // Exact standard normal (Box-Muller), for the per-channel parameters.
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  // Approximately standard normal from one draw: the sum of four 16-bit uniforms (Irwin-Hall),
  // centred and scaled to unit variance. Its tails stop at 2*sqrt(3) = 3.46 sigma; heavy tails
  // of real caches come from the outlier channels instead. This is the per-element noise, so it
  // must cost a few cycles: a cache of Llama-3-8B's shape needs half a billion of them.
  float fast_normal() {
    const uint64_t r = next();
    const uint32_t sum = uint32_t(r & 0xFFFF) + uint32_t((r >> 16) & 0xFFFF) + uint32_t((r >> 32) & 0xFFFF) +
                         uint32_t(r >> 48);
    constexpr float kScale = 1.7320508f / 65536.0f;  // sqrt(12 / 4) per 2^16 unit
    return (float(sum) - 2.0f * 65535.5f) * kScale;
  }

 private:
  uint64_t s_[4];
};

// ---- fitting --------------------------------------------------------------------------------

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / double(v.size());
}

double spread_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size()));
}

// Summarizes the channels of one tensor given as x[t * channels + c].
ChannelStats summarize(const std::vector<float>& x, uint32_t tokens, uint32_t channels, uint32_t head_dim) {
  std::vector<double> stds(channels), mean_ratio(channels), ar1(channels), kurtosis(channels);
  for (uint32_t c = 0; c < channels; ++c) {
    double mean = 0;
    for (uint32_t t = 0; t < tokens; ++t) mean += x[size_t(t) * channels + c];
    mean /= tokens;
    double var = 0, lag = 0, fourth = 0;
    for (uint32_t t = 0; t < tokens; ++t) {
      const double d = x[size_t(t) * channels + c] - mean;
      var += d * d;
      fourth += d * d * d * d;
      if (t + 1 < tokens) lag += d * (x[size_t(t + 1) * channels + c] - mean);
    }
    const double sd = std::sqrt(var / tokens);
    stds[c] = sd;
    mean_ratio[c] = sd > 0 ? mean / sd : 0.0;
    ar1[c] = var > 0 ? lag / var : 0.0;
    kurtosis[c] = var > 0 ? fourth * tokens / (var * var) : 3.0;
  }
  std::vector<double> sorted = stds;
  std::nth_element(sorted.begin(), sorted.begin() + channels / 2, sorted.end());
  const double median = sorted[channels / 2];

  // ln(std) of the regular channels regressed on the pair position u; outliers apart.
  const uint32_t pairs = head_dim / 2;
  std::vector<double> log_std, u, outliers;
  for (uint32_t c = 0; c < channels; ++c) {
    if (stds[c] > ChannelStats::kOutlierFactor * median) {
      outliers.push_back(stds[c]);
    } else {
      log_std.push_back(std::log(std::max(stds[c], 1e-30)));
      u.push_back(pairs > 1 ? double((c % head_dim) / 2) / double(pairs - 1) : 0.5);
    }
  }
  const double mean_log = mean_of(log_std), mean_u = mean_of(u);
  double cov = 0, var_u = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    cov += (u[i] - mean_u) * (log_std[i] - mean_log);
    var_u += (u[i] - mean_u) * (u[i] - mean_u);
  }
  const double slope = var_u > 0 ? cov / var_u : 0.0;
  std::vector<double> residual(u.size());
  for (size_t i = 0; i < u.size(); ++i) residual[i] = log_std[i] - mean_log - slope * (u[i] - mean_u);

  ChannelStats s;
  s.log_std_mean = float(mean_log + slope * (0.5 - mean_u));  // the centre at u = 1/2
  s.log_std_slope = float(slope);
  s.log_std_spread = float(spread_of(residual));
  s.outlier_fraction = float(double(outliers.size()) / channels);
  s.outlier_scale = outliers.empty() ? 0.0f : float(mean_of(outliers) / std::exp(double(s.log_std_mean)));
  double sq = 0;
  for (double r : mean_ratio) sq += r * r;
  s.mean_to_std = float(std::sqrt(sq / channels));
  s.ar1_mean = float(mean_of(ar1));
  s.ar1_spread = float(spread_of(ar1));
  std::nth_element(kurtosis.begin(), kurtosis.begin() + channels / 2, kurtosis.end());
  s.kurtosis = float(kurtosis[channels / 2]);
  return s;
}

// cos/sin of position * theta^(-2i / head_dim) for every position and pair, [tokens][pairs].
void rope_table(uint32_t tokens, uint32_t head_dim, float theta, std::vector<float>& cs, std::vector<float>& sn) {
  const uint32_t pairs = head_dim / 2;
  cs.resize(size_t(tokens) * pairs);
  sn.resize(size_t(tokens) * pairs);
  for (uint32_t i = 0; i < pairs; ++i) {
    const double freq = std::pow(double(theta), -double(2 * i) / double(head_dim));
    for (uint32_t t = 0; t < tokens; ++t) {
      cs[size_t(t) * pairs + i] = float(std::cos(double(t) * freq));
      sn[size_t(t) * pairs + i] = float(std::sin(double(t) * freq));
    }
  }
}

// The figures of ChannelStats that combine linearly (interpolation over depth, averaging over
// fits). outlier_scale is apart: 0 means "no outliers", not a scale to average with.
constexpr float ChannelStats::*kLinearFields[] = {
    &ChannelStats::log_std_mean, &ChannelStats::log_std_slope, &ChannelStats::log_std_spread,
    &ChannelStats::outlier_fraction, &ChannelStats::mean_to_std, &ChannelStats::ar1_mean,
    &ChannelStats::ar1_spread, &ChannelStats::kurtosis};

// sum_i weights[i] * stats[i], with outlier_scale the weighted mean over the non-zero ones.
ChannelStats combine(std::span<const ChannelStats* const> stats, std::span<const double> weights) {
  ChannelStats out;
  double scale_sum = 0, scale_weight = 0;
  for (auto field : kLinearFields) out.*field = 0.0f;
  for (size_t i = 0; i < stats.size(); ++i) {
    for (auto field : kLinearFields) out.*field += float(weights[i] * (stats[i]->*field));
    if (stats[i]->outlier_scale > 0) {
      scale_sum += weights[i] * stats[i]->outlier_scale;
      scale_weight += weights[i];
    }
  }
  out.outlier_scale = scale_weight > 0 ? float(scale_sum / scale_weight) : 0.0f;
  return out;
}

// Linear interpolation of the fitted layers at relative depth `depth` in [0, 1].
ChannelStats at_depth(const KVStats& stats, int kind, double depth) {
  const size_t n = stats.layers.size();
  const double pos = depth * double(n - 1);
  const size_t lo = std::min(size_t(pos), n - 1), hi = std::min(lo + 1, n - 1);
  const double w = pos - double(lo);
  const ChannelStats* pair[] = {&stats.layers[lo][size_t(kind)], &stats.layers[hi][size_t(kind)]};
  const double weights[] = {1.0 - w, w};
  return combine(pair, weights);
}

// Innovations are a two-component scale mixture: the base noise (Rng::fast_normal, kurtosis
// kBaseKurtosis) times `narrow`, or with probability p times `wide` = kWideScale * narrow; unit
// variance. p is chosen per channel so that the AR(1) process reaches the fitted kurtosis.
constexpr double kWideScale = 4.0;
constexpr double kBaseKurtosis = 2.7;  // Irwin-Hall sum of 4 uniforms: 3 - 6 / (5 * 4)

struct Mixture {
  uint64_t wide_below = 0;  // a 64-bit draw below this picks the wide component
  float narrow = 1.0f, wide = 1.0f;
};

Mixture innovation_mixture(double kurtosis, double rho) {
  // An AR(1) process dilutes the excess kurtosis of its innovations by (1 - rho^2) / (1 + rho^2).
  const double r2 = rho * rho;
  const double target = 3.0 + (kurtosis - 3.0) * (1.0 + r2) / (1.0 - r2);
  // kBaseKurtosis * (1 + a4 p) = target * (1 + a2 p)^2, with a2 = k^2 - 1, a4 = k^4 - 1.
  const double a2 = kWideScale * kWideScale - 1, a4 = (kWideScale * kWideScale + 1) * a2;
  const double qa = target * a2 * a2, qb = 2 * target * a2 - kBaseKurtosis * a4, qc = target - kBaseKurtosis;
  double p = 0.0;
  if (qc > 0) {  // the smaller root; past the mixture's maximum kurtosis, the maximum
    const double disc = qb * qb - 4 * qa * qc;
    p = std::clamp(disc >= 0 ? (-qb - std::sqrt(disc)) / (2 * qa) : -qb / (2 * qa), 0.0, 1.0);
  }
  Mixture m;
  m.wide_below = p >= 1.0 ? UINT64_MAX : uint64_t(p * 0x1.0p64);
  m.narrow = float(1.0 / std::sqrt(1.0 + a2 * p));
  m.wide = float(kWideScale) * m.narrow;
  return m;
}

// Fills tensor (layer, kind) of `cache` from per-channel AR(1) processes.
void generate_tensor(KVCache& cache, uint32_t layer, int kind, const ChannelStats& s, uint64_t seed,
                     const std::vector<float>& cs, const std::vector<float>& sn) {
  const KVShape& shape = cache.shape;
  const uint32_t channels = uint32_t(shape.channels()), pairs = shape.head_dim / 2;
  uint64_t key = seed;
  Rng rng(splitmix64(key) ^ (uint64_t(layer) * 2 + uint64_t(kind)));

  // Per-channel parameters: std, mean, AR(1) coefficient, innovation mixture.
  std::vector<float> mean(channels), sd(channels), rho(channels), gain(channels), z(channels);
  std::vector<Mixture> mix(channels);
  auto innovation = [&rng](const Mixture& m) {
    const float e = rng.fast_normal();
    return m.wide_below != 0 && rng.next() < m.wide_below ? e * m.wide : e * m.narrow;
  };
  const double centre = std::exp(double(s.log_std_mean));
  for (uint32_t c = 0; c < channels; ++c) {
    const double u = pairs > 1 ? double((c % shape.head_dim) / 2) / double(pairs - 1) : 0.5;
    const bool outlier = rng.uniform() < s.outlier_fraction;
    sd[c] = float(outlier ? centre * s.outlier_scale
                          : std::exp(s.log_std_mean + s.log_std_slope * (u - 0.5) + s.log_std_spread * rng.normal()));
    mean[c] = float(sd[c] * s.mean_to_std * rng.normal());
    rho[c] = float(std::clamp(s.ar1_mean + s.ar1_spread * rng.normal(), 0.0, 0.999));
    gain[c] = std::sqrt(1.0f - rho[c] * rho[c]);
    mix[c] = innovation_mixture(s.kurtosis, rho[c]);
    z[c] = innovation(mix[c]);  // start at the stationary variance
  }

  const size_t esize = dtype_size(cache.dtype);
  uint8_t* out = cache.data.data() + (size_t(layer) * 2 + size_t(kind)) * shape.tokens * channels * esize;
  std::vector<float> row(channels);
  for (uint32_t t = 0; t < shape.tokens; ++t) {
    for (uint32_t c = 0; c < channels; ++c) {
      if (t > 0) z[c] = rho[c] * z[c] + gain[c] * innovation(mix[c]);
      row[c] = mean[c] + sd[c] * z[c];
    }
    if (kind == 0) {  // keys: rotate pairs (2i, 2i+1) of every head by position * freq_i
      const float* c_t = &cs[size_t(t) * pairs];
      const float* s_t = &sn[size_t(t) * pairs];
      for (uint32_t base = 0; base < channels; base += shape.head_dim) {
        for (uint32_t i = 0; i < pairs; ++i) {
          const float x0 = row[base + 2 * i], x1 = row[base + 2 * i + 1];
          row[base + 2 * i] = x0 * c_t[i] - x1 * s_t[i];
          row[base + 2 * i + 1] = x0 * s_t[i] + x1 * c_t[i];
        }
      }
    }
    for (uint32_t c = 0; c < channels; ++c, out += esize) detail::store_from_f32(out, uint8_t(cache.dtype), row[c]);
  }
}

// Figures fitted to six 1024-token contexts of kvc-bytes-a on text/techdocs_valid.txt; the
// command that prints them is in docs/synthetic.md. Per layer {keys, values}, each in field
// order: log_std_mean, log_std_slope, log_std_spread, outlier_fraction, outlier_scale,
// mean_to_std, ar1_mean, ar1_spread, kurtosis.
const KVStats kReferenceStats = {{
    {{{-0.7265f, -1.3058f, 0.3396f, 0.0026f, 4.625f, 2.6321f, 0.1941f, 0.1357f, 7.795f},
      {-1.9255f, -0.1584f, 0.9293f, 0.0417f, 4.605f, 0.2841f, 0.0237f, 0.0885f, 8.660f}}},  // layer 0
    {{{-0.1246f, 0.4259f, 0.2866f, 0.0000f, 0.000f, 1.4337f, 0.2429f, 0.1267f, 3.197f},
      {-0.4175f, -0.0100f, 0.1084f, 0.0000f, 0.000f, 0.1346f, 0.1151f, 0.0861f, 3.141f}}},  // layer 1
    {{{-0.2264f, 0.1908f, 0.1996f, 0.0000f, 0.000f, 1.5924f, 0.2258f, 0.1098f, 2.992f},
      {-0.1140f, -0.0342f, 0.1082f, 0.0000f, 0.000f, 0.1355f, 0.1551f, 0.0805f, 3.003f}}},  // layer 2
    {{{-0.0408f, 0.8558f, 0.2275f, 0.0000f, 0.000f, 1.0404f, 0.2648f, 0.1491f, 3.058f},
      {0.1525f, -0.0120f, 0.0860f, 0.0000f, 0.000f, 0.1754f, 0.1386f, 0.0695f, 3.120f}}},  // layer 3
    {{{-0.0130f, 0.2568f, 0.1610f, 0.0000f, 0.000f, 1.5936f, 0.2165f, 0.0986f, 2.968f},
      {0.1344f, -0.0113f, 0.0766f, 0.0000f, 0.000f, 0.1850f, 0.1535f, 0.0668f, 3.051f}}},  // layer 4
}};

constexpr SyntheticShape kShapes[] = {
    {"llama3-8b", 32, 8, 128, 500000.0f, false},
    {"mistral-7b", 32, 8, 128, 10000.0f, false},
    {"llama3-70b", 80, 8, 128, 500000.0f, false},
    // DeepSeek-V3: 61 layers, MLA latent kv_lora_rank 512 + qk_rope_head_dim 64 = 576.
    {"deepseek-v3-mla", 61, 1, 288, 10000.0f, true},
};

StatusOr<KVStats> fit_one(const KVCache& cache, float rope_theta) {
  const KVShape& s = cache.shape;
  KVCODEC_RETURN_IF_ERROR(validate_shape(s).with_context("fit_kv_stats"));
  if (!is_valid_dtype(uint8_t(cache.dtype))) return InvalidArgument("fit_kv_stats: unknown dtype");
  const size_t esize = dtype_size(cache.dtype);
  if (cache.data.size() != s.elements() * esize) return InvalidArgument("fit_kv_stats: data size does not match shape");
  if (s.tokens < kMinFitTokens) return InvalidArgument("fit_kv_stats: needs at least 16 tokens");
  if (s.head_dim % 2) return InvalidArgument("fit_kv_stats: head_dim must be even (RoPE pairs)");

  const uint32_t channels = uint32_t(s.channels()), pairs = s.head_dim / 2;
  std::vector<float> cs, sn;
  rope_table(s.tokens, s.head_dim, rope_theta, cs, sn);
  KVStats stats;
  stats.layers.resize(s.layers);
  std::vector<float> x(size_t(s.tokens) * channels);
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const uint8_t* src = cache.data.data() + (size_t(l) * 2 + size_t(kind)) * x.size() * esize;
      for (size_t i = 0; i < x.size(); ++i) x[i] = detail::load_as_f32(src + i * esize, uint8_t(cache.dtype));
      if (kind == 0) {  // undo RoPE: rotate pair i of position t back by -t * freq_i
        for (uint32_t t = 0; t < s.tokens; ++t) {
          float* row = &x[size_t(t) * channels];
          for (uint32_t base = 0; base < channels; base += s.head_dim) {
            for (uint32_t i = 0; i < pairs; ++i) {
              const float c = cs[size_t(t) * pairs + i], sv = sn[size_t(t) * pairs + i];
              const float x0 = row[base + 2 * i], x1 = row[base + 2 * i + 1];
              row[base + 2 * i] = x0 * c + x1 * sv;
              row[base + 2 * i + 1] = -x0 * sv + x1 * c;
            }
          }
        }
      }
      stats.layers[l][size_t(kind)] = summarize(x, s.tokens, channels, s.head_dim);
    }
  }
  return stats;
}

}  // namespace

StatusOr<KVStats> fit_kv_stats(std::span<const KVCache> caches, float rope_theta) {
  if (caches.empty()) return InvalidArgument("fit_kv_stats: no cache");
  if (!(rope_theta > 1.0f)) return InvalidArgument("fit_kv_stats: rope_theta must be > 1");
  std::vector<KVStats> fits;
  try {
    for (const KVCache& cache : caches) {
      KVCODEC_ASSIGN_OR_RETURN(KVStats fit, fit_one(cache, rope_theta));
      if (!fits.empty() && fit.layers.size() != fits[0].layers.size())
        return InvalidArgument("fit_kv_stats: caches have different layer counts");
      fits.push_back(std::move(fit));
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("fit_kv_stats: out of memory");
  }
  KVStats mean;
  mean.layers.resize(fits[0].layers.size());
  const std::vector<double> weights(fits.size(), 1.0 / double(fits.size()));
  std::vector<const ChannelStats*> per_fit(fits.size());
  for (size_t l = 0; l < mean.layers.size(); ++l) {
    for (size_t kind = 0; kind < 2; ++kind) {
      for (size_t f = 0; f < fits.size(); ++f) per_fit[f] = &fits[f].layers[l][kind];
      mean.layers[l][kind] = combine(per_fit, weights);
    }
  }
  return mean;
}

const KVStats& reference_kv_stats() { return kReferenceStats; }

std::span<const SyntheticShape> synthetic_shapes() noexcept { return kShapes; }

StatusOr<KVCache> make_synthetic(const KVShape& shape, DType dtype, uint64_t seed, const KVStats& stats,
                                 float rope_theta) {
  KVCODEC_RETURN_IF_ERROR(validate_shape(shape).with_context("make_synthetic"));
  if (shape.head_dim % 2) return InvalidArgument("make_synthetic: head_dim must be even (RoPE pairs)");
  if (stats.layers.empty()) return InvalidArgument("make_synthetic: empty statistics");
  if (!(rope_theta > 1.0f)) return InvalidArgument("make_synthetic: rope_theta must be > 1");

  KVCODEC_ASSIGN_OR_RETURN(KVCache cache, KVCache::allocate(dtype, shape));
  std::vector<float> cs, sn;
  try {
    rope_table(shape.tokens, shape.head_dim, rope_theta, cs, sn);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("make_synthetic: cannot allocate the RoPE table");
  }
  // One task per (layer, K/V) tensor, each with its own seeded stream: the output does not
  // depend on how tasks are spread over threads.
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  KVCODEC_RETURN_IF_ERROR(detail::parallel_ranges(size_t(shape.layers) * 2, int(threads), 1, [&](size_t b, size_t e) {
    for (size_t task = b; task < e; ++task) {
      const uint32_t layer = uint32_t(task / 2);
      const int kind = int(task % 2);
      const double depth = shape.layers > 1 ? double(layer) / double(shape.layers - 1) : 0.0;
      generate_tensor(cache, layer, kind, at_depth(stats, kind, depth), seed, cs, sn);
    }
  }));
  return cache;
}

StatusOr<KVCache> make_synthetic(std::string_view shape_name, uint32_t tokens, DType dtype, uint64_t seed) {
  for (const SyntheticShape& s : kShapes) {
    if (shape_name == s.name)
      return make_synthetic(KVShape{s.layers, tokens, s.kv_heads, s.head_dim}, dtype, seed, reference_kv_stats(),
                            s.rope_theta);
  }
  return NotFound("unknown synthetic shape '" + std::string(shape_name) +
                  "' (known: llama3-8b, mistral-7b, llama3-70b, deepseek-v3-mla)");
}

}  // namespace kvcodec
