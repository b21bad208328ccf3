// kvcodec demo: the whole streaming story on one machine, in well under a minute.
//
// A context (by default a SYNTHETIC Llama-3-8B-shaped cache; with --model/--tokenizer/--text the
// real KV of the reference model on real text) is encoded at several levels and stored; a
// server streams it over loopback TCP through an emulated link whose bandwidth drops
// mid-stream; the client fetches it with the adaptive controller, printing each decision; then
// the same context, link and costs are replayed in the simulator for fixed strategies, and a
// table, a JSON report and an SVG timeline are written.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/model.hpp"
#include "kvcodec/simulator.hpp"
#include "kvcodec/stream.hpp"
#include "kvcodec/synthetic.hpp"
#include "kvcodec/tokenizer.hpp"
#include "profile_file.hpp"
#include "stream_cli.hpp"

namespace kvcodec::cli {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The demo's settings: the options as given (bound by declare), then what parse_demo_options
// derives from them.
struct DemoOptions {
  std::optional<int64_t> tokens;        // default 4096 synthetic, the model's context with --model
  std::optional<uint32_t> chunk_tokens;  // default 256, 64 with --model
  std::vector<int> levels = {1, 2, 5, 8};  // 1: near-lossless
  std::string store = "mem:", out_dir = "kvcodec-demo-out";
  double high = 10, low = 1;  // link Gb/s before and after the drop
  double drop_ms = 100, rtt_ms = 2;
  double slo_ms = 0;       // 0: derived from the prefill rate
  double prefill_tps = 0;  // 0: measured (--model) or assumed
  std::string objective_name = "min-prefill";
  double max_distortion = ControllerConfig{}.max_distortion;  // quality floor of min-prefill
  int threads = 0;         // 0 = all cores
  std::optional<std::string> model;  // a real model's KV and recompute
  std::string tokenizer, text;       // with --model
  int64_t offset = 0;
  std::optional<std::string> profile_path;  // transform-code the lossy levels (put / fetch --profile)
  // Derived.
  std::shared_ptr<const Profile> profile;
  bool real = false;
  double drop_s = 0, rtt_s = 0, slo_s = 0;
  Objective objective = Objective::kMinPrefillWithinSlo;
  int workers = 1;  // encoder / decoder threads
};

void declare(Command& cmd, DemoOptions& o) {
  cmd.option("--tokens", o.tokens, "context tokens (default 4096 synthetic; real model: up to its context length)",
             Range{1});
  cmd.option("--levels", o.levels, "levels to store (default 1,2,5,8; 1 is near-lossless)", Range{0, kMaxLevel});
  cmd.option("--chunk-tokens", o.chunk_tokens, "tokens per chunk (default 256; 64 with --model)",
             Range{1, kMaxChunkTokens});
  cmd.option("--store", o.store, "mem: (default), file:DIR or redis://HOST:PORT");
  cmd.option("--out", o.out_dir, "report directory (default ./kvcodec-demo-out)");
  cmd.option("--high-gbps", o.high, "link bandwidth before the drop, Gb/s (default 10)");
  cmd.option("--low-gbps", o.low, "link bandwidth after the drop, Gb/s (default 1)");
  cmd.option("--drop-ms", o.drop_ms, "time of the drop after the fetch starts, ms (default 100)");
  cmd.option("--rtt-ms", o.rtt_ms, "round-trip time of the emulated link, ms (default 2)");
  cmd.option("--slo-ms", o.slo_ms,
             "time-to-first-token target, ms (default: 80% of recomputing the whole context, so that neither "
             "recomputing nor fetching alone is enough)");
  cmd.option("--objective", o.objective_name, "min-prefill (default), quality, ttft or min-prefill-unhedged (see kvcodec fetch --help)");
  cmd.option("--max-distortion", o.max_distortion, "quality floor of min-prefill, relative error (default 0.1)");
  cmd.option("--prefill-tps", o.prefill_tps,
             "prefill tokens/s for TEXT chunks (default: 4000, an assumption for the target GPU; measured with --model)");
  cmd.option("--threads", o.threads, "encoder / decoder threads (default 0 = all cores)", Range{0, 4096});
  cmd.option("--model", o.model, "reference model (llama2.c .bin): real KV and real recompute");
  cmd.option("--tokenizer", o.tokenizer, "tokenizer of --model (.bin or 'bytes')");
  cmd.option("--text", o.text, "text to prefill the context from (with --model)");
  cmd.option("--offset", o.offset, "byte offset of the context in --text (default 0)", Range{0});
  cmd.option("--profile", o.profile_path,
             "transform-code the stored lossy levels with this profile (kvcodec calibrate; the context's shape)");
}

// Parses and checks the options, and derives the rest; -1 when the demo should run, else the
// exit code.
int parse_demo_options(Command& cmd, int argc, char** argv, DemoOptions& o) {
  declare(cmd, o);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  o.real = o.model.has_value();
  if (o.real && (o.tokenizer.empty() || o.text.empty())) return cmd.usage_error("--model needs --tokenizer and --text");
  if (!o.real && (!o.tokenizer.empty() || !o.text.empty())) return cmd.usage_error("--tokenizer and --text need --model");
  if (!o.tokens) o.tokens = o.real ? 1 << 20 : 4096;
  if (!o.chunk_tokens) o.chunk_tokens = o.real ? 64 : 256;
  o.drop_s = o.drop_ms / 1e3;
  o.rtt_s = o.rtt_ms / 1e3;
  o.slo_s = o.slo_ms / 1e3;
  auto objective = parse_objective(o.objective_name);
  if (!objective.ok()) return cmd.usage_error("--objective: " + std::string(objective.status().message()));
  o.objective = *objective;
  if (!(o.high > 0) || !(o.low > 0) || !(o.drop_s > 0) || o.rtt_s < 0 || o.slo_s < 0 || o.prefill_tps < 0 ||
      !(o.max_distortion >= 0))
    return cmd.usage_error("sizes, bandwidths, times and rates must be positive");
  for (const Status& s : {check_link_gbps(o.high, "--high-gbps"), check_link_gbps(o.low, "--low-gbps"),
                          check_seconds(o.drop_s, kMaxTraceSeconds, "--drop-ms / 1000"),
                          check_seconds(o.rtt_s, 60, "--rtt-ms / 1000"),
                          check_seconds(o.slo_s, 3600, "--slo-ms / 1000")})
    if (!s.ok()) return cmd.usage_error(std::string(s.message()));
  o.workers = o.threads ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  if (o.profile_path) {
    StatusOr<Profile> p = load_profile(*o.profile_path);
    if (!p.ok()) return cmd.fail(p.status());
    o.profile = std::make_shared<const Profile>(std::move(*p));
  }
  return -1;
}

// Assumed prefill throughput of Llama-3-8B on one data-centre GPU at a few thousand tokens of
// context, used to charge TEXT chunks of the synthetic context (override with --prefill-tps).
constexpr double kAssumedPrefillTps = 4000;

struct Row {
  std::string strategy;
  std::string source;  // "simulated" or "real TCP"
  double ttft_s = 0;
  double bits_per_element = 0;
  double rel_error = 0;
  uint32_t text_chunks = 0;
  bool slo_met = false;
  uint64_t prefill_tokens = 0;  // recomputed from text
  double prefill_gpu_s = 0;     // their GPU seconds by the cost model
  bool within_floor = true;     // every fetched chunk within the objective's quality floor
};

// Copies tokens [begin, begin + count) of every layer and K/V from `from` into `to`.
void copy_tokens(const KVCache& from, const KVView& to, uint32_t begin, uint32_t count) {
  const size_t row = from.shape.channels() * dtype_size(from.dtype);
  for (uint32_t l = 0; l < from.shape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t t = begin; t < begin + count; ++t)
        std::memcpy(to.element(l, k, t, 0, 0), from.data.data() + ((size_t(l) * 2 + k) * from.shape.tokens + t) * row,
                    row);
}

// Mean negative log-likelihood of tokens[1..] continuing a context whose KV is `context`.
StatusOr<double> continuation_nll(const Model& model, const KVCache& context, std::span<const int32_t> tokens) {
  KVCODEC_ASSIGN_OR_RETURN(KVState state, KVState::from_cache(context));
  std::vector<float> logits;
  KVCODEC_RETURN_IF_ERROR(model.forward(tokens, state, &logits));
  const size_t vocab = model.config().vocab_size;
  double nll = 0;
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    std::span<const float> row(logits.data() + i * vocab, vocab);
    const float mx = *std::max_element(row.begin(), row.end());
    double sum = 0;
    for (float v : row) sum += std::exp(double(v - mx));
    nll += std::log(sum) + mx - row[size_t(tokens[i + 1])];
  }
  return nll / double(tokens.size() - 1);
}

