// Channel clustering, table windows and normalisation for one (layer, K/V); see
// encode/encode_model.hpp. Every decision uses integer arithmetic, so the model (and the frame)
// is the same on every machine, whichever backend counted the histograms.
#include "encode/encode_model.hpp"

#include <algorithm>
#include <numeric>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "encode/encode_values.hpp"
#include "common/log2.hpp"
#include "encode/model_values.hpp"
#include "common/simd.hpp"

namespace kvcodec::detail {
namespace {

// The clustering's cost table: cost[k][g] = -log2 of group g's smoothed probability of the k-th
// (slot, bin) that any channel counts, Q24. Fits 32 bits: totals are below 2^41, so the log2 is
// below 42 (Q32), and the smoothing keeps every cost >= 0.
constexpr uint32_t kCostRow = kMaxTableGroups;

// sum[g] = the cost of a channel's entries [e0, e1) (dense numbers kof, counts cnt) under each
// group g < kCostRow: exact integer sums (counts < 2^25, costs < 2^30).
void channel_costs_scalar(const uint32_t* kof, const uint32_t* cnt, uint32_t e0, uint32_t e1, const uint32_t* cost,
                          uint64_t* sum) {
  for (uint32_t g = 0; g < kCostRow; ++g) sum[g] = 0;
  for (uint32_t e = e0; e < e1; ++e) {
    const uint64_t n = cnt[e];
    const uint32_t* row = &cost[size_t(kof[e]) * kCostRow];
    for (uint32_t g = 0; g < kCostRow; ++g) sum[g] += n * row[g];
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void channel_costs_avx2(const uint32_t* kof, const uint32_t* cnt, uint32_t e0,
                                                         uint32_t e1, const uint32_t* cost, uint64_t* sum) {
  static_assert(kCostRow == 16, "four vectors of four 64-bit sums");
  __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  for (uint32_t e = e0; e < e1; ++e) {
    const __m256i n = _mm256_set1_epi64x(cnt[e]);
    const uint32_t* row = &cost[size_t(kof[e]) * kCostRow];
    for (int q = 0; q < 4; ++q) {
      const __m256i r = _mm256_cvtepu32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 4 * q)));
      acc[q] = _mm256_add_epi64(acc[q], _mm256_mul_epu32(r, n));
    }
  }
  for (int q = 0; q < 4; ++q) _mm256_storeu_si256(reinterpret_cast<__m256i*>(sum + 4 * q), acc[q]);
}

// The same with AVX-512: a cost row is one vector, the 16 sums two. vpmuludq reads the low 32
// bits of each 64-bit lane, so the row's even groups multiply in place and its odd groups after
// one shift (no widening shuffles), and the count is a 32-bit broadcast straight from memory;
// the two sums are interleaved back into group order at the end. (GCC 12's AVX-512 headers
// trip -Wmaybe-uninitialized on their own _mm512_undefined_* operands.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void channel_costs_avx512(const uint32_t* kof, const uint32_t* cnt, uint32_t e0,
                                                             uint32_t e1, const uint32_t* cost, uint64_t* sum) {
  __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
  for (uint32_t e = e0; e < e1; ++e) {
    const __m512i n = _mm512_set1_epi32(int(cnt[e]));
    const __m512i row = _mm512_loadu_si512(&cost[size_t(kof[e]) * kCostRow]);
    even = _mm512_add_epi64(even, _mm512_mul_epu32(row, n));
    odd = _mm512_add_epi64(odd, _mm512_mul_epu32(_mm512_srli_epi64(row, 32), n));
  }
  const __m512i first = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
  const __m512i second = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
  _mm512_storeu_si512(sum, _mm512_permutex2var_epi64(even, first, odd));
  _mm512_storeu_si512(sum + 8, _mm512_permutex2var_epi64(even, second, odd));
}
#pragma GCC diagnostic pop
#endif

