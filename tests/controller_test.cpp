// Tests for controller.hpp: bandwidth estimator, cost model, profiles and the Controller's
// decisions and protocol. Whole-run behaviour (simulated TTFT vs the oracle) is in
// simulator_test.cpp.
#include "kvcodec/controller.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "controller_test_util.hpp"

namespace kvcodec {
namespace {

using test::option_named;
using test::test_cost;
using test::test_profile;

// ---- Estimator ----------------------------------------------------------------------------------

// bytes that take `seconds` at `gbps`.
uint64_t bytes_at(double gbps, double seconds) { return uint64_t(gbps * 1e9 / 8 * seconds); }

TEST(BandwidthEstimator, PriorUntilTheFirstSampleWhichReplacesIt) {
  EstimatorConfig cfg;
  cfg.prior_gbps = 0.5;
  BandwidthEstimator e(cfg);
  EXPECT_DOUBLE_EQ(e.estimate_gbps(), 0.5);
  EXPECT_DOUBLE_EQ(e.last_sample_gbps(), 0.5);
  e.add_sample(bytes_at(40, 0.01), 0.01);
  EXPECT_NEAR(e.estimate_gbps(), 40, 1e-6);
  EXPECT_EQ(e.samples(), 1u);
}

TEST(BandwidthEstimator, BelievesATenfoldDropAtOnce) {
  BandwidthEstimator e;
  for (int i = 0; i < 10; ++i) e.add_sample(bytes_at(10, 0.01), 0.01);
  EXPECT_NEAR(e.estimate_gbps(), 10, 1e-6);
  e.add_sample(bytes_at(1, 0.01), 0.01);
  EXPECT_NEAR(e.estimate_gbps(), 1, 1e-6);
  e.add_sample(bytes_at(1, 0.01), 0.01);
  EXPECT_NEAR(e.estimate_gbps(), 1, 1e-6);
}

TEST(BandwidthEstimator, NoiseAndASingleFastSampleMoveItLittle) {
  BandwidthEstimator e;
  const double noisy[] = {9, 11, 10, 12, 8, 10, 11, 9};
  for (double g : noisy) e.add_sample(bytes_at(g, 0.01), 0.01);
  EXPECT_NEAR(e.estimate_gbps(), 10, 1.0);
  e.add_sample(bytes_at(100, 0.01), 0.01);  // one lucky chunk
  EXPECT_LT(e.estimate_gbps(), 15);
  e.add_sample(bytes_at(100, 0.01), 0.01);  // confirmed: a real rise
  EXPECT_NEAR(e.estimate_gbps(), 100, 1e-6);
}

TEST(BandwidthEstimator, IgnoresTinyAndUntimedChunks) {
  BandwidthEstimator e;
  e.add_sample(1024, 1e-6);  // a TEXT chunk: latency, not bandwidth
  e.add_sample(bytes_at(10, 0.01), 0.0);
  e.add_sample(bytes_at(10, 0.01), NAN);
  EXPECT_EQ(e.samples(), 0u);
  EXPECT_DOUBLE_EQ(e.estimate_gbps(), EstimatorConfig{}.prior_gbps);
}

TEST(BandwidthEstimator, ConfigIsValidated) {
  EstimatorConfig c;
  EXPECT_TRUE(c.validate().ok());
  c.prior_gbps = 0;
  EXPECT_EQ(c.validate().code(), StatusCode::kInvalidArgument);
  c = {};
  c.window = 0;
  EXPECT_EQ(c.validate().code(), StatusCode::kInvalidArgument);
  c = {};
  c.drop_ratio = 1.5;
  EXPECT_EQ(c.validate().code(), StatusCode::kInvalidArgument);
}

// ---- Cost model ---------------------------------------------------------------------------------

TEST(CostModel, PrefillCostGrowsWithPositionAndAddsUp) {
  CostModel c = test_cost();
  EXPECT_NEAR(c.prefill_seconds(256, 0), (256 + 256.0 * 255 / 2 / 32768) / 12000, 1e-12);
  EXPECT_GT(c.prefill_seconds(256, 8192), c.prefill_seconds(256, 0));
  // Two halves cost what the whole does.
  EXPECT_NEAR(c.prefill_seconds(512, 1000),
              c.prefill_seconds(256, 1000) + c.prefill_seconds(256, 1256), 1e-12);
  c.prefill_attention_tokens = 0;
  EXPECT_NEAR(c.prefill_seconds(256, 8192), 256.0 / 12000, 1e-12);
  c.prefill_tokens_per_s = 0;
  EXPECT_TRUE(std::isinf(c.prefill_seconds(1, 0)));
  c.rtt_s = -1;
  EXPECT_FALSE(c.validate().ok());
}

// ---- Profiles and configuration -----------------------------------------------------------------

TEST(ContextProfile, ValidatesShape) {
  ContextProfile p = test_profile(4);
  ASSERT_TRUE(p.validate().ok());
  EXPECT_EQ(p.tokens(), 1024u);
  EXPECT_EQ(p.token_begin(3), 768u);
  EXPECT_EQ(p.chunk_bytes(1, kTextOption), 0u);
  ContextProfile bad = p;
  bad.bytes[2].pop_back();
  EXPECT_EQ(bad.validate().code(), StatusCode::kInvalidArgument);
  bad = p;
  bad.chunk_tokens[0] = 0;
  EXPECT_EQ(bad.validate().code(), StatusCode::kInvalidArgument);
  bad = p;
  bad.options[1].distortion = NAN;
  EXPECT_EQ(bad.validate().code(), StatusCode::kInvalidArgument);
  bad = ContextProfile{};
  EXPECT_EQ(bad.validate().code(), StatusCode::kInvalidArgument);
}

TEST(Controller, RejectsBadConfigurations) {
  ControllerConfig cfg;
  cfg.cost = test_cost();
  cfg.slo_s = 0;
  EXPECT_EQ(Controller::create(test_profile(4), cfg).status().code(), StatusCode::kInvalidArgument);
  cfg.slo_s = 1;
  cfg.policy = Policy::kFixed;
  cfg.plan = {0, 1};  // neither one per chunk nor a single entry
  EXPECT_EQ(Controller::create(test_profile(4), cfg).status().code(), StatusCode::kInvalidArgument);
  cfg.plan = {7};
  EXPECT_EQ(Controller::create(test_profile(4), cfg).status().code(), StatusCode::kInvalidArgument);
  cfg.plan = {kTextOption};
  cfg.cost.prefill_tokens_per_s = 0;  // no prefill: TEXT impossible
  EXPECT_EQ(Controller::create(test_profile(4), cfg).status().code(), StatusCode::kInvalidArgument);
  cfg.cost = test_cost();
  cfg.plan = {1};
  ASSERT_TRUE(Controller::create(test_profile(4), cfg).ok());
  for (std::vector<double> times : {std::vector<double>{0, 0, 0},  // not one per chunk
                                    std::vector<double>{0, 0, -1, 0}, std::vector<double>{0, NAN, 0, 0},
                                    std::vector<double>{0, 0, 0, INFINITY}}) {
    cfg.plan_request_s = times;
    EXPECT_EQ(Controller::create(test_profile(4), cfg).status().code(), StatusCode::kInvalidArgument);
  }
}

TEST(Controller, FixedPlanWithRequestTimesReplaysTheTwoEndedOrder) {
  // A replay of a fetch's decisions: each chunk not before its time, from the two ends inward.
  ControllerConfig cfg;
  cfg.cost = test_cost();
  cfg.policy = Policy::kFixed;
  cfg.plan = {kTextOption, kTextOption, 2, 2};
  cfg.plan_request_s = {0, 0.05, 0.01, 0};
  auto c = Controller::create(test_profile(4), cfg);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  auto d = c->next_request(0);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->chunk, 0u);  // both ends due at 0: the front first
  EXPECT_EQ(d->option, kTextOption);
  d = c->next_request(0);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->chunk, 3u);
  EXPECT_EQ(d->option, 2);
  EXPECT_FALSE(c->next_request(0.005).has_value());  // chunk 2 is due at 10 ms
  ASSERT_TRUE(c->wake_s().has_value());
  EXPECT_DOUBLE_EQ(*c->wake_s(), 0.01);
  d = c->next_request(0.01);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->chunk, 2u);
  EXPECT_FALSE(c->next_request(0.02).has_value());
  EXPECT_DOUBLE_EQ(c->wake_s().value_or(-1), 0.05);
  d = c->next_request(0.06);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->chunk, 1u);
  EXPECT_TRUE(c->all_requested());
  EXPECT_FALSE(c->wake_s().has_value());
}

