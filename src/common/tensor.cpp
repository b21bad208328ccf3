#include "kvcodec/tensor.hpp"

#include <string>

namespace kvcodec {

size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16:
    case DType::kBF16: return 2;
    case DType::kF8E4M3: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) noexcept {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kF8E4M3: return "f8e4m3";
  }
  return "unknown";
}

bool is_valid_dtype(uint8_t code) noexcept { return code >= 1 && code <= 4; }

StatusOr<DType> parse_dtype(std::string_view n) {
  if (n == "f32" || n == "fp32" || n == "float32" || n == "F32") return DType::kF32;
  if (n == "f16" || n == "fp16" || n == "float16" || n == "F16" || n == "half") return DType::kF16;
  if (n == "bf16" || n == "bfloat16" || n == "BF16") return DType::kBF16;
  if (n == "f8e4m3" || n == "fp8" || n == "float8_e4m3fn" || n == "F8_E4M3") return DType::kF8E4M3;
  return InvalidArgument("unknown dtype '" + std::string(n) + "' (f32, f16, bf16, f8e4m3)");
}

Status validate_shape(const KVShape& s) {
  auto str = [&] {
    return std::to_string(s.layers) + "x2x" + std::to_string(s.tokens) + "x" + std::to_string(s.kv_heads) +
           "x" + std::to_string(s.head_dim);
  };
  if (!s.layers || !s.tokens || !s.kv_heads || !s.head_dim)
    return InvalidArgument("empty KV shape " + str());
  if (s.layers > kMaxLayers || s.kv_heads > kMaxKVHeads || s.head_dim > kMaxHeadDim ||
      s.channels() > kMaxChannels || s.tokens > kMaxTokens || s.elements() > kMaxElements)
    return ResourceExhausted("KV shape " + str() + " exceeds the library's limits");
  return Status::Ok();
}

void* KVView::element(uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d) const noexcept {
  const size_t es = dtype_size(dtype);
  int64_t off;
  char* base;
  switch (kind) {
    case Kind::kStrided:
      base = static_cast<char*>(data);
      off = int64_t(l) * stride[0] + int64_t(kv) * stride[1] + int64_t(t) * stride[2] +
            int64_t(h) * stride[3] + int64_t(d) * stride[4];
      break;
    case Kind::kPerLayer:
      base = static_cast<char*>(kv ? layer_v[l] : layer_k[l]);
      off = int64_t(t) * stride[2] + int64_t(h) * stride[3] + int64_t(d) * stride[4];
      break;
    default: {  // kPaged
      const bool split = layer_v != nullptr;
      base = static_cast<char*>(split && kv ? layer_v[l] : layer_k[l]);
      int64_t block, slot;
      if (slot_mapping) {
        block = slot_mapping[t] / block_size;
        slot = slot_mapping[t] % block_size;
      } else {
        block = block_table[t / block_size];
        slot = t % block_size;
      }
      off = (split ? 0 : int64_t(kv) * stride[1]) + block * stride[2] + slot * slot_stride +
            int64_t(h) * stride[3] + int64_t(d) * stride[4];
      break;
    }
  }
  return base + off * int64_t(es);
}

Status validate_view_geometry(const KVView& v) {
  if (!is_valid_dtype(uint8_t(v.dtype))) return InvalidArgument("view has an unknown dtype");
  KVCODEC_RETURN_IF_ERROR(validate_shape(v.shape));
  switch (v.kind) {
    case KVView::Kind::kStrided:
      if (!v.data) return InvalidArgument("strided view has a null data pointer");
      return Status::Ok();
    case KVView::Kind::kPerLayer:
      if (!v.layer_k || !v.layer_v) return InvalidArgument("per-layer view has null pointer arrays");
      return Status::Ok();
    case KVView::Kind::kPaged: {
      if (!v.layer_k) return InvalidArgument("paged view has a null layer array");
      if (!v.block_table == !v.slot_mapping)
        return InvalidArgument("paged view: set exactly one of block_table and slot_mapping");
      if (!v.block_size || !v.num_blocks) return InvalidArgument("paged view: zero block_size or num_blocks");
      if (v.slot_mapping) return Status::Ok();
      const uint64_t used = (uint64_t(v.shape.tokens) + v.block_size - 1) / v.block_size;
      if (used > v.num_blocks)
        return InvalidArgument("paged view: " + std::to_string(v.shape.tokens) + " tokens need " +
                               std::to_string(used) + " blocks, cache has " + std::to_string(v.num_blocks));
      return Status::Ok();
    }
  }
  return InvalidArgument("view has an unknown kind");
}

Status validate_view(const KVView& v) {
  KVCODEC_RETURN_IF_ERROR(validate_view_geometry(v));
  if (v.kind == KVView::Kind::kPerLayer) {
    for (uint32_t l = 0; l < v.shape.layers; ++l)
      if (!v.layer_k[l] || !v.layer_v[l])
        return InvalidArgument("per-layer view: layer " + std::to_string(l) + " has a null tensor");
  } else if (v.kind == KVView::Kind::kPaged) {
    for (uint32_t l = 0; l < v.shape.layers; ++l)
      if (!v.layer_k[l] || (v.layer_v && !v.layer_v[l]))
        return InvalidArgument("paged view: layer " + std::to_string(l) + " is null");
    if (v.slot_mapping) {
      const int64_t slots = int64_t(v.num_blocks) * v.block_size;
      for (uint32_t t = 0; t < v.shape.tokens; ++t)
        if (v.slot_mapping[t] < 0 || v.slot_mapping[t] >= slots)
          return InvalidArgument("paged view: slot mapping entry " + std::to_string(t) + " = " +
                                 std::to_string(v.slot_mapping[t]) + " outside [0, " + std::to_string(slots) + ")");
      return Status::Ok();
    }
    const uint64_t used = (uint64_t(v.shape.tokens) + v.block_size - 1) / v.block_size;
    for (uint64_t i = 0; i < used; ++i) {
      const int32_t b = v.block_table[i];
      if (b < 0 || uint32_t(b) >= v.num_blocks)
        return InvalidArgument("paged view: block table entry " + std::to_string(i) + " = " + std::to_string(b) +
                               " outside [0, " + std::to_string(v.num_blocks) + ")");
    }
  }
  return Status::Ok();
}

