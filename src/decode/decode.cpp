// Decoder: frame head -> decode tables -> per (chunk, layer) rANS lanes -> values -> layout view.
// Every read is bounds-checked; a corrupt frame yields a Status, never a crash or a silently
// wrong tensor (lanes must end in their initial state with every word and escape consumed).
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <string>

#include "common/bytes.hpp"
#include "common/frame.hpp"
#include "common/metrics.hpp"
#include "common/stored_unit.hpp"
#include "common/parallel.hpp"
#include "common/profile_rows.hpp"
#include "common/quant.hpp"
#include "common/rans_lanes.hpp"
#include "common/rans_step.hpp"
#include "common/simd.hpp"
#include "common/unit.hpp"
#include "common/warp.hpp"
#include "kvcodec/codec.hpp"

namespace kvcodec {
namespace detail {

// The CPU decoder's form of a probability table: for every slot x & (M-1), one packed entry
// (common/rans_step.hpp's rans_pack_entry), so one load yields the symbol and the state update.
// (The warp decoder's table, laid out for the GPU, is decode/packed_model.hpp's DecTable.)
struct SlotTable {
  uint32_t entry[kRansM];
  int32_t qmin;
  uint32_t esc;  // escape symbol (lossy), or 256 (none)
};

struct DecLayer {
  uint32_t slots = 1;
  uint32_t raw_planes = 0;  // lossless, version 5: bit p = byte plane p is raw (docs/format.md 4.5)
  std::vector<SlotTable> tables;
  std::vector<uint32_t> table_base;  // per channel: group * slots
  std::vector<float> step;
  std::vector<int32_t> center;
  // Lossy: the decoded anchor values, per channel and anchor symbol, already in the output dtype
  // (anchor_lut()[anchor_off[c] + s]); anchors need no arithmetic at all. Built on first use:
  // the vectorised f16/f32 loop computes its values and never reads it, and at the fine levels it
  // is tens of MB (65,536 channels x ~250 symbols), most of the time of opening a head.
  struct AnchorLut {
    std::once_flag once;
    std::vector<uint8_t> bytes;
  };
  std::unique_ptr<AnchorLut> lazy_lut = std::make_unique<AnchorLut>();
  uint8_t dtype = 0;
  std::vector<uint32_t> anchor_off;
  // For the vectorised anchor loop: per channel, its anchor table's offset in 32-bit words from
  // tables.data(), and its escape symbol.
  std::vector<uint32_t> anchor_tab_word;
  std::vector<uint32_t> anchor_esc;
  std::vector<int32_t> anchor_base;  // center + qmin of the anchor table: grid index of symbol 0

  const uint8_t* anchor_lut() const {
    std::call_once(lazy_lut->once, [this] {
      const size_t es = dtype_size(DType(dtype)), C = step.size();
      // 8 spare bytes: the vector loop may gather (and discard) one element past a channel's values.
      lazy_lut->bytes.resize(size_t(anchor_off[C]) * es + 8);
      for (size_t c = 0; c < C; ++c)
        for (uint32_t s = 0; s < anchor_esc[c]; ++s)
          detail::store_from_f32(&lazy_lut->bytes[(anchor_off[c] + s) * es], dtype,
                                 detail::dequantize(anchor_base[c] + int32_t(s), step[c]));
    });
    return lazy_lut->bytes.data();
  }
};

struct Decoder {
  FrameInfo info;
  size_t es = 0;
  std::vector<DecLayer> layers;  // [layer * 2 + kv]
  // Transform-coded frames (version 4): the profile, and the decoder of the coefficient frame
  // (profile_rows.hpp's coefficient_frame) that holds the tables; `layers` stays empty.
  std::shared_ptr<const Profile> profile;
  std::shared_ptr<const Decoder> coded;
};

}  // namespace detail

namespace {

using detail::DecLayer;
using detail::SlotTable;
using detail::Decoder;
using detail::kRansM;

// Parses the head and builds the decode tables of the layers [lb, le) (the others stay empty:
// a decode of a layer range builds only what it uses).
StatusOr<std::shared_ptr<Decoder>> make_decoder(std::span<const uint8_t> head, uint32_t lb = 0,
                                                uint32_t le = UINT32_MAX) {
  KVCODEC_ASSIGN_OR_RETURN(detail::FrameHead h, detail::parse_head(head));
  KVCODEC_RETURN_IF_ERROR(detail::require_plain_frame(h.info));
  auto d = std::make_shared<Decoder>();
  d->info = std::move(h.info);
  d->es = dtype_size(d->info.dtype);
  const bool lossless = detail::is_lossless(d->info);
  const uint8_t dt = uint8_t(d->info.dtype);
  d->layers.resize(h.layers.size());
  for (size_t i = 0; i < h.layers.size(); ++i) {
    const detail::LayerModel& m = h.layers[i];
    DecLayer& dl = d->layers[i];
    dl.raw_planes = m.raw_planes;  // every unit's layout depends on it (locate)
    if (i / 2 < lb || i / 2 >= le) continue;
    dl.slots = m.slots;
    dl.tables.resize(m.tables.size());
    for (size_t t = 0; t < m.tables.size(); ++t) {
      const FreqTable& ft = m.tables[t].table;
      SlotTable& tb = dl.tables[t];
      for (size_t s = 0; s < ft.size(); ++s)
        for (uint32_t k = 0; k < ft.freq[s]; ++k)
          tb.entry[ft.cum[s] + k] = detail::rans_pack_entry(ft.freq[s], k, uint32_t(s));
      tb.qmin = m.tables[t].qmin;
      tb.esc = lossless ? 256u : uint32_t(ft.size() - 1);
    }
    const size_t C = m.channel_group.size();
    dl.table_base.resize(C);
    for (size_t c = 0; c < C; ++c) dl.table_base[c] = m.channel_group[c] * m.slots;
    if (lossless) continue;
    dl.step.resize(C);
    for (size_t c = 0; c < C; ++c) dl.step[c] = detail::step_from_code(m.step_code[c]);
    dl.center = m.center;
    dl.anchor_off.resize(C + 1, 0);
    for (size_t c = 0; c < C; ++c) dl.anchor_off[c + 1] = dl.anchor_off[c] + dl.tables[dl.table_base[c]].esc;
    dl.dtype = dt;
    dl.anchor_tab_word.resize(C);
    dl.anchor_esc.resize(C);
    static_assert(sizeof(SlotTable) % 4 == 0);
    for (size_t c = 0; c < C; ++c) {
      dl.anchor_tab_word[c] = uint32_t(dl.table_base[c] * (sizeof(SlotTable) / 4));
      dl.anchor_esc[c] = dl.tables[dl.table_base[c]].esc;
    }
    dl.anchor_base.resize(C);
    for (size_t c = 0; c < C; ++c) dl.anchor_base[c] = dl.center[c] + dl.tables[dl.table_base[c]].qmin;
  }
  return d;
}

// True when the C = kv_heads * head_dim elements of one (layer, K/V, token) are contiguous in the
// view, so rows can be decoded in place.
bool rows_in_place(const KVView& v) {
  return v.stride[4] == 1 && v.stride[3] == int64_t(v.shape.head_dim) &&
         (v.kind != KVView::Kind::kPaged || v.slot_stride == int64_t(v.shape.channels()));
}

// Scatters decoded rows [tokens][C] of (l, kv) into the view.
void scatter(const KVView& v, uint32_t l, uint32_t kv, uint32_t t0, uint32_t tokens, const uint8_t* rows) {
  const size_t es = dtype_size(v.dtype);
  const uint32_t H = v.shape.kv_heads, D = v.shape.head_dim;
  for (uint32_t t = 0; t < tokens; ++t)
    for (uint32_t h = 0; h < H; ++h) {
      const uint8_t* src = rows + (size_t(t) * H + h) * D * es;
      if (v.rows_contiguous()) {
        std::memcpy(v.element(l, kv, t0 + t, h, 0), src, D * es);
      } else {
        for (uint32_t d = 0; d < D; ++d) std::memcpy(v.element(l, kv, t0 + t, h, d), src + d * es, es);
      }
    }
}

// Lane-stream reader: the 32 states and the word cursor, advanced one symbol at a time in
// stream order (lane = symbol index mod 32).
struct LaneReader {
  uint32_t x[kRansLanes];
  const uint8_t* wp;
  const uint8_t* we;
  uint32_t lane = 0;
  bool overrun = false;

