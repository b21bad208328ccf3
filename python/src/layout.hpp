// KVViews over Python arrays in the layouts servers use (docs/integration.md has the table).
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "array.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::python {

// What a caller passes besides the tensors.
struct LayoutArgs {
  std::string layout = "contiguous";  // see kvcodec/__init__.py for the list
  std::optional<DType> dtype;         // meaning of raw uint16 / uint8 arrays
  std::optional<uint32_t> kv_heads;   // lmcache: split of its H*D axis (default 1 head)
  pybind11::object block_table;       // paged: int32/int64 array or sequence of ints
  std::optional<uint32_t> tokens;     // paged: context length (default: all blocks / slots)
  pybind11::object slot_mapping = pybind11::none();  // paged: token -> slot, instead of a table
};

// The arrays a view reads or writes, kept alive (and immobile) as long as the view is used.
struct BoundView {
  std::vector<Array> arrays;
  std::vector<void*> keys, values;
  std::vector<int32_t> table;
  std::vector<int64_t> slots;
  KVView view;
};

// Builds the view of `obj` in args.layout. With `expect` (decoding), the destination must hold
// exactly that shape and dtype; otherwise the shape comes from the arrays.
std::unique_ptr<BoundView> bind_view(pybind11::handle obj, const LayoutArgs& args, bool writable,
                                     const std::optional<KVShape>& expect, std::optional<DType> expect_dtype);

}  // namespace kvcodec::python
