// Transform-coding profiles (include/kvcodec/profile.hpp): the profile file (docs/format.md 8),
// the per-row transforms (2.1) and the re-framing shared by the profile encoder and decoder.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "common/bytes.hpp"
#include "common/checksum.hpp"
#include "common/frame.hpp"
#include "common/profile_rows.hpp"
#include "common/simd.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include "kvcodec/format.hpp"

namespace kvcodec {
namespace {

constexpr uint32_t kFileHeaderBytes = 32;
constexpr uint32_t kRopeSteps = kRopePositionBits;  // cos / sin of 2^k * freq, k < 24

// Bytes of a profile file of this shape (u64: no overflow for any shape within the limits).
uint64_t profile_file_bytes(uint32_t layers, uint32_t kv_heads, uint32_t d, bool rope) {
  const uint64_t heads = uint64_t(layers) * 2 * kv_heads;
  return kFileHeaderBytes + heads * (uint64_t(d) + uint64_t(d) * d) * 4 + (rope ? uint64_t(d / 2) * kRopeSteps * 16 : 0) +
         8;
}

Status check_dims(uint32_t layers, uint32_t kv_heads, uint32_t d, bool rope) {
  if (layers < 1 || layers > kMaxLayers || kv_heads < 1 || kv_heads > kMaxKVHeads || d < 1 || d > kMaxHeadDim ||
      uint64_t(kv_heads) * d > kMaxChannels)
    return InvalidArgument("profile shape out of range");
  if (rope && d % 2) return InvalidArgument("a profile with keys before RoPE needs an even head_dim");
  return Status::Ok();
}

// Version 2's stored layer models, from `at` to `end` (the digest): u32 size, then the model.
Status parse_models(Profile& p, const uint8_t* at, const uint8_t* end) {
  const uint32_t C = p.kv_heads * p.head_dim;
  const size_t n = size_t(kMaxLevel) * 2 * p.layers;
  p.models.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (end - at < 4) return CorruptData("profile: layer models truncated");
    const uint32_t size = detail::load_le32(at);
    at += 4;
    if (uint64_t(end - at) < size) return CorruptData("profile: layer models truncated");
    p.models[i].assign(at, at + size);
    at += size;
    detail::LayerModel lm;
    if (Status s = detail::parse_profile_model(p.models[i], C, lm); !s.ok())
      return CorruptData(std::string("profile: layer model ") + std::to_string(i) + ": " + s.message());
  }
  if (at != end) return CorruptData("profile: bytes after its layer models");
  return Status::Ok();
}

uint64_t digest_of(std::span<const uint8_t> bytes) { return detail::frame_checksum(2, bytes.data(), bytes.size()); }

void put_f32(std::vector<uint8_t>& out, float v) {
  uint8_t b[4];
  std::memcpy(b, &v, 4);
  out.insert(out.end(), b, b + 4);
}
void put_f64(std::vector<uint8_t>& out, double v) {
  uint8_t b[8];
  std::memcpy(b, &v, 8);
  out.insert(out.end(), b, b + 8);
}
float get_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}
double get_f64(const uint8_t* p) {
  double v;
  std::memcpy(&v, p, 8);
  return v;
}

// Rotates the interleaved pairs (2i, 2i+1) of a key row by +pos (sign 1) or -pos (sign -1)
// times each pair's frequency: (c, s) composed from the tables over the set bits of pos, in
// ascending bit order, then x0' = x0 c - x1 s', x1' = x0 s' + x1 c with s' = sign * s.
void rotate(const Profile& p, double* row, uint32_t pos, double sign) {
  const uint32_t pairs = p.head_dim / 2;
  for (uint32_t i = 0; i < pairs; ++i) {
    double c = 1.0, s = 0.0;
    for (uint32_t k = 0; k < kRopeSteps; ++k) {
      if (!((pos >> k) & 1)) continue;
      const double ck = p.rope_cos[size_t(i) * kRopeSteps + k], sk = p.rope_sin[size_t(i) * kRopeSteps + k];
      const double nc = c * ck - s * sk;
      const double ns = c * sk + s * ck;
      c = nc;
      s = ns;
    }
    s = sign * s;
    const double x0 = row[2 * i], x1 = row[2 * i + 1];
    row[2 * i] = x0 * c - x1 * s;
    row[2 * i + 1] = x0 * s + x1 * c;
  }
}

