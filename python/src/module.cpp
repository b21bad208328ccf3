// kvcodec._kvcodec: the Python binding of the public C++ API (codec.hpp, format.hpp).
// Every call that touches tensor data releases the GIL. Errors leave as StatusError and are
// raised in Python as the kvcodec.Error subclass of their StatusCode (kvcodec/_errors.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cinttypes>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "array.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/config.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/version.hpp"
#include "layout.hpp"
#include "stream.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace kvcodec::python {

std::optional<DType> parse_dtype_arg(const std::optional<std::string>& name) {
  if (!name) return std::nullopt;
  StatusOr<DType> d = parse_dtype(*name);
  if (!d.ok()) raise(d.status());
  return *d;
}

LayoutArgs layout_args(const std::string& layout, const std::optional<std::string>& dtype,
                       std::optional<uint32_t> kv_heads, py::object block_table, std::optional<uint32_t> tokens,
                       py::object slot_mapping) {
  return LayoutArgs{layout, parse_dtype_arg(dtype), kv_heads, std::move(block_table), tokens, std::move(slot_mapping)};
}

namespace {

StepMode parse_step_mode(const std::string& m) {
  if (m == "layer") return StepMode::kLayer;
  if (m == "channel") return StepMode::kChannel;
  raise_invalid("unknown step_mode '" + m + "' (layer, channel)");
}

EncodeOptions encode_options(int level, uint32_t chunk_tokens, int threads, uint32_t group_tokens,
                             uint32_t table_groups, const std::string& step_mode) {
  EncodeOptions o;
  o.level = level;
  o.chunk_tokens = chunk_tokens;
  o.threads = threads;
  o.group_tokens = group_tokens;
  o.table_groups = table_groups;
  o.step_mode = parse_step_mode(step_mode);
  const Status s = validate_options(o);
  if (!s.ok()) raise(s);
  return o;
}

using ProfilePtr = std::shared_ptr<Profile>;

size_t bound_for(const KVView& v, const EncodeOptions& o, const Profile* p) {
  const size_t n = p ? max_encoded_size(v.shape, v.dtype, o, *p) : max_encoded_size(v.shape, v.dtype, o);
  if (n == 0) raise_invalid("max_encoded_size: invalid shape or options");
  return n;
}

py::bytes encode(py::handle kv, int level, const std::string& layout, uint32_t chunk_tokens, int threads,
                 const std::optional<std::string>& dtype, std::optional<uint32_t> kv_heads, py::object block_table,
                 py::object slot_mapping, std::optional<uint32_t> tokens, uint32_t group_tokens, uint32_t table_groups,
                 const std::string& step_mode, ProfilePtr profile, uint32_t first_position) {
  const EncodeOptions o = encode_options(level, chunk_tokens, threads, group_tokens, table_groups, step_mode);
  auto bound = bind_view(
      kv, layout_args(layout, dtype, kv_heads, std::move(block_table), tokens, std::move(slot_mapping)), false, {}, {});
  const size_t cap = bound_for(bound->view, o, profile.get());
  PyObject* out = PyBytes_FromStringAndSize(nullptr, Py_ssize_t(cap));
  if (!out) throw py::error_already_set();
  StatusOr<size_t> n = Status();
  {
    py::gil_scoped_release release;
    const std::span<uint8_t> dst{reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out)), cap};
    n = profile ? encode_into(bound->view, o, *profile, dst, first_position) : encode_into(bound->view, o, dst);
  }
  if (!n.ok()) {
    Py_DECREF(out);
    raise(n.status());
  }
  if (_PyBytes_Resize(&out, Py_ssize_t(*n)) != 0) throw py::error_already_set();
  return py::reinterpret_steal<py::bytes>(out);
}

size_t encode_into_py(py::handle kv, py::handle out, int level, const std::string& layout, uint32_t chunk_tokens,
                      int threads, const std::optional<std::string>& dtype, std::optional<uint32_t> kv_heads,
                      py::object block_table, py::object slot_mapping, std::optional<uint32_t> tokens,
                      uint32_t group_tokens, uint32_t table_groups, const std::string& step_mode, ProfilePtr profile,
                      uint32_t first_position) {
  const EncodeOptions o = encode_options(level, chunk_tokens, threads, group_tokens, table_groups, step_mode);
  auto bound = bind_view(
      kv, layout_args(layout, dtype, kv_heads, std::move(block_table), tokens, std::move(slot_mapping)), false, {}, {});
  const Array dst = acquire(out, true, "out");
  const std::span<uint8_t> bytes = byte_span(dst, "out");
  StatusOr<size_t> n = Status();
  {
    py::gil_scoped_release release;
    n = profile ? encode_into(bound->view, o, *profile, bytes, first_position) : encode_into(bound->view, o, bytes);
  }
  if (!n.ok()) raise(n.status());
  return *n;
}

