// Tests of the reference transformer (src/model/include/kvcodec/model.hpp).
#include "kvcodec/model.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.hpp"
#include "kvcodec/tokenizer.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

constexpr const char* kStories = "models/stories260K.bin";
constexpr const char* kBytesModel = "models/kvc-bytes-a.bin";

Model load_model(const char* rel) {
  auto m = Model::load(test::data_path(rel));
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return std::move(m).value();
}

float max_abs_diff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0.0f;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Writes `bytes` to a fresh file under the test temp directory and returns its path.
std::string write_temp(const std::string& name, const std::string& bytes) {
  std::string path = (std::filesystem::path(testing::TempDir()) / name).string();
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

TEST(Model, LoadsHeaderOfEveryCheckpoint) {
  KVCODEC_REQUIRE_DATA(kBytesModel);
  Model m = load_model(kBytesModel);
  const ModelConfig& c = m.config();
  EXPECT_EQ(c.dim, 256u);
  EXPECT_EQ(c.hidden_dim, 688u);
  EXPECT_EQ(c.layers, 5u);
  EXPECT_EQ(c.heads, 4u);
  EXPECT_EQ(c.kv_heads, 2u);
  EXPECT_EQ(c.vocab_size, 256u);
  EXPECT_EQ(c.seq_len, 1024u);
  EXPECT_EQ(c.head_dim(), 64u);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ(c.kv_shape(10), (KVShape{5, 10, 2, 64}));
}

// The reference file holds 200 greedy ids from BOS at positions 0..199 and their text; a
// correct forward pass reproduces both exactly.
TEST(Model, GreedyDecodeReproducesReference) {
  KVCODEC_REQUIRE_DATA(kStories);
  KVCODEC_REQUIRE_DATA("reference/stories260K_greedy_ref.txt");
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  std::istringstream ref(read_text(test::data_path("reference/stories260K_greedy_ref.txt")));
  std::vector<int32_t> expected;
  std::string expected_text, line;
  while (std::getline(ref, line)) {
    if (line == "# token ids:") {
      std::getline(ref, line);
      std::istringstream ids(line);
      for (int32_t id; ids >> id;) expected.push_back(id);
    } else if (line == "# text:") {
      std::stringstream rest;
      rest << ref.rdbuf();
      expected_text = rest.str();
    }
  }
  ASSERT_EQ(expected.size(), 200u);
  ASSERT_FALSE(expected_text.empty());
  expected_text.pop_back();  // the file's final newline

  Model m = load_model(kStories);
  KVState kv = m.new_state();
  std::vector<int32_t> generated{Tokenizer::kBos};
  std::vector<float> logits;
  for (size_t pos = 0; pos < expected.size(); ++pos) {
    ASSERT_TRUE(m.forward({&generated.back(), 1}, kv, &logits).ok());
    generated.push_back(argmax(logits));
    ASSERT_EQ(generated.back(), expected[pos]) << "first mismatch at position " << pos;
  }
  EXPECT_EQ(kv.tokens(), 200u);

  auto tok = Tokenizer::load(test::data_path("models/tok512.bin"));
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(tok->decode(generated), expected_text);
}

TEST(Model, BatchedPrefillMatchesTokenByToken) {
  KVCODEC_REQUIRE_DATA(kStories);
  Model m = load_model(kStories);
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(1 + (i * 37) % 500);
  KVState batched = m.new_state(), stepped = m.new_state();
  std::vector<float> all, one, stepwise;
  ASSERT_TRUE(m.forward(ids, batched, &all).ok());
  ASSERT_EQ(all.size(), ids.size() * m.config().vocab_size);
  for (int32_t id : ids) {
    ASSERT_TRUE(m.forward({&id, 1}, stepped, &one).ok());
    stepwise.insert(stepwise.end(), one.begin(), one.end());
  }
  EXPECT_LT(max_abs_diff(all, stepwise), 1e-4f);
  for (uint32_t l = 0; l < m.config().layers; ++l) {
    size_t n = size_t(batched.tokens()) * m.config().kv_dim();
    EXPECT_LT(max_abs_diff({batched.keys(l), n}, {stepped.keys(l), n}), 1e-4f);
    EXPECT_LT(max_abs_diff({batched.values(l), n}, {stepped.values(l), n}), 1e-4f);
  }
}

TEST(Model, ThreadCountDoesNotChangeResults) {
  KVCODEC_REQUIRE_DATA(kBytesModel);
  Model m = load_model(kBytesModel);
  std::string text = "The kernel documentation describes how to configure the build.";
  std::vector<int32_t> ids = Tokenizer::bytes().encode(text, false);
  std::vector<float> one_thread, four_threads;
  KVState a = m.new_state(), b = m.new_state();
  m.set_threads(1);
  ASSERT_TRUE(m.forward(ids, a, &one_thread).ok());
  m.set_threads(4);
  EXPECT_EQ(m.threads(), 4u);
  ASSERT_TRUE(m.forward(ids, b, &four_threads).ok());
  EXPECT_LT(max_abs_diff(one_thread, four_threads), 1e-4f);
}

// Item 3 of the design: a context's KV, exported and loaded back, lets the model continue as
// if it had prefilled the context itself.
TEST(Model, ContinuationFromSuppliedKVMatchesFullPrefill) {
  KVCODEC_REQUIRE_DATA(kBytesModel);
  Model m = load_model(kBytesModel);
  std::string text = read_text(test::data_path("text/techdocs_valid.txt")).substr(0, 300);
  std::vector<int32_t> ids = Tokenizer::bytes().encode(text, false);
  const size_t context = 256;
  std::span<const int32_t> all(ids), head = all.first(context), tail = all.subspan(context);

  KVState full = m.new_state();
  std::vector<float> full_logits;
  ASSERT_TRUE(m.forward(all, full, &full_logits).ok());
  std::span<const float> expected = std::span<const float>(full_logits).subspan(context * 256);

  KVState ctx = m.new_state();
  ASSERT_TRUE(m.forward(head, ctx, nullptr).ok());

  // f32 export is lossless: the continuation matches the full prefill to rounding noise.
  auto cache = ctx.to_cache(DType::kF32);
  ASSERT_TRUE(cache.ok()) << cache.status().to_string();
  auto loaded = KVState::from_cache(*cache);
  ASSERT_TRUE(loaded.ok());
  std::vector<float> cont;
  ASSERT_TRUE(m.forward(tail, *loaded, &cont).ok());
  EXPECT_EQ(loaded->tokens(), ids.size());
  EXPECT_LT(max_abs_diff(cont, expected), 1e-3f);

  // An f16 cache is slightly lossy: close, not identical.
  auto half = ctx.to_cache(DType::kF16);
  ASSERT_TRUE(half.ok());
  auto loaded_half = KVState::from_cache(*half);
  ASSERT_TRUE(loaded_half.ok());
  std::vector<float> cont_half;
  ASSERT_TRUE(m.forward(tail, *loaded_half, &cont_half).ok());
  float d = max_abs_diff(cont_half, expected);
  EXPECT_GT(d, 0.0f);
  EXPECT_LT(d, 0.2f);

  // The supplied values really are attended to: replacing them changes the prediction.
  KVCache zeroed = *cache;
  const size_t tensor_bytes = size_t(context) * m.config().kv_dim() * 4;
  for (uint32_t l = 0; l < m.config().layers; ++l)  // V of every layer
    std::memset(zeroed.data.data() + (2 * l + 1) * tensor_bytes, 0, tensor_bytes);
  auto loaded_zero = KVState::from_cache(zeroed);
  ASSERT_TRUE(loaded_zero.ok());
  std::vector<float> cont_zero;
  ASSERT_TRUE(m.forward(tail, *loaded_zero, &cont_zero).ok());
  EXPECT_GT(max_abs_diff(cont_zero, expected), 1.0f);
}

TEST(Model, AttentionOutputReproducesForwardAndMasksToTheState) {
  KVCODEC_REQUIRE_DATA(kBytesModel);
  Model m = load_model(kBytesModel);
  std::vector<int32_t> ids = Tokenizer::bytes().encode("Attention over a cache: queries, keys, values.", false);
  const uint32_t context = 30;
  KVState kv = m.new_state();
  ASSERT_TRUE(m.forward(std::span<const int32_t>(ids).first(context), kv, nullptr).ok());
  KVState context_only = kv;
  AttentionRecorder rec;
  ASSERT_TRUE(m.forward(std::span<const int32_t>(ids).subspan(context), kv, nullptr, &rec).ok());
  ASSERT_EQ(rec.queries.size(), m.config().layers);
  EXPECT_EQ(rec.first_position, context);
  EXPECT_EQ(rec.tokens, ids.size() - context);

  for (uint32_t l = 0; l < m.config().layers; ++l) {
    ASSERT_EQ(rec.queries[l].size(), rec.tokens * m.config().dim);
    std::vector<float> again, over_context;
    ASSERT_TRUE(m.attention_output(l, rec.queries[l], context, kv, again).ok());
    EXPECT_LT(max_abs_diff(again, rec.outputs[l]), 1e-6f) << "layer " << l;
    // Over the context alone the new tokens cannot see each other: a different result.
    ASSERT_TRUE(m.attention_output(l, rec.queries[l], context, context_only, over_context).ok());
    EXPECT_GT(max_abs_diff(over_context, rec.outputs[l]), 1e-4f) << "layer " << l;
  }

  std::vector<float> out;
  EXPECT_EQ(m.attention_output(5, rec.queries[0], context, kv, out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m.attention_output(0, std::span<const float>(rec.queries[0]).first(10), context, kv, out).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(m.attention_output(0, rec.queries[0], context, m.new_state(), out).code(),
            StatusCode::kInvalidArgument);
}

TEST(Model, ForwardRejectsBadInputAndLeavesStateUnchanged) {
  KVCODEC_REQUIRE_DATA(kStories);
  Model m = load_model(kStories);
  KVState kv = m.new_state();
  std::vector<int32_t> ok{1, 2, 3};
  ASSERT_TRUE(m.forward(ok, kv, nullptr).ok());

  std::vector<int32_t> bad_id{5, 512};
  EXPECT_EQ(m.forward(bad_id, kv, nullptr).code(), StatusCode::kInvalidArgument);
  std::vector<int32_t> negative{-1};
  EXPECT_EQ(m.forward(negative, kv, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m.forward({}, kv, nullptr).code(), StatusCode::kInvalidArgument);
  std::vector<int32_t> too_long(m.config().seq_len - 2, 7);
  EXPECT_EQ(m.forward(too_long, kv, nullptr).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(kv.tokens(), 3u);

  KVState wrong(4, 4, 8);
  EXPECT_EQ(m.forward(ok, wrong, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(wrong.tokens(), 0u);

  kv.truncate(1);
  EXPECT_EQ(kv.tokens(), 1u);
  EXPECT_TRUE(m.forward(ok, kv, nullptr).ok());
  EXPECT_EQ(kv.tokens(), 4u);
}

TEST(Model, CorruptCheckpointIsAnError) {
  KVCODEC_REQUIRE_DATA(kStories);
  const std::string good = read_text(test::data_path(kStories));

  EXPECT_EQ(Model::load(test::data_path("models/does-not-exist.bin")).status().code(), StatusCode::kIoError);
  EXPECT_EQ(Model::load(write_temp("short.bin", good.substr(0, 20))).status().code(), StatusCode::kCorruptData);
  EXPECT_EQ(Model::load(write_temp("truncated.bin", good.substr(0, good.size() - 4))).status().code(),
            StatusCode::kCorruptData);
  EXPECT_EQ(Model::load(write_temp("longer.bin", good + "xxxx")).status().code(), StatusCode::kCorruptData);

  // Header fields that would imply absurd allocations or an impossible geometry.
  auto with_field = [&](int index, int32_t value) {
    std::string bytes = good;
    std::memcpy(bytes.data() + 4 * index, &value, 4);
    return write_temp("field" + std::to_string(index) + ".bin", bytes);
  };
  EXPECT_EQ(Model::load(with_field(0, 0x7fffffff)).status().code(), StatusCode::kCorruptData);  // dim
  EXPECT_EQ(Model::load(with_field(1, -5)).status().code(), StatusCode::kCorruptData);          // hidden
  EXPECT_EQ(Model::load(with_field(2, 1000)).status().code(), StatusCode::kCorruptData);        // layers
  EXPECT_EQ(Model::load(with_field(3, 7)).status().code(), StatusCode::kCorruptData);           // heads
  EXPECT_EQ(Model::load(with_field(4, 3)).status().code(), StatusCode::kCorruptData);           // kv_heads
  EXPECT_EQ(Model::load(with_field(5, -512)).status().code(), StatusCode::kCorruptData);        // +wcls
  EXPECT_EQ(Model::load(with_field(6, 0)).status().code(), StatusCode::kCorruptData);           // seq_len
}

TEST(Model, KVStateConvertsToContiguousCache) {
  KVCODEC_REQUIRE_DATA(kStories);
  Model m = load_model(kStories);
  KVState kv = m.new_state();
  std::vector<int32_t> ids{1, 403, 407, 261, 378, 432};
  ASSERT_TRUE(m.forward(ids, kv, nullptr).ok());
  const ModelConfig& c = m.config();

  EXPECT_EQ(m.new_state().to_cache(DType::kF16).status().code(), StatusCode::kInvalidArgument);

  auto f32 = kv.to_cache(DType::kF32);
  ASSERT_TRUE(f32.ok());
  EXPECT_EQ(f32->shape, c.kv_shape(6));
  ASSERT_EQ(f32->data.size(), f32->shape.elements() * 4);
  // Element (l, kv, t, h, d) of [layers, 2, tokens, kv_heads, head_dim].
  const float* flat = reinterpret_cast<const float*>(f32->data.data());
  const uint32_t l = 3, t = 4, h = 2, d = 5;
  const size_t row = size_t(t) * c.kv_dim() + size_t(h) * c.head_dim() + d;
  const size_t tensor = 6 * c.kv_dim();
  EXPECT_EQ(flat[(2 * l + 0) * tensor + row], kv.keys(l)[row]);
  EXPECT_EQ(flat[(2 * l + 1) * tensor + row], kv.values(l)[row]);

  auto back = KVState::from_cache(*f32);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->shape(), kv.shape());
  for (uint32_t layer = 0; layer < c.layers; ++layer) {
    EXPECT_EQ(max_abs_diff({back->keys(layer), tensor}, {kv.keys(layer), tensor}), 0.0f);
    EXPECT_EQ(max_abs_diff({back->values(layer), tensor}, {kv.values(layer), tensor}), 0.0f);
  }

  for (DType dt : {DType::kF16, DType::kBF16}) {
    auto lossy = kv.to_cache(dt);
    ASSERT_TRUE(lossy.ok());
    EXPECT_EQ(lossy->data.size(), lossy->shape.elements() * 2);
    auto restored = KVState::from_cache(*lossy);
    ASSERT_TRUE(restored.ok());
    const float rel = dt == DType::kF16 ? 1.0f / 2048 : 1.0f / 256;  // half an ulp, relative
    for (size_t i = 0; i < tensor; ++i) {
      float a = kv.keys(0)[i], b = restored->keys(0)[i];
      ASSERT_LE(std::fabs(a - b), std::fabs(a) * rel + 1e-7f) << dtype_name(dt) << " element " << i;
    }
    uint16_t first;
    std::memcpy(&first, lossy->data.data(), 2);
    EXPECT_EQ(first, dt == DType::kF16 ? detail::f32_to_f16(kv.keys(0)[0]) : detail::f32_to_bf16(kv.keys(0)[0]));
  }

  KVCache broken = *f32;
  broken.data.pop_back();
  EXPECT_EQ(KVState::from_cache(broken).status().code(), StatusCode::kInvalidArgument);
}

TEST(Model, PrefillThroughputIsMeasured) {
  KVCODEC_REQUIRE_DATA(kStories);
  Model m = load_model(kStories);
  auto tps = measure_prefill_throughput(m, 64);
  ASSERT_TRUE(tps.ok());
  EXPECT_GT(*tps, 0.0);
  EXPECT_EQ(measure_prefill_throughput(m, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(measure_prefill_throughput(m, 513).status().code(), StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace kvcodec