// The two inner loops of the transforms: out[j] += m[j] * v over contiguous j, for each of n
// vectors in order. Compiled twice (baseline SSE2 and AVX2); the additions into each out[j] are
// the same, in the same order, so both give the same bits.
template <class M>
[[gnu::always_inline]] inline void accumulate(double* out, const M* m, const double* v, size_t n, size_t d) {
  for (size_t k = 0; k < n; ++k) {
    const double vk = v[k];
    const M* row = m + k * d;
    for (size_t j = 0; j < d; ++j) out[j] += double(row[j]) * vk;
  }
}
template <class M>
void accumulate_base(double* out, const M* m, const double* v, size_t n, size_t d) {
  accumulate(out, m, v, n, d);
}
#if defined(__x86_64__)
template <class M>
__attribute__((target("avx2"))) void accumulate_avx2(double* out, const M* m, const double* v, size_t n, size_t d) {
  accumulate(out, m, v, n, d);
}
#endif
template <class M>
void accumulate_any(double* out, const M* m, const double* v, size_t n, size_t d) {
#if defined(__x86_64__)
  if (detail::avx2_enabled()) return accumulate_avx2(out, m, v, n, d);
#endif
  accumulate_base(out, m, v, n, d);
}

// out[r][j] = init[j] (0.0 without init) + m[k][j] * v[r][k] added for k ascending, r < R,
// j in [j0, j0 + 8B): the additions of accumulate() in its order, R rows x B vectors of 8
// outputs held in registers so each loaded vector of m serves R rows.
#if defined(__x86_64__)
// m_stride: the distance between m's rows k (0: d, m as given, columns from j0; else m is the
// block already packed, columns from 0).
template <int R, int B, bool Fma>
__attribute__((target("avx512f"), always_inline)) inline void product_block512(const double* init, const double* m,
                                                                               const double* v, size_t d, size_t j0,
                                                                               double* out, size_t m_stride = 0) {
  const size_t ms = m_stride ? m_stride : d, mj = m_stride ? 0 : j0;
  __m512d acc[R][B];
#pragma GCC unroll 4
  for (int b = 0; b < B; ++b) {
    const __m512d i0 = init ? _mm512_loadu_pd(init + j0 + 8 * b) : _mm512_setzero_pd();
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][b] = i0;
  }
  for (size_t k = 0; k < d; ++k) {
    __m512d vk[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) vk[r] = _mm512_set1_pd(v[size_t(r) * d + k]);
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) {
      const __m512d mk = _mm512_loadu_pd(m + k * ms + mj + 8 * b);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        acc[r][b] = Fma ? _mm512_fmadd_pd(mk, vk[r], acc[r][b]) : _mm512_add_pd(acc[r][b], _mm512_mul_pd(mk, vk[r]));
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) _mm512_storeu_pd(out + size_t(r) * d + j0 + 8 * b, acc[r][b]);
}
// All n rows, a block of 32 outputs at a time (then 8): the block's columns of m (d x 32
// doubles, 32 KiB at head_dim 128) stay in L1 while every row passes over them, instead of all
// of m (128 KiB) streaming from L2 once per 4 rows.
// The block is first copied to contiguous rows of 32 (its rows d * 8 bytes apart would map
// onto a quarter of L1's sets at head_dim 128 and evict each other).
template <bool Fma>
__attribute__((target("avx512f"))) void product_all512(const double* init, const double* m, const double* v, size_t n,
                                                       size_t d, double* out) {
  // Packing costs d / n copies per output: worth it for enough rows and where rows collide.
  const bool pack = n >= 32 && d >= 128;
  thread_local std::vector<double> packed;
  if (pack) packed.resize(d * 32);
  size_t j = 0;
  for (; j + 32 <= d; j += 32) {
    const double* mb = m;
    size_t ms = 0;
    if (pack) {
      for (size_t k = 0; k < d; ++k) std::memcpy(packed.data() + k * 32, m + k * d + j, 32 * sizeof(double));
      mb = packed.data();
      ms = 32;
    }
    size_t r = 0;
    for (; r + 4 <= n; r += 4) product_block512<4, 4, Fma>(init, mb, v + r * d, d, j, out + r * d, ms);
    for (; r < n; ++r) product_block512<1, 4, Fma>(init, mb, v + r * d, d, j, out + r * d, ms);
  }
  for (; j < d; j += 8) {
    size_t r = 0;
    for (; r + 4 <= n; r += 4) product_block512<4, 1, Fma>(init, m, v + r * d, d, j, out + r * d);
    for (; r < n; ++r) product_block512<1, 1, Fma>(init, m, v + r * d, d, j, out + r * d);
  }
}
// The same on AVX2 (16 vector registers): 4 rows x 2 vectors of 4 outputs.
template <int R, int B, bool Fma>
__attribute__((target("avx2,fma"), always_inline)) inline void product_block256(const double* init, const double* m,
                                                                                const double* v, size_t d, size_t j0,
                                                                                double* out) {
  __m256d acc[R][B];
#pragma GCC unroll 4
  for (int b = 0; b < B; ++b) {
    const __m256d i0 = init ? _mm256_loadu_pd(init + j0 + 4 * b) : _mm256_setzero_pd();
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][b] = i0;
  }
  for (size_t k = 0; k < d; ++k) {
    __m256d vk[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) vk[r] = _mm256_set1_pd(v[size_t(r) * d + k]);
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) {
      const __m256d mk = _mm256_loadu_pd(m + k * d + j0 + 4 * b);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        acc[r][b] = Fma ? _mm256_fmadd_pd(mk, vk[r], acc[r][b]) : _mm256_add_pd(acc[r][b], _mm256_mul_pd(mk, vk[r]));
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) _mm256_storeu_pd(out + size_t(r) * d + j0 + 4 * b, acc[r][b]);
}
template <int R, bool Fma>
__attribute__((target("avx2,fma"))) void product_rows256(const double* init, const double* m, const double* v, size_t d,
                                                         double* out) {
  size_t j = 0;
  for (; j + 8 <= d; j += 8) product_block256<R, 2, Fma>(init, m, v, d, j, out);
  for (; j < d; j += 4) product_block256<R, 1, Fma>(init, m, v, d, j, out);
}
// The rows of rows_product in blocks of 4 (K4), then one at a time (K1).
template <void (*K4)(const double*, const double*, const double*, size_t, double*),
          void (*K1)(const double*, const double*, const double*, size_t, double*)>
