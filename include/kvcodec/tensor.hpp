// Element types and layout descriptors for the KV cache of one context.
//
// Logically a KV cache is, for each layer l and each of K (kv = 0) and V (kv = 1), a tensor
// [tokens, kv_heads, head_dim]. A KVView says where element (l, kv, t, h, d) lives in memory.
// Views never own memory; the caller keeps the storage alive while a call uses the view.
//
// Supported physical layouts (factories below):
//   contiguous_view  [layers, 2, tokens, kv_heads, head_dim]          (kvcodec's own)
//   lmcache_view     [2, layers, tokens, kv_heads * head_dim]         (LMCache KV_2LTD)
//   hf_view          per layer: key/value [1, kv_heads, tokens, head_dim] (Hugging Face)
//   vllm_paged_view  per layer (2, num_blocks, block_size, kv_heads, head_dim) + block table
//   paged_kv_split_view  per layer a K pool and a V pool (num_blocks, block_size, kv_heads, head_dim)
//                    (vLLM with separate K and V tensors; SGLang's token pools: block_size 1)
//   flashinfer_paged_view  per layer (num_blocks, 2, block_size, kv_heads, head_dim)
//   with_slot_mapping  any paged view indexed by a token -> slot mapping instead of a block table
//   mla_view / mla_paged_view  MLA latent caches (DeepSeek): one [tokens, latent_dim] plane per
//                    layer (mla_shape explains how it maps onto K and V)
//   strided_view     any 5-D strided layout (strides in elements, may be negative)
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvcodec/status.hpp"

namespace kvcodec {

// Element types. Values are pinned: they are stored in frames (docs/format.md).
enum class DType : uint8_t {
  kF32 = 1,
  kF16 = 2,
  kBF16 = 3,
  kF8E4M3 = 4,  // OCP FP8 E4M3 ("e4m3fn": no infinities, 0x7F/0xFF are NaN, max 448)
};

size_t dtype_size(DType t) noexcept;
const char* dtype_name(DType t) noexcept;  // "f32", "f16", "bf16", "f8e4m3"
// Accepts the names above and "float32", "float16", "bfloat16", "fp16", "bf16", "fp32",
// "float8_e4m3fn" and safetensors' "F32", "F16", "BF16", "F8_E4M3".
StatusOr<DType> parse_dtype(std::string_view name);
bool is_valid_dtype(uint8_t code) noexcept;

struct KVShape {
  uint32_t layers = 0;
  uint32_t tokens = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;

  uint64_t channels() const noexcept { return uint64_t(kv_heads) * head_dim; }
  // Elements of K and V over all layers: 2 * layers * tokens * kv_heads * head_dim.
  uint64_t elements() const noexcept { return 2ull * layers * tokens * channels(); }
  friend bool operator==(const KVShape&, const KVShape&) = default;
};

// Limits on shapes accepted anywhere in the library (frames, files, views). They bound memory
// use when parsing untrusted input.
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxKVHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 4096;
inline constexpr uint32_t kMaxChannels = 65536;        // kv_heads * head_dim
inline constexpr uint32_t kMaxTokens = 1u << 24;       // 16M tokens
inline constexpr uint64_t kMaxElements = 1ull << 40;   // 2 * L * T * C

// Checks a shape against the limits above (and that no dimension is zero).
Status validate_shape(const KVShape& s);

enum class PagedOrder : uint8_t {
  kNHD = 0,  // (2, num_blocks, block_size, kv_heads, head_dim), vLLM's default
  kHND = 1,  // (2, num_blocks, kv_heads, block_size, head_dim)
};

struct KVView {
  enum class Kind : uint8_t { kStrided = 0, kPaged = 1, kPerLayer = 2 };

  Kind kind = Kind::kStrided;
  DType dtype = DType::kF16;
  KVShape shape;

  // kStrided: element (l, kv, t, h, d) is at
  //   data + l*stride[0] + kv*stride[1] + t*stride[2] + h*stride[3] + d*stride[4]   (elements)
  void* data = nullptr;
  int64_t stride[5] = {0, 0, 0, 0, 0};

  // kPerLayer: K and V of layer l start at layer_k[l] and layer_v[l]; within them element
  // (t, h, d) is at t*stride[2] + h*stride[3] + d*stride[4].
  void* const* layer_k = nullptr;
  void* const* layer_v = nullptr;

  // kPaged: layer_k[l] is the base of layer l's (2, num_blocks, ...) tensor. Token t of the
  // context lives in block block_table[t / block_size], slot t % block_size. stride[1] is the
  // distance between the K and V halves, stride[2] between blocks, stride[3] between heads,
  // stride[4] between elements of head_dim and `slot_stride` between slots of one block.
  // With separate K and V pools, layer_v is non-null: V of layer l is at layer_v[l] (stride[1]
  // unused). With a slot mapping (non-null slot_mapping, null block_table), token t lives in
  // block slot_mapping[t] / block_size, slot slot_mapping[t] % block_size.
  const int32_t* block_table = nullptr;
  uint32_t num_blocks = 0;
  uint32_t block_size = 0;
  int64_t slot_stride = 0;
  const int64_t* slot_mapping = nullptr;

