// Reading and writing KV caches as files: safetensors and NumPy .npy.
//
// Accepted conventions (docs/file-conventions.md):
//   * one tensor "kv" of shape [layers, 2, tokens, kv_heads, head_dim] (safetensors or .npy);
//   * per-layer tensors "layers.{i}.key" and "layers.{i}.value", each [tokens, kv_heads,
//     head_dim] or Hugging Face's [1, kv_heads, tokens, head_dim] (safetensors).
// Dtypes: F32, F16, BF16, F8_E4M3 (safetensors); <f4, <f2 (npy; bf16 has no npy dtype).
// Files are validated before anything is allocated from their header: sizes must match the
// file length, so a corrupt header never causes a huge allocation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

// A tensor held in host memory, row-major.
struct HostTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // product(shape) * dtype_size(dtype) bytes
};

StatusOr<std::vector<HostTensor>> read_safetensors(const std::string& path);
Status write_safetensors(const std::string& path, const std::vector<HostTensor>& tensors);
StatusOr<HostTensor> read_npy(const std::string& path);
Status write_npy(const std::string& path, const HostTensor& tensor);

// A whole KV cache in kvcodec's contiguous layout [layers, 2, tokens, kv_heads, head_dim].
struct KVCache {
  DType dtype = DType::kF16;
  KVShape shape;
  std::vector<uint8_t> data;

  KVView view() noexcept { return contiguous_view(data.data(), dtype, shape); }
  // Allocates zeroed storage for the shape (checks limits).
  static StatusOr<KVCache> allocate(DType dtype, const KVShape& shape);
};

// Loads any accepted convention from a .safetensors or .npy file (by extension) into the
// contiguous layout.
StatusOr<KVCache> load_kv(const std::string& path);
// Writes a single "kv" tensor [layers, 2, tokens, kv_heads, head_dim] (.safetensors or .npy
// by extension; bf16 and f8 only as safetensors).
Status save_kv(const std::string& path, const KVCache& kv);

// Whole-file helpers.
StatusOr<std::vector<uint8_t>> read_file(const std::string& path);
Status write_file(const std::string& path, const uint8_t* data, size_t size);

}  // namespace kvcodec