void product_all(const double* init, const double* m, const double* v, size_t n, size_t d, double* out) {
  size_t r = 0;
  for (; r + 4 <= n; r += 4) K4(init, m, v + r * d, d, out + r * d);
  for (; r < n; ++r) K1(init, m, v + r * d, d, out + r * d);
}
#endif

}  // namespace

namespace detail {

void rows_product(const double* init, const double* m, const double* v, size_t n, size_t d, double* out,
                  bool exact_products) {
#if defined(__x86_64__)
  // Exact products: round(a * b + c) = round(round(a * b) + c), so a fused multiply-add gives
  // the bits of the multiply then add, at one instruction instead of two.
  if (d % 8 == 0 && avx512_enabled())
    return exact_products ? product_all512<true>(init, m, v, n, d, out) : product_all512<false>(init, m, v, n, d, out);
  if (d % 4 == 0 && avx2_enabled() && __builtin_cpu_supports("fma"))
    return exact_products ? product_all<product_rows256<4, true>, product_rows256<1, true>>(init, m, v, n, d, out)
                          : product_all<product_rows256<4, false>, product_rows256<1, false>>(init, m, v, n, d, out);
#endif
  for (size_t r = 0; r < n; ++r) {
    double* o = out + r * d;
    for (size_t j = 0; j < d; ++j) o[j] = init ? init[j] : 0.0;
    accumulate_any(o, m, v + r * d, d, d);
  }
}

void rope_table(const Profile& p, uint32_t pos0, uint32_t n, std::vector<double>& cs) {
  const uint32_t pairs = p.head_dim / 2;
  cs.resize(size_t(n) * pairs * 2);
  // The tables as [step][pair], so the pairs (independent) run side by side for each step.
  std::vector<double> tc(size_t(kRopeSteps) * pairs), ts(tc.size()), c(pairs), s(pairs);
  for (uint32_t i = 0; i < pairs; ++i)
    for (uint32_t k = 0; k < kRopeSteps; ++k) {
      tc[size_t(k) * pairs + i] = p.rope_cos[size_t(i) * kRopeSteps + k];
      ts[size_t(k) * pairs + i] = p.rope_sin[size_t(i) * kRopeSteps + k];
    }
  for (uint32_t t = 0; t < n; ++t) {
    const uint32_t pos = pos0 + t;
    std::fill(c.begin(), c.end(), 1.0);
    std::fill(s.begin(), s.end(), 0.0);
    for (uint32_t k = 0; k < kRopeSteps; ++k) {
      if (!((pos >> k) & 1)) continue;
      const double* ck = tc.data() + size_t(k) * pairs;
      const double* sk = ts.data() + size_t(k) * pairs;
      for (uint32_t i = 0; i < pairs; ++i) {
        const double nc = c[i] * ck[i] - s[i] * sk[i];
        const double ns = c[i] * sk[i] + s[i] * ck[i];
        c[i] = nc;
        s[i] = ns;
      }
    }
    for (uint32_t i = 0; i < pairs; ++i) {
      cs[(size_t(t) * pairs + i) * 2] = c[i];
      cs[(size_t(t) * pairs + i) * 2 + 1] = s[i];
    }
  }
}

}  // namespace detail