FrameInfo frame_info_of(std::span<const uint8_t> frame) {
  StatusOr<FrameInfo> info = read_frame_info(frame);
  if (!info.ok()) raise(info.status());
  return std::move(*info);
}

void decode_into_py(py::handle frame_obj, py::handle dst, const std::string& layout,
                    const std::optional<std::string>& dtype, py::object block_table, py::object slot_mapping,
                    int threads, bool verify, uint32_t chunk_begin, uint32_t chunk_end, uint32_t layer_begin,
                    uint32_t layer_end, ProfilePtr profile) {
  const Array src = acquire(frame_obj, false, "frame");
  const std::span<const uint8_t> frame = byte_span(src, "frame");
  const FrameInfo info = frame_info_of(frame);
  auto bound = bind_view(
      dst, layout_args(layout, dtype, std::nullopt, std::move(block_table), std::nullopt, std::move(slot_mapping)),
      true, info.shape, info.dtype);
  DecodeOptions o;
  o.threads = threads;
  o.verify_checksums = verify;
  o.chunk_begin = chunk_begin;
  o.chunk_end = chunk_end;
  o.layer_begin = layer_begin;
  o.layer_end = layer_end;
  Status s;
  {
    py::gil_scoped_release release;
    s = profile ? decode_into(frame, *profile, bound->view, o) : decode_into(frame, bound->view, o);
  }
  if (!s.ok()) raise(s);
}

std::string hex64(uint64_t v) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016" PRIx64, v);
  return hex;
}

ProfilePtr profile_from_bytes(py::handle b) {
  const Array src = acquire(b, false, "bytes");
  StatusOr<Profile> p = parse_profile(byte_span(src, "bytes"));
  if (!p.ok()) raise(p.status());
  return std::make_shared<Profile>(std::move(*p));
}

ProfilePtr profile_load(const std::string& path) {
  StatusOr<Profile> p = load_profile(path);
  if (!p.ok()) raise(p.status());
  return std::make_shared<Profile>(std::move(*p));
}

py::dict frame_info_py(py::handle frame_obj, bool verify) {
  const Array src = acquire(frame_obj, false, "frame");
  const std::span<const uint8_t> frame = byte_span(src, "frame");
  const FrameInfo f = frame_info_of(frame);
  py::object checksum_ok = py::none();
  if (verify && frame.size() >= f.frame_bytes) {
    Status v;
    {
      py::gil_scoped_release release;
      v = verify_frame(frame);
    }
    checksum_ok = py::bool_(v.ok());
  }
  py::list chunks;
  for (size_t i = 0; i < f.chunks.size(); ++i) {
    const ChunkInfo& c = f.chunks[i];
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016" PRIx64, c.checksum);
    chunks.append(py::dict("index"_a = i, "token_begin"_a = c.token_begin, "tokens"_a = c.tokens, "offset"_a = c.offset,
                           "bytes"_a = c.size, "checksum"_a = std::string(hex)));
  }
  py::dict d("format_version"_a = f.format_version, "dtype"_a = dtype_name(f.dtype), "layers"_a = f.shape.layers,
                  "kv_heads"_a = f.shape.kv_heads, "head_dim"_a = f.shape.head_dim, "tokens"_a = f.shape.tokens,
                  "chunks"_a = f.chunks.size(), "level"_a = f.level, "chunk_tokens"_a = f.chunk_tokens,
                  "group_tokens"_a = f.group_tokens, "table_groups"_a = f.table_groups,
                  "step_mode"_a = f.step_mode == StepMode::kLayer ? "layer" : "channel",
                  "bits_per_element"_a = f.bits_per_element(),
                  "uncompressed_bytes"_a = f.shape.elements() * dtype_size(f.dtype), "table_bytes"_a = f.table_bytes,
                  "model_bytes"_a = f.model_bytes, "head_bytes"_a = f.head_bytes, "payload_bytes"_a = f.payload_bytes(),
                  "frame_bytes"_a = f.frame_bytes, "file_bytes"_a = frame.size(), "checksum_ok"_a = checksum_ok,
                  "chunk_list"_a = chunks);
  if (f.transformed) {  // the keys `kvcodec inspect --json` adds for a transform-coded frame
    d["profile_digest"] = hex64(f.profile_digest);
    d["first_position"] = f.first_position;
    d["profile_model_refs"] = f.profile_model_refs;
  }
  return d;
}

size_t max_encoded_size_py(uint32_t layers, uint32_t tokens, uint32_t kv_heads, uint32_t head_dim,
                           const std::string& dtype, int level, uint32_t chunk_tokens, uint32_t group_tokens,
                           uint32_t table_groups, const std::string& step_mode) {
  const EncodeOptions o = encode_options(level, chunk_tokens, 1, group_tokens, table_groups, step_mode);
  const KVShape s{layers, tokens, kv_heads, head_dim};
  const Status v = validate_shape(s);
  if (!v.ok()) raise(v);
  return max_encoded_size(s, *parse_dtype_arg(dtype), o);
}

