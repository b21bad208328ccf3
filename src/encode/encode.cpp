// Encoder: layout view -> per-(layer, K/V) grids -> symbols -> channel groups and tables ->
// rANS lanes per chunk -> frame. Each (layer, K/V) is one task; tasks run in parallel and are
// assembled in a fixed order, so the bytes never depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <type_traits>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "encode/encode_model.hpp"
#include "common/frame.hpp"
#include "common/metrics.hpp"
#include "common/stored_unit.hpp"
#include "common/parallel.hpp"
#include "encode/quantize_row.hpp"
#include "common/rans_lanes.hpp"
#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "encode/encode_values.hpp"
#include "common/quant.hpp"
#include "encode/quantize.hpp"
#include "encode/rd_quantize.hpp"
#include "encode/unit_store.hpp"
#include "common/simd.hpp"

namespace kvcodec {
namespace {

using detail::Histograms;
using detail::kEscFlag;
using detail::LayerModel;

size_t pad4(size_t n) { return (n + 3) & ~size_t(3); }

// Copies the raw elements of (layer l, K/V kv) into out[t][h][d], rows `pitch` bytes apart.
void gather(const KVView& v, uint32_t l, uint32_t kv, uint8_t* out, size_t pitch) {
  const size_t es = dtype_size(v.dtype);
  const uint32_t H = v.shape.kv_heads, D = v.shape.head_dim;
  for (uint32_t t = 0; t < v.shape.tokens; ++t)
    for (uint32_t h = 0; h < H; ++h) {
      uint8_t* dst = out + size_t(t) * pitch + size_t(h) * D * es;
      if (v.rows_contiguous()) {
        std::memcpy(dst, v.element(l, kv, t, h, 0), D * es);
      } else {
        for (uint32_t d = 0; d < D; ++d) std::memcpy(dst + d * es, v.element(l, kv, t, h, d), es);
      }
    }
}

// Where the elements of (layer l, K/V kv) already are [tokens][channels] with rows a fixed
// distance apart (strided or per-layer views whose channels are contiguous within a token):
// their first element and the row pitch in bytes, read in place instead of gathered. Else null.
const uint8_t* rows_in_place(const KVView& v, uint32_t l, uint32_t kv, size_t* pitch) {
  if (v.kind == KVView::Kind::kPaged || v.stride[4] != 1 || (v.shape.kv_heads > 1 && v.stride[3] != v.shape.head_dim) ||
      v.stride[2] <= 0)
    return nullptr;
  *pitch = size_t(v.stride[2]) * dtype_size(v.dtype);
  return static_cast<const uint8_t*>(v.element(l, kv, 0, 0, 0));
}

// rANS-codes the symbols of `rows` token rows of C symbols each (stream order: row by row) and
// pads the unit to 4 bytes. row_codes(r0, r1, f) writes the lane codes (freq << 16 | cum) of
// rows [r0, r1) to f; it is called for pieces of about kPieceSymbols symbols, the last piece
// first (the coder runs backwards), so only one piece of codes is held at a time.
constexpr size_t kPieceSymbols = size_t(1) << 16;
// code_rows: the same into `lanes`, which then hold the stream (finish, finish_into).
template <typename RowCodes>
void code_rows(uint32_t rows, uint32_t C, RowCodes&& row_codes, detail::LaneStreamEncoder& lanes,
               std::vector<uint32_t>& fc) {
  // Pieces start at multiples of R rows, R * C a multiple of the lane count.
  const uint32_t R0 = kRansLanes / std::gcd(C, kRansLanes);
  const uint32_t R = std::max<uint32_t>(R0, uint32_t(kPieceSymbols / C) / R0 * R0);
  lanes.begin(size_t(rows) * C);
  fc.resize(size_t(std::min(R, rows)) * C);
  for (uint32_t r1 = rows; r1 > 0;) {
    const uint32_t r0 = (r1 - 1) / R * R;
    row_codes(r0, r1, fc.data());
    lanes.put(fc.data(), size_t(r0) * C, size_t(r1) * C);
    r1 = r0;
  }
}
template <typename RowCodes>
void encode_rows(uint32_t rows, uint32_t C, RowCodes&& row_codes, detail::LaneStreamEncoder& lanes,
                 std::vector<uint32_t>& fc, std::vector<uint8_t>& unit) {
  code_rows(rows, C, row_codes, lanes, fc);
  lanes.finish(unit);
  unit.resize(pad4(unit.size()), 0);
}

// Everything one (layer, K/V) task produces.
struct LayerOutput {
  LayerModel model;  // model.from_profile: the fixed model's tables were used (not written)
  detail::UnitStore units;  // per chunk: its coded (or stored) unit
  Status status;
};

struct Context {
  const KVView& src;
  const EncodeOptions& opt;
  // Profile models (lossy, group_tokens 1): per (layer, K/V) the grids to quantize with, and
  // tables the unit may use instead of its own (detail::encode_with_models); nullptr: none.
  const std::vector<LayerModel>* fixed;
  uint32_t chunks;
  size_t es;
  // Bytes from one token's row of elements to the next: the view's own pitch where the rows
  // are read in place (rows_in_place), else that of the gathered rows, a cache line more than
  // the row, so that column blocks do not map every row to the same cache sets.
  size_t rp;
  // Rate-distortion optimised quantization (rd_quantize.hpp) with error blocks of this many
  // channels: the head_dim of version 4 coefficients; 0 = off (frames without a profile).
  uint32_t rd_block = 0;
};

// A task's scratch memory, reused by the next task (and the next encoding) so that its pages are
// not faulted in again per (layer, K/V). Every array is fully written before it is read, except
// `local`, which is all zero between uses.
struct Workspace {
  std::vector<uint8_t> raw;      // the task's elements [tokens][channels], rows Context::rp apart
  std::vector<int16_t> val;      // lossy symbol values [tokens][channels]
  std::vector<uint32_t> local;   // one column block's counts (lossy: [slot][bin][kColumnBlock])
  std::vector<uint16_t> local16; // lossless: one column block's counts between spills
  std::vector<uint64_t> bin_mask; // lossy: per (slot, bin) of a block, the channels counting it
  detail::ChannelCounts counts;
  std::vector<uint64_t> feature;
  std::vector<double> sum, sq, inv_step, center;
  std::vector<uint32_t> count;
  std::vector<float> lo, hi;  // finite range per channel (robust scales)
  std::vector<float> step, row, inv_f, half_f;
  std::vector<int32_t> center_i;
  std::vector<ChannelGrid> grids;
  std::vector<uint32_t> codes, fc, esc_at, chan_off;
  std::vector<const uint32_t*> chan_lut;
  detail::RdTables rd;            // rate-distortion quantization: code lengths per (group, bin)
  detail::LaneStreamEncoder lanes;
  std::vector<uint8_t> unit;  // lossless: the unit being coded, then copied to the task's UnitStore
};

// Workspaces of the tasks running now, and of finished ones kept for reuse. Large ones (long
// contexts of wide models) are freed rather than kept.
class WorkspacePool {
 public:
  std::unique_ptr<Workspace> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.empty()) return std::make_unique<Workspace>();
    auto w = std::move(free_.back());
    free_.pop_back();
    return w;
  }
  void give(std::unique_ptr<Workspace> w, size_t bytes) {
    if (bytes > kKeepBytes) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < kKeep) free_.push_back(std::move(w));
  }

 private:
  static constexpr size_t kKeep = 16, kKeepBytes = size_t(64) << 20;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Workspace>> free_;
};

