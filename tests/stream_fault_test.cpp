// Faults while streaming (stream.hpp): every one is caught, handled (retry, reconnect, another
// level, text) or reported, the result is exact for what was delivered, and nothing hangs.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "kvcodec/codec.hpp"
#include "kvcodec/stream.hpp"
#include "stream_test_util.hpp"

namespace kvcodec {
namespace {

using test::make_kv;

constexpr uint32_t kChunkTokens = 50;
const KVShape kShape{2, 200, 2, 16};
const std::vector<int> kLevels = {2, 5};

struct Fixture {
  KVCache kv = make_kv(kShape, DType::kF16, 5);
  std::shared_ptr<Store> store;
  Manifest manifest;
  std::unique_ptr<Server> server;

  explicit Fixture(std::shared_ptr<Store> s, bool with_text = true) : store(std::move(s)) {
    PutOptions po;
    po.levels = kLevels;
    po.chunk_tokens = kChunkTokens;
    po.measure = false;
    if (with_text)
      for (uint32_t t = 0; t < kShape.tokens; ++t) po.text_tokens.push_back(int32_t(t));
    auto m = put_context(*store, "ctx", kv.view(), po);
    EXPECT_TRUE(m.ok()) << m.status().to_string();
    if (m.ok()) manifest = *m;
    auto srv = Server::start(store, ServerOptions{});
    EXPECT_TRUE(srv.ok());
    server = std::move(*srv);
  }

  FetchOptions options(int option) const {
    FetchOptions fo;
    fo.port = server->port();
    fo.id = "ctx";
    fo.controller.policy = Policy::kFixed;
    fo.controller.plan = {option};
    fo.controller.slo_s = 10;
    fo.controller.cost.prefill_tokens_per_s = 1e6;
    fo.io_timeout_ms = 400;
    fo.connect_timeout_ms = 400;
    return fo;
  }

  RecomputeFn copy_from_original() const { return test::copy_recompute(kv); }
  KVCache local_decode(int level) const { return test::local_decode(kv, level, kChunkTokens); }

  // Each chunk equals the local decode of the level it was delivered at (the original for text).
  void expect_exact(const KVCache& got, const FetchReport& r) const {
    ASSERT_EQ(r.chunks.size(), manifest.num_chunks());
    test::expect_chunks_exact(kv, kChunkTokens, got, r);
  }
};

std::shared_ptr<Store> mem_store() { return open_store("mem:").value(); }

bool has_failure(const FetchReport& r, StatusCode code, const std::string& action) {
  for (const auto& f : r.failures)
    if (f.status.code() == code && f.action == action) return true;
  return false;
}

TEST(StreamFaults, CorruptChunkOnTheWireIsCaughtAndRetried) {
  Fixture fx(mem_store());
  fx.server->inject({.corrupt_chunks = 2});
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fx.options(1), &out, &r);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(has_failure(r, StatusCode::kChecksumMismatch, "retry")) << r.to_json();
  EXPECT_EQ(out.data, fx.local_decode(kLevels[1]).data);
}

TEST(StreamFaults, CorruptAfterTheLastAttemptFallsBackToAnotherLevel) {
  Fixture fx(mem_store());
  fx.server->inject({.corrupt_chunks = 1});  // chunk 0 at level 5, its only attempt
  FetchOptions fo = fx.options(1);
  fo.attempts_per_level = 1;
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fo, &out, &r);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(has_failure(r, StatusCode::kChecksumMismatch, "level 2")) << r.to_json();
  EXPECT_EQ(r.chunks[0].level, 2);
  EXPECT_TRUE(r.chunks[0].fallback);
  fx.expect_exact(out, r);
}

TEST(StreamFaults, ConnectionDroppedMidChunkReconnects) {
  Fixture fx(mem_store());
  fx.server->inject({.drop_mid_chunk = 1});
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fx.options(0), &out, &r);
  ASSERT_TRUE(s.ok()) << s.to_string();
  bool reconnected = false;
  for (const auto& f : r.failures) reconnected |= f.action == "reconnect";
  EXPECT_TRUE(reconnected) << r.to_json();
  EXPECT_EQ(out.data, fx.local_decode(kLevels[0]).data);
  EXPECT_GE(fx.server->stats().connections, 2u);
}

TEST(StreamFaults, RepeatedDropsEndTheFetchWithAnError) {
  Fixture fx(mem_store());
  fx.server->inject({.drop_mid_chunk = 100});
  FetchOptions fo = fx.options(0);
  fo.max_reconnects = 2;
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fo, &out, &r);
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(r.complete);
  EXPECT_FALSE(r.error.empty());
  ASSERT_FALSE(r.failures.empty());
  EXPECT_EQ(r.failures.back().action, "abort");
}

