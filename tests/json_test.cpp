// io/json.hpp: the strict JSON reader behind the safetensors header parser, and the string
// writer. Malformed input of every kind must be a kCorruptData status, never a crash or a value.
#include "io/json.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kvcodec::detail {
namespace {

// Reads a document that must be one string.
StatusOr<std::string> string_of(std::string_view doc) {
  JsonReader r(doc);
  KVCODEC_ASSIGN_OR_RETURN(std::string s, r.read_string());
  KVCODEC_RETURN_IF_ERROR(r.finish());
  return s;
}

// Validates a whole document with skip().
Status validate(std::string_view doc) {
  JsonReader r(doc);
  KVCODEC_RETURN_IF_ERROR(r.skip());
  return r.finish();
}

TEST(Json, ReadsASafetensorsHeaderInDocumentOrder) {
  const std::string doc = R"( {"__metadata__": {"format": "pt"},
      "b": {"shape": [2, 3], "dtype": "F16", "data_offsets": [0, 12]},
      "a": {"dtype": "F32", "shape": [], "data_offsets": [12, 16], "extra": [null, {"x": 1.5e-3}]} } )";
  JsonReader r(doc);
  std::vector<std::string> log;
  const Status s = r.read_object([&](std::string_view name) -> Status {
    log.push_back("key " + std::string(name));
    return r.read_object([&](std::string_view key) -> Status {
      log.push_back(std::string(key));
      auto type = r.peek();
      if (!type.ok()) return type.status();
      if (*type == JsonType::kString) {
        auto v = r.read_string();
        if (v.ok()) log.push_back("=" + *v);
        return v.status();
      }
      if (key == "extra") return r.skip();
      return r.read_array([&]() -> Status {
        auto v = r.read_uint();
        if (v.ok()) log.push_back("#" + std::to_string(*v));
        return v.status();
      });
    });
  });
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(r.finish().ok());
  const std::vector<std::string> want = {"key __metadata__", "format", "=pt", "key b", "shape", "#2", "#3",
                                         "dtype", "=F16", "data_offsets", "#0", "#12", "key a", "dtype",
                                         "=F32", "shape", "data_offsets", "#12", "#16", "extra"};
  EXPECT_EQ(log, want);
}

TEST(Json, PeekNamesEveryType) {
  const std::pair<const char*, JsonType> cases[] = {
      {" null", JsonType::kNull},   {"true", JsonType::kBool},  {"false", JsonType::kBool},
      {"-1", JsonType::kNumber},    {"7", JsonType::kNumber},   {"\"s\"", JsonType::kString},
      {"[]", JsonType::kArray},     {"{}", JsonType::kObject},
  };
  for (const auto& [doc, type] : cases) {
    JsonReader r(doc);
    auto t = r.peek();
    ASSERT_TRUE(t.ok()) << doc;
    EXPECT_EQ(*t, type) << doc;
  }
  for (const char* doc : {"", "   ", "x", "]", "'s'", "+1"}) {
    JsonReader r(doc);
    EXPECT_EQ(r.peek().status().code(), StatusCode::kCorruptData) << doc;
  }
}

TEST(Json, StringEscapesAndUtf8) {
  const std::pair<const char*, std::string> cases[] = {
      {R"("plain")", "plain"},
      {R"("")", ""},
      {R"("\" \\ \/ \b \f \n \r \t")", "\" \\ / \b \f \n \r \t"},
      {R"("\u0041\u00e9\u20AC")", "A\xc3\xa9\xe2\x82\xac"},
      {R"("\ud83d\ude00")", "\xf0\x9f\x98\x80"},  // a surrogate pair
      {R"("\u0000")", std::string(1, '\0')},
      {"\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f\"", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f"},
  };
  for (const auto& [doc, text] : cases) {
    auto s = string_of(doc);
    ASSERT_TRUE(s.ok()) << doc << ": " << s.status().to_string();
    EXPECT_EQ(*s, text) << doc;
  }
}

TEST(Json, MalformedStringsAreErrors) {
  const char* cases[] = {
      R"("unterminated)",  R"("bad \x escape")", R"("\u12")",       R"("\u12g4")",
      R"("\ud800")",       R"("\ud800\u0041")",  R"("\udc00")",     R"("\ud800\")",
      "\"tab\there\"",     "\"nl\nhere\"",       "\"\xc0\x80\"",    "\"\xe0\x80\xaf\"",   // overlong
      "\"\xed\xa0\x80\"",  "\"\xf4\x90\x80\x80\"", "\"\xf5\x80\x80\x80\"", "\"\x80\"",     // surrogate, > U+10FFFF, stray
      "\"\xc3\"",          "\"\xe2\x82\"",       "\"\xf0\x9f\x98\"", "\"\xc3(\"",         // truncated sequences
      "\"\\",
  };
  for (const char* doc : cases) {
    auto s = string_of(doc);
    EXPECT_EQ(s.status().code(), StatusCode::kCorruptData) << doc;
  }
}

TEST(Json, UnsignedIntegers) {
  const std::pair<const char*, uint64_t> ok[] = {{"0", 0}, {" 42", 42}, {"18446744073709551615", ~0ull}};
  for (const auto& [doc, v] : ok) {
    JsonReader r(doc);
    auto got = r.read_uint();
    ASSERT_TRUE(got.ok()) << doc << ": " << got.status().to_string();
    EXPECT_EQ(*got, v);
    EXPECT_TRUE(r.finish().ok());
  }
  for (const char* doc : {"18446744073709551616", "99999999999999999999999", "-1", "-0", "1.5", "1e3", "2E0",
                          "01", "00", "", "\"1\"", "true"}) {
    JsonReader r(doc);
    EXPECT_EQ(r.read_uint().status().code(), StatusCode::kCorruptData) << doc;
  }
}

