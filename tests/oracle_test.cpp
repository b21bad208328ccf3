// An exhaustive plan oracle, written from the timing model documented in controller.hpp and
// docs/controller.md and sharing no code with the library's plan search (detail::search_plans,
// used by oracle_plan() and the Controller): for small contexts it scores every plan (every
// option and TEXT for every chunk) and keeps the best. Tests:
//   * its scoring of a fixed plan equals simulate()'s (so both read the model the same way);
//   * oracle_plan(), which `kvcodec sweep` and `kvcodec demo` run as "the oracle", finds a plan
//     as good as the exhaustive best on random small cases (sizes, decode rates, head bytes,
//     round trips, bandwidths and link traces);
//   * the adaptive controller's TTFT is within the README's bound (3%) of the exhaustive
//     oracle's on constant links from 0.1 to 100 Gb/s, in the sweep's set-up
//     (docs/results/streaming.md: 8 chunks of 256 tokens of a Llama-3-8B-shaped cache, the
//     sweep's measured sizes, a 100 GB/s decoder, 20,000 tokens/s prefill, SLO 80 ms).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "controller_test_util.hpp"
#include "kvcodec/controller.hpp"
#include "kvcodec/simulator.hpp"

namespace kvcodec {
namespace {

using test::sweep_profile;

struct Score {
  double ttft_s = 0;
  double distortion = 0;  // mean over tokens
  double prefill_s = 0;   // GPU seconds of the TEXT chunks
};

// The state of a plan after its first chunks, every chunk requested at time 0 in context order
// (Policy::kFixed), straight from the documented model: the server starts sending a KV chunk
// rtt/2 after the request or when the link is free, its last byte arrives rtt/2 after it left;
// one FIFO decoder takes raw bytes / decode rate per chunk (free when the rate is <= 0); an
// option's frame head (setup_bytes) precedes its first chunk; TEXT chunks prefill in order on
// one GPU, each once every earlier chunk is ready.
struct Prefix {
  double link_free = 0, decoder_free = 0, gpu_free = 0, all_ready = 0;
  double distortion = 0;  // token-weighted sum
  double prefill_s = 0;
  uint64_t position = 0;  // tokens so far
  uint64_t heads_sent = 0;  // bit o: option o's frame head is on the link
};

Prefix add_chunk(Prefix s, const ContextProfile& p, const CostModel& cost, const LinkTrace& link, size_t c, int o) {
  const uint32_t n = p.chunk_tokens[c];
  double ready;
  if (o == kTextOption) {
    s.prefill_s += cost.prefill_seconds(n, s.position);
    ready = s.gpu_free = std::max(s.gpu_free, s.all_ready) + cost.prefill_seconds(n, s.position);
  } else {
    const ChunkOption& opt = p.options[size_t(o)];
    uint64_t bytes = p.bytes[c][size_t(o)];
    if (!(s.heads_sent >> o & 1)) bytes += opt.setup_bytes;
    s.heads_sent |= uint64_t(1) << o;
    s.link_free = link.finish_time(std::max(s.link_free, cost.rtt_s / 2), bytes);
    const double arrival = s.link_free + cost.rtt_s / 2;
    const double decode = opt.decode_gbps > 0 ? double(n) * double(p.raw_bytes_per_token) / (opt.decode_gbps * 1e9) : 0;
    ready = s.decoder_free = std::max(arrival, s.decoder_free) + decode;
    s.distortion += n * opt.distortion;
  }
  s.all_ready = std::max(s.all_ready, ready);
  s.position += n;
  return s;
}

Score score_of(const Prefix& s, const CostModel& cost) {
  return {s.all_ready + cost.first_token_s, s.distortion / double(s.position), s.prefill_s};
}

Score score_plan(const ContextProfile& p, const CostModel& cost, const LinkTrace& link, const std::vector<int>& plan) {
  Prefix s;
  for (size_t c = 0; c < plan.size(); ++c) s = add_chunk(s, p, cost, link, c, plan[c]);
  return score_of(s, cost);
}

bool close(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max({1.0, std::abs(a), std::abs(b)}); }

// The best plan over all (options + TEXT)^chunks plans, every one scored to the end (a plain
// enumeration, sharing only the prefixes' state): kMinTtft = lowest TTFT;
// kBestQualityWithinSlo = lowest distortion among the plans that meet the SLO, or the lowest
// TTFT when none does; kMinPrefillWithinSlo = among the plans that meet the SLO with options
// within the quality floor only, the least prefill, then the lowest distortion.
struct Exhaustive {
  Score best{std::numeric_limits<double>::infinity(), 0};
  bool feasible = false;  // some plan meets the SLO
  uint64_t plans = 0;
};

void enumerate(const ContextProfile& p, const ControllerConfig& config, const LinkTrace& link,
               const std::vector<int>& choices, size_t c, const Prefix& s, Exhaustive& e) {
  if (c == p.chunks()) {
    const Score x = score_of(s, config.cost);
    ++e.plans;
    e.best.ttft_s = std::min(e.best.ttft_s, x.ttft_s);
    if (x.ttft_s <= config.slo_s) {
      if (config.objective == Objective::kMinPrefillWithinSlo) {
        const bool first = !e.feasible || x.prefill_s < e.best.prefill_s * (1 - 1e-12);
        if (first || (x.prefill_s <= e.best.prefill_s * (1 + 1e-12) && x.distortion < e.best.distortion)) {
          e.best.prefill_s = x.prefill_s;
          e.best.distortion = x.distortion;
        }
      } else {
        e.best.distortion = e.feasible ? std::min(e.best.distortion, x.distortion) : x.distortion;
      }
      e.feasible = true;
    }
    return;
  }
  for (int o : choices) enumerate(p, config, link, choices, c + 1, add_chunk(s, p, config.cost, link, c, o), e);
}

Exhaustive exhaustive(const ContextProfile& p, const ControllerConfig& config, const LinkTrace& link) {
  std::vector<int> choices;
  if (p.text_available && config.cost.prefill_tokens_per_s > 0) choices.push_back(kTextOption);
  const bool floor = config.objective == Objective::kMinPrefillWithinSlo;
  for (int o = 0; o < int(p.options.size()); ++o)
    if (!floor || p.options[size_t(o)].distortion <= config.max_distortion) choices.push_back(o);
  if (choices.empty())  // no TEXT and nothing within the floor: the floor gives way
    for (int o = 0; o < int(p.options.size()); ++o) choices.push_back(o);
  Exhaustive e;
  enumerate(p, config, link, choices, 0, Prefix{}, e);
  return e;
}

SimResult run_fixed(const ContextProfile& p, ControllerConfig c, const LinkTrace& link, std::vector<int> plan) {
  c.policy = Policy::kFixed;
  c.plan = std::move(plan);
  auto r = simulate(p, c, link);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? *r : SimResult{};
}

// ---- Random small cases -------------------------------------------------------------------------

struct Case {
  ContextProfile profile;
  ControllerConfig config;
  LinkTrace link;
};

Case random_case(std::mt19937_64& rng) {
  auto uni = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
  auto pick = [&](uint32_t lo, uint32_t hi) { return uint32_t(std::uniform_int_distribution<uint32_t>(lo, hi)(rng)); };
  auto log_uni = [&](double lo, double hi) { return std::exp(uni(std::log(lo), std::log(hi))); };
  Case k;
  ContextProfile& p = k.profile;
  p.raw_bytes_per_token = uint64_t(log_uni(1e3, 2e5));
  p.elements_per_token = p.raw_bytes_per_token / 2;
  p.text_available = rng() % 8 != 0;
  const uint32_t chunks = pick(1, 6), options = pick(1, 4);
  for (uint32_t o = 0; o < options; ++o) {
    ChunkOption opt;
    opt.name = "o" + std::to_string(o);
    opt.distortion = rng() % 4 == 0 ? 0.0 : uni(0, 0.3);
    opt.decode_gbps = rng() % 4 == 0 ? 0.0 : log_uni(0.5, 200);
    opt.setup_bytes = rng() % 3 == 0 ? 0 : uint64_t(log_uni(1e2, 1e6));
    p.options.push_back(opt);
  }
  std::vector<double> fraction(options);
  for (double& f : fraction) f = log_uni(0.05, 1.0);
  for (uint32_t c = 0; c < chunks; ++c) {
    p.chunk_tokens.push_back(pick(1, 512));
    std::vector<uint64_t> row;
    for (uint32_t o = 0; o < options; ++o)
      row.push_back(uint64_t(p.chunk_tokens.back() * double(p.raw_bytes_per_token) * fraction[o] * uni(0.7, 1.3)));
    p.bytes.push_back(row);
  }
  ControllerConfig& c = k.config;
  const Objective objectives[] = {Objective::kMinTtft, Objective::kBestQualityWithinSlo,
                                  Objective::kMinPrefillWithinSlo};
  c.objective = objectives[rng() % 3];
  c.max_distortion = rng() % 3 == 0 ? INFINITY : uni(0, 0.3);
  c.cost.rtt_s = rng() % 4 == 0 ? 0.0 : log_uni(1e-4, 0.03);
  c.cost.prefill_tokens_per_s = log_uni(2e3, 1e5);
  c.cost.prefill_attention_tokens = rng() % 2 ? 0.0 : log_uni(256, 32768);
  c.cost.first_token_s = rng() % 2 ? 0.0 : uni(0, 0.01);
  const double text_time = c.cost.prefill_seconds(uint32_t(p.tokens()), 0);
  c.slo_s = text_time * log_uni(0.2, 2.0);
  c.estimator.prior_gbps = log_uni(0.1, 100);
  const uint32_t steps = pick(1, 4);
  double t = 0;
  for (uint32_t s = 0; s < steps; ++s) {
    k.link.steps.push_back({t, log_uni(0.05, 100)});
    t += log_uni(1e-3, std::max(2e-3, text_time));
  }
  return k;
}

TEST(ExhaustiveOracle, ScoresAFixedPlanAsTheSimulatorDoes) {
  std::mt19937_64 rng(16);
  for (int i = 0; i < 300; ++i) {
    const Case k = random_case(rng);
    std::vector<int> plan;
    for (uint32_t c = 0; c < k.profile.chunks(); ++c) {
      const int lo = k.profile.text_available ? kTextOption : 0;
      plan.push_back(lo + int(rng() % uint64_t(int(k.profile.options.size()) - lo)));
    }
    const Score s = score_plan(k.profile, k.config.cost, k.link, plan);
    const SimResult r = run_fixed(k.profile, k.config, k.link, plan);
    EXPECT_TRUE(close(s.ttft_s, r.ttft_s)) << "case " << i << ": " << s.ttft_s << " vs " << r.ttft_s;
    EXPECT_TRUE(close(s.distortion, r.distortion)) << "case " << i;
  }
}

TEST(ExhaustiveOracle, SweepOracleFindsTheBestPlanOnSmallCases) {
  std::mt19937_64 rng(1616);
  int feasible = 0, with_text = 0, min_prefill = 0;
  for (int i = 0; i < 600; ++i) {
    const Case k = random_case(rng);
    const Exhaustive e = exhaustive(k.profile, k.config, k.link);
    auto plan = oracle_plan(k.profile, k.config, k.link);
    ASSERT_TRUE(plan.ok()) << plan.status().to_string();
    const SimResult r = run_fixed(k.profile, k.config, k.link, *plan);
    with_text += r.text_chunks > 0;
    const std::string where = "case " + std::to_string(i) + " (" + std::to_string(k.profile.chunks()) + " chunks, " +
                              std::to_string(k.profile.options.size()) + " options, " +
                              std::to_string(e.plans) + " plans)";
    if (k.config.objective == Objective::kMinTtft || !e.feasible) {
      EXPECT_LE(r.ttft_s, e.best.ttft_s * (1 + 1e-9)) << where;
    } else {
      ++feasible;
      EXPECT_TRUE(r.slo_met) << where;
      if (k.config.objective == Objective::kMinPrefillWithinSlo) {
        ++min_prefill;
        EXPECT_LE(r.prefill_s, e.best.prefill_s * (1 + 1e-9) + 1e-12) << where;
        if (r.prefill_s < e.best.prefill_s * (1 - 1e-9)) continue;
      }
      EXPECT_LE(r.distortion, e.best.distortion + 1e-12) << where << ": " << r.distortion << " vs " << e.best.distortion;
    }
  }
  // The cases exercise both objectives' interesting branches.
  EXPECT_GT(feasible, 50);
  EXPECT_GT(min_prefill, 30);
  EXPECT_GT(with_text, 50);
}

// ---- The sweep's set-up -------------------------------------------------------------------------

// The bound the README states for the adaptive controller against an oracle that knows the
// bandwidth (constant links, 0.1-100 Gb/s).
constexpr double kReadmeBound = 1.03;

TEST(ExhaustiveOracle, AdaptiveIsWithinTheReadmeBoundOfTheExhaustiveOracle) {
  const ContextProfile p = sweep_profile();
  double worst = 0;
  std::string worst_at;
  for (double rtt_ms : {1.0, 10.0}) {
    for (double gbps : {0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0}) {
      const LinkTrace link = LinkTrace::constant(gbps);
      ControllerConfig c;
      c.policy = Policy::kAdaptive;
      c.objective = Objective::kMinTtft;
      c.slo_s = 0.080;
      c.cost.rtt_s = rtt_ms / 1e3;
      c.cost.prefill_tokens_per_s = 20000;
      c.cost.prefill_attention_tokens = 32768;
      const Exhaustive e = exhaustive(p, c, link);
      for (bool warm : {true, false}) {
        c.estimator.prior_gbps = warm ? gbps : 1.0;
        c.estimator.prior_measured = warm;
        auto adaptive = simulate(p, c, link);
        ASSERT_TRUE(adaptive.ok()) << adaptive.status().to_string();
        const double ratio = adaptive->ttft_s / e.best.ttft_s;
        if (ratio > worst) {
          worst = ratio;
          worst_at = std::string(warm ? "warm" : "cold") + ", " + std::to_string(gbps) + " Gb/s, RTT " +
                     std::to_string(rtt_ms) + " ms";
        }
        EXPECT_LE(ratio, kReadmeBound) << (warm ? "warm" : "cold") << " prior, " << gbps << " Gb/s, RTT " << rtt_ms
                                       << " ms: adaptive " << adaptive->ttft_s * 1e3 << " ms, exhaustive oracle "
                                       << e.best.ttft_s * 1e3 << " ms";
      }
    }
  }
  std::printf("adaptive-ttft / exhaustive oracle, worst over 28 points: %.4f (%s)\n", worst, worst_at.c_str());
}

}  // namespace
}  // namespace kvcodec
