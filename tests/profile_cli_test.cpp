// `kvcodec calibrate` and `--profile` on encode, decode and inspect (tools/kvcodec): the CLI
// round trip equals the library's, and a missing, wrong or corrupt profile is one error line.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include "cli_test_util.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

using test::CliTest;

constexpr KVShape kShape{2, 40, 2, 16};

// An orthonormal profile (a permutation with sign flips per head), keys before RoPE.
std::vector<uint8_t> write_profile(const std::string& path, uint32_t seed) {
  const size_t d = kShape.head_dim, heads = size_t(kShape.layers) * 2 * kShape.kv_heads;
  std::vector<float> means(heads * d), axes(heads * d * d, 0.0f);
  for (size_t h = 0; h < heads; ++h)
    for (size_t k = 0; k < d; ++k) {
      means[h * d + k] = 0.01f * float((k + seed) % 7);
      axes[(h * d + k) * d + (k * 5 + h + seed) % d] = (k + seed) % 3 ? 1.0f : -1.0f;
    }
  auto p = make_profile(kShape.layers, kShape.kv_heads, kShape.head_dim, means, axes, true, 10000.0);
  EXPECT_TRUE(p.ok());
  const std::vector<uint8_t> bytes = serialize_profile(*p);
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  return bytes;
}

// The library's frame of `in` at level 5, chunks of 16 tokens, first position 9 (empty on error).
std::vector<uint8_t> library_frame(const std::string& in, const Profile& p) {
  auto kv = load_kv(in);
  EXPECT_TRUE(kv.ok());
  if (!kv.ok()) return {};
  EncodeOptions o;
  o.level = 5;
  o.chunk_tokens = 16;
  std::vector<uint8_t> frame(max_encoded_size(kShape, DType::kF16, o, p));
  auto n = encode_into(kv->view(), o, p, frame, 9);
  EXPECT_TRUE(n.ok());
  frame.resize(n.ok() ? *n : 0);
  return frame;
}

TEST_F(CliTest, ProfileRoundTripMatchesTheLibrary) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape);
  const std::vector<uint8_t> pbytes = write_profile(path("p.kvprofile"), 1);
  auto enc = run({"encode", in, "-o", path("a.kvc"), "--level", "5", "--chunk-tokens", "16", "--profile",
                  path("p.kvprofile"), "--first-position", "9"});
  ASSERT_EQ(enc.exit_code, 0) << enc.err;
  auto ins = run({"inspect", path("a.kvc"), "--json", "--profile", path("p.kvprofile")});
  ASSERT_EQ(ins.exit_code, 0) << ins.err;
  EXPECT_NE(ins.out.find("\"format_version\": 4"), std::string::npos) << ins.out;
  EXPECT_NE(ins.out.find("\"first_position\": 9"), std::string::npos) << ins.out;
  auto dec = run({"decode", path("a.kvc"), "-o", path("out.safetensors"), "--profile", path("p.kvprofile")});
  ASSERT_EQ(dec.exit_code, 0) << dec.err;

  // The same frame and values as the library's.
  auto p = parse_profile(pbytes);
  ASSERT_TRUE(p.ok());
  const std::vector<uint8_t> frame = library_frame(in, *p);
  ASSERT_FALSE(frame.empty());
  auto file = read_file(path("a.kvc"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(*file, frame);
  auto out = load_kv(path("out.safetensors"));
  ASSERT_TRUE(out.ok());
  std::vector<uint8_t> want(out->data.size());
  ASSERT_TRUE(decode_into(frame, *p, contiguous_view(want.data(), DType::kF16, kShape)).ok());
  EXPECT_EQ(out->data, want);
}

TEST_F(CliTest, MissingWrongOrCorruptProfileIsOneErrorLine) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape);
  write_profile(path("p.kvprofile"), 1);
  std::vector<uint8_t> other = write_profile(path("q.kvprofile"), 2);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc"), "--profile", path("p.kvprofile")}).exit_code, 0);
  expect_error(run({"decode", path("a.kvc"), "-o", path("out.safetensors")}), "decode");
  expect_error(run({"decode", path("a.kvc"), "-o", path("out.safetensors"), "--profile", path("q.kvprofile")}), "decode");
  expect_error(run({"inspect", path("a.kvc"), "--profile", path("q.kvprofile")}), "inspect");
  other[100] ^= 1;
  std::ofstream(path("bad.kvprofile"), std::ios::binary)
      .write(reinterpret_cast<const char*>(other.data()), std::streamsize(other.size()));
  auto r = run({"encode", in, "-o", path("b.kvc"), "--profile", path("bad.kvprofile")});
  expect_error(r, "encode");
  EXPECT_NE(r.err.find("checksum"), std::string::npos) << r.err;
  expect_error(run({"encode", in, "-o", path("b.kvc"), "--profile", path("missing.kvprofile")}), "encode");
  expect_error(run({"encode", in, "-o", path("b.kvc"), "--level", "0", "--profile", path("p.kvprofile")}), "encode");
  EXPECT_FALSE(std::filesystem::exists(path("out.safetensors")));
}

