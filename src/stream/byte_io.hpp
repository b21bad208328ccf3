// The manifest and the wire protocol are read and written with the codec's bounds-checked byte
// reader and writer (common/bytes.hpp).
#pragma once

#include "common/bytes.hpp"

namespace kvcodec::stream_detail {

using detail::ByteReader;
using detail::ByteWriter;

}  // namespace kvcodec::stream_detail