// out[i] = log2_q32(x[i]) for x[i] >= 1 (the clustering's costs). The AVX2 form runs log2_q32's
// 32 squaring steps on 16 values at once (the mantissa stays below 2^32, so vpmuludq squares it
// exactly); the same integer steps, so the same bits.
void log2_q32_scalar(const uint64_t* x, size_t n, uint64_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = log2_q32(x[i]);
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void log2_q32_avx2(const uint64_t* x, size_t n, uint64_t* out) {
  constexpr size_t kV = 4;  // vectors of 4 lanes per batch
  size_t i = 0;
  for (; i + 4 * kV <= n; i += 4 * kV) {
    alignas(32) uint64_t y0[4 * kV], e[4 * kV];
    for (size_t k = 0; k < 4 * kV; ++k) {
      const uint32_t ex = 63 - clz64(x[i + k]);
      e[k] = uint64_t(ex) << 32;
      y0[k] = (x[i + k] << (63 - ex)) >> 32;
    }
    __m256i y[kV], frac[kV];
    for (size_t v = 0; v < kV; ++v) {
      y[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(y0 + 4 * v));
      frac[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(e + 4 * v));
    }
    for (int s = 1; s <= 32; ++s) {
      const __m128i at = _mm_cvtsi32_si128(32 - s);
      for (size_t v = 0; v < kV; ++v) {
        const __m256i sq = _mm256_srli_epi64(_mm256_mul_epu32(y[v], y[v]), 31);  // [2^31, 2^33)
        const __m256i top = _mm256_srli_epi64(sq, 32);                           // 0 or 1
        frac[v] = _mm256_or_si256(frac[v], _mm256_sll_epi64(top, at));
        y[v] = _mm256_srlv_epi64(sq, top);
      }
    }
    for (size_t v = 0; v < kV; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + 4 * v), frac[v]);
  }
  log2_q32_scalar(x + i, n - i, out + i);
}
#endif

void log2_q32_many(const uint64_t* x, size_t n, uint64_t* out) {
#if defined(__x86_64__)
  if (avx2_enabled()) return log2_q32_avx2(x, n, out);
#endif
  log2_q32_scalar(x, n, out);
}

void channel_costs(const uint32_t* kof, const uint32_t* cnt, uint32_t e0, uint32_t e1, const uint32_t* cost,
                   uint64_t* sum) {
#if defined(__x86_64__)
  if (avx512_enabled()) return channel_costs_avx512(kof, cnt, e0, e1, cost, sum);
  if (avx2_enabled()) return channel_costs_avx2(kof, cnt, e0, e1, cost, sum);
#endif
  channel_costs_scalar(kof, cnt, e0, e1, cost, sum);
}