// put --profile, serve, fetch --profile: the fetched tensor is the library's decode of the
// stored level; fetch without the profile or with another is one error line naming its digest.
TEST_F(CliTest, PutServeFetchWithAProfile) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape);
  const std::vector<uint8_t> pbytes = write_profile(path("p.kvprofile"), 1);
  write_profile(path("q.kvprofile"), 2);
  const std::string store = "file:" + path("store");
  auto put = run({"put", "--store", store, "--id", "c", in, "--levels", "0,5", "--chunk-tokens", "16", "--profile",
                  path("p.kvprofile"), "--first-position", "9"});
  ASSERT_EQ(put.exit_code, 0) << put.err;
  auto p = parse_profile(pbytes);
  ASSERT_TRUE(p.ok());
  char need[17];
  std::snprintf(need, sizeof need, "%016llx", static_cast<unsigned long long>(p->digest));
  EXPECT_NE(put.err.find(need), std::string::npos) << put.err;  // the profile's digest and size

  const pid_t server = start({"serve", "--store", store, "--port", "0"}, "serve");
  const std::string banner = wait_for_output("serve", "Ctrl-C");
  const size_t at = banner.find(" on 127.0.0.1:");
  if (at == std::string::npos) {
    stop(server);
    FAIL() << "serve did not start: " << test::slurp(path("serve.err"));
  }
  const std::string addr = "127.0.0.1:" + std::to_string(std::stoi(banner.substr(at + 14)));
  auto fetch = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"fetch", "--server", addr, "--id", "c", "-o", path("f.safetensors"), "--quiet",
                                     "--policy", "fixed:5"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run(args);
  };
  const auto good = fetch({"--profile", path("p.kvprofile")});
  const auto missing = fetch({});
  const auto wrong = fetch({"--profile", path("q.kvprofile")});
  EXPECT_EQ(stop(server), 0);
  ASSERT_EQ(good.exit_code, 0) << good.err;
  for (const auto* r : {&missing, &wrong}) {
    expect_error(*r, "fetch");
    EXPECT_NE(r->err.find(need), std::string::npos) << r->err;
  }
  const std::vector<uint8_t> frame = library_frame(in, *p);
  ASSERT_FALSE(frame.empty());
  std::vector<uint8_t> want(kShape.elements() * 2);
  ASSERT_TRUE(decode_into(frame, *p, contiguous_view(want.data(), DType::kF16, kShape)).ok());
  auto out = load_kv(path("f.safetensors"));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->data, want);
}

