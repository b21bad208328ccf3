#include "encode/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/dtype.hpp"
#include "encode/quantize_row.hpp"
#include "common/simd.hpp"
#include "encode/encode_values.hpp"
#include "common/quant.hpp"

namespace kvcodec {

using namespace detail;

float step_from_code(int32_t code) noexcept { return detail::step_from_code(code); }

int32_t step_code_floor(double step) noexcept { return detail::step_code_floor(step); }

double error_bound(double step, float x_hat, DType dt) noexcept {
  return 0.5 * step + 0.5 * detail::ulp_at(x_hat, uint8_t(dt));
}

void compute_grids(const float* x, uint32_t tokens, uint32_t channels, double rel_step, StepMode mode,
                   ChannelGrid* grids) noexcept {
  std::vector<double> sum(channels, 0.0), sq(channels, 0.0);
  std::vector<uint32_t> count(channels, 0);
  std::vector<float> lo(channels, INFINITY), hi(channels, -INFINITY);
  const detail::ChannelSumsSoA s{sum.data(), sq.data(), count.data()};
  for (uint32_t t = 0; t < tokens; ++t) {
    detail::add_row_sums(x + size_t(t) * channels, channels, s);
    detail::add_row_range(x + size_t(t) * channels, channels, lo.data(), hi.data());
  }
  const detail::Columns cols{x, channels};
  detail::grids_from_sums(s, lo.data(), hi.data(), channels, tokens, cols, rel_step, mode, grids);
}

int32_t quantize_value(float x, float step, int32_t center, DType dt) noexcept {
  const int32_t n = detail::quantize_grid(x, step, 1.0 / double(step), center, uint8_t(dt));
  return n == detail::kEscapeIndex ? kEscape : n;
}

namespace detail {

// The fast path of quantize_grid, in double arithmetic without branches: the grid offset as a
// double, or kMiss where the element needs the exact scalar path. The vector versions below do
// the same IEEE operations, so their results do not depend on the path taken.
constexpr double kMiss = 1e9;

// One element of the fast path (also the reference for the vector versions).
inline double quantize_fast_one(float x, float step, double inv, double center, float maxf) {
  const double xd = double(x);
  const double n0 = __builtin_nearbyint(xd * inv);
  const double d = n0 - center;
  const bool in_range = (d >= -255.0) & (d <= 255.0);
  const float p = float(in_range ? n0 : 0.0) * step;  // float(n0) is exact: |n0| < 2^24 here
  const double err = xd - double(p);
  const double half = 0.5 * double(step);
  const bool good = in_range & (err <= half) & (-err <= half) & (p <= maxf) & (-p <= maxf);
  return good ? d : kMiss;
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) void f16_to_f32_avx2(const uint16_t* h, size_t n, float* out) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  for (; i < n; ++i) out[i] = f16_to_f32(h[i]);
}
#endif

void widen_to_f32(const uint8_t* raw, uint8_t dt, size_t n, float* out) {
  switch (dt) {
    case 1:
      std::memcpy(out, raw, n * 4);
      return;
    case 2: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(raw);
#if defined(__x86_64__)
      static const bool avx2 = __builtin_cpu_supports("avx2");  // every AVX2 CPU has F16C
      if (avx2 && simd_enabled()) return f16_to_f32_avx2(h, n, out);
#endif
      for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(h[i]);
      return;
    }
    case 3: {
      const uint16_t* b = reinterpret_cast<const uint16_t*>(raw);
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(b[i]);
      return;
    }
    default:
      for (size_t i = 0; i < n; ++i) out[i] = f8e4m3_to_f32(raw[i]);
  }
}

void add_row_sums_scalar(const float* x, uint32_t n, const ChannelSumsSoA& s);

void add_row_range_scalar(const float* x, uint32_t n, float* lo, float* hi) {
  for (uint32_t c = 0; c < n; ++c) {
    const float v = x[c];
    const bool finite = v - v == 0.0f;
    lo[c] = finite && v < lo[c] ? v : lo[c];
    hi[c] = finite && v > hi[c] ? v : hi[c];
  }
}

// The scalar path of one element: the fast test, then quantize_grid's full search.
inline int16_t quantize_one(float x, const RowGrid& g, uint32_t c, uint8_t dt, float maxf) {
  const double d = quantize_fast_one(x, g.step[c], g.inv_step[c], g.center[c], maxf);
  if (d != kMiss) return int16_t(d);
  const int32_t n = quantize_grid(x, g.step[c], g.inv_step[c], g.center_i[c], dt);
  return n == kEscapeIndex ? kEscapeQ : int16_t(n - g.center_i[c]);
}

void quantize_row_scalar(const float* x, const RowGrid& g, uint32_t C, uint8_t dt, int16_t* q) {
  const float maxf = max_finite(dt);
  for (uint32_t c = 0; c < C; ++c) q[c] = quantize_one(x[c], g, c, dt, maxf);
}

