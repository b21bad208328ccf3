// GPU decoding (CUDA backend; built with -DKVCODEC_CUDA=ON, target kvcodec::cuda).
//
// Decoding is fused: one warp per (chunk, layer, K/V) unit runs the unit's 32 rANS lanes,
// dequantizes, and writes f32/f16/bf16/f8e4m3 elements straight into the destination view --
// contiguous, LMCache [2, L, T, H*D], per-layer tensors or vLLM paged blocks -- in device memory.
// Output is bit-identical to the CPU decoder (codec.hpp); the per-value maths is shared
// (include/kvcodec/detail) and tests compare the two backends.
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
// parsed and validated on the host by create(), which uploads the decode tables into the
// workspace. Chunk checksums (XXH64) are not computed on the device: verify_chunk() checks a
// chunk's host bytes (bytes from the network pass through host memory before the upload);
// chunks already resident on the device are protected by the decoder's structural checks
// (unit sizes, word and escape counts, final lane states), which catch nearly all corruption
// but not all. Corruption found on the device is reported by synchronize() as kCorruptData.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kvcodec/config.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::cuda {

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
  // chunks per decode_async call (tables ~5 KiB each, per-channel grids, error flags, and for
  // group_tokens > 1 one int16 per channel per unit in flight). `head` is the head (or whole
  // frame) on the host. Errors: those of read_frame_info; kInvalidArgument for max_batch 0.
  static StatusOr<size_t> workspace_size(std::span<const uint8_t> head, uint32_t max_batch);

  // Parses `head` on the host and enqueues the upload of the decode tables into `workspace_dev`
  // (device memory, 16-byte aligned, workspace_size bytes or more) on `stream`. Allocates host
  // memory (the metadata and a pinned error word): call it once per frame, not per chunk.
  // Errors: kUnavailable without a CUDA device; head errors; kBufferTooSmall for a small
  // workspace; kInvalidArgument for a misaligned workspace; kInternal for CUDA failures.
  static StatusOr<Decoder> create(std::span<const uint8_t> head, void* workspace_dev, size_t workspace_bytes,
                                  uint32_t max_batch, cudaStream_t stream);

  Decoder(Decoder&&) noexcept;
  Decoder& operator=(Decoder&&) noexcept;
  ~Decoder();

  const FrameInfo& info() const noexcept;

  // Checks the XXH64 checksum of chunk `chunk`'s body held in host memory (before uploading it).
  // kChecksumMismatch, kOutOfRange for a bad index, kCorruptData for a wrong size.
  Status verify_chunk(uint32_t chunk, std::span<const uint8_t> host_body) const;

  // Enqueues decoding of `chunks` (at most max_batch, distinct destinations) into `dst_dev`,
  // layers [layer_begin, min(layer_end, layers)). Asynchronous: no synchronisation, no
  // allocation; the list of chunks is copied into the workspace before returning.
  // dst_dev is a KVView (tensor.hpp) of the frame's dtype and shape whose pointers are device
  // pointers: `data`; for per-layer and paged views the `layer_k`/`layer_v` arrays themselves
  // and the `block_table` are device arrays too. Block table entries are checked on the device
  // when used (an entry outside [0, num_blocks) is reported as corrupt data by synchronize).
  // Errors (nothing enqueued): kInvalidArgument for a mismatching or malformed view, too many
  // chunks or an empty layer range; kOutOfRange for a chunk index; kInternal on launch failure.
  Status decode_async(std::span<const DeviceChunk> chunks, const KVView& dst_dev, cudaStream_t stream,
                      uint32_t layer_begin = 0, uint32_t layer_end = UINT32_MAX);

  // Device address of a uint32 that the last decode_async leaves non-zero if any unit failed,
  // for callers that poll it themselves instead of calling synchronize.
  const uint32_t* error_flag_dev() const noexcept;

  // Waits for `stream` and returns the outcome of the last decode_async: OK, or kCorruptData
  // naming the first failing chunk, layer and reason; kInternal for CUDA errors.
  Status synchronize(cudaStream_t stream);

 private:
  struct Impl;
  explicit Decoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Convenience for tools and tests (allocates and synchronises; not for hot paths): decodes a
// whole frame held in device memory into dst_dev.
Status decode_frame(const uint8_t* frame_dev, std::span<const uint8_t> head, const KVView& dst_dev,
                    cudaStream_t stream);

// ---- Benchmark (kvcodec bench --backend cuda) -------------------------------------------------
struct BenchResult {
  std::string device;         // GPU name
  uint64_t raw_bytes = 0;     // uncompressed bytes of the cache
  uint64_t frame_bytes = 0;   // compressed frame (encoded on the CPU)
  int iterations = 0;
  // Throughputs in GB/s (1e9 bytes per second) of uncompressed bytes, medians over the
  // iterations, timed with CUDA events on one stream:
  double decode_gbps = 0;     // whole frame, device -> device view
  double copy_gbps = 0;       // cudaMemcpy device -> device of raw_bytes (bandwidth ceiling)
  double h2d_raw_gbps = 0;    // raw_bytes host (pinned) -> device
  double h2d_frame_gbps = 0;  // frame_bytes host (pinned) -> device, per uncompressed byte
  double decode_ms = 0, copy_ms = 0, h2d_raw_ms = 0, h2d_frame_ms = 0;
};

// Encodes `src` (host memory) on the CPU with `options`, then on the GPU measures decoding the
// frame next to a device-to-device copy and host-to-device transfers of the raw and compressed
// bytes, and checks that the GPU output equals the CPU decoder's bit for bit (kInternal if not).
StatusOr<BenchResult> bench(const KVView& src, const EncodeOptions& options, int iterations);

}  // namespace kvcodec::cuda
