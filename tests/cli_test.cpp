// Runs the built `kvcodec` program (KVCODEC_CLI_PATH) on small generated caches: encode /
// decode round trips, inspect's JSON, and the error contract (non-zero exit, exactly one line on
// stderr) for missing files, corrupt frames and bad options.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "kvcodec/io.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

size_t count_lines(const std::string& s) { return size_t(std::count(s.begin(), s.end(), '\n')); }

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(KVCODEC_CLI_PATH).empty()) GTEST_SKIP() << "the kvcodec program is not built";
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("kvcodec_cli_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Runs `kvcodec args...` (arguments are single-quoted for the shell) and captures its output.
  RunResult run(const std::vector<std::string>& args) const {
    std::string cmd = std::string("'") + KVCODEC_CLI_PATH + "'";
    for (const std::string& a : args) cmd += " '" + a + "'";
    cmd += " >'" + path("stdout") + "' 2>'" + path("stderr") + "'";
    const int status = std::system(cmd.c_str());
    RunResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = slurp(path("stdout"));
    r.err = slurp(path("stderr"));
    return r;
  }

  // A smooth, deterministic cache (like real K/V: per-channel offsets plus small variation).
  std::string make_cache(const std::string& name, DType dtype, KVShape shape) const {
    auto kv = KVCache::allocate(dtype, shape);
    EXPECT_TRUE(kv.ok());
    const KVView v = kv->view();
    for (uint32_t l = 0; l < shape.layers; ++l)
      for (uint32_t k = 0; k < 2; ++k)
        for (uint32_t t = 0; t < shape.tokens; ++t)
          for (uint32_t h = 0; h < shape.kv_heads; ++h)
            for (uint32_t d = 0; d < shape.head_dim; ++d) {
              const float x = 0.3f * float(d % 5) - 0.5f * float(k) + 0.2f * std::sin(0.37f * float(t * 7 + h * 3 + d + l));
              detail::store_from_f32(v.element(l, k, t, h, d), uint8_t(dtype), x);
            }
    EXPECT_TRUE(save_kv(path(name), *kv).ok());
    return path(name);
  }

  // Expects the error contract: non-zero exit, one line on stderr naming the command.
  static void expect_error(const RunResult& r, const std::string& command, int code = -1) {
    EXPECT_NE(r.exit_code, 0);
    if (code >= 0) EXPECT_EQ(r.exit_code, code);
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_EQ(r.err.rfind("kvcodec " + command + ": error: ", 0), 0u) << r.err;
  }

  fs::path dir_;
};

constexpr KVShape kShape{2, 40, 2, 16};

TEST_F(CliTest, LosslessRoundTripIsBitExactInEveryDtype) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    SCOPED_TRACE(dtype_name(t));
    const std::string in = make_cache("in.safetensors", t, kShape);
    RunResult enc = run({"encode", in, "-o", path("a.kvc"), "--level", "0", "--chunk-tokens", "16"});
    ASSERT_EQ(enc.exit_code, 0) << enc.err;
    EXPECT_TRUE(enc.err.empty());
    RunResult dec = run({"decode", path("a.kvc"), "-o", path("out.safetensors")});
    ASSERT_EQ(dec.exit_code, 0) << dec.err;
    auto a = load_kv(in), b = load_kv(path("out.safetensors"));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(b->dtype, t);
    EXPECT_EQ(b->shape, kShape);
    EXPECT_EQ(b->data, a->data);
  }
}

TEST_F(CliTest, LossyDecodeMatchesTheLibraryAndNpyOutput) {
  const std::string in = make_cache("in.npy", DType::kF16, kShape);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc"), "--level", "4", "--group-tokens", "4", "--table-groups", "2"})
                .exit_code,
            0);
  ASSERT_EQ(run({"decode", path("a.kvc"), "-o", path("out.safetensors"), "--threads", "2"}).exit_code, 0);
  ASSERT_EQ(run({"decode", path("a.kvc"), "-o", path("out.npy")}).exit_code, 0);

  auto frame = read_file(path("a.kvc"));
  ASSERT_TRUE(frame.ok());
  auto expect = KVCache::allocate(DType::kF16, kShape);
  ASSERT_TRUE(expect.ok());
  ASSERT_TRUE(decode_into(*frame, expect->view()).ok());
  for (const char* out : {"out.safetensors", "out.npy"}) {
    auto got = load_kv(path(out));
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    EXPECT_EQ(got->data, expect->data) << out;
  }
}

TEST_F(CliTest, EncodedBytesDoNotDependOnThreads) {
  const std::string in = make_cache("in.safetensors", DType::kBF16, kShape);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc"), "--threads", "1", "--chunk-tokens", "8"}).exit_code, 0);
  ASSERT_EQ(run({"encode", in, "-o", path("b.kvc"), "--threads", "3", "--chunk-tokens", "8"}).exit_code, 0);
  EXPECT_EQ(slurp(path("a.kvc")), slurp(path("b.kvc")));
}

