// kvcodec fetch: fetch a stored context from `kvcodec serve` with the adaptive controller.
//
//   kvcodec fetch --server HOST:PORT --id NAME -o OUT.safetensors [--slo-ms X] [--json REPORT]
//                 [--policy adaptive|equal-budget|fixed:L] [--objective min-prefill|quality|ttft]
//                 [--rtt-ms Y] [--model M.bin [--prefill-tps N]] [--timeout-ms T] [--profile P.kvprofile]
#include <cstdio>
#include <optional>
#include <string>
#include <fstream>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/stream.hpp"
#include "profile_file.hpp"
#include "stream_cli.hpp"

namespace kvcodec::cli {
namespace {

// The options of `kvcodec fetch`.
struct FetchArgs {
  std::string server, id, output;  // required
  std::optional<std::string> json;  // the fetch report
  double rtt_ms = 0;
  double decode_gbps = 0;  // 0: the manifest's figure
  int threads = 1;
  std::optional<std::string> model;
  std::optional<std::string> profile;
  int timeout_ms = 5000;
  bool quiet = false;
  ControllerArgs controller;
};

void declare(Command& cmd, FetchArgs& o) {
  cmd.option("--server", o.server, "HOST:PORT of a `kvcodec serve`");
  cmd.option("--id", o.id, "context id");
  cmd.option("-o", o.output, "output KV cache (.safetensors; the manifest's dtype, layout [layers, 2, tokens, heads, dim])");
  cmd.option("--json", o.json, "write the fetch report (per-chunk decisions, timings, failures) as JSON");
  cmd.option("--rtt-ms", o.rtt_ms, "round-trip time the controller plans with, ms (default 0)");
  cmd.option("--decode-gbps", o.decode_gbps, "decoder throughput the controller plans with (default: the manifest's figure)");
  cmd.option("--threads", o.threads, "decoder threads per chunk (default 1)", Range{1, 4096});
  cmd.option("--model", o.model, "reference model (llama2.c .bin) to recompute TEXT chunks from their tokens");
  cmd.option("--timeout-ms", o.timeout_ms, "drop and re-open a connection silent for this long (default 5000)",
             Range{1, INT32_MAX});
  cmd.option("--profile", o.profile, "the profile the context was put with (put --profile; needed for its lossy levels)");
  cmd.flag("--quiet", o.quiet, "no per-chunk progress lines");
  declare_controller_options(cmd, o.controller);
}

// The fetch's settings from the options; the usage error, or "".
std::string fetch_options(const FetchArgs& a, FetchOptions* fo) {
  if (a.server.empty() || a.id.empty() || a.output.empty()) return "--server, --id and -o are required";
  if (std::string e = read_controller_options(a.controller, &fo->controller); !e.empty()) return e;
  fo->controller.cost.rtt_s = a.rtt_ms / 1e3;
  fo->decode_gbps = a.decode_gbps;
  fo->decode_threads = a.threads;
  fo->io_timeout_ms = a.timeout_ms;
  const auto colon = a.server.rfind(':');
  if (colon == std::string::npos) return "--server must be HOST:PORT";
  fo->host = a.server.substr(0, colon);
  char* end = nullptr;
  const long port = std::strtol(a.server.c_str() + colon + 1, &end, 10);
  if (*end || port <= 0 || port > 65535) return "--server: bad port";
  fo->port = uint16_t(port);
  fo->id = a.id;
  if (Status s = check_seconds(fo->controller.cost.rtt_s, 60, "--rtt-ms / 1000"); !s.ok()) return std::string(s.message());
  if (fo->decode_gbps != 0)
    if (Status s = check_link_gbps(fo->decode_gbps, "--decode-gbps"); !s.ok()) return std::string(s.message());
  return "";
}

}  // namespace

int cmd_fetch(int argc, char** argv) {
  Command cmd("fetch",
              "kvcodec fetch --server HOST:PORT --id NAME -o OUT.safetensors [--slo-ms X] [--json REPORT] "
              "[--policy P] [--objective O] [--rtt-ms Y] [--model M.bin] [--timeout-ms T] [--profile P.kvprofile]");
  FetchArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  FetchOptions fo;
  if (std::string error = fetch_options(a, &fo); !error.empty()) return cmd.usage_error(error);

  if (a.profile) {
    StatusOr<Profile> p = load_profile(*a.profile);
    if (!p.ok()) return cmd.fail(p.status());
    fo.profile = std::make_shared<const Profile>(std::move(*p));
  }
  const std::string& policy = a.controller.policy;
  std::shared_ptr<const Model> model;
  if (a.model) {
    auto m = Model::load(*a.model);
    if (!m.ok()) return cmd.fail(m.status());
    model = std::make_shared<const Model>(std::move(*m));
    if (!a.controller.prefill_tps) {
      auto tps = measure_prefill_throughput(*model, std::min<uint32_t>(256, model->config().seq_len));
      if (!tps.ok()) return cmd.fail(tps.status());
      fo.controller.cost.prefill_tokens_per_s = *tps;
      std::fprintf(stderr, "prefill measured on the model: %.0f tokens/s\n", *tps);
    }
  }
  if (!a.quiet) {
    // The failure that ends a fetch is the command's error line; the others are progress.
    fo.observer.on_failure = [](const FetchFailure& f) {
      if (f.action != "abort") print_failure_line(stderr, f);
    };
  }

  // TEXT chunks: prefill with the model on top of the KV fetched so far (bound to the
  // manifest's shape once it is known).
  RecomputeFn recompute;
  uint32_t chunks_total = 0;
  fo.on_manifest = [&](const Manifest& m, ControllerConfig& c) -> Status {
    chunks_total = m.num_chunks();
    if (model) {
      KVCODEC_ASSIGN_OR_RETURN(recompute, model_recompute(model, m.shape));
    }
    return resolve_fixed_level(policy, m, &c);
  };
  if (model) {
    fo.recompute = [&](uint32_t chunk, uint32_t begin, std::span<const int32_t> tokens, const KVView& dst) {
      return recompute(chunk, begin, tokens, dst);
    };
  }
  if (!a.quiet) {
    fo.observer.on_chunk_ready = [&](const ChunkReport& c) { print_chunk_line(stderr, c, chunks_total); };
  }
  KVCache out;
  FetchReport report;
  Status s = fetch_context(fo, &out, &report);
  if (a.json) {
    std::ofstream j(*a.json);
    j << report.to_json() << "\n";
    if (!j) return cmd.fail(IoError("cannot write " + *a.json));
  }
  if (!s.ok()) return cmd.fail(s);
  if (Status w = save_kv(a.output, out); !w.ok()) return cmd.fail(w);
  std::printf("fetched '%s': %u chunks (%u as text), %.3f bits/element, TTFT %.1f ms (SLO %.0f ms %s), %zu failure(s) handled\n",
              fo.id.c_str(), uint32_t(report.chunks.size()), report.text_chunks, report.bits_per_element,
              report.ttft_s * 1e3, report.slo_s * 1e3, report.slo_met ? "met" : "missed", report.failures.size());
  std::printf("objective %s: prefill %llu tokens, %.3f GPU s (cost model)\n", report.objective.c_str(),
              (unsigned long long)report.prefill_tokens, report.prefill_gpu_s);
  return 0;
}

}  // namespace kvcodec::cli
