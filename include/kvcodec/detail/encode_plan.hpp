// The host phase of the GPU encoder (cuda/encode.cu) and of its warp emulation (tests): from the
// histograms, clustering features and grids that phase 1 computed for every (layer, K/V) to the
// frame head and the lane encoders' code tables. It runs the CPU encoder's own model building
// (src/encode_model.cpp), so both backends choose the same groups and tables.
#pragma once

#include <cstdint>
#include <vector>

#include "kvcodec/config.hpp"
#include "kvcodec/detail/block_model.hpp"
#include "kvcodec/detail/warp_encode.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/quantize.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::detail {

// Validates shape, dtype and options and derives the encoding's layout.
StatusOr<EncodeLayout> encode_layout(const KVShape& shape, DType dtype, const EncodeOptions& o);

// kLevelStep[level] * layer_factor(l) for every layer l: the relative step of its grids.
std::vector<double> layer_rel_steps(const EncodeLayout& el, const EncodeOptions& o);

// Upper bound on the head (header, model section, chunk index) of such a frame.
uint64_t max_head_bytes(const EncodeLayout& el, const EncodeOptions& o);

struct EncodePlan {
  // Frame parameters; chunk tokens are set, chunk sizes, offsets and checksums are not (the
  // device computes them).
  FrameInfo info;
  // The head with a zeroed chunk index, frame size and head checksum (finish_chunk and
  // finish_head fill them in).
  std::vector<uint8_t> head;
  std::vector<uint32_t> codes;       // [unit][max_tables][bins], EncodeTables::codes
  std::vector<uint16_t> table_base;  // [unit][channel], EncodeTables::table_base
};

// Builds the model of every unit from phase 1's outputs (arrays over all units, laid out as
// warp_encode.hpp describes; `grids` is ignored at level 0). Uses up to `threads` threads
// (0 = all). Allocates host memory.
Status build_encode_plan(const EncodeLayout& el, const EncodeOptions& o, const uint32_t* hist, const uint64_t* feature,
                         const ChannelGrid* grids, EncodePlan& plan);

// The header of the frames of this encoding: what write_head writes, with a zero model size,
// frame size and head checksum (block_write_model and finish_head fill them in).
HeaderTemplate header_template(const EncodeLayout& el, const EncodeOptions& o);

}  // namespace kvcodec::detail