#if defined(__x86_64__)
// The fast path for 4 channels from c: the offsets as int32 (0 where missed) and the mask of
// the misses.
__attribute__((target("avx2"))) inline uint32_t quantize4_avx2(const float* x, const RowGrid& g, uint32_t c,
                                                                __m128 maxv, __m128i* d_out) {
  const __m256d lo = _mm256_set1_pd(-255.0), hi = _mm256_set1_pd(255.0), halfc = _mm256_set1_pd(0.5);
  const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  const __m256d xd = _mm256_cvtps_pd(_mm_loadu_ps(x + c));
  const __m256d n0 = _mm256_round_pd(_mm256_mul_pd(xd, _mm256_loadu_pd(g.inv_step + c)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256d d = _mm256_sub_pd(n0, _mm256_loadu_pd(g.center + c));
  const __m256d in_range = _mm256_and_pd(_mm256_cmp_pd(d, lo, _CMP_GE_OQ), _mm256_cmp_pd(d, hi, _CMP_LE_OQ));
  const __m128 step = _mm_loadu_ps(g.step + c);
  const __m128 p = _mm_mul_ps(_mm256_cvtpd_ps(_mm256_and_pd(n0, in_range)), step);
  const __m256d err = _mm256_sub_pd(xd, _mm256_cvtps_pd(p));
  const __m256d half = _mm256_mul_pd(_mm256_cvtps_pd(step), halfc);
  const __m256d abs_err = _mm256_max_pd(err, _mm256_sub_pd(_mm256_setzero_pd(), err));
  const __m128 p_ok = _mm_cmp_ps(_mm_and_ps(p, absmask), maxv, _CMP_LE_OQ);
  __m256d good = _mm256_and_pd(in_range, _mm256_cmp_pd(abs_err, half, _CMP_LE_OQ));
  good = _mm256_and_pd(good, _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(p_ok))));
  *d_out = _mm256_cvtpd_epi32(_mm256_and_pd(d, good));  // integral values, exact
  return uint32_t(_mm256_movemask_pd(good)) ^ 0xfu;
}

// quantize_fast_one eight at a time, packed to int16; the elements the fast test misses go
// through quantize_one.
__attribute__((target("avx2"))) void quantize_row_avx2(const float* x, const RowGrid& g, uint32_t C, uint8_t dt,
                                                        int16_t* q) {
  const float maxf = max_finite(dt);
  const __m128 maxv = _mm_set1_ps(maxf);
  uint32_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m128i a, b;
    const uint32_t miss = quantize4_avx2(x, g, c, maxv, &a) | quantize4_avx2(x, g, c + 4, maxv, &b) << 4;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), _mm_packs_epi32(a, b));
    for (uint32_t m = miss; m; m &= m - 1) {
      const uint32_t k = c + uint32_t(__builtin_ctz(m));
      q[k] = quantize_one(x[k], g, k, dt, maxf);
    }
  }
  for (; c < C; ++c) q[c] = quantize_one(x[c], g, c, dt, maxf);
}
#endif

#if defined(__x86_64__)
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* operands.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define KVCODEC_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,f16c")))

// The fast path for 8 channels from c with AVX-512: the offsets as int32 (0 where missed) and
// the mask of the misses. The same IEEE operations as quantize_fast_one.
KVCODEC_AVX512 inline uint32_t quantize8_avx512(__m256 xv, const RowGrid& g, uint32_t c, __m256 maxv,
                                                __m256i* d_out) {
  const __m512d xd = _mm512_cvtps_pd(xv);
  const __m512d n0 = _mm512_roundscale_pd(_mm512_mul_pd(xd, _mm512_loadu_pd(g.inv_step + c)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512d d = _mm512_sub_pd(n0, _mm512_loadu_pd(g.center + c));
  const __mmask8 in_range = _mm512_cmp_pd_mask(d, _mm512_set1_pd(-255.0), _CMP_GE_OQ) &
                            _mm512_cmp_pd_mask(d, _mm512_set1_pd(255.0), _CMP_LE_OQ);
  const __m256 step = _mm256_loadu_ps(g.step + c);
  const __m256 p = _mm256_mul_ps(_mm512_cvtpd_ps(_mm512_maskz_mov_pd(in_range, n0)), step);
  const __m512d err = _mm512_sub_pd(xd, _mm512_cvtps_pd(p));
  const __m512d half = _mm512_mul_pd(_mm512_cvtps_pd(step), _mm512_set1_pd(0.5));
  const __m512d abs_err = _mm512_max_pd(err, _mm512_sub_pd(_mm512_setzero_pd(), err));
  const __m256 abs_p = _mm256_and_ps(p, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
  const __mmask8 good = in_range & _mm512_cmp_pd_mask(abs_err, half, _CMP_LE_OQ) &
                        _mm256_cmp_ps_mask(abs_p, maxv, _CMP_LE_OQ);
  *d_out = _mm512_cvtpd_epi32(_mm512_maskz_mov_pd(good, d));  // integral values, exact
  return uint32_t(good) ^ 0xffu;
}

// Eight or sixteen elements from c of an fp32 row, or of an fp16 row widened in registers (F16C).
KVCODEC_AVX512 inline __m256 load8(const float* x, uint32_t c) { return _mm256_loadu_ps(x + c); }
KVCODEC_AVX512 inline __m256 load8(const uint16_t* h, uint32_t c) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + c)));
}
KVCODEC_AVX512 inline __m512 load16(const float* x, uint32_t c) { return _mm512_loadu_ps(x + c); }
KVCODEC_AVX512 inline __m512 load16(const uint16_t* h, uint32_t c) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + c)));
}
inline float value_of(const float* x, uint32_t k) { return x[k]; }
inline float value_of(const uint16_t* h, uint32_t k) { return f16_to_f32(h[k]); }