  // Opens stream q of a unit whose layout detail::parse_unit has checked.
  Status open(const uint8_t* unit, const detail::UnitLayout& ul, uint32_t q) {
    const uint8_t* p = unit + ul.stream[q];
    for (uint32_t j = 0; j < kRansLanes; ++j) {
      x[j] = detail::load_le32(p + 4 + 4 * j);
      if (x[j] < detail::kRansL) return CorruptData("rANS lane state below the renormalisation bound");
    }
    wp = p + detail::kLaneStreamHeader;
    we = wp + 2 * size_t(ul.words[q]);
    return Status::Ok();
  }
  // Decodes the next symbol with table tb. A stream that runs out of words sets `overrun`,
  // reported by finish(); decoding goes on without reading past the stream.
  uint32_t next(const SlotTable& tb) {
    uint32_t& xs = x[lane];
    lane = (lane + 1) & (kRansLanes - 1);
    return detail::rans_decode_symbol(xs, tb.entry, wp, we, overrun);
  }
  Status finish() const {
    if (overrun) return CorruptData("rANS stream ran out of words");
    return detail::rans_check_end(x, wp == we);
  }
};

#if defined(__x86_64__)
// Permutations that place 8 consecutive 16-bit words into the lanes of a renormalisation mask:
// lane j with its bit set takes word popcount(mask & ((1 << j) - 1)).
struct WordPerm {
  alignas(32) uint32_t idx[256][8];
  constexpr WordPerm() : idx{} {
    for (uint32_t m = 0; m < 256; ++m) {
      uint32_t k = 0;
      for (uint32_t j = 0; j < 8; ++j) idx[m][j] = (m >> j & 1) ? k++ : 0;
    }
  }
};
// A constant table (no function-local static: its guard would sit in the step's hot path).
constexpr WordPerm kWordPerm;

bool cpu_has_avx2() {
  // Every AVX2 processor also has F16C (Intel since Ivy Bridge, AMD since Piledriver); clang's
  // __builtin_cpu_supports does not know "f16c", so AVX2 stands for both.
  static const bool has = __builtin_cpu_supports("avx2");
  return has && detail::simd_enabled();
}

// 8 lanes of uint32_t as a GCC/clang vector: the type common/rans_step.hpp's step runs on here.
typedef uint32_t U32x8 __attribute__((vector_size(32)));
typedef int32_t I32x8 __attribute__((vector_size(32)));

// 32 rANS lanes as four 8-lane AVX2 registers, stepping through a lane stream 8 symbols at a time
// exactly as LaneReader does one at a time (the same step, common/rans_step.hpp): entries
// gathered from the tables, words expanded into the lanes that renormalise (in ascending lane
// order, as the format reads them).
struct AvxLanes {
  __m256i X[4];
  uint32_t r = 0;  // register of the next group of 8 lanes
  const uint8_t* wp;
  const uint8_t* we;
  const int* tbase;  // tables, addressed in 32-bit words

