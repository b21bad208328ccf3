// Bandwidth estimation and per-chunk planning for streaming a context (design: docs/controller.md).
//
// A context is fetched as chunks 0..n-1, in order. Each chunk can be fetched in one of several
// encodings ("options": kvcodec levels, raw fp16, ...) whose byte sizes are known up front from
// the manifest, or as TEXT: its token ids are sent and its KV is recomputed by prefill on top of
// the KV of the chunks before it. The Controller decides, chunk by chunk and only from what it
// has measured so far (no oracle), which option to request. The same class drives the real TCP
// client (stream.hpp) and the deterministic simulator (simulator.hpp), so simulated and measured
// runs make the same decisions for the same observations.
//
// Units: time in seconds (double), sizes in bytes, bandwidth in Gb/s (1e9 bits per second),
// decoder throughput in GB/s (1e9 bytes of decoded KV per second).
//
// The timing model shared by the planner and the simulator (docs/controller.md has the details):
//   * link: one FIFO bottleneck. A request sent at t reaches the server at t + rtt/2; the
//     server sends the chunk's bytes as soon as the link is free, at the link's bandwidth; the
//     last byte reaches the client rtt/2 after it left. Requests may be pipelined.
//   * decode: one decoder (a pool of threads working on one chunk at a time), FIFO in arrival
//     order; a chunk at option o takes raw_bytes / decode_gbps, where decode_gbps is measured
//     online (Controller::on_chunk_decoded), seeded by the profile's figure. Raw encodings
//     (decode_gbps <= 0) are free.
//   * prefill: TEXT chunks need no transfer (the client knows the tokens) and run on one GPU
//     queue in chunk order, each only once every earlier chunk is ready (their KV is the
//     attention context of its prefill).
//   * TTFT = the time every chunk is ready + cost.first_token_s.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/status.hpp"

namespace kvcodec {

// ---- Link traces ------------------------------------------------------------------------------

// Range checks of every bandwidth and time a user gives (trace files, LinkConfig, the CLI's
// flags), so a value no link has cannot reach the timing arithmetic: 1e-300 Gb/s makes a transfer
// time infinite (an integer conversion of it is undefined behaviour), 1e300 makes it 0.
// Bandwidths in Gb/s: finite, in [kMinLinkGbps, kMaxLinkGbps] (1 kb/s .. 1 Pb/s).
inline constexpr double kMinLinkGbps = 1e-6;
inline constexpr double kMaxLinkGbps = 1e6;
Status check_link_gbps(double gbps, std::string_view what);
// Times in seconds: finite, 0 or normal (not denormal), in [0, max_s].
Status check_seconds(double s, double max_s, std::string_view what);
// The longest a trace may run (its last step's start), seconds: about 115 days.
inline constexpr double kMaxTraceSeconds = 1e7;

// Piecewise-constant bandwidth over time. Text form, one step per line: "time_s gbps"
// (whitespace separated; '#' starts a comment; blank lines ignored). Times strictly increase
// and start at 0, up to kMaxTraceSeconds; bandwidths pass check_link_gbps; the last step lasts
// forever.
struct LinkTrace {
  struct Step {
    double time_s = 0;
    double gbps = 0;
  };
  std::vector<Step> steps;

  static LinkTrace constant(double gbps);
  // kInvalidArgument with the offending line number for malformed text.
  static StatusOr<LinkTrace> parse(std::string_view text);
  // parse() of a file's contents; kIoError / kNotFound when it cannot be read.
  static StatusOr<LinkTrace> load(const std::string& path);
  Status validate() const;

  double gbps_at(double t_s) const noexcept;
  // Time at which `bytes` put on the link at `start_s` have all left it.
  double finish_time(double start_s, uint64_t bytes) const noexcept;
  // Bytes the link carries between t0_s and t1_s (0 when t1_s <= t0_s).
  double bytes_between(double t0_s, double t1_s) const noexcept;
};

// ---- Bandwidth estimator ----------------------------------------------------------------------

// The estimate is the harmonic mean of the throughputs of the last `window` chunks (the harmonic
// mean weighs slow samples most, so one lucky fast chunk does not inflate it), with two fast
// paths: a sample below drop_ratio x estimate restarts the window from that sample (a sudden
// drop is believed at once), and two consecutive samples above rise_ratio x estimate restart
// it from those two (a sudden rise is believed after a confirmation). Before the first sample
// the estimate is the prior.
struct EstimatorConfig {
  double prior_gbps = 1.0;      // estimate before any sample; > 0. Conservative by default.
  // The prior is a measurement of this path (the estimate a previous fetch over it ended with),
  // not a guess: the adaptive controller plans on it from the first decision. When false it
  // probes the link before trusting it (docs/controller.md, "Cold start").
  bool prior_measured = false;
  uint32_t window = 5;          // samples in the harmonic mean, >= 1
  double drop_ratio = 0.5;      // in (0, 1]
  double rise_ratio = 2.0;      // >= 1
  // Chunks smaller than this (TEXT chunks, tiny tails) are not timed: latency, not bandwidth,
  // dominates their transfer.
  uint64_t min_sample_bytes = 64u << 10;

