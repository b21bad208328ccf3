// Every command of the built `kvcodec` program run end to end, each checked on its OUTPUT (the
// values, JSON fields and files it writes), not only its exit code: demo (a short synthetic
// configuration), put / serve / fetch over loopback with the file and Redis stores, sweep,
// kv-dump (real and synthetic), bench, inspect --entropy and eval on a real model.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "bound_check.hpp"
#include "cli_test_util.hpp"
#include "kvcodec/model.hpp"
#include "kvcodec/synthetic.hpp"
#include "kvcodec/tokenizer.hpp"
#include "stream_test_util.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

using nlohmann::json;
using test::CliTest;
using test::RunResult;
using test::slurp;

json read_json(const std::string& path) {
  const std::string text = slurp(path);
  EXPECT_FALSE(text.empty()) << path;
  return text.empty() ? json() : json::parse(text, nullptr, /*allow_exceptions=*/false);
}

KVCache load(const std::string& path) {
  auto kv = load_kv(path);
  EXPECT_TRUE(kv.ok()) << path << ": " << kv.status().to_string();
  return kv.ok() ? std::move(*kv) : KVCache{};
}

class Commands : public CliTest {};

// ---- demo ---------------------------------------------------------------------------------------

TEST_F(Commands, DemoStreamsASyntheticContextAndReportsEveryStrategy) {
  const RunResult r = run({"demo", "--tokens", "256", "--chunk-tokens", "64", "--levels", "2,8", "--threads", "1",
                           "--store", "file:" + path("store"), "--out", path("out")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("SYNTHETIC"), std::string::npos) << "a synthetic context is labelled so";
  const json j = read_json(path("out/demo.json"));
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["context"]["tokens"], 256);
  EXPECT_EQ(j["context"]["synthetic"], true);
  EXPECT_EQ(j["context"]["layers"], 32);
  ASSERT_EQ(j["manifest"]["levels"].size(), 2u);
  EXPECT_EQ(j["manifest"]["levels"][0]["level"], 2);
  EXPECT_EQ(j["manifest"]["levels"][1]["level"], 8);
  EXPECT_LT(j["manifest"]["levels"][1]["bits_per_element"], j["manifest"]["levels"][0]["bits_per_element"]);
  EXPECT_EQ(j["fetch"]["complete"], true);
  ASSERT_EQ(j["fetch"]["chunks"].size(), 4u);
  for (const json& c : j["fetch"]["chunks"]) EXPECT_TRUE(c["level"] == 2 || c["level"] == 8 || c["level"] == -1) << c;
  // The oracle knows the trace and has the demo's objective (min-prefill: the least GPU prefill
  // whose TTFT meets the SLO, with levels within the quality floor only, then the lowest
  // distortion; the fastest plan when none meets it): when some simulated strategy within the
  // floor meets the SLO, the oracle does too, with no more prefill than any of them and, at equal
  // prefill, no more distortion; otherwise no strategy within the floor is faster.
  EXPECT_EQ(j["costs"]["objective"], "min-prefill");
  EXPECT_EQ(j["fetch"]["objective"], "min-prefill");
  std::map<std::string, json> sim;
  bool real_row = false;
  for (const json& s : j["strategies"]) {
    EXPECT_GT(s["ttft_ms"].get<double>(), 0) << s;
    EXPECT_GE(s["prefill_tokens"].get<uint64_t>(), 0u) << s;
    EXPECT_EQ(s["prefill_tokens"].get<uint64_t>() == 0, s["prefill_gpu_s"].get<double>() == 0) << s;
    if (s["source"] == "simulated") sim[s["strategy"]] = s;
    real_row |= s["source"] == "real TCP" && s["strategy"] == "kvcodec adaptive";
  }
  EXPECT_TRUE(real_row);
  // The real fetch's own plan, simulated: the same chunks recomputed as the real fetch.
  ASSERT_TRUE(sim.count("real fetch's plan"));
  for (const json& s : j["strategies"])
    if (s["source"] == "real TCP") EXPECT_EQ(sim["real fetch's plan"]["text_chunks"], s["text_chunks"]);
  ASSERT_TRUE(sim.count("oracle (knows the trace)"));
  const json oracle = sim["oracle (knows the trace)"];
  EXPECT_TRUE(oracle["within_quality_floor"].get<bool>()) << oracle;
  EXPECT_EQ(sim["text only (recompute all)"]["prefill_tokens"], 256);
  // The strategies over the stored levels (raw fp16 is not stored: the oracle cannot use it).
  const char* stored[] = {"kvcodec adaptive", "CacheGen equal-budget", "kvcodec L2 fixed", "kvcodec L8 fixed",
                          "text only (recompute all)"};
  bool any_met = false;
  for (const char* name : stored) {
    ASSERT_TRUE(sim.count(name)) << name;
    any_met |= sim[name]["slo_met"].get<bool>() && sim[name]["within_quality_floor"].get<bool>();
  }
  for (const char* s : stored) {
    ASSERT_TRUE(sim.count(s)) << s;
    const json& row = sim[s];
    if (!row["within_quality_floor"].get<bool>()) continue;
    if (!any_met) {
      EXPECT_LE(oracle["ttft_ms"].get<double>(), row["ttft_ms"].get<double>() * (1 + 1e-9)) << s;
      continue;
    }
    EXPECT_TRUE(oracle["slo_met"].get<bool>()) << oracle;
    if (!row["slo_met"].get<bool>()) continue;
    const double op = oracle["prefill_gpu_s"].get<double>(), rp = row["prefill_gpu_s"].get<double>();
    EXPECT_LE(op, rp * (1 + 1e-9) + 1e-12) << s << ": " << row << " vs oracle " << oracle;
    if (op >= rp * (1 - 1e-9))
      EXPECT_LE(oracle["rel_error"].get<double>(), row["rel_error"].get<double>() * (1 + 1e-9) + 1e-12)
          << s << ": " << row << " vs oracle " << oracle;
  }
  EXPECT_NE(slurp(path("out/demo.svg")).find("<svg"), std::string::npos);
}

