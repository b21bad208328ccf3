// kvcodec sweep: simulates every way of fetching one context over a grid of links and reports
// TTFT and quality per strategy (docs/controller.md, results in docs/results/streaming.md).
//
// The context is encoded for real at every kvcodec level (sizes of every chunk, frame heads,
// measured decode speed and error); the baselines (int8, CacheGen as shipped) are measured with
// the eval library's implementations. The fetches themselves are simulated (simulator.hpp),
// with the same Controller the real client runs.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/baselines.hpp"
#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/simulator.hpp"
#include "kvcodec/synthetic.hpp"

namespace kvcodec::cli {
namespace {

using Clock = std::chrono::steady_clock;

// The options of `kvcodec sweep`.
struct SweepArgs {
  std::vector<double> bandwidths = {0.1, 0.3, 1, 3, 10, 30, 100};  // Gb/s, constant links
  std::vector<double> rtts = {1, 10};                              // ms
  std::optional<std::string> trace;                                // comma-separated trace files
  double slo_ms = 80;
  std::optional<std::string> context, synthetic;  // a KV file, or a synthetic shape (default llama3-8b)
  int64_t tokens = 2048;                          // of the synthetic context
  std::vector<int> levels = {0, 2, 4, 6, 8};
  uint32_t chunk_tokens = 256;
  double prefill_tps = 20000, prefill_attention_tokens = 32768, first_token_ms = 0;
  double decode_gbps = 0;  // 0: measured
  double prior_gbps = 1;
  bool warm_prior = false;
  uint32_t baseline_tokens = 512;
  int threads = 1;
  std::string json, svg;  // required
};

void declare(Command& cmd, SweepArgs& o) {
  cmd.option("--bandwidth-gbps", o.bandwidths, "constant link bandwidths, comma-separated (default 0.1,0.3,1,3,10,30,100)");
  cmd.option("--rtt-ms", o.rtts, "round-trip times, comma-separated (default 1,10)");
  cmd.option("--trace", o.trace, "comma-separated trace files (\"time_s gbps\" lines), simulated at every RTT");
  cmd.option("--slo-ms", o.slo_ms, "TTFT target for the quality objective and for slo_met (default 80)");
  cmd.option("--context", o.context, "KV cache file (.safetensors / .npy)");
  cmd.option("--synthetic", o.synthetic, "synthetic cache shape: llama3-8b, mistral-7b, llama3-70b (default llama3-8b)");
  cmd.option("--tokens", o.tokens, "tokens of the synthetic context (default 2048)", Range{1, kMaxTokens});
  cmd.option("--levels", o.levels, "kvcodec levels to store, comma-separated (default 0,2,4,6,8)", Range{0, kMaxLevel});
  cmd.option("--chunk-tokens", o.chunk_tokens, "tokens per chunk (default 256)", Range{1, kMaxChunkTokens});
  cmd.option("--prefill-tps", o.prefill_tps, "prefill throughput of the serving model, tokens/s (default 20000)");
  cmd.option("--prefill-attention-tokens", o.prefill_attention_tokens,
             "context position at which attention doubles the per-token prefill cost (default 32768)");
  cmd.option("--first-token-ms", o.first_token_ms, "time to run the first token once the KV is in place (default 0)");
  cmd.option("--decode-gbps", o.decode_gbps, "decoder throughput to plan and simulate with (default: measured)");
  cmd.option("--prior-gbps", o.prior_gbps, "bandwidth estimate before the first measured chunk (default 1)");
  cmd.flag("--warm-prior", o.warm_prior,
           "start from the link's bandwidth at time 0, as a client that just fetched over the same path would");
  cmd.option("--baseline-tokens", o.baseline_tokens, "tokens the int8 / CacheGen baselines are measured on (default 512)",
             Range{1, UINT32_MAX});
  cmd.option("--threads", o.threads, "encode / decode threads, 0 = all cores (default 1)", Range{0, 4096});
  cmd.option("--json", o.json, "output JSON");
  cmd.option("--svg", o.svg, "output SVG plot");
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

float element(const KVCache& kv, size_t i) {
  return detail::load_as_f32(kv.data.data() + i * dtype_size(kv.dtype), uint8_t(kv.dtype));
}

// ||a - b|| / ||a|| over every element.
double relative_error(const KVCache& a, const KVCache& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.shape.elements(); ++i) {
    const double x = element(a, i), d = x - element(b, i);
    num += d * d;
    den += x * x;
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

// One way to ship a chunk, as measured on this context.
struct Measured {
  ChunkOption option;
  std::vector<uint64_t> chunk_bytes;  // per chunk
  double bits_per_element = 0;
  std::string note;                   // how the size was obtained
};

StatusOr<Measured> measure_level(KVCache& kv, int level, uint32_t chunk_tokens, int threads) {
  EncodeOptions o;
  o.level = level;
  o.chunk_tokens = chunk_tokens;
  o.threads = threads;
  KVCODEC_RETURN_IF_ERROR(validate_options(o));
  std::vector<uint8_t> frame(max_encoded_size(kv.shape, kv.dtype, o));
  KVCODEC_ASSIGN_OR_RETURN(size_t size, encode_into(kv.view(), o, frame));
  frame.resize(size);
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo info, read_frame_info(frame));
  KVCODEC_ASSIGN_OR_RETURN(KVCache out, KVCache::allocate(kv.dtype, kv.shape));
  DecodeOptions d;
  d.threads = threads;
  const auto start = Clock::now();
  KVCODEC_RETURN_IF_ERROR(decode_into(frame, out.view(), d));
  const double decode_s = seconds_since(start);
  Measured m;
  m.option.name = "kvcodec-L" + std::to_string(level);
  m.option.level = level;
  m.option.distortion = relative_error(kv, out);
  m.option.decode_gbps = double(kv.data.size()) / decode_s / 1e9;
  m.option.setup_bytes = info.head_bytes;
  for (const ChunkInfo& c : info.chunks) m.chunk_bytes.push_back(c.size);
  m.bits_per_element = info.bits_per_element();
  m.note = "encoded (frame head fetched once per level)";
  return m;
}

// The eval library's baselines, run on the first `tokens` tokens; their size per token is
// applied to every chunk (CacheGen's tables are per 256-token chunk, so this is exact for
// 256-token chunks up to rounding).
Status measure_baselines(const KVCache& kv, uint32_t tokens, uint32_t chunk_tokens,
                         const std::vector<uint32_t>& chunk_sizes, double decode_gbps,
                         std::vector<Measured>* out) {
  tokens = std::min(tokens, kv.shape.tokens);
  eval::FloatKV in;
  in.shape = kv.shape;
  in.shape.tokens = tokens;
  in.values.resize(in.shape.elements());
  const size_t row = kv.shape.channels(), slice = size_t(kv.shape.tokens) * row;
  for (uint32_t l = 0; l < kv.shape.layers; ++l)
    for (uint32_t v = 0; v < 2; ++v)
      for (size_t i = 0; i < tokens * row; ++i)
        in.slice(l, v)[i] = element(kv, (size_t(l) * 2 + v) * slice + i);
  eval::round_to_f16(in);
  const std::string list = "int8,cachegen:levels=1-3:chunk=" + std::to_string(chunk_tokens);
  KVCODEC_ASSIGN_OR_RETURN(eval::SchemeList schemes, eval::make_schemes(list));
  for (const auto& s : schemes) {
    eval::FloatKV dec;
    KVCODEC_ASSIGN_OR_RETURN(uint64_t size, s->run(in, dec));
    double num = 0, den = 0;
    for (size_t i = 0; i < in.values.size(); ++i) {
      const double d = double(in.values[i]) - dec.values[i];
      num += d * d;
      den += double(in.values[i]) * in.values[i];
    }
    Measured m;
    const bool int8 = s->name() == "int8";
    m.option.name = int8 ? "int8" : "cachegen-" + s->setting();
    m.option.distortion = den > 0 ? std::sqrt(num / den) : 0;
    // int8 dequantizes at memory speed (counted free, like raw fp16); CacheGen's range decoder
    // is charged kvcodec's measured speed (no published figure; it is likely slower).
    m.option.decode_gbps = int8 ? 0 : decode_gbps;
    const double per_token = double(size) / tokens;
    for (uint32_t t : chunk_sizes) m.chunk_bytes.push_back(uint64_t(std::llround(per_token * t)));
    m.bits_per_element = 8.0 * double(size) / double(in.shape.elements());
    m.note = "eval baseline measured on the first " + std::to_string(tokens) + " tokens";
    out->push_back(std::move(m));
  }
  return Status::Ok();
}

struct Strategy {
  std::string name;
  Policy policy = Policy::kFixed;
  Objective objective = Objective::kMinTtft;
  int option = kTextOption;  // kFixed: index into the measured options
  bool oracle = false;
};

struct Row {
  double bandwidth_gbps, rtt_ms;
  std::string trace, strategy;
  SimResult r;
  double oracle_ratio = 0;  // adaptive rows: TTFT / the oracle's for the same objective
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

// TTFT vs bandwidth (log-log), one panel per round-trip time, one curve per strategy.
std::string render_svg(const std::vector<Row>& rows, const std::vector<std::string>& strategies,
                       const std::vector<double>& rtts, const std::string& title) {
  const double w = 760, panel_h = 330, left = 70, right = 200, top = 40, bottom = 50;
  double xmin = INFINITY, xmax = 0, ymin = INFINITY, ymax = 0;
  for (const Row& r : rows) {
    if (!r.trace.empty()) continue;
    xmin = std::min(xmin, r.bandwidth_gbps);
    xmax = std::max(xmax, r.bandwidth_gbps);
    ymin = std::min(ymin, r.r.ttft_s * 1e3);
    ymax = std::max(ymax, r.r.ttft_s * 1e3);
  }
  if (!(xmax > 0)) return "";
  const double lx0 = std::floor(std::log10(xmin)), lx1 = std::max(std::ceil(std::log10(xmax)), lx0 + 1);
  const double ly0 = std::floor(std::log10(ymin)), ly1 = std::max(std::ceil(std::log10(ymax)), ly0 + 1);
  const double pw = w - left - right, ph = panel_h - top - bottom;
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                          "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939",
                          "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"};
  const double height = panel_h * double(rtts.size()) + 10;
  char buf[512];
  std::string svg;
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                w, height);
  svg += buf;
  for (size_t p = 0; p < rtts.size(); ++p) {
    const double oy = panel_h * double(p);
    auto X = [&](double g) { return left + (std::log10(g) - lx0) / (lx1 - lx0) * pw; };
    auto Y = [&](double ms) { return oy + top + ph - (std::log10(ms) - ly0) / (ly1 - ly0) * ph; };
    std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"%.0f\" font-size=\"14\">%s, RTT %g ms</text>\n",
                  left, oy + 22, title.c_str(), rtts[p]);
    svg += buf;
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n",
                  left, oy + top, pw, ph);
    svg += buf;
    for (double e = lx0; e <= lx1; ++e) {  // decades on x
      const double x = X(std::pow(10, e));
      std::snprintf(buf, sizeof buf,
                    "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ddd\"/>"
                    "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%g</text>\n",
                    x, oy + top, x, oy + top + ph, x, oy + top + ph + 16, std::pow(10, e));
      svg += buf;
    }
    for (double e = ly0; e <= ly1; ++e) {  // decades on y
      const double y = Y(std::pow(10, e));
      std::snprintf(buf, sizeof buf,
                    "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                    "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                    left, y, left + pw, y, left - 6, y + 4, std::pow(10, e));
      svg += buf;
    }
    std::snprintf(buf, sizeof buf,
                  "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">link bandwidth (Gb/s, log)</text>"
                  "<text transform=\"translate(%.0f,%.0f) rotate(-90)\" text-anchor=\"middle\">TTFT (ms, log)</text>\n",
                  left + pw / 2, oy + top + ph + 36, left - 48, oy + top + ph / 2);
    svg += buf;
    for (size_t s = 0; s < strategies.size(); ++s) {
      std::string points;
      for (const Row& r : rows) {
        if (!r.trace.empty() || r.rtt_ms != rtts[p] || r.strategy != strategies[s]) continue;
        std::snprintf(buf, sizeof buf, "%.1f,%.1f ", X(r.bandwidth_gbps), Y(r.r.ttft_s * 1e3));
        points += buf;
      }
      const char* color = colors[s % std::size(colors)];
      const bool ours = strategies[s].rfind("adaptive", 0) == 0;
      std::snprintf(buf, sizeof buf,
                    "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"%s\"%s/>\n",
                    points.c_str(), color, ours ? "2.5" : "1.3",
                    strategies[s].rfind("oracle", 0) == 0 ? " stroke-dasharray=\"5,3\"" : "");
      svg += buf;
      const double ly = oy + top + 4 + 15.0 * double(s);
      std::snprintf(buf, sizeof buf,
                    "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" stroke-width=\"2\"/>"
                    "<text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
                    left + pw + 12, ly, left + pw + 32, ly, color, left + pw + 38, ly + 4,
                    strategies[s].c_str());
      svg += buf;
    }
  }
  svg += "</svg>\n";
  return svg;
}