  Status validate() const;
};

class BandwidthEstimator {
 public:
  explicit BandwidthEstimator(const EstimatorConfig& config = {});
  // One chunk of `bytes` took `seconds` from its first to its last byte. Ignored when bytes <
  // min_sample_bytes or seconds is not > 0.
  void add_sample(uint64_t bytes, double seconds);
  double estimate_gbps() const noexcept { return estimate_gbps_; }
  // Throughput of the last accepted sample (the prior when there is none).
  double last_sample_gbps() const noexcept;
  uint32_t samples() const noexcept { return total_samples_; }

 private:
  void recompute();
  EstimatorConfig config_;
  std::vector<double> window_;  // most recent last
  double estimate_gbps_;
  uint32_t total_samples_ = 0;
  uint32_t rises_in_a_row_ = 0;
};

// ---- Costs ------------------------------------------------------------------------------------

struct CostModel {
  // Round-trip time of the link: request to first byte, excluding transmission.
  double rtt_s = 0;
  // Prefill throughput of the serving model at short context, tokens/s (measured on the
  // reference model, or given for a target model size). <= 0: TEXT is unavailable.
  double prefill_tokens_per_s = 0;
  // Context position at which attention doubles the per-token prefill cost: a token at position
  // p costs (1 + p / prefill_attention_tokens) / prefill_tokens_per_s. 0: position-independent.
  double prefill_attention_tokens = 0;
  // Time to run the first token once the whole context's KV is in place; added to TTFT.
  double first_token_s = 0;

  Status validate() const;
  // Seconds to prefill `tokens` tokens starting at context position `position`.
  double prefill_seconds(uint32_t tokens, uint64_t position) const noexcept;
};

// ---- The context as the controller sees it ----------------------------------------------------

inline constexpr int kTextOption = -1;  // option index meaning "send the tokens, prefill"

struct ChunkOption {
  std::string name;       // for reports: "L4", "fp16", "int8", ...
  int level = -1;         // kvcodec level of the bytes (0..kMaxLevel), -1 for other encodings
  // Quality loss, lower is better, 0 = exact; the same unit for every option of a profile (e.g.
  // relative RMS error of the decoded tensor, or KL). TEXT counts as 0 (recompute is exact).
  double distortion = 0;
  // Decoder throughput (GB/s of decoded KV) on this machine; <= 0: free (raw bytes). The
  // controller's seed: it plans with its online estimate (Controller::decode_gbps).
  double decode_gbps = 0;
  uint64_t setup_bytes = 0;  // fetched once before the first chunk at this option (frame head)
};

struct ContextProfile {
  std::vector<ChunkOption> options;
  std::vector<uint32_t> chunk_tokens;        // tokens of each chunk, in context order
  std::vector<std::vector<uint64_t>> bytes;  // bytes[chunk][option]: body size on the wire
  uint64_t raw_bytes_per_token = 0;          // decoded KV per token (all layers, K and V)
  // The context's token ids are known to the client (its prompt, or the manifest), so a chunk
  // can be recomputed by prefill without any transfer.
  bool text_available = true;
  uint64_t elements_per_token = 0;           // KV elements per token, for bits per element