WorkspacePool& workspace_pool() {
  static WorkspacePool pool;
  return pool;
}

// Chunk [t0, t1) of the tokens, and the most bytes its unit can take (stored raw, or coded with
// no more than the raw elements plus the fixed headers: common/stored_unit.hpp).
void chunk_tokens(const Context& cx, uint32_t k, uint32_t* t0, uint32_t* t1) {
  *t0 = k * cx.opt.chunk_tokens;
  *t1 = std::min(cx.src.shape.tokens, *t0 + cx.opt.chunk_tokens);
}
uint64_t max_unit_bytes(const Context& cx, uint32_t k) {
  uint32_t t0, t1;
  chunk_tokens(cx, k, &t0, &t1);
  const bool lossless = cx.opt.level == 0;
  return detail::stored_unit_bytes(uint64_t(t1 - t0) * cx.src.shape.channels(), uint32_t(cx.es)) +
         detail::coded_unit_headers(lossless ? uint32_t(cx.es) : 1, lossless);
}

// Where chunk k's coded unit of `coded` bytes goes in the task's store, to be written there and
// committed: nullptr when the unit is stored raw instead (then done here) or on error (*status).
uint8_t* place_unit(const Context& cx, const uint8_t* raw, uint32_t k, size_t coded, detail::UnitStore& store,
                    Status* status) {
  uint32_t t0, t1;
  chunk_tokens(cx, k, &t0, &t1);
  const uint64_t n = uint64_t(t1 - t0) * cx.src.shape.channels();
  const bool lossless = cx.opt.level == 0;
  const bool stored = detail::store_unit(coded, n, uint32_t(cx.es), lossless ? uint32_t(cx.es) : 1, lossless);
  const size_t bytes = stored ? size_t(detail::stored_unit_bytes(n, uint32_t(cx.es))) : coded;
  uint8_t* p = store.extend(bytes);
  if (!p) {
    *status = Internal("coded unit larger than its bound");
    return nullptr;
  }
  if (!stored) return p;
  const size_t row = size_t(cx.src.shape.channels()) * cx.es;
  for (uint32_t t = t0; t < t1; ++t) std::memcpy(p + (t - t0) * row, raw + t * cx.rp, row);
  std::memset(p + (t1 - t0) * row, 0, bytes - (t1 - t0) * row);
  store.commit(bytes, true);
  return nullptr;
}

// Appends chunk k's unit to the task's store: its coded bytes, or the raw elements when coding
// adds more than they take (a stored unit, docs/format.md 4.4). raw: the (layer, K/V)'s
// [tokens][C], rows cx.rp apart.
Status commit_unit(const Context& cx, const uint8_t* raw, uint32_t k, const std::vector<uint8_t>& unit,
                   detail::UnitStore& store) {
  Status st;
  if (uint8_t* p = place_unit(cx, raw, k, unit.size(), store, &st)) {
    std::memcpy(p, unit.data(), unit.size());
    store.commit(unit.size(), false);
  }
  return st;
}

// Lossless: each byte plane of the elements is coded with per-(group, plane) tables.
// Byte planes are counted kLosslessBlock channels at a time in 16-bit counters (in L1), spilled
// into 32-bit ones every kSpillTokens tokens and at the end of the block.
constexpr uint32_t kLosslessBlock = 16, kSpillTokens = 65535;

void spill_counts(uint16_t* c16, uint32_t* c32, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    c32[i] += c16[i];
    c16[i] = 0;
  }
}

// Counts tokens [t0, t1) of channels [c0, c0 + n) into c16 ([j][plane][byte]) and the clustering
// feature (magnitude bits of the top byte); P bytes per element.
// Not inlined: in the caller's large body its loop counters were kept on the stack (a store and
// reload per element); on its own every pointer and counter stays in a register.
template <uint32_t P>
__attribute__((noinline)) void count_planes(const uint8_t* raw, size_t rp, uint32_t t0, uint32_t t1, uint32_t c0,
                                            uint32_t n, uint16_t* c16, uint64_t* feature) {
  constexpr size_t per_channel = size_t(P) * detail::kLosslessBins;
  for (uint32_t t = t0; t < t1; ++t) {
    const uint8_t* e = raw + size_t(t) * rp + size_t(c0) * P;
    uint16_t* cj = c16;
    for (uint32_t j = 0; j < n; ++j, e += P, cj += per_channel) {
      for (uint32_t p = 0; p < P; ++p) ++cj[p * detail::kLosslessBins + e[p]];
      feature[j] += e[P - 1] & 0x7f;
    }
  }
}

// Appends the non-zero counts of cj[0, n) to cc as (index, count) in ascending order and clears
// cj. Branch-free (whether a count is zero is unpredictable) and not inlined, so that its
// pointers stay in registers.
__attribute__((noinline)) void append_sparse(uint32_t* cj, uint32_t n, detail::ChannelCounts& cc) {
  const size_t k = cc.index.size();
  cc.index.resize(k + n);
  cc.count.resize(k + n);
  uint32_t* idx = cc.index.data() + k;
  uint32_t* cnt = cc.count.data() + k;
  size_t m = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t v = cj[i];
    idx[m] = i;
    cnt[m] = v;
    m += v != 0;
    cj[i] = 0;
  }
  cc.index.resize(k + m);
  cc.count.resize(k + m);
}

// Counts the byte planes of channels [c0, c0 + n) into ws.counts (appended in channel order) and
// the clustering feature.
void count_lossless_block(const uint8_t* raw, size_t rp, uint32_t T, uint32_t P, uint32_t c0, uint32_t n,
                          Workspace& ws) {
  const size_t per_channel = size_t(P) * detail::kLosslessBins;
  uint16_t* c16 = ws.local16.data();  // [j][plane][byte]
  uint32_t* c32 = ws.local.data();    // the same, 32-bit
  uint64_t feature[kLosslessBlock] = {};
  for (uint32_t t0 = 0; t0 < T; t0 += kSpillTokens) {
    const uint32_t t1 = std::min(T, t0 + kSpillTokens);
    switch (P) {
      case 1: count_planes<1>(raw, rp, t0, t1, c0, n, c16, feature); break;
      case 2: count_planes<2>(raw, rp, t0, t1, c0, n, c16, feature); break;
      default: count_planes<4>(raw, rp, t0, t1, c0, n, c16, feature); break;
    }
    spill_counts(c16, c32, n * per_channel);
  }
  detail::ChannelCounts& cc = ws.counts;
  for (uint32_t j = 0; j < n; ++j) {
    append_sparse(c32 + j * per_channel, uint32_t(per_channel), cc);
    cc.begin.push_back(uint32_t(cc.index.size()));
    ws.feature[c0 + j] = feature[j];
  }
}