// ---- Decisions ----------------------------------------------------------------------------------

// The first decision of an adaptive controller that knows the link runs at `gbps`.
int first_choice(double gbps, Objective objective) {
  ControllerConfig cfg;
  cfg.objective = objective;
  cfg.slo_s = 2.0;
  cfg.cost = test_cost();
  cfg.estimator.prior_gbps = gbps;
  cfg.estimator.prior_measured = true;
  auto c = Controller::create(test_profile(16), cfg);
  EXPECT_TRUE(c.ok());
  auto d = c->next_request(0);
  EXPECT_TRUE(d.has_value());
  return d ? d->option : -2;
}

TEST(Controller, PicksTextWhenTheLinkHasCollapsed) {
  EXPECT_EQ(first_choice(0.001, Objective::kMinTtft), kTextOption);
  EXPECT_EQ(first_choice(0.001, Objective::kBestQualityWithinSlo), kTextOption);
}

TEST(Controller, PicksExactKvWhenBandwidthIsHuge) {
  const ContextProfile p = test_profile(16);
  const int best = first_choice(10000, Objective::kBestQualityWithinSlo);
  EXPECT_TRUE(best == option_named(p, "fp16") || best == option_named(p, "L0")) << best;
  // Raw bytes need no decoding: fastest when the link is not the bottleneck.
  EXPECT_EQ(first_choice(10000, Objective::kMinTtft), option_named(p, "fp16"));
}

