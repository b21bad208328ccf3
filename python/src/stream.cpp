#include "stream.hpp"

#ifdef KVCODEC_PY_STREAM

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <vector>

#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/store.hpp"
#include "kvcodec/stream.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace kvcodec::python {
namespace {

template <typename T>
T value_or_raise(StatusOr<T>&& s) {
  if (!s.ok()) raise(s.status());
  return std::move(*s);
}

void check(const Status& s) {
  if (!s.ok()) raise(s);
}

py::object json(const std::string& text) {
  return py::module_::import("json").attr("loads")(text);
}

struct PyStore {
  std::shared_ptr<Store> store;
};

struct PyServer {
  std::unique_ptr<Server> server;
};

PyStore open(const std::string& uri, int connect_timeout_ms, int command_timeout_ms) {
  StoreOptions o;
  o.connect_timeout_ms = connect_timeout_ms;
  o.command_timeout_ms = command_timeout_ms;
  StatusOr<std::unique_ptr<Store>> s = Status();
  {
    py::gil_scoped_release release;
    s = open_store(uri, o);
  }
  return PyStore{std::shared_ptr<Store>(value_or_raise(std::move(s)))};
}

py::object put(PyStore& st, const std::string& id, py::handle kv, const std::vector<int>& levels, uint32_t chunk_tokens,
               const std::vector<int32_t>& text_tokens, int threads, bool measure, const std::string& layout,
               const std::optional<std::string>& dtype, std::optional<uint32_t> kv_heads, py::object block_table,
               py::object slot_mapping, std::optional<uint32_t> tokens, std::shared_ptr<Profile> profile,
               uint32_t first_position) {
  auto bound = bind_view(
      kv, layout_args(layout, dtype, kv_heads, std::move(block_table), tokens, std::move(slot_mapping)), false, {}, {});
  PutOptions o;
  o.levels = levels;
  o.chunk_tokens = chunk_tokens;
  o.text_tokens = text_tokens;
  o.threads = threads;
  o.measure = measure;
  o.profile = std::move(profile);
  o.first_position = first_position;
  StatusOr<Manifest> m = Status();
  {
    py::gil_scoped_release release;
    m = put_context(*st.store, id, bound->view, o);
  }
  return json(manifest_json(value_or_raise(std::move(m)), id));
}

Manifest read_manifest(PyStore& st, const std::string& id) {
  StatusOr<Manifest> m = Status();
  {
    py::gil_scoped_release release;
    m = get_manifest(*st.store, id);
  }
  return value_or_raise(std::move(m));
}

// Decodes context `id` at one stored level (default: the lowest, i.e. the most faithful) from
// the store into dst, chunk by chunk; every value is verified against the manifest.
void load(PyStore& st, const std::string& id, py::handle dst, std::optional<int> level, const std::string& layout,
          const std::optional<std::string>& dtype, py::object block_table, py::object slot_mapping, int threads,
          std::shared_ptr<Profile> profile) {
  const Manifest m = read_manifest(st, id);
  const ManifestLevel* lv = level ? m.find_level(*level) : m.levels.empty() ? nullptr : &m.levels.front();
  if (!lv) raise(NotFound("context '" + id + "' has no level " + (level ? std::to_string(*level) : "")));
  auto bound = bind_view(
      dst, layout_args(layout, dtype, std::nullopt, std::move(block_table), std::nullopt, std::move(slot_mapping)),
      true, m.shape, m.dtype);
  DecodeOptions o;
  o.threads = threads;
  Status s;
  {
    py::gil_scoped_release release;
    s = [&]() -> Status {
      KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> head, get_head(*st.store, id, m, lv->level));
      KVCODEC_ASSIGN_OR_RETURN(FrameDecoder decoder, FrameDecoder::open(head, profile));
      for (uint32_t c = 0; c < m.num_chunks(); ++c) {
        KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> body, get_chunk(*st.store, id, m, lv->level, c));
        KVCODEC_RETURN_IF_ERROR(decoder.decode_chunk(c, body, bound->view, o));
      }
      return Status::Ok();
    }();
  }
  check(s);
}