std::string svg_escape(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
  return out;
}

// Two panels: the real fetch's timeline (one row per chunk: transfer then decode, or recompute)
// under the link's bandwidth, and TTFT per strategy against the SLO.
std::string make_svg(const FetchReport& r, const LinkTrace& trace, const std::vector<Row>& rows, double slo_s,
                     const std::string& title) {
  const double W = 900, left = 190, right = 30, plot_w = W - left - right;
  const double row_h = std::max(6.0, std::min(16.0, 360.0 / std::max<size_t>(1, r.chunks.size())));
  const double bw_h = 70, tl_top = 60, tl_h = row_h * double(r.chunks.size());
  const double bars_top = tl_top + bw_h + tl_h + 70, bar_h = 18;
  const double H = bars_top + bar_h * double(rows.size()) + 50;
  double t_max = std::max(r.ttft_s, slo_s);
  for (const auto& row : rows) t_max = std::max(t_max, std::min(row.ttft_s, 4 * std::max(r.ttft_s, slo_s)));
  t_max *= 1.05;
  auto x = [&](double t) { return left + plot_w * std::min(t, t_max) / t_max; };
  const char* palette[] = {"#1b9e77", "#66a61e", "#e6ab02", "#d95f02", "#7570b3", "#e7298a", "#a6761d", "#666666",
                           "#1f78b4", "#b2df8a"};
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n";
  s << "<text x='10' y='22' font-size='14' font-weight='bold'>" << svg_escape(title) << "</text>\n";
  // Bandwidth over time.
  double peak = 0;
  for (const auto& st : trace.steps) peak = std::max(peak, st.gbps);
  s << "<text x='10' y='" << tl_top + 12 << "'>link Gb/s (max " << peak << ")</text>\n<polyline fill='none' "
    << "stroke='#1f78b4' stroke-width='2' points='";
  for (size_t i = 0; i < trace.steps.size(); ++i) {
    const double y = tl_top + bw_h - 10 - (bw_h - 20) * trace.steps[i].gbps / peak;
    const double t0 = trace.steps[i].time_s, t1 = i + 1 < trace.steps.size() ? trace.steps[i + 1].time_s : t_max;
    if (t0 > t_max) break;
    s << x(t0) << "," << y << " " << x(t1) << "," << y << " ";
  }
  s << "'/>\n";
  // One row per chunk.
  for (const auto& c : r.chunks) {
    const double y = tl_top + bw_h + row_h * c.chunk;
    const std::string color = c.level < 0 ? "#999999" : palette[c.level % 10];
    if (c.level >= 0) {
      s << "<rect x='" << x(c.first_byte_s) << "' y='" << y << "' width='" << std::max(1.0, x(c.arrival_s) - x(c.first_byte_s))
        << "' height='" << row_h - 1 << "' fill='" << color << "'/>\n";
      s << "<rect x='" << x(c.arrival_s) << "' y='" << y << "' width='" << std::max(1.0, x(c.ready_s) - x(c.arrival_s))
        << "' height='" << row_h - 1 << "' fill='" << color << "' opacity='0.4'/>\n";
    } else {
      s << "<rect x='" << x(c.ready_s) - 2 << "' y='" << y << "' width='2' height='" << row_h - 1 << "' fill='#333'/>\n";
    }
    if (row_h >= 9)
      s << "<text x='" << left - 6 << "' y='" << y + row_h - 2 << "' text-anchor='end'>chunk " << c.chunk << " "
        << c.via << "</text>\n";
  }
  s << "<text x='10' y='" << tl_top + bw_h + tl_h + 16
    << "'>solid: transfer, light: decode, black tick: recomputed from text (ready time)</text>\n";
  // TTFT per strategy.
  s << "<text x='10' y='" << bars_top - 26 << "' font-weight='bold'>TTFT per strategy (same context, link and costs)</text>\n"
    << "<text x='10' y='" << bars_top - 12 << "'><tspan fill='#d95f02' font-weight='bold'>orange: the REAL fetch over "
    << "loopback TCP</tspan>; purple: simulated, with the decode speeds the real fetch measured</text>\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const double y = bars_top + bar_h * double(i);
    const bool real = rows[i].source == "real TCP";
    s << "<text x='" << left - 6 << "' y='" << y + bar_h - 5 << "' text-anchor='end'"
      << (real ? " font-weight='bold'" : "") << ">" << svg_escape(rows[i].strategy + (real ? " [REAL fetch]" : ""))
      << "</text>\n<rect x='" << left << "' y='" << y + 2 << "' width='" << x(rows[i].ttft_s) - left << "' height='"
      << bar_h - 4 << "' fill='" << (rows[i].source == "real TCP" ? "#d95f02" : "#7570b3") << "'/>\n<text x='"
      << x(rows[i].ttft_s) + 4 << "' y='" << y + bar_h - 5 << "'>" << std::lround(rows[i].ttft_s * 1e3) << " ms, prefill "
      << rows[i].prefill_tokens << " tokens</text>\n";
  }
  s << "<line x1='" << x(slo_s) << "' x2='" << x(slo_s) << "' y1='" << bars_top - 4 << "' y2='"
    << bars_top + bar_h * double(rows.size()) << "' stroke='red' stroke-dasharray='4'/>\n<text x='" << x(slo_s) + 3
    << "' y='" << bars_top - 2 << "' fill='red'>SLO</text>\n";
  // Time axis.
  const double axis_y = H - 24;
  s << "<line x1='" << left << "' x2='" << left + plot_w << "' y1='" << axis_y << "' y2='" << axis_y << "' stroke='black'/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double t = t_max * i / 5;
    s << "<text x='" << x(t) << "' y='" << axis_y + 14 << "' text-anchor='middle'>" << std::lround(t * 1e3) << " ms</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

