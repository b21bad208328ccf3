#include "kvcodec/detail/encode_plan.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "detail/encode_model.hpp"
#include "detail/frame.hpp"
#include "detail/parallel.hpp"

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

Status build_encode_plan(const EncodeLayout& el, const EncodeOptions& o, const uint32_t* hist, const uint64_t* feature,
                         const ChannelGrid* grids, EncodePlan& plan) {
  const uint32_t units = el.units(), C = el.channels;
  std::vector<LayerModel> models(units);
  std::vector<Status> status(units);
  plan.codes.assign(size_t(units) * el.max_tables * el.bins, 0);
  plan.table_base.resize(size_t(units) * C);
  parallel_for(units, o.threads, [&](size_t u) {
    // Histograms is the CPU encoder's counting view; build_layer_model only reads through it.
    const Histograms hs{C, el.slots, el.bins, const_cast<uint32_t*>(hist + u * el.hist_per_unit())};
    LayerModel& m = models[u];
    std::vector<uint32_t> codes;
    status[u] = build_layer_model(hs, feature + u * C, el.lossless, o.table_groups, m, codes);
    if (!status[u].ok()) return;
    std::copy(codes.begin(), codes.end(), plan.codes.begin() + u * el.max_tables * el.bins);
    for (uint32_t c = 0; c < C; ++c) plan.table_base[u * C + c] = uint16_t(m.channel_group[c] * m.slots);
    if (!el.lossless) {
      m.step_code.resize(C);
      m.center.resize(C);
      for (uint32_t c = 0; c < C; ++c) {
        m.step_code[c] = grids[u * C + c].step_code;
        m.center[c] = grids[u * C + c].center;
      }
    }
  });
  for (uint32_t u = 0; u < units; ++u)
    if (!status[u].ok()) return status[u].with_context("layer " + std::to_string(u / 2) + (u % 2 ? " V" : " K"));

  const KVShape shape{el.layers, el.tokens, el.kv_heads, el.head_dim};
  FrameInfo& f = plan.info;
  f = frame_info_for(shape, DType(el.dtype), o);
  std::vector<uint8_t> model;
  for (const LayerModel& m : models) f.table_bytes += write_layer_model(f, m, model);
  f.chunks.assign(el.num_chunks, ChunkInfo{});
  for (uint32_t k = 0; k < el.num_chunks; ++k) f.chunks[k].tokens = el.chunk_token_count(k);
  write_head(f, model, plan.head);
  return Status::Ok();
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