// The float screen for 16 channels from c (needs g.inv_f, g.half_f): the offsets as int32 and
// the mask of the lanes it cannot decide. Where it decides, the double-precision fast path
// (quantize_fast_one) takes the same decision and gives the same offset:
// - y = fl32(x * fl32(inv)) is within 2^-23 |y| (1 + 2^-22) + 2^-149 of the double path's
//   r = fl64(x * inv) (two float roundings and one double one). The screen requires y to be at
//   least 2^-22 |y| + 2^-24 (less 2^-27 for rounding 0.5 - m) from the nearest half-integer, so
//   r rounds to the same integer k = rint(y), with |k| < 2^20 (else the margin exceeds 0.5).
// - d = k - center and the range test are exact integer operations; p = fl32(float(k) * step)
//   is the double path's p; its |p| <= maxf test is the same test.
// - x - p is exact in double (two floats within a factor of 4 of each other, or p = 0), so the
//   double path tests |x - p| <= step / 2. Rounding is monotone and step / 2 is a float (steps
//   in [2^-100, 2^100], else half_f < 0 and nothing passes), so |fl32(x - p)| < step / 2
//   implies |x - p| < step / 2.
// NaN and infinite x or y fail the first test. (-ffp-contract=off: no fused multiply-adds.)
KVCODEC_AVX512 inline uint32_t screen16_avx512(__m512 x, const RowGrid& g, uint32_t c, __m512 maxv, __m512i* d_out) {
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 y = _mm512_mul_ps(x, _mm512_loadu_ps(g.inv_f + c));
  const __m512 k = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 frac = _mm512_and_ps(_mm512_sub_ps(y, k), absmask);
  const __m512 margin = _mm512_add_ps(_mm512_mul_ps(_mm512_and_ps(y, absmask), _mm512_set1_ps(0x1p-22f)),
                                      _mm512_set1_ps(0x1p-24f));
  const __mmask16 clear = _mm512_cmp_ps_mask(frac, _mm512_sub_ps(_mm512_set1_ps(0.5f), margin), _CMP_LE_OQ);
  const __m512i ki = _mm512_cvtps_epi32(k);
  const __m512i d = _mm512_sub_epi32(ki, _mm512_loadu_si512(g.center_i + c));
  const __mmask16 in_range = _mm512_cmp_epi32_mask(d, _mm512_set1_epi32(-255), _MM_CMPINT_NLT) &
                             _mm512_cmp_epi32_mask(d, _mm512_set1_epi32(255), _MM_CMPINT_LE);
  const __m512 p = _mm512_mul_ps(k, _mm512_loadu_ps(g.step + c));  // k = float(ki) where `clear` holds
  const __m512 abs_err = _mm512_and_ps(_mm512_sub_ps(x, p), absmask);
  const __mmask16 good = clear & in_range & _mm512_cmp_ps_mask(abs_err, _mm512_loadu_ps(g.half_f + c), _CMP_LT_OQ) &
                         _mm512_cmp_ps_mask(_mm512_and_ps(p, absmask), maxv, _CMP_LE_OQ);
  *d_out = d;
  return uint32_t(__mmask16(~good));
}

// quantize_row for the 16 channels from c: the double-precision fast path, then the exact
// scalar search for its misses.
template <typename T>
KVCODEC_AVX512 inline void quantize16_avx512(const T* x, const RowGrid& g, uint32_t c, uint8_t dt, float maxf,
                                             int16_t* q) {
  const __m256 maxv = _mm256_set1_ps(maxf);
  __m256i a, b;
  const uint32_t miss =
      quantize8_avx512(load8(x, c), g, c, maxv, &a) | quantize8_avx512(load8(x, c + 8), g, c + 8, maxv, &b) << 8;
  const __m512i ab = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c), _mm512_cvtepi32_epi16(ab));
  for (uint32_t m = miss; m; m &= m - 1) {
    const uint32_t k = c + uint32_t(__builtin_ctz(m));
    q[k] = quantize_one(value_of(x, k), g, k, dt, maxf);
  }
}