  uint32_t chunks() const noexcept { return uint32_t(chunk_tokens.size()); }
  uint64_t tokens() const noexcept;
  // First token position of chunk c.
  uint64_t token_begin(uint32_t c) const noexcept;
  // Bytes on the wire for chunk c at option o (0 for kTextOption).
  uint64_t chunk_bytes(uint32_t c, int option) const noexcept;
  // Distortion of an option index (0 for kTextOption).
  double distortion(int option) const noexcept;
  // Shapes agree, every option has a size for every chunk, counts within limits.
  Status validate() const;
};

// ---- Controller -------------------------------------------------------------------------------

// What the planner optimizes. When no plan meets the SLO, every SLO objective takes the lowest
// predicted TTFT.
enum class Objective : uint8_t {
  kBestQualityWithinSlo = 0,  // "quality": lowest mean distortion whose predicted TTFT meets the
                              // SLO (TEXT counts as exact and free: it fills the SLO with prefill)
  kMinTtft = 1,               // "ttft": lowest predicted TTFT (ties: lower distortion)
  kMinPrefillWithinSlo = 2,   // "min-prefill" (default): meets the SLO with the least GPU prefill
                              // (seconds), using only options within ControllerConfig::
                              // max_distortion; then the lowest distortion; then the lowest TTFT.
                              // Hedged against a sudden drop (ControllerConfig::hedge_drop_factor)
                              // so that it never ends much later than recomputing everything
  kMinPrefillUnhedged = 3,    // "min-prefill-unhedged": the same without the hedge (the default
                              // before; up to 8% slower than recomputing on a 10x drop)
};

// kMinPrefillWithinSlo or kMinPrefillUnhedged.
constexpr bool is_min_prefill(Objective objective) noexcept {
  return objective == Objective::kMinPrefillWithinSlo || objective == Objective::kMinPrefillUnhedged;
}

// "quality", "ttft", "min-prefill", "min-prefill-unhedged".
std::string_view objective_name(Objective objective) noexcept;
// The inverse of objective_name; kInvalidArgument naming the accepted names otherwise.
StatusOr<Objective> parse_objective(std::string_view name);

enum class Policy : uint8_t {
  kAdaptive = 0,     // kvcodec's planner: re-plans the rest of the context at every chunk
  kEqualBudget = 1,  // CacheGen's heuristic: per chunk budget slo/n, best option whose transfer
                     // at the last measured throughput fits, else TEXT
  kFixed = 2,        // a plan given in advance (fixed strategies, the oracle's plan)
};

struct ControllerConfig {
  Policy policy = Policy::kAdaptive;
  Objective objective = Objective::kMinPrefillWithinSlo;
  double slo_s = 1.0;           // TTFT target, > 0
  double slo_headroom = 0.05;   // plan to finish by slo_s * (1 - headroom), in [0, 1)
  // kFixed: the option of every chunk (size = chunks), or one entry applied to all chunks.
  std::vector<int> plan;
  // kFixed, optional: the time (seconds since the fetch began, >= 0) from which each chunk may be
  // requested, one per chunk. Chunks are then requested from the two ends inward, as kAdaptive
  // requests them, the end whose time comes first: a replay of a fetch's own decisions (kvcodec
  // demo simulates the real fetch's plan so). Empty: every chunk at once, in context order.
  std::vector<double> plan_request_s;
  // The quality floor of kMinPrefillWithinSlo: the largest distortion (the profile's unit, e.g.
  // relative RMS error) a chunk may be fetched at; options above it are not planned (unless the
  // context has no other way to be fetched: no option within it and no TEXT). >= 0; +inf: none.
  // The default, 0.1, admits CacheGen-like sizes (level 5 of a Llama-class cache: ~0.09) and
  // keeps the coarsest levels (level 8: ~0.28) out.
  double max_distortion = 0.1;
  // kAdaptive: TEXT chunks decided but not yet prefilled, at most (>= 1). 1 decides the next
  // front chunk only once the GPU is idle (the latest possible decision); 2 (the default) decides
  // it while the previous one runs, so a real GPU queue never waits for the client's thread to
  // come back (on a busy machine, tens of milliseconds per chunk). The timing model is the same
  // (the GPU takes its queue in order); only the commitment comes one chunk earlier.
  uint32_t prefill_queue = 2;
  // kMinPrefillWithinSlo's hedge: the planner insures against the link dropping this many times
  // at any moment. A KV request is sent at an option (the plan's, else a smaller one) only when,
  // were the link to drop now, the GPU recomputing from the front (racing the KV already on its
  // way) would still finish by max(SLO, recomputing everything from the start); when no request
  // keeps that, the front chunk is recomputed now. Its prefill is counted like any other. >= 1;
  // 1 insures against nothing worse than the estimate.
  double hedge_drop_factor = 10;
  CostModel cost;
  EstimatorConfig estimator;

