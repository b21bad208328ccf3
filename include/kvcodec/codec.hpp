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

// Upper bound on the size of the frame encode_into produces for this shape, dtype and options:
// the raw bytes, plus unit directories and headers, plus a head bound that does not grow with
// tokens (units that coding would expand are stored raw, docs/format.md 4.4). <= 1.05x the raw
// bytes for a 256-token Llama-3-8B chunk at every level. 0 when the arguments are invalid.
size_t max_encoded_size(const KVShape& shape, DType dtype, const EncodeOptions& options) noexcept;

// Encodes the whole context in `src` into `dst`. Returns the frame size. Fails with
// kBufferTooSmall if dst is shorter than needed (max_encoded_size always suffices).
// NaN and +-Inf are kept exactly at every level (lossy levels escape them).
StatusOr<size_t> encode_into(const KVView& src, const EncodeOptions& options,
                             std::span<uint8_t> dst);

// Bytes the decoded chunk and layer range of `options` (clamped to the frame's counts) covers in
// the frame's dtype; 0 for an empty range. Compare with a limit before allocating for a frame.
uint64_t decoded_bytes(const FrameInfo& frame, const DecodeOptions& options = {}) noexcept;

// Decodes a whole frame (or the chunk / layer range in options) into `dst`, whose dtype and
// shape must equal the frame's. Any layout is accepted. Corrupt, truncated or unknown-version
// frames are errors; so is a `frame` longer than the frame's frame_bytes (kCorruptData: a frame
// is exactly frame_bytes long, docs/format.md) and a range larger than
// options.max_decoded_bytes (kResourceExhausted). dst may be partially written on error.
Status decode_into(std::span<const uint8_t> frame, const KVView& dst,
                   const DecodeOptions& options = {});

// Decodes chunk `chunk` given the frame's head (read_frame_info's head_bytes prefix, or the
// whole frame) and that chunk's body bytes, into dst (the whole context's view). Layers are
// limited by options.layer_begin/end; chunk range fields of options are ignored.
Status decode_chunk_into(std::span<const uint8_t> head, uint32_t chunk,
                         std::span<const uint8_t> chunk_body, const KVView& dst,
                         const DecodeOptions& options = {});

// Entropy-coder diagnostics of a frame: how close the rANS payload comes to the empirical entropy
// of its symbols under the frame's own model (its tables), and what else the bytes are spent on.
struct FrameStats {
  uint64_t symbols = 0;       // coded symbols, all streams
  uint64_t escapes = 0;       // values stored raw (lossy levels)
  uint64_t word_bytes = 0;    // rANS words
  uint64_t lane_bytes = 0;    // lane streams in all: words + word counts + lane states + padding
  uint64_t escape_bytes = 0;  // escaped raw values with their counts and padding
  uint64_t directory_bytes = 0;  // per-chunk unit directories
  uint64_t stored_units = 0;     // units stored raw (docs/format.md 4.4)
  uint64_t stored_bytes = 0;     // their bytes
  uint64_t raw_plane_bytes = 0;  // lossless byte planes kept raw, padding included (docs/format.md 4.5)
  // Sum over tables of N_t * H(empirical distribution of the symbols coded with table t).
  double entropy_bits = 0;
  // Sum over symbols of -log2(freq / 4096) with the frame's tables (what an ideal coder using
  // the stored model would spend).
  double model_bits = 0;
};

// Decodes every stream of a whole frame (checksums verified) and counts its symbols per table.
StatusOr<FrameStats> analyze_frame(std::span<const uint8_t> frame);

struct Profile;  // profile.hpp

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
  // The same for a transform-coded head (format version 4, profile.hpp): `profile` must be the
  // one the frame names by digest (kInvalidArgument naming the expected digest when it is
  // another one or null); the decoder shares it. Heads of versions 1-3 open as without a
  // profile (it is not used). info() describes the frame as read_frame_info does.
  static StatusOr<FrameDecoder> open(std::span<const uint8_t> head, std::shared_ptr<const Profile> profile);
  const FrameInfo& info() const noexcept;
  // Decodes chunk `chunk` from its body into dst (the whole context's view), layers limited by
  // options.layer_begin/end.
  Status decode_chunk(uint32_t chunk, std::span<const uint8_t> body, const KVView& dst,
                      const DecodeOptions& options = {}) const;

 private:
  std::shared_ptr<const detail::Decoder> impl_;
};

}  // namespace kvcodec