// Lane codes of plane p of one token's n elements e[c * P + p]: f[c] = codes[off[c] + byte].
void plane_codes_scalar(const uint8_t* e, uint32_t P, uint32_t p, const uint32_t* off, uint32_t n,
                        const uint32_t* codes, uint32_t* f) {
  for (uint32_t c = 0; c < n; ++c) f[c] = codes[off[c] + e[size_t(c) * P + p]];
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void plane_codes_avx2(const uint8_t* e, uint32_t P, uint32_t p, const uint32_t* off,
                                                       uint32_t n, const uint32_t* codes, uint32_t* f) {
  const __m256i low = _mm256_set1_epi32(0xff);
  const __m128i shift = _mm_cvtsi32_si128(int(8 * p));
  uint32_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const uint8_t* q = e + size_t(c) * P;
    __m256i x;  // element c + i's bytes in 32-bit lane i
    if (P == 1) x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
    else if (P == 2) x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    else x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    const __m256i byte = _mm256_and_si256(_mm256_srl_epi32(x, shift), low);
    const __m256i idx = _mm256_add_epi32(byte, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off + c)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(f + c),
                        _mm256_i32gather_epi32(reinterpret_cast<const int*>(codes), idx, 4));
  }
  plane_codes_scalar(e + size_t(c) * P, P, p, off + c, n - c, codes, f + c);
}
#endif

// Appends byte plane p of tokens [t0, t1) (rows rp apart, P bytes per element, C elements) to
// unit in stream order, padded with zeros to 4 bytes: a raw plane (docs/format.md 4.5).
template <uint32_t P>
void append_raw_plane(const uint8_t* raw, size_t rp, uint32_t t0, uint32_t t1, uint32_t C, uint32_t p,
                      std::vector<uint8_t>& unit) {
  const size_t base = unit.size(), n = size_t(t1 - t0) * C;
  unit.resize(base + pad4(n), 0);
  uint8_t* out = unit.data() + base;
  using Elem = std::conditional_t<P == 1, uint8_t, std::conditional_t<P == 2, uint16_t, uint32_t>>;
  const uint32_t shift = 8 * p;
  for (uint32_t t = t0; t < t1; ++t, out += C) {
    const uint8_t* e = raw + size_t(t) * rp;
    for (uint32_t c = 0; c < C; ++c) {  // whole elements (vectorises), then the byte
      Elem v;
      std::memcpy(&v, e + size_t(c) * P, P);
      out[c] = uint8_t(v >> shift);
    }
  }
}

void encode_lossless(const Context& cx, const uint8_t* raw, Workspace& ws, LayerOutput& out) {
  const KVShape& sh = cx.src.shape;
  const uint32_t T = sh.tokens, C = uint32_t(sh.channels());
  const uint32_t P = uint32_t(cx.es);
  ws.local.resize(size_t(P) * detail::kLosslessBins * kLosslessBlock, 0);
  ws.local16.resize(size_t(P) * detail::kLosslessBins * kLosslessBlock, 0);
  ws.feature.resize(C);
  ws.counts.reset(C, P, detail::kLosslessBins, size_t(C) * P * std::min<uint32_t>(T, detail::kLosslessBins));
  for (uint32_t c0 = 0; c0 < C; c0 += kLosslessBlock)
    count_lossless_block(raw, cx.rp, T, P, c0, std::min(kLosslessBlock, C - c0), ws);
  LayerModel& m = out.model;
  std::vector<uint32_t>& codes = ws.codes;  // [group * P + plane][byte]: lane code
  out.status = detail::build_layer_model(ws.counts, ws.feature.data(), true, cx.opt.table_groups, m, codes);
  if (!out.status.ok()) return;
  // Per plane and channel, where its table's byte -> code map starts in codes.
  ws.chan_off.resize(size_t(P) * C);
  for (uint32_t p = 0; p < P; ++p)
    for (uint32_t c = 0; c < C; ++c)
      ws.chan_off[size_t(p) * C + c] = (uint32_t(m.channel_group[c]) * P + p) * detail::kLosslessBins;
  const bool avx2 = detail::avx2_enabled();
  for (uint32_t k = 0; k < cx.chunks; ++k) {
    const uint32_t t0 = k * cx.opt.chunk_tokens, t1 = std::min(T, t0 + cx.opt.chunk_tokens);
    ws.unit.clear();
    for (uint32_t p = 0; p < P; ++p) {
      if (m.raw_planes >> p & 1) {
        switch (P) {
          case 1: append_raw_plane<1>(raw, cx.rp, t0, t1, C, p, ws.unit); break;
          case 2: append_raw_plane<2>(raw, cx.rp, t0, t1, C, p, ws.unit); break;
          default: append_raw_plane<4>(raw, cx.rp, t0, t1, C, p, ws.unit); break;
        }
        continue;
      }
      const uint32_t* off = &ws.chan_off[size_t(p) * C];
      auto row_codes = [&](uint32_t r0, uint32_t r1, uint32_t* fc) {
        for (uint32_t t = t0 + r0; t < t0 + r1; ++t) {
          const uint8_t* e = raw + size_t(t) * cx.rp;
          uint32_t* f = fc + size_t(t - t0 - r0) * C;
#if defined(__x86_64__)
          if (avx2) {
            plane_codes_avx2(e, P, p, off, C, codes.data(), f);
            continue;
          }
#endif
          plane_codes_scalar(e, P, p, off, C, codes.data(), f);
        }
      };
      encode_rows(t1 - t0, C, row_codes, ws.lanes, ws.fc, ws.unit);
    }
    if (!(out.status = commit_unit(cx, raw, k, ws.unit, out.units)).ok()) return;
  }
  (void)avx2;
}

// Widens [*lo, *hi] to the values of v[0, n) (escapes count as 0), adds their magnitudes to
// feat[j] (when given) and says whether any is an escape.
bool row_range_scalar(const int16_t* v, uint32_t n, int16_t* lo, int16_t* hi, uint32_t* feat) {
  int16_t mn = *lo, mx = *hi;
  bool e = false;
  for (uint32_t j = 0; j < n; ++j) {
    const bool is_esc = v[j] == detail::kEscapeQ;
    const int16_t a = is_esc ? int16_t(0) : v[j];
    mn = std::min(mn, a);
    mx = std::max(mx, a);
    e |= is_esc;
    if (feat) feat[j] += uint32_t(a < 0 ? -a : a);
  }
  *lo = mn;
  *hi = mx;
  return e;
}

