// Multi-level contexts and the stores that hold them (design: docs/streaming.md).
//
// A context is stored once per quality level. Each level's frame (format.hpp) is split into its
// head (header + model section + chunk index) and one body per chunk, so that a client can
// fetch any chunk at any level on its own. A small manifest lists the shape, the levels, the
// size and XXH64 checksum of every head and chunk body and, when the context came from text,
// the token ids of every chunk (for the text fallback: recompute the chunk by prefill). A
// client reads the manifest first and plans its fetch from it.
//
// Keys (one Redis Cluster hash slot per context, thanks to the {id} hash tag):
//   kvc:{<id>}:manifest        the manifest (serialize_manifest)
//   kvc:{<id>}:L<level>:head   head of the level's frame
//   kvc:{<id>}:L<level>:C<c>   body of chunk c at that level
//
// Stores: "mem:" (process-local map), "file:DIR" (one file per key, atomic writes) and
// "redis://HOST:PORT[/DB]" (hiredis, with connect and command timeouts). Every value read back
// is verified against the manifest's checksums by the readers of this header, so a store that
// loses or corrupts a value yields an error (or a fallback), never a wrong tensor.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/config.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

// ---- Manifest ----------------------------------------------------------------------------------

// Version of the manifest encoding (independent of the frame format and the library version).
inline constexpr uint16_t kManifestVersion = 1;
inline constexpr uint8_t kManifestMagic[4] = {'K', 'V', 'C', 'M'};

struct ManifestChunk {
  uint32_t size = 0;      // bytes of the chunk body at this level
  uint64_t checksum = 0;  // XXH64 (seed 0) of the body, as in the frame's chunk index
};

struct ManifestLevel {
  int level = 0;               // 0 (lossless) .. kMaxLevel
  uint64_t head_bytes = 0;     // size of the frame head
  uint64_t head_checksum = 0;  // XXH64 (seed 0) of the head
  // Measured by put_context when it encoded the level (0 when not measured):
  // relative error ||x - x_hat||_2 / ||x||_2 of the whole decoded context (0 at level 0), and
  // the decoder's throughput in GB/s of decoded KV on the machine that put it -- a hint for
  // clients that have not calibrated their own decoder.
  double rel_error = 0;
  double decode_gbps = 0;
  std::vector<ManifestChunk> chunks;

  // Head plus every chunk body: the whole frame.
  uint64_t frame_bytes() const noexcept;
};

struct Manifest {
  DType dtype = DType::kF16;
  KVShape shape;
  uint32_t chunk_tokens = 0;
  std::vector<ManifestLevel> levels;  // distinct levels, ascending
  // Token ids of the context, one per token position (empty when the context has no text).
  std::vector<int32_t> text_tokens;

  uint32_t num_chunks() const noexcept;
  // First token and token count of chunk c.
  uint32_t chunk_token_begin(uint32_t c) const noexcept { return c * chunk_tokens; }
  uint32_t chunk_token_count(uint32_t c) const noexcept;
  bool has_text() const noexcept { return !text_tokens.empty(); }
  // The level entry for `level`, or nullptr.
  const ManifestLevel* find_level(int level) const noexcept;
  // Uncompressed bytes of chunk c (both K and V, all layers).
  uint64_t raw_chunk_bytes(uint32_t c) const noexcept;
};

// Binary encoding: magic, version, shape, levels, sizes and checksums, token ids, and a trailing
// XXH64 of everything before it (docs/streaming.md has the byte layout).
std::vector<uint8_t> serialize_manifest(const Manifest& m);
// Parses and validates (magic, version, checksum, limits, consistency). Never trusts sizes
// before checking them against the buffer.
StatusOr<Manifest> parse_manifest(std::span<const uint8_t> bytes);
// A human/machine-readable summary (no chunk checksums or token ids) for CLI output.
std::string manifest_json(const Manifest& m, std::string_view id);

// ---- Keys --------------------------------------------------------------------------------------

// Context ids: 1..200 characters from [A-Za-z0-9._-] (safe in keys, file names and URLs).
Status validate_context_id(std::string_view id);
std::string manifest_key(std::string_view id);
std::string head_key(std::string_view id, int level);
std::string chunk_key(std::string_view id, int level, uint32_t chunk);

// ---- Stores ------------------------------------------------------------------------------------

// A key-value store of byte strings. Implementations are thread-safe.
class Store {
 public:
  virtual ~Store() = default;
  // Stores `value` under `key`, replacing any previous value. Verified: returns OK only once
  // the store has confirmed a value of the right size.
  virtual Status put(std::string_view key, std::span<const uint8_t> value) = 0;
  // kNotFound when the key does not exist; kUnavailable / kTimeout / kIoError on failure.
  virtual StatusOr<std::vector<uint8_t>> get(std::string_view key) = 0;
  virtual StatusOr<bool> exists(std::string_view key) = 0;
  // Removes the key; OK when it did not exist.
  virtual Status remove(std::string_view key) = 0;
  // The URI this store was opened with.
  virtual const std::string& uri() const noexcept = 0;
};

struct StoreOptions {
  // Redis: time allowed to establish the TCP connection, and for each command's reply.
  int connect_timeout_ms = 1000;
  int command_timeout_ms = 5000;
};

// Opens "mem:", "file:DIR" (created if missing) or "redis://HOST:PORT[/DB]". A Redis store
// connects (and PINGs) at open: kUnavailable when the server cannot be reached.
StatusOr<std::unique_ptr<Store>> open_store(std::string_view uri, const StoreOptions& options = {});

// ---- Putting and reading contexts -------------------------------------------------------------

struct PutOptions {
  std::vector<int> levels = {0, 2, 4, 6, 8};  // each 0..kMaxLevel; stored in ascending order
  uint32_t chunk_tokens = 256;
  // Token ids of the context, one per token (empty: no text fallback).
  std::vector<int32_t> text_tokens;
  int threads = 1;  // encoder and decoder threads (0 = all hardware threads)
  // Decode every level once to record its rel_error and decode_gbps in the manifest (costs one
  // decode per level) -- of the whole context, or of its first `measure_chunks` chunks when
  // non-zero (a sample, for large contexts).
  bool measure = true;
  uint32_t measure_chunks = 0;
};

// Encodes `kv` once per level, stores every head and chunk body and then the manifest (last, so
// a readable manifest always describes a complete context). Returns the manifest.
StatusOr<Manifest> put_context(Store& store, std::string_view id, const KVView& kv,
                               const PutOptions& options);
// Reads and parses the manifest of `id`.
StatusOr<Manifest> get_manifest(Store& store, std::string_view id);
// Reads a level's head / a chunk body and verifies its size and checksum against the manifest
// (kChecksumMismatch / kCorruptData when they differ).
StatusOr<std::vector<uint8_t>> get_head(Store& store, std::string_view id, const Manifest& m,
                                        int level);
StatusOr<std::vector<uint8_t>> get_chunk(Store& store, std::string_view id, const Manifest& m,
                                         int level, uint32_t chunk);
// Removes the manifest first (so the context stops being visible) then every head and chunk.
Status remove_context(Store& store, std::string_view id);

// Checks a head or chunk body received from anywhere against the manifest.
Status verify_head(const Manifest& m, int level, std::span<const uint8_t> head);
Status verify_chunk(const Manifest& m, int level, uint32_t chunk, std::span<const uint8_t> body);

}  // namespace kvcodec