PyServer start_server(PyStore& st, const std::string& host, uint16_t port, std::optional<double> bandwidth_gbps,
                      double rtt_s, int max_connections) {
  ServerOptions so;
  so.host = host;
  so.port = port;
  so.max_connections = max_connections;
  if (bandwidth_gbps) so.link.trace = LinkTrace::constant(*bandwidth_gbps);
  so.link.rtt_s = rtt_s;
  check(so.link.validate());
  StatusOr<std::unique_ptr<Server>> s = Status();
  {
    py::gil_scoped_release release;
    s = Server::start(st.store, so);
  }
  return PyServer{value_or_raise(std::move(s))};
}

// Copies a whole context between two views of the same shape and dtype, row by row.
void copy_view(const KVView& src, const KVView& dst) {
  const KVShape& s = src.shape;
  const size_t es = dtype_size(src.dtype), row = s.head_dim * es;
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (uint32_t h = 0; h < s.kv_heads; ++h) {
          if (src.rows_contiguous() && dst.rows_contiguous()) {
            std::memcpy(dst.element(l, kv, t, h, 0), src.element(l, kv, t, h, 0), row);
          } else {
            for (uint32_t d = 0; d < s.head_dim; ++d)
              std::memcpy(dst.element(l, kv, t, h, d), src.element(l, kv, t, h, d), es);
          }
        }
}

[[noreturn]] void raise_with_report(const Status& s, py::object report) {
  py::object cls = py::module_::import("kvcodec._errors").attr("error_class")(int(s.code()));
  py::object exc = cls(int(s.code()), s.message());
  exc.attr("report") = report;
  PyErr_SetObject(cls.ptr(), exc.ptr());
  throw py::error_already_set();
}

// A numpy array [L, 2, T, H, D] owning the fetched cache (bf16 / f8 as uint16 / uint8 bits).
py::array owning_array(std::unique_ptr<KVCache> cache) {
  const KVShape s = cache->shape;
  const char* type = cache->dtype == DType::kF32    ? "float32"
                     : cache->dtype == DType::kF16  ? "float16"
                     : cache->dtype == DType::kBF16 ? "uint16"
                                                    : "uint8";
  void* data = cache->data.data();
  py::capsule owner(cache.release(), [](void* p) { delete static_cast<KVCache*>(p); });
  return py::array(py::dtype(type), std::vector<py::ssize_t>{s.layers, 2, s.tokens, s.kv_heads, s.head_dim}, data,
                   owner);
}

py::tuple fetch(const std::string& host, uint16_t port, const std::string& id, py::object dst,
                const std::string& layout, const std::optional<std::string>& dtype, py::object block_table,
                py::object slot_mapping, double slo_s, int decode_threads, const std::string& policy,
                int connect_timeout_ms, int io_timeout_ms, std::shared_ptr<Profile> profile) {
  FetchOptions fo;
  fo.profile = std::move(profile);
  fo.host = host;
  fo.port = port;
  fo.id = id;
  fo.controller.slo_s = slo_s;
  if (policy == "equal_budget")
    fo.controller.policy = Policy::kEqualBudget;
  else if (policy != "adaptive")
    raise_invalid("unknown policy '" + policy + "' (adaptive, equal_budget)");
  check(fo.controller.validate());
  fo.decode_threads = decode_threads;
  fo.connect_timeout_ms = connect_timeout_ms;
  fo.io_timeout_ms = io_timeout_ms;
  auto cache = std::make_unique<KVCache>();
  FetchReport rep;
  Status s;
  {
    py::gil_scoped_release release;
    s = fetch_context(fo, cache.get(), &rep);
  }
  py::object report = json(rep.to_json());
  if (!s.ok()) raise_with_report(s, report);
  if (dst.is_none()) return py::make_tuple(owning_array(std::move(cache)), report);
  auto bound = bind_view(
      dst, layout_args(layout, dtype, std::nullopt, std::move(block_table), std::nullopt, std::move(slot_mapping)),
      true, cache->shape, cache->dtype);
  const KVView src = cache->view();
  {
    py::gil_scoped_release release;
    copy_view(src, bound->view);
  }
  return py::make_tuple(dst, report);
}

}  // namespace