// Refines `group` (G groups) by rounds of "move each channel to the group whose smoothed table
// codes its counts in the fewest bits" (ties to the lowest group) until nothing moves, at most 4
// rounds. Only the entries from slot first_slot on count. Every sum is an exact integer, so the
// order of the additions does not matter.
void refine_groups(const ChannelCounts& cc, uint32_t G, uint32_t first_slot, std::vector<uint8_t>& group) {
  const uint32_t C = cc.channels, bins = cc.bins;
  const uint32_t from = first_slot * bins;
  // The (slot, bin) pairs any channel counts, numbered densely (k), and each entry's k.
  std::vector<uint32_t> pos(size_t(cc.slots) * bins, UINT32_MAX);
  for (uint32_t i : cc.index)
    if (i >= from) pos[i] = 0;
  std::vector<uint32_t> used;  // k -> slot * bins + bin
  for (uint32_t i = from; i < pos.size(); ++i)
    if (pos[i] == 0) {
      pos[i] = uint32_t(used.size());
      used.push_back(i);
    }
  const uint32_t K = uint32_t(used.size());
  std::vector<uint32_t> kslot(K);  // k -> its slot (one division per k, not per group and round)
  for (uint32_t k = 0; k < K; ++k) kslot[k] = used[k] / bins;
  std::vector<uint32_t> first(C), kof(cc.index.size());  // each channel's first clustering entry
  for (uint32_t c = 0; c < C; ++c) {
    uint32_t e = cc.begin[c];
    while (e < cc.begin[c + 1] && cc.index[e] < from) ++e;
    first[c] = e;
    for (; e < cc.begin[c + 1]; ++e) kof[e] = pos[cc.index[e]];
  }
  // gsum: each group's summed counts, kept current as channels move (exact integers, so the
  // same sums as a recount every round).
  std::vector<uint64_t> gsum(size_t(G) * K, 0), g2(size_t(G) * K), glog(size_t(G) * K);
  std::vector<uint64_t> log_total(size_t(G) * cc.slots);
  std::vector<uint32_t> cost(size_t(K) * kCostRow, 0);
  for (uint32_t c = 0; c < C; ++c) {
    uint64_t* gs = &gsum[size_t(group[c]) * K];
    for (uint32_t e = first[c]; e < cc.begin[c + 1]; ++e) gs[kof[e]] += cc.count[e];
  }
  for (int round = 0; round < 4; ++round) {
    std::fill(log_total.begin(), log_total.end(), 0);
    for (uint32_t g = 0; g < G; ++g)
      for (uint32_t k = 0; k < K; ++k) log_total[g * cc.slots + kslot[k]] += gsum[size_t(g) * K + k];
    for (uint64_t& t : log_total) t = log2_q32(2 * t + bins);
    // log2_q32(2 * v + 1) of every group's count (log2_q32(1) = 0 for the absent ones).
    for (size_t i = 0; i < gsum.size(); ++i) g2[i] = 2 * gsum[i] + 1;
    log2_q32_many(g2.data(), g2.size(), glog.data());
    for (uint32_t g = 0; g < G; ++g) {
      const uint64_t* lt = &log_total[size_t(g) * cc.slots];
      const uint64_t* gl = &glog[size_t(g) * K];
      for (uint32_t k = 0; k < K; ++k) cost[size_t(k) * kCostRow + g] = uint32_t((lt[kslot[k]] - gl[k]) >> 8);
    }
    bool moved = false;
    for (uint32_t c = 0; c < C; ++c) {
      uint64_t sum[kCostRow];
      channel_costs(kof.data(), cc.count.data(), first[c], cc.begin[c + 1], cost.data(), sum);
      uint32_t best = 0;
      for (uint32_t g = 1; g < G; ++g)
        if (sum[g] < sum[best]) best = g;
      if (best != group[c]) {
        uint64_t* from_gs = &gsum[size_t(group[c]) * K];
        uint64_t* to_gs = &gsum[size_t(best) * K];
        for (uint32_t e = first[c]; e < cc.begin[c + 1]; ++e) {
          from_gs[kof[e]] -= cc.count[e];
          to_gs[kof[e]] += cc.count[e];
        }
        group[c] = uint8_t(best);
        moved = true;
      }
    }
    if (!moved) break;
  }
}

// Assigns channels to at most max_groups groups: an initial split by an integer feature
// (quantiles), refined by refine_groups counting the slots from first_slot on. (Lossless frames
// cluster on the top byte plane alone: sign and exponent differ between channels, the low
// mantissa bytes are near-uniform everywhere and would only make clustering slow.)
std::vector<uint8_t> cluster_channels(const ChannelCounts& cc, const uint64_t* feature, uint32_t max_groups,
                                      uint32_t first_slot, uint32_t* groups_out) {
  const uint32_t C = cc.channels;
  std::vector<uint32_t> order(C);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return feature[a] < feature[b]; });
  const uint32_t G = std::min<uint32_t>(max_groups, C);
  std::vector<uint8_t> group(C);
  for (uint32_t i = 0; i < C; ++i) group[order[i]] = uint8_t(uint64_t(i) * G / C);
  if (G > 1) refine_groups(cc, G, first_slot, group);
  // Renumber used groups densely, in order of first use.
  std::vector<int> remap(G, -1);
  uint32_t used = 0;
  for (uint32_t c = 0; c < C; ++c) {
    if (remap[group[c]] < 0) remap[group[c]] = int(used++);
    group[c] = uint8_t(remap[group[c]]);
  }
  *groups_out = used;
  return group;
}

// Sums the counts of each group's channels: [group * slots + slot][bin].
std::vector<uint64_t> group_histograms(const ChannelCounts& cc, const std::vector<uint8_t>& group, uint32_t G) {
  const size_t per_group = size_t(cc.slots) * cc.bins;
  std::vector<uint64_t> out(G * per_group, 0);
  for (uint32_t c = 0; c < cc.channels; ++c) {
    uint64_t* gh = &out[group[c] * per_group];
    for (uint32_t e = cc.begin[c]; e < cc.begin[c + 1]; ++e) gh[cc.index[e]] += cc.count[e];
  }
  return out;
}