// The profile of the measured options [begin, end) over chunks of chunk_sizes tokens.
ContextProfile profile_of(const std::vector<Measured>& measured, size_t begin, size_t end,
                          const std::vector<uint32_t>& chunk_sizes, uint64_t elements_per_token, DType dtype) {
  ContextProfile p;
  p.chunk_tokens = chunk_sizes;
  p.raw_bytes_per_token = elements_per_token * dtype_size(dtype);
  p.elements_per_token = elements_per_token;
  p.bytes.assign(chunk_sizes.size(), {});
  for (size_t i = begin; i < end; ++i) {
    p.options.push_back(measured[i].option);
    for (size_t c = 0; c < chunk_sizes.size(); ++c) p.bytes[c].push_back(measured[i].chunk_bytes[c]);
  }
  return p;
}

// The strategies of the sweep: text only, every measured option fixed (baselines, then the
// stored levels), and the controller's policies and the oracle over the stored levels.
std::vector<Strategy> sweep_strategies(const std::vector<Measured>& measured, size_t first_level, size_t end_level) {
  std::vector<Strategy> strategies;
  strategies.push_back({"text-only", Policy::kFixed, Objective::kMinTtft, kTextOption, false});
  for (size_t i = 0; i < measured.size(); ++i)
    if (i < first_level || i >= end_level) strategies.push_back({measured[i].option.name, Policy::kFixed, Objective::kMinTtft, int(i), false});
  for (size_t i = first_level; i < end_level; ++i)
    strategies.push_back({measured[i].option.name, Policy::kFixed, Objective::kMinTtft, int(i), false});
  strategies.push_back({"equal-budget", Policy::kEqualBudget, Objective::kBestQualityWithinSlo, 0, false});
  strategies.push_back({"adaptive-ttft", Policy::kAdaptive, Objective::kMinTtft, 0, false});
  strategies.push_back({"adaptive-quality", Policy::kAdaptive, Objective::kBestQualityWithinSlo, 0, false});
  strategies.push_back({"adaptive-min-prefill", Policy::kAdaptive, Objective::kMinPrefillWithinSlo, 0, false});
  strategies.push_back({"adaptive-min-prefill-unhedged", Policy::kAdaptive, Objective::kMinPrefillUnhedged, 0, false});
  strategies.push_back({"oracle-ttft", Policy::kFixed, Objective::kMinTtft, 0, true});
  strategies.push_back({"oracle-quality", Policy::kFixed, Objective::kBestQualityWithinSlo, 0, true});
  strategies.push_back({"oracle-min-prefill", Policy::kFixed, Objective::kMinPrefillWithinSlo, 0, true});
  return strategies;
}