// The context to stream: its KV, its token ids (for TEXT chunks), and with a real model the
// tokens that follow it (to measure quality).
struct DemoContext {
  KVCache kv;
  std::vector<int32_t> text_tokens, continuation;
  std::shared_ptr<const Model> model;
  std::string label;
};

// Tokens after the context whose perplexity measures quality.
constexpr uint32_t kContinuation = 64;

// Step 1 with --model: prefills the model on the text; measures its prefill rate unless given.
Status real_context(DemoOptions& o, DemoContext& c) {
  KVCODEC_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::open(o.tokenizer));
  std::ifstream f(o.text, std::ios::binary);
  if (!f) return NotFound("cannot read " + o.text);
  std::stringstream text;
  text << f.rdbuf();
  const uint32_t seq = c.model->config().seq_len;
  o.tokens = std::min<int64_t>(*o.tokens, seq - kContinuation);
  auto ids = context_tokens(tok, text.str(), uint64_t(o.offset), uint32_t(*o.tokens + kContinuation));
  if (!ids.ok()) return ids.status().with_context("--text");
  c.text_tokens.assign(ids->begin(), ids->begin() + *o.tokens);
  c.continuation.assign(ids->begin() + *o.tokens, ids->end());
  KVState state = c.model->new_state();
  KVCODEC_RETURN_IF_ERROR(c.model->forward(c.text_tokens, state, nullptr));
  KVCODEC_ASSIGN_OR_RETURN(c.kv, state.to_cache(DType::kF16));
  c.label = "REAL KV of " + std::filesystem::path(*o.model).filename().string() + " on " +
            std::filesystem::path(o.text).filename().string();
  if (o.prefill_tps == 0) {
    KVCODEC_ASSIGN_OR_RETURN(o.prefill_tps,
                             measure_prefill_throughput(*c.model, std::min<uint32_t>(*o.chunk_tokens, seq)));
  }
  return Status::Ok();
}