  __attribute__((target("avx2"))) void load(const LaneReader& rd, const DecLayer& dl) {
    for (int q = 0; q < 4; ++q) X[q] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rd.x + 8 * q));
    wp = rd.wp;
    we = rd.we;
    tbase = reinterpret_cast<const int*>(dl.tables.data());
  }
  __attribute__((target("avx2"))) void store(LaneReader& rd) const {
    for (int q = 0; q < 4; ++q) _mm256_storeu_si256(reinterpret_cast<__m256i*>(rd.x + 8 * q), X[q]);
    rd.wp = wp;
  }
  // Decodes the next 8 symbols with the lanes of register xr, lane j using the table at 32-bit
  // word offset toff[j]. False when the stream runs out of words (corrupt).
  // kSkipIdle: branch over the word read when no lane renormalises (pays off when few steps
  // read; a branch-free read wins when most do). kChecked: the stream may end within the next
  // 16 bytes (unchecked steps are for callers that know at least 16 bytes remain: words_left()).
  template <bool kSkipIdle, bool kChecked = true>
  __attribute__((target("avx2,popcnt"), always_inline)) inline bool step_lanes(__m256i& xr, __m256i toff,
                                                                              __m256i* sym) {
    U32x8 x = U32x8(xr), slot, s;
    detail::rans_slot(x, slot);
    const U32x8 e = U32x8(_mm256_i32gather_epi32(tbase, _mm256_add_epi32(toff, __m256i(slot)), 4));
    detail::rans_apply_entry(x, e, s);
    *sym = __m256i(s);
    I32x8 need;
    detail::rans_needs_word(x, need);
    const uint32_t m = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(__m256i(need))));
    // Branch-free renormalisation (whether a lane reads is data-dependent and unpredictable):
    // with m == 0 the permutation and blend change nothing and no word is consumed.
    if (kSkipIdle && !m) {
      xr = __m256i(x);
      return true;
    }
    const uint32_t n = uint32_t(__builtin_popcount(m));
    __m128i w16;
    if (!kChecked || __builtin_expect(we - wp >= 16, 1)) {
      w16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wp));
    } else {  // the stream's last words: never read past its end
      if (size_t(we - wp) < 2 * size_t(n)) return false;
      alignas(16) uint8_t tmp[16] = {0};
      std::memcpy(tmp, wp, size_t(we - wp));
      w16 = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
    }
    const U32x8 w = U32x8(_mm256_permutevar8x32_epi32(
        _mm256_cvtepu16_epi32(w16), _mm256_load_si256(reinterpret_cast<const __m256i*>(kWordPerm.idx[m]))));
    U32x8 shifted = x;
    detail::rans_shift_in(shifted, w);
    xr = _mm256_blendv_epi8(__m256i(x), __m256i(shifted), __m256i(need));
    wp += 2 * n;
    return true;
  }
  // Whether `steps` more steps can run unchecked: each consumes at most 8 words and reads 16 bytes.
  bool room_for(uint32_t steps) const { return size_t(we - wp) >= 16 * size_t(steps); }
  // The next 8 symbols in stream order (register r, then the next).
  template <bool kSkipIdle>
  __attribute__((target("avx2,popcnt"))) bool step(__m256i toff, __m256i* sym) {
    const bool ok = step_lanes<kSkipIdle>(X[r], toff, sym);
    r = (r + 1) & 3;
    return ok;
  }
};

// The anchor-only lossy loop (group_tokens == 1) with AVX2; output values computed (f16, f32)
// or gathered from the per-channel lookup table (bf16). Produces exactly what decode_lossy's
// scalar loop produces. Requires C % 8 == 0 (every group of 8 channels is 8 consecutive lanes)
// and ES of 2 or 4.
template <size_t ES>
struct AnchorsAvx2 {
  const DecLayer& dl;
  bool compute;  // f32 and f16 values are computed; bf16 ones are looked up (no bf16 in AVX2)
  const uint8_t* lut;  // dl.anchor_lut() where !compute
  const uint8_t* esc;
  uint32_t n_esc;
  uint32_t esc_used = 0;

  enum : int { kOk = 0, kOutOfWords, kEscapesExhausted };

  // The 8 channels c.. of one token with the lanes of register xr; out is the token's row.
  template <bool kChecked = true>
  __attribute__((target("avx2,f16c,popcnt"), always_inline)) inline int group(AvxLanes& lanes, __m256i& xr,
                                                                             uint32_t c, uint8_t* out) {
    __m256i sym;
    if (!lanes.step_lanes<false, kChecked>(xr, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dl.anchor_tab_word.data() + c)),
                                 &sym))
      return kOutOfWords;
    if (compute) {
      // value = float(center + qmin + sym) * step, rounded to the output: the scalar maths,
      // vectorised (F16C's conversion rounds to nearest even, as f32_to_f16 does).
      const __m256i n =
          _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dl.anchor_base.data() + c)), sym);
      const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(n), _mm256_loadu_ps(dl.step.data() + c));
      if constexpr (ES == 2) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c * ES), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
      } else {
        _mm256_storeu_ps(reinterpret_cast<float*>(out + c * ES), v);
      }
    } else {
      const __m256i lidx =
          _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dl.anchor_off.data() + c)), sym);
      const __m256i v = _mm256_i32gather_epi32(reinterpret_cast<const int*>(lut), lidx, int(ES));
      const __m256i lo = _mm256_and_si256(v, _mm256_set1_epi32(65535));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c * ES),
                       _mm_packus_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1)));
    }
    const __m256i is_esc =
        _mm256_cmpeq_epi32(sym, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dl.anchor_esc.data() + c)));
    uint32_t em = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(is_esc)));
    while (em) {  // escapes are rare: copy them in lane order from the escape block
      const uint32_t j = uint32_t(__builtin_ctz(em));
      em &= em - 1;
      if (esc_used == n_esc) return kEscapesExhausted;
      std::memcpy(out + (c + j) * ES, esc + size_t(esc_used++) * ES, ES);
    }
    return kOk;
  }

  // One token when C % 32 == 0 (it starts at register 0).
  template <bool kChecked>
  __attribute__((target("avx2,f16c,popcnt"), always_inline)) inline int token32(AvxLanes& lanes, uint32_t C,
                                                                               uint8_t* out) {
    int e = kOk;
    for (uint32_t c = 0; c < C && e == kOk; c += 32)
      if (!(e = group<kChecked>(lanes, lanes.X[0], c, out)) && !(e = group<kChecked>(lanes, lanes.X[1], c + 8, out)) &&
          !(e = group<kChecked>(lanes, lanes.X[2], c + 16, out)))
        e = group<kChecked>(lanes, lanes.X[3], c + 24, out);
    return e;
  }

  // k32 (C % 32 == 0): every token starts at lane 0, so each group's register is known at
  // compile time and the lane states stay in registers; tokens whose every step is sure to find
  // 16 bytes of words skip the per-step check.
  template <bool k32, typename RowOf>
  __attribute__((target("avx2,f16c,popcnt"))) Status run(uint32_t tokens, uint32_t C, LaneReader& rd, RowOf&& row) {
    AvxLanes lanes;
    lanes.load(rd, dl);
    int e = kOk;
    uint32_t g = 0;  // !k32: the register of the next group
    for (uint32_t t = 0; t < tokens && e == kOk; ++t) {
      uint8_t* out = row(t);
      if constexpr (k32) {
        e = lanes.room_for(C / 8) ? token32<false>(lanes, C, out) : token32<true>(lanes, C, out);
      } else {
        for (uint32_t c = 0; c < C && e == kOk; c += 8, g = (g + 1) & 3) e = group(lanes, lanes.X[g], c, out);
      }
    }
    if (e == kOutOfWords) return CorruptData("rANS stream ran out of words");
    if (e == kEscapesExhausted) return CorruptData("escape stream exhausted");
    lanes.store(rd);
    if (esc_used != n_esc) return CorruptData("unused escaped values");
    return rd.finish();
  }
};

