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
    require_shape(s, expect, what, a.shape_str(), "[layers, 2, tokens, kv_heads, head_dim] = " +
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
    require_shape(s, expect, what, a.shape_str(), "[2, layers, tokens, kv_heads * head_dim] = " +
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
  if (py::hasattr(layers, "to_legacy_cache")) layers = layers.attr("to_legacy_cache")();
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

std::vector<int32_t> read_block_table(py::handle obj) {
  const std::string what = "block_table";
  if (obj.is_none()) raise_invalid("the vllm layouts need block_table= (the context's blocks, in order)");
  std::vector<int32_t> table;
  auto push = [&](int64_t v) {
    if (v < INT32_MIN || v > INT32_MAX) raise_invalid(what + ": entry " + std::to_string(v) + " out of int32 range");
    table.push_back(int32_t(v));
  };
  if (is_array(obj)) {
    const Array a = acquire(obj, false, what);
    if (a.shape.size() != 1) raise_invalid(what + ": expected a 1-D array, got shape " + a.shape_str());
    if (a.elem != Elem::kI32 && a.elem != Elem::kI64)
      raise_invalid(what + ": expected int32 or int64 entries, got " + a.type_name);
    for (int64_t i = 0; i < a.shape[0]; ++i) {
      const int64_t off = i * a.strides[0];
      push(a.elem == Elem::kI32 ? static_cast<const int32_t*>(a.data)[off] : static_cast<const int64_t*>(a.data)[off]);
    }
  } else {
    for (py::handle v : py::iter(obj)) push(py::cast<int64_t>(v));
  }
  if (table.empty()) raise_invalid(what + ": empty");
  return table;
}

// vllm (NHD): per layer (2, num_blocks, block_size, kv_heads, head_dim); vllm_hnd:
// (2, num_blocks, kv_heads, block_size, head_dim). Either a sequence of per-layer tensors or one
// tensor with a leading layers dimension.
void bind_paged(BoundView& b, py::handle obj, const LayoutArgs& args, bool writable,
                const std::optional<KVShape>& expect, std::optional<DType> expect_dtype) {
  const bool hnd = args.layout == "vllm_hnd";
  const char* form = hnd ? "(2, num_blocks, kv_heads, block_size, head_dim)" : "(2, num_blocks, block_size, kv_heads, head_dim)";
  const std::string what = "kv (layout '" + args.layout + "')";
  std::vector<int64_t> layer_shape;
  std::optional<DType> dtype;
  auto add_layer = [&](const Array& a, void* base, const std::vector<int64_t>& shape, const std::string& w) {
    if (layer_shape.empty()) layer_shape = shape;
    if (shape != layer_shape) raise_invalid(w + ": shape differs from layer 0's");
    if (shape[0] != 2) raise_invalid(w + ": dimension 0 must be 2 (K, V), expected " + form);
    const DType d = array_dtype(a, args, expect_dtype, w);
    if (dtype && d != *dtype) raise_invalid(w + ": dtype differs from layer 0's");
    dtype = d;
    b.keys.push_back(base);
  };
  if (is_array(obj)) {
    Array& a = b.arrays.emplace_back(acquire(obj, writable, what));
    require_ndim(a, 6, what, "[layers, 2, num_blocks, ...] (or pass a list of per-layer tensors)");
    require_contiguous(a, what);
    const std::vector<int64_t> shape(a.shape.begin() + 1, a.shape.end());
    for (int64_t l = 0; l < a.shape[0]; ++l)
      add_layer(a, static_cast<char*>(a.data) + l * a.strides[0] * int64_t(a.itemsize), shape, what);
  } else {
    size_t l = 0;
    for (py::handle layer : py::iter(obj)) {
      const std::string w = "kv layer " + std::to_string(l++);
      Array& a = b.arrays.emplace_back(acquire(layer, writable, w));
      require_ndim(a, 5, w, form);
      require_contiguous(a, w);
      add_layer(a, a.data, a.shape, w);
    }
  }
  if (b.keys.empty()) raise_invalid(what + ": no layers");
  const std::vector<int64_t>& f = layer_shape;
  const uint32_t num_blocks = dim32(f[1], what), block_size = dim32(hnd ? f[3] : f[2], what);
  const uint32_t heads = dim32(hnd ? f[2] : f[3], what), head_dim = dim32(f[4], what);
  b.table = read_block_table(args.block_table);
  uint64_t tokens = expect ? expect->tokens : args.tokens ? *args.tokens : uint64_t(b.table.size()) * block_size;
  const uint64_t needed = (tokens + block_size - 1) / block_size;
  if (b.table.size() < needed)
    raise_invalid("block_table: " + std::to_string(b.table.size()) + " entries, but " + std::to_string(tokens) +
                  " tokens in blocks of " + std::to_string(block_size) + " need " + std::to_string(needed));
  const KVShape s{uint32_t(b.keys.size()), dim32(int64_t(tokens), what), heads, head_dim};
  if (expect)
    require_shape(s, expect, what, std::to_string(s.layers) + " layers of " + tuple_str({2, num_blocks, uint64_t(f[2]), uint64_t(f[3]), uint64_t(f[4])}),
                  std::to_string(expect->layers) + " layers with kv_heads " + std::to_string(expect->kv_heads) +
                      ", head_dim " + std::to_string(expect->head_dim));
  b.view = vllm_paged_view(b.keys.data(), *dtype, s, b.table.data(), num_blocks, block_size,
                           hnd ? PagedOrder::kHND : PagedOrder::kNHD);
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
  else if (l == "vllm" || l == "vllm_hnd")
    bind_paged(*b, obj, args, writable, expect, expect_dtype);
  else
    raise_invalid("unknown layout '" + l + "' (contiguous, lmcache, hf, per_layer, vllm, vllm_hnd)");
  const Status s = validate_view(b->view);
  if (!s.ok()) raise(s);
  return b;
}

}  // namespace kvcodec::python