// Step 1 without a model: a synthetic Llama-3-8B-shaped cache.
Status synthetic_context(DemoOptions& o, DemoContext& c) {
  KVCODEC_ASSIGN_OR_RETURN(c.kv, make_synthetic("llama3-8b", uint32_t(*o.tokens), DType::kF16, 1));
  // A synthetic context has no text. Placeholder token ids let the demo exercise the TEXT
  // option; its recompute is emulated (fetch_with_controller).
  for (int64_t t = 0; t < *o.tokens; ++t) c.text_tokens.push_back(int32_t(t % 32000));
  c.label = "SYNTHETIC Llama-3-8B-shaped KV (not a real model's cache)";
  if (o.prefill_tps == 0) o.prefill_tps = kAssumedPrefillTps;
  return Status::Ok();
}

// Step 2: encodes the levels and stores them; prints what each costs.
StatusOr<Manifest> store_levels(const DemoOptions& o, DemoContext& c, std::shared_ptr<Store>& store) {
  KVCODEC_ASSIGN_OR_RETURN(auto opened, open_cli_store(o.store));
  store = std::move(opened);
  PutOptions po;
  po.levels = o.levels;
  po.chunk_tokens = *o.chunk_tokens;
  po.text_tokens = c.text_tokens;
  po.threads = o.workers;
  po.measure_chunks = 2;  // error and decode speed measured on a sample of two chunks
  po.profile = o.profile;
  auto t_put = Clock::now();
  KVCODEC_ASSIGN_OR_RETURN(Manifest manifest, put_context(*store, "demo", c.kv.view(), po));
  const double put_s = since(t_put);
  // The decoder's seed speeds: warm (reused decoder and destination), on this machine with the
  // fetch's thread count, before the fetch (memoized: the fetch's setup finds them), with the
  // profile for the levels coded with it, as the fetch calibrates them.
  std::vector<double> warm;
  for (const auto& l : manifest.levels) {
    KVCODEC_ASSIGN_OR_RETURN(double g, calibrate_decode_gbps(c.kv.dtype, c.kv.shape, l.level, o.workers,
                                                             l.profile_digest ? o.profile : nullptr));
    warm.push_back(g);
  }
  std::printf("\nstored at %zu levels in %s (%.1f s); decode speed: warm calibration, %d threads:\n"
              "  %6s %12s %10s %10s %10s\n", manifest.levels.size(), store->uri().c_str(), put_s, o.workers,
              "level", "MB", "bits/elem", "rel.err", "dec GB/s");
  for (size_t i = 0; i < manifest.levels.size(); ++i) {
    const auto& l = manifest.levels[i];
    std::printf("  %6d %12.2f %10.3f %10.4f %10.2f\n", l.level, double(l.frame_bytes()) / 1e6,
                8.0 * double(l.frame_bytes()) / double(c.kv.shape.elements()), l.rel_error, warm[i]);
  }
  return manifest;
}

