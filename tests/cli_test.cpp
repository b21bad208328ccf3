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
#include "cli_test_util.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

namespace fs = std::filesystem;

using test::CliTest;
using test::count_lines;
using test::RunResult;
using test::slurp;

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

// Issue 13 item 4: every command's options are parsed by CLI11 (tools/kvcodec/cli.hpp) under one
// contract: --help prints the usage on stdout and exits 0; an unknown option, a malformed number,
// an option without its value and a value out of range are each one line on stderr that names
// the option, and exit code 2.
TEST_F(CliTest, EveryCommandHasHelp) {
  for (const std::string cmd : {"encode", "decode", "inspect", "bench", "kv-dump", "eval", "put", "serve", "fetch",
                                "loadgen", "store", "sweep", "demo"}) {
    SCOPED_TRACE(cmd);
    for (const char* help : {"--help", "-h"}) {
      RunResult r = run({cmd, help});
      EXPECT_EQ(r.exit_code, 0);
      EXPECT_TRUE(r.err.empty()) << r.err;
      EXPECT_EQ(r.out.rfind("usage: kvcodec " + cmd, 0), 0u) << r.out;
    }
  }
}

TEST_F(CliTest, UsageErrorsNameTheOption) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape), out = path("a.kvc");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      // unknown options (also after '=')
      {{"encode", in, "-o", out, "--frobnicate"}, "unknown option '--frobnicate'"},
      {{"encode", in, "-o", out, "--frobnicate=3"}, "unknown option '--frobnicate'"},
      {{"decode", out, "-o", path("b.npy"), "-q"}, "unknown option '-q'"},
      // malformed numbers: trailing junk, hexadecimal, overflow, a word
      {{"decode", out, "-o", path("b.npy"), "--threads", "2x"}, "--threads expects an integer, got '2x'"},
      {{"encode", in, "-o", out, "--level", "0x3"}, "--level expects an integer, got '0x3'"},
      {{"encode", in, "-o", out, "--chunk-tokens", "99999999999999999999"}, "--chunk-tokens expects an integer"},
      {{"encode", in, "-o", out, "--level", "four"}, "--level expects an integer, got 'four'"},
      // an option that ends the command line
      {{"encode", in, "-o"}, "option --output needs a value"},
      {{"encode", in, "-o", out, "--level"}, "option --level needs a value"},
      {{"decode", out, "-o", path("b.npy"), "--max-decoded-bytes"}, "option --max-decoded-bytes needs a value"},
      // out of range
      {{"encode", in, "-o", out, "--level", "10"}, "--level must be in 0..9, got 10"},
      {{"encode", in, "-o", out, "--level", "-1"}, "--level must be in 0..9, got -1"},
      {{"encode", in, "-o", out, "--table-groups", "17"}, "--table-groups must be in 1..16, got 17"},
      {{"decode", out, "-o", path("b.npy"), "--max-decoded-bytes", "-5"}, "--max-decoded-bytes must be >= 0"},
      // positionals
      {{"inspect", out, "extra"}, "unexpected argument 'extra'"},
      {{"inspect"}, "missing IN.kvc"},
      // the streaming commands (checked before any store is opened or server contacted)
      {{"put", "--store", "mem:", "--id", "x", in, "--levels", "2,x"}, "--levels expects a comma-separated list"},
      {{"put", "--store", "mem:", "--id", "x", in, "--levels", "2,10"}, "--levels must be in 0..9, got 10"},
      {{"put", "--store", "mem:", "--id", "x", in, "--ttl", "0"}, "--ttl must be in 1..4294967295, got 0"},
      {{"put", "--store", "mem:", in, "--id"}, "option --id needs a value"},
      {{"serve", "--store", "file:" + path("s"), "--port", "70000"}, "--port must be in 0..65535, got 70000"},
      {{"serve", "--store", "file:" + path("s"), "--port", "1", "--rtt-ms", "1ms"}, "--rtt-ms expects a number"},
      {{"serve", "--store", "file:" + path("s"), "--port"}, "option --port needs a value"},
      {{"fetch", "--server", "127.0.0.1:1", "--id", "x", "-o", path("o.npy"), "--slo-ms", "fast"},
       "--slo-ms expects a number, got 'fast'"},
      {{"fetch", "--server", "127.0.0.1:1", "--id", "x", "-o", path("o.npy"), "--timeout-ms", "0"},
       "--timeout-ms must be in 1.."},
      {{"fetch", "--server", "127.0.0.1:1", "--id", "x", "-o", path("o.npy"), "--bogus", "1"}, "unknown option '--bogus'"},
      // the measuring commands
      {{"bench", "--levels", "0,12"}, "--levels must be in 0..9, got 12"},
      {{"bench", "--levels", "0,,4"}, "--levels expects a comma-separated list of numbers"},
      {{"bench", "--reps", "0"}, "--reps must be in 1..1000000, got 0"},
      {{"bench", "--tokens"}, "option --tokens needs a value"},
      {{"kv-dump", "--synthetic", "llama3-8b", "--tokens", "1e3x", "-o", out}, "--tokens expects an integer, got '1e3x'"},
      {{"kv-dump", "--fit-stats", in, "--rope-theta", "ten"}, "--rope-theta expects a number, got 'ten'"},
      {{"eval", "--model", "m.bin", "--text", "t.txt", "--json", out, "--contexts", "0"},
       "--contexts must be in 1..100000, got 0"},
      {{"loadgen", "--store", "mem:", "--put", in, "--clients", "1,300"}, "--clients must be in 1..256, got 300"},
      {{"loadgen", "--store", "mem:", "--put", in, "--seconds", "soon"}, "--seconds expects a number, got 'soon'"},
      {{"loadgen", "--store", "mem:", "--put", in, "--levels", "4.5"}, "--levels expects integers"},
      // sweep and demo
      {{"sweep", "--json", out, "--svg", out, "--levels", "2,10"}, "--levels must be in 0..9, got 10"},
      {{"sweep", "--json", out, "--svg", out, "--rtt-ms", "1,x"}, "--rtt-ms expects a comma-separated list"},
      {{"sweep", "--json", out, "--svg", out, "--chunk-tokens", "9000"}, "--chunk-tokens must be in 1..8192, got 9000"},
      {{"sweep", "--json", out, "--svg", out, "--slo-ms"}, "option --slo-ms needs a value"},
      {{"demo", "--out", path("d"), "--levels", "11"}, "--levels must be in 0..9, got 11"},
      {{"demo", "--out", path("d"), "--tokens", "0"}, "--tokens must be >= 1, got 0"},
      {{"demo", "--out", path("d"), "--low-gbps", "fast"}, "--low-gbps expects a number, got 'fast'"},
      {{"demo", "--out", path("d"), "--verbose"}, "unknown option '--verbose'"},
  };
  for (const auto& [args, message] : cases) {
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    SCOPED_TRACE(joined);
    RunResult r = run(args);
    expect_error(r, args[0], 2);
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  EXPECT_FALSE(fs::exists(out));
  // `store ls` / `store rm` name their subcommand.
  RunResult r = run({"store", "ls", "--store"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "kvcodec store ls: error: option --store needs a value\n");
  r = run({"store", "rm", "--store", "file:" + path("s"), "--id", "x", "--force"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "kvcodec store rm: error: unknown option '--force' (see --help)\n");
}

TEST_F(CliTest, AnOptionGivenTwiceKeepsItsLastValue) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc"), "--level", "12", "--level=3", "--output", path("b.kvc")}).exit_code,
            0);
  EXPECT_FALSE(fs::exists(path("a.kvc")));
  RunResult r = run({"inspect", path("b.kvc"), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["level"], 3);
}

// Issue 11, items 7-9: an expansion limit on decode, bytes after the frame, a truncated frame
// described without negative sizes, and rates and times no link has.
TEST_F(CliTest, HostileInputsAreRefused) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc"), "--chunk-tokens", "16"}).exit_code, 0);
  const std::string good = slurp(path("a.kvc"));
  const uint64_t decoded = kShape.elements() * 2;

  // --max-decoded-bytes: refused before allocating (kResourceExhausted), accepted at the size.
  RunResult r = run({"decode", path("a.kvc"), "-o", path("o.safetensors"), "--max-decoded-bytes",
                     std::to_string(decoded - 1)});
  expect_error(r, "decode", 1);
  EXPECT_NE(r.err.find("resource_exhausted"), std::string::npos) << r.err;
  EXPECT_EQ(run({"decode", path("a.kvc"), "-o", path("o.safetensors"), "--max-decoded-bytes", std::to_string(decoded)})
                .exit_code,
            0);
  expect_error(run({"decode", path("a.kvc"), "-o", path("o.safetensors"), "--max-decoded-bytes", "-1"}), "decode", 2);

  // Bytes after frame_bytes: corrupt (docs/format.md 6), for decode and inspect alike.
  std::ofstream(path("tail.kvc"), std::ios::binary) << good << "junk";
  expect_error(run({"decode", path("tail.kvc"), "-o", path("t.safetensors")}), "decode", 1);
  r = run({"inspect", path("tail.kvc")});
  expect_error(r, "inspect", 1);
  EXPECT_NE(r.out.find("4 bytes after the frame"), std::string::npos) << r.out;

  // A truncated frame: how much is missing, never a negative count "beyond the frame".
  std::ofstream(path("short.kvc"), std::ios::binary) << good.substr(0, good.size() - 560);
  r = run({"inspect", path("short.kvc")});
  expect_error(r, "inspect", 1);
  EXPECT_EQ(r.out.find("-560"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("truncated: 560 bytes"), std::string::npos) << r.out;

  // Rates and times: non-positive, tiny (1e-300 behaved as an unlimited link), denormal,
  // non-finite. The checks run before any store is opened or link simulated.
  for (const char* gbps : {"0", "-1", "1e-300", "4e-320", "inf", "nan", "1e300"}) {
    SCOPED_TRACE(gbps);
    expect_error(run({"serve", "--store", "file:" + path("store"), "--port", "0", "--bandwidth-gbps", gbps}), "serve", 2);
    expect_error(run({"sweep", "--bandwidth-gbps", gbps, "--json", path("s.json"), "--svg", path("s.svg")}), "sweep",
                 2);
  }
  for (const char* ms : {"-1", "1e-320", "nan", "inf", "1e9"}) {
    SCOPED_TRACE(ms);
    expect_error(run({"serve", "--store", "file:" + path("store"), "--port", "0", "--rtt-ms", ms}), "serve", 2);
  }
  std::ofstream(path("tiny.trace"), std::ios::binary) << "0 10\n0.5 1e-300\n";
  r = run({"serve", "--store", "file:" + path("store"), "--port", "0", "--trace", path("tiny.trace")});
  expect_error(r, "serve", 1);
  EXPECT_NE(r.err.find("trace line 2"), std::string::npos) << r.err;
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