  Status validate() const;
};

struct Decision {
  uint32_t chunk = 0;
  int option = kTextOption;
  uint64_t bytes = 0;            // bytes to expect (body; plus setup_bytes when first of option)
  double estimate_gbps = 0;      // bandwidth estimate the decision was made with
  double predicted_ttft_s = 0;   // TTFT of the plan chosen (adaptive; 0 otherwise)
  // The chunk was already requested as KV: drop (or cancel) that response and recompute it.
  bool replaces_request = false;
};

// Usage, by the real client and the simulator alike (times are seconds since the fetch began):
//   while (!c.all_ready()) {
//     while (auto d = c.next_request(now))
//       d->option == kTextOption ? queue_prefill(d->chunk) : send_request(*d);
//     wait for an event, or until c.wake_s() when it is set;
//     bytes of a KV chunk came  -> c.on_progress(chunk, bytes_so_far, now)   (optional)
//     KV chunk arrived          -> c.on_chunk_received(chunk, bytes, first_to_last_byte_s, now)
//     chunk decoded / prefilled -> c.on_chunk_ready(chunk, now)
//     KV chunk lost / corrupt   -> c.fall_back_to_text(chunk, now), queue its prefill
//   }
// The prefill queue runs TEXT chunks in the order decided, each once every earlier chunk of
// the context is ready. Decisions come in this order:
//   * kAdaptive decides as late as possible: TEXT for the front chunk only when the prefill
//     queue has room (ControllerConfig::prefill_queue), KV for the back chunk only when the link needs more work, so the GPU
//     recomputes from the front while the link fills in from the back; they meet where the
//     current plan says. The plan is recomputed at every decision. When the prefill queue
//     would idle waiting for a requested KV chunk that is predicted to be ready later than
//     recomputing it, the KV request is abandoned (replaces_request) and the chunk is
//     recomputed: a link that collapses mid-chunk cannot hold the context hostage.
//   * kEqualBudget and kFixed decide chunks in context order (kFixed with plan_request_s: from
//     the two ends inward, each chunk not before its time).
// The link needs more work when the outstanding KV requests (at the current estimate) no longer
// cover a round trip past the next arrival; kFixed requests everything at once (it needs no
// feedback). Not thread-safe: drive it from one thread.
class Controller {
 public:
  static StatusOr<Controller> create(ContextProfile profile, ControllerConfig config);

  Controller(Controller&&) noexcept;
  Controller& operator=(Controller&&) noexcept;
  ~Controller();

  // The next chunk to request now, or nullopt when the pipeline is full or everything has been
  // requested.
  std::optional<Decision> next_request(double now_s);
  // KV chunk `chunk` (requested earlier) has fully arrived at now_s; its `bytes` took
  // `transfer_s` from first to last byte (feeds the bandwidth estimator). Also to be called for
  // the response of an abandoned request, if it arrives.
  Status on_chunk_received(uint32_t chunk, uint64_t bytes, double transfer_s, double now_s);
  // Bytes of KV chunk `chunk` received so far, while it is arriving. Optional, but it lets a
  // link that collapses in the middle of a chunk be noticed before the chunk ends.
  Status on_progress(uint32_t chunk, uint64_t bytes_received, double now_s);
  // KV chunk `chunk` took `decode_s` seconds of decoder time (its own decode, not the wait in
  // the decoder's queue). Feeds the decode-throughput estimate of its option (call it before
  // on_chunk_ready). Optional: without it the options' decode_gbps are planned with as given.
  Status on_chunk_decoded(uint32_t chunk, double decode_s);
  // Chunk `chunk` has been decoded (or prefilled) into the destination at now_s.
  Status on_chunk_ready(uint32_t chunk, double now_s);
  // A requested chunk could not be delivered (lost, corrupt, store error): re-request it as
  // TEXT. kUnavailable when the context has no text or prefill is unavailable.
  StatusOr<Decision> fall_back_to_text(uint32_t chunk, double now_s);
  // Cold start (adaptive): while nothing has been measured the controller may hold back the
  // first TEXT decision until the first KV bytes can be timed. Then this is the time at which
  // next_request should be called again even if no other event happens; nullopt otherwise.
  std::optional<double> wake_s() const noexcept;

  bool all_requested() const noexcept;
  bool all_ready() const noexcept;
  const ContextProfile& profile() const noexcept;
  const ControllerConfig& config() const noexcept;
  const BandwidthEstimator& estimator() const noexcept;
  // The decode throughput (GB/s) the controller plans option `option` with now: the harmonic
  // mean of its own last chunks' measured speeds (on_chunk_decoded) once it has any, else its
  // profile figure (the seed: a calibration) scaled by how the last chunks of any option
  // decoded against their seeds (the machine's load). <= 0 for raw options (free).
  double decode_gbps(int option) const noexcept;
  uint32_t decode_samples() const noexcept;
  // Decisions so far, one per chunk requested (a fallback replaces the chunk's entry).
  const std::vector<Decision>& decisions() const noexcept;

 private:
  struct Impl;  // the planner's state and steps (controller.cpp)
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvcodec
