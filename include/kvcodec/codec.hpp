// Encoding and decoding whole contexts, chunks and layer ranges.
//
// Memory: the caller owns every buffer. max_encoded_size() bounds the frame size up front;
// encode_into() writes into the caller's buffer and returns the bytes written; decode_into()
// writes into the caller's KVView. Scratch memory is allocated per call (bounded by the shape);
// no global state. All functions are thread-safe for distinct destinations.
//
// Determinism: the bytes of a frame depend only on the input values, their dtype and shape and
// the EncodeOptions other than `threads` -- the same on every machine, thread count and backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "kvcodec/config.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

// Upper bound on the size of the frame encode_into produces for this shape, dtype and options.
// 0 when the arguments are invalid.
size_t max_encoded_size(const KVShape& shape, DType dtype, const EncodeOptions& options) noexcept;

// Encodes the whole context in `src` into `dst`. Returns the frame size. Fails with
// kBufferTooSmall if dst is shorter than needed (max_encoded_size always suffices).
// Lossy levels reject NaN/Inf inputs with kInvalidArgument (lossless keeps them exactly).
StatusOr<size_t> encode_into(const KVView& src, const EncodeOptions& options,
                             std::span<uint8_t> dst);

// Decodes a whole frame (or the chunk / layer range in options) into `dst`, whose dtype and
// shape must equal the frame's. Any layout is accepted. Corrupt, truncated or unknown-version
// frames are errors; dst may then be partially written.
Status decode_into(std::span<const uint8_t> frame, const KVView& dst,
                   const DecodeOptions& options = {});

// Decodes chunk `chunk` given the frame's head (read_frame_info's head_bytes prefix, or the
// whole frame) and that chunk's body bytes, into dst (the whole context's view). Layers are
// limited by options.layer_begin/end; chunk range fields of options are ignored.
Status decode_chunk_into(std::span<const uint8_t> head, uint32_t chunk,
                         std::span<const uint8_t> chunk_body, const KVView& dst,
                         const DecodeOptions& options = {});

namespace detail {
struct Decoder;
}

// A parsed frame head with its decode tables, reusable for any number of chunks of that frame:
// what a streaming client holds per level. Immutable after open(); decode_chunk may be called
// concurrently for distinct destinations. Copies share the same tables.
class FrameDecoder {
 public:
  // `head` is the frame's first head_bytes (or the whole frame); it is copied as needed.
  static StatusOr<FrameDecoder> open(std::span<const uint8_t> head);
  const FrameInfo& info() const noexcept;
  // Decodes chunk `chunk` from its body into dst (the whole context's view), layers limited by
  // options.layer_begin/end.
  Status decode_chunk(uint32_t chunk, std::span<const uint8_t> body, const KVView& dst,
                      const DecodeOptions& options = {}) const;

 private:
  std::shared_ptr<const detail::Decoder> impl_;
};

}  // namespace kvcodec