bool bind_stream(py::module_& m) {
  py::class_<PyStore>(m, "Store")
      .def(py::init(&open), py::arg("uri"), py::kw_only(), py::arg("connect_timeout_ms") = 1000,
           py::arg("command_timeout_ms") = 5000)
      .def_property_readonly("uri", [](const PyStore& s) { return s.store->uri(); })
      .def(
          "put",
          [](PyStore& s, const std::string& key, py::handle value) {
            const Array a = acquire(value, false, "value");
            const std::span<uint8_t> bytes = byte_span(a, "value");
            Status st;
            {
              py::gil_scoped_release release;
              st = s.store->put(key, bytes);
            }
            check(st);
          },
          py::arg("key"), py::arg("value"))
      .def(
          "get",
          [](PyStore& s, const std::string& key) {
            StatusOr<std::vector<uint8_t>> v = Status();
            {
              py::gil_scoped_release release;
              v = s.store->get(key);
            }
            const std::vector<uint8_t> bytes = value_or_raise(std::move(v));
            return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          },
          py::arg("key"))
      .def(
          "exists",
          [](PyStore& s, const std::string& key) {
            StatusOr<bool> e = Status();
            {
              py::gil_scoped_release release;
              e = s.store->exists(key);
            }
            return value_or_raise(std::move(e));
          },
          py::arg("key"))
      .def(
          "remove",
          [](PyStore& s, const std::string& key) {
            Status st;
            {
              py::gil_scoped_release release;
              st = s.store->remove(key);
            }
            check(st);
          },
          py::arg("key"));
  py::class_<PyServer>(m, "Server")
      .def(py::init(&start_server), py::arg("store"), py::kw_only(), py::arg("host") = "127.0.0.1", py::arg("port") = 0,
           py::arg("bandwidth_gbps") = py::none(), py::arg("rtt_s") = 0.0, py::arg("max_connections") = 64)
      .def_property_readonly("port", [](const PyServer& s) { return s.server->port(); })
      .def("stop",
           [](PyServer& s) {
             py::gil_scoped_release release;
             s.server->stop();
           })
      .def("stats", [](const PyServer& s) {
        const ServerStats st = s.server->stats();
        return py::dict("connections"_a = st.connections, "requests"_a = st.requests,
                        "error_responses"_a = st.error_responses, "bytes_sent"_a = st.bytes_sent);
      });
  m.def("put", &put, py::arg("store"), py::arg("id"), py::arg("kv"), py::kw_only(),
        py::arg("levels") = std::vector<int>{0, 2, 4, 6, 8}, py::arg("chunk_tokens") = 256u,
        py::arg("text_tokens") = std::vector<int32_t>{}, py::arg("threads") = 0, py::arg("measure") = true,
        py::arg("layout") = "contiguous", py::arg("dtype") = py::none(), py::arg("kv_heads") = py::none(),
        py::arg("block_table") = py::none(), py::arg("slot_mapping") = py::none(), py::arg("tokens") = py::none(),
        py::arg("profile") = nullptr, py::arg("first_position") = 0u);
  m.def(
      "manifest", [](PyStore& st, const std::string& id) { return json(manifest_json(read_manifest(st, id), id)); },
      py::arg("store"), py::arg("id"));
  m.def("load", &load, py::arg("store"), py::arg("id"), py::arg("dst"), py::kw_only(), py::arg("level") = py::none(),
        py::arg("layout") = "contiguous", py::arg("dtype") = py::none(), py::arg("block_table") = py::none(),
        py::arg("slot_mapping") = py::none(), py::arg("threads") = 0, py::arg("profile") = nullptr);
  m.def(
      "remove",
      [](PyStore& st, const std::string& id) {
        Status s;
        {
          py::gil_scoped_release release;
          s = remove_context(*st.store, id);
        }
        check(s);
      },
      py::arg("store"), py::arg("id"));
  m.def("fetch", &fetch, py::arg("host"), py::arg("port"), py::arg("id"), py::kw_only(), py::arg("dst") = py::none(),
        py::arg("layout") = "contiguous", py::arg("dtype") = py::none(), py::arg("block_table") = py::none(),
        py::arg("slot_mapping") = py::none(), py::arg("slo_s") = 1.0, py::arg("decode_threads") = 1,
        py::arg("policy") = "adaptive", py::arg("connect_timeout_ms") = 2000, py::arg("io_timeout_ms") = 5000,
        py::arg("profile") = nullptr);
  return true;
}

}  // namespace kvcodec::python

#else

namespace kvcodec::python {
bool bind_stream(pybind11::module_&) {
  return false;
}
}  // namespace kvcodec::python

#endif