#if defined(__x86_64__)
// row_range for the first n & ~15 values, widening per-lane accumulators acc_lo / acc_hi (16
// lanes, reduced by the caller) instead of *lo / *hi; the rest goes to row_range_scalar. Also
// each value's counter in a column block's [bin][kColumnBlock] counts: idx[j] = bin * B + j.
__attribute__((target("avx2"))) bool row_range_avx2(const int16_t* v, uint32_t n, int16_t* acc_lo, int16_t* acc_hi,
                                                     int16_t* lo, int16_t* hi, uint32_t* feat, uint16_t* idx) {
  constexpr uint32_t B = detail::kColumnBlock;
  static_assert(detail::kLossyBins * B <= 65536 && B == 64, "counter index as uint16, bin << 6");
  const __m256i escq = _mm256_set1_epi16(detail::kEscapeQ), qlim = _mm256_set1_epi16(int16_t(detail::kQLimit));
  const __m256i esc_bin = _mm256_set1_epi16(int16_t(detail::kEscBin));
  const __m256i lane = _mm256_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m256i mn = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc_lo));
  __m256i mx = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc_hi)), e = _mm256_setzero_si256();
  uint32_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + j));
    const __m256i is_esc = _mm256_cmpeq_epi16(x, escq);
    const __m256i a = _mm256_andnot_si256(is_esc, x);
    const __m256i bin = _mm256_blendv_epi8(_mm256_add_epi16(a, qlim), esc_bin, is_esc);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + j),
                        _mm256_add_epi16(_mm256_slli_epi16(bin, 6), _mm256_add_epi16(lane, _mm256_set1_epi16(int16_t(j)))));
    mn = _mm256_min_epi16(mn, a);
    mx = _mm256_max_epi16(mx, a);
    e = _mm256_or_si256(e, is_esc);
    if (feat) {
      const __m256i m = _mm256_abs_epi16(a);
      __m256i* f = reinterpret_cast<__m256i*>(feat + j);
      _mm256_storeu_si256(f, _mm256_add_epi32(_mm256_loadu_si256(f), _mm256_cvtepu16_epi32(_mm256_castsi256_si128(m))));
      _mm256_storeu_si256(f + 1, _mm256_add_epi32(_mm256_loadu_si256(f + 1),
                                                  _mm256_cvtepu16_epi32(_mm256_extracti128_si256(m, 1))));
    }
  }
  _mm256_store_si256(reinterpret_cast<__m256i*>(acc_lo), mn);
  _mm256_store_si256(reinterpret_cast<__m256i*>(acc_hi), mx);
  const bool any = !_mm256_testz_si256(e, e);
  if (j == n) return any;
  for (uint32_t k = j; k < n; ++k) idx[k] = uint16_t(detail::lossy_bin(v[k]) * B + k);
  return row_range_scalar(v + j, n - j, lo, hi, feat ? feat + j : nullptr) || any;
}
#endif

// Bit j set where row[j] != 0, j < n <= 64.
uint64_t nonzero_mask_scalar(const uint32_t* row, uint32_t n) {
  uint64_t m = 0;
  for (uint32_t j = 0; j < n; ++j) m |= uint64_t(row[j] != 0) << j;
  return m;
}
#if defined(__x86_64__)
__attribute__((target("avx512f"))) uint64_t nonzero_mask64_avx512(const uint32_t* row) {
  uint64_t m = 0;
  for (int k = 0; k < 4; ++k) {
    const __m512i v = _mm512_loadu_si512(row + 16 * k);
    m |= uint64_t(_mm512_test_epi32_mask(v, v)) << (16 * k);
  }
  return m;
}
#endif
uint64_t nonzero_mask(const uint32_t* row, uint32_t n) {
#if defined(__x86_64__)
  if (n == 64 && detail::avx512_enabled()) return nonzero_mask64_avx512(row);
#endif
  return nonzero_mask_scalar(row, n);
}

// Counts the lossy symbol values of one column block, channels [c0, c0 + n) (slot 0 for anchors,
// 1 for deltas), a range of tokens at a time, then appends them to ws.counts (finish). Also the
// clustering feature: the sum of |value| over the anchors. ws.local is all zero before and after.
struct BlockCounter {
  static constexpr uint32_t B = detail::kColumnBlock, bins = detail::kLossyBins;
  const int16_t* val;  // the block's first value: val[t * VP + j]
  size_t VP;
  uint32_t CT, GT, n;
  uint32_t* loc;                            // [slot][bin][B]
  uint64_t* bin_mask;                       // scratch of 2 * bins masks
  uint32_t feat[B] = {};                    // < 2^32: at most kMaxTokens values of magnitude <= kQLimit
  int16_t lo[2] = {0, 0}, hi[2] = {0, 0};  // per slot: the values seen (escapes as 0)
  alignas(32) int16_t acc_lo[2][16] = {}, acc_hi[2][16] = {};  // the same per vector lane (AVX2)
  bool esc[2] = {false, false};

  void add(uint32_t t0, uint32_t t1) {
#if defined(__x86_64__)
    const bool avx2 = detail::avx2_enabled();
#endif
    uint32_t in_chunk = t0 % CT, in_group = in_chunk % GT;  // of token t, stepped (no division per row)
    for (uint32_t t = t0; t < t1; ++t) {
      const uint32_t slot = in_group == 0 ? 0 : 1;
      if (++in_chunk == CT) in_chunk = in_group = 0;
      else if (++in_group == GT) in_group = 0;
      const int16_t* vr = val + size_t(t) * VP;
      uint32_t* ls = loc + size_t(slot) * bins * B;
      uint32_t* f = slot == 0 ? feat : nullptr;
#if defined(__x86_64__)
      if (avx2) {
        alignas(32) uint16_t idx[B];
        esc[slot] |= row_range_avx2(vr, n, acc_lo[slot], acc_hi[slot], &lo[slot], &hi[slot], f, idx);
        for (uint32_t j = 0; j < n; ++j) ++ls[idx[j]];
        continue;
      }
#endif
      esc[slot] |= row_range_scalar(vr, n, &lo[slot], &hi[slot], f);
      for (uint32_t j = 0; j < n; ++j) ++ls[detail::lossy_bin(vr[j]) * B + j];
    }
  }

  void finish(uint32_t c0, uint32_t slots, Workspace& ws, bool feature) {
    for (uint32_t s = 0; s < 2; ++s)
      for (uint32_t k = 0; k < 16; ++k) {
        lo[s] = std::min(lo[s], acc_lo[s][k]);
        hi[s] = std::max(hi[s], acc_hi[s][k]);
      }
    // Each channel's non-zero counts in (slot, bin) order, bins [lo + kQLimit, hi + kQLimit] then
    // the escape bin (above every value bin). The bins are scanned once, row by row: a mask of
    // the channels counting each, the channels' entry counts, then every entry written in place.
    uint32_t nnz[B] = {}, at[B];
    auto for_bins = [&](auto&& fn) {
      for (uint32_t s = 0; s < slots; ++s) {
        const uint32_t b0 = uint32_t(lo[s] + detail::kQLimit), b1 = uint32_t(hi[s] + detail::kQLimit);
        for (uint32_t b = b0; b <= b1; ++b) fn(s, b);
        if (esc[s]) fn(s, detail::kEscBin);
      }
    };
    uint64_t* mask = bin_mask;
    for_bins([&](uint32_t s, uint32_t b) {
      uint64_t m = nonzero_mask(loc + (size_t(s) * bins + b) * B, n);
      *mask++ = m;
      for (; m; m &= m - 1) ++nnz[__builtin_ctzll(m)];
    });
    detail::ChannelCounts& cc = ws.counts;
    size_t end = cc.index.size();
    for (uint32_t j = 0; j < n; ++j) {
      at[j] = uint32_t(end);
      end += nnz[j];
      cc.begin.push_back(uint32_t(end));
      if (feature) ws.feature[c0 + j] = feat[j];
    }
    cc.index.resize(end);
    cc.count.resize(end);
    mask = bin_mask;
    for_bins([&](uint32_t s, uint32_t b) {
      uint32_t* row = loc + (size_t(s) * bins + b) * B;
      for (uint64_t m = *mask++; m; m &= m - 1) {
        const uint32_t j = uint32_t(__builtin_ctzll(m)), i = at[j]++;
        cc.index[i] = s * bins + b;
        cc.count[i] = row[j];
        row[j] = 0;
      }
    });
  }
};