// quantize_row on the C values of x (fp32, or fp16 of dtype dt = 2): 16 channels at a time by the
// float screen where the grid has its constants, the double path for the vectors it leaves.
template <typename T>
KVCODEC_AVX512 void quantize_row_avx512_t(const T* x, const RowGrid& g, uint32_t C, uint8_t dt, int16_t* q) {
  const float maxf = max_finite(dt);
  const __m512 maxv = _mm512_set1_ps(maxf);
  uint32_t c = 0;
  for (; c + 16 <= C; c += 16) {
    if (g.inv_f) {
      __m512i d;
      if (screen16_avx512(load16(x, c), g, c, maxv, &d) == 0) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c), _mm512_cvtepi32_epi16(d));
        continue;
      }
    }
    quantize16_avx512(x, g, c, dt, maxf, q);
  }
  for (; c < C; ++c) q[c] = quantize_one(value_of(x, c), g, c, dt, maxf);
}

KVCODEC_AVX512 void quantize_row_avx512(const float* x, const RowGrid& g, uint32_t C, uint8_t dt, int16_t* q) {
  quantize_row_avx512_t(x, g, C, dt, q);
}

// add_row_sums_avx2 eight channels at a time (masked adds leave a non-finite value's channel as
// it is).
KVCODEC_AVX512 void add_row_sums_avx512(const float* x, uint32_t n, const ChannelSumsSoA& s) {
  uint32_t c = 0;
  const __m256i one = _mm256_set1_epi32(1);
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    const __mmask8 m = _mm256_cmp_ps_mask(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_EQ_OQ);
    const __m512d vd = _mm512_cvtps_pd(v);
    const __m512d sum = _mm512_loadu_pd(s.sum + c), sq = _mm512_loadu_pd(s.sq + c);
    _mm512_storeu_pd(s.sum + c, _mm512_mask_add_pd(sum, m, sum, vd));
    _mm512_storeu_pd(s.sq + c, _mm512_mask_add_pd(sq, m, sq, _mm512_mul_pd(vd, vd)));
    __m256i* cnt = reinterpret_cast<__m256i*>(s.count + c);
    _mm256_storeu_si256(cnt, _mm256_mask_add_epi32(_mm256_loadu_si256(cnt), m, _mm256_loadu_si256(cnt), one));
  }
  add_row_sums_scalar(x + c, n - c, ChannelSumsSoA{s.sum + c, s.sq + c, s.count + c});
}

// add_row_sums and add_row_range for channels [c0, c0 + 32) of tokens [0, T), the accumulators
// held in registers across the tokens (each channel still summed in token order, so the doubles
// are add_row_sums' bit for bit). Elements are widened 32 at a time (F16C for fp16).
KVCODEC_AVX512 void column_stats32_avx512(const uint8_t* raw, size_t rp, uint8_t dt, uint32_t T, uint32_t c0,
                                           const ChannelSumsSoA& s, float* lo, float* hi) {
  const size_t es = dtype_size(DType(dt));
  __m512d sum[4], sq[4];
  for (int k = 0; k < 4; ++k) {
    sum[k] = _mm512_loadu_pd(s.sum + c0 + 8 * k);
    sq[k] = _mm512_loadu_pd(s.sq + c0 + 8 * k);
  }
  __m512i cnt[2];
  __m512 mn[2], mx[2];
  for (int k = 0; k < 2; ++k) {
    cnt[k] = _mm512_loadu_si512(s.count + c0 + 16 * k);
    mn[k] = _mm512_loadu_ps(lo + c0 + 16 * k);
    mx[k] = _mm512_loadu_ps(hi + c0 + 16 * k);
  }
  const __m512i one = _mm512_set1_epi32(1);
  alignas(64) float xb[32];
  for (uint32_t t = 0; t < T; ++t) {
    const uint8_t* r = raw + size_t(t) * rp + size_t(c0) * es;
    for (size_t b = 0; b < 32 * es; b += 64) __builtin_prefetch(r + 16 * rp + b);  // a hint (rows far apart)
    __m512 v[2];
    if (dt == 2) {
      v[0] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r)));
      v[1] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + 32)));
    } else {
      widen_to_f32(r, dt, 32, xb);
      v[0] = _mm512_load_ps(xb);
      v[1] = _mm512_load_ps(xb + 16);
    }
    for (int k = 0; k < 2; ++k) {
      const __mmask16 m = _mm512_cmp_ps_mask(_mm512_sub_ps(v[k], v[k]), _mm512_setzero_ps(), _CMP_EQ_OQ);
      cnt[k] = _mm512_mask_add_epi32(cnt[k], m, cnt[k], one);
      mn[k] = _mm512_mask_min_ps(mn[k], m, v[k], mn[k]);  // v < lo ? v : lo
      mx[k] = _mm512_mask_max_ps(mx[k], m, v[k], mx[k]);  // v > hi ? v : hi
      for (int h = 0; h < 2; ++h) {
        const __m512d vd = _mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(v[k], 1) : _mm512_castps512_ps256(v[k]));
        const __mmask8 mh = __mmask8(m >> (8 * h));
        __m512d& su = sum[2 * k + h];
        __m512d& sqr = sq[2 * k + h];
        su = _mm512_mask_add_pd(su, mh, su, vd);
        sqr = _mm512_mask_add_pd(sqr, mh, sqr, _mm512_mul_pd(vd, vd));
      }
    }
  }
  for (int k = 0; k < 4; ++k) {
    _mm512_storeu_pd(s.sum + c0 + 8 * k, sum[k]);
    _mm512_storeu_pd(s.sq + c0 + 8 * k, sq[k]);
  }
  for (int k = 0; k < 2; ++k) {
    _mm512_storeu_si512(s.count + c0 + 16 * k, cnt[k]);
    _mm512_storeu_ps(lo + c0 + 16 * k, mn[k]);
    _mm512_storeu_ps(hi + c0 + 16 * k, mx[k]);
  }
}
#pragma GCC diagnostic pop

