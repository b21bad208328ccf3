// GPU encoding and decoding (CUDA backend; built with -DKVCODEC_CUDA=ON, target kvcodec::cuda).
//
// Both directions work on KV caches in device memory, in any layout of tensor.hpp (contiguous,
// LMCache [2, L, T, H*D], per-layer tensors or vLLM paged blocks through a device block table),
// and are byte-identical to the CPU codec (codec.hpp): GPU frames equal encode_into's frames,
// GPU-decoded tensors equal decode_into's. The per-value maths is shared (the private
// headers under src/common, src/encode and src/decode) and tests compare the backends.
//
// This header needs no CUDA header: streams and events are the CUDA runtime's own handle types
// (CudaStream is cudaStream_t, CudaEvent is cudaEvent_t), named through their forward-declared
// structs, so any cudaStream_t or cudaEvent_t is passed as is.
//
// ---- Decoding ----
// Decoding is fused: one warp per (chunk, layer, K/V) unit runs the unit's 32 rANS lanes,
// dequantizes, and writes f32/f16/bf16/f8e4m3 elements straight into the destination view.
//
// Usage (a server decoding chunks as they arrive):
//
//   auto bytes = kvcodec::cuda::Decoder::workspace_size(head, max_batch);      // once per frame
//   cudaMallocAsync(&ws, *bytes, stream);                                       // caller-owned
//   auto dec = kvcodec::cuda::Decoder::create(head, ws, *bytes, max_batch, stream);
//   dec->decode_async(chunks, dst_view, stream);   // enqueue; no sync, no allocation
//   ...
//   Status s = dec->synchronize(stream);          // the one sync point: device errors -> Status
//
// Ownership and threading: the caller owns the workspace, the chunk bodies, the destination
// and the stream; they must stay valid until the work enqueued on the stream has run. A
// Decoder holds the host copy of the frame's metadata; one Decoder serves one stream at a time
// (its error flags live in the workspace and are reset by every decode_async).
//
// What runs where: the frame head (header, model section, chunk index: a few MB at most) is
// parsed and validated on the host by create(), which uploads the decode tables and the chunk
// index into the workspace. Chunk checksums are verified on the device by decode_async, before
// any unit is decoded: format version 2 checksums 4 KiB segments independently
// (docs/format.md, "Checksums"), one thread per segment. A chunk whose checksum fails writes
// nothing into the destination and synchronize() reports kChecksumMismatch. Callers that have
// already verified the bytes (verify_chunk() on the host copy) can turn this off in create();
// the decoder's structural checks (unit sizes, word and escape counts, final lane states) then
// remain, and catch nearly all corruption but not all. Structural failures found on the device
// are reported by synchronize() as kCorruptData.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kvcodec/config.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

// The CUDA runtime's opaque stream and event types (cudaStream_t is CUstream_st*).
struct CUstream_st;
struct CUevent_st;

namespace kvcodec::cuda {

using CudaStream = ::CUstream_st*;  // = cudaStream_t
using CudaEvent = ::CUevent_st*;    // = cudaEvent_t

// OK when a CUDA device is usable; kUnavailable otherwise (same as
// backend_status(Backend::kCuda)).
Status device_status();

// Chunk `index` of a frame whose body (FrameInfo::chunks[index].size bytes) is in device
// memory at body_dev. Bodies need no alignment: they may point into a whole frame uploaded as is.
struct DeviceChunk {
  uint32_t index = 0;
  const uint8_t* body_dev = nullptr;
};

class Decoder {
 public:
  // Bytes of device workspace a Decoder for this frame head needs to decode up to max_batch
  // chunks per decode_async call (tables ~5 KiB each, per-channel grids, error flags, the chunk
  // index, one 8-byte digest per 4 KiB of the largest chunk per batch entry, and for
  // group_tokens > 1 one int16 per channel per unit in flight). `head` is the head (or whole
  // frame) on the host. Errors: those of read_frame_info; kInvalidArgument for max_batch 0.
  static StatusOr<size_t> workspace_size(std::span<const uint8_t> head, uint32_t max_batch);

  // Parses `head` on the host and enqueues the upload of the decode tables and chunk index into
  // `workspace_dev` (device memory, 16-byte aligned, workspace_size bytes or more) on `stream`.
  // With verify_checksums, every decode_async verifies its chunks' checksums on the device
  // first (one extra read of the compressed bytes). Allocates host memory (the metadata and a
  // pinned error word): call it once per frame, not per chunk.
  // Errors: kUnavailable without a CUDA device; head errors; kBufferTooSmall for a small
  // workspace; kInvalidArgument for a misaligned workspace; kInternal for CUDA failures.
  static StatusOr<Decoder> create(std::span<const uint8_t> head, void* workspace_dev, size_t workspace_bytes,
                                  uint32_t max_batch, CudaStream stream, bool verify_checksums = true);

