// Tests for simulator.hpp and LinkTrace: trace parsing, virtual-time arithmetic, determinism,
// and whole runs of the controller against the oracle.
#include "kvcodec/simulator.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "controller_test_util.hpp"
#include "kvcodec/stream.hpp"

namespace kvcodec {
namespace {

using test::option_named;
using test::test_cost;
using test::test_profile;

// ---- Traces -------------------------------------------------------------------------------------

TEST(LinkTrace, ParsesStepsCommentsAndBlankLines) {
  auto t = LinkTrace::parse("# a 10x drop\n0 10\n\n0.5  1   # down\n1.5\t10\r\n");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  ASSERT_EQ(t->steps.size(), 3u);
  EXPECT_DOUBLE_EQ(t->gbps_at(0.0), 10);
  EXPECT_DOUBLE_EQ(t->gbps_at(0.7), 1);
  EXPECT_DOUBLE_EQ(t->gbps_at(99), 10);
}

TEST(LinkTrace, MalformedTextIsAnErrorWithItsLine) {
  const char* bad[] = {
      "",                  // no steps
      "# only a comment\n",
      "1 10\n",            // must start at 0
      "0 10\n0 5\n",       // times must increase
      "0 10\n2 5\n1 5\n",
      "0 0\n",             // zero bandwidth would never deliver
      "0 -3\n",
      "0 inf\n",
      "0 10 extra\n",
      "0\n",
      "zero ten\n",
      "0 10\nnan 5\n",
  };
  for (const char* text : bad) {
    auto t = LinkTrace::parse(text);
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument) << "'" << text << "'";
  }
  EXPECT_NE(std::string(LinkTrace::parse("0 10\nx 5\n").status().message()).find("line 2"),
            std::string::npos);
  EXPECT_FALSE(LinkTrace::load("/nonexistent/trace.txt").ok());
}

TEST(LinkTrace, LoadsAFile) {
  const auto path = std::filesystem::temp_directory_path() / "kvcodec_trace_test.txt";
  std::ofstream(path) << "0 4\n1 0.4\n";
  auto t = LinkTrace::load(path.string());
  std::filesystem::remove(path);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->steps.size(), 2u);
}