template <size_t ES, typename RowOf>
Status decode_anchors_avx2(const DecLayer& dl, uint32_t tokens, uint32_t C, uint8_t dt, LaneReader& rd,
                           const uint8_t* esc, uint32_t n_esc, RowOf&& row) {
  static_assert(ES == 2 || ES == 4);
  const bool compute = dt != uint8_t(DType::kBF16);
  AnchorsAvx2<ES> a{dl, compute, compute ? nullptr : dl.anchor_lut(), esc, n_esc};
  if (C % 32 == 0) return a.template run<true>(tokens, C, rd, row);
  return a.template run<false>(tokens, C, rd, row);
}

// Stores the 8 elements whose P byte planes are s[0..P-1] (one byte per 32-bit lane) at out.
template <uint32_t P>
__attribute__((target("avx2"), always_inline)) inline void store_interleaved(const __m256i* s, uint8_t* out) {
  __m256i v = s[0];
  for (uint32_t q = 1; q < P; ++q) v = _mm256_or_si256(v, _mm256_slli_epi32(s[q], int(8 * q)));
  if constexpr (P == 4) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), v);
  } else {
    const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    if constexpr (P == 2) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), h);
    } else {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(h, h));
    }
  }
}

// One step of every coded plane for the 8 channels c.. of one token, with register g of each
// plane's lanes, and the bytes of every raw plane (bit q of Raw: plane q's bytes of this token at
// raw[q]); the elements' bytes interleaved and stored at once. False when a stream ran out.
template <uint32_t P, uint32_t Raw, bool kChecked = true>
__attribute__((target("avx2,popcnt"), always_inline)) inline bool plane_group(AvxLanes* lanes, uint32_t g,
                                                                             const uint32_t* tab_word, uint32_t C,
                                                                             uint32_t c, const uint8_t* const* raw,
                                                                             uint8_t* out) {
  __m256i s[P];
  for (uint32_t q = 0; q < P; ++q) {
    if (Raw >> q & 1) {
      s[q] = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(raw[q] + c)));
      continue;
    }
    if (!lanes[q].step_lanes<false, kChecked>(lanes[q].X[g],
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab_word + q * C + c)), &s[q]))
      return false;
  }
  store_interleaved<P>(s, out + size_t(c) * P);
  return true;
}

// One token's C elements when C % 32 == 0 (the token starts at register 0 of every plane).
template <uint32_t P, uint32_t Raw, bool kChecked>
__attribute__((target("avx2,popcnt"), always_inline)) inline bool plane_token32(AvxLanes* lanes, const uint32_t* tw,
                                                                               uint32_t C, const uint8_t* const* raw,
                                                                               uint8_t* out) {
  for (uint32_t c = 0; c < C; c += 32)
    if (!(plane_group<P, Raw, kChecked>(lanes, 0, tw, C, c, raw, out) &&
          plane_group<P, Raw, kChecked>(lanes, 1, tw, C, c + 8, raw, out) &&
          plane_group<P, Raw, kChecked>(lanes, 2, tw, C, c + 16, raw, out) &&
          plane_group<P, Raw, kChecked>(lanes, 3, tw, C, c + 24, raw, out)))
      return false;
  return true;
}

// A lossless unit's P byte planes with AVX2 (C % 8 == 0) in one pass over the elements: each
// group of 8 elements takes one step of every coded plane's lanes and 8 bytes of every raw
// plane (bit q of Raw; raw[q] its bytes, docs/format.md 4.5). k32 (C % 32 == 0): every token
// starts at lane 0, so the register of each group is known at compile time and the lane states
// stay in registers.
template <uint32_t P, uint32_t Raw, bool k32, typename RowOf>
__attribute__((target("avx2,popcnt"))) Status decode_planes_avx2(const DecLayer& dl, uint32_t tokens, uint32_t C,
                                                                  LaneReader* rd, const uint8_t* const* raw,
                                                                  RowOf&& row) {
  std::vector<uint32_t> tab_word(P * size_t(C));  // [plane][channel]: table offsets in 32-bit words
  for (uint32_t q = 0; q < P; ++q)
    for (uint32_t c = 0; c < C; ++c)
      tab_word[size_t(q) * C + c] = uint32_t((dl.table_base[c] + q) * (sizeof(SlotTable) / 4));
  const uint32_t* tw = tab_word.data();
  AvxLanes lanes[P];
  for (uint32_t q = 0; q < P; ++q)
    if (!(Raw >> q & 1)) lanes[q].load(rd[q], dl);
  const uint8_t* raw_row[P];  // this token's bytes of each raw plane
  for (uint32_t q = 0; q < P; ++q) raw_row[q] = raw[q];
  uint32_t g = 0;  // !k32: the register of the next group
  for (uint32_t t = 0; t < tokens; ++t) {
    uint8_t* out = row(t);
    if constexpr (k32) {
      // Tokens whose every step is sure to find 16 bytes of words skip the per-step check.
      bool room = true;
      for (uint32_t q = 0; q < P; ++q) room &= (Raw >> q & 1) || lanes[q].room_for(C / 8);
      if (!(room ? plane_token32<P, Raw, false>(lanes, tw, C, raw_row, out)
                 : plane_token32<P, Raw, true>(lanes, tw, C, raw_row, out)))
        return CorruptData("rANS stream ran out of words");
    } else {
      for (uint32_t c = 0; c < C; c += 8, g = (g + 1) & 3)
        if (!plane_group<P, Raw>(lanes, g, tw, C, c, raw_row, out)) return CorruptData("rANS stream ran out of words");
    }
    for (uint32_t q = 0; q < P; ++q)
      if (Raw >> q & 1) raw_row[q] += C;
  }
  for (uint32_t q = 0; q < P; ++q) {
    if (Raw >> q & 1) continue;
    lanes[q].store(rd[q]);
    KVCODEC_RETURN_IF_ERROR(rd[q].finish());
  }
  return Status::Ok();
}