namespace {

// rotate() with (c, s) of the position taken from a rope_table row.
void rotate_with(const double* cs, double* row, uint32_t d, double sign) {
  for (uint32_t i = 0; i < d / 2; ++i) {
    const double c = cs[2 * i], s = sign * cs[2 * i + 1];
    const double x0 = row[2 * i], x1 = row[2 * i + 1];
    row[2 * i] = x0 * c - x1 * s;
    row[2 * i + 1] = x0 * s + x1 * c;
  }
}

}  // namespace

StatusOr<Profile> make_profile(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, std::vector<float> means,
                               std::vector<float> axes, bool keys_before_rope, double rope_theta) {
  KVCODEC_RETURN_IF_ERROR(check_dims(layers, kv_heads, head_dim, keys_before_rope));
  Profile p;
  p.layers = layers;
  p.kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.keys_before_rope = keys_before_rope;
  p.rope_theta = keys_before_rope ? rope_theta : 0.0;
  if (means.size() != p.heads() * head_dim || axes.size() != p.heads() * head_dim * head_dim)
    return InvalidArgument("profile means / axes do not match its shape");
  for (float v : means)
    if (!std::isfinite(v)) return InvalidArgument("profile mean not finite");
  for (float v : axes)
    if (!std::isfinite(v)) return InvalidArgument("profile axis not finite");
  if (keys_before_rope && !(rope_theta > 1.0 && std::isfinite(rope_theta)))
    return InvalidArgument("RoPE theta must be finite and > 1");
  p.means = std::move(means);
  p.axes = std::move(axes);
  if (keys_before_rope) {
    // The only libm use: the tables are computed once here and stored; decoders use them as is.
    for (uint32_t i = 0; i < head_dim / 2; ++i) {
      const double freq = std::pow(rope_theta, -double(2 * i) / double(head_dim));
      for (uint32_t k = 0; k < kRopeSteps; ++k) {
        const double a = std::ldexp(freq, int(k));
        p.rope_cos.push_back(std::cos(a));
        p.rope_sin.push_back(std::sin(a));
      }
    }
  }
  const std::vector<uint8_t> bytes = serialize_profile(p);
  p.digest = detail::load_le64(bytes.data() + bytes.size() - 8);
  return p;
}