TEST(LinkTrace, FinishTimeIntegratesAcrossSteps) {
  auto t = LinkTrace::parse("0 1\n1 2\n");
  ASSERT_TRUE(t.ok());
  // From 0.5 s: 62.5 MB go at 1 Gb/s until 1 s, the other 187.5 MB at 2 Gb/s take 0.75 s.
  EXPECT_NEAR(t->finish_time(0.5, 250'000'000), 1.75, 1e-12);
  EXPECT_NEAR(t->finish_time(2.0, 250'000'000), 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(t->finish_time(0.3, 0), 0.3);
}

// ---- Runs ---------------------------------------------------------------------------------------

ControllerConfig config_for(Policy policy, Objective objective, double slo_s, double rtt_s) {
  ControllerConfig c;
  c.policy = policy;
  c.objective = objective;
  c.slo_s = slo_s;
  c.cost = test_cost();
  c.cost.rtt_s = rtt_s;
  return c;
}

SimResult run(const ContextProfile& p, const ControllerConfig& c, const LinkTrace& link) {
  auto r = simulate(p, c, link);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? *r : SimResult{};
}

SimResult run_oracle(const ContextProfile& p, ControllerConfig c, const LinkTrace& link) {
  auto plan = oracle_plan(p, c, link);
  EXPECT_TRUE(plan.ok()) << plan.status().to_string();
  c.policy = Policy::kFixed;
  c.plan = plan.ok() ? *plan : std::vector<int>{0};
  return run(p, c, link);
}

TEST(Simulator, FixedPlanMatchesTheTimingModel) {
  // One raw chunk: rtt + bytes / bandwidth, nothing to decode.
  ContextProfile p = test_profile(1);
  ControllerConfig c = config_for(Policy::kFixed, Objective::kMinTtft, 1, 0.01);
  c.plan = {option_named(p, "fp16")};
  c.cost.first_token_s = 0.005;
  const SimResult r = run(p, c, LinkTrace::constant(8));  // 1 GB/s
  const double bytes = 256.0 * test::kRawPerToken;
  EXPECT_NEAR(r.ttft_s, 0.01 + bytes / 1e9 + 0.005, 1e-12);
  EXPECT_EQ(r.bytes, uint64_t(bytes));
  EXPECT_NEAR(r.bits_per_element, 16.0, 1e-12);
  EXPECT_TRUE(r.slo_met);
  // TEXT: no transfer, only the prefill.
  c.plan = {kTextOption};
  const SimResult t = run(p, c, LinkTrace::constant(8));
  EXPECT_NEAR(t.ttft_s, c.cost.prefill_seconds(256, 0) + 0.005, 1e-12);
  EXPECT_EQ(t.text_chunks, 1u);
  EXPECT_DOUBLE_EQ(t.distortion, 0);
}

TEST(Simulator, FixedPlanWithRequestTimesStartsEachChunkAtItsTime) {
  // A raw chunk requested at 100 ms: the timing model from then on.
  ContextProfile p = test_profile(1);
  ControllerConfig c = config_for(Policy::kFixed, Objective::kMinTtft, 1, 0.01);
  c.plan = {option_named(p, "fp16")};
  c.plan_request_s = {0.1};
  c.cost.first_token_s = 0.005;
  const SimResult r = run(p, c, LinkTrace::constant(8));  // 1 GB/s
  EXPECT_NEAR(r.ttft_s, 0.1 + 0.01 + 256.0 * test::kRawPerToken / 1e9 + 0.005, 1e-12);
}

TEST(Simulator, DecodeOverlapsTheNextTransfer) {
  // Two L0 chunks at a link twice as fast as the decoder: the second chunk's decode, not its
  // transfer, sets TTFT.
  ContextProfile p = test_profile(2);
  ControllerConfig c = config_for(Policy::kFixed, Objective::kMinTtft, 1, 0);
  c.plan = {option_named(p, "L0")};
  const double bytes = double(p.bytes[0][size_t(option_named(p, "L0"))]);
  const double decode = 256.0 * test::kRawPerToken / 2e9;
  const double link_gbps = 8 * bytes / (decode / 2) / 1e9;
  const SimResult r = run(p, c, LinkTrace::constant(link_gbps));
  EXPECT_NEAR(r.ttft_s, decode / 2 + 2 * decode, 1e-9);
}

TEST(Simulator, IsDeterministic) {
  auto trace = LinkTrace::parse("0 20\n0.02 2\n0.05 0.2\n0.2 20\n");
  ASSERT_TRUE(trace.ok());
  const ContextProfile p = test_profile(24);
  for (Policy policy : {Policy::kAdaptive, Policy::kEqualBudget}) {
    const ControllerConfig c = config_for(policy, Objective::kBestQualityWithinSlo, 0.3, 0.005);
    const SimResult a = run(p, c, *trace), b = run(p, c, *trace);
    EXPECT_EQ(a.ttft_s, b.ttft_s);
    EXPECT_EQ(a.bytes, b.bytes);
    ASSERT_EQ(a.chunks.size(), b.chunks.size());
    for (size_t i = 0; i < a.chunks.size(); ++i) {
      EXPECT_EQ(a.chunks[i].option, b.chunks[i].option);
      EXPECT_EQ(a.chunks[i].ready_s, b.chunks[i].ready_s);
    }
  }
}

// README: within 3% of the oracle in the sweep's set-up (8 chunks, a 100 GB/s decoder; below
// and oracle_test.cpp); with 32 chunks and a decoder slower than the link (2 GB/s) the
// controller comes within 8% (7.7% measured at 100 Gb/s, RTT 1 ms).
TEST(Simulator, AdaptiveIsWithinEightPercentOfTheOracleWithASlowDecoder) {
  const ContextProfile p = test_profile(32);
  for (double rtt : {0.0, 0.001}) {
    for (double gbps : {0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0}) {
      const LinkTrace link = LinkTrace::constant(gbps);
      ControllerConfig c = config_for(Policy::kAdaptive, Objective::kMinTtft, 1, rtt);
      const SimResult adaptive = run(p, c, link);
      const SimResult oracle = run_oracle(p, c, link);
      EXPECT_LE(adaptive.ttft_s, 1.08 * oracle.ttft_s) << gbps << " Gb/s, rtt " << rtt;
      // Every fixed strategy is at best as fast as the oracle.
      for (int o = kTextOption; o < int(p.options.size()); ++o) {
        ControllerConfig f = c;
        f.policy = Policy::kFixed;
        f.plan = {o};
        EXPECT_LE(oracle.ttft_s, run(p, f, link).ttft_s * (1 + 1e-9)) << o;
      }
    }
  }
}

TEST(Simulator, ColdStartIsWithinThreePercentOfTheOracleOnConstantLinks) {
  // The sweep's shape (docs/results/streaming.md): 8 chunks, a decoder far faster than prefill,
  // and no history: the estimator starts at its default prior (1 Gb/s) whatever the link. At
  // 30-100 Gb/s the oracle recomputes nothing, or only a chunk that a 10 ms round trip hides,
  // so committing the first chunk to TEXT on the prior's word, or sizing the first requests
  // for 1 Gb/s, would cost 20-200%.
  ContextProfile p = test_profile(8);
  for (ChunkOption& o : p.options)
    if (o.decode_gbps > 0) o.decode_gbps = 100;
  for (double rtt : {0.001, 0.01}) {
    for (double gbps : {0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0}) {
      const LinkTrace link = LinkTrace::constant(gbps);
      ControllerConfig c = config_for(Policy::kAdaptive, Objective::kMinTtft, 0.08, rtt);
      c.cost.prefill_tokens_per_s = 20000;
      ASSERT_EQ(c.estimator.prior_gbps, 1.0);
      const SimResult adaptive = run(p, c, link);
      const SimResult oracle = run_oracle(p, c, link);
      EXPECT_LE(adaptive.ttft_s, 1.03 * oracle.ttft_s) << gbps << " Gb/s, rtt " << rtt;
    }
  }
}

TEST(Simulator, AdaptiveSwitchesToTextWhenTheLinkCollapses) {
  auto trace = LinkTrace::parse("0 10\n0.03 0.01\n");
  ASSERT_TRUE(trace.ok());
  const ContextProfile p = test_profile(32);
  ControllerConfig c = config_for(Policy::kAdaptive, Objective::kMinTtft, 1, 0.002);
  c.estimator.prior_gbps = 10;
  const SimResult adaptive = run(p, c, *trace);
  EXPECT_GT(adaptive.text_chunks, 16u);
  // The KV requests caught by the collapse are abandoned and recomputed, except at most the one
  // that was nearly through.
  uint32_t kv_after_collapse = 0;
  for (const ChunkTimeline& t : adaptive.chunks)
    kv_after_collapse += t.option != kTextOption && t.arrival_s > 0.03;
  EXPECT_LE(kv_after_collapse, 1u);
  ControllerConfig f = c;
  f.policy = Policy::kFixed;
  f.plan = {option_named(p, "L8")};
  EXPECT_LT(adaptive.ttft_s, 0.5 * run(p, f, *trace).ttft_s);
}

TEST(Simulator, QualityWithinSloFallsWithBandwidthAndMeetsTheSlo) {
  // The SLO (0.25 s) is below the 0.34 s of recomputing all 4096 tokens.
  const ContextProfile p = test_profile(16);
  double previous = -1;
  for (double gbps : {1000.0, 100.0, 30.0, 10.0, 3.0}) {
    const ControllerConfig c =
        config_for(Policy::kAdaptive, Objective::kBestQualityWithinSlo, 0.25, 0.002);
    const SimResult r = run(p, c, LinkTrace::constant(gbps));
    EXPECT_TRUE(r.slo_met) << gbps << " Gb/s: " << r.ttft_s;
    EXPECT_GE(r.distortion, previous) << gbps;
    previous = r.distortion;
  }
  EXPECT_GT(previous, 0);
}

TEST(Simulator, ErrorsAreStatuses) {
  const ContextProfile p = test_profile(4);
  ControllerConfig c = config_for(Policy::kAdaptive, Objective::kMinTtft, 1, 0);
  LinkTrace empty;
  EXPECT_EQ(simulate(p, c, empty).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(oracle_plan(p, c, empty).status().code(), StatusCode::kInvalidArgument);
  c.cost.rtt_s = NAN;
  EXPECT_EQ(simulate(p, c, LinkTrace::constant(1)).status().code(), StatusCode::kInvalidArgument);
}

// Issue 11, item 8: a bandwidth of 1e-300 Gb/s (or a denormal, infinite or NaN one) behaved as
// an unlimited link; every rate and time is range-checked where it is parsed.
TEST(LinkTrace, RatesAndTimesNoLinkHasAreRejected) {
  for (const char* text : {"0 1e-300\n", "0 10\n1 4e-320\n", "0 1e300\n", "0 10\n1e-310 5\n", "0 10\n1e12 5\n",
                           "0 inf\n", "0 nan\n", "0 0\n", "0 -1\n"}) {
    SCOPED_TRACE(text);
    EXPECT_EQ(LinkTrace::parse(text).status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(LinkTrace::parse("0 1e-6\n1e7 1e6\n").ok());
  EXPECT_FALSE(LinkTrace::constant(1e-300).validate().ok());
  EXPECT_FALSE(check_link_gbps(5e-324, "x").ok());
  EXPECT_FALSE(check_link_gbps(-0.0, "x").ok());
  EXPECT_TRUE(check_link_gbps(25, "x").ok());
  EXPECT_TRUE(check_seconds(0, 60, "x").ok());
  EXPECT_TRUE(check_seconds(-0.0, 60, "x").ok());
  EXPECT_FALSE(check_seconds(1e-310, 60, "x").ok());
  EXPECT_FALSE(check_seconds(61, 60, "x").ok());
  EXPECT_FALSE(check_seconds(NAN, 60, "x").ok());
  LinkConfig lc;
  lc.rtt_s = 1e-310;
  EXPECT_FALSE(lc.validate().ok());
}

TEST(Simulator, MinPrefillMeetsTheSloWithTheLeastRecompute) {
  // Where the link can carry near-lossless KV in time, the default objective fetches it; the
  // quality objective, to which TEXT is exact and free, recomputes up to the SLO instead.
  const ContextProfile p = test_profile(8);
  for (double gbps : {1.0, 3.0, 10.0}) {
    const ControllerConfig quality = config_for(Policy::kAdaptive, Objective::kBestQualityWithinSlo, 0.25, 0.002);
    const ControllerConfig min_prefill = config_for(Policy::kAdaptive, Objective::kMinPrefillWithinSlo, 0.25, 0.002);
    const SimResult q = run(p, quality, LinkTrace::constant(gbps));
    const SimResult m = run(p, min_prefill, LinkTrace::constant(gbps));
    const SimResult o = run_oracle(p, min_prefill, LinkTrace::constant(gbps));
    EXPECT_TRUE(m.slo_met) << gbps;
    EXPECT_TRUE(o.slo_met) << gbps;
    EXPECT_LE(m.prefill_s, q.prefill_s) << gbps;
    EXPECT_LE(o.prefill_s, m.prefill_s + 1e-12) << gbps;
    EXPECT_EQ(m.prefill_tokens, 256u * m.text_chunks);
    for (const ChunkTimeline& t : m.chunks)
      if (t.option >= 0) EXPECT_LE(p.options[size_t(t.option)].distortion, min_prefill.max_distortion);
    if (gbps >= 3) EXPECT_EQ(m.text_chunks, 0u) << gbps;
    if (gbps >= 3) EXPECT_GT(q.prefill_s, 0) << gbps;
  }
}

TEST(Simulator, ALinkThatDropsMidChunkIsSeenBeforeTheChunkEnds) {
  // 20 Gb/s known from a previous fetch, 10x less from 20 ms on, while the first big KV chunks
  // are on the wire. The controller must see the drop from the bytes still arriving (a client
  // hears no event until the chunk ends) and recompute in time: every SLO objective then ends
  // near recomputing everything, where it used to end at twice that.
  auto trace = LinkTrace::parse("0 20\n0.02 2\n");
  ASSERT_TRUE(trace.ok());
  const ContextProfile p = test_profile(8);
  for (Objective objective : {Objective::kMinPrefillWithinSlo, Objective::kBestQualityWithinSlo}) {
    ControllerConfig c = config_for(Policy::kAdaptive, objective, 0.08, 0.01);
    c.cost.prefill_tokens_per_s = 20000;
    c.estimator.prior_gbps = 20;
    c.estimator.prior_measured = true;
    ControllerConfig text = c;
    text.policy = Policy::kFixed;
    text.plan = {kTextOption};
    const SimResult r = run(p, c, *trace);
    const SimResult t = run(p, text, *trace);
    EXPECT_LT(r.ttft_s, 1.1 * t.ttft_s) << objective_name(objective);
  }
}

// ---- The sweep's drop traces (docs/results/streaming.md) -----------------------------------------

// docs/results/traces/: six links with sudden 10x drops.
const char* const kDropTraces[][2] = {
    {"drop10x-10g-at30ms", "0 10\n0.030 1\n"},
    {"drop10x-20g-at20ms", "0 20\n0.020 2\n"},
    {"drop10x-20g-twice", "0 20\n0.010 2\n0.025 20\n0.040 2\n0.055 20\n"},
    {"drop10x-30g-at5ms-recover", "0 30\n0.005 3\n0.060 30\n"},
    {"drop10x-40g-at10ms", "0 40\n0.010 4\n"},
    {"drop10x-50g-at15ms", "0 50\n0.015 5\n"},
};

// The sweep's set-up: SLO 80 ms, 20,000 tokens/s prefill with attention doubling at 32K.
ControllerConfig sweep_config(Objective objective, double rtt_s, bool warm, double first_gbps) {
  ControllerConfig c;
  c.policy = Policy::kAdaptive;
  c.objective = objective;
  c.slo_s = 0.080;
  c.cost.rtt_s = rtt_s;
  c.cost.prefill_tokens_per_s = 20000;
  c.cost.prefill_attention_tokens = 32768;
  if (warm) {
    c.estimator.prior_gbps = first_gbps;
    c.estimator.prior_measured = true;
  }
  return c;
}

TEST(Simulator, MinPrefillIsNeverSlowerThanRecomputingOnTheSweepDropTraces) {
  // The mission: a controller that never makes a user wait longer than recomputing. A 10x drop
  // while the first big KV chunks are on the wire used to leave the default objective up to 8%
  // slower than recomputing everything (3 of 24 runs).
  const ContextProfile p = test::sweep_profile();
  int met = 0, runs = 0;
  for (bool warm : {true, false}) {
    for (double rtt_ms : {1.0, 10.0}) {
      for (const auto& [name, text] : kDropTraces) {
        auto trace = LinkTrace::parse(text);
        ASSERT_TRUE(trace.ok());
        ControllerConfig c = sweep_config(Objective::kMinPrefillWithinSlo, rtt_ms / 1e3, warm, trace->steps[0].gbps);
        ControllerConfig all_text = c;
        all_text.policy = Policy::kFixed;
        all_text.plan = {kTextOption};
        const SimResult r = run(p, c, *trace);
        const SimResult t = run(p, all_text, *trace);
        ++runs;
        met += r.slo_met;
        std::printf("%s RTT %g ms %-26s min-prefill %6.1f ms (%s), prefill %4llu tokens; recompute-all %.1f ms\n",
                    warm ? "warm" : "cold", rtt_ms, name, r.ttft_s * 1e3, r.slo_met ? "met" : "miss",
                    (unsigned long long)r.prefill_tokens, t.ttft_s * 1e3);
        EXPECT_LE(r.ttft_s, t.ttft_s * (1 + 1e-9)) << (warm ? "warm" : "cold") << ", RTT " << rtt_ms << " ms, " << name;
      }
    }
  }
  std::printf("min-prefill met the SLO on %d of %d drop-trace runs\n", met, runs);
}

TEST(Simulator, ColdMinPrefillProbesTheLinkInsteadOfPlanningOnTheGuess) {
  // Cold (a 1 Gb/s guess, no history) the default objective used to commit the GPU's first two
  // chunks on the guess before the first KV bytes were timed: 512 tokens of prefill on a link
  // 100x faster, and a real client whose first bytes come later than the simulator's committed
  // more (kvcodec demo: 6-9 chunks recomputed where its simulation recomputed 2). It now probes
  // the link like the lowest-TTFT objective: at most the hedge's one chunk before it knows.
  const ContextProfile p = test::sweep_profile();
  for (double rtt_ms : {1.0, 10.0}) {
    for (double gbps : {10.0, 30.0, 100.0}) {
      const LinkTrace link = LinkTrace::constant(gbps);
      const SimResult cold = run(p, sweep_config(Objective::kMinPrefillWithinSlo, rtt_ms / 1e3, false, gbps), link);
      const SimResult warm = run(p, sweep_config(Objective::kMinPrefillWithinSlo, rtt_ms / 1e3, true, gbps), link);
      EXPECT_TRUE(cold.slo_met) << gbps << " Gb/s, RTT " << rtt_ms;
      EXPECT_LE(cold.prefill_tokens, 256u) << gbps << " Gb/s, RTT " << rtt_ms;
      EXPECT_LE(cold.ttft_s, warm.ttft_s * 1.05) << gbps << " Gb/s, RTT " << rtt_ms;
    }
  }
}

}  // namespace
}  // namespace kvcodec