// The links of the sweep and the controller's settings common to every point.
struct SweepGrid {
  const std::vector<double>& bandwidths;
  const std::vector<double>& rtts;
  const std::vector<std::pair<std::string, LinkTrace>>& traces;
  const ControllerConfig& base;
  bool warm_prior;
};

// Simulates every strategy at every point of the grid: constant links at each bandwidth, then the
// traces, at each RTT. Adaptive rows also get their TTFT relative to the oracle's.
StatusOr<std::vector<Row>> run_grid(const SweepGrid& g, const std::vector<Strategy>& strategies,
                                    const ContextProfile& all, const ContextProfile& stored) {
  const ControllerConfig& base = g.base;
  const bool warm_prior = g.warm_prior;
  std::vector<Row> rows;
  auto run_point = [&](double gbps, double rtt_ms, const std::string& trace_name, const LinkTrace& link) -> Status {
    std::map<std::string, double> oracle_ttft;
    const size_t first_row = rows.size();
    for (const Strategy& s : strategies) {
      ControllerConfig c = base;
      c.cost.rtt_s = rtt_ms / 1e3;
      if (warm_prior) {
        c.estimator.prior_gbps = link.steps.front().gbps;
        c.estimator.prior_measured = true;
      }
      c.policy = s.policy;
      c.objective = s.objective;
      const bool fixed_baseline = s.policy == Policy::kFixed && !s.oracle;
      const ContextProfile& p = fixed_baseline ? all : stored;
      if (fixed_baseline) c.plan = {s.option};
      if (s.oracle) {
        KVCODEC_ASSIGN_OR_RETURN(c.plan, oracle_plan(p, c, link));
      }
      KVCODEC_ASSIGN_OR_RETURN(SimResult r, simulate(p, c, link));
      if (s.oracle) oracle_ttft[s.name.substr(std::string("oracle").size())] = r.ttft_s;
      rows.push_back({gbps, rtt_ms, trace_name, s.name, std::move(r)});
    }
    for (size_t i = first_row; i < rows.size(); ++i)
      if (rows[i].strategy.rfind("adaptive", 0) == 0) {
        std::string objective = rows[i].strategy.substr(std::string("adaptive").size());
        if (objective.ends_with("-unhedged")) objective.resize(objective.size() - std::string("-unhedged").size());
        rows[i].oracle_ratio = rows[i].r.ttft_s / oracle_ttft[objective];  // the same oracle, hedged or not
      }
    return Status::Ok();
  };
  for (double rtt : g.rtts) {
    for (double gbps : g.bandwidths)
      KVCODEC_RETURN_IF_ERROR(run_point(gbps, rtt, "", LinkTrace::constant(gbps)));
    for (const auto& [name, t] : g.traces) KVCODEC_RETURN_IF_ERROR(run_point(t.steps.front().gbps, rtt, name, t));
  }

  return rows;
}

