// Building probability tables from counts, and the rANS lane encoders (scalar and AVX2) that
// write one stream: the encoder's half of common/entropy.hpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <limits>

#include "common/entropy.hpp"
#include "common/rans_lanes.hpp"
#include "common/simd.hpp"
#include "encode/model_values.hpp"

namespace kvcodec {

using detail::kRansM;

namespace {

// detail::freq_step_dlog for the frequencies of a table (1..kRansM), from a table of log2_q32.
uint64_t freq_step_dlog_small(uint32_t f, bool add) {
  struct Logs {
    uint64_t v[kRansM + 2];
    Logs() {
      v[0] = 0;
      for (uint32_t i = 1; i < kRansM + 2; ++i) v[i] = detail::log2_q32(i);
    }
  };
  static const Logs logs;
  return add ? logs.v[f + 1] - logs.v[f] : logs.v[f] - logs.v[f - 1];
}

}  // namespace

StatusOr<FreqTable> FreqTable::from_counts(std::span<const uint64_t> counts) {
  const size_t n = counts.size();
  if (n == 0 || n > 256) return InvalidArgument("a table has 1..256 symbols");
  uint64_t total = 0;
  for (uint64_t c : counts) {
    total += c;
  }
  if (total == 0) return InvalidArgument("a table needs at least one counted symbol");
  FreqTable t;
  t.freq.assign(n, 0);
  int64_t sum = 0;
  for (size_t s = 0; s < n; ++s) {
    t.freq[s] = uint16_t(detail::initial_freq(counts[s], total));
    sum += t.freq[s];
  }
  // Correct the rounding one unit at a time where it costs the fewest bits (the score of
  // encode/model_values.hpp). Integer fixed-point logs keep the choice identical on every
  // machine (common/log2.hpp); the device model builder (encode/block_model.hpp) makes the same
  // choices with one warp. Each step changes one symbol's frequency, so only its score is
  // computed again: the allowed symbols are kept in a heap ordered as the choice is (add: the
  // largest saving first, remove: the smallest loss; ties to the lowest symbol), so the best is
  // its top, the one a scan of all symbols would pick.
  if (sum != int64_t(kRansM)) {
    const bool add = sum < int64_t(kRansM);  // the direction never changes on the way to kRansM
    unsigned __int128 score[256];
    auto allowed = [&](size_t s) { return detail::freq_step_allowed(counts[s], t.freq[s], add); };
    auto rescore = [&](size_t s) { score[s] = (unsigned __int128)counts[s] * freq_step_dlog_small(t.freq[s], add); };
    auto after = [&](uint16_t a, uint16_t b) {  // a is chosen after b
      if (score[a] != score[b]) return add ? score[a] < score[b] : score[a] > score[b];
      return a > b;
    };
    uint16_t heap[256];
    size_t m = 0;
    for (size_t s = 0; s < n; ++s)
      if (allowed(s)) {
        rescore(s);
        heap[m++] = uint16_t(s);
      }
    std::make_heap(heap, heap + m, after);
    while (sum != int64_t(kRansM)) {
      if (m == 0) return InvalidArgument("more distinct symbols than probability slots");
      std::pop_heap(heap, heap + m, after);
      const uint16_t best = heap[--m];
      if (add) {
        ++t.freq[best];
        ++sum;
      } else {
        --t.freq[best];
        --sum;
      }
      if (allowed(best)) {
        rescore(best);
        heap[m++] = best;
        std::push_heap(heap, heap + m, after);
      }
    }
  }
  t.cum.assign(n, 0);
  for (size_t s = 1; s < n; ++s) t.cum[s] = uint16_t(t.cum[s - 1] + t.freq[s - 1]);
  return t;
}

double FreqTable::cost_bits(std::span<const uint64_t> counts) const noexcept {
  double bits = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (!counts[s]) continue;
    if (s >= freq.size() || !freq[s]) return std::numeric_limits<double>::infinity();
    bits += double(counts[s]) * (detail::kRansProbBits - std::log2(double(freq[s])));
  }
  return bits;
}