  // Address of element (l, kv, t, h, d). No bounds checks: call validate_view first.
  void* element(uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d) const noexcept;
  // True when the head_dim elements of one (l, kv, t, h) are contiguous (stride[4] == 1).
  bool rows_contiguous() const noexcept { return stride[4] == 1; }
};

// Checks dtype, shape, pointers, strides and (paged) the block table: every entry a block index
// in [0, num_blocks) for the tokens of the context (or every slot mapping entry a slot in
// [0, num_blocks * block_size)).
Status validate_view(const KVView& v);
// The checks of validate_view that do not read through the view's pointers (dtype, shape,
// non-null pointers and arrays, paged geometry): for views of device memory, whose per-layer
// pointers and block-table entries are checked on the device.
Status validate_view_geometry(const KVView& v);

// [layers, 2, tokens, kv_heads, head_dim], row-major.
KVView contiguous_view(void* data, DType dtype, const KVShape& shape) noexcept;
// LMCache KV_2LTD: [2, layers, tokens, kv_heads * head_dim], row-major.
KVView lmcache_view(void* data, DType dtype, const KVShape& shape) noexcept;
// One K and one V tensor per layer, each [tokens, kv_heads, head_dim] (hf_layout = false) or
// Hugging Face's [1, kv_heads, tokens, head_dim] (hf_layout = true). Arrays hold shape.layers
// pointers each and must outlive the view.
KVView per_layer_view(void* const* keys, void* const* values, DType dtype, const KVShape& shape,
                      bool hf_layout) noexcept;
// vLLM paged cache: layer_data[l] is the layer's (2, num_blocks, block_size, kv_heads, head_dim)
// tensor (or HND). block_table lists, in order, the blocks holding the context's tokens
// (ceil(tokens / block_size) entries). Arrays must outlive the view.
KVView vllm_paged_view(void* const* layer_data, DType dtype, const KVShape& shape,
                       const int32_t* block_table, uint32_t num_blocks, uint32_t block_size,
                       PagedOrder order = PagedOrder::kNHD) noexcept;
// Separate K and V pools (vLLM's split K/V caches, SGLang's token-indexed pools with
// block_size 1 or its page size): k_layers[l] and v_layers[l] are layer l's
// (num_blocks, block_size, kv_heads, head_dim) tensors (or HND: (num_blocks, kv_heads,
// block_size, head_dim)), indexed by the block table.
KVView paged_kv_split_view(void* const* k_layers, void* const* v_layers, DType dtype, const KVShape& shape,
                           const int32_t* block_table, uint32_t num_blocks, uint32_t block_size,
                           PagedOrder order = PagedOrder::kNHD) noexcept;
// FlashInfer's paged cache: layer_data[l] is (num_blocks, 2, block_size, kv_heads, head_dim)
// (or HND: (num_blocks, 2, kv_heads, block_size, head_dim)).
KVView flashinfer_paged_view(void* const* layer_data, DType dtype, const KVShape& shape,
                             const int32_t* block_table, uint32_t num_blocks, uint32_t block_size,
                             PagedOrder order = PagedOrder::kNHD) noexcept;
// The paged view `v` with token t at slot slot_mapping[t] (vLLM's slot_mapping, int64, one entry
// per token of the context) instead of a block table. The array must outlive the view.
KVView with_slot_mapping(KVView v, const int64_t* slot_mapping) noexcept;

// MLA latent caches (DeepSeek-V2/V3: kv_lora_rank 512 + rope 64 = 576 values per token and
// layer, no K/V split). A frame stores one as the shape {layers, tokens, 1, latent_dim / 2}: the
// first half of each latent row is coded as "K", the second half as "V", so MLA needs no format
// change, old readers decode it, and each half keeps its own statistics (docs/format.md).
// kInvalidArgument when latent_dim is odd or zero; the shape limits apply.
StatusOr<KVShape> mla_shape(uint32_t layers, uint32_t tokens, uint32_t latent_dim);
// [layers, tokens, latent_dim], row-major; `shape` from mla_shape.
KVView mla_view(void* data, DType dtype, const KVShape& shape) noexcept;
// vLLM's paged MLA cache: layer_data[l] is (num_blocks, block_size, latent_dim).
KVView mla_paged_view(void* const* layer_data, DType dtype, const KVShape& shape, const int32_t* block_table,
                      uint32_t num_blocks, uint32_t block_size) noexcept;

}  // namespace kvcodec
