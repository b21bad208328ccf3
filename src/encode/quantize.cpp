#include "encode/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
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
  std::vector<ChannelSums> sums(channels);
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* row = x + size_t(t) * channels;
    for (uint32_t c = 0; c < channels; ++c) add_sample(sums[c], row[c]);
  }
  for (uint32_t c = 0; c < channels; ++c) {  // robust passes (encode_values.hpp), rare
    ChannelSums& s = sums[c];
    finish_sums(s);
    double a, b;
    for (int pass = 0; pass < kRobustPasses && outlier_range(s, &a, &b); ++pass) {
      ChannelSums next;
      for (uint32_t t = 0; t < tokens; ++t) add_sample_in(next, x[size_t(t) * channels + c], a, b);
      if (!accept_pass(s, next)) break;
    }
  }
  const double layer_rms = mode == StepMode::kLayer ? layer_scale(sums.data(), channels) : 0.0;
  for (uint32_t c = 0; c < channels; ++c) grids[c] = channel_grid(sums[c], layer_rms, mode, rel_step);
}

int32_t quantize_value(float x, float step, int32_t center, DType dt) noexcept {
  const int32_t n = detail::quantize_grid(x, step, 1.0 / double(step), center, uint8_t(dt));
  return n == detail::kEscapeIndex ? kEscape : n;
}

namespace detail {

// The fast path of quantize_grid for a whole row, written in double arithmetic without branches
// so the compiler vectorises it (an AVX2 clone is selected at run time where available; the
// operations are the same IEEE ones either way, so the result does not depend on the clone).
// q[c] is the grid offset as a double, or kMiss where the element needs the exact scalar path.
constexpr double kMiss = 1e9;

// One element of the fast path (also the reference for the vector version below).
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

void quantize_row_fast_scalar(const float* x, const RowGrid& g, uint32_t C, float maxf, double* q) {
  for (uint32_t c = 0; c < C; ++c) q[c] = quantize_fast_one(x[c], g.step[c], g.inv_step[c], g.center[c], maxf);
}

#if defined(__x86_64__)
// The same operations, four at a time (round-to-nearest-even rounding, exact conversions).
__attribute__((target("avx2"))) void quantize_row_fast_avx2(const float* x, const RowGrid& g, uint32_t C, float maxf,
                                                             double* q) {
  const __m256d lo = _mm256_set1_pd(-255.0), hi = _mm256_set1_pd(255.0), halfc = _mm256_set1_pd(0.5);
  const __m256d miss = _mm256_set1_pd(kMiss);
  const __m128 maxv = _mm_set1_ps(maxf), absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  uint32_t c = 0;
  for (; c + 4 <= C; c += 4) {
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
    _mm256_storeu_pd(q + c, _mm256_blendv_pd(miss, d, good));
  }
  for (; c < C; ++c) q[c] = quantize_fast_one(x[c], g.step[c], g.inv_step[c], g.center[c], maxf);
}
#endif

void quantize_row_fast(const float* x, const RowGrid& g, uint32_t C, float maxf, double* q) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2 && simd_enabled()) return quantize_row_fast_avx2(x, g, C, maxf, q);
#endif
  quantize_row_fast_scalar(x, g, C, maxf, q);
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

void quantize_row(const float* x, const RowGrid& g, uint32_t C, uint8_t dt, int16_t* q) {
  thread_local std::vector<double> d;
  d.resize(C);
  quantize_row_fast(x, g, C, max_finite(dt), d.data());
  for (uint32_t c = 0; c < C; ++c) {
    if (d[c] != kMiss) {
      q[c] = int16_t(d[c]);
      continue;
    }
    const int32_t n = quantize_grid(x[c], g.step[c], g.inv_step[c], g.center_i[c], dt);
    q[c] = n == kEscapeIndex ? kEscapeQ : int16_t(n - g.center_i[c]);
  }
}

}  // namespace detail
}  // namespace kvcodec
