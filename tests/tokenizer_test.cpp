// Tests of the llama2.c and bytes tokenizers (src/model/include/kvcodec/tokenizer.hpp).
#include "kvcodec/tokenizer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "test_util.hpp"

namespace kvcodec {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The tokenizer file parsed independently, for the reference encoder below.
struct Vocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
};

Vocab read_vocab(const std::string& path) {
  std::string b = read_text(path);
  Vocab v;
  for (size_t pos = 4; pos + 8 <= b.size();) {
    float score;
    int32_t len;
    std::memcpy(&score, &b[pos], 4);
    std::memcpy(&len, &b[pos + 4], 4);
    v.pieces.push_back(b.substr(pos + 8, size_t(len)));
    v.scores.push_back(score);
    pos += 8 + size_t(len);
  }
  return v;
}

// run.c's encode, transcribed literally (quadratic rescans), as the oracle for the library's
// priority-queue version. Assumes a vocabulary with byte-fallback pieces at ids 3..258.
std::vector<int32_t> run_c_encode(const Vocab& v, const std::string& text) {
  std::unordered_map<std::string, int32_t> ids;
  for (size_t i = 0; i < v.pieces.size(); ++i) ids.emplace(v.pieces[i], int32_t(i));
  std::vector<int32_t> tokens{1};
  if (text.empty()) return tokens;
  tokens.push_back(ids.at(" "));
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    while (len < 4 && i + len < text.size() && (static_cast<unsigned char>(text[i + len]) & 0xC0) == 0x80) ++len;
    auto it = ids.find(text.substr(i, len));
    if (it != ids.end()) {
      tokens.push_back(it->second);
    } else {
      for (size_t j = 0; j < len; ++j) tokens.push_back(3 + static_cast<unsigned char>(text[i + j]));
    }
    i += len;
  }
  while (true) {
    float best_score = -1e10f;
    int32_t best_id = -1;
    size_t best_idx = 0;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      auto it = ids.find(v.pieces[tokens[i]] + v.pieces[tokens[i + 1]]);
      if (it != ids.end() && v.scores[it->second] > best_score) {
        best_score = v.scores[it->second];
        best_id = it->second;
        best_idx = i;
      }
    }
    if (best_id == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + std::ptrdiff_t(best_idx) + 1);
  }
  return tokens;
}

Tokenizer load(const char* rel) {
  auto t = Tokenizer::load(test::data_path(rel));
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return std::move(t).value();
}

TEST(Tokenizer, LoadsLlama2cVocabularies) {
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  KVCODEC_REQUIRE_DATA("models/tok105.bin");
  Tokenizer t512 = load("models/tok512.bin");
  EXPECT_EQ(t512.vocab_size(), 512u);
  EXPECT_TRUE(t512.uses_bos());
  EXPECT_FALSE(t512.is_bytes());
  Tokenizer t105 = load("models/tok105.bin");
  EXPECT_EQ(t105.vocab_size(), 105u);
}

TEST(Tokenizer, MatchesRunCEncoderOnRealAndAdversarialText) {
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  KVCODEC_REQUIRE_DATA("text/tinystories_valid_sample.txt");
  KVCODEC_REQUIRE_DATA("text/wikitext2_test.txt");
  Tokenizer t = load("models/tok512.bin");
  Vocab v = read_vocab(test::data_path("models/tok512.bin"));
  ASSERT_EQ(v.pieces.size(), 512u);

  std::vector<std::string> texts{
      read_text(test::data_path("text/tinystories_valid_sample.txt")).substr(0, 3000),
      read_text(test::data_path("text/wikitext2_test.txt")).substr(5000, 3000),
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",  // many equal-score ties
      "  two leading spaces\n\n\ttabs and \xC3\xA9 accents \xF0\x9F\x98\x80 emoji",
      std::string("\xFF\xFE invalid \x80 utf-8 \xE2\x82", 21),
  };
  std::mt19937 rng(7);
  std::string random;
  for (int i = 0; i < 500; ++i) random.push_back(char(rng() % 96 + 32));
  texts.push_back(random);
  for (const std::string& text : texts) {
    EXPECT_EQ(t.encode(text, true), run_c_encode(v, text)) << "text: " << text.substr(0, 60);
  }
}