// Counts every column block of val into ws.counts (the second pass of escape_orphaned_deltas).
void count_lossy(const int16_t* val, uint32_t T, uint32_t C, size_t VP, uint32_t CT, uint32_t GT, uint32_t slots,
                 Workspace& ws) {
  ws.counts.reset(C, slots, detail::kLossyBins);
  for (uint32_t c0 = 0; c0 < C; c0 += detail::kColumnBlock) {
    BlockCounter bc{val + c0, VP, CT, GT, std::min(detail::kColumnBlock, C - c0), ws.local.data(), ws.bin_mask.data()};
    bc.add(0, T);
    bc.finish(c0, slots, ws, false);
  }
}

// Escapes the deltas of every anchor that its table codes as the escape symbol although it has a
// grid value (outside the table's window): the decoder then resets the channel's reference to 0
// (docs/format.md 4.3), and the deltas were taken against the anchor's grid value. True if any
// delta changed (its counts must then be counted again).
bool escape_orphaned_deltas(int16_t* val, uint32_t T, uint32_t C, size_t VP, uint32_t CT, uint32_t GT, const LayerModel& m,
                            const std::vector<uint32_t>& fc_lut) {
  bool changed = false;
  for (uint32_t t = 0; t < T; ++t) {
    const uint32_t local = t % CT;
    if (local % GT) continue;
    const uint32_t end = std::min({T, t - local + CT, t + GT});  // the group ends with its chunk
    const int16_t* ar = &val[size_t(t) * VP];
    for (uint32_t c = 0; c < C; ++c) {
      const uint32_t code = fc_lut[size_t(m.channel_group[c]) * 2 * detail::kLossyBins + detail::lossy_bin(ar[c])];
      if (!detail::orphans_deltas(ar[c], code)) continue;
      for (uint32_t d = t + 1; d < end; ++d) {
        int16_t& v = val[size_t(d) * VP + c];
        changed |= v != detail::kEscapeQ;
        v = detail::kEscapeQ;
      }
    }
  }
  return changed;
}

// The grids of a lossy (layer, K/V) from its elements (one pass, token by token) and the row
// quantizer's per-channel constants.
void grid_constants(uint32_t C, Workspace& ws) {
  ws.step.resize(C);
  ws.inv_step.resize(C);
  ws.center.resize(C);
  ws.center_i.resize(C);
  for (uint32_t c = 0; c < C; ++c) {
    ws.step[c] = step_from_code(ws.grids[c].step_code);
    ws.inv_step[c] = 1.0 / double(ws.step[c]);
    ws.center[c] = ws.grids[c].center;
    ws.center_i[c] = ws.grids[c].center;
  }
  ws.inv_f.resize(C);
  ws.half_f.resize(C);
  detail::screen_constants(ws.step.data(), ws.inv_step.data(), C, ws.inv_f.data(), ws.half_f.data());
}

void lossy_grids(const Context& cx, uint32_t layer, uint32_t kv, const uint8_t* raw, Workspace& ws) {
  const KVShape& sh = cx.src.shape;
  const uint32_t T = sh.tokens, C = uint32_t(sh.channels());
  if (cx.fixed) {  // the profile model's grids
    const LayerModel& fm = (*cx.fixed)[size_t(layer) * 2 + kv];
    ws.grids.resize(C);
    for (uint32_t c = 0; c < C; ++c) ws.grids[c] = ChannelGrid{fm.step_code[c], fm.center[c]};
    return grid_constants(C, ws);
  }
  ws.sum.assign(C, 0.0);
  ws.sq.assign(C, 0.0);
  ws.count.assign(C, 0);
  ws.lo.assign(C, INFINITY);
  ws.hi.assign(C, -INFINITY);
  ws.row.resize(C);
  const detail::ChannelSumsSoA sums{ws.sum.data(), ws.sq.data(), ws.count.data()};
  detail::column_stats(raw, cx.rp, uint8_t(cx.src.dtype), T, C, ws.row.data(), sums, ws.lo.data(), ws.hi.data());
  ws.grids.resize(C);
  const double rel = double(kLevelStep[cx.opt.level]) * layer_factor(layer, sh.layers);
  const detail::Columns cols{raw, cx.rp / cx.es, uint8_t(cx.src.dtype)};  // rows rp bytes apart
  detail::grids_from_sums(sums, ws.lo.data(), ws.hi.data(), C, T, cols, rel, cx.opt.step_mode, ws.grids.data());
  grid_constants(C, ws);
}

// With profile models: the fixed model replaces the unit's own when coding the counted values
// with its tables costs fewer bits than with the own tables plus the own model's bytes.
void choose_fixed_model(const Context& cx, uint32_t layer, uint32_t kv, Workspace& ws, LayerModel& m,
                        std::vector<uint32_t>& fc_lut) {
  const LayerModel& fm = (*cx.fixed)[size_t(layer) * 2 + kv];
  std::vector<uint32_t> fixed_lut;
  detail::lossy_model_codes(fm, fixed_lut);
  const uint64_t fixed_cost = detail::lossy_model_cost(ws.counts, fm, fixed_lut);
  if (fixed_cost == UINT64_MAX) return;
  // The own model as the frame would carry it: no grids (the profile's).
  const uint64_t own_bytes = detail::layer_model_prefix_bytes(m, false);
  const uint64_t own_cost = detail::lossy_model_cost(ws.counts, m, fc_lut) + (own_bytes * 8 << 16);
  if (fixed_cost >= own_cost) return;
  m = fm;
  m.from_profile = true;
  fc_lut = std::move(fixed_lut);
}

// Rate-distortion optimised quantization of the counted values (fp32 coefficients, group_tokens
// 1) under the tables chosen for them; the unit's own tables are then rebuilt on the moved
// values' counts (same channel groups), the profile's stay as they are.
Status rd_pass(const Context& cx, const uint8_t* raw, Workspace& ws, LayerModel& m, std::vector<uint32_t>& fc_lut) {
  const uint32_t T = cx.src.shape.tokens, C = uint32_t(cx.src.shape.channels());
  const size_t VP = size_t(C) + 32;
  detail::rd_tables(fc_lut, ws.rd);
  // Own tables are rebuilt after the pass and may escape other values: no value then counts as
  // decoding exactly, so the error bound holds whatever the new tables escape.
  if (!m.from_profile)
    for (size_t i = 0; i < ws.rd.escape.size(); ++i)
      if (ws.rd.escape[i]) {
        ws.rd.escape[i] = 0;
        ws.rd.up[i] = ws.rd.down[i] = 1.0;  // no move from or to an escaped bin
        if (i % detail::kLossyBins + 1 < detail::kLossyBins) ws.rd.down[i + 1] = 1.0;
        if (i % detail::kLossyBins > 0) ws.rd.up[i - 1] = 1.0;
      }
  const detail::RdQuantizeInput in{reinterpret_cast<const float*>(raw), cx.rp / sizeof(float), T, C, cx.rd_block,
                                   ws.step.data(), ws.inv_step.data(), ws.center_i.data(), &ws.rd,
                                   m.channel_group.data()};
  if (detail::rd_quantize(in, ws.val.data(), VP) == 0 || m.from_profile) return Status::Ok();
  count_lossy(ws.val.data(), T, C, VP, cx.opt.chunk_tokens, 1, 1, ws);
  return detail::build_layer_tables(ws.counts, false, m, fc_lut);
}