template <uint32_t P, uint32_t Raw, typename RowOf>
Status decode_planes_avx2(const DecLayer& dl, uint32_t tokens, uint32_t C, LaneReader* rd, const uint8_t* const* raw,
                          RowOf&& row) {
  if (C % 32 == 0) return decode_planes_avx2<P, Raw, true>(dl, tokens, C, rd, raw, row);
  return decode_planes_avx2<P, Raw, false>(dl, tokens, C, rd, raw, row);
}

// The AVX2 loop for the raw planes of ordinary frames (none, the low byte, the low bytes of f32,
// all); false (nothing decoded) for other combinations, which the scalar loop decodes.
template <typename RowOf>
bool decode_planes_avx2_for(uint32_t es, uint32_t raw_planes, const DecLayer& dl, uint32_t tokens, uint32_t C,
                            LaneReader* rd, const uint8_t* const* raw, RowOf&& row, Status* st) {
  switch (es << 8 | raw_planes) {
    case 1 << 8 | 0: *st = decode_planes_avx2<1, 0>(dl, tokens, C, rd, raw, row); return true;
    case 1 << 8 | 1: *st = decode_planes_avx2<1, 1>(dl, tokens, C, rd, raw, row); return true;
    case 2 << 8 | 0: *st = decode_planes_avx2<2, 0>(dl, tokens, C, rd, raw, row); return true;
    case 2 << 8 | 1: *st = decode_planes_avx2<2, 1>(dl, tokens, C, rd, raw, row); return true;
    case 2 << 8 | 3: *st = decode_planes_avx2<2, 3>(dl, tokens, C, rd, raw, row); return true;
    case 4 << 8 | 0: *st = decode_planes_avx2<4, 0>(dl, tokens, C, rd, raw, row); return true;
    case 4 << 8 | 1: *st = decode_planes_avx2<4, 1>(dl, tokens, C, rd, raw, row); return true;
    case 4 << 8 | 3: *st = decode_planes_avx2<4, 3>(dl, tokens, C, rd, raw, row); return true;
    case 4 << 8 | 7: *st = decode_planes_avx2<4, 7>(dl, tokens, C, rd, raw, row); return true;
    case 4 << 8 | 15: *st = decode_planes_avx2<4, 15>(dl, tokens, C, rd, raw, row); return true;
    default: return false;
  }
}
#endif

// Lossy unit body, token by token. row(t) gives where token t's C elements go. Anchors come from
// the per-channel lookup table; deltas add to their anchor's grid offset.
template <size_t ES, typename RowOf>
Status decode_lossy(const DecLayer& dl, uint32_t tokens, uint32_t C, uint32_t GT, uint8_t dt, LaneReader& rd,
                    const uint8_t* esc, uint32_t n_esc, RowOf&& row) {
#if defined(__x86_64__)
  if constexpr (ES != 1) {
    if (GT == 1 && C % 8 == 0 && cpu_has_avx2()) return decode_anchors_avx2<ES>(dl, tokens, C, dt, rd, esc, n_esc, row);
  }
#endif
  std::vector<const SlotTable*> role_tab(size_t(C) * dl.slots);
  for (uint32_t c = 0; c < C; ++c)
    for (uint32_t r = 0; r < dl.slots; ++r) role_tab[size_t(r) * C + c] = &dl.tables[dl.table_base[c] + r];
  std::vector<int32_t> ref(GT > 1 ? C : 0, 0);
  const uint8_t* lut = dl.anchor_lut();
  const uint32_t* lut_off = dl.anchor_off.data();
  uint32_t esc_used = 0;
  for (uint32_t t = 0; t < tokens; ++t) {
    uint8_t* out = row(t);
    if (t % GT == 0) {
      const SlotTable* const* tabs = role_tab.data();
      for (uint32_t c = 0; c < C; ++c) {
        const SlotTable& tb = *tabs[c];
        const uint32_t s = rd.next(tb);
        const uint8_t* src;
        if (s == tb.esc) {
          if (esc_used == n_esc) return CorruptData("escape stream exhausted");
          src = esc + size_t(esc_used++) * ES;
          if (GT > 1) ref[c] = 0;
        } else {
          src = lut + size_t(lut_off[c] + s) * ES;
          if (GT > 1) ref[c] = tb.qmin + int32_t(s);
        }
        std::memcpy(out + c * ES, src, ES);
      }
      continue;
    }
    const SlotTable* const* tabs = role_tab.data() + C;
    for (uint32_t c = 0; c < C; ++c) {
      const SlotTable& tb = *tabs[c];
      const uint32_t s = rd.next(tb);
      if (s == tb.esc) {
        if (esc_used == n_esc) return CorruptData("escape stream exhausted");
        std::memcpy(out + c * ES, esc + size_t(esc_used++) * ES, ES);
        continue;
      }
      const int32_t q = ref[c] + tb.qmin + int32_t(s);
      detail::store_from_f32(out + c * ES, dt, detail::dequantize(dl.center[c] + q, dl.step[c]));
    }
  }
  if (esc_used != n_esc) return CorruptData("unused escaped values");
  return rd.finish();
}