// Steps 3 and 4: serves the stored context through a link that drops mid-stream and fetches it
// with the adaptive controller into `fetched`. `base` receives the controller's settings.
Status fetch_with_controller(DemoOptions& o, const DemoContext& c, std::shared_ptr<Store> store, const Manifest& m,
                             const LinkTrace& trace, ControllerConfig& base, KVCache& fetched, FetchReport& report) {
  ServerOptions so;
  so.link = LinkConfig{trace, o.rtt_s};
  KVCODEC_ASSIGN_OR_RETURN(auto server, Server::start(store, so));
  std::printf("\nserving on 127.0.0.1:%u through an emulated link: %g Gb/s, dropping to %g Gb/s at %g ms; rtt %g ms\n",
              server->port(), o.high, o.low, o.drop_s * 1e3, o.rtt_s * 1e3);
  FetchOptions fo;
  fo.port = server->port();
  fo.id = "demo";
  if (o.slo_s == 0) o.slo_s = 0.8 * double(c.kv.shape.tokens) / o.prefill_tps;
  fo.controller.slo_s = o.slo_s;
  fo.controller.objective = o.objective;
  fo.controller.max_distortion = o.max_distortion;
  fo.controller.cost.rtt_s = o.rtt_s;
  fo.controller.cost.prefill_tokens_per_s = o.prefill_tps;
  fo.decode_threads = o.workers;
  fo.profile = o.profile;
  base = fo.controller;
  if (o.real) {
    KVCODEC_ASSIGN_OR_RETURN(fo.recompute, model_recompute(c.model, c.kv.shape));
    std::printf("TEXT chunks are recomputed by the model (prefill measured: %.0f tokens/s)\n", o.prefill_tps);
  } else {
    // Emulated recompute: the prefill time of the target model is charged, and the chunk is
    // filled from the original tensor (there is no model of this size here).
    const CostModel cost = fo.controller.cost;
    const KVCache& kv = c.kv;
    fo.recompute = [&kv, cost](uint32_t, uint32_t begin, std::span<const int32_t> ids, const KVView& dst) {
      const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                            cost.prefill_seconds(uint32_t(ids.size()), begin)));
      copy_tokens(kv, dst, begin, uint32_t(ids.size()));
      std::this_thread::sleep_until(until);
      return Status::Ok();
    };
    std::printf("TEXT chunks: recompute EMULATED -- charged %.0f tokens/s (an assumed GPU prefill rate), "
                "filled from the original tensor\n", o.prefill_tps);
  }
  const uint32_t n_chunks = m.num_chunks();
  fo.observer.on_chunk_ready = [n_chunks](const ChunkReport& r) { print_chunk_line(stdout, r, n_chunks); };
  fo.observer.on_failure = [](const FetchFailure& f) { print_failure_line(stdout, f); };
  std::printf("\nfetching %u chunks, SLO %.0f ms (adaptive controller; ready order shows the two-ended plan):\n",
              n_chunks, o.slo_s * 1e3);
  // The destination is prepared before the fetch, as a server's KV memory would be.
  KVCODEC_ASSIGN_OR_RETURN(fetched, KVCache::allocate(c.kv.dtype, c.kv.shape));
  const Status fs = fetch_context(fo, &fetched, &report);
  server->stop();
  return fs;
}