  Decoder(Decoder&&) noexcept;
  Decoder& operator=(Decoder&&) noexcept;
  ~Decoder();

  const FrameInfo& info() const noexcept;

  // Checks the checksum of chunk `chunk`'s body held in host memory (before uploading it).
  // kChecksumMismatch, kOutOfRange for a bad index, kCorruptData for a wrong size.
  Status verify_chunk(uint32_t chunk, std::span<const uint8_t> host_body) const;

  // Enqueues decoding of `chunks` (at most max_batch, distinct destinations) into `dst_dev`,
  // layers [layer_begin, min(layer_end, layers)). Asynchronous: no synchronisation, no
  // allocation, no host-to-device copy (the chunk list travels in the kernels' parameters, up
  // to 128 chunks per launch); `chunks` may be reused as soon as the call returns.
  // dst_dev is a KVView (tensor.hpp) of the frame's dtype and shape whose pointers are device
  // pointers: `data`; for per-layer and paged views the `layer_k`/`layer_v` arrays themselves
  // and the `block_table` are device arrays too. Block table entries are checked on the device
  // when used (an entry outside [0, num_blocks) is reported as corrupt data by synchronize).
  // Errors (nothing enqueued): kInvalidArgument for a mismatching or malformed view, too many
  // chunks or an empty layer range; kOutOfRange for a chunk index; kInternal on launch failure.
  Status decode_async(std::span<const DeviceChunk> chunks, const KVView& dst_dev, CudaStream stream,
                      uint32_t layer_begin = 0, uint32_t layer_end = UINT32_MAX);

  // Device address of a uint32 that the last decode_async leaves non-zero if any unit failed,
  // for callers that poll it themselves instead of calling synchronize.
  const uint32_t* error_flag_dev() const noexcept;

  // Waits for `stream` and returns the outcome of the last decode_async: OK; kChecksumMismatch
  // naming the first chunk whose checksum failed on the device; kCorruptData naming the first
  // failing chunk, layer and reason; kInternal for CUDA errors.
  Status synchronize(CudaStream stream);

 private:
  struct Impl;
  explicit Decoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Convenience for tools and tests (allocates and synchronises; not for hot paths): decodes a
// whole frame held in device memory into dst_dev.
Status decode_frame(const uint8_t* frame_dev, std::span<const uint8_t> head, const KVView& dst_dev,
                    CudaStream stream, bool verify_checksums = true);

// ---- Encoding --------------------------------------------------------------------------------
// A whole encode is enqueued on the caller's stream, with no host round trip:
//
//   auto bytes = kvcodec::cuda::Encoder::workspace_size(shape, dtype, options);
//   cudaMallocAsync(&ws, *bytes, stream);                                      // caller-owned
//   auto enc = kvcodec::cuda::Encoder::create(shape, dtype, options, ws, *bytes, stream);  // once
//   enc->encode_async(src_view, dst, capacity, stream);  // enqueue; no sync, no allocation
//   StatusOr<size_t> n = enc->synchronize(stream);       // frame size (or frame_bytes_dev())
//
// encode_async runs three device phases, each a few kernels (src/encode/warp_encode.hpp and
// src/encode/block_model.hpp hold their code):
//  * analysis: one thread per (layer, K/V, channel) computes the channel's statistics in the
//    CPU's order and precision, its grid, and the histograms of its symbol values;
//  * tables: one block per (layer, K/V) clusters the channels, builds and normalises the
//    probability tables and the lane codes, and serialises the layer's model -- the decisions
//    of the CPU encoder, in integer arithmetic;
//  * lanes and frame: one warp per (chunk, layer, K/V) runs the 32 rANS lanes; the head (header,
//    model section, chunk index), the chunks' places and sizes and the checksums are computed
//    and written on the device.
// The frame is byte-identical to encode_into's.
//
// Ownership and threading: the caller owns the workspace, the source, the destination and the
// stream; they must stay valid, and the source unchanged, until the work enqueued on the stream
// has run. create() allocates host memory (a pinned result word) and uploads constants;
// encode_async allocates nothing and does not synchronise. One Encoder serves one stream at a
// time; it encodes any number of contexts of its shape, dtype and options in turn.
class Encoder {
 public:
  // Bytes of device workspace for encoding contexts of this shape, dtype and options: per
  // element 2 bytes per lane stream (worst-case word staging) plus, at lossy levels, the element
  // size (escape staging), plus the histograms, per-channel grids, the tables and worst-case
  // model staging. Errors: kInvalidArgument for invalid shapes, dtypes or options.
  static StatusOr<size_t> workspace_size(const KVShape& shape, DType dtype, const EncodeOptions& options);