// add_row_range eight channels at a time: min_ps(v, lo) is v < lo ? v : lo, as the scalar test.
__attribute__((target("avx2"))) void add_row_range_avx2(const float* x, uint32_t n, float* lo, float* hi) {
  uint32_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    const __m256 finite = _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_EQ_OQ);
    const __m256 l = _mm256_loadu_ps(lo + c), h = _mm256_loadu_ps(hi + c);
    _mm256_storeu_ps(lo + c, _mm256_blendv_ps(l, _mm256_min_ps(v, l), finite));
    _mm256_storeu_ps(hi + c, _mm256_blendv_ps(h, _mm256_max_ps(v, h), finite));
  }
  add_row_range_scalar(x + c, n - c, lo + c, hi + c);
}
#endif

bool use_avx2() { return avx2_enabled(); }

void screen_constants(const float* step, const double* inv_step, uint32_t C, float* inv_f, float* half_f) {
  for (uint32_t c = 0; c < C; ++c) {
    inv_f[c] = float(inv_step[c]);
    const bool ok = step[c] >= 0x1p-100f && step[c] <= 0x1p100f;  // also false for NaN
    half_f[c] = ok ? 0.5f * step[c] : -1.0f;
  }
}

void column_stats(const uint8_t* raw, size_t rp, uint8_t dt, uint32_t T, uint32_t C, float* row,
                  const ChannelSumsSoA& s, float* lo, float* hi) {
  uint32_t c0 = 0;
#if defined(__x86_64__)
  // Tiles of 16 tokens, all column blocks of a tile in turn: the rows are read about in order
  // (each channel's sums still in token order: the accumulators go to memory between tiles).
  if (avx512_enabled()) {
    const uint32_t blocks = C / 32 * 32;
    for (uint32_t t0 = 0; t0 < T; t0 += 16)
      for (c0 = 0; c0 < blocks; c0 += 32)
        column_stats32_avx512(raw + size_t(t0) * rp, rp, dt, std::min(T - t0, 16u), c0, s, lo, hi);
    c0 = blocks;
  }
#endif
  if (c0 == C) return;
  const size_t es = dtype_size(DType(dt));
  const ChannelSumsSoA rest{s.sum + c0, s.sq + c0, s.count + c0};
  for (uint32_t t = 0; t < T; ++t) {
    widen_to_f32(raw + size_t(t) * rp + size_t(c0) * es, dt, C - c0, row);
    add_row_sums(row, C - c0, rest);
    add_row_range(row, C - c0, lo + c0, hi + c0);
  }
}

void quantize_row(const float* x, const RowGrid& g, uint32_t C, uint8_t dt, int16_t* q) {
#if defined(__x86_64__)
  if (avx512_enabled()) return quantize_row_avx512(x, g, C, dt, q);
  if (use_avx2()) return quantize_row_avx2(x, g, C, dt, q);
#endif
  quantize_row_scalar(x, g, C, dt, q);
}

void add_row_sums_scalar(const float* x, uint32_t n, const ChannelSumsSoA& s) {
  for (uint32_t c = 0; c < n; ++c) {
    const float v = x[c];
    if (!(v - v == 0.0f)) continue;  // add_sample's test
    s.sum[c] += v;
    s.sq[c] += double(v) * v;
    ++s.count[c];
  }
}

#if defined(__x86_64__)
// Four channels per step; a non-finite value leaves its channel's sums as they are (blend).
__attribute__((target("avx2"))) void add_row_sums_avx2(const float* x, uint32_t n, const ChannelSumsSoA& s) {
  uint32_t c = 0;
  for (; c + 4 <= n; c += 4) {
    const __m128 v = _mm_loadu_ps(x + c);
    const __m128 finite = _mm_cmp_ps(_mm_sub_ps(v, v), _mm_setzero_ps(), _CMP_EQ_OQ);
    const __m256d m = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(finite)));
    const __m256d vd = _mm256_cvtps_pd(v);
    const __m256d sum = _mm256_loadu_pd(s.sum + c), sq = _mm256_loadu_pd(s.sq + c);
    _mm256_storeu_pd(s.sum + c, _mm256_blendv_pd(sum, _mm256_add_pd(sum, vd), m));
    _mm256_storeu_pd(s.sq + c, _mm256_blendv_pd(sq, _mm256_add_pd(sq, _mm256_mul_pd(vd, vd)), m));
    const __m128i cnt = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s.count + c));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(s.count + c), _mm_sub_epi32(cnt, _mm_castps_si128(finite)));
  }
  add_row_sums_scalar(x + c, n - c, ChannelSumsSoA{s.sum + c, s.sq + c, s.count + c});
}
#endif

