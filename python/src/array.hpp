// Borrowing arrays from Python objects: the buffer protocol (numpy, bytes, bytearray, memoryview)
// or DLPack (`__dlpack__`: torch, including bf16). An Array keeps its exporter alive and must be
// destroyed with the GIL held.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::python {

// A failed Status on its way to Python (translated into a kvcodec.Error subclass).
struct StatusError {
  Status status;
};
[[noreturn]] void raise(const Status& s);
[[noreturn]] void raise_invalid(const std::string& message);

// Element types an array can carry. The raw integer kinds hold bf16 / f16 / f8 bits for
// libraries without those dtypes (numpy); a dtype= argument names what the bits mean.
enum class Elem { kF32, kF16, kBF16, kF8E4M3, kU8, kI8, kU16, kI16, kI32, kI64, kOther };

struct Array {
  void* data = nullptr;
  Elem elem = Elem::kOther;
  size_t itemsize = 0;
  std::string type_name;         // e.g. "float32", "uint16", for messages
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  bool readonly = false;
  std::shared_ptr<void> hold;    // releases the Py_buffer or the DLPack tensor

  int64_t numel() const;
  bool c_contiguous() const;
  std::string shape_str() const;
};

// True when `obj` exports an array (buffer protocol or __dlpack__).
bool is_array(pybind11::handle obj);
// Borrows `obj`; `what` names the argument in error messages. CUDA tensors are kUnavailable
// (this build decodes on the CPU), read-only arrays are rejected when `writable`.
Array acquire(pybind11::handle obj, bool writable, const std::string& what);
// Requires a C-contiguous array.
void require_contiguous(const Array& a, const std::string& what);
// The codec dtype of `a`: its own float type, or for raw integer bits the one `hint` names.
DType resolve_dtype(const Array& a, std::optional<DType> hint, const std::string& what);
// The bytes of a contiguous array of 1-byte elements.
std::span<uint8_t> byte_span(const Array& a, const std::string& what);

}  // namespace kvcodec::python