// The table of every row, and the targets of docs/results/streaming.md.
void print_sweep(const std::vector<Row>& rows, bool has_traces, const std::string& context_name, int64_t chunk_tokens,
                 double slo_ms, const ControllerConfig& base, bool warm_prior) {
  std::printf("%s; chunks of %lld tokens; SLO %.0f ms; prefill %.0f tokens/s; prior %s\n",
              context_name.c_str(), (long long)chunk_tokens, slo_ms, base.cost.prefill_tokens_per_s,
              warm_prior ? "warm" : (std::to_string(base.estimator.prior_gbps) + " Gb/s").c_str());
  std::printf("%-10s %7s %-22s %-20s %10s %8s %9s %5s %8s %7s %4s\n", "Gb/s", "RTT ms", "trace", "strategy",
              "TTFT ms", "bits/el", "rel.err", "text", "prefill", "GPU s", "SLO");
  for (const Row& r : rows)
    std::printf("%-10g %7g %-22s %-20s %10.2f %8.3f %9.5f %5u %8llu %7.4f %4s\n", r.bandwidth_gbps, r.rtt_ms,
                r.trace.empty() ? "constant" : r.trace.c_str(), r.strategy.c_str(), r.r.ttft_s * 1e3,
                r.r.bits_per_element, r.r.distortion, r.r.text_chunks, (unsigned long long)r.r.prefill_tokens,
                r.r.prefill_s, r.r.slo_met ? "yes" : "no");

  // The targets of docs/results/streaming.md (the README's bound: 3%).
  double worst = 0;
  int within = 0, points = 0;
  for (const Row& r : rows)
    if (r.trace.empty() && r.strategy == "adaptive-ttft") {
      ++points;
      within += r.oracle_ratio <= 1.03;
      worst = std::max(worst, r.oracle_ratio);
    }
  std::printf("\nadaptive-ttft within 3%% of oracle-ttft at %d of %d constant points (worst ratio %.3f)\n",
              within, points, worst);
  if (has_traces) {
    for (const char* name : {"adaptive-quality", "adaptive-min-prefill", "adaptive-min-prefill-unhedged",
                             "equal-budget", "oracle-quality", "oracle-min-prefill"}) {
      int met = 0, n = 0;
      double distortion = 0, prefill = 0;
      for (const Row& r : rows)
        if (!r.trace.empty() && r.strategy == name) {
          ++n;
          met += r.r.slo_met;
          distortion += r.r.distortion;
          prefill += r.r.prefill_s;
        }
      std::printf("traces: %-20s met the SLO %d/%d times, mean rel. error %.5f, mean prefill %.4f GPU s\n", name, met,
                  n, n ? distortion / n : 0.0, n ? prefill / n : 0.0);
    }
  }
}