// Lossless unit body: es byte planes, each its own lane stream (plane q = byte q of every
// element) or, for the raw planes of version 5 (docs/format.md 4.5), its bytes in stream order;
// decoded together element by element.
template <typename RowOf>
Status decode_lossless(const DecLayer& dl, const uint8_t* unit, const detail::UnitLayout& ul, uint32_t tokens,
                       uint32_t C, uint32_t es, RowOf&& row) {
  LaneReader rd[4];
  const uint8_t* raw[4] = {};
  const uint32_t raw_planes = dl.raw_planes;
  for (uint32_t q = 0; q < es; ++q) {
    if (raw_planes >> q & 1) raw[q] = unit + ul.stream[q];
    else KVCODEC_RETURN_IF_ERROR(rd[q].open(unit, ul, q));
  }
#if defined(__x86_64__)
  Status st;
  if (C % 8 == 0 && cpu_has_avx2() && decode_planes_avx2_for(es, raw_planes, dl, tokens, C, rd, raw, row, &st))
    return st;
#endif
  std::vector<const SlotTable*> tab(size_t(es) * C);  // [plane][channel]
  for (uint32_t q = 0; q < es; ++q)
    for (uint32_t c = 0; c < C; ++c) tab[size_t(q) * C + c] = &dl.tables[dl.table_base[c] + q];
  for (uint32_t t = 0; t < tokens; ++t) {
    uint8_t* out = row(t);
    const size_t i0 = size_t(t) * C;
    for (uint32_t c = 0; c < C; ++c)
      for (uint32_t q = 0; q < es; ++q)
        out[size_t(c) * es + q] = raw[q] ? raw[q][i0 + c] : uint8_t(rd[q].next(*tab[size_t(q) * C + c]));
  }
  for (uint32_t q = 0; q < es; ++q)
    if (!raw[q]) KVCODEC_RETURN_IF_ERROR(rd[q].finish());
  return Status::Ok();
}

// The layout of unit (l, kv) of a chunk body of `tokens` tokens (common/unit.hpp checks every
// size), or the error. *stored: the unit is stored raw (ul->size bytes, docs/format.md 4.4).
Status locate(const Decoder& d, const uint8_t* body, size_t body_size, uint32_t l, uint32_t kv, uint32_t tokens,
              const uint8_t** unit, detail::UnitLayout* ul, bool* stored) {
  detail::HostWarp w;
  uint64_t off = 0, size = 0;
  const uint32_t units = 2 * d.info.shape.layers;
  const bool v3 = d.info.format_version >= kStoredUnitsFormatVersion;
  uint32_t e = detail::locate_unit(w, body, body_size, units, 2 * l + kv, &off, &size, v3, stored);
  const bool lossless = detail::is_lossless(d.info);
  if (!e && *stored) {
    ul->size = size;
    if (size != detail::stored_unit_bytes(uint64_t(tokens) * d.info.shape.channels(), uint32_t(d.es)))
      e = detail::kUnitSizeMismatch;
  } else if (!e) {
    e = detail::parse_unit(body + off, size, lossless ? uint32_t(d.es) : 1u, lossless, uint32_t(d.es), ul,
                           d.layers[size_t(l) * 2 + kv].raw_planes, uint64_t(tokens) * d.info.shape.channels());
  }
  if (e) return CorruptData(detail::unit_error_message(e));
  *unit = body + off;
  return Status::Ok();
}

// Decodes the unit of (layer l, K/V kv) of one chunk body; row(t) is where token t's elements go.
template <typename RowOf>
Status decode_unit(const Decoder& d, uint32_t l, uint32_t kv, uint32_t tokens, std::span<const uint8_t> body,
                   RowOf&& row) {
  const uint8_t* p = nullptr;
  detail::UnitLayout ul;
  bool stored = false;
  KVCODEC_RETURN_IF_ERROR(locate(d, body.data(), body.size(), l, kv, tokens, &p, &ul, &stored));
  const DecLayer& dl = d.layers[size_t(l) * 2 + kv];
  const uint32_t C = uint32_t(d.info.shape.channels());
  const size_t es = d.es;
  if (stored) {  // the raw elements [tokens][C]
    for (uint32_t t = 0; t < tokens; ++t) std::memcpy(row(t), p + size_t(t) * C * es, C * es);
    return Status::Ok();
  }
  if (detail::is_lossless(d.info)) return decode_lossless(dl, p, ul, tokens, C, uint32_t(es), row);
  // Lossy: the lane stream, then u32 escape count and the escaped raw elements.
  LaneReader rd;
  KVCODEC_RETURN_IF_ERROR(rd.open(p, ul, 0));
  const uint8_t* esc = p + ul.escapes;
  const uint32_t n_esc = ul.n_esc;
  const uint32_t GT = d.info.group_tokens;
  const uint8_t dt = uint8_t(d.info.dtype);
  switch (es) {
    case 4: return decode_lossy<4>(dl, tokens, C, GT, dt, rd, esc, n_esc, row);
    case 2: return decode_lossy<2>(dl, tokens, C, GT, dt, rd, esc, n_esc, row);
    default: return decode_lossy<1>(dl, tokens, C, GT, dt, rd, esc, n_esc, row);
  }
}

