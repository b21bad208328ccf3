// Direct tests of public functions that the other tests reach only through larger paths (or not
// at all): compute_grids and quantize_value (quantize.hpp), manifest_json and verify_head
// (store.hpp), profile_from_manifest (stream.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "bound_check.hpp"
#include "encode/quantize.hpp"
#include "kvcodec/store.hpp"
#include "kvcodec/stream.hpp"
#include "kvcodec/synthetic.hpp"

namespace kvcodec {
namespace {

// compute_grids: each channel's step is the documented maximum rounded down to a 1/16-octave
// step code (so at most 2^(1/16) below it), and its centre is the channel mean in grid units.
TEST(PublicApi, ComputeGridsRoundsTheDocumentedStepDown) {
  auto kv = make_synthetic("llama3-8b", 40, DType::kF32, 3);
  ASSERT_TRUE(kv.ok());
  KVShape one = kv->shape;
  one.layers = 1;  // the first layer's K and V
  KVCache first{DType::kF32, one, std::vector<uint8_t>(kv->data.begin(), kv->data.begin() + one.elements() * 4)};
  const size_t T = one.tokens, C = one.channels();
  for (StepMode mode : {StepMode::kLayer, StepMode::kChannel}) {
    const std::vector<double> max_steps = test::documented_max_steps(first, 5, mode);
    for (uint32_t k = 0; k < 2; ++k) {
      const float* x = reinterpret_cast<const float*>(first.data.data()) + k * T * C;
      std::vector<ChannelGrid> grids(C);
      compute_grids(x, uint32_t(T), uint32_t(C), kLevelStep[5] * layer_factor(0, 1), mode, grids.data());
      for (size_t c = 0; c < C; ++c) {
        const double step = step_from_code(grids[c].step_code), max_step = max_steps[k * C + c];
        ASSERT_LE(step, max_step * (1 + 1e-6)) << "kv " << k << " channel " << c;
        ASSERT_GT(step, max_step * std::exp2(-1.0 / 16) * (1 - 1e-6)) << "kv " << k << " channel " << c;
        double mean = 0;
        for (size_t t = 0; t < T; ++t) mean += x[t * C + c];
        mean /= double(T);
        ASSERT_LE(std::fabs(grids[c].center - mean / step), 0.5 + 1e-6) << "kv " << k << " channel " << c;
      }
    }
  }
}

// quantize_value: a grid index whose decoded value (rounded to the dtype) is within
// error_bound, at most 255 steps from the centre; kEscape otherwise and for non-finite input.
TEST(PublicApi, QuantizeValueMeetsTheBoundOrEscapes) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> n01(0, 1);
  size_t escaped = 0, coded = 0;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    for (int i = 0; i < 20000; ++i) {
      const float step = step_from_code(int32_t(rng() % 160) - 120);
      const int32_t center = int32_t(rng() % 200) - 100;
      float x = (float(center) + 200 * n01(rng)) * step;
      uint8_t raw[4];
      detail::store_from_f32(raw, uint8_t(dt), x);
      x = detail::load_as_f32(raw, uint8_t(dt));  // an input value of the dtype
      const int32_t n = quantize_value(x, step, center, dt);
      if (n == kEscape) {
        ++escaped;
        continue;
      }
      ++coded;
      ASSERT_LE(std::abs(n - center), 255) << x;
      detail::store_from_f32(raw, uint8_t(dt), float(n) * step);
      const float x_hat = detail::load_as_f32(raw, uint8_t(dt));
      ASSERT_LE(std::fabs(double(x) - x_hat), error_bound(step, x_hat, dt)) << dtype_name(dt) << " x " << x;
      ASSERT_LE(error_bound(step, x_hat, dt), step / 2 + test::dtype_ulp(x_hat, dt) / 2 * (1 + 1e-12));
    }
    EXPECT_EQ(quantize_value(NAN, 0.5f, 0, dt), kEscape);
    EXPECT_EQ(quantize_value(INFINITY, 0.5f, 0, dt), kEscape);
    EXPECT_EQ(quantize_value(300.0f, 1.0f, 0, dt), kEscape);  // 300 steps from the centre
  }
  EXPECT_GT(escaped, 1000u);
  EXPECT_GT(coded, 10000u);
}