TEST(Json, SkipValidatesTheWholeGrammar) {
  for (const char* doc : {"null", "true", "false", "0", "-0", "-0.5e+3", "1E-7", "123.456", "[]", "{}",
                          R"([null, true, false, -1, 2.5, "s", [], {}, {"a": [{"b": {}}]}])", " \t\r\n[ 1 , 2 ] \n"}) {
    const Status s = validate(doc);
    EXPECT_TRUE(s.ok()) << doc << ": " << s.to_string();
  }
  for (const char* doc : {"[1,]", "[,1]", "[1 2]", "{\"a\":1,}", "{\"a\" 1}", "{\"a\":}", "{1:2}", "{a:1}",
                          "[01]", "[1.]", "[.5]", "[1e]", "[1e+]", "[-]", "[--1]", "[+1]", "[tru]", "[nul]",
                          "[True]", "[NaN]", "[Infinity]", "[0x10]", "['s']", "[", "{", "[1", "{\"a\":1",
                          "[1] [2]", "[1]x", "{}{}", "[/* comment */]"}) {
    EXPECT_EQ(validate(doc).code(), StatusCode::kCorruptData) << doc;
  }
}

TEST(Json, RepeatedKeysAreErrors) {
  EXPECT_EQ(validate(R"({"a": 1, "b": 2, "a": 3})").code(), StatusCode::kCorruptData);
  EXPECT_EQ(validate(R"([{"x": {"k": 1, "k": 1}}])").code(), StatusCode::kCorruptData);
  // The same key in different objects is fine; keys compare after unescaping.
  EXPECT_TRUE(validate(R"({"a": {"a": 1}, "b": {"a": 2}})").ok());
  EXPECT_EQ(validate(R"({"a": 1, "\u0061": 2})").code(), StatusCode::kCorruptData);
}

TEST(Json, NestingIsBounded) {
  const auto nested = [](int depth) { return std::string(size_t(depth), '[') + std::string(size_t(depth), ']'); };
  EXPECT_TRUE(validate(nested(kJsonMaxDepth)).ok());
  EXPECT_EQ(validate(nested(kJsonMaxDepth + 1)).code(), StatusCode::kCorruptData);
  // Far deeper than any stack would allow unbounded recursion to go: refused, no crash.
  EXPECT_EQ(validate(std::string(1'000'000, '[')).code(), StatusCode::kCorruptData);
  std::string objects;
  for (int i = 0; i < 10'000; ++i) objects += "{\"a\":";
  EXPECT_EQ(validate(objects).code(), StatusCode::kCorruptData);
}

TEST(Json, EveryTruncationOfADocumentIsAnError) {
  const std::string doc = R"({"__metadata__":{"k":"v\u00e9"},"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}})";
  ASSERT_TRUE(validate(doc).ok());
  for (size_t n = 0; n < doc.size(); ++n)
    EXPECT_EQ(validate(doc.substr(0, n)).code(), StatusCode::kCorruptData) << "prefix of " << n << " bytes";
}

TEST(Json, ErrorsNameTheByteOffset) {
  const Status s = validate(R"({"a": [1, 2 3]})");
  ASSERT_EQ(s.code(), StatusCode::kCorruptData);
  EXPECT_NE(std::string(s.message()).find("at byte 12"), std::string::npos) << s.to_string();
}

TEST(Json, CallbackErrorsPassThroughUnchanged) {
  JsonReader r(R"({"a": 1})");
  const Status s = r.read_object([](std::string_view) { return InvalidArgument("not wanted"); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  // A callback that does not read its value leaves the reader at the value: an error, not a skip.
  JsonReader lazy(R"({"a": 1})");
  EXPECT_EQ(lazy.read_object([](std::string_view) { return Status::Ok(); }).code(), StatusCode::kCorruptData);
}

TEST(Json, WriterEscapesLikeTheReferenceAndRoundTrips) {
  std::string out = "x";
  ASSERT_TRUE(append_json_string(out, "we\"ird\\name/\x01\x1f\t\n\b\f\r \x7f caf\xc3\xa9 \xf0\x9f\x98\x80"));
  EXPECT_EQ(out, "x\"we\\\"ird\\\\name/\\u0001\\u001f\\t\\n\\b\\f\\r \x7f caf\xc3\xa9 \xf0\x9f\x98\x80\"");

  // Every single byte and a sample of multi-byte characters survive a write and a read.
  std::vector<std::string> texts;
  for (int c = 0; c < 0x80; ++c) texts.emplace_back(1, char(c));
  for (const char* t : {"\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf"})
    texts.emplace_back(t);
  for (const std::string& t : texts) {
    std::string doc;
    ASSERT_TRUE(append_json_string(doc, t));
    auto back = string_of(doc);
    ASSERT_TRUE(back.ok()) << doc << ": " << back.status().to_string();
    EXPECT_EQ(*back, t);
  }
}

TEST(Json, WriterRefusesInvalidUtf8AndAppendsNothing) {
  for (const char* bad : {"\xff", "ok\xfe", "\xc0\x80", "\xed\xa0\x80", "\xc3", "a\x80z"}) {
    std::string out = "prefix";
    EXPECT_FALSE(append_json_string(out, bad)) << bad;
    EXPECT_EQ(out, "prefix");
  }
}

}  // namespace
}  // namespace kvcodec::detail
