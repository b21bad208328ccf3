// Streaming a stored context over TCP: link emulation, the server and the pipelined client
// (design and wire protocol: docs/streaming.md).
//
//   auto store = open_store("redis://127.0.0.1:6379");          // store.hpp
//   put_context(**store, "doc-42", kv.view(), {});               // once, by whoever owns the KV
//   ServerOptions so;  so.link = LinkConfig{LinkTrace::constant(1.0), 0.002};
//   auto server = Server::start(std::move(*store), so);          // kvcodec serve
//   FetchOptions fo;  fo.port = (*server)->port();  fo.id = "doc-42";
//   KVCache out;  FetchReport report;
//   Status s = fetch_context(fo, &out, &report);                  // kvcodec fetch
//
// The client asks the Controller (controller.hpp) which level to fetch for each chunk, keeps
// requests pipelined on one connection, verifies every chunk against the manifest's checksum on
// receipt and decodes on its own thread while the next chunks are on the wire. A chunk that
// arrives corrupt, is lost with a dropped connection or times out is requested again; one the
// server cannot deliver (missing or corrupt in its store, store down) is fetched at another
// level, and failing that recomputed from its text. Every such event is recorded in the
// FetchReport; the destination never holds bytes that failed verification.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/controller.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/store.hpp"

namespace kvcodec {

// ---- Link emulation (in the sender) -------------------------------------------------------------

// What an emulated link adds to a fast (loopback) connection: a bandwidth limit following a
// trace, and a round-trip delay. Without a trace the bandwidth is unlimited.
struct LinkConfig {
  std::optional<LinkTrace> trace;
  double rtt_s = 0;

  Status validate() const;
};

// The sender side of an emulated link, shared by all connections of a server (they share the
// bottleneck). It implements controller.hpp's timing model on the real clock: a request that
// reaches the server at time t is answered on the link from max(t + rtt/2, link free), its bytes
// leave at the trace's bandwidth, and every byte is released to the socket rtt/2 after it left
// the emulated link -- so the client sees the response's first byte at start + rtt/2 and its
// last byte at finish + rtt/2, exactly as the simulator predicts. Bytes are released in slices
// of about a millisecond of link time (a token bucket one slice deep).
//
// Trace time 0 is the first chunk request after the link was idle with no connection open (one
// fetch on a fresh server sees the trace from its start; reconnecting while another connection
// is open keeps the clock). Manifest requests are the client's setup: answered at once, outside
// the emulated link.
class LinkEmulator {
 public:
  explicit LinkEmulator(LinkConfig config);

  // Called when a connection opens / closes (restarts the trace clock when the link was idle).
  void connection_opened();
  void connection_closed();
  // Restarts the trace clock at the next request.
  void restart_clock();
  // Seconds on the trace clock now (starting the clock if needed).
  double now_s();
  bool clock_running() const;

  // Schedules a response of `bytes` to a request that arrived at `arrival_s`, whose bytes were
  // ready to send at `ready_s` (trace clock; the server's own work is not part of the emulated
  // link, so a response never starts before it exists). Returns [start_s, finish_s] of its
  // transmission: start = max(arrival + rtt/2, ready, link free).
  struct Slot {
    double start_s = 0, finish_s = 0;
  };
  Slot schedule(double arrival_s, double ready_s, uint64_t bytes);
  // Trace-clock time at which the first `prefix` bytes of a response scheduled at `slot` have
  // all been released to the socket (start + rtt/2 for prefix 0).
  double release_time(const Slot& slot, uint64_t prefix) const noexcept;
  // Bytes of link time in about a millisecond at the bandwidth in force at `t_s` (the slice
  // size used for pacing), at least 4 KiB.
  uint64_t slice_bytes(double t_s) const noexcept;
  // Sleeps until trace-clock time t_s. False when woken early by shutdown().
  bool sleep_until(double t_s);
  // Wakes every sleeper now and for good (a server that stops).
  void shutdown();
  const LinkConfig& config() const noexcept { return config_; }

