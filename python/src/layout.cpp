#include "layout.hpp"

#include <cstdint>
#include <string>

namespace py = pybind11;

namespace kvcodec::python {
namespace {

uint32_t dim32(int64_t v, const std::string& what) {
  if (v <= 0 || v > int64_t(UINT32_MAX)) raise_invalid(what + ": dimension " + std::to_string(v) + " out of range");
  return uint32_t(v);
}

const char* const kLayoutNames =
    "contiguous, lmcache, hf, per_layer, mla, vllm, vllm_hnd, flashinfer, flashinfer_hnd, paged_split, "
    "paged_split_hnd, mla_paged";

std::string tuple_str_of(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + ")";
}

std::string tuple_str(std::initializer_list<uint64_t> dims) {
  std::string s = "(";
  size_t i = 0;
  for (uint64_t d : dims) {
    if (i++) s += ", ";
    s += std::to_string(d);
  }
  return s + ")";
}

void require_ndim(const Array& a, size_t ndim, const std::string& what, const char* form) {
  if (a.shape.size() != ndim)
    raise_invalid(what + ": expected a " + std::to_string(ndim) + "-D array " + form + ", got shape " + a.shape_str());
}

void require_shape(const KVShape& got, const std::optional<KVShape>& expect, const std::string& what,
                   const std::string& got_str, const std::string& want_str) {
  if (expect && !(got == *expect))
    raise_invalid(what + ": shape " + got_str + " does not match the frame's " + want_str);
}

// dtype of one array, checked against the frame's (decoding) and against the first array's.
DType array_dtype(const Array& a, const LayoutArgs& args, std::optional<DType> expect, const std::string& what) {
  const bool raw = a.elem == Elem::kU8 || a.elem == Elem::kI8 || a.elem == Elem::kU16 || a.elem == Elem::kI16;
  const DType d = resolve_dtype(a, args.dtype ? args.dtype : raw ? expect : std::nullopt, what);
  if (expect && d != *expect)
    raise_invalid(what + ": dtype " + dtype_name(d) + " (" + a.type_name + ") does not match the frame's " +
                  dtype_name(*expect));
  return d;
}

void bind_contiguous(BoundView& b, py::handle obj, const LayoutArgs& args, bool writable,
                     const std::optional<KVShape>& expect, std::optional<DType> expect_dtype) {
  const std::string what = "kv (layout 'contiguous')";
  Array& a = b.arrays.emplace_back(acquire(obj, writable, what));
  require_ndim(a, 5, what, "[layers, 2, tokens, kv_heads, head_dim]");
  if (a.shape[1] != 2) raise_invalid(what + ": dimension 1 must be 2 (K, V), got shape " + a.shape_str());
  const KVShape s{dim32(a.shape[0], what), dim32(a.shape[2], what), dim32(a.shape[3], what), dim32(a.shape[4], what)};
  if (expect)
    require_shape(s, expect, what, a.shape_str(),
                  "[layers, 2, tokens, kv_heads, head_dim] = " +
                      tuple_str({expect->layers, 2, expect->tokens, expect->kv_heads, expect->head_dim}));
  require_contiguous(a, what);
  b.view = contiguous_view(a.data, array_dtype(a, args, expect_dtype, what), s);
}

void bind_lmcache(BoundView& b, py::handle obj, const LayoutArgs& args, bool writable,
                  const std::optional<KVShape>& expect, std::optional<DType> expect_dtype) {
  const std::string what = "kv (layout 'lmcache')";
  Array& a = b.arrays.emplace_back(acquire(obj, writable, what));
  require_ndim(a, 4, what, "[2, layers, tokens, kv_heads * head_dim]");
  if (a.shape[0] != 2) raise_invalid(what + ": dimension 0 must be 2 (K, V), got shape " + a.shape_str());
  const uint32_t channels = dim32(a.shape[3], what);
  KVShape s{dim32(a.shape[1], what), dim32(a.shape[2], what), 1, channels};
  if (expect) {
    s.kv_heads = expect->kv_heads;
    s.head_dim = expect->head_dim;
    if (channels != expect->channels()) s.kv_heads = 0;  // forces the mismatch message
    require_shape(s, expect, what, a.shape_str(),
                  "[2, layers, tokens, kv_heads * head_dim] = " +
                      tuple_str({2, expect->layers, expect->tokens, expect->channels()}));
  } else if (args.kv_heads) {
    if (*args.kv_heads == 0 || channels % *args.kv_heads)
      raise_invalid(what + ": kv_heads=" + std::to_string(*args.kv_heads) + " does not divide the last dimension " +
                    std::to_string(channels));
    s.kv_heads = *args.kv_heads;
    s.head_dim = channels / *args.kv_heads;
  }
  require_contiguous(a, what);
  b.view = lmcache_view(a.data, array_dtype(a, args, expect_dtype, what), s);
}

// hf: a sequence of (key, value) per layer, each [1, kv_heads, tokens, head_dim] (transformers'
// legacy cache); per_layer: each [tokens, kv_heads, head_dim].
void bind_per_layer(BoundView& b, py::handle obj, const LayoutArgs& args, bool writable,
                    const std::optional<KVShape>& expect, std::optional<DType> expect_dtype) {
  const bool hf = args.layout == "hf";
  const char* form = hf ? "[1, kv_heads, tokens, head_dim]" : "[tokens, kv_heads, head_dim]";
  py::object layers = py::reinterpret_borrow<py::object>(obj);
  // transformers' caches: the legacy tuple, or the key_cache / value_cache lists of DynamicCache.
  if (py::hasattr(layers, "to_legacy_cache")) {
    layers = layers.attr("to_legacy_cache")();
  } else if (py::hasattr(layers, "key_cache") && py::hasattr(layers, "value_cache")) {
    const py::object zip = py::module_::import("builtins").attr("zip");
    layers = py::list(zip(layers.attr("key_cache"), layers.attr("value_cache")));
  }
  if (is_array(layers) || !py::isinstance<py::sequence>(layers))
    raise_invalid("kv (layout '" + args.layout + "'): expected a sequence of (key, value) per layer");
  const py::sequence seq = layers;
  const size_t n = seq.size();
  if (n == 0) raise_invalid("kv (layout '" + args.layout + "'): no layers");
  b.arrays.reserve(2 * n);
  std::optional<DType> dtype;
  std::vector<int64_t> first_shape;
  for (size_t l = 0; l < n; ++l) {
    py::object pair = seq[l];
    if (!py::isinstance<py::sequence>(pair) || is_array(pair) || py::len(pair) != 2)
      raise_invalid("kv layer " + std::to_string(l) + ": expected a (key, value) pair");
    for (int kv = 0; kv < 2; ++kv) {
      const std::string what = "kv layer " + std::to_string(l) + (kv ? " value" : " key");
      Array& a = b.arrays.emplace_back(acquire(py::sequence(pair)[size_t(kv)], writable, what));
      require_ndim(a, hf ? 4 : 3, what, form);
      if (hf && a.shape[0] != 1) raise_invalid(what + ": batch dimension must be 1, got shape " + a.shape_str());
      if (first_shape.empty()) first_shape = a.shape;
      if (a.shape != first_shape)
        raise_invalid(what + ": shape " + a.shape_str() + " differs from layer 0's key " + b.arrays[0].shape_str());
      const DType d = array_dtype(a, args, expect_dtype, what);
      if (dtype && d != *dtype) raise_invalid(what + ": dtype differs from layer 0's key");
      dtype = d;
      require_contiguous(a, what);
      (kv ? b.values : b.keys).push_back(a.data);
    }
  }
  const std::vector<int64_t>& f = first_shape;
  const std::string what = "kv (layout '" + args.layout + "')";
  const KVShape s = hf ? KVShape{uint32_t(n), dim32(f[2], what), dim32(f[1], what), dim32(f[3], what)}
                       : KVShape{uint32_t(n), dim32(f[0], what), dim32(f[1], what), dim32(f[2], what)};
  if (expect)
    require_shape(s, expect, what, std::to_string(n) + " layers of " + b.arrays[0].shape_str(),
                  std::to_string(expect->layers) + " layers of " +
                      (hf ? tuple_str({1, expect->kv_heads, expect->tokens, expect->head_dim})
                          : tuple_str({expect->tokens, expect->kv_heads, expect->head_dim})));
  b.view = per_layer_view(b.keys.data(), b.values.data(), *dtype, s, hf);
}

// Integer entries of a 1-D int32 / int64 array or of a sequence of ints.
std::vector<int64_t> read_ints(py::handle obj, const std::string& what) {
  std::vector<int64_t> out;
  if (is_array(obj)) {
    const Array a = acquire(obj, false, what);
    if (a.shape.size() != 1) raise_invalid(what + ": expected a 1-D array, got shape " + a.shape_str());
    if (a.elem != Elem::kI32 && a.elem != Elem::kI64)
      raise_invalid(what + ": expected int32 or int64 entries, got " + a.type_name);
    for (int64_t i = 0; i < a.shape[0]; ++i) {
      const int64_t off = i * a.strides[0];
      out.push_back(a.elem == Elem::kI32 ? static_cast<const int32_t*>(a.data)[off]
                                         : static_cast<const int64_t*>(a.data)[off]);
    }
  } else {
    for (py::handle v : py::iter(obj)) out.push_back(py::cast<int64_t>(v));
  }
  if (out.empty()) raise_invalid(what + ": empty");
  return out;
}

// Geometry of one layer's tensor in a paged layout: the index of each dimension in its shape
// (-1: absent). Dimension `two` holds K and V; MLA has no heads (`heads` = -1, `dim` = latent).
struct PagedSpec {
  const char* name;
  const char* form;
  size_t ndim;
  int two, blocks, block_size, heads, dim;
  bool split;  // one K pool and one V pool per layer, given as (k, v) pairs
};

constexpr PagedSpec kPagedSpecs[] = {
    {"vllm", "(2, num_blocks, block_size, kv_heads, head_dim)", 5, 0, 1, 2, 3, 4, false},
    {"vllm_hnd", "(2, num_blocks, kv_heads, block_size, head_dim)", 5, 0, 1, 3, 2, 4, false},
    {"flashinfer", "(num_blocks, 2, block_size, kv_heads, head_dim)", 5, 1, 0, 2, 3, 4, false},
    {"flashinfer_hnd", "(num_blocks, 2, kv_heads, block_size, head_dim)", 5, 1, 0, 3, 2, 4, false},
    {"paged_split", "(k, v) pools, each (num_blocks, block_size, kv_heads, head_dim)", 4, -1, 0, 1, 2, 3, true},
    {"paged_split_hnd", "(k, v) pools, each (num_blocks, kv_heads, block_size, head_dim)", 4, -1, 0, 2, 1, 3, true},
    {"mla_paged", "(num_blocks, block_size, latent_dim)", 3, -1, 0, 1, -1, 2, false},
};

const PagedSpec* paged_spec(const std::string& layout) {
  for (const PagedSpec& p : kPagedSpecs)
    if (layout == p.name) return &p;
  return nullptr;
}

// Collects the per-layer tensors of a paged layout into b.keys (and b.values when split).
std::vector<int64_t> collect_pools(BoundView& b, py::handle obj, const PagedSpec& spec, const LayoutArgs& args,
                                   bool writable, std::optional<DType> expect_dtype, DType* dtype_out) {
  const std::string what = "kv (layout '" + args.layout + "')";
  std::vector<int64_t> layer_shape;
  std::optional<DType> dtype;
  auto add = [&](const Array& a, void* base, const std::vector<int64_t>& shape, const std::string& w, bool value) {
    if (layer_shape.empty()) layer_shape = shape;
    if (shape != layer_shape) raise_invalid(w + ": shape differs from layer 0's; expected " + spec.form);
    if (spec.two >= 0 && shape[size_t(spec.two)] != 2)
      raise_invalid(w + ": dimension " + std::to_string(spec.two) + " must be 2 (K, V), expected " + spec.form);
    const DType d = array_dtype(a, args, expect_dtype, w);
    if (dtype && d != *dtype) raise_invalid(w + ": dtype differs from layer 0's");
    dtype = d;
    (value ? b.values : b.keys).push_back(base);
  };
  if (is_array(obj) && !spec.split) {  // one tensor with a leading layers dimension
    Array& a = b.arrays.emplace_back(acquire(obj, writable, what));
    require_ndim(a, spec.ndim + 1, what, "[layers, ...] (or pass a sequence of per-layer tensors)");
    require_contiguous(a, what);
    const std::vector<int64_t> shape(a.shape.begin() + 1, a.shape.end());
    for (int64_t l = 0; l < a.shape[0]; ++l)
      add(a, static_cast<char*>(a.data) + l * a.strides[0] * int64_t(a.itemsize), shape, what, false);
  } else {
    if (!py::isinstance<py::sequence>(obj) || is_array(obj))
      raise_invalid(what + ": expected a sequence of per-layer " + spec.form);
    const py::sequence layers = py::reinterpret_borrow<py::sequence>(obj);
    b.arrays.reserve(layers.size() * (spec.split ? 2 : 1));
    for (size_t l = 0; l < layers.size(); ++l) {
      const std::string w = "kv layer " + std::to_string(l);
      py::object item = layers[l];
      if (spec.split && (!py::isinstance<py::sequence>(item) || is_array(item) || py::len(item) != 2))
        raise_invalid(w + ": expected a (k_pool, v_pool) pair");
      for (int kv = 0; kv < (spec.split ? 2 : 1); ++kv) {
        const std::string wk = spec.split ? w + (kv ? " v_pool" : " k_pool") : w;
        Array& a = b.arrays.emplace_back(
            acquire(spec.split ? py::handle(py::sequence(item)[size_t(kv)]) : py::handle(item), writable, wk));
        require_ndim(a, spec.ndim, wk, spec.form);
        require_contiguous(a, wk);
        add(a, a.data, a.shape, wk, kv == 1);
      }
    }
  }
  if (b.keys.empty()) raise_invalid(what + ": no layers");
  *dtype_out = *dtype;
  return layer_shape;
}

// The paged layouts: vLLM (NHD / HND), FlashInfer, separate K and V pools, MLA; addressed by a
// block table or by vLLM's slot_mapping (token -> slot).
void bind_paged(BoundView& b, py::handle obj, const PagedSpec& spec, const LayoutArgs& args, bool writable,
                const std::optional<KVShape>& expect, std::optional<DType> expect_dtype) {
  const std::string what = "kv (layout '" + args.layout + "')";
  DType dtype;
  const std::vector<int64_t> f = collect_pools(b, obj, spec, args, writable, expect_dtype, &dtype);
  const uint32_t num_blocks = dim32(f[size_t(spec.blocks)], what), block_size = dim32(f[size_t(spec.block_size)], what);
  const bool has_table = !args.block_table.is_none(), has_slots = !args.slot_mapping.is_none();
  if (has_table == has_slots)
    raise_invalid(
        "the paged layouts need exactly one of block_table= (the context's blocks, in order) and "
        "slot_mapping= (each token's slot)");
  uint64_t tokens = 0;
  if (has_slots) {
    b.slots = read_ints(args.slot_mapping, "slot_mapping");
    tokens = expect ? expect->tokens : args.tokens ? *args.tokens : b.slots.size();
    if (b.slots.size() < tokens)
      raise_invalid("slot_mapping: " + std::to_string(b.slots.size()) + " entries for " + std::to_string(tokens) +
                    " tokens");
  } else {
    for (int64_t v : read_ints(args.block_table, "block_table")) {
      if (v < INT32_MIN || v > INT32_MAX)
        raise_invalid("block_table: entry " + std::to_string(v) + " out of int32 range");
      b.table.push_back(int32_t(v));
    }
    tokens = expect ? expect->tokens : args.tokens ? *args.tokens : uint64_t(b.table.size()) * block_size;
    const uint64_t needed = (tokens + block_size - 1) / block_size;
    if (b.table.size() < needed)
      raise_invalid("block_table: " + std::to_string(b.table.size()) + " entries, but " + std::to_string(tokens) +
                    " tokens in blocks of " + std::to_string(block_size) + " need " + std::to_string(needed));
  }
  const uint32_t layers = uint32_t(b.keys.size()), t32 = dim32(int64_t(tokens), what);
  KVShape s;
  if (spec.heads < 0) {
    StatusOr<KVShape> m = mla_shape(layers, t32, dim32(f[size_t(spec.dim)], what));
    if (!m.ok()) raise(m.status());
    s = *m;
  } else {
    s = KVShape{layers, t32, dim32(f[size_t(spec.heads)], what), dim32(f[size_t(spec.dim)], what)};
  }
  if (expect)
    require_shape(s, expect, what, std::to_string(layers) + " layers of " + tuple_str_of(f),
                  std::to_string(expect->layers) + " layers with " +
                      (spec.heads < 0 ? "latent_dim " + std::to_string(2 * expect->head_dim)
                                      : "kv_heads " + std::to_string(expect->kv_heads) + ", head_dim " +
                                            std::to_string(expect->head_dim)));
  const int32_t* table = has_slots ? nullptr : b.table.data();
  const std::string n = spec.name;
  const PagedOrder order = n.ends_with("_hnd") ? PagedOrder::kHND : PagedOrder::kNHD;
  if (n.starts_with("vllm"))
    b.view = vllm_paged_view(b.keys.data(), dtype, s, table, num_blocks, block_size, order);
  else if (n.starts_with("flashinfer"))
    b.view = flashinfer_paged_view(b.keys.data(), dtype, s, table, num_blocks, block_size, order);
  else if (spec.split)
    b.view = paged_kv_split_view(b.keys.data(), b.values.data(), dtype, s, table, num_blocks, block_size, order);
  else
    b.view = mla_paged_view(b.keys.data(), dtype, s, table, num_blocks, block_size);
  if (has_slots) b.view = with_slot_mapping(b.view, b.slots.data());
}

// MLA latent cache [layers, tokens, latent_dim] (DeepSeek), one plane per layer.
void bind_mla(BoundView& b, py::handle obj, const LayoutArgs& args, bool writable, const std::optional<KVShape>& expect,
              std::optional<DType> expect_dtype) {
  const std::string what = "kv (layout 'mla')";
  Array& a = b.arrays.emplace_back(acquire(obj, writable, what));
  require_ndim(a, 3, what, "[layers, tokens, latent_dim]");
  StatusOr<KVShape> m = mla_shape(dim32(a.shape[0], what), dim32(a.shape[1], what), dim32(a.shape[2], what));
  if (!m.ok()) raise(m.status().with_context(what));
  if (expect)
    require_shape(
        *m, expect, what, a.shape_str(),
        "[layers, tokens, latent_dim] = " + tuple_str({expect->layers, expect->tokens, 2ull * expect->head_dim}) +
            (expect->kv_heads != 1
                 ? " (the frame is not an MLA cache: kv_heads " + std::to_string(expect->kv_heads) + ")"
                 : ""));
  require_contiguous(a, what);
  b.view = mla_view(a.data, array_dtype(a, args, expect_dtype, what), *m);
}

}  // namespace

std::unique_ptr<BoundView> bind_view(py::handle obj, const LayoutArgs& args, bool writable,
                                     const std::optional<KVShape>& expect, std::optional<DType> expect_dtype) {
  auto b = std::make_unique<BoundView>();
  const std::string& l = args.layout;
  if (l == "contiguous")
    bind_contiguous(*b, obj, args, writable, expect, expect_dtype);
  else if (l == "lmcache")
    bind_lmcache(*b, obj, args, writable, expect, expect_dtype);
  else if (l == "hf" || l == "per_layer")
    bind_per_layer(*b, obj, args, writable, expect, expect_dtype);
  else if (l == "mla")
    bind_mla(*b, obj, args, writable, expect, expect_dtype);
  else if (const PagedSpec* spec = paged_spec(l))
    bind_paged(*b, obj, *spec, args, writable, expect, expect_dtype);
  else
    raise_invalid("unknown layout '" + l + "' (" + kLayoutNames + ")");
  const Status s = validate_view(b->view);
  if (!s.ok()) raise(s);
  return b;
}

}  // namespace kvcodec::python