std::vector<uint8_t> serialize_profile(const Profile& p) {
  std::vector<uint8_t> out(kFileHeaderBytes, 0);
  std::memcpy(out.data(), kProfileMagic, 4);
  detail::store_le16(out.data() + 4, p.models.empty() ? 1 : 2);
  detail::store_le16(out.data() + 6, p.keys_before_rope ? 1 : 0);
  detail::store_le32(out.data() + 8, p.layers);
  detail::store_le32(out.data() + 12, p.kv_heads);
  detail::store_le32(out.data() + 16, p.head_dim);
  std::memcpy(out.data() + 24, &p.rope_theta, 8);
  const size_t d = p.head_dim;
  out.reserve(profile_file_bytes(p.layers, p.kv_heads, p.head_dim, p.keys_before_rope));
  for (size_t h = 0; h < p.heads(); ++h) {
    for (size_t i = 0; i < d; ++i) put_f32(out, p.means[h * d + i]);
    for (size_t i = 0; i < d * d; ++i) put_f32(out, p.axes[h * d * d + i]);
  }
  for (double v : p.rope_cos) put_f64(out, v);
  for (double v : p.rope_sin) put_f64(out, v);
  for (const auto& m : p.models) {  // version 2
    uint8_t b[4];
    detail::store_le32(b, uint32_t(m.size()));
    out.insert(out.end(), b, b + 4);
    out.insert(out.end(), m.begin(), m.end());
  }
  const uint64_t digest = digest_of(out);
  out.resize(out.size() + 8);
  detail::store_le64(out.data() + out.size() - 8, digest);
  return out;
}

uint64_t serialized_profile_size(const Profile& p) noexcept {
  uint64_t bytes = profile_file_bytes(p.layers, p.kv_heads, p.head_dim, p.keys_before_rope);
  for (const auto& m : p.models) bytes += 4 + m.size();
  return bytes;
}

StatusOr<Profile> parse_profile(std::span<const uint8_t> b) {
  if (b.size() < kFileHeaderBytes + 8 || std::memcmp(b.data(), kProfileMagic, 4) != 0)
    return CorruptData("not a kvcodec profile (bad magic or too short)");
  const uint8_t* q = b.data();
  const uint16_t version = detail::load_le16(q + 4), flags = detail::load_le16(q + 6);
  if (version != 1 && version != 2) return UnsupportedVersion("profile version " + std::to_string(version));
  Profile p;
  p.layers = detail::load_le32(q + 8);
  p.kv_heads = detail::load_le32(q + 12);
  p.head_dim = detail::load_le32(q + 16);
  p.keys_before_rope = flags & 1;
  p.rope_theta = get_f64(q + 24);
  if ((flags & ~1u) || detail::load_le32(q + 20) != 0) return CorruptData("profile: reserved fields not zero");
  if (Status s = check_dims(p.layers, p.kv_heads, p.head_dim, p.keys_before_rope); !s.ok())
    return CorruptData(std::string("profile: ") + s.message());
  const uint64_t fixed = profile_file_bytes(p.layers, p.kv_heads, p.head_dim, p.keys_before_rope);
  if (version == 1 ? b.size() != fixed : b.size() < fixed + uint64_t(kMaxLevel) * 2 * p.layers * 4)
    return CorruptData("profile: size does not match its shape");
  p.digest = detail::load_le64(q + b.size() - 8);
  if (digest_of(b.first(b.size() - 8)) != p.digest) return CorruptData("profile: checksum mismatch");
  const size_t d = p.head_dim;
  const uint8_t* at = q + kFileHeaderBytes;
  p.means.resize(p.heads() * d);
  p.axes.resize(p.heads() * d * d);
  for (size_t h = 0; h < p.heads(); ++h) {
    for (size_t i = 0; i < d; ++i, at += 4) p.means[h * d + i] = get_f32(at);
    for (size_t i = 0; i < d * d; ++i, at += 4) p.axes[h * d * d + i] = get_f32(at);
  }
  const size_t n = p.keys_before_rope ? d / 2 * kRopeSteps : 0;
  for (auto* table : {&p.rope_cos, &p.rope_sin})
    for (size_t i = 0; i < n; ++i, at += 8) table->push_back(get_f64(at));
  for (float v : p.means)
    if (!std::isfinite(v)) return CorruptData("profile: mean not finite");
  for (float v : p.axes)
    if (!std::isfinite(v)) return CorruptData("profile: axis not finite");
  for (const auto* table : {&p.rope_cos, &p.rope_sin})
    for (double v : *table)
      if (!(v >= -1.0 && v <= 1.0)) return CorruptData("profile: RoPE table entry outside [-1, 1]");
  if (p.keys_before_rope && !(p.rope_theta > 1.0 && std::isfinite(p.rope_theta)))
    return CorruptData("profile: bad RoPE theta");
  if (version == 2) KVCODEC_RETURN_IF_ERROR(parse_models(p, at, q + b.size() - 8));
  else if (at != q + b.size() - 8) return CorruptData("profile: size does not match its shape");
  return p;
}