// Decodes the layers [lb, le) of chunk k from its body.
Status decode_chunk(const Decoder& d, uint32_t k, std::span<const uint8_t> body, const KVView& dst, uint32_t lb,
                    uint32_t le, bool verify, int threads) {
  const ChunkInfo& ci = d.info.chunks[k];
  if (body.size() != ci.size) return CorruptData("chunk " + std::to_string(k) + " has the wrong size");
  if (verify && detail::frame_checksum_host(d.info.format_version, body.data(), body.size()) != ci.checksum)
    return ChecksumMismatch("chunk " + std::to_string(k) + " checksum mismatch");
  const size_t row_bytes = size_t(d.info.shape.channels()) * d.es;
  const bool in_place = rows_in_place(dst);
  std::vector<Status> st(size_t(le - lb) * 2);
  KVCODEC_RETURN_IF_ERROR(detail::parallel_for(st.size(), threads, [&](size_t task) {
    const uint32_t l = lb + uint32_t(task / 2), kv = uint32_t(task % 2);
    if (in_place) {
      st[task] = decode_unit(d, l, kv, ci.tokens, body, [&](uint32_t t) {
        return static_cast<uint8_t*>(dst.element(l, kv, ci.token_begin + t, 0, 0));
      });
      return;
    }
    std::vector<uint8_t> rows(row_bytes * ci.tokens);
    st[task] = decode_unit(d, l, kv, ci.tokens, body, [&](uint32_t t) { return rows.data() + t * row_bytes; });
    if (st[task].ok()) scatter(dst, l, kv, ci.token_begin, ci.tokens, rows.data());
  }));
  for (size_t i = 0; i < st.size(); ++i)
    if (!st[i].ok())
      return st[i].with_context("chunk " + std::to_string(k) + " layer " + std::to_string(lb + i / 2));
  return Status::Ok();
}

}  // namespace

Status detail::decode_plain_chunk(const Decoder& d, uint32_t k, std::span<const uint8_t> body, const KVView& dst,
                                  uint32_t lb, uint32_t le, bool verify, int threads) {
  return decode_chunk(d, k, body, dst, lb, le, verify, threads);
}

namespace {

Status check_destination(const FrameInfo& f, const KVView& dst) {
  if (dst.dtype != f.dtype)
    return InvalidArgument(std::string("destination dtype ") + dtype_name(dst.dtype) + " differs from the frame's " +
                           dtype_name(f.dtype));
  if (!(dst.shape == f.shape)) return InvalidArgument("destination shape differs from the frame's");
  return validate_view(dst);
}

Status check_decode_limit(const FrameInfo& f, const DecodeOptions& o) {
  const uint64_t bytes = decoded_bytes(f, o);
  if (o.max_decoded_bytes && bytes > o.max_decoded_bytes)
    return ResourceExhausted("the frame decodes to " + std::to_string(bytes) + " bytes, over the limit of " +
                             std::to_string(o.max_decoded_bytes) + " (max_decoded_bytes)");
  return Status::Ok();
}

}  // namespace

StatusOr<FrameDecoder> FrameDecoder::open(std::span<const uint8_t> head) {
  KVCODEC_ASSIGN_OR_RETURN(auto d, make_decoder(head));
  FrameDecoder f;
  f.impl_ = std::move(d);
  return f;
}

StatusOr<FrameDecoder> FrameDecoder::open(std::span<const uint8_t> head, std::shared_ptr<const Profile> profile) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo info, read_frame_info(head));
  if (!info.transformed) return open(head);
  KVCODEC_RETURN_IF_ERROR(detail::check_frame_profile(info, profile.get()));
  // The coefficient frame's head: version 3, fp32, with the tables (its own or the profile's).
  KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> inner, detail::coefficient_head(head, profile.get()));
  KVCODEC_ASSIGN_OR_RETURN(auto coded, make_decoder(inner));
  auto d = std::make_shared<Decoder>();
  d->info = std::move(info);
  d->es = dtype_size(d->info.dtype);
  d->profile = std::move(profile);
  d->coded = std::move(coded);
  FrameDecoder f;
  f.impl_ = std::move(d);
  return f;
}

const FrameInfo& FrameDecoder::info() const noexcept { return impl_->info; }

Status FrameDecoder::decode_chunk(uint32_t chunk, std::span<const uint8_t> body, const KVView& dst,
                                  const DecodeOptions& o) const {
  KVCODEC_RETURN_IF_ERROR(check_destination(impl_->info, dst));
  if (chunk >= impl_->info.chunks.size())
    return OutOfRange("chunk " + std::to_string(chunk) + " of a frame with " +
                      std::to_string(impl_->info.chunks.size()));
  const uint32_t L = impl_->info.shape.layers, le = std::min(o.layer_end, L);
  if (o.layer_begin >= le) return OutOfRange("empty layer range");
  DecodeOptions one = o;
  one.chunk_begin = chunk;
  one.chunk_end = chunk + 1;
  KVCODEC_RETURN_IF_ERROR(check_decode_limit(impl_->info, one));
  const detail::MetricTimer timer(o.metrics);
  const Status s = impl_->coded ? detail::decode_transformed_chunk(*impl_->profile, impl_->info, *impl_->coded, chunk, body,
                                                                   dst, o.layer_begin, le, o.verify_checksums, o.threads)
                                : kvcodec::decode_chunk(*impl_, chunk, body, dst, o.layer_begin, le, o.verify_checksums,
                                                        o.threads);
  if (timer.sink()) {
    const uint64_t raw = decoded_bytes(impl_->info, one);
    detail::record_decode(timer, s, impl_->info.level, raw, body.size(), raw / dtype_size(impl_->info.dtype));
  }
  return s;
}