  // Errors: kUnavailable without a CUDA device; kInvalidArgument for invalid arguments or a
  // misaligned (not 16-byte) workspace; kBufferTooSmall for a small workspace; kInternal for
  // CUDA failures.
  static StatusOr<Encoder> create(const KVShape& shape, DType dtype, const EncodeOptions& options,
                                  void* workspace_dev, size_t workspace_bytes, CudaStream stream);

  Encoder(Encoder&&) noexcept;
  Encoder& operator=(Encoder&&) noexcept;
  ~Encoder();

  // For profiling (cuda::bench): events encode_async records on the stream between its phases.
  struct PhaseEvents {
    CudaEvent analyzed = nullptr;  // after the analysis kernels
    CudaEvent tabled = nullptr;    // after the table kernel
  };

  // Enqueues the encoding of src_dev into the frame at dst_dev, dst_capacity bytes of device
  // memory (max_encoded_size always suffices). src_dev is a KVView of the Encoder's dtype and
  // shape whose pointers are device pointers (data; for per-layer and paged views the layer
  // arrays and the block table too). Asynchronous: the frame size lands at frame_bytes_dev()
  // and is returned by synchronize, which also reports the errors found on the device (a
  // source block table entry outside [0, num_blocks), a frame larger than dst_capacity).
  // Errors (nothing enqueued): kInvalidArgument for a mismatching or malformed view or a null
  // destination; kBufferTooSmall when dst_capacity cannot hold even the header and chunk index;
  // kInternal on launch failure.
  Status encode_async(const KVView& src_dev, uint8_t* dst_dev, size_t dst_capacity, CudaStream stream,
                      const PhaseEvents* events = nullptr);

  // Device address of the frame size that the last encode_async leaves (a uint64).
  const uint64_t* frame_bytes_dev() const noexcept;

  // Waits for `stream`; returns the size of the frame the last encode_async wrote, or
  // kBufferTooSmall (the frame did not fit dst_capacity; dst holds no frame), kInvalidArgument
  // (bad source block table entry), kInternal for CUDA errors.
  StatusOr<size_t> synchronize(CudaStream stream);

 private:
  struct Impl;
  explicit Encoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Convenience for tools and tests (allocates and synchronises; not for hot paths): encodes the
// context in src_dev into dst_dev and returns the frame size.
StatusOr<size_t> encode_frame(const KVView& src_dev, const EncodeOptions& options, uint8_t* dst_dev,
                              size_t dst_capacity, CudaStream stream);

// ---- Benchmark (kvcodec bench --backend cuda) -------------------------------------------------
struct BenchResult {
  std::string device;         // GPU name
  uint64_t raw_bytes = 0;     // uncompressed bytes of the cache
  uint64_t frame_bytes = 0;   // compressed frame
  int iterations = 0;
  // Throughputs in GB/s (1e9 bytes per second) of uncompressed bytes, medians over the
  // iterations, timed with CUDA events on one stream:
  double encode_gbps = 0;     // whole context, device view -> device frame
  double decode_gbps = 0;     // whole frame, device -> device view, checksums verified on the device
  double decode_unverified_gbps = 0;  // the same without the device checksums (verified elsewhere)
  double copy_gbps = 0;       // cudaMemcpy device -> device of raw_bytes (bandwidth ceiling)
  double h2d_raw_gbps = 0;    // raw_bytes host (pinned) -> device
  double h2d_frame_gbps = 0;  // frame_bytes host (pinned) -> device, per uncompressed byte
  double encode_ms = 0, decode_ms = 0, decode_unverified_ms = 0, copy_ms = 0, h2d_raw_ms = 0, h2d_frame_ms = 0;
  // Where encoding spends its time (medians of the device phases): analysis (statistics, grids,
  // histograms), tables (clustering, normalisation, model) and lanes + frame assembly.
  double encode_analyze_ms = 0, encode_tables_ms = 0, encode_lanes_ms = 0;
};

// Uploads `src` (host memory) and measures, on the GPU, encoding it and decoding the frame, next
// to a device-to-device copy and host-to-device transfers of the raw and compressed bytes.
// Checks that the GPU frame equals the CPU encoder's byte for byte and the GPU output the CPU
// decoder's bit for bit (kInternal if not).
StatusOr<BenchResult> bench(const KVView& src, const EncodeOptions& options, int iterations);

}  // namespace kvcodec::cuda
