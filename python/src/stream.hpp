// Bindings of the streaming library (store.hpp, stream.hpp), when it is built.
#pragma once

#include <pybind11/pybind11.h>

#include <optional>
#include <string>

#include "layout.hpp"

namespace kvcodec::python {

// Shared with module.cpp: argument parsing of the codec calls.
std::optional<DType> parse_dtype_arg(const std::optional<std::string>& name);
LayoutArgs layout_args(const std::string& layout, const std::optional<std::string>& dtype,
                       std::optional<uint32_t> kv_heads, pybind11::object block_table, std::optional<uint32_t> tokens,
                       pybind11::object slot_mapping);

// Adds Store, Server, put, load, manifest, remove, fetch to `m`. False (and nothing added) in a
// build without the streaming library.
bool bind_stream(pybind11::module_& m);

}  // namespace kvcodec::python
