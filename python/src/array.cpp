#include "array.hpp"

#include <cstring>
#include <span>

namespace py = pybind11;

namespace kvcodec::python {
namespace {

// The DLPack ABI (unversioned DLManagedTensor, exchanged in a "dltensor" capsule), as specified
// by the DLPack standard: only the fields this module reads.
struct DLDevice {
  int32_t device_type;  // 1 = CPU, 2 = CUDA, 3 = CUDA host (pinned), ...
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat, 10 float8_e4m3fn (DLPack 1.1)
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null = compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

constexpr int32_t kDLCPU = 1, kDLCUDAHost = 3;

struct ElemInfo {
  Elem elem;
  const char* name;
};

ElemInfo elem_from_dlpack(DLDataType t) {
  if (t.lanes != 1) return {Elem::kOther, "vector"};
  switch (t.code) {
    case 0:
      if (t.bits == 8) return {Elem::kI8, "int8"};
      if (t.bits == 16) return {Elem::kI16, "int16"};
      if (t.bits == 32) return {Elem::kI32, "int32"};
      if (t.bits == 64) return {Elem::kI64, "int64"};
      break;
    case 1:
      if (t.bits == 8) return {Elem::kU8, "uint8"};
      if (t.bits == 16) return {Elem::kU16, "uint16"};
      break;
    case 2:
      if (t.bits == 32) return {Elem::kF32, "float32"};
      if (t.bits == 16) return {Elem::kF16, "float16"};
      if (t.bits == 64) return {Elem::kOther, "float64"};
      break;
    case 4:
      if (t.bits == 16) return {Elem::kBF16, "bfloat16"};
      break;
    case 10:
      if (t.bits == 8) return {Elem::kF8E4M3, "float8_e4m3fn"};
      break;
  }
  return {Elem::kOther, "unsupported DLPack type"};
}

// Python buffer-protocol format characters (struct module syntax, native or little endian).
ElemInfo elem_from_format(const char* fmt, size_t itemsize) {
  std::string f = fmt ? fmt : "B";
  if (!f.empty() && (f[0] == '@' || f[0] == '=' || f[0] == '<')) f.erase(0, 1);
  if (f.size() != 1) return {Elem::kOther, "unsupported buffer format"};
  switch (f[0]) {
    case 'f': return {Elem::kF32, "float32"};
    case 'e': return {Elem::kF16, "float16"};
    case 'd': return {Elem::kOther, "float64"};
    case 'B': return {Elem::kU8, "uint8"};
    case 'b': return {Elem::kI8, "int8"};
    case 'c': return {Elem::kU8, "char"};
    case 'H': return {Elem::kU16, "uint16"};
    case 'h': return {Elem::kI16, "int16"};
    case 'i': case 'l': case 'q':
      if (itemsize == 4) return {Elem::kI32, "int32"};
      if (itemsize == 8) return {Elem::kI64, "int64"};
      break;
    case '?': return {Elem::kOther, "bool"};
  }
  return {Elem::kOther, "unsupported buffer format"};
}

Array from_buffer(py::handle obj, const std::string& what) {
  auto* view = new Py_buffer();
  if (PyObject_GetBuffer(obj.ptr(), view, PyBUF_RECORDS_RO) != 0) {
    delete view;
    PyErr_Clear();
    raise_invalid(what + ": cannot read the object's buffer (expected a strided array)");
  }
  Array a;
  a.hold = std::shared_ptr<void>(view, [](void* p) {
    PyBuffer_Release(static_cast<Py_buffer*>(p));
    delete static_cast<Py_buffer*>(p);
  });
  a.data = view->buf;
  a.readonly = view->readonly != 0;
  a.itemsize = size_t(view->itemsize);
  ElemInfo e = elem_from_format(view->format, a.itemsize);
  a.elem = e.elem;
  a.type_name = e.name;
  for (int i = 0; i < view->ndim; ++i) {
    a.shape.push_back(view->shape[i]);
    const int64_t s = view->strides ? view->strides[i] : 0;
    if (view->itemsize == 0 || s % view->itemsize != 0)
      raise_invalid(what + ": strides are not a multiple of the element size");
    a.strides.push_back(s / view->itemsize);
  }
  if (view->ndim == 0) {  // a scalar or an unshaped byte buffer
    a.shape.push_back(view->len / (view->itemsize ? view->itemsize : 1));
    a.strides.push_back(1);
  }
  return a;
}

Array from_dlpack(py::handle obj, const std::string& what) {
  py::object src = py::reinterpret_borrow<py::object>(obj);
  // torch refuses to export tensors that require grad; the codec never needs the graph.
  if (py::hasattr(src, "requires_grad") && src.attr("requires_grad").cast<bool>()) src = src.attr("detach")();
  // torch's float8 types are not exported by every DLPack version: reinterpret them as bytes.
  if (py::hasattr(src, "dtype") && py::str(src.attr("dtype")).cast<std::string>() == "torch.float8_e4m3fn") {
    Array a = from_dlpack(src.attr("view")(py::module_::import("torch").attr("uint8")), what);
    a.elem = Elem::kF8E4M3;
    a.type_name = "float8_e4m3fn";
    return a;
  }
  py::object capsule = src.attr("__dlpack__")();
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (!managed) {
    PyErr_Clear();
    raise_invalid(what + ": __dlpack__ did not return a DLPack tensor capsule");
  }
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");  // consumed: we call the deleter
  Array a;
  a.hold = std::shared_ptr<void>(managed, [](void* p) {
    auto* m = static_cast<DLManagedTensor*>(p);
    if (m->deleter) m->deleter(m);
  });
  const DLTensor& t = managed->dl_tensor;
  if (t.device.device_type != kDLCPU && t.device.device_type != kDLCUDAHost)
    raise(Unavailable(what + ": a device tensor (DLPack device type " + std::to_string(t.device.device_type) +
                      "); this Python module works on host memory: copy it with .cpu()"));
  ElemInfo e = elem_from_dlpack(t.dtype);
  a.elem = e.elem;
  a.type_name = e.name;
  a.itemsize = (size_t(t.dtype.bits) + 7) / 8;
  a.data = static_cast<char*>(t.data) + t.byte_offset;
  int64_t compact = 1;
  a.shape.assign(t.shape, t.shape + t.ndim);
  a.strides.assign(size_t(t.ndim), 0);
  for (int i = t.ndim - 1; i >= 0; --i) {
    a.strides[size_t(i)] = t.strides ? t.strides[i] : compact;
    compact *= t.shape[i];
  }
  return a;
}

}  // namespace

void raise(const Status& s) { throw StatusError{s}; }
void raise_invalid(const std::string& message) { raise(InvalidArgument(message)); }

int64_t Array::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool Array::c_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

std::string Array::shape_str() const {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

bool is_array(py::handle obj) { return PyObject_CheckBuffer(obj.ptr()) || py::hasattr(obj, "__dlpack__"); }

Array acquire(py::handle obj, bool writable, const std::string& what) {
  Array a;
  if (PyObject_CheckBuffer(obj.ptr()))
    a = from_buffer(obj, what);
  else if (py::hasattr(obj, "__dlpack__"))
    a = from_dlpack(obj, what);
  else
    raise_invalid(what + ": expected an array (buffer protocol or __dlpack__), got " +
                  std::string(py::str(py::type::of(obj).attr("__name__"))));
  if (writable && a.readonly) raise_invalid(what + ": the array is read-only; expected a writable array");
  for (int64_t d : a.shape)
    if (d < 0) raise_invalid(what + ": negative dimension");
  return a;
}

void require_contiguous(const Array& a, const std::string& what) {
  if (!a.c_contiguous())
    raise_invalid(what + ": expected a C-contiguous (row-major) array; got strides that are not "
                  "(call .contiguous() / np.ascontiguousarray)");
}

DType resolve_dtype(const Array& a, std::optional<DType> hint, const std::string& what) {
  std::optional<DType> own;
  switch (a.elem) {
    case Elem::kF32: own = DType::kF32; break;
    case Elem::kF16: own = DType::kF16; break;
    case Elem::kBF16: own = DType::kBF16; break;
    case Elem::kF8E4M3: own = DType::kF8E4M3; break;
    case Elem::kU16: case Elem::kI16:
      if (hint && dtype_size(*hint) == 2) return *hint;
      raise_invalid(what + ": a " + a.type_name + " array holds raw bits: pass dtype='bf16' or 'f16'");
    case Elem::kU8: case Elem::kI8:
      if (hint && *hint == DType::kF8E4M3) return *hint;
      raise_invalid(what + ": a " + a.type_name + " array holds raw bits: pass dtype='f8e4m3'");
    default:
      raise_invalid(what + ": unsupported element type " + a.type_name +
                    " (expected float32, float16, bfloat16, float8_e4m3fn, or uint16/uint8 raw bits with dtype=)");
  }
  if (hint && *hint != *own)
    raise_invalid(what + ": the array is " + a.type_name + " but dtype='" + dtype_name(*hint) + "' was given");
  return *own;
}

std::span<uint8_t> byte_span(const Array& a, const std::string& what) {
  if (a.itemsize != 1) raise_invalid(what + ": expected bytes (1-byte elements), got " + a.type_name);
  require_contiguous(a, what);
  return {static_cast<uint8_t*>(a.data), size_t(a.numel())};
}

}  // namespace kvcodec::python
