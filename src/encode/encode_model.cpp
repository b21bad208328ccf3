// Channel clustering, table windows and normalisation for one (layer, K/V); see
// encode/encode_model.hpp. Every decision uses integer arithmetic, so the model (and the frame)
// is the same on every machine, whichever backend counted the histograms.
#include "encode/encode_model.hpp"

#include <algorithm>
#include <numeric>

#include "encode/encode_values.hpp"
#include "common/log2.hpp"
#include "encode/model_values.hpp"

namespace kvcodec::detail {
namespace {

// Assigns channels to at most max_groups groups: an initial split by an integer feature
// (quantiles), refined by a few rounds of "move each channel to the group whose smoothed table
// codes it in the fewest bits", counting the slots from first_slot on. (Lossless frames cluster on
// the top byte plane alone: sign and exponent differ between channels, the low mantissa bytes are
// near-uniform everywhere and would only make clustering slow.)
std::vector<uint8_t> cluster_channels(const Histograms& hs, const uint64_t* feature, uint32_t max_groups,
                                      uint32_t first_slot, uint32_t* groups_out) {
  const uint32_t C = hs.channels;
  std::vector<uint32_t> order(C);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return feature[a] < feature[b]; });
  const uint32_t G = std::min<uint32_t>(max_groups, C);
  std::vector<uint8_t> group(C);
  for (uint32_t i = 0; i < C; ++i) group[order[i]] = uint8_t(uint64_t(i) * G / C);

  if (G > 1) {
    // Non-zero bins of each channel, for fast cost evaluation.
    struct Entry {
      uint32_t index;  // slot * bins + bin
      uint32_t count;
    };
    std::vector<std::vector<Entry>> nz(C);
    for (uint32_t s = first_slot; s < hs.slots; ++s)
      for (uint32_t b = 0; b < hs.bins; ++b)
        for (uint32_t c = 0; c < C; ++c)
          if (uint32_t n = hs.count(c, s, b)) nz[c].push_back({s * hs.bins + b, n});
    const size_t table_len = size_t(hs.slots) * hs.bins;
    std::vector<uint64_t> gsum(G * table_len), cost(G * table_len);
    for (int round = 0; round < 4; ++round) {
      std::fill(gsum.begin(), gsum.end(), 0);
      for (uint32_t c = 0; c < C; ++c)
        for (const Entry& e : nz[c]) gsum[group[c] * table_len + e.index] += e.count;
      // cost[g][slot][bin] = -log2 of the smoothed probability, Q24 fixed point.
      for (uint32_t g = 0; g < G; ++g)
        for (uint32_t s = first_slot; s < hs.slots; ++s) {
          uint64_t total = 0;
          const uint64_t* gs = &gsum[g * table_len + s * hs.bins];
          for (uint32_t b = 0; b < hs.bins; ++b) total += gs[b];
          const uint64_t log_total = log2_q32(2 * total + hs.bins);
          for (uint32_t b = 0; b < hs.bins; ++b)  // log2(2 * 0 + 1) = 0 for the many empty bins
            cost[g * table_len + s * hs.bins + b] = (log_total - (gs[b] ? log2_q32(2 * gs[b] + 1) : 0)) >> 8;
        }
      bool moved = false;
      for (uint32_t c = 0; c < C; ++c) {
        uint32_t best = group[c];
        uint64_t best_cost = UINT64_MAX;
        for (uint32_t g = 0; g < G; ++g) {
          uint64_t sum = 0;
          for (const Entry& e : nz[c]) sum += uint64_t(e.count) * cost[g * table_len + e.index];
          if (sum < best_cost) {
            best_cost = sum;
            best = g;
          }
        }
        if (best != group[c]) {
          group[c] = uint8_t(best);
          moved = true;
        }
      }
      if (!moved) break;
    }
  }
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

// Sums the histograms of each group's channels.
std::vector<uint64_t> group_histograms(const Histograms& hs, const std::vector<uint8_t>& group, uint32_t G) {
  std::vector<uint64_t> out(size_t(G) * hs.slots * hs.bins, 0);
  for (uint32_t s = 0; s < hs.slots; ++s)
    for (uint32_t b = 0; b < hs.bins; ++b)
      for (uint32_t c = 0; c < hs.channels; ++c) out[(size_t(group[c]) * hs.slots + s) * hs.bins + b] += hs.count(c, s, b);
  return out;
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

}  // namespace

Status build_layer_model(const Histograms& hs, const uint64_t* feature, bool lossless, uint32_t table_groups,
                         LayerModel& m, std::vector<uint32_t>& codes) {
  m.slots = hs.slots;
  m.channel_group = cluster_channels(hs, feature, table_groups, lossless ? hs.slots - 1 : 0, &m.groups);
  return build_layer_tables(hs, lossless, m, codes);
}

Status build_layer_tables(const Histograms& hs, bool lossless, LayerModel& m, std::vector<uint32_t>& codes) {
  const auto gh = group_histograms(hs, m.channel_group, m.groups);
  m.tables.resize(size_t(m.groups) * m.slots);
  codes.resize(m.tables.size() * hs.bins);
  for (size_t i = 0; i < m.tables.size(); ++i) {
    const uint64_t* h = &gh[i * hs.bins];
    KVCODEC_RETURN_IF_ERROR(lossless ? lossless_table(h, m.tables[i], &codes[i * hs.bins])
                                     : lossy_table(h, m.tables[i], &codes[i * hs.bins]));
  }
  return Status::Ok();
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
