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
// Stores: "mem:" (process-local map), "file:DIR" (one file per key, atomic writes),
// "redis://HOST:PORT[/DB]" (hiredis, with connect and command timeouts) and
// "redis-cluster://HOST:PORT[,HOST:PORT...]" (a Redis Cluster or Valkey cluster: slot map,
// MOVED/ASK, retries through a failover; docs/streaming.md "Clustered deployment"). Every value read back
// is verified against the manifest's checksums by the readers of this header, so a store that
// loses or corrupts a value yields an error (or a fallback), never a wrong tensor.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/config.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

struct Profile;  // profile.hpp

// ---- Manifest ----------------------------------------------------------------------------------

// Version of the manifest encoding (independent of the frame format and the library version).
// Version 2 adds each level's profile digest; version 1 manifests are still read (and written
// back as version 1: Manifest::profiles_known).
inline constexpr uint16_t kManifestVersion = 2;
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
  // the decoder's throughput in GB/s of decoded KV on the machine that put it: the warm decode
  // of the stored chunk 0 by a FrameDecoder (with the level's profile), as a fetch decodes it --
  // a hint for clients that have not calibrated their own decoder.
  double rel_error = 0;
  double decode_gbps = 0;
  // The digest of the profile the level's frames are transform-coded with (format version 4,
  // profile.hpp): a client needs that profile to decode the level. nullopt: coded without a
  // profile (or a version 1 manifest, which does not say: Manifest::profiles_known).
  std::optional<uint64_t> profile_digest;
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
  // Whether the levels' profile_digest is known: false for a manifest parsed from version 1
  // (a level's head then tells, when it arrives), which serialize_manifest writes back as
  // version 1 (the digests ignored).
  bool profiles_known = true;

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

// Binary encoding: magic, version, shape, levels (with their profile digests), sizes and
// checksums, token ids, and a trailing XXH64 of everything before it (docs/streaming.md has the
// byte layout).
std::vector<uint8_t> serialize_manifest(const Manifest& m);
// Parses and validates (magic, version 1 or 2, checksum, limits, consistency). Never trusts
// sizes before checking them against the buffer.
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

struct WriteOptions {
  // Seconds after the write at which the value expires (0: never). Redis: SET ... EX; mem:
  // expires lazily; file: has no expiry (kInvalidArgument when non-zero).
  uint32_t ttl_seconds = 0;
};

struct KeyValue {
  std::string_view key;
  std::span<const uint8_t> value;
};

// A key-value store of byte strings. Implementations are thread-safe: any number of threads
// may call any method of one store at once (the Redis stores give each call one of a node's
// pooled connections, StoreOptions::connections_per_node).
class Store {
 public:
  virtual ~Store() = default;
  // Stores `value` under `key`, replacing any previous value. Verified: returns OK only once
  // the store has confirmed a value of the right size.
  virtual Status put(std::string_view key, std::span<const uint8_t> value) = 0;
  // kNotFound when the key does not exist; kUnavailable / kTimeout / kIoError on failure.
  virtual StatusOr<std::vector<uint8_t>> get(std::string_view key) = 0;
  // Appends the value to `out` (a caller's buffer, reused across calls so that its pages are
  // already resident: a server answers from it without another copy). A value of more than
  // `max_bytes` is kCorruptData, and the memory and file stores refuse it before allocating. On
  // failure `out` keeps its size. The default calls get(); the memory and file stores write
  // into `out` directly.
  virtual Status get_append(std::string_view key, std::vector<uint8_t>& out, uint64_t max_bytes);
  virtual StatusOr<bool> exists(std::string_view key) = 0;
  // Removes the key; OK when it did not exist.
  virtual Status remove(std::string_view key) = 0;
  // The URI this store was opened with.
  virtual const std::string& uri() const noexcept = 0;

  // Batches (the Redis stores pipeline them: one round trip per server node). Defaults loop
  // over the single-key calls.
  // Stores every item, each verified as put() does; the first failure is returned (items
  // before it may be stored).
  virtual Status put_many(std::span<const KeyValue> items, const WriteOptions& options);
  // One result per key, in order.
  virtual std::vector<StatusOr<std::vector<uint8_t>>> get_many(std::span<const std::string> keys);
  // Removes every key (in order; OK for keys that did not exist).
  virtual Status remove_many(std::span<const std::string> keys);
  // Every key that starts with `prefix`, sorted. Redis: SCAN over every (master) node, so a
  // listing taken while keys are written may miss or repeat recent ones.
  virtual StatusOr<std::vector<std::string>> list_keys(std::string_view prefix) = 0;
};