// Lane codes of one token's values: f[c] = lut[off[c] + lossy_bin(v[c])] without the escape
// flag; the channels whose code has the flag (escapes), plus `at`, are appended to esc.
void row_codes_scalar(const int16_t* v, const uint32_t* off, uint32_t n, const uint32_t* lut, uint32_t* f,
                      uint32_t at, std::vector<uint32_t>& esc) {
  for (uint32_t c = 0; c < n; ++c) {
    const uint32_t code = lut[off[c] + detail::lossy_bin(v[c])];
    f[c] = code & ~kEscFlag;
    if (code & kEscFlag) [[unlikely]]
      esc.push_back(at + c);
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void row_codes_avx2(const int16_t* v, const uint32_t* off, uint32_t n,
                                                     const uint32_t* lut, uint32_t* f, uint32_t at,
                                                     std::vector<uint32_t>& esc) {
  const __m256i escq = _mm256_set1_epi32(detail::kEscapeQ), qlim = _mm256_set1_epi32(detail::kQLimit);
  const __m256i esc_bin = _mm256_set1_epi32(int32_t(detail::kEscBin)), clear = _mm256_set1_epi32(int32_t(~kEscFlag));
  static_assert(kEscFlag == 1u << 31, "the escape flag is the sign bit (movemask)");
  uint32_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256i x = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + c)));
    const __m256i bin = _mm256_blendv_epi8(_mm256_add_epi32(x, qlim), esc_bin, _mm256_cmpeq_epi32(x, escq));
    const __m256i idx = _mm256_add_epi32(bin, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off + c)));
    const __m256i code = _mm256_i32gather_epi32(reinterpret_cast<const int*>(lut), idx, 4);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(f + c), _mm256_and_si256(code, clear));
    if (uint32_t m = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(code)))) [[unlikely]]
      for (; m; m &= m - 1) esc.push_back(at + c + uint32_t(__builtin_ctz(m)));
  }
  row_codes_scalar(v + c, off + c, n - c, lut, f + c, at + c, esc);
}

// row_codes_avx2 sixteen channels per gather; the rest to row_codes_avx2.
__attribute__((target("avx512f,avx512bw,avx512vl,avx2"))) void row_codes_avx512(const int16_t* v, const uint32_t* off,
                                                                             uint32_t n, const uint32_t* lut, uint32_t* f,
                                                                             uint32_t at, std::vector<uint32_t>& esc) {
  const __m512i escq = _mm512_set1_epi32(detail::kEscapeQ), qlim = _mm512_set1_epi32(detail::kQLimit);
  const __m512i esc_bin = _mm512_set1_epi32(int32_t(detail::kEscBin)), clear = _mm512_set1_epi32(int32_t(~kEscFlag));
  uint32_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512i x = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + c)));
    const __m512i bin = _mm512_mask_mov_epi32(_mm512_add_epi32(x, qlim), _mm512_cmpeq_epi32_mask(x, escq), esc_bin);
    const __m512i idx = _mm512_add_epi32(bin, _mm512_loadu_si512(off + c));
    const __m512i code = _mm512_i32gather_epi32(idx, lut, 4);
    _mm512_storeu_si512(f + c, _mm512_and_si512(code, clear));
    if (uint32_t m = _mm512_cmplt_epi32_mask(code, _mm512_setzero_si512())) [[unlikely]]  // the flag is the sign bit
      for (; m; m &= m - 1) esc.push_back(at + c + uint32_t(__builtin_ctz(m)));
  }
  row_codes_avx2(v + c, off + c, n - c, lut, f + c, at + c, esc);
}
#endif

// The lane codes of tokens [ta, tb) of the chunk that starts at t0 into fc, and the symbol
// indices (in the chunk) of their escapes appended to ws.esc_at.
// ws.chan_off[role * C + c]: the offset of channel c's table for the role in lut.
void lossy_chunk_codes(const int16_t* val, size_t VP, uint32_t t0, uint32_t ta, uint32_t tb, uint32_t C, uint32_t GT,
                       const uint32_t* lut, uint32_t* fc, Workspace& ws) {
  const bool avx2 = detail::avx2_enabled(), avx512 = avx2 && detail::avx512_enabled();
  for (uint32_t t = ta; t < tb; ++t) {
    const uint32_t* off = &ws.chan_off[(t - t0) % GT == 0 ? 0 : C];
    const int16_t* vr = &val[size_t(t) * VP];
    uint32_t* f = fc + size_t(t - ta) * C;
    const uint32_t at = (t - t0) * C;
#if defined(__x86_64__)
    if (avx512) {
      row_codes_avx512(vr, off, C, lut, f, at, ws.esc_at);
      continue;
    }
    if (avx2) {
      row_codes_avx2(vr, off, C, lut, f, at, ws.esc_at);
      continue;
    }
#endif
    row_codes_scalar(vr, off, C, lut, f, at, ws.esc_at);
  }
  (void)avx2;
  (void)avx512;
}

// Chunk k's lossy unit, written straight into the task's store: the lane stream ws.lanes holds,
// padded to 4 bytes, then the escape count and the escaped values' raw elements (ws.esc_at, in
// symbol order), padded to 4 bytes; or the raw elements (a stored unit).
Status write_lossy_unit(const Context& cx, const uint8_t* raw, uint32_t k, const Workspace& ws,
                        detail::UnitStore& store) {
  const size_t lane_bytes = ws.lanes.stream_bytes(), esc_base = pad4(lane_bytes);
  const size_t bytes = pad4(esc_base + 4 + ws.esc_at.size() * cx.es);
  Status st;
  uint8_t* p = place_unit(cx, raw, k, bytes, store, &st);
  if (!p) return st;
  ws.lanes.finish_into(p);
  std::memset(p + lane_bytes, 0, esc_base - lane_bytes);  // the store's pages may hold older units
  detail::store_le32(p + esc_base, uint32_t(ws.esc_at.size()));
  uint8_t* e = p + esc_base + 4;
  const uint32_t C = uint32_t(cx.src.shape.channels()), t0 = k * cx.opt.chunk_tokens;
  for (uint32_t j : ws.esc_at) {
    std::memcpy(e, raw + size_t(t0 + j / C) * cx.rp + size_t(j % C) * cx.es, cx.es);
    e += cx.es;
  }
  std::memset(e, 0, p + bytes - e);
  store.commit(bytes, false);
  return Status::Ok();
}