TEST_F(CliTest, InspectJsonDescribesTheFrame) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc"), "--level", "3", "--chunk-tokens", "16", "--group-tokens", "2"})
                .exit_code,
            0);
  RunResult r = run({"inspect", path("a.kvc"), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  for (const char* key : {"format_version", "dtype", "layers", "kv_heads", "head_dim", "tokens", "chunks", "level",
                          "chunk_tokens", "group_tokens", "bits_per_element", "table_bytes", "model_bytes",
                          "head_bytes", "payload_bytes", "frame_bytes", "checksum_ok", "chunk_list"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["format_version"], kFormatVersion);
  EXPECT_EQ(j["dtype"], "f16");
  EXPECT_EQ(j["layers"], kShape.layers);
  EXPECT_EQ(j["kv_heads"], kShape.kv_heads);
  EXPECT_EQ(j["head_dim"], kShape.head_dim);
  EXPECT_EQ(j["tokens"], kShape.tokens);
  EXPECT_EQ(j["level"], 3);
  EXPECT_EQ(j["chunk_tokens"], 16);
  EXPECT_EQ(j["group_tokens"], 2);
  EXPECT_EQ(j["checksum_ok"], true);
  const uint64_t frame_bytes = fs::file_size(path("a.kvc"));
  EXPECT_EQ(j["frame_bytes"], frame_bytes);
  EXPECT_EQ(j["head_bytes"].get<uint64_t>() + j["payload_bytes"].get<uint64_t>(), frame_bytes);
  EXPECT_NEAR(j["bits_per_element"].get<double>(), 8.0 * double(frame_bytes) / double(kShape.elements()), 1e-9);

  ASSERT_EQ(j["chunks"], 3);  // 40 tokens in chunks of 16
  ASSERT_EQ(j["chunk_list"].size(), 3u);
  uint64_t payload = 0, tokens = 0;
  for (const auto& c : j["chunk_list"]) {
    EXPECT_EQ(c["token_begin"], tokens);
    tokens += c["tokens"].get<uint64_t>();
    payload += c["bytes"].get<uint64_t>();
    EXPECT_EQ(c["checksum"].get<std::string>().size(), 16u);
  }
  EXPECT_EQ(tokens, kShape.tokens);
  EXPECT_EQ(payload, j["payload_bytes"].get<uint64_t>());

  RunResult text = run({"inspect", path("a.kvc")});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("checksums     ok"), std::string::npos) << text.out;
}

TEST_F(CliTest, MissingFilesAreOneLineErrors) {
  expect_error(run({"encode", path("nope.safetensors"), "-o", path("a.kvc")}), "encode", 1);
  expect_error(run({"decode", path("nope.kvc"), "-o", path("a.safetensors")}), "decode", 1);
  expect_error(run({"inspect", path("nope.kvc")}), "inspect", 1);
  EXPECT_FALSE(fs::exists(path("a.kvc")));
}

TEST_F(CliTest, CorruptFramesAreOneLineErrors) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc"), "--chunk-tokens", "16"}).exit_code, 0);
  const std::string good = slurp(path("a.kvc"));

  std::ofstream(path("garbage.kvc"), std::ios::binary) << std::string(200, 'x');
  std::ofstream(path("short.kvc"), std::ios::binary) << good.substr(0, good.size() / 2);
  std::string flipped = good;
  flipped[flipped.size() - 5] ^= 0x40;  // inside the last chunk body
  std::ofstream(path("flipped.kvc"), std::ios::binary) << flipped;

  for (const char* bad : {"garbage.kvc", "short.kvc", "flipped.kvc"}) {
    SCOPED_TRACE(bad);
    expect_error(run({"decode", path(bad), "-o", path("out.safetensors")}), "decode", 1);
    EXPECT_FALSE(fs::exists(path("out.safetensors")));
  }
  expect_error(run({"inspect", path("garbage.kvc")}), "inspect", 1);
  // A frame whose head parses is still described, then the checksum failure is reported.
  for (const char* bad : {"short.kvc", "flipped.kvc"}) {
    SCOPED_TRACE(bad);
    RunResult r = run({"inspect", path(bad), "--json"});
    expect_error(r, "inspect", 1);
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out;
    EXPECT_EQ(j["checksum_ok"], false);
  }
}

TEST_F(CliTest, BadOptionsAreUsageErrors) {
  const std::string in = make_cache("in.safetensors", DType::kF32, kShape);
  const std::vector<std::vector<std::string>> cases = {
      {"encode", in, "-o", path("a.kvc"), "--level", "12"},
      {"encode", in, "-o", path("a.kvc"), "--level", "four"},
      {"encode", in, "-o", path("a.kvc"), "--chunk-tokens", "0"},
      {"encode", in, "-o", path("a.kvc"), "--group-tokens", "-3"},
      {"encode", in, "-o", path("a.kvc"), "--table-groups", "17"},
      {"encode", in, "-o", path("a.kvc"), "--bogus"},
      {"encode", in},
      {"encode", in, "extra", "-o", path("a.kvc")},
      {"encode", "-o", path("a.kvc")},
      {"decode", path("a.kvc")},
      {"decode", path("a.kvc"), "-o", path("b.safetensors"), "--threads", "-1"},
      {"inspect", path("a.kvc"), "--jsn"},
      {"inspect"},
  };
  for (const auto& args : cases) {
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    SCOPED_TRACE(joined);
    expect_error(run(args), args[0], 2);
  }
  EXPECT_FALSE(fs::exists(path("a.kvc")));
}

TEST_F(CliTest, UnsupportedOutputsAreOneLineErrors) {
  const std::string in = make_cache("in.safetensors", DType::kBF16, kShape);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc")}).exit_code, 0);
  expect_error(run({"decode", path("a.kvc"), "-o", path("out.npy")}), "decode", 1);  // npy has no bf16
  expect_error(run({"decode", path("a.kvc"), "-o", path("out.bin")}), "decode", 1);
  expect_error(run({"encode", in, "-o", path("no/such/dir/a.kvc")}), "encode", 1);
}

}  // namespace
}  // namespace kvcodec