namespace detail {
namespace {

#if defined(__x86_64__)
// Permutations that move the words of the lanes in a mask to the top of 8 positions, in
// ascending lane order: position 8 - n + k takes the k-th set lane (n = bits set).
struct CompressPerm {
  alignas(32) uint32_t idx[256][8];
  CompressPerm() {
    for (uint32_t m = 0; m < 256; ++m) {
      const uint32_t n = uint32_t(__builtin_popcount(m));
      uint32_t k = 0;
      for (uint32_t j = 0; j < 8; ++j) idx[m][j] = 0;
      for (uint32_t j = 0; j < 8; ++j)
        if (m >> j & 1) idx[m][8 - n + k++] = j;
    }
  }
};

// floor(x / f) and x mod f for 8 lanes, x < f * 2^20 (x unsigned 32-bit) and 1 <= f <= 4096: an
// estimate in float (x rounded to float, a reciprocal with one Newton step: relative error below
// 2^-21, so the estimate of the quotient, below 2^20, is off by less than 1) truncated, then
// corrected by at most one in either direction from the remainder, which is exact in integers
// (mod 2^32). The result is the exact quotient: no division instruction.
__attribute__((target("avx2"))) inline __m256i quotient8(__m256i x, __m256i f, __m256i* rem) {
  const __m256 two16 = _mm256_set1_ps(65536.0f), two = _mm256_set1_ps(2.0f);
  const __m256 xf = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 16)), two16),
                                  _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0xffff))));
  const __m256 ff = _mm256_cvtepi32_ps(f);
  __m256 r = _mm256_rcp_ps(ff);
  r = _mm256_mul_ps(r, _mm256_sub_ps(two, _mm256_mul_ps(ff, r)));
  __m256i q = _mm256_cvttps_epi32(_mm256_mul_ps(xf, r));
  __m256i m = _mm256_sub_epi32(x, _mm256_mullo_epi32(q, f));  // x - q * f, in (-f, 2f)
  const __m256i neg = _mm256_cmpgt_epi32(_mm256_setzero_si256(), m);
  q = _mm256_add_epi32(q, neg);  // -1 where m < 0
  m = _mm256_add_epi32(m, _mm256_and_si256(neg, f));
  const __m256i big = _mm256_cmpgt_epi32(m, _mm256_sub_epi32(f, _mm256_set1_epi32(1)));
  q = _mm256_sub_epi32(q, big);  // +1 where m >= f
  *rem = _mm256_sub_epi32(m, _mm256_and_si256(big, f));
  return q;
}

// The backward lane loop 8 lanes at a time. Scalar rans_enc_put per lane, same order of words:
// within a step the scalar loop pushes lane i0+7 first and i0 last onto a downward-growing
// buffer, so the step's words end up in ascending lane order just below the previous ones.
// The quotient x / freq comes from quotient8 (exact, no division).
__attribute__((target("avx2,popcnt"))) void encode_codes_avx2(const uint32_t* codes, size_t n, uint32_t* x,
                                                               uint16_t*& w) {
  static const CompressPerm perm;
  __m256i X[4];
  for (int q = 0; q < 4; ++q) X[q] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 8 * q));
  const __m256i kLow16 = _mm256_set1_epi32(0xffff), kOne = _mm256_set1_epi32(1);
  for (size_t i0 = n; i0 >= 8;) {
    i0 -= 8;
    const uint32_t r = uint32_t(i0 / 8) & 3;
    __m256i xs = X[r];
    const __m256i code = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i0));
    const __m256i freq = _mm256_srli_epi32(code, 16);
    const __m256i cum = _mm256_and_si256(code, kLow16);
    // x >= freq << 20  <=>  (x >> 20) >= freq  (no overflow for freq = 4096)
    const __m256i emit = _mm256_cmpgt_epi32(_mm256_srli_epi32(xs, 20), _mm256_sub_epi32(freq, kOne));
    const uint32_t m = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(emit)));
    if (m) {
      const uint32_t cnt = uint32_t(__builtin_popcount(m));
      const __m256i words = _mm256_permutevar8x32_epi32(
          _mm256_and_si256(xs, kLow16), _mm256_load_si256(reinterpret_cast<const __m256i*>(perm.idx[m])));
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(words, words), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(w - 8), _mm256_castsi256_si128(packed));
      w -= cnt;
      xs = _mm256_blendv_epi8(xs, _mm256_srli_epi32(xs, 16), emit);
    }
    __m256i rem;
    const __m256i q = quotient8(xs, freq, &rem);
    X[r] = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(q, 12), rem), cum);
  }
  for (int q = 0; q < 4; ++q) _mm256_storeu_si256(reinterpret_cast<__m256i*>(x + 8 * q), X[q]);
}

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* operands.
#pragma GCC diagnostic push
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define KVCODEC_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,popcnt")))