void translate(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const StatusError& e) {
    const int code = int(e.status.code());
    py::object cls;
    try {
      cls = py::module_::import("kvcodec._errors").attr("error_class")(code);
    } catch (py::error_already_set&) {
      PyErr_SetString(PyExc_RuntimeError, e.status.to_string().c_str());
      return;
    }
    PyErr_SetObject(cls.ptr(), py::make_tuple(code, e.status.message()).ptr());
  }
}

}  // namespace
}  // namespace kvcodec::python

PYBIND11_MODULE(_kvcodec, m) {
  using namespace kvcodec::python;
  m.doc() = "Binding of the kvcodec C++ library; use the kvcodec package, not this module.";
  py::register_exception_translator(&translate);
  m.attr("__version__") = kvcodec::kLibraryVersion;
  m.attr("FORMAT_VERSION") = kvcodec::kFormatVersion;
  m.attr("MAX_LEVEL") = kvcodec::kMaxLevel;
  m.attr("DEFAULT_LEVEL") = kvcodec::kDefaultLevel;

  m.def("encode", &encode, py::arg("kv"), py::kw_only(), py::arg("level") = kvcodec::kDefaultLevel,
        py::arg("layout") = "contiguous", py::arg("chunk_tokens") = 256u, py::arg("threads") = 0,
        py::arg("dtype") = py::none(), py::arg("kv_heads") = py::none(), py::arg("block_table") = py::none(),
        py::arg("slot_mapping") = py::none(), py::arg("tokens") = py::none(), py::arg("group_tokens") = 1u,
        py::arg("table_groups") = 8u, py::arg("step_mode") = "layer", py::arg("profile") = nullptr,
        py::arg("first_position") = 0u);
  m.def("encode_into", &encode_into_py, py::arg("kv"), py::arg("out"), py::kw_only(),
        py::arg("level") = kvcodec::kDefaultLevel, py::arg("layout") = "contiguous", py::arg("chunk_tokens") = 256u,
        py::arg("threads") = 0, py::arg("dtype") = py::none(), py::arg("kv_heads") = py::none(),
        py::arg("block_table") = py::none(), py::arg("slot_mapping") = py::none(), py::arg("tokens") = py::none(),
        py::arg("group_tokens") = 1u, py::arg("table_groups") = 8u, py::arg("step_mode") = "layer",
        py::arg("profile") = nullptr, py::arg("first_position") = 0u);
  m.def("decode_into", &decode_into_py, py::arg("frame"), py::arg("dst"), py::kw_only(),
        py::arg("layout") = "contiguous", py::arg("dtype") = py::none(), py::arg("block_table") = py::none(),
        py::arg("slot_mapping") = py::none(), py::arg("threads") = 0, py::arg("verify") = true,
        py::arg("chunk_begin") = 0u, py::arg("chunk_end") = UINT32_MAX, py::arg("layer_begin") = 0u,
        py::arg("layer_end") = UINT32_MAX, py::arg("profile") = nullptr);
  py::class_<kvcodec::Profile, ProfilePtr>(m, "Profile")
      .def_static("load", &profile_load, py::arg("path"))
      .def_static("from_bytes", &profile_from_bytes, py::arg("data"))
      .def("to_bytes",
           [](const kvcodec::Profile& p) {
             const std::vector<uint8_t> b = serialize_profile(p);
             return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
           })
      .def_property_readonly("digest", [](const kvcodec::Profile& p) { return hex64(p.digest); })
      .def_property_readonly("size", [](const kvcodec::Profile& p) { return serialized_profile_size(p); })
      .def_property_readonly("layers", [](const kvcodec::Profile& p) { return p.layers; })
      .def_property_readonly("kv_heads", [](const kvcodec::Profile& p) { return p.kv_heads; })
      .def_property_readonly("head_dim", [](const kvcodec::Profile& p) { return p.head_dim; })
      .def_property_readonly("keys_before_rope", [](const kvcodec::Profile& p) { return p.keys_before_rope; })
      .def("__repr__", [](const kvcodec::Profile& p) {
        return "<kvcodec.Profile " + hex64(p.digest) + ": " + std::to_string(p.layers) + " layers, " +
               std::to_string(p.kv_heads) + " kv heads, head_dim " + std::to_string(p.head_dim) + ">";
      });
  m.def("frame_info", &frame_info_py, py::arg("frame"), py::kw_only(), py::arg("verify") = true);
  m.def("max_encoded_size", &max_encoded_size_py, py::arg("layers"), py::arg("tokens"), py::arg("kv_heads"),
        py::arg("head_dim"), py::arg("dtype"), py::kw_only(), py::arg("level") = kvcodec::kDefaultLevel,
        py::arg("chunk_tokens") = 256u, py::arg("group_tokens") = 1u, py::arg("table_groups") = 8u,
        py::arg("step_mode") = "layer");
  m.attr("HAS_STREAM") = bind_stream(m);
}
