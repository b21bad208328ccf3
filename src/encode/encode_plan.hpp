// The host side of the GPU encoder (cuda/encode.cu) and of its emulation (tests): the layout of
// an encoding and the constants computed once per Encoder. Everything per context runs on the
// device (encode/warp_encode.hpp, encode/block_model.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "kvcodec/config.hpp"
#include "encode/block_model.hpp"
#include "encode/warp_encode.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::detail {

// Validates shape, dtype and options and derives the encoding's layout.
StatusOr<EncodeLayout> encode_layout(const KVShape& shape, DType dtype, const EncodeOptions& o);

// kLevelStep[level] * layer_factor(l) for every layer l: the relative step of its grids.
std::vector<double> layer_rel_steps(const EncodeLayout& el, const EncodeOptions& o);

// Upper bound on the head (header, model section, chunk index) of such a frame.
uint64_t max_head_bytes(const EncodeLayout& el, const EncodeOptions& o);

// The header of the frames of this encoding: what write_head writes, with a zero model size,
// frame size and head checksum (block_write_model and finish_head fill them in).
HeaderTemplate header_template(const EncodeLayout& el, const EncodeOptions& o);

}  // namespace kvcodec::detail
