// The evaluation harness: metric functions on hand-computed cases, threshold interpolation,
// and a tiny end-to-end run on stories260K.
#include "kvcodec/eval.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <string>

#include "test_util.hpp"

namespace kvcodec::eval {
namespace {

TEST(Metrics, LogSoftmaxNormalizes) {
  const std::vector<float> logits = {1.0f, 2.0f, -3.0f, 1000.0f};  // large values must not overflow
  const std::vector<double> ls = log_softmax(logits);
  double sum = 0;
  for (double v : ls) sum += std::exp(v);
  EXPECT_NEAR(sum, 1.0, 1e-12);
  EXPECT_NEAR(ls[3], 0.0, 1e-12);
  EXPECT_NEAR(ls[0] - ls[1], -1.0, 1e-12);
}

TEST(Metrics, NegativeLogLikelihoodOfUniformIsLogVocab) {
  const std::vector<float> logits(512, 0.25f);
  EXPECT_NEAR(negative_log_likelihood(logits, 17), std::log(512.0), 1e-12);
}

TEST(Metrics, KlOfIdenticalRowsIsExactlyZero) {
  const std::vector<float> logits = {0.3f, -1.2f, 4.0f, 2.5f};
  EXPECT_EQ(kl_divergence(logits, logits), 0.0);
}

TEST(Metrics, KlOfAKnownPair) {
  // p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
  const std::vector<float> p = {0.0f, 0.0f};
  const std::vector<float> q = {float(std::log(3.0)), 0.0f};
  EXPECT_NEAR(kl_divergence(p, q), 0.5 * std::log(4.0 / 3.0), 1e-7);
  EXPECT_GT(kl_divergence(q, p), 0.0);
}

TEST(Metrics, PerplexityOfKnownLosses) {
  // A model assigning 1/2 and 1/8 to the targets: perplexity = exp(mean(ln 2, ln 8)) = 4.
  const std::vector<double> nll = {std::log(2.0), std::log(8.0)};
  EXPECT_NEAR(perplexity(nll), 4.0, 1e-12);
  EXPECT_EQ(perplexity({}), 1.0);
}

TEST(Crossing, InterpolatesBetweenTheBracketingSettings) {
  // Linear metric: crosses 1.0 halfway between 4 bits (0.5) and 2 bits (1.5).
  Crossing c = interpolate_crossing({{2, 1.5}, {8, 0.1}, {4, 0.5}}, 1.0, false);
  ASSERT_TRUE(c.bits.has_value());
  EXPECT_NEAR(*c.bits, 3.0, 1e-12);
  // Log metric: 0.001 at 6 bits and 0.1 at 2 bits reach 0.01 at 4 bits.
  c = interpolate_crossing({{6, 0.001}, {2, 0.1}}, 0.01, true);
  ASSERT_TRUE(c.bits.has_value());
  EXPECT_NEAR(*c.bits, 4.0, 1e-12);
  // Never reached, and reached already at the most bits.
  c = interpolate_crossing({{6, 0.001}, {2, 0.002}}, 0.01, true);
  EXPECT_FALSE(c.bits.has_value());
  EXPECT_EQ(c.note, "not reached");
  c = interpolate_crossing({{6, 0.5}, {2, 0.9}}, 0.01, true);
  EXPECT_FALSE(c.bits.has_value());
  EXPECT_EQ(c.note, "above target at every setting");
  // A lossless point (metric 0) interpolates linearly.
  c = interpolate_crossing({{16, 0.0}, {8, 0.02}}, 0.01, true);
  ASSERT_TRUE(c.bits.has_value());
  EXPECT_NEAR(*c.bits, 12.0, 1e-12);
}

TEST(RunEval, RejectsBadOptions) {
  EvalOptions o;
  o.model_path = "/nonexistent/model.bin";
  o.text_path = "/nonexistent/text.txt";
  o.schemes = "fp16,nosuchscheme";
  auto r = run_eval(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  o.schemes = "fp16";
  r = run_eval(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kIoError);
}

// Two short contexts of stories260K: lossless schemes must leave the model output bit for bit
// unchanged, lossy ones must not.
TEST(RunEval, LosslessSchemesChangeNothingEndToEnd) {
  KVCODEC_REQUIRE_DATA("models/stories260K.bin");
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  KVCODEC_REQUIRE_DATA("text/tinystories_valid_sample.txt");
  EvalOptions o;
  o.model_path = test::data_path("models/stories260K.bin");
  o.tokenizer = test::data_path("models/tok512.bin");
  o.text_path = test::data_path("text/tinystories_valid_sample.txt");
  o.contexts = 2;
  o.context_tokens = 96;
  o.continue_tokens = 32;
  o.threads = 2;
  o.schemes = "fp16,zstd,kvcodec:levels=0/6,kivi:bits=2,cachegen:levels=2";
  auto r = run_eval(o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const EvalReport& rep = *r;
  EXPECT_EQ(rep.contexts, 2u);
  EXPECT_EQ(rep.shape, (KVShape{5, 96, 4, 8}));
  ASSERT_EQ(rep.offsets.size(), 2u);
  EXPECT_EQ(rep.offsets[0], 0u);
  EXPECT_GT(rep.offsets[1], 0u);
  ASSERT_EQ(rep.rows.size(), 6u);
  for (const SchemeRow& row : rep.rows) {
    SCOPED_TRACE(row.scheme + " " + row.setting);
    EXPECT_GT(row.ppl_base, 1.0);
    EXPECT_EQ(row.tensor_rel_err[0].size(), 5u);
    EXPECT_EQ(row.attn_rel_err_layer.size(), 5u);
    if (row.lossless) {
      EXPECT_EQ(row.ppl_delta_pct, 0.0);
      EXPECT_EQ(row.ppl, row.ppl_base);
      EXPECT_EQ(row.kl, 0.0);
      EXPECT_EQ(row.top1_agreement, 1.0);
      EXPECT_EQ(row.attn_rel_err, 0.0);
      EXPECT_EQ(row.tensor_max_abs[0][0], 0.0);
    } else {
      EXPECT_GT(row.kl, 0.0);
      EXPECT_GT(row.attn_rel_err, 0.0);
      EXPECT_LT(row.bits_per_element, 16.0);
    }
  }
  // fp16: 16 bits per element plus the 16-byte shape header.
  EXPECT_DOUBLE_EQ(rep.rows[0].bits_per_element, 16.0 + 8.0 * 16 / double(rep.shape.elements()));
  EXPECT_TRUE(rep.rows[2].lossless);  // kvcodec level 0

  // The JSON carries the documented fields; the SVG names every curve.
  const nlohmann::json j = nlohmann::json::parse(report_json(rep));
  EXPECT_EQ(j["contexts"], 2);
  ASSERT_EQ(j["rows"].size(), 6u);
  for (const char* key : {"scheme", "level", "bits_per_element", "ppl_base", "ppl", "ppl_delta_pct",
                          "top1_agreement", "kl", "attn_rel_err"})
    EXPECT_TRUE(j["rows"][0].contains(key)) << key;
  EXPECT_EQ(j["thresholds"].size(), 5u);  // one per curve
  const std::string svg = report_svg(rep);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  for (const char* name : {"fp16", "zstd", "kvcodec", "kivi", "cachegen"})
    EXPECT_NE(svg.find(std::string(">") + name + "<"), std::string::npos) << name;
}

TEST(RunEval, ResultsDoNotDependOnTheThreadCount) {
  KVCODEC_REQUIRE_DATA("models/stories260K.bin");
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  KVCODEC_REQUIRE_DATA("text/tinystories_valid_sample.txt");
  EvalOptions o;
  o.model_path = test::data_path("models/stories260K.bin");
  o.tokenizer = test::data_path("models/tok512.bin");
  o.text_path = test::data_path("text/tinystories_valid_sample.txt");
  o.contexts = 3;
  o.context_tokens = 64;
  o.continue_tokens = 16;
  o.schemes = "int8";
  o.threads = 1;
  auto one = run_eval(o);
  o.threads = 3;
  auto three = run_eval(o);
  ASSERT_TRUE(one.ok() && three.ok());
  EXPECT_EQ(one->rows[0].kl, three->rows[0].kl);
  EXPECT_EQ(one->rows[0].ppl, three->rows[0].ppl);
}

TEST(EvalCli, WritesJsonAndRejectsBadArguments) {
  const std::string cli = KVCODEC_CLI_PATH;
  if (cli.empty()) GTEST_SKIP() << "kvcodec CLI not built";
  EXPECT_NE(std::system((cli + " eval --contexts 2 > /dev/null 2>&1").c_str()), 0);
  EXPECT_NE(std::system((cli + " eval --model x --text y --json z --contexts 0 > /dev/null 2>&1").c_str()), 0);
  KVCODEC_REQUIRE_DATA("models/stories260K.bin");
  const std::string out = ::testing::TempDir() + "/eval_cli.json";
  const std::string cmd = cli + " eval --model " + test::data_path("models/stories260K.bin") + " --tokenizer " +
                          test::data_path("models/tok512.bin") + " --text " +
                          test::data_path("text/tinystories_valid_sample.txt") +
                          " --contexts 1 --context-tokens 32 --continue-tokens 8 --schemes fp16 --json " + out +
                          " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::FILE* f = std::fopen(out.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  const nlohmann::json j = nlohmann::json::parse(text);
  EXPECT_EQ(j["rows"][0]["scheme"], "fp16");
  EXPECT_EQ(j["rows"][0]["kl"], 0.0);
}

}  // namespace
}  // namespace kvcodec::eval