KVView contiguous_view(void* data, DType dtype, const KVShape& s) noexcept {
  KVView v;
  v.kind = KVView::Kind::kStrided;
  v.dtype = dtype;
  v.shape = s;
  v.data = data;
  const int64_t D = s.head_dim, H = s.kv_heads, T = s.tokens;
  v.stride[4] = 1;
  v.stride[3] = D;
  v.stride[2] = H * D;
  v.stride[1] = T * H * D;
  v.stride[0] = 2 * T * H * D;
  return v;
}

KVView lmcache_view(void* data, DType dtype, const KVShape& s) noexcept {
  KVView v = contiguous_view(data, dtype, s);
  const int64_t C = int64_t(s.kv_heads) * s.head_dim, T = s.tokens, L = s.layers;
  v.stride[0] = T * C;      // layer
  v.stride[1] = L * T * C;  // K/V
  return v;
}

KVView per_layer_view(void* const* keys, void* const* values, DType dtype, const KVShape& s,
                      bool hf_layout) noexcept {
  KVView v;
  v.kind = KVView::Kind::kPerLayer;
  v.dtype = dtype;
  v.shape = s;
  v.layer_k = keys;
  v.layer_v = values;
  const int64_t D = s.head_dim, H = s.kv_heads, T = s.tokens;
  v.stride[4] = 1;
  if (hf_layout) {  // [1, H, T, D]
    v.stride[3] = T * D;
    v.stride[2] = D;
  } else {  // [T, H, D]
    v.stride[3] = D;
    v.stride[2] = H * D;
  }
  return v;
}

KVView vllm_paged_view(void* const* layer_data, DType dtype, const KVShape& s, const int32_t* block_table,
                       uint32_t num_blocks, uint32_t block_size, PagedOrder order) noexcept {
  KVView v;
  v.kind = KVView::Kind::kPaged;
  v.dtype = dtype;
  v.shape = s;
  v.layer_k = layer_data;
  v.block_table = block_table;
  v.num_blocks = num_blocks;
  v.block_size = block_size;
  const int64_t D = s.head_dim, H = s.kv_heads, B = block_size;
  v.stride[4] = 1;
  v.stride[2] = B * H * D;                     // block
  v.stride[1] = int64_t(num_blocks) * B * H * D;  // K -> V
  if (order == PagedOrder::kNHD) {
    v.slot_stride = H * D;
    v.stride[3] = D;
  } else {
    v.slot_stride = D;
    v.stride[3] = B * D;
  }
  return v;
}

KVView paged_kv_split_view(void* const* k_layers, void* const* v_layers, DType dtype, const KVShape& s,
                           const int32_t* block_table, uint32_t num_blocks, uint32_t block_size,
                           PagedOrder order) noexcept {
  KVView v = vllm_paged_view(k_layers, dtype, s, block_table, num_blocks, block_size, order);
  v.layer_v = v_layers;
  v.stride[1] = 0;  // unused: V has its own pool
  return v;
}

KVView flashinfer_paged_view(void* const* layer_data, DType dtype, const KVShape& s, const int32_t* block_table,
                             uint32_t num_blocks, uint32_t block_size, PagedOrder order) noexcept {
  KVView v = vllm_paged_view(layer_data, dtype, s, block_table, num_blocks, block_size, order);
  const int64_t page = int64_t(block_size) * s.kv_heads * s.head_dim;  // one K or V page
  v.stride[1] = page;
  v.stride[2] = 2 * page;
  return v;
}

KVView with_slot_mapping(KVView v, const int64_t* slot_mapping) noexcept {
  v.slot_mapping = slot_mapping;
  v.block_table = nullptr;
  return v;
}

StatusOr<KVShape> mla_shape(uint32_t layers, uint32_t tokens, uint32_t latent_dim) {
  if (latent_dim == 0 || latent_dim % 2)
    return InvalidArgument("MLA latent_dim " + std::to_string(latent_dim) + " must be even and non-zero");
  const KVShape s{layers, tokens, 1, latent_dim / 2};
  KVCODEC_RETURN_IF_ERROR(validate_shape(s));
  return s;
}

KVView mla_view(void* data, DType dtype, const KVShape& s) noexcept {
  KVView v = contiguous_view(data, dtype, s);
  const int64_t half = s.head_dim, T = s.tokens;
  v.stride[1] = half;          // "K" = first half of the latent row, "V" = second half
  v.stride[2] = 2 * half;      // token
  v.stride[0] = T * 2 * half;  // layer
  return v;
}

KVView mla_paged_view(void* const* layer_data, DType dtype, const KVShape& s, const int32_t* block_table,
                      uint32_t num_blocks, uint32_t block_size) noexcept {
  KVView v = vllm_paged_view(layer_data, dtype, s, block_table, num_blocks, block_size, PagedOrder::kNHD);
  const int64_t half = s.head_dim;
  v.stride[1] = half;
  v.slot_stride = 2 * half;
  v.stride[2] = int64_t(block_size) * 2 * half;
  return v;
}

}  // namespace kvcodec