TEST(Controller, PipelinesAboutOneRoundTripOfRequests) {
  ControllerConfig cfg;
  cfg.objective = Objective::kMinTtft;
  cfg.cost = test_cost();
  cfg.cost.prefill_tokens_per_s = 0;  // KV only, to count requests
  cfg.cost.rtt_s = 0.05;
  cfg.estimator.prior_gbps = 10;
  auto c = Controller::create(test_profile(64), cfg);
  ASSERT_TRUE(c.ok());
  int issued = 0;
  while (c->next_request(0)) ++issued;
  EXPECT_GT(issued, 1);
  EXPECT_LT(issued, 64);
  // Without a round trip to hide, one request at a time.
  cfg.cost.rtt_s = 0;
  auto c0 = Controller::create(test_profile(64), cfg);
  ASSERT_TRUE(c0.ok());
  EXPECT_TRUE(c0->next_request(0).has_value());
  EXPECT_FALSE(c0->next_request(0).has_value());
  // A fixed plan needs no feedback: everything at once.
  cfg.policy = Policy::kFixed;
  cfg.plan = {2};
  auto f = Controller::create(test_profile(64), cfg);
  ASSERT_TRUE(f.ok());
  issued = 0;
  while (f->next_request(0)) ++issued;
  EXPECT_EQ(issued, 64);
  EXPECT_TRUE(f->all_requested());
}

