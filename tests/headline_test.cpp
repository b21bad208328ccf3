// Guards of the headline numbers (README, docs/results/quality.md), on a fixed real cache, fast
// enough for every CI run. The recorded figures, and the command that measured them, are in
// tests/headline.json (see docs/results/quality.md, "Guards in CI"):
//   * kvcodec's bits per element at mean next-token KL 0.01 on kvc-bytes-a / techdocs (a short
//     configuration of the headline's measurement) must not rise more than 10% above the
//     recorded figure, and must stay below CacheGen's and KIVI's in the same run;
//   * the default level's bits per element on one fixed real cache must not rise more than 10%.
// The measurements are deterministic (fixed contexts, thread-count independent), so a failure
// means the codec or the harness changed, never noise.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "kvcodec/codec.hpp"
#include "kvcodec/eval.hpp"
#include "kvcodec/model.hpp"
#include "kvcodec/tokenizer.hpp"
#include "test_util.hpp"

namespace kvcodec::eval {
namespace {

nlohmann::json recorded() {
  std::ifstream in(std::string(KVCODEC_TEST_DIR) + "/headline.json");
  std::stringstream s;
  s << in.rdbuf();
  return nlohmann::json::parse(s.str(), nullptr, false);
}

double bits_at_kl(const EvalReport& r, const std::string& scheme) {
  for (const Threshold& t : r.thresholds)
    if (t.scheme == scheme) {
      EXPECT_TRUE(t.kl.bits.has_value()) << scheme << ": " << t.kl.note;
      return t.kl.bits.value_or(1e9);
    }
  ADD_FAILURE() << "no threshold for " << scheme;
  return 1e9;
}

TEST(Headline, BitsAtKl001OnKvcBytesA) {
  KVCODEC_REQUIRE_DATA("models/kvc-bytes-a.bin");
  KVCODEC_REQUIRE_DATA("text/techdocs_valid.txt");
  const nlohmann::json rec = recorded();
  ASSERT_TRUE(rec.is_object()) << "tests/headline.json unreadable";
  const nlohmann::json& g = rec["kl_guard"];
  EvalOptions o;
  o.model_path = test::data_path("models/kvc-bytes-a.bin");
  o.tokenizer = "bytes";
  o.text_path = test::data_path("text/techdocs_valid.txt");
  o.contexts = g["contexts"];
  o.context_tokens = g["context_tokens"];
  o.continue_tokens = g["continue_tokens"];
  o.schemes = g["schemes"];
  o.threads = 2;
  auto r = run_eval(o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const double kvcodec = bits_at_kl(*r, "kvcodec"), kivi = bits_at_kl(*r, "kivi"),
               cachegen = bits_at_kl(*r, "cachegen");
  std::printf("bits at KL 0.01: kvcodec %.4f (recorded %.4f), KIVI %.4f, CacheGen %.4f\n", kvcodec,
              g["kvcodec_bits"].get<double>(), kivi, cachegen);
  EXPECT_LE(kvcodec, 1.10 * g["kvcodec_bits"].get<double>()) << "kvcodec needs >10% more bits at KL 0.01";
  EXPECT_LT(kvcodec, kivi) << "kvcodec no longer beats KIVI at KL 0.01";
  EXPECT_LT(kvcodec, cachegen) << "kvcodec no longer beats CacheGen at KL 0.01";
}

TEST(Headline, DefaultLevelBitsOnAFixedRealCache) {
  KVCODEC_REQUIRE_DATA("models/kvc-bytes-a.bin");
  KVCODEC_REQUIRE_DATA("text/techdocs_valid.txt");
  const nlohmann::json rec = recorded();
  ASSERT_TRUE(rec.is_object());
  const nlohmann::json& g = rec["default_level_guard"];
  auto model = Model::load(test::data_path("models/kvc-bytes-a.bin"));
  auto tok = Tokenizer::open("bytes");
  ASSERT_TRUE(model.ok() && tok.ok());
  std::ifstream in(test::data_path("text/techdocs_valid.txt"), std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  auto ids = context_tokens(*tok, text.str(), g["offset"].get<uint64_t>(), g["tokens"].get<uint32_t>());
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  KVState st = model->new_state();
  ASSERT_TRUE(model->forward(*ids, st, nullptr).ok());
  auto kv = st.to_cache(DType::kF16);
  ASSERT_TRUE(kv.ok());
  const EncodeOptions o;  // the defaults
  ASSERT_EQ(o.level, g["level"].get<int>()) << "the default level changed: re-record tests/headline.json";
  std::vector<uint8_t> frame(max_encoded_size(kv->shape, kv->dtype, o));
  auto size = encode_into(kv->view(), o, frame);
  ASSERT_TRUE(size.ok()) << size.status().to_string();
  const double bits = 8.0 * double(*size) / double(kv->shape.elements());
  std::printf("default level %d: %.4f bits/element (recorded %.4f)\n", o.level, bits, g["bits"].get<double>());
  EXPECT_LE(bits, 1.10 * g["bits"].get<double>()) << "the default level needs >10% more bits";
}

}  // namespace
}  // namespace kvcodec::eval