TEST(StreamFaults, StalledServerTimesOutAndTheFetchCompletes) {
  Fixture fx(mem_store());
  fx.server->inject({.stall_mid_chunk = 1, .stall_ms = 1500});
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fx.options(1), &out, &r);  // io timeout 400 ms
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(has_failure(r, StatusCode::kTimeout, "reconnect")) << r.to_json();
  EXPECT_EQ(out.data, fx.local_decode(kLevels[1]).data);
}

TEST(StreamFaults, ValueMissingOrCorruptInTheStoreUsesAnotherLevel) {
  Fixture fx(mem_store());
  ASSERT_TRUE(fx.store->remove(chunk_key("ctx", 5, 1)).ok());
  auto body = *fx.store->get(chunk_key("ctx", 5, 3));
  body[0] ^= 1;
  ASSERT_TRUE(fx.store->put(chunk_key("ctx", 5, 3), body).ok());
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fx.options(1), &out, &r);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(has_failure(r, StatusCode::kNotFound, "level 2")) << r.to_json();
  EXPECT_TRUE(has_failure(r, StatusCode::kChecksumMismatch, "level 2")) << r.to_json();
  EXPECT_EQ(r.chunks[1].level, 2);
  EXPECT_EQ(r.chunks[3].level, 2);
  EXPECT_EQ(r.chunks[0].level, 5);
  fx.expect_exact(out, r);
}

TEST(StreamFaults, ChunkMissingAtEveryLevelIsRecomputedOrReported) {
  Fixture fx(mem_store());
  for (int level : kLevels) ASSERT_TRUE(fx.store->remove(chunk_key("ctx", level, 2)).ok());
  {
    FetchOptions fo = fx.options(0);
    fo.recompute = fx.copy_from_original();
    KVCache out;
    FetchReport r;
    Status s = fetch_context(fo, &out, &r);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ(r.chunks[2].via, "text");
    EXPECT_TRUE(has_failure(r, StatusCode::kNotFound, "text"));
    fx.expect_exact(out, r);
  }
  {  // No recompute available: a clear error, never a silent hole.
    KVCache out;
    FetchReport r;
    Status s = fetch_context(fx.options(0), &out, &r);
    EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.to_string();
    EXPECT_FALSE(r.complete);
    EXPECT_NE(r.error.find("chunk 2"), std::string::npos) << r.error;
  }
}

// The server's Redis goes away: every chunk request then fails with kUnavailable (fast: the
// store's connect timeout bounds each try). The server still answers the manifest from the copy
// it served before, so the client retries, tries the other level and recomputes every chunk
// from text; without text it reports the outage as an error. A server that never saw the
// manifest reports the outage on the manifest itself.
TEST(StreamFaults, RedisOutageBehindTheServer) {
  test::RedisProcess redis;
  ASSERT_TRUE(redis.wait_ready());
  StoreOptions so;
  so.connect_timeout_ms = 200;
  so.command_timeout_ms = 200;
  auto s = open_store(redis.url(), so);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  Fixture fx(std::shared_ptr<Store>(std::move(*s)));
  {
    KVCache out;
    FetchReport r;
    ASSERT_TRUE(fetch_context(fx.options(1), &out, &r).ok());  // healthy: the server has the manifest
  }
  redis.kill();
  {
    FetchOptions fo = fx.options(1);
    fo.recompute = fx.copy_from_original();
    KVCache out;
    FetchReport r;
    Status st = fetch_context(fo, &out, &r);
    ASSERT_TRUE(st.ok()) << st.to_string() << "\n" << r.to_json();
    EXPECT_EQ(r.text_chunks, fx.manifest.num_chunks());
    EXPECT_TRUE(has_failure(r, StatusCode::kUnavailable, "retry")) << r.to_json();
    EXPECT_TRUE(has_failure(r, StatusCode::kUnavailable, "level 2")) << r.to_json();
    EXPECT_TRUE(has_failure(r, StatusCode::kUnavailable, "text")) << r.to_json();
    fx.expect_exact(out, r);
  }
  {
    KVCache out;
    FetchReport r;
    Status st = fetch_context(fx.options(1), &out, &r);
    EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.to_string();
    EXPECT_FALSE(r.complete);
    EXPECT_NE(r.error.find("redis"), std::string::npos) << r.error;
  }
  {
    auto fresh = Server::start(fx.store, ServerOptions{});
    ASSERT_TRUE(fresh.ok());
    FetchOptions fo = fx.options(1);
    fo.port = (*fresh)->port();
    KVCache out;
    FetchReport r;
    Status st = fetch_context(fo, &out, &r);
    EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.to_string();
    EXPECT_FALSE(r.failures.empty());
  }
}

}  // namespace
}  // namespace kvcodec
