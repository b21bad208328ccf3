// kvcodec fetch: fetch a stored context from `kvcodec serve` with the adaptive controller.
//
//   kvcodec fetch --server HOST:PORT --id NAME -o OUT.safetensors [--slo-ms X] [--json REPORT]
//                 [--policy adaptive|equal-budget|fixed:L] [--objective min-prefill|quality|ttft]
//                 [--rtt-ms Y] [--model M.bin [--prefill-tps N]] [--timeout-ms T]
#include <cstdio>
#include <fstream>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/stream.hpp"
#include "stream_cli.hpp"

namespace kvcodec::cli {

int cmd_fetch(int argc, char** argv) {
  Args a("fetch",
         "kvcodec fetch --server HOST:PORT --id NAME -o OUT.safetensors [--slo-ms X] [--json REPORT] "
         "[--policy P] [--objective O] [--rtt-ms Y] [--model M.bin] [--timeout-ms T]");
  a.option("--server", "HOST:PORT of a `kvcodec serve`")
      .option("--id", "context id")
      .option("-o", "output KV cache (.safetensors; the manifest's dtype, layout [layers, 2, tokens, heads, dim])")
      .option("--json", "write the fetch report (per-chunk decisions, timings, failures) as JSON")
      .option("--rtt-ms", "round-trip time the controller plans with, ms (default 0)")
      .option("--decode-gbps", "decoder throughput the controller plans with (default: the manifest's figure)")
      .option("--threads", "decoder threads per chunk (default 1)")
      .option("--model", "reference model (llama2.c .bin) to recompute TEXT chunks from their tokens")
      .option("--timeout-ms", "drop and re-open a connection silent for this long (default 5000)")
      .flag("--quiet", "no per-chunk progress lines");
  declare_controller_options(a);
  if (!a.parse(argc, argv)) return a.exit_code();
  if (!a.has("--server") || !a.has("--id") || !a.has("-o")) return a.fail("--server, --id and -o are required");
  FetchOptions fo;
  if (!read_controller_options(a, &fo.controller)) return 2;
  fo.controller.cost.rtt_s = a.get_double("--rtt-ms", 0) / 1e3;
  fo.decode_gbps = a.get_double("--decode-gbps", 0);
  fo.decode_threads = int(a.get_int("--threads", 1));
  fo.io_timeout_ms = int(a.get_int("--timeout-ms", 5000));
  if (a.failed()) return 2;
  const std::string server = a.get("--server");
  const auto colon = server.rfind(':');
  if (colon == std::string::npos) return a.fail("--server must be HOST:PORT");
  fo.host = server.substr(0, colon);
  char* end = nullptr;
  const long port = std::strtol(server.c_str() + colon + 1, &end, 10);
  if (*end || port <= 0 || port > 65535) return a.fail("--server: bad port");
  fo.port = uint16_t(port);
  fo.id = a.get("--id");
  if (fo.decode_threads < 1 || fo.io_timeout_ms < 1) return a.fail("--threads and --timeout-ms must be >= 1");
  if (Status s = check_seconds(fo.controller.cost.rtt_s, 60, "--rtt-ms / 1000"); !s.ok()) return a.fail(std::string(s.message()));
  if (fo.decode_gbps != 0)
    if (Status s = check_link_gbps(fo.decode_gbps, "--decode-gbps"); !s.ok()) return a.fail(std::string(s.message()));

  const std::string policy = a.get("--policy", "adaptive");
  std::shared_ptr<const Model> model;
  if (a.has("--model")) {
    auto m = Model::load(a.get("--model"));
    if (!m.ok()) return a.fail(m.status());
    model = std::make_shared<const Model>(std::move(*m));
    if (!a.has("--prefill-tps")) {
      auto tps = measure_prefill_throughput(*model, std::min<uint32_t>(256, model->config().seq_len));
      if (!tps.ok()) return a.fail(tps.status());
      fo.controller.cost.prefill_tokens_per_s = *tps;
      std::fprintf(stderr, "prefill measured on the model: %.0f tokens/s\n", *tps);
    }
  }
  if (!a.has("--quiet")) {
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
  if (!a.has("--quiet")) {
    fo.observer.on_chunk_ready = [&](const ChunkReport& c) { print_chunk_line(stderr, c, chunks_total); };
  }
  KVCache out;
  FetchReport report;
  Status s = fetch_context(fo, &out, &report);
  if (a.has("--json")) {
    std::ofstream j(a.get("--json"));
    j << report.to_json() << "\n";
    if (!j) return a.fail(IoError("cannot write " + a.get("--json")));
  }
  if (!s.ok()) return a.fail(s);
  if (Status w = save_kv(a.get("-o"), out); !w.ok()) return a.fail(w);
  std::printf("fetched '%s': %u chunks (%u as text), %.3f bits/element, TTFT %.1f ms (SLO %.0f ms %s), %zu failure(s) handled\n",
              fo.id.c_str(), uint32_t(report.chunks.size()), report.text_chunks, report.bits_per_element,
              report.ttft_s * 1e3, report.slo_s * 1e3, report.slo_met ? "met" : "missed", report.failures.size());
  std::printf("objective %s: prefill %llu tokens, %.3f GPU s (cost model)\n", report.objective.c_str(),
              (unsigned long long)report.prefill_tokens, report.prefill_gpu_s);
  return 0;
}

}  // namespace kvcodec::cli