struct StoreOptions {
  // Redis: time allowed to establish the TCP connection, and for each command's reply.
  int connect_timeout_ms = 1000;
  int command_timeout_ms = 5000;
  // Redis: connections per server node, opened when concurrent calls need them and reused
  // (1..; values < 1 mean 1). One would make every concurrent call to a node wait for the
  // others' transfers (docs/results/scale.md).
  int connections_per_node = 4;
  // Redis Cluster: how long one call keeps retrying (with backoff from 20 ms to 500 ms) while
  // a slot's master is unreachable, the cluster is down or a slot is being moved -- long
  // enough for a replica to be promoted (cluster-node-timeout plus the election). After it
  // the call fails with the last error (kUnavailable / kTimeout / kIoError).
  int failover_timeout_ms = 15000;
  // Redis AUTH, used when the URI carries no credentials: password (empty: no AUTH) and the
  // ACL user (empty: the default user).
  std::string user;
  std::string password;
};

// Opens "mem:", "file:DIR" (created if missing), "redis://[[USER]:PASSWORD@]HOST:PORT[/DB]" or
// "redis-cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]" ("valkey://" and
// "valkey-cluster://" are the same protocols). A Redis store connects (and PINGs; a cluster
// store reads the slot map) at open: kUnavailable when no server can be reached.
StatusOr<std::unique_ptr<Store>> open_store(std::string_view uri, const StoreOptions& options = {});

// ---- Putting and reading contexts -------------------------------------------------------------

struct PutOptions {
  std::vector<int> levels = {0, 2, 4, 6, 8};  // each 0..kMaxLevel; stored in ascending order
  uint32_t chunk_tokens = 256;
  // Token ids of the context, one per token (empty: no text fallback).
  std::vector<int32_t> text_tokens;
  int threads = 1;  // encoder and decoder threads (0 = all hardware threads)
  // Decode every level once to record its rel_error and decode_gbps in the manifest (costs one
  // decode per level, plus three of its chunk 0 for the speed) -- of the whole context, or of
  // its first `measure_chunks` chunks when non-zero (a sample, for large contexts).
  bool measure = true;
  uint32_t measure_chunks = 0;
  // Every key of the context expires this many seconds after it was written (0: never). The
  // manifest is written last, so it outlives the pieces by the time the put took: a fetch of
  // an expiring context finds missing pieces (a fallback), never a hole.
  uint32_t ttl_seconds = 0;
  // Receives the encoder's kEncode events and kStoreError when a write fails (metrics.hpp); not
  // owned. nullptr (default): none.
  MetricsSink* metrics = nullptr;
  // Transform-code every lossy level with this profile (profile.hpp, `kvcodec calibrate`; level
  // 0 stays lossless and untransformed). Each level's head names the profile's digest, and
  // readers need the same profile (FetchOptions::profile, FrameDecoder::open). nullptr: none.
  std::shared_ptr<const Profile> profile;
  // With a profile whose keys are coded before RoPE: the RoPE position of the context's first
  // token (first_position + tokens <= 2^24).
  uint32_t first_position = 0;
};

// Encodes `kv` once per level, stores every head and chunk body (one put_many per level) and
// then the manifest (last, so a readable manifest always describes a complete context).
// Returns the manifest.
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
// The same, appended to `out` (Store::get_append, at most the manifest's size read); on failure
// `out` keeps its size.
Status append_head(Store& store, std::string_view id, const Manifest& m, int level, std::vector<uint8_t>& out);
Status append_chunk(Store& store, std::string_view id, const Manifest& m, int level, uint32_t chunk,
                    std::vector<uint8_t>& out);
// Removes the manifest first (so the context stops being visible) then every head and chunk,
// in one remove_many. kNotFound when the context has no manifest.
Status remove_context(Store& store, std::string_view id);
// Ids of the contexts whose manifest is in the store, sorted.
StatusOr<std::vector<std::string>> list_contexts(Store& store);

// kInvalidArgument naming the digest it needs when level `l` is transform-coded with another
// profile than `p` (or with one when `p` is null), as FrameDecoder::open would say on its head;
// OK when it needs none, or `p` is its profile, or the manifest does not say (version 1).
Status check_level_profile(const Manifest& m, const ManifestLevel& l, const Profile* p);

// Checks a head or chunk body received from anywhere against the manifest.
Status verify_head(const Manifest& m, int level, std::span<const uint8_t> head);
Status verify_chunk(const Manifest& m, int level, uint32_t chunk, std::span<const uint8_t> body);

}  // namespace kvcodec