// The sweep's JSON report: the context, the settings, every option and every row.
nlohmann::json sweep_json(const std::string& context_name, int64_t chunk_tokens, double slo_ms,
                          const ControllerConfig& base, bool warm_prior, const std::vector<Measured>& measured, const std::vector<Row>& rows) {
  nlohmann::json j;
  j["context"] = context_name;
  j["chunk_tokens"] = chunk_tokens;
  j["slo_ms"] = slo_ms;
  j["prefill_tokens_per_s"] = base.cost.prefill_tokens_per_s;
  j["prefill_attention_tokens"] = base.cost.prefill_attention_tokens;
  j["prior_gbps"] = warm_prior ? nlohmann::json("warm") : nlohmann::json(base.estimator.prior_gbps);
  for (const Measured& m : measured)
    j["options"].push_back({{"name", m.option.name},
                            {"bits_per_element", m.bits_per_element},
                            {"rel_error", m.option.distortion},
                            {"decode_gbps", m.option.decode_gbps},
                            {"setup_bytes", m.option.setup_bytes},
                            {"source", m.note}});
  for (const Row& r : rows) {
    nlohmann::json row = {{"bandwidth_gbps", r.bandwidth_gbps},
                          {"rtt_ms", r.rtt_ms},
                          {"trace", r.trace.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.trace)},
                          {"strategy", r.strategy},
                          {"ttft_ms", r.r.ttft_s * 1e3},
                          {"bits_per_element", r.r.bits_per_element},
                          {"slo_met", r.r.slo_met},
                          {"rel_error", r.r.distortion},
                          {"text_chunks", r.r.text_chunks},
                          {"prefill_tokens", r.r.prefill_tokens},
                          {"prefill_gpu_s", r.r.prefill_s},
                          {"bytes", r.r.bytes}};
    if (r.oracle_ratio > 0) row["ttft_vs_oracle"] = r.oracle_ratio;
    j["rows"].push_back(std::move(row));
  }
  return j;
}