 private:
  LinkConfig config_;
  struct State;
  std::shared_ptr<State> state_;
};

// ---- Server ---------------------------------------------------------------------------------------

// Failures a server can inject into its responses, to test and demonstrate how clients cope.
// Each counter is consumed as faults are injected (thread-safe; set with Server::inject).
struct FaultInjection {
  int corrupt_chunks = 0;        // flip one byte in the body of the next N chunk responses
  int drop_mid_chunk = 0;        // close the connection half-way through the next N chunk responses
  int stall_mid_chunk = 0;       // stop sending half-way through the next N chunk responses...
  int stall_ms = 0;              // ...for this long
};

struct ServerOptions {
  std::string host = "127.0.0.1";  // address to listen on
  uint16_t port = 0;               // 0: any free port (see Server::port)
  LinkConfig link;
  // Connections served at once. When a new one would exceed it (or max_connections_per_peer for
  // its address), the idlest connection of that scope with no response in flight is closed to
  // make room; only when every one is busy is the new connection refused (closed). So idle or
  // slow peers cannot lock real clients out.
  int max_connections = 64;
  int max_connections_per_peer = 32;
  // A connection with no response in flight and no request for this long is closed.
  int idle_timeout_ms = 60000;
  // A request must arrive whole, and a response be taken by the peer, without a pause this long.
  int request_timeout_ms = 5000;
  // Response bytes answered but not yet sent, per connection and over all connections: at the
  // limit the server stops reading that connection's requests (TCP backpressure) until the peer
  // has read enough. A limit can be exceeded by one response (at most a chunk and its head).
  uint64_t max_inflight_bytes_per_connection = 64ull << 20;
  uint64_t max_inflight_bytes = 1ull << 30;
  // Receives a kRequest event per request answered, kStoreError / kChecksumFailure when the store
  // fails or holds corrupt bytes (metrics.hpp); not owned, must outlive the server. nullptr: none.
  MetricsSink* metrics = nullptr;
};

struct ServerStats {
  uint64_t connections = 0;
  uint64_t requests = 0;
  uint64_t error_responses = 0;  // requests answered with an error (not found, store down, ...)
  uint64_t bytes_sent = 0;
  uint64_t refused = 0;          // connections closed at once: every slot busy
  uint64_t evicted = 0;          // idle connections closed to make room for a new one
  uint64_t idle_closed = 0;      // connections closed by idle_timeout_ms
  uint64_t peak_inflight_bytes = 0;  // most response bytes held at once, all connections
};

class Server {
 public:
  // Listens and serves in background threads until stop() or destruction.
  static StatusOr<std::unique_ptr<Server>> start(std::shared_ptr<Store> store, const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  uint16_t port() const noexcept;
  // Closes the listening socket and every connection, and joins the threads. Idempotent.
  void stop();
  // Adds to the pending faults (test and demo hook).
  void inject(const FaultInjection& faults);
  ServerStats stats() const;
  // Restarts the link's trace clock at the next request (e.g. between two fetches of a demo).
  void restart_link_clock();

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---- Client ---------------------------------------------------------------------------------------

// Recomputes chunk `chunk` (tokens [token_begin, token_begin + tokens.size())) into `dst`, the
// whole context's view, from its token ids -- by prefill on top of the KV already in dst for
// the earlier tokens (the client calls it only once every earlier chunk is in place).
using RecomputeFn = std::function<Status(uint32_t chunk, uint32_t token_begin,
                                         std::span<const int32_t> tokens, const KVView& dst)>;

struct ChunkReport {
  uint32_t chunk = 0;
  int level = -1;            // level delivered, -1: recomputed from text
  std::string via;           // "L4", "text"
  uint64_t bytes = 0;        // bytes received for the delivered copy (head included; 0 for text)
  double request_s = 0;      // request sent (seconds on the stream clock, see FetchReport)
  double first_byte_s = 0;   // first byte of its response
  double arrival_s = 0;      // last byte received and verified
  double ready_s = 0;        // decoded or recomputed into the destination
  double estimate_gbps = 0;  // the controller's bandwidth estimate when it chose
  int attempts = 0;          // requests sent for this chunk
  bool fallback = false;     // delivered another way than first chosen, after a failure
  bool abandoned_kv = false; // the controller gave up waiting for its KV and recomputed it
  // Seconds of decoder work (KV: its decode alone, not the wait in the decoder's queue) or of
  // recompute (text), measured on the worker.
  double work_s = 0;
  // work_s plus the time the worker, free and with the job queued, took to start it (thread
  // scheduling on a busy machine): the decoder time the controller learns from.
  double service_s = 0;
};

// Decode throughput of one stored level in a fetch: the seed the controller started from and
// what the fetch's own chunks measured (warm: reused decoder and buffers).
struct DecodeSpeed {
  int level = -1;
  double seed_gbps = 0;      // calibration (or the manifest's / FetchOptions::decode_gbps)
  double measured_gbps = 0;  // decoded bytes / decode seconds (work_s) over this fetch's chunks; 0: none
  double effective_gbps = 0; // decoded bytes / decoder service seconds (service_s): what the
                             // decoder delivered, scheduling delays included
  double final_gbps = 0;     // the controller's estimate when the fetch ended
  uint32_t chunks = 0;
};

struct FetchFailure {
  double time_s = 0;
  int chunk = -1;            // -1: not about one chunk (connection, manifest)
  int level = -1;
  Status status;
  std::string action;        // what the client did: "retry", "level 6", "text", "reconnect", "abort",
                             // "skip" (a level not planned: it needs another profile)
};

struct FetchReport {
  std::string id;
  std::string server;
  KVShape shape;
  DType dtype = DType::kF16;
  uint32_t chunk_tokens = 0;
  double slo_s = 0;
  // Times: setup_s is the manifest exchange plus allocating the destination; stream_s runs from
  // then (the first chunk request: time 0 of the controller, of every ChunkReport time and of
  // the server's link trace) until every chunk is ready -- the span the simulator predicts.
  double setup_s = 0;
  double stream_s = 0;
  double ttft_s = 0;              // setup_s + stream_s + the cost model's first_token_s
  bool slo_met = false;
  bool complete = false;          // every chunk is in the destination, verified
  uint64_t bytes = 0;             // everything received (manifest, retries, abandoned requests)
  double bits_per_element = 0;    // 8 * bytes of the chunks delivered as KV / elements
  uint32_t text_chunks = 0;
  // The GPU work the plan cost: tokens recomputed from text and their prefill seconds by the
  // controller's cost model (an estimate for the target GPU; the measured recompute time of
  // each chunk is its ChunkReport::work_s).
  uint64_t prefill_tokens = 0;
  double prefill_gpu_s = 0;
  std::string objective;          // objective_name() of the controller's objective
  std::vector<DecodeSpeed> decode;  // per stored level
  std::vector<ChunkReport> chunks;
  std::vector<FetchFailure> failures;
  std::string error;              // the final error when !complete

  // {"id", "ttft_ms", "slo_ms", "slo_met", "complete", "bits_per_element", "bytes",
  //  "chunks": [...], "failures": [...]}
  std::string to_json() const;
};

// Called from the fetching thread for progress output: once per chunk when it is ready, and
// once per failure.
struct FetchObserver {
  std::function<void(const ChunkReport&)> on_chunk_ready;
  std::function<void(const FetchFailure&)> on_failure;
};

struct FetchOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string id;
  // Largest manifest accepted from the server, bytes (checked on the response header, before
  // allocating). Chunk responses are bounded by the manifest's sizes, errors by 4 KiB.
  uint64_t max_manifest_bytes = 256ull << 20;
  // Largest decoded context accepted (the manifest's shape times its dtype size), bytes: a
  // manifest of a hundred bytes can claim terabytes. Over it the fetch fails with
  // kResourceExhausted before allocating.
  uint64_t max_output_bytes = 64ull << 30;
  // Policy, objective, SLO, costs and estimator of the controller. cost.rtt_s is what the
  // client believes the round trip to be.
  ControllerConfig controller;
  // Decoder throughput the controller starts from (the seed of its online estimate), GB/s;
  // 0: calibrate_decode_gbps() for each stored level when calibrate_decoder is set (memoized
  // per process; with `profile` for the levels coded with it), else the manifest's figure
  // (measured on the stored chunk when the context was put).
  double decode_gbps = 0;
  bool calibrate_decoder = true;
  // Decoder threads (a pool working on one chunk at a time, while the fetching thread reads the
  // next chunks from the socket); 0 = all hardware threads.
  int decode_threads = 1;
  // Recompute TEXT chunks; empty: TEXT is not an option (only levels are fetched).
  RecomputeFn recompute;
  int connect_timeout_ms = 2000;
  // A connection with requests outstanding and no byte received for this long is dropped and
  // re-established (a kTimeout failure).
  int io_timeout_ms = 5000;
  // Requests per chunk at one level before it is fetched at another level / recomputed.
  int attempts_per_level = 2;
  // Reconnections allowed over the whole fetch before giving up (the manifest exchange included:
  // a lost connection, timeout or corrupt response there is retried too).
  int max_reconnects = 5;
  FetchObserver observer;
  // Called once the manifest is read, before planning: may adjust the controller's
  // configuration from it (e.g. resolve "fixed at level L" to an option index). An error ends
  // the fetch.
  std::function<Status(const Manifest&, ControllerConfig&)> on_manifest;
  // Receives kChunkFetched per chunk (the level delivered), kTextFallback, kChecksumFailure and
  // the decoder's kDecode events (metrics.hpp); not owned. nullptr (default): none.
  MetricsSink* metrics = nullptr;
  // The profile the context was put with (PutOptions::profile). Levels whose manifest entry
  // names another profile (format version 4), or any when this is null, are not planned (a
  // "skip" failure each, naming the digest needed); when no level is left the fetch ends before
  // requesting anything, with kInvalidArgument naming it (an "abort" failure). A version 1
  // manifest does not name profiles: a head that names another one ends the fetch the same way
  // when it arrives. Never a wrong tensor. Unused for levels coded without a profile.
  std::shared_ptr<const Profile> profile;
};

// Fetches context `options.id` into `out`: used as it is when it already has the manifest's
// shape and dtype (memory the caller prepared), else allocated to them.
// `report` is filled in every case, also on failure (with what was delivered and every
// failure). Returns OK only when every chunk is in `out`, each verified (levels) or recomputed
// (text).
Status fetch_context(const FetchOptions& options, KVCache* out, FetchReport* report);

// Builds the controller's view of a stored context: one option per stored level, named "L<n>",
// with the manifest's sizes, relative error as distortion, the level's head as setup bytes,
// and decode_gbps (0: the manifest's measured figure). TEXT is available when the manifest has
// token ids and `text_available`.
ContextProfile profile_from_manifest(const Manifest& m, double decode_gbps, bool text_available);

// Tokens of the synthetic chunk calibrate_decode_gbps decodes.
inline constexpr uint32_t kCalibrationTokens = 32;

// This machine's decode throughput, GB/s of decoded KV, at `level` with `threads` decoder
// threads, for KV of `dtype` and per_token's layers / kv_heads / head_dim (its tokens are
// ignored): a synthetic chunk of kCalibrationTokens tokens (Gaussian channels) is encoded once
// and decoded warm (decoder and destination reused, no first-touch faults; median of three
// after a warm-up). Memoized per process for the same arguments; the first call costs about
// an encode and four decodes of the chunk (4 MiB for a Llama-3-8B shape: ~0.1 s idle). The seed of
// the controller's online estimate (Controller::on_chunk_decoded).
// With a profile (levels 1..9; ignored at level 0) the chunk is transform-coded with it and
// decoded with it, coefficients and inverse transform: the speed of a level stored with that
// profile (format version 4: 2.6-5x slower than a plain level). kInvalidArgument when the
// profile does not fit the shape. Memoized per profile digest.
StatusOr<double> calibrate_decode_gbps(DType dtype, const KVShape& per_token, int level, int threads,
                                       std::shared_ptr<const Profile> profile = nullptr);

}  // namespace kvcodec