void add_row_sums(const float* x, uint32_t n, const ChannelSumsSoA& s) {
#if defined(__x86_64__)
  if (avx512_enabled()) return add_row_sums_avx512(x, n, s);
  if (use_avx2()) return add_row_sums_avx2(x, n, s);
#endif
  add_row_sums_scalar(x, n, s);
}

void add_row_range(const float* x, uint32_t n, float* lo, float* hi) {
#if defined(__x86_64__)
  if (use_avx2()) return add_row_range_avx2(x, n, lo, hi);
#endif
  add_row_range_scalar(x, n, lo, hi);
}

namespace {

// One channel's robust pass (encode_values.hpp): the range it keeps and the sums of its values there.
struct RobustPass {
  uint32_t c;
  double a, b;
  ChannelSums next;
};

// The samples of one robust pass of every channel in `passes`, token by token (each channel's
// samples in token order, as add_sample_in takes them), from elements of type E at
// base[t * pitch + c] widened by `load`. The cache lines of the rows that hold the passes'
// elements are prefetched kRobustAhead tokens on: the rows are far apart, and a strided column
// read otherwise waits on each row in turn.
constexpr uint32_t kRobustAhead = 16;
template <typename E, typename Load>
void robust_sweep(const E* base, size_t pitch, uint32_t tokens, std::vector<RobustPass>& passes, Load load) {
  std::vector<uint32_t> lines;  // byte offsets in a row of the distinct cache lines read (ascending)
  for (const RobustPass& p : passes) {
    const uint32_t line = uint32_t(p.c * sizeof(E) / 64 * 64);
    if (lines.empty() || lines.back() != line) lines.push_back(line);
  }
  const char* bytes = reinterpret_cast<const char*>(base);
  for (uint32_t t = 0; t < tokens; ++t) {
    if (t + kRobustAhead < tokens)
      for (uint32_t off : lines) __builtin_prefetch(bytes + (size_t(t) + kRobustAhead) * pitch * sizeof(E) + off);
    const E* row = base + size_t(t) * pitch;
    for (RobustPass& p : passes) add_sample_in(p.next, load(row[p.c]), p.a, p.b);
  }
}

#if defined(__x86_64__)
// robust_sweep of up to 16 passes p[0, n) at once, one channel per vector lane: each token's
// elements of those channels collected (widened by `load`), then add_sample_in of all 16 lanes
// with masked operations, the same IEEE operations in the same order per channel: the range test
// in double, the sums in double (v * v is exact in double, fused or not), lo and hi by
// vminps / vmaxps (v < lo ? v : lo, as add_sample's test; the first sample sets them, as from
// +inf / -inf).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <bool kBf16, typename E, typename Load>
__attribute__((target("avx512f,avx512dq,avx512bw"))) void robust_sweep16_avx512(const E* base, size_t pitch, uint32_t tokens,
                                                                       RobustPass* p, uint32_t n, Load load) {
  alignas(64) double a[16], b[16];
  uint32_t ch[16];
  for (uint32_t j = 0; j < 16; ++j) {
    ch[j] = p[j < n ? j : 0].c;
    a[j] = j < n ? p[j].a : INFINITY;  // unused lanes keep nothing
    b[j] = j < n ? p[j].b : -INFINITY;
  }
  const __m512d a0 = _mm512_load_pd(a), a1 = _mm512_load_pd(a + 8), b0 = _mm512_load_pd(b), b1 = _mm512_load_pd(b + 8);
  __m512d sum0 = _mm512_setzero_pd(), sum1 = sum0, sq0 = sum0, sq1 = sum0;
  __m512i cnt = _mm512_setzero_si512();
  __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
  const __m512i one = _mm512_set1_epi32(1);
  const char* bytes = reinterpret_cast<const char*>(base);
  alignas(64) float x[16];
  alignas(32) uint16_t e16[16];
  for (uint32_t t = 0; t < tokens; ++t) {
    if (t + kRobustAhead < tokens)
      for (uint32_t j = 0; j < n; ++j)
        __builtin_prefetch(bytes + ((size_t(t) + kRobustAhead) * pitch + ch[j]) * sizeof(E));
    const E* row = base + size_t(t) * pitch;
    __m512 v;
    if constexpr (std::is_same_v<E, uint16_t>) {  // f16 (vcvtph2ps: the same finite values) or bf16
      for (uint32_t j = 0; j < 16; ++j) e16[j] = row[ch[j]];
      const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(e16));
      v = kBf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(w), 16)) : _mm512_cvtph_ps(w);
    } else {
      for (uint32_t j = 0; j < 16; ++j) x[j] = load(row[ch[j]]);
      v = _mm512_load_ps(x);
    }
    const __m512d v0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), v1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    const __mmask8 in0 = _mm512_cmp_pd_mask(v0, a0, _CMP_GE_OQ) & _mm512_cmp_pd_mask(v0, b0, _CMP_LE_OQ);
    const __mmask8 in1 = _mm512_cmp_pd_mask(v1, a1, _CMP_GE_OQ) & _mm512_cmp_pd_mask(v1, b1, _CMP_LE_OQ);
    const __mmask16 m = __mmask16((uint32_t(in0) | uint32_t(in1) << 8) &
                                  _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_EQ_OQ));
    const __mmask8 m0 = __mmask8(m), m1 = __mmask8(m >> 8);
    sum0 = _mm512_mask_add_pd(sum0, m0, sum0, v0);
    sum1 = _mm512_mask_add_pd(sum1, m1, sum1, v1);
    sq0 = _mm512_mask_add_pd(sq0, m0, sq0, _mm512_mul_pd(v0, v0));
    sq1 = _mm512_mask_add_pd(sq1, m1, sq1, _mm512_mul_pd(v1, v1));
    cnt = _mm512_mask_add_epi32(cnt, m, cnt, one);
    lo = _mm512_mask_min_ps(lo, m, v, lo);
    hi = _mm512_mask_max_ps(hi, m, v, hi);
  }
  alignas(64) double su[16], sq[16];
  alignas(64) uint32_t co[16];
  alignas(64) float l[16], h[16];
  _mm512_store_pd(su, sum0);
  _mm512_store_pd(su + 8, sum1);
  _mm512_store_pd(sq, sq0);
  _mm512_store_pd(sq + 8, sq1);
  _mm512_store_si512(co, cnt);
  _mm512_store_ps(l, lo);
  _mm512_store_ps(h, hi);
  for (uint32_t j = 0; j < n; ++j) {
    ChannelSums& s = p[j].next;  // as add_sample_in left it: zero-initialised when no sample
    s.sum = su[j];
    s.sq = sq[j];
    s.count = co[j];
    s.lo = co[j] ? l[j] : 0.0f;
    s.hi = co[j] ? h[j] : 0.0f;
  }
}
#pragma GCC diagnostic pop
#endif