// Step 5: the real fetch, then the same context, link and costs in the simulator for the fixed
// strategies; raw fp16 is an extra option for its own row only (the server does not hold it).
StatusOr<std::vector<Row>> compare_strategies(const DemoContext& c, const Manifest& m, const LinkTrace& trace,
                                              const ControllerConfig& base, const FetchReport& report) {
  // Decode speeds: what the real fetch measured (its final estimate for levels it did not fetch),
  // so the simulation describes this machine as the fetch found it.
  ContextProfile profile = profile_from_manifest(m, 0, true);
  for (size_t i = 0; i < report.decode.size() && i < profile.options.size(); ++i) {
    const DecodeSpeed& d = report.decode[i];
    profile.options[i].decode_gbps = d.chunks > 0 ? d.effective_gbps : d.final_gbps > 0 ? d.final_gbps : d.seed_gbps;
  }
  ContextProfile with_fp16 = profile;
  with_fp16.options.push_back(ChunkOption{"fp16", -1, 0.0, 0.0, 0});  // raw bytes: nothing to decode
  for (uint32_t k = 0; k < m.num_chunks(); ++k) with_fp16.bytes[k].push_back(m.raw_chunk_bytes(k));
  const int fp16_option = int(with_fp16.options.size()) - 1;
  std::vector<Row> rows;
  auto simulate_row = [&](const std::string& name, ControllerConfig cc) -> Status {
    const ContextProfile& p = cc.plan == std::vector<int>{fp16_option} ? with_fp16 : profile;
    KVCODEC_ASSIGN_OR_RETURN(SimResult r, simulate(p, cc, trace));
    bool within = true;
    for (const ChunkTimeline& t : r.chunks) within &= t.option < 0 || p.options[size_t(t.option)].distortion <= base.max_distortion;
    rows.push_back({name, "simulated", r.ttft_s, r.bits_per_element, r.distortion, r.text_chunks, r.slo_met,
                    r.prefill_tokens, r.prefill_s, within});
    return Status::Ok();
  };
  auto fixed = [&](std::vector<int> plan) {
    ControllerConfig cc = base;
    cc.policy = Policy::kFixed;
    cc.plan = std::move(plan);
    return cc;
  };
  double fetched_error = 0;
  bool within = true;
  for (const auto& r : report.chunks) {
    if (r.level < 0) continue;
    fetched_error += m.find_level(r.level)->rel_error * m.chunk_token_count(r.chunk);
    within &= m.find_level(r.level)->rel_error <= base.max_distortion;
  }
  rows.push_back({"kvcodec adaptive", "real TCP", report.ttft_s, report.bits_per_element,
                  fetched_error / c.kv.shape.tokens, report.text_chunks, report.slo_met, report.prefill_tokens,
                  report.prefill_gpu_s, within});
  KVCODEC_RETURN_IF_ERROR(simulate_row("kvcodec adaptive", base));
  // The real fetch's own plan (its level or TEXT per chunk, each requested when the real fetch
  // requested it), simulated with the same speeds: the like-for-like figure for the transport and
  // the timing model (the adaptive row above re-plans).
  ControllerConfig replay = fixed(std::vector<int>(m.num_chunks(), kTextOption));
  replay.plan_request_s.assign(m.num_chunks(), 0.0);
  for (const auto& r : report.chunks) {
    if (r.chunk >= m.num_chunks()) continue;
    replay.plan_request_s[r.chunk] = std::max(0.0, r.request_s);
    for (size_t i = 0; i < m.levels.size(); ++i)
      if (r.level == m.levels[i].level) replay.plan[r.chunk] = int(i);
  }
  KVCODEC_RETURN_IF_ERROR(simulate_row("real fetch's plan", replay));
  ControllerConfig equal = base;
  equal.policy = Policy::kEqualBudget;
  KVCODEC_RETURN_IF_ERROR(simulate_row("CacheGen equal-budget", equal));
  KVCODEC_ASSIGN_OR_RETURN(std::vector<int> plan, oracle_plan(profile, base, trace));
  KVCODEC_RETURN_IF_ERROR(simulate_row("oracle (knows the trace)", fixed(plan)));
  for (size_t i = 0; i < m.levels.size(); ++i)
    KVCODEC_RETURN_IF_ERROR(simulate_row("kvcodec L" + std::to_string(m.levels[i].level) + " fixed", fixed({int(i)})));
  KVCODEC_RETURN_IF_ERROR(simulate_row("fp16 raw", fixed({fp16_option})));
  KVCODEC_RETURN_IF_ERROR(simulate_row("text only (recompute all)", fixed({kTextOption})));
  return rows;
}