// The controller's settings common to every point; the usage error (or "") in `error`.
ControllerConfig base_config(const SweepArgs& a, std::string* error) {
  ControllerConfig base;
  base.slo_s = a.slo_ms / 1e3;
  base.cost.prefill_tokens_per_s = a.prefill_tps;
  base.cost.prefill_attention_tokens = a.prefill_attention_tokens;
  base.cost.first_token_s = a.first_token_ms / 1e3;
  base.estimator.prior_gbps = a.prior_gbps;
  auto message = [](const Status& s) { return s.ok() ? std::string() : std::string(s.message()); };
  *error = "";
  if (a.json.empty() || a.svg.empty()) *error = "--json OUT.json and --svg OUT.svg are required";
  for (double b : a.bandwidths)
    if (error->empty()) *error = message(check_link_gbps(b, "--bandwidth-gbps"));
  for (double r : a.rtts)
    if (error->empty()) *error = message(check_seconds(r / 1e3, 60, "--rtt-ms / 1000"));
  if (error->empty()) *error = message(check_link_gbps(a.prior_gbps, "--prior-gbps"));
  if (!error->empty()) return base;
  if (a.levels.empty()) *error = "--levels is empty";
  else if (a.decode_gbps < 0) *error = "--decode-gbps must be >= 0";
  else if (Status s = base.validate(); !s.ok()) *error = s.to_string();
  else if (!(base.cost.prefill_tokens_per_s > 0)) *error = "--prefill-tps must be > 0";
  else if (a.context && a.synthetic) *error = "give --context or --synthetic, not both";
  return base;
}

