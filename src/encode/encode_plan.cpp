#include "encode/encode_plan.hpp"

#include <cstring>

#include "encode/encode_model.hpp"
#include "common/frame.hpp"

namespace kvcodec::detail {

StatusOr<EncodeLayout> encode_layout(const KVShape& shape, DType dtype, const EncodeOptions& o) {
  KVCODEC_RETURN_IF_ERROR(validate_options(o));
  KVCODEC_RETURN_IF_ERROR(validate_shape(shape));
  if (!is_valid_dtype(uint8_t(dtype))) return InvalidArgument("unknown dtype");
  EncodeLayout el;
  el.dtype = uint8_t(dtype);
  el.elem_size = uint8_t(dtype_size(dtype));
  el.lossless = o.level == 0;
  el.step_mode = o.step_mode;
  el.layers = shape.layers;
  el.tokens = shape.tokens;
  el.kv_heads = shape.kv_heads;
  el.head_dim = shape.head_dim;
  el.channels = uint32_t(shape.channels());
  el.chunk_tokens = o.chunk_tokens;
  el.group_tokens = o.group_tokens;
  el.num_chunks = num_chunks_for(shape.tokens, o.chunk_tokens);
  el.slots = el.lossless ? el.elem_size : (o.group_tokens > 1 ? 2 : 1);
  el.bins = el.lossless ? kLosslessBins : kLossyBins;
  el.planes = el.lossless ? el.elem_size : 1;
  el.max_tables = o.table_groups * el.slots;
  return el;
}

std::vector<double> layer_rel_steps(const EncodeLayout& el, const EncodeOptions& o) {
  std::vector<double> rel(el.layers);
  for (uint32_t l = 0; l < el.layers; ++l) rel[l] = double(kLevelStep[o.level]) * layer_factor(l, el.layers);
  return rel;
}

uint64_t max_head_bytes(const EncodeLayout& el, const EncodeOptions& o) {
  return kHeaderBytes + uint64_t(el.num_chunks) * kIndexEntryBytes +
         uint64_t(el.units()) * max_layer_model_bytes(el.channels, o.table_groups, el.slots, el.lossless);
}

HeaderTemplate header_template(const EncodeLayout& el, const EncodeOptions& o) {
  FrameInfo f = frame_info_for(KVShape{el.layers, el.tokens, el.kv_heads, el.head_dim}, DType(el.dtype), o);
  f.chunks.assign(el.num_chunks, ChunkInfo{});
  std::vector<uint8_t> head;
  write_head(f, {}, head);
  HeaderTemplate t;
  std::memcpy(t.bytes, head.data(), kHeaderBytes);
  for (uint32_t at : {kHeaderModelBytesOffset, kHeaderFrameBytesOffset, kHeaderChecksumOffset})
    std::memset(t.bytes + at, 0, at == kHeaderModelBytesOffset ? 4 : 8);
  return t;
}

}  // namespace kvcodec::detail