// robust_sweep, 16 channels at a time where AVX-512 is enabled. kBf16: E = uint16_t holds bf16
// (else f16).
template <bool kBf16 = false, typename E, typename Load>
void robust_sweep_any(const E* base, size_t pitch, uint32_t tokens, std::vector<RobustPass>& passes, Load load) {
#if defined(__x86_64__)
  if (avx512_enabled()) {
    for (size_t i = 0; i < passes.size(); i += 16)
      robust_sweep16_avx512<kBf16>(base, pitch, tokens, &passes[i], uint32_t(std::min<size_t>(16, passes.size() - i)), load);
    return;
  }
#endif
  robust_sweep(base, pitch, tokens, passes, load);
}

// robust_sweep for the dtype of `cols` (code 0: fp32, as compute_grids gives them).
void robust_sweep(const Columns& cols, uint32_t tokens, std::vector<RobustPass>& passes) {
  switch (cols.dtype) {
    case 0:
    case 1: return robust_sweep_any(static_cast<const float*>(cols.base), cols.pitch, tokens, passes, [](float v) { return v; });
    case 2:
      return robust_sweep_any(static_cast<const uint16_t*>(cols.base), cols.pitch, tokens, passes,
                              [](uint16_t h) { return f16_to_f32(h); });
    case 3:
      return robust_sweep_any<true>(static_cast<const uint16_t*>(cols.base), cols.pitch, tokens, passes,
                                    [](uint16_t h) { return bf16_to_f32(h); });
    default:
      return robust_sweep_any(static_cast<const uint8_t*>(cols.base), cols.pitch, tokens, passes,
                              [](uint8_t h) { return f8e4m3_to_f32(h); });
  }
}

}  // namespace

