// Deterministic streaming simulator in virtual time (design: docs/controller.md).
//
// simulate() runs a Controller (controller.hpp) against a link trace, with the timing model
// documented there: FIFO link with round-trip delay, one decoder, in-order prefill for TEXT
// chunks. The Controller sees only what a real client would see (arrivals and their measured
// transfer times, ready times), so the decisions are those it would make on a real link with
// that bandwidth. Same inputs, same result, on every machine.
#pragma once

#include <cstdint>
#include <vector>

#include "kvcodec/controller.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec {

struct ChunkTimeline {
  uint32_t chunk = 0;
  int option = kTextOption;
  uint64_t bytes = 0;          // on the wire, setup bytes included
  double request_s = 0;        // request sent by the client
  double arrival_s = 0;        // last byte received
  double ready_s = 0;          // decoded or prefilled
  double estimate_gbps = 0;    // the controller's estimate when it chose
};

struct SimResult {
  double ttft_s = 0;
  bool slo_met = false;             // ttft_s <= config.slo_s
  uint64_t bytes = 0;               // everything on the wire
  double bits_per_element = 0;      // 8 * bytes / KV elements of the context
  double distortion = 0;            // token-weighted mean of the chunks' option distortion
  uint32_t text_chunks = 0;
  uint64_t prefill_tokens = 0;      // tokens recomputed from TEXT
  double prefill_s = 0;             // their GPU seconds (config.cost.prefill_seconds)
  std::vector<ChunkTimeline> chunks;
};

// Runs `config` (any policy) on the context over `link`, starting at trace time 0.
StatusOr<SimResult> simulate(const ContextProfile& profile, const ControllerConfig& config,
                             const LinkTrace& link);

// The plan of an oracle that knows the whole trace in advance, each plan scored by simulating
// it exactly. When (options + TEXT)^chunks <= 2^22 (e.g. the sweep's 8 chunks x 6 choices) it
// is the best plan of all (an exact depth-first search; tests/oracle_test.cpp checks it against
// a separate exhaustive enumeration); beyond, the best found by a search over per-chunk choices
// (families of text-prefix / two-option plans, then single-chunk improvement passes until none
// helps). Meets config.objective (and config.slo_s for the SLO objectives when any plan can),
// with kMinPrefillWithinSlo's quality floor. Returns one option per chunk; run it with Policy::kFixed.
StatusOr<std::vector<int>> oracle_plan(const ContextProfile& profile,
                                       const ControllerConfig& config, const LinkTrace& link);

}  // namespace kvcodec