TEST_F(Commands, ObjectivesAreChosenByName) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"demo", "--objective", "fastest"},
        std::vector<std::string>{"fetch", "--server", "127.0.0.1:1", "--id", "x", "-o", path("x.safetensors"),
                                 "--objective", "fastest"}}) {
    const std::string& cmd = args[0];
    const RunResult r = run(args);
    EXPECT_EQ(r.exit_code, 2) << cmd;
    EXPECT_NE(r.err.find("min-prefill, quality, ttft or min-prefill-unhedged"), std::string::npos) << cmd << ": " << r.err;
  }
}

// ---- put / serve / fetch ------------------------------------------------------------------------

// Stores a cache at levels 2 and 8, serves it over loopback, fetches it, and checks the fetched
// tensor chunk by chunk against the input with the bound of the level each chunk came at.
void put_serve_fetch(const CliTest& t, const std::string& store, const std::string& id) {
  constexpr KVShape kShape{2, 64, 2, 16};
  const std::string in = t.make_cache("in.safetensors", DType::kF16, kShape);
  const RunResult put = t.run({"put", "--store", store, "--id", id, in, "--levels", "2,8", "--chunk-tokens", "16",
                               "--threads", "1", "--json"});
  ASSERT_EQ(put.exit_code, 0) << put.err;
  const json m = json::parse(put.out.substr(put.out.find('{')), nullptr, false);
  ASSERT_TRUE(m.is_object()) << put.out;
  EXPECT_EQ(m["id"], id);
  EXPECT_EQ(m["tokens"], 64);
  EXPECT_EQ(m["chunks"], 4);
  ASSERT_EQ(m["levels"].size(), 2u);
  EXPECT_LT(m["levels"][1]["bits_per_element"], m["levels"][0]["bits_per_element"]);

  const pid_t server = t.start({"serve", "--store", store, "--port", "0"}, "serve");
  const std::string banner = t.wait_for_output("serve", "Ctrl-C");
  const size_t at = banner.find(" on 127.0.0.1:");
  if (at == std::string::npos) {
    CliTest::stop(server);
    FAIL() << "serve did not start: " << slurp(t.path("serve.err"));
  }
  const std::string port = std::to_string(std::stoi(banner.substr(at + 14)));
  const RunResult fetch = t.run({"fetch", "--server", "127.0.0.1:" + port, "--id", id, "-o",
                                 t.path("fetched.safetensors"), "--json", t.path("report.json"), "--quiet"});
  EXPECT_EQ(CliTest::stop(server), 0);
  EXPECT_NE(slurp(t.path("serve.out")).find("stopped: "), std::string::npos);
  ASSERT_EQ(fetch.exit_code, 0) << fetch.err;

  const json rep = read_json(t.path("report.json"));
  EXPECT_EQ(rep["complete"], true);
  ASSERT_EQ(rep["chunks"].size(), 4u);
  const KVCache input = load(in), fetched = load(t.path("fetched.safetensors"));
  ASSERT_EQ(fetched.dtype, input.dtype);
  ASSERT_TRUE(fetched.shape == input.shape);
  size_t lossy = 0;
  for (const json& c : rep["chunks"]) {
    const int level = c["level"], chunk = c["chunk"];
    ASSERT_TRUE(level == 2 || level == 8) << c;  // no text was stored: only KV
    const test::BoundReport b = test::check_against_steps(
        input, fetched, test::documented_max_steps(input, level, StepMode::kLayer), uint32_t(chunk * 16),
        uint32_t(chunk * 16 + 16));
    EXPECT_EQ(b.violations, 0u) << "chunk " << chunk << " at level " << level << ": " << b.first;
    lossy += b.exact < b.checked;
  }
  EXPECT_GT(lossy, 0u) << "every fetched value is exact: the levels were not lossy";
}

