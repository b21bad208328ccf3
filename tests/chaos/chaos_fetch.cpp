// The client side of the chaos run (scripts/chaos.sh, issue 11):
//   kvcodec_chaos put STORE_URI                     stores the chaos context (levels 2, 5, 8,
//                                                   with text) and exits
//   kvcodec_chaos fetch STORE_URI HOST:PORT N [SERVER_PID] [JSON]
//                                                   N fetches of it through HOST:PORT
// The fetch mode first decodes every level from the store (the exact decodes), then fetches N
// times with the library's client through the fault-injecting proxy in front of `kvcodec serve`,
// and classifies every fetch:
//   exact      OK, every chunk delivered at a level, each equal to that level's exact decode
//   text       OK, some chunks recomputed from text (here: the original rows, as a model's
//              prefill gives them), every chunk equal to its level's decode or the original
//   reported   failed, with the error and the failure records in the report
//   WRONG      OK but some chunk differs from what its source must give  -> exit 1
//   UNREPORTED failed without a failure record, or OK with a chunk missing -> exit 1
// It also counts the failure records by action and status code, and samples the server's RSS
// (/proc/SERVER_PID/status) every 200 ms. The summary is printed and written to JSON.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "fuzz/stream_fixture.hpp"
#include "kvcodec/stream.hpp"

namespace {

using namespace kvcodec;

constexpr const char* kId = "chaos";

PutOptions chaos_put_options(uint32_t tokens) {
  PutOptions po;
  po.levels = {2, 5, 8};
  po.chunk_tokens = 64;
  for (uint32_t t = 0; t < tokens; ++t) po.text_tokens.push_back(int32_t(1 + t % 500));
  return po;
}

const KVShape kShape{4, 512, 2, 64};

uint64_t rss_kb(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (f >> key) {
    if (key == "VmRSS:") {
      uint64_t kb = 0;
      f >> kb;
      return kb;
    }
    std::getline(f, key);
  }
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: kvcodec_chaos put STORE_URI\n"
               "       kvcodec_chaos fetch STORE_URI HOST:PORT N [SERVER_PID] [JSON]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string mode = argv[1];
  auto store = open_store(argv[2]);
  fuzz::fixture_check(store.status(), "open store");
  KVCache original = fuzz::fixture_cache(DType::kF16, kShape);
  if (mode == "put") {
    auto m = put_context(**store, kId, original.view(), chaos_put_options(kShape.tokens));
    fuzz::fixture_check(m.status(), "put_context");
    std::printf("chaos: put '%s' (%u chunks, levels 2 5 8)\n", kId, m->num_chunks());
    return 0;
  }
  if (mode != "fetch" || argc < 5) return usage();
  // The exact decodes, from what the store holds (the server serves the same bytes).
  auto manifest = get_manifest(**store, kId);
  fuzz::fixture_check(manifest.status(), "get_manifest");
  std::map<int, KVCache> exact;
  for (const auto& l : manifest->levels) {
    auto head = get_head(**store, kId, *manifest, l.level);
    fuzz::fixture_check(head.status(), "get_head");
    auto dst = KVCache::allocate(DType::kF16, kShape);
    fuzz::fixture_check(dst.status(), "allocate");
    for (uint32_t c = 0; c < manifest->num_chunks(); ++c) {
      auto body = get_chunk(**store, kId, *manifest, l.level, c);
      fuzz::fixture_check(body.status(), "get_chunk");
      fuzz::fixture_check(decode_chunk_into(*head, c, *body, dst->view()), "decode");
    }
    exact.emplace(l.level, std::move(*dst));
  }
  store->reset();

  const std::string server = argv[3];
  const int n = std::atoi(argv[4]);
  const int server_pid = argc > 5 ? std::atoi(argv[5]) : 0;
  std::atomic<bool> done{false};
  std::atomic<uint64_t> rss_first{0}, rss_peak{0}, rss_last{0};
  std::thread sampler([&] {
    while (!done && server_pid > 0) {
      const uint64_t kb = rss_kb(server_pid);
      if (kb) {
        if (!rss_first) rss_first = kb;
        rss_peak = std::max<uint64_t>(rss_peak, kb);
        rss_last = kb;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });

  std::map<std::string, int> outcomes, actions, codes;
  int chunks_text = 0, chunks_level = 0, wrong = 0, unreported = 0, errors_shown = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    FetchOptions o;
    o.host = server.substr(0, server.rfind(':'));
    o.port = uint16_t(std::atoi(server.c_str() + server.rfind(':') + 1));
    o.id = kId;
    o.io_timeout_ms = 1000;
    o.connect_timeout_ms = 1000;
    o.max_reconnects = 4;
    o.controller.objective = i % 2 ? Objective::kMinTtft : Objective::kBestQualityWithinSlo;
    // TEXT is slow (3 s a chunk, over the SLO): chosen when the link or the store fails.
    o.controller.cost.prefill_tokens_per_s = 20;
    KVCache out;
    o.recompute = [&](uint32_t, uint32_t begin, std::span<const int32_t> tokens, const KVView&) {
      fuzz::copy_token_rows(original, out, begin, begin + uint32_t(tokens.size()));
      return Status::Ok();
    };
    FetchReport r;
    const Status s = fetch_context(o, &out, &r);
    for (const auto& f : r.failures) {
      ++actions[f.action];
      ++codes[std::string(status_code_name(f.status.code()))];
    }
    std::string outcome;
    if (!s.ok()) {
      outcome = r.failures.empty() || r.error.empty() ? "UNREPORTED" : "reported";
    } else if (r.chunks.size() != manifest->num_chunks() || out.shape != kShape) {
      outcome = "UNREPORTED";
    } else {
      bool text = false, ok = true;
      for (const ChunkReport& c : r.chunks) {
        const uint32_t begin = c.chunk * manifest->chunk_tokens;
        const uint32_t end = std::min(begin + manifest->chunk_tokens, kShape.tokens);
        const KVCache& want = c.level < 0 ? original : exact.at(c.level);
        ok = ok && fuzz::token_rows_equal(out, want, begin, end);
        text = text || c.level < 0;
        ++(c.level < 0 ? chunks_text : chunks_level);
      }
      outcome = !ok ? "WRONG" : text ? "text" : "exact";
    }
    if (outcome == "WRONG") ++wrong;
    if (outcome == "UNREPORTED") ++unreported;
    if (outcome == "WRONG" || outcome == "UNREPORTED" || (outcome == "reported" && ++errors_shown <= 5))
      std::fprintf(stderr, "chaos: fetch %d: %s: %s\n", i, outcome.c_str(), s.to_string().c_str());
    ++outcomes[outcome];
    if ((i + 1) % 10 == 0) std::printf("chaos: %d fetches\n", i + 1), std::fflush(stdout);
  }
  done = true;
  sampler.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  nlohmann::json j;
  j["fetches"] = n;
  j["seconds"] = secs;
  j["outcomes"] = outcomes;
  j["failure_actions"] = actions;
  j["failure_codes"] = codes;
  j["chunks_at_a_level"] = chunks_level;
  j["chunks_from_text"] = chunks_text;
  j["server_rss_kb"] = {{"first", rss_first.load()}, {"peak", rss_peak.load()}, {"last", rss_last.load()}};
  std::printf("%s\n", j.dump(1).c_str());
  if (argc > 6) std::ofstream(argv[6]) << j.dump(1) << "\n";
  if (wrong || unreported) {
    std::fprintf(stderr, "chaos: error: %d wrong tensor(s), %d unreported failure(s)\n", wrong, unreported);
    return 1;
  }
  return 0;
}
