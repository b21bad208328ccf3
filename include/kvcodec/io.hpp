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
#include <functional>
#include <memory>
#include <span>
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
struct Profile;  // kvcodec/profile.hpp
// parse_profile of the file's contents (read_file's errors otherwise); every error names the path.
StatusOr<Profile> load_profile(const std::string& path);
Status write_file(const std::string& path, const uint8_t* data, size_t size);

// ---- Files without extra copies or page faults (large caches) ------------------------------
// The buffers below are not zero-filled first and, from 2 MiB, ask the kernel for huge pages,
// so a 512 MiB file costs hundreds of page faults rather than a hundred thousand.

// A whole file read once into one buffer.
class FileBytes {
 public:
  static StatusOr<FileBytes> read(const std::string& path);
  std::span<const uint8_t> bytes() const noexcept { return {data_.get(), size_}; }

 private:
  std::shared_ptr<uint8_t> data_;
  size_t size_ = 0;
};

// A KV cache file (any accepted convention) read for encoding: its tensor bytes read once into
// one buffer and viewed where they lie -- per-layer files as a per-layer view, not gathered
// into the contiguous layout. view() is read-only use (encode_into); the object is move-only.
class KVFile {
 public:
  static StatusOr<KVFile> open(const std::string& path);
  KVFile() = default;
  KVFile(KVFile&&) = default;
  KVFile& operator=(KVFile&&) = default;
  KVFile(const KVFile&) = delete;
  KVFile& operator=(const KVFile&) = delete;

  const KVView& view() const noexcept { return view_; }
  DType dtype() const noexcept { return view_.dtype; }
  const KVShape& shape() const noexcept { return view_.shape; }
  uint64_t bytes() const noexcept { return shape().elements() * dtype_size(dtype()); }

 private:
  std::shared_ptr<void> hold_;       // the bytes the view points into
  std::vector<void*> keys_, values_;  // per-layer views: the layers' pointers
  KVView view_;
};

// Writes `path` atomically from a buffer of `capacity` bytes that fill() writes and whose first
// *fill() bytes become the file. Untouched capacity costs no memory. An error of fill() is
// returned as it is (nothing is written); I/O errors name the path.
Status write_file_with(const std::string& path, size_t capacity,
                       const std::function<StatusOr<size_t>(std::span<uint8_t>)>& fill);

// Writes the file save_kv would write for a cache of `dtype` and `shape`, a few layers at a time
// through one buffer of about buffer_bytes (at least one layer): fill(lb, le, view) must write
// layers [lb, le) of `view` (a view of the whole shape whose other layers are not backed by
// memory: never touch them). Layers are filled in order. An error of fill() is returned as it
// is (nothing is written).
Status save_kv_by_layers(const std::string& path, DType dtype, const KVShape& shape,
                         const std::function<Status(uint32_t, uint32_t, const KVView&)>& fill,
                         size_t buffer_bytes = size_t(32) << 20);

}  // namespace kvcodec