TEST(Controller, ColdStartProbesTheLinkBeforeCommittingToText) {
  // No history (prior 1 Gb/s), a fast decoder, 1 ms round trip: at 1 Gb/s the plan would start
  // recomputing at once, but over a fast link it would recompute nothing, and waiting to time
  // the first KV bytes costs far less than a chunk's prefill.
  ContextProfile p = test_profile(8);
  for (ChunkOption& o : p.options)
    if (o.decode_gbps > 0) o.decode_gbps = 100;
  ControllerConfig cfg;
  cfg.objective = Objective::kMinTtft;
  cfg.slo_s = 0.08;
  cfg.cost = test_cost();
  cfg.cost.prefill_tokens_per_s = 20000;
  cfg.cost.rtt_s = 0.001;
  auto c = Controller::create(p, cfg);
  ASSERT_TRUE(c.ok());
  int issued = 0;
  while (auto d = c->next_request(0)) {
    EXPECT_NE(d->option, kTextOption);
    ++issued;
  }
  // More requests than a 1 Gb/s link needs to stay busy for a round trip (one chunk).
  EXPECT_GT(issued, 1);
  const std::optional<double> wake = c->wake_s();
  ASSERT_TRUE(wake.has_value());
  EXPECT_GT(*wake, cfg.cost.rtt_s);
  EXPECT_LT(*wake, 2 * cfg.cost.rtt_s);
  // By then a slow link has delivered little of the first chunk: recompute from the front.
  const uint32_t first = c->decisions().front().chunk;
  ASSERT_TRUE(c->on_progress(first, bytes_at(0.1, *wake - cfg.cost.rtt_s), *wake).ok());
  auto d = c->next_request(*wake);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->option, kTextOption);
  EXPECT_EQ(d->chunk, 0u);
  // The probe is over; what remains is the KV still on its way, watched a slack at a time.
  const std::optional<double> watch = c->wake_s();
  ASSERT_TRUE(watch.has_value());
  EXPECT_GT(*watch, *wake);
  EXPECT_LT(*watch, *wake + 0.025);  // a few slacks

  // With a 10 ms round trip the first measurement comes too late to be worth waiting for:
  // the front chunk is recomputed at once.
  cfg.cost.rtt_s = 0.01;
  auto far = Controller::create(p, cfg);
  ASSERT_TRUE(far.ok());
  auto first_far = far->next_request(0);
  ASSERT_TRUE(first_far.has_value());
  EXPECT_EQ(first_far->option, kTextOption);
  EXPECT_FALSE(far->wake_s().has_value());
}

TEST(Controller, EqualBudgetFollowsTheLastMeasuredChunk) {
  ControllerConfig cfg;
  cfg.policy = Policy::kEqualBudget;
  cfg.cost = test_cost();
  cfg.cost.rtt_s = 0;
  cfg.slo_s = 0.16;  // 10 ms per chunk over 16 chunks
  cfg.estimator.prior_gbps = 1000;
  const ContextProfile p = test_profile(16);
  auto c = Controller::create(p, cfg);
  ASSERT_TRUE(c.ok());
  auto d = c->next_request(0);
  ASSERT_TRUE(d);
  // 22 MiB of lossless L0 in 10 ms at 1000 Gb/s fits (as exact as fp16 and smaller).
  EXPECT_EQ(d->option, option_named(p, "L0"));
  // The chunk came in at 10 Gb/s: 10 ms then carries 12.5 MB: L2 (8 MiB) is the best that fits.
  ASSERT_TRUE(c->on_chunk_received(0, d->bytes, double(d->bytes) * 8 / 10e9, 0.03).ok());
  d = c->next_request(0.03);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->option, option_named(p, "L2"));
}

TEST(Controller, ProtocolErrorsAreReported) {
  ControllerConfig cfg;
  cfg.cost = test_cost();
  cfg.policy = Policy::kFixed;
  cfg.plan = {2};
  auto c = Controller::create(test_profile(4), cfg);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->on_chunk_received(0, 1, 1, 0).code(), StatusCode::kOutOfRange);
  auto d = c->next_request(0);
  ASSERT_TRUE(d);
  EXPECT_EQ(c->on_chunk_ready(0, 0.1).code(), StatusCode::kInvalidArgument);  // not received
  ASSERT_TRUE(c->on_chunk_received(0, d->bytes, 0.01, 0.1).ok());
  EXPECT_EQ(c->on_chunk_received(0, d->bytes, 0.01, 0.1).code(), StatusCode::kInvalidArgument);
  // The chunk turned out corrupt: fetch its text instead.
  auto t = c->fall_back_to_text(0, 0.1);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->option, kTextOption);
  EXPECT_TRUE(t->replaces_request);
  EXPECT_EQ(c->decisions()[0].option, kTextOption);
  ASSERT_TRUE(c->on_chunk_ready(0, 0.3).ok());  // prefilled: nothing to receive
  EXPECT_EQ(c->fall_back_to_text(0, 0.3).status().code(), StatusCode::kInvalidArgument);

  ContextProfile no_text = test_profile(4);
  no_text.text_available = false;
  auto n = Controller::create(no_text, cfg);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->on_progress(0, 1, 0).code(), StatusCode::kOutOfRange);
  ASSERT_TRUE(n->next_request(0));
  EXPECT_EQ(n->fall_back_to_text(0, 0).status().code(), StatusCode::kUnavailable);
}