void print_strategies(const std::vector<Row>& rows, const FetchReport& report, const ControllerConfig& base) {
  std::printf("\ndecode GB/s per level (%s objective): seed = warm calibration; in the fetch: warm decode "
              "(work) and effective (with the decoder thread's scheduling waits, what the plan used)\n",
              report.objective.c_str());
  for (const DecodeSpeed& d : report.decode) {
    if (d.chunks)
      std::printf("  L%d  seed %5.2f   fetch: warm %5.2f  effective %5.2f  (%u chunks)\n", d.level, d.seed_gbps,
                  d.measured_gbps, d.effective_gbps, d.chunks);
    else
      std::printf("  L%d  seed %5.2f   not fetched (planned at %.2f)\n", d.level, d.seed_gbps, d.final_gbps);
  }
  std::printf("\n%-28s %-10s %9s %9s %9s %5s %8s %7s %5s\n", "strategy", "source", "TTFT ms", "bits/elem", "rel.err",
              "text", "prefill", "GPU s", "SLO");
  for (const auto& r : rows)
    std::printf("%-28s %-10s %9.1f %9.3f %9.4f %5u %8llu %7.3f %5s\n", r.strategy.c_str(), r.source.c_str(),
                r.ttft_s * 1e3, r.bits_per_element, r.rel_error, r.text_chunks, (unsigned long long)r.prefill_tokens,
                r.prefill_gpu_s, r.slo_met ? "met" : "miss");
  // The simulator predicts the stream (first chunk request to all ready); the real TTFT also
  // holds the client's setup (manifest, allocating the destination).
  const double sim_adaptive = rows[1].ttft_s, sim_same_plan = rows[2].ttft_s;
  const double real_stream = report.stream_s + base.cost.first_token_s;
  std::printf("real TCP stream %.1f ms vs simulated adaptive %.1f ms: %+.1f%%; vs its own plan simulated %.1f ms: "
              "%+.1f%% (plus %.1f ms of setup in the real TTFT)\n",
              real_stream * 1e3, sim_adaptive * 1e3, 100.0 * (real_stream - sim_adaptive) / sim_adaptive,
              sim_same_plan * 1e3, 100.0 * (real_stream - sim_same_plan) / sim_same_plan, report.setup_s * 1e3);
}

// Step 6: with a real model, the perplexity of the continuation with the original and the
// fetched KV (null JSON for a synthetic context).
StatusOr<nlohmann::json> measure_quality(const DemoContext& c, const KVCache& fetched) {
  if (!c.model) {
    std::printf("quality: synthetic context -- only tensor error (rel.err) is meaningful; run with --model for perplexity\n");
    return nlohmann::json();
  }
  KVCODEC_ASSIGN_OR_RETURN(double base_nll, continuation_nll(*c.model, c.kv, c.continuation));
  KVCODEC_ASSIGN_OR_RETURN(double got_nll, continuation_nll(*c.model, fetched, c.continuation));
  const double ppl0 = std::exp(base_nll), ppl1 = std::exp(got_nll);
  std::printf("quality: perplexity of the next %zu tokens %.4f with the original KV, %.4f with the fetched KV (%+.3f%%)\n",
              c.continuation.size() - 1, ppl0, ppl1, 100 * (ppl1 / ppl0 - 1));
  return nlohmann::json{{"continuation_tokens", c.continuation.size() - 1}, {"ppl_base", ppl0}, {"ppl", ppl1},
                        {"ppl_delta_pct", 100 * (ppl1 / ppl0 - 1)}};
}