void grids_from_sums(const ChannelSumsSoA& s, const float* lo, const float* hi, uint32_t channels, uint32_t tokens,
                     const Columns& cols, double rel_step, StepMode mode, ChannelGrid* grids) {
  std::vector<ChannelSums> sums(channels);
  for (uint32_t c = 0; c < channels; ++c) {
    sums[c] = ChannelSums{s.sum[c], s.sq[c], s.count[c], 0, lo[c], hi[c]};
    finish_sums(sums[c]);
  }
  // Robust passes (encode_values.hpp), per channel: up to kRobustPasses while outlier_range finds
  // an outlier and accept_pass takes the pass. All channels' k-th passes are taken in one sweep
  // over the tokens, row by row (each channel's samples still in token order).
  std::vector<RobustPass> passes;
  std::vector<float> row;
  std::vector<uint32_t> active(channels);
  for (uint32_t c = 0; c < channels; ++c) active[c] = c;
  for (int pass = 0; pass < kRobustPasses && !active.empty(); ++pass) {
    passes.clear();
    for (uint32_t c : active) {
      double a, b;
      if (outlier_range(sums[c], &a, &b)) passes.push_back(RobustPass{c, a, b, ChannelSums{}});
    }
    if (passes.empty()) break;
    // Many channels, no AVX-512: each row widened at once (the same values as robust_sweep's loads).
    if (cols.dtype != 0 && passes.size() * 16 >= channels && !avx512_enabled()) {
      const size_t es = dtype_size(DType(cols.dtype));
      row.resize(channels);
      for (uint32_t t = 0; t < tokens; ++t) {
        widen_to_f32(static_cast<const uint8_t*>(cols.base) + size_t(t) * cols.pitch * es, cols.dtype, channels, row.data());
        for (RobustPass& p : passes) add_sample_in(p.next, row[p.c], p.a, p.b);
      }
    } else {
      robust_sweep(cols, tokens, passes);
    }
    active.clear();
    for (const RobustPass& p : passes)
      if (accept_pass(sums[p.c], p.next)) active.push_back(p.c);
  }
  const double layer_rms = mode == StepMode::kLayer ? layer_scale(sums.data(), channels) : 0.0;
  for (uint32_t c = 0; c < channels; ++c) grids[c] = channel_grid(sums[c], layer_rms, mode, rel_step);
}

// Deltas of one token's block to its anchor's (delta_value, on int16 so it vectorises).
void delta_row(int16_t* v, const int16_t* a, uint32_t n) {
  for (uint32_t j = 0; j < n; ++j) {
    const int16_t q = v[j], qa = a[j] == kEscapeQ ? int16_t(0) : a[j];
    const int16_t d = int16_t(q - qa);  // |q|, |qa| <= 255: no overflow
    v[j] = q == kEscapeQ || d < -kQLimit || d > kQLimit ? kEscapeQ : d;
  }
}

constexpr size_t kPrefetchRows = 16;

template <int kIsa>  // 0 scalar, 1 AVX2, 2 AVX-512
void quantize_columns_impl(const uint8_t* raw, size_t rp, uint8_t dt, uint32_t t0, uint32_t t1, uint32_t c0, uint32_t n,
                           const RowGrid& g, uint32_t CT, uint32_t GT, int16_t* val, size_t VP) {
  const size_t es = dtype_size(DType(dt));
  const RowGrid gb{g.step + c0, g.inv_step + c0, g.center + c0, g.center_i + c0, g.inv_f ? g.inv_f + c0 : nullptr,
                   g.half_f ? g.half_f + c0 : nullptr};
  float xb[kColumnBlock];
  const size_t block_bytes = size_t(n) * es;
  uint32_t in_chunk = t0 % CT, in_group = in_chunk % GT;  // of token t, stepped (no division per row)
  for (uint32_t t = t0; t < t1; ++t) {
    const uint8_t* r = raw + size_t(t) * rp + c0 * es;
    int16_t* vr = val + size_t(t) * VP + c0;
    // The block's row kPrefetchRows tokens on (rows are far apart: the hardware prefetcher
    // does not follow them). A hint only: the address may be past the tensor's end.
    for (size_t b = 0; b < block_bytes; b += 64) __builtin_prefetch(r + kPrefetchRows * rp + b);
#if defined(__x86_64__)
    if constexpr (kIsa == 2) {
      if (dt == 2) quantize_row_avx512_t(reinterpret_cast<const uint16_t*>(r), gb, n, dt, vr);
      else {
        widen_to_f32(r, dt, n, xb);
        quantize_row_avx512(xb, gb, n, dt, vr);
      }
    } else if constexpr (kIsa == 1) {
      if (dt == 2) f16_to_f32_avx2(reinterpret_cast<const uint16_t*>(r), n, xb);
      else widen_to_f32(r, dt, n, xb);
      quantize_row_avx2(xb, gb, n, dt, vr);
    } else
#endif
    {
      widen_to_f32(r, dt, n, xb);
      quantize_row_scalar(xb, gb, n, dt, vr);
    }
    if (in_group) delta_row(vr, vr - size_t(in_group) * VP, n);
    if (++in_chunk == CT) in_chunk = in_group = 0;
    else if (++in_group == GT) in_group = 0;
  }
}

void quantize_columns(const uint8_t* raw, size_t raw_pitch, uint8_t dt, uint32_t t0, uint32_t t1, uint32_t c0, uint32_t n,
                      const RowGrid& g, uint32_t chunk_tokens, uint32_t group_tokens, int16_t* val, size_t val_pitch) {
  if (avx512_enabled()) return quantize_columns_impl<2>(raw, raw_pitch, dt, t0, t1, c0, n, g, chunk_tokens, group_tokens, val, val_pitch);
  if (use_avx2()) return quantize_columns_impl<1>(raw, raw_pitch, dt, t0, t1, c0, n, g, chunk_tokens, group_tokens, val, val_pitch);
  quantize_columns_impl<0>(raw, raw_pitch, dt, t0, t1, c0, n, g, chunk_tokens, group_tokens, val, val_pitch);
}

}  // namespace detail
}  // namespace kvcodec