StatusOr<std::vector<std::pair<std::string, LinkTrace>>> load_traces(const std::optional<std::string>& list) {
  std::vector<std::pair<std::string, LinkTrace>> traces;
  for (const std::string& path : split(list.value_or(""), ',')) {
    KVCODEC_ASSIGN_OR_RETURN(LinkTrace t, LinkTrace::load(path));
    traces.emplace_back(path.substr(path.find_last_of('/') + 1), std::move(t));
  }
  return traces;
}

// The context: --context's file, or a synthetic cache; its name for the reports in `name`.
StatusOr<KVCache> load_context(const SweepArgs& a, std::string* name) {
  if (a.context) {
    *name = *a.context;
    return load_kv(*a.context);
  }
  const std::string shape = a.synthetic.value_or("llama3-8b");
  *name = "synthetic " + shape + ", " + std::to_string(a.tokens) + " tokens, fp16";
  return make_synthetic(shape, uint32_t(a.tokens), DType::kF16, 1);
}

// Every way of shipping the context's chunks, measured: raw fp16, each stored level (encoded
// for real), then the eval baselines.
struct MeasuredContext {
  std::vector<Measured> measured;
  size_t first_level = 0, end_level = 0;  // the stored levels: measured[first_level, end_level)
  std::vector<uint32_t> chunk_sizes;
  uint64_t elements_per_token = 0;
};