StatusOr<FrameStats> analyze_frame(std::span<const uint8_t> frame) {
  KVCODEC_RETURN_IF_ERROR(verify_frame(frame));
  if (read_frame_info(frame)->transformed) {  // its coefficients' frame (decode_transform.cpp)
    KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> coefficients, detail::coefficient_frame(frame));
    return analyze_frame(coefficients);
  }
  KVCODEC_ASSIGN_OR_RETURN(auto d, make_decoder(frame));
  const FrameInfo& f = d->info;
  const uint32_t C = uint32_t(f.shape.channels()), L = f.shape.layers;
  const bool lossless = detail::is_lossless(f);
  const size_t es = d->es;
  FrameStats st;
  std::vector<std::vector<uint64_t>> counts(d->layers.size());  // [layer model][table * 256 + symbol]
  for (size_t u = 0; u < d->layers.size(); ++u) counts[u].assign(d->layers[u].tables.size() * 256, 0);
  for (const ChunkInfo& ci : f.chunks) {
    const std::span<const uint8_t> body = frame.subspan(ci.offset, ci.size);
    st.directory_bytes += size_t(L) * 2 * 4;
    for (uint32_t u = 0; u < 2 * L; ++u) {
      const uint8_t* p = nullptr;
      detail::UnitLayout ul;
      bool stored = false;
      KVCODEC_RETURN_IF_ERROR(locate(*d, body.data(), body.size(), u / 2, u % 2, ci.tokens, &p, &ul, &stored));
      if (stored) {
        ++st.stored_units;
        st.stored_bytes += ul.size;
        continue;
      }
      const DecLayer& dl = d->layers[u];
      const SlotTable* tables = dl.tables.data();
      uint64_t escapes = 0;  // escape symbols decoded: must be the unit's escape count
      uint64_t raw_bytes = 0;
      for (uint32_t plane = 0; plane < (lossless ? es : 1); ++plane) {
        if (dl.raw_planes >> plane & 1) {
          raw_bytes += detail::pad4(uint64_t(ci.tokens) * C);
          continue;
        }
        st.symbols += uint64_t(ci.tokens) * C;
        LaneReader rd;
        KVCODEC_RETURN_IF_ERROR(rd.open(p, ul, plane));
        for (uint32_t t = 0; t < ci.tokens; ++t)
          for (uint32_t c = 0; c < C; ++c) {
            const uint32_t slot = lossless ? plane : (t % f.group_tokens == 0 ? 0 : 1);
            const size_t ti = dl.table_base[c] + slot;
            const uint32_t s = rd.next(tables[ti]);
            escapes += s == tables[ti].esc;
            ++counts[u][ti * 256 + s];
          }
        KVCODEC_RETURN_IF_ERROR(rd.finish());
        st.word_bytes += 2 * uint64_t(ul.words[plane]);
      }
      if (!lossless && escapes != ul.n_esc) return CorruptData("escape count differs from the escapes coded");
      st.lane_bytes += ul.streams_end - raw_bytes;
      st.raw_plane_bytes += raw_bytes;
      st.escapes += ul.n_esc;
      st.escape_bytes += ul.size - ul.streams_end;
    }
  }
  for (size_t u = 0; u < counts.size(); ++u)
    for (size_t ti = 0; ti < d->layers[u].tables.size(); ++ti) {
      std::span<const uint64_t> c(&counts[u][ti * 256], 256);
      st.entropy_bits += entropy_bits(c);
      const SlotTable& tb = d->layers[u].tables[ti];
      for (uint32_t s = 0; s < 256; ++s) {
        if (!c[s]) continue;
        uint32_t freq = 0;  // the symbol's frequency: entries whose symbol byte is s
        for (uint32_t k = 0; k < kRansM; ++k)
          if ((tb.entry[k] & 0xff) == s) {
            freq = (tb.entry[k] >> 20) + 1;
            break;
          }
        st.model_bits += double(c[s]) * (double(detail::kRansProbBits) - std::log2(double(freq)));
      }
    }
  return st;
}

uint64_t decoded_bytes(const FrameInfo& f, const DecodeOptions& o) noexcept {
  const uint32_t ce = std::min<size_t>(o.chunk_end, f.chunks.size()), le = std::min(o.layer_end, f.shape.layers);
  if (o.chunk_begin >= ce || o.layer_begin >= le) return 0;
  uint64_t tokens = 0;
  for (uint32_t k = o.chunk_begin; k < ce; ++k) tokens += f.chunks[k].tokens;
  return uint64_t(le - o.layer_begin) * 2 * tokens * f.shape.channels() * dtype_size(f.dtype);
}

Status decode_into(std::span<const uint8_t> frame, const KVView& dst, const DecodeOptions& o) {
  KVCODEC_ASSIGN_OR_RETURN(auto d, make_decoder(frame, o.layer_begin, o.layer_end));
  KVCODEC_RETURN_IF_ERROR(check_destination(d->info, dst));
  if (frame.size() < d->info.frame_bytes)
    return BufferTooSmall("frame truncated: " + std::to_string(frame.size()) + " of " +
                          std::to_string(d->info.frame_bytes) + " bytes");
  if (frame.size() > d->info.frame_bytes)
    return CorruptData(std::to_string(frame.size() - d->info.frame_bytes) + " bytes after the frame's " +
                       std::to_string(d->info.frame_bytes));
  const uint32_t n = uint32_t(d->info.chunks.size()), L = d->info.shape.layers;
  const uint32_t ce = std::min(o.chunk_end, n), le = std::min(o.layer_end, L);
  if (o.chunk_begin >= ce || o.layer_begin >= le) return OutOfRange("empty chunk or layer range");
  KVCODEC_RETURN_IF_ERROR(check_decode_limit(d->info, o));
  // Parallelise across chunks when there are several; a single chunk parallelises its layers.
  const detail::MetricTimer timer(o.metrics);
  std::vector<Status> st(ce - o.chunk_begin);
  const bool across_chunks = st.size() > 1;
  KVCODEC_RETURN_IF_ERROR(detail::parallel_for(st.size(), across_chunks ? o.threads : 1, [&](size_t i) {
    const uint32_t k = o.chunk_begin + uint32_t(i);
    const ChunkInfo& ci = d->info.chunks[k];
    st[i] = decode_chunk(*d, k, frame.subspan(ci.offset, ci.size), dst, o.layer_begin, le, o.verify_checksums,
                         across_chunks ? 1 : o.threads);
  }));
  Status result;
  for (const Status& s : st)
    if (!s.ok()) {
      result = s;
      break;
    }
  if (timer.sink()) {
    uint64_t coded = 0;
    for (uint32_t k = o.chunk_begin; k < ce; ++k) coded += d->info.chunks[k].size;
    const uint64_t raw = decoded_bytes(d->info, o);
    detail::record_decode(timer, result, d->info.level, raw, coded, raw / dtype_size(d->info.dtype));
  }
  return result;
}

Status decode_chunk_into(std::span<const uint8_t> head, uint32_t chunk, std::span<const uint8_t> body,
                         const KVView& dst, const DecodeOptions& o) {
  KVCODEC_ASSIGN_OR_RETURN(FrameDecoder f, FrameDecoder::open(head));
  return f.decode_chunk(chunk, body, dst, o);
}

}  // namespace kvcodec