class StoredContext : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = open_store("mem:");
    ASSERT_TRUE(s.ok());
    store_ = std::move(*s);
    auto kv = KVCache::allocate(DType::kF16, KVShape{2, 80, 2, 16});
    ASSERT_TRUE(kv.ok());
    kv_ = std::move(*kv);
    std::mt19937_64 rng(5);
    std::normal_distribution<float> n01(0, 1);
    for (size_t i = 0; i < kv_.shape.elements(); ++i) detail::store_from_f32(&kv_.data[2 * i], 2, n01(rng));
    PutOptions o;
    o.levels = {2, 6};
    o.chunk_tokens = 32;
    o.text_tokens.assign(80, 7);
    auto m = put_context(*store_, "ctx", kv_.view(), o);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    m_ = std::move(*m);
  }
  std::unique_ptr<Store> store_;
  KVCache kv_;
  Manifest m_;
};

TEST_F(StoredContext, ManifestJsonSaysWhatIsStored) {
  const nlohmann::json j = nlohmann::json::parse(manifest_json(m_, "ctx"));
  EXPECT_EQ(j["id"], "ctx");
  EXPECT_EQ(j["dtype"], "f16");
  EXPECT_EQ(j["layers"], 2);
  EXPECT_EQ(j["tokens"], 80);
  EXPECT_EQ(j["kv_heads"], 2);
  EXPECT_EQ(j["head_dim"], 16);
  EXPECT_EQ(j["chunk_tokens"], 32);
  EXPECT_EQ(j["chunks"], 3);
  EXPECT_EQ(j["has_text"], true);
  ASSERT_EQ(j["levels"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const ManifestLevel& l = m_.levels[i];
    EXPECT_EQ(j["levels"][i]["level"], l.level);
    EXPECT_EQ(j["levels"][i]["head_bytes"], l.head_bytes);
    EXPECT_EQ(j["levels"][i]["frame_bytes"], l.frame_bytes());
    EXPECT_DOUBLE_EQ(j["levels"][i]["bits_per_element"].get<double>(),
                     8.0 * double(l.frame_bytes()) / double(kv_.shape.elements()));
    EXPECT_GT(j["levels"][i]["rel_error"].get<double>(), 0.0);
  }
}

TEST_F(StoredContext, VerifyHeadAcceptsTheStoredHeadOnly) {
  for (const ManifestLevel& l : m_.levels) {
    auto head = store_->get(head_key("ctx", l.level));
    ASSERT_TRUE(head.ok());
    EXPECT_TRUE(verify_head(m_, l.level, *head).ok());
    std::vector<uint8_t> bad = *head;
    bad[bad.size() / 2] ^= 1;
    EXPECT_FALSE(verify_head(m_, l.level, bad).ok());
    bad = *head;
    bad.pop_back();
    EXPECT_FALSE(verify_head(m_, l.level, bad).ok());
    EXPECT_FALSE(verify_head(m_, l.level == 2 ? 6 : 2, *head).ok()) << "the other level's head";
  }
  auto head = store_->get(head_key("ctx", 2));
  ASSERT_TRUE(head.ok());
  EXPECT_FALSE(verify_head(m_, 4, *head).ok()) << "a level that is not stored";
}

TEST_F(StoredContext, ProfileFromManifestHasEveryLevelsSizes) {
  const ContextProfile p = profile_from_manifest(m_, 55.0, true);
  ASSERT_TRUE(p.validate().ok());
  EXPECT_TRUE(p.text_available);
  EXPECT_FALSE(profile_from_manifest(m_, 55.0, false).text_available);
  ASSERT_EQ(p.chunks(), 3u);
  EXPECT_EQ(p.chunk_tokens, (std::vector<uint32_t>{32, 32, 16}));
  EXPECT_EQ(p.raw_bytes_per_token, 2u * 2 * 2 * 16 * 2);
  ASSERT_EQ(p.options.size(), 2u);
  for (size_t o = 0; o < 2; ++o) {
    const ManifestLevel& l = m_.levels[o];
    EXPECT_EQ(p.options[o].level, l.level);
    EXPECT_EQ(p.options[o].setup_bytes, l.head_bytes);
    EXPECT_EQ(p.options[o].decode_gbps, 55.0);
    EXPECT_DOUBLE_EQ(p.options[o].distortion, l.rel_error);
    for (uint32_t c = 0; c < 3; ++c) EXPECT_EQ(p.bytes[c][o], l.chunks[c].size) << "chunk " << c;
  }
  // No override: the manifest's measured decode speed.
  const ContextProfile q = profile_from_manifest(m_, 0, true);
  EXPECT_DOUBLE_EQ(q.options[0].decode_gbps, m_.levels[0].decode_gbps);
}

}  // namespace
}  // namespace kvcodec
