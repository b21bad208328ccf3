// Helpers shared by `kvcodec fetch` and `kvcodec demo`: controller options, recompute by the
// reference model, and progress lines.
#pragma once

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "cli.hpp"
#include "kvcodec/controller.hpp"
#include "kvcodec/model.hpp"
#include "kvcodec/stream.hpp"

namespace kvcodec::cli {

// open_store with the Redis credentials of the environment (KVCODEC_STORE_USER,
// KVCODEC_STORE_PASSWORD: kept out of the command line, where `ps` would show them); a URI's own
// USER:PASSWORD@ wins.
StatusOr<std::unique_ptr<Store>> open_cli_store(const std::string& uri);

// The controller's options of a fetching command.
struct ControllerArgs {
  double slo_ms = 1000;
  std::string policy = "adaptive";  // adaptive, equal-budget or fixed:L
  std::string objective = "min-prefill";  // min-prefill, quality, ttft or min-prefill-unhedged
  double max_distortion = ControllerConfig{}.max_distortion;  // min-prefill's quality floor
  std::optional<double> prefill_tps;  // not given: measured on the model (or 0: no model)
  double first_token_ms = 0;
};

// Declares --slo-ms, --policy, --objective, --max-distortion, --prefill-tps, --first-token-ms,
// bound to `o`.
void declare_controller_options(Command& cmd, ControllerArgs& o);
// Fills `c` from `o` (SLO, policy, objective, prefill and first-token costs); --policy fixed:L
// is completed by resolve_fixed_level once the manifest is known. The usage error, or "".
std::string read_controller_options(const ControllerArgs& o, ControllerConfig* c);
// Resolves "fixed:L" against the manifest's levels (option index); other policies pass through.
Status resolve_fixed_level(const std::string& policy, const Manifest& m, ControllerConfig* c);

// TEXT chunks recomputed by prefill with `model` on top of the KV already in the destination
// (tokens [0, begin)). kInvalidArgument when the model's geometry differs from `shape`.
StatusOr<RecomputeFn> model_recompute(std::shared_ptr<const Model> model, const KVShape& shape);

// "chunk  3/16  L4     1.20 MB  est  8.10 Gb/s  ready   45.2 ms"
void print_chunk_line(std::FILE* f, const ChunkReport& c, uint32_t chunks);
void print_failure_line(std::FILE* f, const FetchFailure& failure);

}  // namespace kvcodec::cli