// The sparse form of dense histograms.
ChannelCounts sparse_counts(const Histograms& hs) {
  ChannelCounts cc;
  cc.reset(hs.channels, hs.slots, hs.bins);
  for (uint32_t c = 0; c < hs.channels; ++c) {
    for (uint32_t s = 0; s < hs.slots; ++s)
      for (uint32_t b = 0; b < hs.bins; ++b)
        if (const uint32_t n = hs.count(c, s, b)) {
          cc.index.push_back(s * hs.bins + b);
          cc.count.push_back(n);
        }
    cc.begin.push_back(uint32_t(cc.index.size()));
  }
  return cc;
}

// Lossless: one table per byte value seen; trailing absent symbols are not stored.
Status lossless_table(const uint64_t* h, TableSpec& spec, uint32_t* codes) {
  const size_t n = lossless_symbols(h);
  std::vector<uint64_t> c(h, h + n);
  if (std::all_of(c.begin(), c.end(), [](uint64_t v) { return v == 0; })) c[0] = 1;
  KVCODEC_ASSIGN_OR_RETURN(spec.table, FreqTable::from_counts(c));
  const FreqTable& tb = spec.table;
  for (uint32_t b = 0; b < kLosslessBins; ++b) codes[b] = b < n ? uint32_t(tb.freq[b]) << 16 | tb.cum[b] : 0u;
  return Status::Ok();
}

// Lossy: the window [qmin, qmin + n - 2] of at most 255 values holding the most occurrences;
// values outside it, and escaped values, code as the escape symbol n - 1.
Status lossy_table(const uint64_t* h, TableSpec& spec, uint32_t* codes) {
  int32_t lo, hi;
  lossy_window(h, &lo, &hi);
  const uint32_t n = uint32_t(hi - lo + 2);  // values + escape
  std::vector<uint64_t> counts(n, 0);
  uint16_t sym[kLossyBins];  // value bin -> symbol
  for (uint32_t b = 0; b < kLossyBins; ++b) {
    const bool inside = b != kEscBin && int(b) >= lo && int(b) <= hi;
    sym[b] = inside ? uint16_t(b - lo) : uint16_t(n - 1);
    counts[sym[b]] += h[b];
  }
  if (std::all_of(counts.begin(), counts.end(), [](uint64_t v) { return v == 0; })) counts[0] = 1;
  KVCODEC_ASSIGN_OR_RETURN(spec.table, FreqTable::from_counts(counts));
  spec.qmin = int16_t(lo - kQLimit);
  const FreqTable& tb = spec.table;
  for (uint32_t b = 0; b < kLossyBins; ++b)
    codes[b] = uint32_t(tb.freq[sym[b]]) << 16 | tb.cum[sym[b]] | (sym[b] == n - 1 ? kEscFlag : 0);
  return Status::Ok();
}

// Lossless: the byte planes kept raw (docs/format.md 4.5): those whose symbols, coded with the
// tables just built from the group histograms gh, would save less than 1/64 of their bytes.
uint32_t raw_planes_of(const std::vector<uint64_t>& gh, const LayerModel& m) {
  static const std::vector<uint64_t> cost = [] {  // symbol_cost_q16 of every frequency, once
    std::vector<uint64_t> c(kRansM + 1);
    for (uint32_t f = 0; f <= kRansM; ++f) c[f] = symbol_cost_q16(f);
    return c;
  }();
  uint32_t mask = 0;
  for (uint32_t p = 0; p < m.slots; ++p) {
    uint64_t coded = 0, symbols = 0;
    for (uint32_t g = 0; g < m.groups; ++g) {
      const size_t i = size_t(g) * m.slots + p;
      const uint64_t* h = &gh[i * kLosslessBins];
      const FreqTable& tb = m.tables[i].table;
      for (uint32_t b = 0; b < tb.size(); ++b)
        if (h[b]) {
          coded += h[b] * cost[tb.freq[b]];
          symbols += h[b];
        }
    }
    if (keep_plane_raw(coded, symbols)) mask |= 1u << p;
  }
  return mask;
}

}  // namespace

