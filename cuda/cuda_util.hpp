// Small RAII and error helpers for the CUDA backend's host code. Internal to cuda/.
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <utility>

#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::cuda {

// A CUDA runtime error as a Status (kInternal: the library or the device failed, not the input).
inline Status check_cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Internal(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// Device memory owned by the holder (setup paths, tools and benchmarks only).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static StatusOr<DeviceBuffer> allocate(size_t bytes) {
    DeviceBuffer b;
    if (cudaMalloc(&b.p_, bytes ? bytes : 1) != cudaSuccess) {
      (void)cudaGetLastError();
      return ResourceExhausted("cudaMalloc of " + std::to_string(bytes) + " bytes failed");
    }
    b.bytes_ = bytes;
    return StatusOr<DeviceBuffer>(std::move(b));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  uint8_t* get() const { return static_cast<uint8_t*>(p_); }
  size_t size() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (asynchronous copies); same ownership rules.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static StatusOr<PinnedBuffer> allocate(size_t bytes) {
    PinnedBuffer b;
    if (cudaMallocHost(&b.p_, bytes ? bytes : 1) != cudaSuccess) {
      (void)cudaGetLastError();
      return ResourceExhausted("cudaMallocHost of " + std::to_string(bytes) + " bytes failed");
    }
    b.bytes_ = bytes;
    return StatusOr<PinnedBuffer>(std::move(b));
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~PinnedBuffer() {
    if (p_) cudaFreeHost(p_);
  }
  uint8_t* get() const { return static_cast<uint8_t*>(p_); }
  size_t size() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// One pinned uint32 for reading a device flag back.
class PinnedWord {
 public:
  static StatusOr<PinnedWord> allocate() {
    KVCODEC_ASSIGN_OR_RETURN(PinnedBuffer b, PinnedBuffer::allocate(sizeof(uint32_t)));
    PinnedWord w;
    w.buf_ = std::move(b);
    *w.get() = 0;
    return StatusOr<PinnedWord>(std::move(w));
  }
  uint32_t* get() const { return reinterpret_cast<uint32_t*>(buf_.get()); }

 private:
  PinnedBuffer buf_;
};

// Checks what can be checked on the host of a view whose pointers are device pointers (the
// decoder's destination, the encoder's source): dtype, shape, non-null pointers, paged geometry.
inline Status check_device_view(DType dtype, const KVShape& shape, const KVView& v) {
  if (v.dtype != dtype)
    return InvalidArgument(std::string("view dtype ") + dtype_name(v.dtype) + " differs from the expected " +
                           dtype_name(dtype));
  if (!(v.shape == shape)) return InvalidArgument("view shape differs from the expected one");
  return validate_view_geometry(v);
}

}  // namespace kvcodec::cuda