TEST(Tokenizer, EncodesTheGreedyReferenceTextToItsIds) {
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  Tokenizer t = load("models/tok512.bin");
  // The first sentence of reference/stories260K_greedy_ref.txt and its ids.
  std::vector<int32_t> ids = t.encode("Once upon a time, there was a little girl named Lily.", true);
  std::vector<int32_t> expected{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
  EXPECT_EQ(ids, expected);
}

TEST(Tokenizer, RoundTripsRealText) {
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  KVCODEC_REQUIRE_DATA("text/tinyshakespeare.txt");
  Tokenizer t = load("models/tok512.bin");
  for (const char* rel : {"text/tinyshakespeare.txt", "text/wikitext2_test.txt", "text/techdocs_valid.txt"}) {
    std::string text = read_text(test::data_path(rel)).substr(1000, 20000);
    std::vector<int32_t> ids = t.encode(text, true);
    EXPECT_EQ(ids.front(), Tokenizer::kBos);
    EXPECT_LT(ids.size(), text.size()) << rel;  // merges happened
    EXPECT_EQ(t.decode(ids), text) << rel;
  }
}

TEST(Tokenizer, ByteFallbackAndUnknownCharacters) {
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  KVCODEC_REQUIRE_DATA("models/tok105.bin");
  Tokenizer t512 = load("models/tok512.bin");
  // U+2603 (E2 98 83) is not a tok512 piece: three byte pieces <0xE2> <0x98> <0x83>.
  std::vector<int32_t> ids = t512.encode("\xE2\x98\x83", false);
  EXPECT_EQ(ids, (std::vector<int32_t>{t512.encode(" ", false)[0], 3 + 0xE2, 3 + 0x98, 3 + 0x83}));
  EXPECT_EQ(t512.decode(ids), " \xE2\x98\x83");  // no BOS: the dummy space stays
  EXPECT_EQ(t512.decode(-1, 3 + 0x0A), "\n");

  // tok105 has no byte pieces: an unknown character becomes <unk>.
  Tokenizer t105 = load("models/tok105.bin");
  std::vector<int32_t> unk = t105.encode("\xE2\x98\x83", false);
  EXPECT_EQ(std::count(unk.begin(), unk.end(), Tokenizer::kUnk), 3);
  std::string story = "Tom had a red ball. He liked to play.";
  EXPECT_EQ(t105.decode(t105.encode(story, true)), story);
}

TEST(Tokenizer, DecodeDropsTheSpaceAfterBosOnly) {
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  Tokenizer t = load("models/tok512.bin");
  std::vector<int32_t> ids = t.encode("Hello", false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(t.decode(ids), " Hello");
  EXPECT_EQ(t.decode(Tokenizer::kBos, ids[0])[0], 'H');
  EXPECT_EQ(t.decode(-1, 9999), "");
  EXPECT_TRUE(t.encode("", true) == std::vector<int32_t>{Tokenizer::kBos});
}

TEST(Tokenizer, BytesTokenizer) {
  Tokenizer b = Tokenizer::bytes();
  EXPECT_TRUE(b.is_bytes());
  EXPECT_FALSE(b.uses_bos());
  EXPECT_EQ(b.vocab_size(), 256u);
  std::string text("A\x00\xFF\n", 4);
  std::vector<int32_t> ids = b.encode(text, true);  // bos ignored
  EXPECT_EQ(ids, (std::vector<int32_t>{65, 0, 255, 10}));
  EXPECT_EQ(b.decode(ids), text);
  auto opened = Tokenizer::open("bytes");
  ASSERT_TRUE(opened.ok());
  EXPECT_TRUE(opened->is_bytes());
}

TEST(Tokenizer, ContextTokensFollowTheDocumentedDefinition) {
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  Tokenizer t = load("models/tok512.bin");
  const std::string text = "ab\xC3\xA9" "cd story time. Once there was a cat.";
  // Offset 3 is inside "é" (C3 A9): its continuation byte is skipped, the text starts at "cd".
  auto ctx = context_tokens(t, text, 3, 4);
  ASSERT_TRUE(ctx.ok()) << ctx.status().to_string();
  std::vector<int32_t> full = t.encode(text.substr(4), true);
  EXPECT_EQ(*ctx, std::vector<int32_t>(full.begin(), full.begin() + 4));
  EXPECT_EQ(ctx->front(), Tokenizer::kBos);

  auto bytes = context_tokens(Tokenizer::bytes(), text, 3, 5);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, (std::vector<int32_t>{'c', 'd', ' ', 's', 't'}));

  EXPECT_EQ(context_tokens(t, text, text.size(), 4).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(context_tokens(t, text, 0, 1000).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(context_tokens(Tokenizer::bytes(), text, 0, 1000).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(context_tokens(t, text, 0, 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(Tokenizer, CorruptFileIsAnError) {
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  std::string good = read_text(test::data_path("models/tok512.bin"));
  auto write = [](const std::string& name, const std::string& bytes) {
    std::string path = (std::filesystem::path(testing::TempDir()) / name).string();
    std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
    return path;
  };
  EXPECT_EQ(Tokenizer::load("/nonexistent/tok.bin").status().code(), StatusCode::kIoError);
  EXPECT_EQ(Tokenizer::load(write("t1.bin", good.substr(0, 2))).status().code(), StatusCode::kCorruptData);
  EXPECT_EQ(Tokenizer::load(write("t2.bin", good.substr(0, good.size() - 3))).status().code(),
            StatusCode::kCorruptData);
  std::string huge_len = good;
  const int32_t len = 1 << 30;
  std::memcpy(&huge_len[8], &len, 4);  // length field of piece 0
  EXPECT_EQ(Tokenizer::load(write("t3.bin", huge_len)).status().code(), StatusCode::kCorruptData);
}

// Issue 11, item 9: a NaN or infinite score (it breaks the merge queue's order) and a
// max_token_length of 2^31 - 1 (run.c sizes its merge buffer from it) were accepted.
TEST(Tokenizer, NonFiniteScoresAndHugeMaxLengthAreErrors) {
  // Three pieces: <unk>, <s>, </s>; max_token_length 5.
  auto tokenizer = [](int32_t max_len, float score2) {
    std::string b(4, '\0');
    std::memcpy(b.data(), &max_len, 4);
    const char* pieces[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; ++i) {
      const float score = i == 2 ? score2 : 0.f;
      const int32_t len = int32_t(std::strlen(pieces[i]));
      b.append(reinterpret_cast<const char*>(&score), 4).append(reinterpret_cast<const char*>(&len), 4);
      b.append(pieces[i]);
    }
    return b;
  };
  ASSERT_TRUE(Tokenizer::parse(tokenizer(5, -1.f), "good").ok());
  EXPECT_EQ(Tokenizer::parse(tokenizer(5, NAN), "nan").status().code(), StatusCode::kCorruptData);
  EXPECT_EQ(Tokenizer::parse(tokenizer(5, INFINITY), "inf").status().code(), StatusCode::kCorruptData);
  EXPECT_EQ(Tokenizer::parse(tokenizer(5, -INFINITY), "-inf").status().code(), StatusCode::kCorruptData);
  EXPECT_EQ(Tokenizer::parse(tokenizer(INT32_MAX, 0.f), "huge").status().code(), StatusCode::kCorruptData);
  EXPECT_EQ(Tokenizer::parse(tokenizer(4, 0.f), "short").status().code(), StatusCode::kCorruptData);  // "<unk>" is 5
}

}  // namespace
}  // namespace kvcodec