StatusOr<MeasuredContext> measure_context(KVCache& kv, const SweepArgs& a) {
  MeasuredContext mc;
  Measured raw;
  raw.option.name = "fp16";
  raw.option.decode_gbps = 0;
  raw.note = "raw 16-bit elements";
  for (uint32_t t = 0; t < kv.shape.tokens; t += a.chunk_tokens)
    mc.chunk_sizes.push_back(std::min<uint32_t>(a.chunk_tokens, kv.shape.tokens - t));
  mc.elements_per_token = 2ull * kv.shape.layers * kv.shape.channels();
  for (uint32_t t : mc.chunk_sizes) raw.chunk_bytes.push_back(uint64_t(t) * mc.elements_per_token * 2);
  raw.bits_per_element = 16;
  mc.measured.push_back(raw);
  mc.first_level = mc.measured.size();
  double level_decode_gbps = 0;
  for (int l : a.levels) {
    StatusOr<Measured> m = measure_level(kv, l, a.chunk_tokens, a.threads);
    if (!m.ok()) return m.status().with_context("level " + std::to_string(l));
    if (a.decode_gbps > 0) m->option.decode_gbps = a.decode_gbps;
    level_decode_gbps += m->option.decode_gbps / double(a.levels.size());
    std::fprintf(stderr, "  L%-2d %6.3f bits/element  rel. error %.4f  decode %.2f GB/s\n", l, m->bits_per_element,
                 m->option.distortion, m->option.decode_gbps);
    mc.measured.push_back(std::move(*m));
  }
  mc.end_level = mc.measured.size();
  std::fprintf(stderr, "  baselines on %u tokens...\n", std::min(a.baseline_tokens, kv.shape.tokens));
  if (Status s = measure_baselines(kv, a.baseline_tokens, a.chunk_tokens, mc.chunk_sizes, level_decode_gbps, &mc.measured);
      !s.ok())
    return s.with_context("baselines");
  return mc;
}

Status write_text(const std::string& path, const std::string& text) {
  return write_file(path, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

}  // namespace

int cmd_sweep(int argc, char** argv) {
  Command cmd("sweep",
              "kvcodec sweep --bandwidth-gbps LIST --rtt-ms LIST [--trace FILES] [--slo-ms X] "
              "[--context FILE | --synthetic SHAPE --tokens N] [--levels LIST] [--chunk-tokens N] "
              "[--prefill-tps X] --json OUT.json --svg OUT.svg");
  SweepArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  std::string error;
  const ControllerConfig base = base_config(a, &error);
  if (!error.empty()) return cmd.usage_error(error);
  auto traces = load_traces(a.trace);
  if (!traces.ok()) return cmd.fail(traces.status());

  // ---- The context, measured ----
  std::string context_name;
  StatusOr<KVCache> kv = load_context(a, &context_name);
  if (!kv.ok()) return cmd.fail(kv.status());
  std::fprintf(stderr, "sweep: %s, %.0f MiB of KV; encoding %zu levels...\n", context_name.c_str(),
               double(kv->data.size()) / (1 << 20), a.levels.size());
  auto mc = measure_context(*kv, a);
  if (!mc.ok()) return cmd.fail(mc.status());

  // Every option in one profile (fixed strategies), and the stored levels alone (what a store
  // holds: the adaptive controller, CacheGen's heuristic and the oracle choose among them).
  const ContextProfile all =
      profile_of(mc->measured, 0, mc->measured.size(), mc->chunk_sizes, mc->elements_per_token, kv->dtype);
  const ContextProfile stored =
      profile_of(mc->measured, mc->first_level, mc->end_level, mc->chunk_sizes, mc->elements_per_token, kv->dtype);
  const std::vector<Strategy> strategies = sweep_strategies(mc->measured, mc->first_level, mc->end_level);

  // ---- The grid ----
  const SweepGrid grid{a.bandwidths, a.rtts, *traces, base, a.warm_prior};
  auto rows = run_grid(grid, strategies, all, stored);
  if (!rows.ok()) return cmd.fail(rows.status());

  // ---- Outputs ----
  print_sweep(*rows, !traces->empty(), context_name, a.chunk_tokens, a.slo_ms, base, a.warm_prior);
  const nlohmann::json j = sweep_json(context_name, a.chunk_tokens, a.slo_ms, base, a.warm_prior, mc->measured, *rows);
  if (Status s = write_text(a.json, j.dump(1) + "\n"); !s.ok()) return cmd.fail(s);
  std::vector<std::string> names;
  for (const Strategy& s : strategies) names.push_back(s.name);
  if (Status s = write_text(a.svg, render_svg(*rows, names, a.rtts, context_name)); !s.ok()) return cmd.fail(s);
  return 0;
}

}  // namespace kvcodec::cli