TEST_F(CliTest, CalibrateFromKVFiles) {
  const std::string a = make_cache("a.safetensors", DType::kF16, kShape);
  const std::string b = make_cache("b.safetensors", DType::kF32, KVShape{kShape.layers, 24, kShape.kv_heads, kShape.head_dim});
  auto after = run({"calibrate", a, b, "--keys", "after-rope", "-o", path("after.kvprofile")});
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_NE(after.out.find("bytes, digest"), std::string::npos) << after.out;  // its size is reported
  auto before = run({"calibrate", a, b, "--rope-theta", "10000", "-o", path("before.kvprofile")});
  ASSERT_EQ(before.exit_code, 0) << before.err;
  auto pa = read_file(path("after.kvprofile")), pb = read_file(path("before.kvprofile"));
  ASSERT_TRUE(pa.ok() && pb.ok());
  auto qa = parse_profile(*pa), qb = parse_profile(*pb);
  ASSERT_TRUE(qa.ok() && qb.ok());
  EXPECT_EQ(qa->layers, kShape.layers);
  EXPECT_EQ(qa->kv_heads, kShape.kv_heads);
  EXPECT_EQ(qa->head_dim, kShape.head_dim);
  EXPECT_FALSE(qa->keys_before_rope);
  EXPECT_TRUE(qb->keys_before_rope);
  EXPECT_NE(qa->means, qb->means);  // the keys were rotated back before the statistics
  ASSERT_EQ(run({"encode", a, "-o", path("a.kvc"), "--profile", path("before.kvprofile")}).exit_code, 0);
  ASSERT_EQ(run({"decode", path("a.kvc"), "-o", path("o.safetensors"), "--profile", path("before.kvprofile")}).exit_code, 0);

  EXPECT_EQ(run({"calibrate", a, "-o", path("x.kvprofile")}).exit_code, 2);  // keys before RoPE need a base
  EXPECT_EQ(run({"calibrate", a, "--model", "m.bin", "--keys", "after-rope", "-o", path("x.kvprofile")}).exit_code, 2);
  const std::string other = make_cache("c.safetensors", DType::kF16, KVShape{kShape.layers, 8, kShape.kv_heads, 8});
  expect_error(run({"calibrate", a, other, "--keys", "after-rope", "-o", path("x.kvprofile")}), "calibrate");
  expect_error(run({"calibrate", path("none.safetensors"), "--keys", "after-rope", "-o", path("x.kvprofile")}),
               "calibrate");
  EXPECT_FALSE(std::filesystem::exists(path("x.kvprofile")));
}

TEST_F(CliTest, CalibrateWritesAProfileThatEncodesRealCaches) {
  KVCODEC_REQUIRE_DATA("models/stories260K.bin");
  const std::string model = test::data_path("models/stories260K.bin"), tok = test::data_path("models/tok512.bin");
  auto cal = run({"calibrate", "--model", model, "--tokenizer", tok, "--text", test::data_path("text/tinyshakespeare.txt"),
                  "--contexts", "2", "--context-tokens", "64", "-o", path("m.kvprofile")});
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  auto dump = run({"kv-dump", "--model", model, "--tokenizer", tok, "--text",
                   test::data_path("text/tinystories_valid_sample.txt"), "--tokens", "96", "-o", path("kv.safetensors")});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  ASSERT_EQ(run({"encode", path("kv.safetensors"), "-o", path("a.kvc"), "--profile", path("m.kvprofile")}).exit_code, 0);
  ASSERT_EQ(run({"decode", path("a.kvc"), "-o", path("o.safetensors"), "--profile", path("m.kvprofile")}).exit_code, 0);
  expect_error(run({"calibrate", "--model", model, "--tokenizer", tok, "--text", path("none.txt"), "-o", path("x")}),
               "calibrate");
}

// Several calibration texts (comma-separated): contexts alternate between them, so the profile
// differs from either text's alone; the same command gives the same bytes; a text without a
// context of its own or an empty name is one error line.
TEST_F(CliTest, CalibrateOnSeveralTexts) {
  KVCODEC_REQUIRE_DATA("models/stories260K.bin");
  const std::string model = test::data_path("models/stories260K.bin"), tok = test::data_path("models/tok512.bin");
  const std::string a = test::data_path("text/tinyshakespeare.txt"), b = test::data_path("text/wikitext2_test.txt");
  auto calibrate = [&](const std::string& texts, const std::string& contexts, const std::string& out) {
    return run({"calibrate", "--model", model, "--tokenizer", tok, "--text", texts, "--contexts", contexts,
                "--context-tokens", "64", "-o", path(out)});
  };
  for (const auto& [texts, out] : {std::pair{a, "a"}, std::pair{b, "b"}, std::pair{a + "," + b, "ab"},
                                   std::pair{a + "," + b, "ab2"}}) {
    auto r = calibrate(texts, "4", out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  auto bytes = [&](const std::string& name) {
    std::ifstream f(path(name), std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_FALSE(bytes("ab").empty());
  EXPECT_EQ(bytes("ab"), bytes("ab2"));
  EXPECT_NE(bytes("ab"), bytes("a"));
  EXPECT_NE(bytes("ab"), bytes("b"));
  for (const auto& [texts, contexts, why] : {std::tuple{a + "," + b, "1", "at least as many contexts"},
                                              std::tuple{a + ",," + b, "4", "empty file name"}}) {
    auto r = calibrate(texts, contexts, "x");
    expect_error(r, "calibrate");
    EXPECT_NE(r.err.find(why), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace kvcodec