TEST_F(Commands, PutServeFetchWithAFileStore) { put_serve_fetch(*this, "file:" + path("store"), "ctx1"); }

TEST_F(Commands, PutServeFetchWithARedisStore) {
  KVCODEC_REQUIRE_REDIS(url);
  put_serve_fetch(*this, url, "commands-test-" + std::to_string(::getpid()));
}

// ---- sweep --------------------------------------------------------------------------------------

TEST_F(Commands, SweepSimulatesEveryStrategyAndTheOracleIsBest) {
  const RunResult r = run({"sweep", "--synthetic", "llama3-8b", "--tokens", "256", "--chunk-tokens", "64", "--levels",
                           "2,8", "--bandwidth-gbps", "1,100", "--rtt-ms", "1", "--decode-gbps", "100",
                           "--baseline-tokens", "64", "--json", path("s.json"), "--svg", path("s.svg")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("adaptive-ttft within 3% of oracle-ttft at"), std::string::npos);
  const json j = read_json(path("s.json"));
  std::map<std::string, json> options;
  for (const json& o : j["options"]) options[o["name"]] = o;
  for (const char* name : {"fp16", "kvcodec-L2", "kvcodec-L8", "int8", "cachegen-L1", "cachegen-L2", "cachegen-L3"})
    ASSERT_TRUE(options.count(name)) << name;
  EXPECT_EQ(options["kvcodec-L2"]["decode_gbps"], 100.0);
  EXPECT_LT(options["kvcodec-L8"]["bits_per_element"], options["kvcodec-L2"]["bits_per_element"]);
  EXPECT_GT(options["kvcodec-L8"]["rel_error"], options["kvcodec-L2"]["rel_error"]);
  EXPECT_GT(options["kvcodec-L2"]["rel_error"], 0.0);
  // Per point: recomputing 256 tokens at 20,000 tokens/s with attention doubling at 32768
  // positions; the oracle (TEXT and the stored levels) at least as fast as every strategy over
  // the same options.
  const double text_ms = 1e3 * (256 + 256.0 * 255 / 2 / 32768) / 20000;
  for (double gbps : {1.0, 100.0}) {
    std::map<std::string, double> ttft;
    for (const json& row : j["rows"])
      if (row["bandwidth_gbps"] == gbps) ttft[row["strategy"]] = row["ttft_ms"];
    EXPECT_NEAR(ttft["text-only"], text_ms, 1e-6) << gbps;
    ASSERT_TRUE(ttft.count("oracle-ttft")) << gbps;
    for (const char* s : {"text-only", "kvcodec-L2", "kvcodec-L8", "adaptive-ttft", "adaptive-quality",
                          "equal-budget", "oracle-quality"}) {
      ASSERT_TRUE(ttft.count(s)) << s;
      EXPECT_LE(ttft["oracle-ttft"], ttft[s] * (1 + 1e-9)) << s << " at " << gbps << " Gb/s";
    }
  }
  EXPECT_NE(slurp(path("s.svg")).find("<svg"), std::string::npos);
}

// ---- kv-dump ------------------------------------------------------------------------------------

TEST_F(Commands, KvDumpSyntheticIsTheLibrarysSyntheticCache) {
  const RunResult r = run({"kv-dump", "--synthetic", "llama3-8b", "--tokens", "8", "-o", path("syn.safetensors")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const KVCache got = load(path("syn.safetensors"));
  auto want = make_synthetic("llama3-8b", 8, DType::kF16, 1);
  ASSERT_TRUE(want.ok());
  EXPECT_TRUE(got.shape == (KVShape{32, 8, 8, 128}));
  EXPECT_TRUE(got.data == want->data);
}

TEST_F(Commands, KvDumpRealIsTheModelsCacheOfTheContext) {
  KVCODEC_REQUIRE_DATA("models/stories260K.bin");
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  KVCODEC_REQUIRE_DATA("text/tinystories_valid_sample.txt");
  const std::string model = test::data_path("models/stories260K.bin"), tok = test::data_path("models/tok512.bin"),
                    text = test::data_path("text/tinystories_valid_sample.txt");
  const RunResult r = run({"kv-dump", "--model", model, "--tokenizer", tok, "--text", text, "--offset", "1000",
                           "--tokens", "48", "--threads", "1", "-o", path("kv.safetensors")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const KVCache got = load(path("kv.safetensors"));
  // The same context prefilled here: the text from byte 1000, tokenized, BOS in front.
  auto m = Model::load(model);
  auto t = Tokenizer::open(tok);
  ASSERT_TRUE(m.ok() && t.ok());
  auto ids = context_tokens(*t, slurp(text), 1000, 48);
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  KVState st = m->new_state();
  ASSERT_TRUE(m->forward(*ids, st, nullptr).ok());
  auto want = st.to_cache(DType::kF16);
  ASSERT_TRUE(want.ok());
  EXPECT_TRUE(got.shape == (KVShape{5, 48, 4, 8}));
  EXPECT_EQ(got.dtype, DType::kF16);
  EXPECT_TRUE(got.data == want->data);
}

// ---- bench --------------------------------------------------------------------------------------

TEST_F(Commands, BenchTimesEveryLevelAndZstd) {
  const RunResult r = run({"bench", "--tokens", "64", "--levels", "0,8", "--reps", "1", "--threads", "1", "--json",
                           path("b.json")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = read_json(path("b.json"));
  EXPECT_EQ(j["shape"]["tokens"], 64);
  EXPECT_EQ(j["shape"]["layers"], 32);
  EXPECT_EQ(j["synthetic"], true);
  std::map<std::string, json> res;
  for (const json& x : j["results"]) {
    res[x["name"]] = x;
    EXPECT_GT(x["encode_gbps"].get<double>(), 0) << x;
    EXPECT_GT(x["decode_gbps"].get<double>(), 0) << x;
    // Per core, by CPU time: one thread cannot use more CPU time than wall time (to rounding).
    EXPECT_GE(x["encode_cpu_gbps"].get<double>(), 0.98 * x["encode_gbps"].get<double>()) << x;
    EXPECT_GE(x["decode_cpu_gbps"].get<double>(), 0.98 * x["decode_gbps"].get<double>()) << x;
  }
  ASSERT_TRUE(res.count("kvcodec-L0") && res.count("kvcodec-L8")) << j.dump();
  bool zstd = false;
  for (const auto& [name, x] : res) zstd |= name.rfind("zstd", 0) == 0;
  EXPECT_TRUE(zstd) << j.dump();
  const double l0 = res["kvcodec-L0"]["bits_per_element"], l8 = res["kvcodec-L8"]["bits_per_element"];
  EXPECT_GT(l0, 8.0);  // fp16 noise bits do not compress away losslessly
  EXPECT_LT(l0, 16.0);
  EXPECT_LT(l8, 0.5 * l0);
}

// ---- inspect --entropy --------------------------------------------------------------------------

TEST_F(Commands, InspectEntropyComparesThePayloadWithTheSymbolsEntropy) {
  constexpr KVShape kShape{2, 96, 2, 16};
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape);
  ASSERT_EQ(run({"encode", in, "-o", path("a.kvc"), "--level", "4", "--chunk-tokens", "32"}).exit_code, 0);
  const RunResult r = run({"inspect", path("a.kvc"), "--json", "--entropy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["checksum_ok"], true);
  EXPECT_EQ(j["chunk_list"].size(), 3u);
  const uint64_t frame_bytes = j["frame_bytes"];
  EXPECT_EQ(frame_bytes, std::filesystem::file_size(path("a.kvc")));
  EXPECT_NEAR(j["bits_per_element"].get<double>(), 8.0 * double(frame_bytes) / double(kShape.elements()), 1e-3);
  const json& e = j["entropy"];
  ASSERT_TRUE(e.is_object()) << r.out;
  EXPECT_EQ(e["symbols"], kShape.elements());  // one symbol per element at a lossy level
  EXPECT_LE(e["escapes"].get<uint64_t>(), e["symbols"].get<uint64_t>());
  // The coder's model costs at least the symbols' empirical entropy (Gibbs); the lane streams
  // (words and final states: all the rANS output) do not beat it; the percentages printed are
  // the sizes over that entropy.
  const double entropy = e["entropy_bits"], model = e["model_bits"];
  EXPECT_GT(entropy, 0);
  EXPECT_GE(model, entropy * (1 - 1e-9));
  EXPECT_LT(model, entropy * 1.05);
  const double words = 8.0 * e["word_bytes"].get<double>(), lanes = 8.0 * e["lane_bytes"].get<double>();
  EXPECT_NEAR(e["words_over_entropy_pct"].get<double>(), 100 * (words - entropy) / entropy, 0.01);
  EXPECT_NEAR(e["lanes_over_entropy_pct"].get<double>(), 100 * (lanes - entropy) / entropy, 0.01);
  EXPECT_GE(lanes, entropy);
  EXPECT_LT(lanes, 1.25 * entropy);
  // Text output says the same.
  const RunResult text = run({"inspect", path("a.kvc"), "--entropy"});
  ASSERT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("checksums     ok"), std::string::npos);
  EXPECT_NE(text.out.find("entropy "), std::string::npos);
}

// ---- eval ---------------------------------------------------------------------------------------

TEST_F(Commands, EvalRunsSeveralSchemesOnARealModel) {
  KVCODEC_REQUIRE_DATA("models/stories260K.bin");
  KVCODEC_REQUIRE_DATA("models/tok512.bin");
  KVCODEC_REQUIRE_DATA("text/tinystories_valid_sample.txt");
  const RunResult r = run({"eval", "--model", test::data_path("models/stories260K.bin"), "--tokenizer",
                           test::data_path("models/tok512.bin"), "--text",
                           test::data_path("text/tinystories_valid_sample.txt"), "--contexts", "2",
                           "--context-tokens", "256", "--continue-tokens", "32", "--schemes",
                           "fp16,int8,kivi:bits=2,kvcodec:levels=0/8", "--json", path("e.json"), "--svg",
                           path("e.svg")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = read_json(path("e.json"));
  EXPECT_EQ(j["contexts"], 2);
  EXPECT_EQ(j["shape"]["layers"], 5);
  std::map<std::string, json> rows;
  for (const json& row : j["rows"]) rows[row["scheme"].get<std::string>() + "/" + row["setting"].get<std::string>()] = row;
  auto find = [&](const std::string& scheme, const std::string& needle) -> json {
    for (const auto& [k, row] : rows)
      if (k.rfind(scheme + "/", 0) == 0 && k.find(needle) != std::string::npos) return row;
    ADD_FAILURE() << "no row " << scheme << " " << needle << " in " << j["rows"].dump();
    return json::object();
  };
  const json fp16 = find("fp16", ""), int8 = find("int8", ""), kivi = find("kivi", "2");
  const json l0 = find("kvcodec", "0"), l8 = find("kvcodec", "8");
  EXPECT_EQ(fp16["kl"], 0.0);
  const double elements = 5.0 * 2 * 256 * 32;  // stories260K: 5 layers, 4 KV heads x 8
  EXPECT_NEAR(fp16["bits_per_element"].get<double>(), 16 + 8.0 * 16 / elements, 1e-9);  // + a 16-byte header
  EXPECT_EQ(l0["kl"], 0.0) << "level 0 is lossless";
  EXPECT_EQ(l0["lossless"], true);
  EXPECT_GT(l8["kl"].get<double>(), 0.0);
  EXPECT_LT(l8["bits_per_element"].get<double>(), 0.3 * l0["bits_per_element"].get<double>());
  EXPECT_GT(int8["kl"].get<double>(), 0.0);
  EXPECT_NEAR(int8["bits_per_element"].get<double>(), 8.5, 0.5);
  EXPECT_GT(kivi["kl"].get<double>(), int8["kl"].get<double>());
  for (const json* row : {&int8, &kivi, &l8}) {
    EXPECT_GE((*row)["top1_agreement"].get<double>(), 0.0);
    EXPECT_LE((*row)["top1_agreement"].get<double>(), 1.0);
    EXPECT_GT((*row)["attn_rel_err"].get<double>(), 0.0);
  }
  EXPECT_FALSE(j["thresholds"].empty());
  EXPECT_NE(slurp(path("e.svg")).find("<svg"), std::string::npos);
}

}  // namespace
}  // namespace kvcodec