// Step 7: demo.json and demo.svg in the report directory; returns their paths.
StatusOr<std::pair<std::string, std::string>> write_reports(const DemoOptions& o, const DemoContext& c,
                                                            const Manifest& m, const LinkTrace& trace,
                                                            const FetchReport& report, const std::vector<Row>& rows,
                                                            const nlohmann::json& quality, double max_distortion) {
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) return IoError("cannot create " + o.out_dir + ": " + ec.message());
  const KVShape& sh = c.kv.shape;
  nlohmann::json j;
  j["context"] = {{"label", c.label}, {"synthetic", !o.real}, {"layers", sh.layers}, {"kv_heads", sh.kv_heads},
                  {"head_dim", sh.head_dim}, {"tokens", sh.tokens}, {"chunk_tokens", *o.chunk_tokens}};
  j["link"] = {{"high_gbps", o.high}, {"low_gbps", o.low}, {"drop_ms", o.drop_s * 1e3}, {"rtt_ms", o.rtt_s * 1e3}};
  j["costs"] = {{"prefill_tokens_per_s", o.prefill_tps}, {"recompute", o.real ? "model" : "emulated"},
                {"slo_ms", o.slo_s * 1e3}, {"objective", report.objective}, {"max_distortion", max_distortion}};
  j["manifest"] = nlohmann::json::parse(manifest_json(m, "demo"));
  j["fetch"] = nlohmann::json::parse(report.to_json());
  for (const auto& r : rows)
    j["strategies"].push_back({{"strategy", r.strategy}, {"source", r.source}, {"ttft_ms", r.ttft_s * 1e3},
                               {"bits_per_element", r.bits_per_element}, {"rel_error", r.rel_error},
                               {"text_chunks", r.text_chunks}, {"slo_met", r.slo_met},
                               {"prefill_tokens", r.prefill_tokens}, {"prefill_gpu_s", r.prefill_gpu_s},
                               {"within_quality_floor", r.within_floor}});
  if (o.real) j["quality"] = quality;
  const std::string json_path = o.out_dir + "/demo.json", svg_path = o.out_dir + "/demo.svg";
  std::ofstream(json_path) << j.dump(2) << "\n";
  std::ofstream(svg_path) << make_svg(report, trace, rows, o.slo_s, "kvcodec demo: " + c.label);
  if (!std::filesystem::exists(json_path) || !std::filesystem::exists(svg_path))
    return IoError("cannot write the report into " + o.out_dir);
  return std::pair{json_path, svg_path};
}

}  // namespace

int cmd_demo(int argc, char** argv) {
  Command cmd("demo",
              "kvcodec demo [--tokens N] [--levels LIST] [--chunk-tokens N] [--store URI] [--out DIR] "
              "[--high-gbps X --low-gbps Y --drop-ms T] [--rtt-ms R] [--slo-ms S] [--objective O] [--max-distortion D] "
              "[--prefill-tps P] [--model M --tokenizer T --text FILE [--offset B]]");
  DemoOptions o;
  if (int code = parse_demo_options(cmd, argc, argv, o); code >= 0) return code;
  const auto t_start = Clock::now();

  // 1. The context.
  DemoContext c;
  if (o.real) {
    auto m = Model::load(*o.model);
    if (!m.ok()) return cmd.fail(m.status());
    c.model = std::make_shared<const Model>(std::move(*m));
    if (c.model->config().seq_len <= kContinuation + 16) return cmd.usage_error("the model's context is too short for the demo");
  }
  if (Status s = o.real ? real_context(o, c) : synthetic_context(o, c); !s.ok()) return cmd.fail(s);
  std::printf("kvcodec demo -- %s\n", c.label.c_str());
  std::printf("context: %u layers x %u kv heads x %u, %u tokens, %s, %.1f MiB\n", c.kv.shape.layers,
              c.kv.shape.kv_heads, c.kv.shape.head_dim, c.kv.shape.tokens, dtype_name(c.kv.dtype),
              double(c.kv.data.size()) / 1048576.0);

  // 2. Encode the levels and store them.
  std::shared_ptr<Store> store;
  auto manifest = store_levels(o, c, store);
  if (!manifest.ok()) return cmd.fail(manifest.status());

  // 3-4. Serve it through a link that drops mid-stream; fetch with the adaptive controller.
  const LinkTrace trace{{{0.0, o.high}, {o.drop_s, o.low}}};
  ControllerConfig base;
  KVCache fetched;
  FetchReport report;
  if (Status s = fetch_with_controller(o, c, store, *manifest, trace, base, fetched, report); !s.ok())
    return cmd.fail(s);

  // 5. The same context, link and costs in the simulator.
  auto rows = compare_strategies(c, *manifest, trace, base, report);
  if (!rows.ok()) return cmd.fail(rows.status().with_context("simulation"));
  print_strategies(*rows, report, base);

  // 6. Quality on a real model; 7. reports.
  auto quality = measure_quality(c, fetched);
  if (!quality.ok()) return cmd.fail(quality.status());
  auto paths = write_reports(o, c, *manifest, trace, report, *rows, *quality, base.max_distortion);
  if (!paths.ok()) return cmd.fail(paths.status());
  std::printf("\nwrote %s and %s (%.1f s in all)\n", paths->first.c_str(), paths->second.c_str(), since(t_start));
  return 0;
}

}  // namespace kvcodec::cli