// ---- Objectives ---------------------------------------------------------------------------------

TEST(Objective, NamesRoundTrip) {
  for (Objective o : {Objective::kMinPrefillWithinSlo, Objective::kBestQualityWithinSlo, Objective::kMinTtft,
                      Objective::kMinPrefillUnhedged}) {
    auto p = parse_objective(objective_name(o));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, o);
  }
  EXPECT_EQ(parse_objective("fastest").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*parse_objective("min-prefill-unhedged"), Objective::kMinPrefillUnhedged);  // the old default
  EXPECT_EQ(ControllerConfig{}.objective, Objective::kMinPrefillWithinSlo);  // the default
  ControllerConfig bad;
  bad.max_distortion = -1;
  EXPECT_EQ(bad.validate().code(), StatusCode::kInvalidArgument);
}

// Runs an adaptive controller to the end over a constant link of `gbps` that it knows, with the
// decoder as fast as the profile says (a small event loop: every KV chunk arrives and is decoded
// when the timing model says; TEXT chunks are ready when prefilled).
struct Outcome {
  std::vector<int> options;  // per chunk
  double prefill_s = 0;
};
Outcome run_to_end(const ContextProfile& p, const ControllerConfig& cfg, double gbps) {
  auto made = Controller::create(p, cfg);
  EXPECT_TRUE(made.ok()) << made.status().to_string();
  Outcome out;
  if (!made.ok()) return out;
  Controller& c = *made;
  // Crude but sufficient: serve every decision at once in virtual time.
  double now = 0, gpu_free = 0, link_free = 0;
  for (int guard = 0; guard < 10000 && !c.all_ready(); ++guard) {
    auto d = c.next_request(now);
    if (!d) {
      now += 0.001;
      continue;
    }
    if (d->option == kTextOption) {
      gpu_free = std::max(gpu_free, now) + cfg.cost.prefill_seconds(p.chunk_tokens[d->chunk], p.token_begin(d->chunk));
      out.prefill_s += cfg.cost.prefill_seconds(p.chunk_tokens[d->chunk], p.token_begin(d->chunk));
      EXPECT_TRUE(c.on_chunk_ready(d->chunk, gpu_free).ok());
    } else {
      link_free = std::max(link_free, now) + double(d->bytes) * 8 / (gbps * 1e9);
      EXPECT_TRUE(c.on_chunk_received(d->chunk, d->bytes, double(d->bytes) * 8 / (gbps * 1e9), link_free).ok());
      EXPECT_TRUE(c.on_chunk_decoded(d->chunk, 0.01).ok());
      EXPECT_TRUE(c.on_chunk_ready(d->chunk, link_free + 0.01).ok());
    }
    now = std::max(now, 0.0);
  }
  for (const Decision& d : c.decisions()) {
    if (out.options.size() <= d.chunk) out.options.resize(d.chunk + 1, -2);
    out.options[d.chunk] = d.option;
  }
  return out;
}

TEST(Objective, QualityFillsTheSloWithRecomputeMinPrefillFetches) {
  const ContextProfile p = test_profile(16);
  // The link and decoder could deliver lossless KV well within the SLO, and so could recompute.
  EXPECT_EQ(first_choice(10, Objective::kBestQualityWithinSlo), kTextOption);
  const int kv = first_choice(10, Objective::kMinPrefillWithinSlo);
  ASSERT_GE(kv, 0);
  EXPECT_EQ(p.options[size_t(kv)].distortion, 0.0) << p.options[size_t(kv)].name;
}