// One step of encode_codes_avx512: symbols [i0, i0 + 16), lane states X. The step is bound by
// the vector ports, so it keeps its instructions few. The quotient as quotient8's, for 16 lanes:
// x converted as unsigned, a 14-bit reciprocal and one Newton step put the float estimate of
// x / f within 2^-22 relative of it (within 1/4 for a quotient below 2^20); 1/2 less, truncated,
// is q or q - 1, and the exact remainder m = x - q * f (in [0, 2f)) says which. Here the estimate
// x * r - 1/2 is one fused multiply-subtract (one rounding instead of two, of at most 1/16 below
// 2^20: the truncation is still q or q - 1), and the state is (q << 12) + m + cum, plus 4096 - f
// where m >= f (then q + 1 and m - f are the quotient and the remainder).
KVCODEC_AVX512 inline void encode_step16(const uint32_t* codes, size_t i0, __m512i& X, uint16_t*& w) {
  const __m512i kLow16 = _mm512_set1_epi32(0xffff);
  __m512i xs = X;
  const __m512i code = _mm512_loadu_si512(codes + i0);
  const __m512i freq = _mm512_srli_epi32(code, 16);
  const __mmask16 emit = _mm512_cmpge_epu32_mask(_mm512_srli_epi32(xs, 20), freq);
  const uint32_t cnt = uint32_t(__builtin_popcount(uint32_t(emit)));
  const __m256i words = _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(emit, _mm512_and_si512(xs, kLow16)));
  _mm256_mask_storeu_epi16(w - cnt, __mmask16((1u << cnt) - 1), words);
  w -= cnt;
  xs = _mm512_mask_srli_epi32(xs, emit, xs, 16);
  const __m512 ff = _mm512_cvtepi32_ps(freq);
  __m512 r = _mm512_rcp14_ps(ff);
  r = _mm512_mul_ps(r, _mm512_sub_ps(_mm512_set1_ps(2.0f), _mm512_mul_ps(ff, r)));
  const __m512i q = _mm512_cvttps_epi32(_mm512_fmsub_ps(_mm512_cvtepu32_ps(xs), r, _mm512_set1_ps(0.5f)));
  const __m512i m = _mm512_sub_epi32(xs, _mm512_mullo_epi32(q, freq));
  const __mmask16 big = _mm512_cmpge_epi32_mask(m, freq);
  const __m512i x1 = _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(q, 12), _mm512_and_si512(code, kLow16)), m);
  X = _mm512_mask_add_epi32(x1, big, x1, _mm512_sub_epi32(_mm512_set1_epi32(1 << 12), freq));
}

// encode_codes_avx2 16 lanes at a time (two vectors of lane states, lanes 0-15 and 16-31): the
// emitted words are compressed to the bottom in ascending lane order and stored under a mask
// just below the previous ones. n is a multiple of 16.
KVCODEC_AVX512 void encode_codes_avx512(const uint32_t* codes, size_t n, uint32_t* x, uint16_t*& w) {
  __m512i X0 = _mm512_loadu_si512(x), X1 = _mm512_loadu_si512(x + 16);
  size_t i0 = n;
  if (i0 % 32) encode_step16(codes, i0 -= 16, X0, w);  // symbols i0.. are lanes 0-15
  while (i0 >= 32) {
    encode_step16(codes, i0 -= 16, X1, w);
    encode_step16(codes, i0 -= 16, X0, w);
  }
  _mm512_storeu_si512(x, X0);
  _mm512_storeu_si512(x + 16, X1);
}
#pragma GCC diagnostic pop
#endif

}  // namespace

void LaneStreamEncoder::begin(size_t n) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  avx2_ = avx2 && simd_enabled();
  avx512_ = avx2_ && avx512_enabled();
#endif
  for (auto& s : x_) s = kRansL;
  if (cap_ < n + 8) {  // <= one word per symbol, and 8 words of room below for the vector stores
    cap_ = n + 8;
    buf_.reset(new uint16_t[cap_]);  // not initialised: pages are touched only where written
  }
  end_ = w_ = buf_.get() + cap_;
}

void LaneStreamEncoder::put(const uint32_t* codes, size_t s0, size_t s1) {
  const size_t n = s1 - s0;  // local index i is symbol s0 + i, in the same lane (s0 % kRansLanes == 0)
  // The partial last group first (the loop runs backwards), then whole groups of 8 (16).
  const size_t whole = !avx2_ ? 0 : n & ~size_t(avx512_ ? 15 : 7);
  for (size_t i = n; i-- > whole;) {
    uint16_t word;
    if (rans_enc_put(x_[i % kRansLanes], codes[i] >> 16, codes[i] & 0xffff, &word)) *--w_ = word;
  }
#if defined(__x86_64__)
  if (avx512_) encode_codes_avx512(codes, whole, x_, w_);
  else if (avx2_) encode_codes_avx2(codes, whole, x_, w_);
#endif
}

void LaneStreamEncoder::finish(std::vector<uint8_t>& out) { append_lane_stream(x_, w_, size_t(end_ - w_), out); }
void LaneStreamEncoder::finish_into(uint8_t* p) const { write_lane_stream(x_, w_, size_t(end_ - w_), p); }

void rans_encode_codes(const uint32_t* codes, size_t n, std::vector<uint16_t>& scratch, std::vector<uint8_t>& out) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2 && simd_enabled()) {
    LaneStreamEncoder e;
    e.begin(n);
    e.put(codes, 0, n);
    e.finish(out);
    return;
  }
#endif
  rans_encode_lanes(
      n,
      [&](size_t i, uint32_t* f, uint32_t* cum) {
        *f = codes[i] >> 16;
        *cum = codes[i] & 0xffff;
      },
      scratch, out);
}

}  // namespace detail

Status rans_encode(std::span<const uint8_t> symbols, const FreqTable& table, std::vector<uint8_t>& out) {
  for (uint8_t s : symbols)
    if (s >= table.size() || !table.freq[s]) return InvalidArgument("symbol not in the table");
  std::vector<uint16_t> scratch;
  detail::rans_encode_lanes(
      symbols.size(),
      [&](size_t i, uint32_t* f, uint32_t* c) {
        *f = table.freq[symbols[i]];
        *c = table.cum[symbols[i]];
      },
      scratch, out);
  return Status::Ok();
}

}  // namespace kvcodec