Status set_profile_models(Profile& p, std::vector<std::vector<uint8_t>> models) {
  if (models.size() != size_t(kMaxLevel) * 2 * p.layers) return InvalidArgument("profile models: wrong count");
  const uint32_t C = p.kv_heads * p.head_dim;
  for (const auto& m : models) {
    detail::LayerModel lm;
    if (m.size() > UINT32_MAX || !detail::parse_profile_model(m, C, lm).ok())
      return InvalidArgument("profile models: a model does not parse");
  }
  p.models = std::move(models);
  const std::vector<uint8_t> bytes = serialize_profile(p);
  p.digest = detail::load_le64(bytes.data() + bytes.size() - 8);
  return Status::Ok();
}

namespace detail {

Status check_profile_shape(const Profile& p, const KVShape& s) {
  if (p.layers != s.layers || p.kv_heads != s.kv_heads || p.head_dim != s.head_dim || p.means.size() != p.heads() * p.head_dim)
    return InvalidArgument("profile of " + std::to_string(p.layers) + " layers x " + std::to_string(p.kv_heads) +
                           " heads x " + std::to_string(p.head_dim) + " does not fit a cache of " +
                           std::to_string(s.layers) + " x " + std::to_string(s.kv_heads) + " x " +
                           std::to_string(s.head_dim));
  return Status::Ok();
}

void transposed_axes(const Profile& p, size_t head, std::vector<double>& at) {
  const size_t d = p.head_dim;
  const float* a = p.axes.data() + head * d * d;
  at.resize(d * d);
  for (size_t k = 0; k < d; ++k)
    for (size_t i = 0; i < d; ++i) at[i * d + k] = double(a[k * d + i]);
}

void forward_row(const Profile& p, size_t head, const double* at, uint32_t kv, uint32_t pos, const float* x, float* y) {
  const size_t d = p.head_dim;
  double row[kMaxHeadDim], s[kMaxHeadDim];
  for (size_t i = 0; i < d; ++i) row[i] = x[i];
  if (kv == 0 && p.keys_before_rope) rotate(p, row, pos, -1.0);
  const float* mean = p.means.data() + head * d;
  for (size_t i = 0; i < d; ++i) row[i] -= double(mean[i]);
  // s[k] = sum over i ascending of axes[k][i] * row[i]: the i loop outside, so the k loop runs
  // over contiguous memory (vectorised) while every s[k] adds its terms in the same order.
  for (size_t k = 0; k < d; ++k) s[k] = 0.0;
  accumulate_any(s, at, row, d, d);
  for (size_t k = 0; k < d; ++k) y[k] = float(s[k]);
}

void inverse_row(const Profile& p, size_t head, uint32_t kv, uint32_t pos, const float* y, float* x) {
  const size_t d = p.head_dim;
  double row[kMaxHeadDim];
  const float* mean = p.means.data() + head * d;
  for (size_t i = 0; i < d; ++i) row[i] = double(mean[i]);
  double yd[kMaxHeadDim];
  for (size_t k = 0; k < d; ++k) yd[k] = double(y[k]);
  accumulate_any(row, p.axes.data() + head * d * d, yd, d, d);
  if (kv == 0 && p.keys_before_rope) rotate(p, row, pos, 1.0);
  for (size_t i = 0; i < d; ++i) x[i] = float(row[i]);
}

void forward_rows(const Profile& p, size_t head, const double* at, uint32_t kv, const double* cs, size_t n,
                  RowScratch& w, float* y, size_t y_stride) {
  const size_t d = p.head_dim;
  const float* mean = p.means.data() + head * d;
  for (size_t r = 0; r < n; ++r) {
    double* row = w.in.data() + r * d;
    if (kv == 0 && p.keys_before_rope) rotate_with(cs + r * d, row, uint32_t(d), -1.0);
    for (size_t i = 0; i < d; ++i) row[i] -= double(mean[i]);
  }
  rows_product(nullptr, at, w.in.data(), n, d, w.out.data(), false);
  for (size_t r = 0; r < n; ++r)
    for (size_t k = 0; k < d; ++k) y[r * y_stride + k] = float(w.out[r * d + k]);
}

void head_axes(const Profile& p, size_t head, std::vector<double>& a) {
  const size_t d = p.head_dim;
  const float* src = p.axes.data() + head * d * d;
  a.resize(d * d);
  for (size_t i = 0; i < d * d; ++i) a[i] = double(src[i]);
}

void inverse_rows(const Profile& p, size_t head, const double* axes, uint32_t kv, const double* cs, const float* y,
                  size_t y_stride, size_t n, RowScratch& w, float* x) {
  const size_t d = p.head_dim;
  for (size_t r = 0; r < n; ++r)
    for (size_t k = 0; k < d; ++k) w.in[r * d + k] = double(y[r * y_stride + k]);
  const float* mean = p.means.data() + head * d;
  for (size_t i = 0; i < d; ++i) w.mean[i] = double(mean[i]);
  // Products of two floats (axes, coefficients) are exact in double: the FMA path applies.
  rows_product(w.mean.data(), axes, w.in.data(), n, d, w.out.data(), true);
  for (size_t r = 0; r < n; ++r) {
    double* row = w.out.data() + r * d;
    if (kv == 0 && p.keys_before_rope) rotate_with(cs + r * d, row, uint32_t(d), 1.0);
    for (size_t i = 0; i < d; ++i) x[r * d + i] = float(row[i]);
  }
}

void reframe(std::span<const uint8_t> in, uint32_t remove, std::span<const uint8_t> insert, uint16_t version,
             uint16_t flags, uint8_t dtype, std::span<uint8_t> out) {
  // Every field of `in` is read before anything is written: `out` may be `in` moved back by
  // insert.size() (remove == 0; what encode_into does to avoid a copy of the frame).
  const uint32_t model_bytes = load_le32(in.data() + kOffModelBytes);
  const uint32_t num_chunks = load_le32(in.data() + kOffNumChunks);
  const uint64_t frame_bytes = load_le64(in.data() + kOffFrameBytes);
  const int64_t shift = int64_t(insert.size()) - int64_t(remove);
  uint8_t* o = out.data();
  std::memmove(o, in.data(), kHeaderBytes);
  if (!insert.empty()) std::memcpy(o + kHeaderBytes, insert.data(), insert.size());
  if (o + kHeaderBytes + insert.size() != in.data() + kHeaderBytes + remove)
    std::memmove(o + kHeaderBytes + insert.size(), in.data() + kHeaderBytes + remove, in.size() - kHeaderBytes - remove);
  store_le16(o + kOffVersion, version);
  store_le16(o + kOffFlags, flags);
  o[kOffDType] = dtype;
  const uint32_t new_model = uint32_t(int64_t(model_bytes) + shift);
  store_le32(o + kOffModelBytes, new_model);
  store_le64(o + kOffFrameBytes, uint64_t(int64_t(frame_bytes) + shift));
  uint8_t* idx = o + kHeaderBytes + new_model;
  for (uint32_t i = 0; i < num_chunks; ++i, idx += kIndexEntryBytes)
    store_le64(idx, uint64_t(int64_t(load_le64(idx)) + shift));
  const size_t head_bytes = kHeaderBytes + new_model + size_t(num_chunks) * kIndexEntryBytes;
  store_le64(o + kOffHeadChecksum, head_checksum(version, o, head_bytes));
}

}  // namespace detail
}  // namespace kvcodec