Status build_layer_model(const ChannelCounts& cc, const uint64_t* feature, bool lossless, uint32_t table_groups,
                         LayerModel& m, std::vector<uint32_t>& codes) {
  m.slots = cc.slots;
  m.channel_group = cluster_channels(cc, feature, table_groups, lossless ? cc.slots - 1 : 0, &m.groups);
  return build_layer_tables(cc, lossless, m, codes);
}

Status build_layer_tables(const ChannelCounts& cc, bool lossless, LayerModel& m, std::vector<uint32_t>& codes) {
  const auto gh = group_histograms(cc, m.channel_group, m.groups);
  m.tables.resize(size_t(m.groups) * m.slots);
  codes.resize(m.tables.size() * cc.bins);
  for (size_t i = 0; i < m.tables.size(); ++i) {
    const uint64_t* h = &gh[i * cc.bins];
    KVCODEC_RETURN_IF_ERROR(lossless ? lossless_table(h, m.tables[i], &codes[i * cc.bins])
                                     : lossy_table(h, m.tables[i], &codes[i * cc.bins]));
  }
  m.raw_planes = lossless ? raw_planes_of(gh, m) : 0;
  return Status::Ok();
}

Status build_layer_model(const Histograms& hs, const uint64_t* feature, bool lossless, uint32_t table_groups,
                         LayerModel& m, std::vector<uint32_t>& codes) {
  return build_layer_model(sparse_counts(hs), feature, lossless, table_groups, m, codes);
}

Status build_layer_tables(const Histograms& hs, bool lossless, LayerModel& m, std::vector<uint32_t>& codes) {
  return build_layer_tables(sparse_counts(hs), lossless, m, codes);
}

void lossy_model_codes(const LayerModel& m, std::vector<uint32_t>& codes) {
  codes.assign(m.tables.size() * kLossyBins, 0);
  for (size_t i = 0; i < m.tables.size(); ++i) {
    const TableSpec& t = m.tables[i];
    const int32_t n = int32_t(t.table.size()), esc = n - 1;
    for (uint32_t b = 0; b < kLossyBins; ++b) {
      const int32_t s = int32_t(b) - kQLimit - t.qmin;
      const bool inside = b != kEscBin && s >= 0 && s < esc && t.table.freq[size_t(s)] != 0;
      const int32_t sym = inside ? s : esc;
      codes[i * kLossyBins + b] = uint32_t(t.table.freq[size_t(sym)]) << 16 | t.table.cum[size_t(sym)] | (inside ? 0 : kEscFlag);
    }
  }
}

uint64_t lossy_model_cost(const ChannelCounts& cc, const LayerModel& m, const std::vector<uint32_t>& codes) {
  uint64_t cost = 0;
  for (uint32_t c = 0; c < cc.channels; ++c) {
    const uint32_t* lut = &codes[size_t(m.channel_group[c]) * m.slots * kLossyBins];
    for (uint32_t e = cc.begin[c]; e < cc.begin[c + 1]; ++e) {
      const uint32_t code = lut[cc.index[e]];  // index = slot * bins + bin, tables of a group adjacent
      const uint32_t freq = (code & ~kEscFlag) >> 16;
      if (freq == 0) return UINT64_MAX;
      const uint64_t bits = ((uint64_t(kProbBits) << 32) - log2_q32(freq)) >> 16;
      cost += uint64_t(cc.count[e]) * (bits + (code & kEscFlag ? uint64_t(32) << 16 : 0));
    }
  }
  return cost;
}

FrameInfo frame_info_for(const KVShape& shape, DType dtype, const EncodeOptions& o) {
  FrameInfo f;
  f.dtype = dtype;
  f.shape = shape;
  f.level = o.level;
  f.chunk_tokens = o.chunk_tokens;
  f.group_tokens = o.group_tokens;
  f.table_groups = o.table_groups;
  f.step_mode = o.step_mode;
  return f;
}

}  // namespace kvcodec::detail
