// From symbol histograms to the model of one (layer, K/V): channel groups, their probability
// tables and the lane encoders' code tables. Shared by the CPU encoder (encode.cpp) and the
// host phase of the GPU encoder (encode_plan.cpp), so both build the same model from the same
// histograms. Internal to src/.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/frame.hpp"
#include "encode/model_values.hpp"  // max_layer_model_bytes
#include "kvcodec/config.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::detail {

// Per-channel symbol histograms of one (layer, K/V), laid out [slot][bin][channel] so that
// counting one token's channels, whose values fall in a few central bins, touches a few adjacent
// cache lines rather than one line per channel. A view: the counts live elsewhere (a vector of
// the CPU encoder, or memory copied back from the GPU).
struct Histograms {
  uint32_t channels, slots, bins;
  uint32_t* h;
  uint32_t* row(uint32_t slot, uint32_t bin) const { return h + (size_t(slot) * bins + bin) * channels; }
  uint32_t count(uint32_t c, uint32_t slot, uint32_t bin) const { return h[(size_t(slot) * bins + bin) * channels + c]; }
};

// The same counts, sparse: per channel its non-zero (slot * bins + bin, count) entries in
// ascending order, channel c's at [begin[c], begin[c + 1]). What the CPU encoder counts (a dense
// [slot][bin][channel] array would be mostly zeros, and scanning it cost as much as counting).
struct ChannelCounts {
  uint32_t channels = 0, slots = 0, bins = 0;
  std::vector<uint32_t> begin{0};  // channels + 1 once complete
  std::vector<uint32_t> index;     // slot * bins + bin
  std::vector<uint32_t> count;
  // Empties the counts for c channels; `expect` entries are reserved.
  void reset(uint32_t c, uint32_t s, uint32_t b, size_t expect = 0) {
    channels = c;
    slots = s;
    bins = b;
    begin.assign(1, 0);
    begin.reserve(size_t(c) + 1);
    index.clear();
    count.clear();
    index.reserve(expect);
    count.reserve(expect);
  }
};

// Builds m.groups, m.slots, m.channel_group and m.tables from the histograms of a lossless
// (slots = byte planes, bins = 256) or lossy (slots = anchor[, delta], bins = kLossyBins) unit
// and the clustering feature of each channel. `codes` receives, per table and bin, the lane
// code freq << 16 | cum (| kEscFlag for the lossy escape symbol): tables * bins entries.
// Per-channel grids (lossy) are the caller's.
Status build_layer_model(const Histograms& hs, const uint64_t* feature, bool lossless, uint32_t table_groups,
                         LayerModel& m, std::vector<uint32_t>& codes);

// Rebuilds m.tables and `codes` from new histograms, keeping m's channel groups (the second
// pass of a lossy encoding whose anchors escaped: see encode.cpp, escape_orphaned_deltas).
Status build_layer_tables(const Histograms& hs, bool lossless, LayerModel& m, std::vector<uint32_t>& codes);

// The same two steps from sparse counts (the CPU encoder's path; the dense forms above convert
// their histograms and call these, so there is one algorithm).
Status build_layer_model(const ChannelCounts& cc, const uint64_t* feature, bool lossless, uint32_t table_groups,
                         LayerModel& m, std::vector<uint32_t>& codes);
Status build_layer_tables(const ChannelCounts& cc, bool lossless, LayerModel& m, std::vector<uint32_t>& codes);
// The lane codes of a given lossy model's tables ([table][value bin], as build_layer_tables
// fills them): a value outside its table's window, or of frequency 0 there, codes as the escape.
void lossy_model_codes(const LayerModel& m, std::vector<uint32_t>& codes);
// What coding the counted lossy values with model m and its codes costs, in bits * 2^16 (integer:
// -log2 of each frequency, 32 bits more per escape, as fp32 coefficients escape); UINT64_MAX when
// a value would need an escape of frequency 0.
// encode_into with profile models (docs/format.md 2.2): every (layer, K/V) quantized on the grids
// of fixed[l * 2 + kv]; each unit codes with that model's tables (the model section then holds
// the source byte 1 alone) or, when cheaper, its own tables (source byte 0, then its model).
// Models without tables (all of them) fix only the grids: a version 2/3 frame, no source bytes.
// rd_block != 0: rate-distortion optimised quantization of fp32 coefficients (rd_quantize.hpp)
// with error blocks of rd_block channels (version 4 frames: the head_dim).
StatusOr<size_t> encode_with_models(const KVView& src, const EncodeOptions& o, const std::vector<LayerModel>& fixed,
                                    std::span<uint8_t> dst, uint32_t rd_block = 0);
// encode_into (its metrics event included) with rate-distortion optimised quantization when
// rd_block != 0; no profile models.
StatusOr<size_t> encode_coefficients_rd(const KVView& src, const EncodeOptions& o, std::span<uint8_t> dst,
                                        uint32_t rd_block);
uint64_t lossy_model_cost(const ChannelCounts& cc, const LayerModel& m, const std::vector<uint32_t>& codes);

// The frame parameters of an encoding of `shape` and `dtype` with options `o` (no chunks yet).
FrameInfo frame_info_for(const KVShape& shape, DType dtype, const EncodeOptions& o);

}  // namespace kvcodec::detail