// Lossy: grids, symbols (anchors and deltas), windows, tables, lanes + escapes per chunk.
constexpr uint32_t kTokenTile = 16;
void encode_lossy(const Context& cx, uint32_t layer, uint32_t kv, const uint8_t* raw, Workspace& ws, LayerOutput& out) {
  const KVShape& sh = cx.src.shape;
  const uint32_t T = sh.tokens, C = uint32_t(sh.channels());
  const uint32_t GT = cx.opt.group_tokens, CT = cx.opt.chunk_tokens;
  const uint32_t slots = GT > 1 ? 2 : 1;
  lossy_grids(cx, layer, kv, raw, ws);
  const detail::RowGrid rg{ws.step.data(), ws.inv_step.data(), ws.center.data(), ws.center_i.data(), ws.inv_f.data(),
                          ws.half_f.data()};

  // Symbol values: q = n - center for anchors, q - q_anchor for deltas; kEscape when escaped.
  // Column block by column block: each block's values are counted while they are in cache.
  // Rows padded by a cache line: column blocks then do not map every row to the same cache sets.
  const size_t VP = size_t(C) + 32;
  ws.val.resize(size_t(T) * VP);
  int16_t* val = ws.val.data();
  ws.local.resize(size_t(slots) * detail::kLossyBins * detail::kColumnBlock, 0);
  ws.bin_mask.resize(2 * detail::kLossyBins);
  ws.feature.resize(C);
  ws.counts.reset(C, slots, detail::kLossyBins);
  for (uint32_t c0 = 0; c0 < C; c0 += detail::kColumnBlock) {
    const uint32_t n = std::min(detail::kColumnBlock, C - c0);
    BlockCounter bc{val + c0, VP, CT, GT, n, ws.local.data(), ws.bin_mask.data()};
    for (uint32_t t0 = 0; t0 < T; t0 += kTokenTile) {  // counted while in L1
      const uint32_t t1 = std::min(T, t0 + kTokenTile);
      detail::quantize_columns(raw, cx.rp, uint8_t(cx.src.dtype), t0, t1, c0, n, rg, CT, GT, val, VP);
      bc.add(t0, t1);
    }
    bc.finish(c0, slots, ws, true);
  }
  LayerModel& m = out.model;
  std::vector<uint32_t>& fc_lut = ws.codes;  // [group * slots + role][value bin]: lane code
  out.status = detail::build_layer_model(ws.counts, ws.feature.data(), false, cx.opt.table_groups, m, fc_lut);
  if (!out.status.ok()) return;
  if (GT > 1 && escape_orphaned_deltas(val, T, C, VP, CT, GT, m, fc_lut)) {
    // Second pass: the counts again (the anchors' are unchanged), the tables rebuilt on the same
    // channel groups (so the anchor tables, and which anchors escape, stay as they are).
    count_lossy(val, T, C, VP, CT, GT, slots, ws);
    out.status = detail::build_layer_tables(ws.counts, false, m, fc_lut);
    if (!out.status.ok()) return;
  }
  if (cx.fixed && !(*cx.fixed)[size_t(layer) * 2 + kv].tables.empty()) choose_fixed_model(cx, layer, kv, ws, m, fc_lut);
  if (cx.rd_block && GT == 1 && cx.src.dtype == DType::kF32 && cx.rp % sizeof(float) == 0 &&
      !(out.status = rd_pass(cx, raw, ws, m, fc_lut)).ok())
    return;
  if (!m.from_profile) {
    m.step_code.resize(C);
    m.center.resize(C);
    for (uint32_t c = 0; c < C; ++c) {
      m.step_code[c] = ws.grids[c].step_code;
      m.center[c] = ws.grids[c].center;
    }
  }

  // Per role and channel, where its table's bin -> code map starts in fc_lut.
  ws.chan_off.resize(size_t(slots) * C);
  for (uint32_t r = 0; r < slots; ++r)
    for (uint32_t c = 0; c < C; ++c)
      ws.chan_off[size_t(r) * C + c] = (uint32_t(m.channel_group[c]) * slots + r) * detail::kLossyBins;
  for (uint32_t k = 0; k < cx.chunks; ++k) {
    const uint32_t t0 = k * CT, t1 = std::min(T, t0 + CT);
    ws.esc_at.clear();
    auto row_codes = [&](uint32_t r0, uint32_t r1, uint32_t* fc) {
      lossy_chunk_codes(val, VP, t0, t0 + r0, t0 + r1, C, GT, fc_lut.data(), fc, ws);
    };
    code_rows(t1 - t0, C, row_codes, ws.lanes, ws.fc);
    std::sort(ws.esc_at.begin(), ws.esc_at.end());  // the pieces came last first
    if (!(out.status = write_lossy_unit(cx, raw, k, ws, out.units)).ok()) return;
  }
}

}  // namespace

size_t max_encoded_size(const KVShape& shape, DType dtype, const EncodeOptions& o) noexcept {
  if (!validate_shape(shape).ok() || !validate_options(o).ok() || !is_valid_dtype(uint8_t(dtype))) return 0;
  const bool lossless = o.level == 0;
  const uint64_t es = dtype_size(dtype), C = shape.channels(), L = shape.layers;
  const uint32_t slots = lossless ? uint32_t(es) : (o.group_tokens > 1 ? 2 : 1);
  const uint64_t chunks = detail::num_chunks_for(shape.tokens, o.chunk_tokens);
  uint64_t total = kHeaderBytes + chunks * kIndexEntryBytes;
  total += 2 * L * detail::max_layer_model_bytes(C, o.table_groups, slots, lossless);
  // Per chunk: unit directory; per unit at most its raw elements (padded) plus the fixed headers
  // of a coded unit -- larger coded units are stored raw (commit_unit).
  const uint32_t planes = lossless ? uint32_t(es) : 1;
  const uint64_t headers = detail::coded_unit_headers(planes, lossless);
  const uint64_t full = shape.tokens / o.chunk_tokens, rest = shape.tokens % o.chunk_tokens;
  total += chunks * 2 * L * (4 + headers);
  total += 2 * L * full * detail::stored_unit_bytes(uint64_t(o.chunk_tokens) * C, uint32_t(es));
  if (rest) total += 2 * L * detail::stored_unit_bytes(rest * C, uint32_t(es));
  if (total > uint64_t(SIZE_MAX)) return 0;
  return size_t(total);
}

namespace {

// Unit stores kept from one encoding to the next, with their pages (encode/unit_store.hpp).
detail::UnitStorePool& unit_store_pool() {
  static detail::UnitStorePool pool(size_t(256) << 20, 512);
  return pool;
}

// The (layer, K/V) tasks' outputs of one encoding. When the pool keeps pages (not in a process's
// first encoding), the stores keep theirs while the frame is assembled and go back to the pool.
struct TaskOutputs {
  explicit TaskOutputs(size_t n) : outs(n), keep(unit_store_pool().keep_pages()) {}
  TaskOutputs(const TaskOutputs&) = delete;
  TaskOutputs& operator=(const TaskOutputs&) = delete;
  ~TaskOutputs() {
    if (keep)
      for (LayerOutput& lo : outs) unit_store_pool().give(std::move(lo.units));
    unit_store_pool().encoding_finished();
  }
  std::vector<LayerOutput> outs;
  const bool keep;
};

}  // namespace

// encode_into without the metrics.
static StatusOr<size_t> encode_frame(const KVView& src, const EncodeOptions& o, std::span<uint8_t> dst,
                                     const std::vector<LayerModel>* fixed = nullptr, uint32_t rd_block = 0) {
  KVCODEC_RETURN_IF_ERROR(validate_options(o));
  KVCODEC_RETURN_IF_ERROR(validate_view(src));
  const KVShape& sh = src.shape;
  const uint32_t L = sh.layers;
  const uint32_t chunks = detail::num_chunks_for(sh.tokens, o.chunk_tokens);
  const Context cx{src, o, fixed, chunks, dtype_size(src.dtype), sh.channels() * dtype_size(src.dtype) + 64, rd_block};

  TaskOutputs task_outputs(size_t(L) * 2);
  std::vector<LayerOutput>& outs = task_outputs.outs;
  KVCODEC_RETURN_IF_ERROR(detail::parallel_for(outs.size(), o.threads, [&](size_t task) {
    const uint32_t l = uint32_t(task / 2), kv = uint32_t(task % 2);
    uint64_t reserve = 0;
    for (uint32_t k = 0; k < chunks; ++k) reserve += max_unit_bytes(cx, k);
    if (reserve > SIZE_MAX ||
        !(outs[task].status = unit_store_pool().take(size_t(reserve), outs[task].units)).ok()) {
      if (outs[task].status.ok()) outs[task].status = ResourceExhausted("coded units larger than the address space");
      return;
    }
    outs[task].units.set_keep_pages(task_outputs.keep);
    std::unique_ptr<Workspace> ws = workspace_pool().take();
    size_t pitch = cx.rp;
    const uint8_t* raw = rows_in_place(src, l, kv, &pitch);
    if (!raw) {
      ws->raw.resize(size_t(sh.tokens) * cx.rp);  // gathered next
      gather(src, l, kv, ws->raw.data(), cx.rp);
      raw = ws->raw.data();
    }
    const Context tcx{cx.src, cx.opt, cx.fixed, cx.chunks, cx.es, pitch, cx.rd_block};
    if (o.level == 0) encode_lossless(tcx, raw, *ws, outs[task]);
    else encode_lossy(tcx, l, kv, raw, *ws, outs[task]);
    const size_t ws_bytes = ws->raw.capacity() + ws->val.capacity() * 2 + ws->fc.capacity() * 4 +
                            ws->unit.capacity();  // the large arrays (and the lanes' words, as large as the unit)
    workspace_pool().give(std::move(ws), ws_bytes);
  }));
  for (size_t i = 0; i < outs.size(); ++i)
    if (!outs[i].status.ok())
      return outs[i].status.with_context("layer " + std::to_string(i / 2) + (i % 2 ? " V" : " K"));

  FrameInfo f = detail::frame_info_for(sh, src.dtype, o);
  bool any_stored = false, any_raw = false;
  for (const auto& lo : outs) {
    any_stored |= lo.units.any_stored();
    any_raw |= lo.model.raw_planes != 0;
  }
  // Version 5 when a byte plane is raw (docs/format.md 4.5; stored units allowed there too), else
  // 3 when a unit is stored (4.4), else 2.
  if (any_raw) f.format_version = kRawPlanesFormatVersion;
  else if (any_stored) f.format_version = kStoredUnitsFormatVersion;
  std::vector<uint8_t> model;
  const bool sources = fixed && !fixed->front().tables.empty();  // docs/format.md 2.2
  for (const auto& lo : outs) {
    if (sources) model.push_back(lo.model.from_profile ? 1 : 0);
    if (!lo.model.from_profile) f.table_bytes += detail::write_layer_model(f, lo.model, model, !sources);
  }

  f.chunks.resize(chunks);
  const size_t dir_bytes = size_t(L) * 2 * 4;
  for (uint32_t k = 0; k < chunks; ++k) {
    uint64_t size = dir_bytes;
    for (const auto& lo : outs) {
      size += lo.units.size(k);
      if (any_stored && lo.units.size(k) >= kStoredUnitFlag)
        return ResourceExhausted("unit of 2 GiB or more in a frame with stored units: use smaller chunk_tokens");
    }
    if (size > UINT32_MAX) return ResourceExhausted("chunk larger than 4 GiB: use smaller chunk_tokens");
    f.chunks[k].size = uint32_t(size);
    f.chunks[k].tokens = std::min(o.chunk_tokens, sh.tokens - k * o.chunk_tokens);
  }
  // Assign offsets (write_head) before copying bodies; checksums are patched in afterwards.
  std::vector<uint8_t> head;
  detail::write_head(f, model, head);
  if (f.frame_bytes > dst.size())
    return BufferTooSmall("frame needs " + std::to_string(f.frame_bytes) + " bytes, buffer has " +
                          std::to_string(dst.size()));
  // Chunk bodies one at a time, its units copied in parallel (each task's store by one thread);
  // the pages of each unit are handed back once it is copied, so the units and the frame are
  // never both held in full, even when the frame is one chunk.
  std::vector<size_t> at(outs.size());  // where each unit of the chunk goes in its body
  for (uint32_t k = 0; k < chunks; ++k) {
    uint8_t* p = dst.data() + f.chunks[k].offset;
    size_t pos = dir_bytes;
    for (size_t i = 0; i < outs.size(); ++i) {
      const detail::UnitStore& u = outs[i].units;
      detail::store_le32(p + 4 * i, uint32_t(u.size(k)) | (u.stored(k) ? kStoredUnitFlag : 0));
      at[i] = pos;
      pos += u.size(k);
    }
    KVCODEC_RETURN_IF_ERROR(detail::parallel_ranges(outs.size(), o.threads, 1, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        std::memcpy(p + at[i], outs[i].units.data(k), outs[i].units.size(k));
        outs[i].units.release_below(k + 1);
      }
    }));
    f.chunks[k].checksum = detail::frame_checksum_host(f.format_version, p, f.chunks[k].size);
  }
  detail::write_head(f, model, head);
  std::memcpy(dst.data(), head.data(), head.size());
  return size_t(f.frame_bytes);
}

namespace detail {

StatusOr<size_t> encode_with_models(const KVView& src, const EncodeOptions& o, const std::vector<LayerModel>& fixed,
                                    std::span<uint8_t> dst, uint32_t rd_block) {
  if (o.level == 0 || o.group_tokens != 1 || fixed.size() != size_t(src.shape.layers) * 2)
    return InvalidArgument("profile models need a lossy level, group_tokens 1 and a model per (layer, K/V)");
  for (const LayerModel& m : fixed)
    if (m.step_code.size() != src.shape.channels() || m.center.size() != src.shape.channels() || m.slots != 1 ||
        m.tables.empty() != fixed.front().tables.empty())
      return InvalidArgument("profile model of another shape");
  return encode_frame(src, o, dst, &fixed, rd_block);
}

StatusOr<size_t> encode_coefficients_rd(const KVView& src, const EncodeOptions& o, std::span<uint8_t> dst,
                                        uint32_t rd_block) {
  const detail::MetricTimer timer(o.metrics);
  StatusOr<size_t> size = encode_frame(src, o, dst, nullptr, rd_block);
  if (timer.sink() && size.ok()) {
    MetricEvent e;
    e.kind = MetricKind::kEncode;
    e.level = o.level;
    e.seconds = timer.seconds();
    e.raw_bytes = src.shape.elements() * dtype_size(src.dtype);
    e.coded_bytes = *size;
    e.elements = src.shape.elements();
    timer.sink()->record(e);
  }
  return size;
}

}  // namespace detail

StatusOr<size_t> encode_into(const KVView& src, const EncodeOptions& o, std::span<uint8_t> dst) {
  return detail::encode_coefficients_rd(src, o, dst, 0);
}

}  // namespace kvcodec