TEST(Objective, MinPrefillKeepsToItsQualityFloor) {
  const ContextProfile p = test_profile(16);
  ControllerConfig cfg;
  cfg.slo_s = 2.0;
  cfg.cost = test_cost();
  cfg.estimator.prior_gbps = 0.5;  // L2 alone would take ~2.1 s, L4 ~1.4 s, L8 ~0.8 s
  cfg.estimator.prior_measured = true;
  cfg.max_distortion = 0.05;       // L8 (0.10) is out, L4 (0.03) is in: no recompute needed
  const Outcome within = run_to_end(p, cfg, 0.5);
  ASSERT_EQ(within.options.size(), 16u);
  for (int o : within.options) {
    ASSERT_GE(o, 0) << "recomputed although L4 fits the SLO";
    EXPECT_LE(p.options[size_t(o)].distortion, 0.05) << p.options[size_t(o)].name;
  }
  cfg.max_distortion = 0.02;       // only fp16, L0 and L2: some recompute is the price
  const Outcome strict = run_to_end(p, cfg, 0.5);
  ASSERT_EQ(strict.options.size(), 16u);
  EXPECT_GT(strict.prefill_s, 0);
  for (int o : strict.options)
    if (o >= 0) EXPECT_LE(p.options[size_t(o)].distortion, 0.02) << p.options[size_t(o)].name;
}

// ---- Decode throughput as a measured resource ---------------------------------------------------

TEST(DecodeEstimate, LearnsFromDecodedChunksAndScalesUnmeasuredOptions) {
  const ContextProfile p = test_profile(4);
  const int l2 = option_named(p, "L2"), l4 = option_named(p, "L4"), fp16 = option_named(p, "fp16");
  ControllerConfig cfg;
  cfg.policy = Policy::kFixed;
  cfg.plan = {l2};
  auto c = Controller::create(p, cfg);
  ASSERT_TRUE(c.ok());
  EXPECT_DOUBLE_EQ(c->decode_gbps(l2), 2.0);  // the seed
  EXPECT_EQ(c->on_chunk_decoded(0, 0.1).code(), StatusCode::kOutOfRange);  // not requested
  auto d = c->next_request(0);
  ASSERT_TRUE(d);
  // The chunk (32 MiB of KV) took 4x its seed's time: this machine decodes at 0.5 GB/s now.
  const double raw = 256.0 * double(test::kRawPerToken);
  ASSERT_TRUE(c->on_chunk_decoded(0, 4 * raw / 2e9).ok());
  EXPECT_NEAR(c->decode_gbps(l2), 0.5, 1e-9);
  EXPECT_NEAR(c->decode_gbps(l4), 0.5, 1e-9);  // seeded 2.0, scaled by the load seen
  EXPECT_LE(c->decode_gbps(fp16), 0);          // raw bytes: no decoder
  EXPECT_EQ(c->decode_samples(), 1u);
  // A chunk recomputed from text has no decode time.
  cfg.plan = {kTextOption};
  cfg.cost = test_cost();
  auto t = Controller::create(p, cfg);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(t->next_request(0));
  EXPECT_EQ(t->on_chunk_decoded(0, 0.1).code(), StatusCode::kInvalidArgument);
}

TEST(DecodeEstimate, APlanSeesTheSlowerDecoder) {
  // A fast link, the decoder the bottleneck: predicted TTFT follows the measured decode speed.
  const ContextProfile p = test_profile(16);
  ControllerConfig cfg;
  cfg.objective = Objective::kMinTtft;
  cfg.cost = test_cost();
  cfg.cost.prefill_tokens_per_s = 0;  // KV only
  cfg.estimator.prior_gbps = 1000;
  cfg.estimator.prior_measured = true;
  ContextProfile slow_raw = p;  // no raw option: every KV option has to be decoded
  slow_raw.options.erase(slow_raw.options.begin());
  for (auto& row : slow_raw.bytes) row.erase(row.begin());
  auto c = Controller::create(slow_raw, cfg);
  ASSERT_TRUE(c.ok());
  auto d1 = c->next_request(0);
  ASSERT_TRUE(d1);
  const double before = d1->predicted_ttft_s;
  ASSERT_TRUE(c->on_chunk_received(d1->chunk, d1->bytes, 0.001, 0.002).ok());
  const double raw = 256.0 * double(test::kRawPerToken);
  ASSERT_TRUE(c->on_chunk_decoded(d1->chunk, 10 * raw / 2e9).ok());  // 10x slower than seeded
  ASSERT_TRUE(c->on_chunk_ready(d1->chunk, 0.002 + 10 * raw / 2e9).ok());
  auto d2 = c->next_request(0.002 + 10 * raw / 2e9);
  ASSERT_TRUE(d2);
  EXPECT_GT(d2->predicted_ttft_s, 5 * before);
}

}  // namespace
}  // namespace kvcodec
