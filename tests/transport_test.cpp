// Link emulation, server and pipelined client over loopback TCP (src/stream/include/kvcodec/stream.hpp).
#include "kvcodec/stream.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "kvcodec/codec.hpp"
#include "stream_test_util.hpp"

namespace kvcodec {
namespace {

using test::make_kv;

TEST(LinkEmulator, FollowsTheControllersTimingModel) {
  // 8 Gb/s = 1e9 bytes/s, rtt 10 ms: a response starts rtt/2 after its request, responses queue
  // FIFO on the link, and bytes are released to the socket rtt/2 after they leave the link.
  LinkEmulator link(LinkConfig{LinkTrace::constant(8.0), 0.010});
  auto a = link.schedule(0.0, 0.0, 1'000'000);
  EXPECT_DOUBLE_EQ(a.start_s, 0.005);
  EXPECT_NEAR(a.finish_s, 0.006, 1e-12);
  auto b = link.schedule(0.0, 0.0, 2'000'000);  // pipelined: waits for the link
  EXPECT_NEAR(b.start_s, 0.006, 1e-12);
  EXPECT_NEAR(b.finish_s, 0.008, 1e-12);
  EXPECT_NEAR(link.release_time(b, 0), 0.011, 1e-12);
  EXPECT_NEAR(link.release_time(b, 1'000'000), 0.012, 1e-12);
  auto c = link.schedule(1.0, 0.0, 10);  // idle link: starts at arrival + rtt/2
  EXPECT_DOUBLE_EQ(c.start_s, 1.005);
  auto late = link.schedule(2.0, 2.5, 10);  // the server needed until 2.5 s to produce it
  EXPECT_DOUBLE_EQ(late.start_s, 2.5);
  EXPECT_GE(link.slice_bytes(0), 4096u);

  // A drop in the trace slows the part of a response sent after it.
  auto trace = LinkTrace::parse("0 8\n0.001 0.8\n");
  ASSERT_TRUE(trace.ok());
  LinkEmulator drop(LinkConfig{*trace, 0.0});
  auto d = drop.schedule(0.0, 0.0, 2'000'000);  // 1e6 bytes in 1 ms, then 1e6 at 1e8 bytes/s
  EXPECT_NEAR(d.finish_s, 0.011, 1e-9);

  LinkEmulator unlimited(LinkConfig{std::nullopt, 0.002});
  auto u = unlimited.schedule(0.5, 0.0, 1u << 30);
  EXPECT_DOUBLE_EQ(u.finish_s, u.start_s);
  EXPECT_FALSE((LinkConfig{std::nullopt, -1.0}).validate().ok());
}

// A context stored at three levels with text, served from a mem: store.
class TransportTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kChunkTokens = 64;
  void SetUp() override {
    shape_ = {2, 300, 2, 16};
    kv_ = make_kv(shape_, DType::kF16, 11);
    auto s = open_store("mem:");
    ASSERT_TRUE(s.ok());
    store_ = std::shared_ptr<Store>(std::move(*s));
    PutOptions po;
    po.levels = levels_;
    po.chunk_tokens = kChunkTokens;
    for (uint32_t t = 0; t < shape_.tokens; ++t) po.text_tokens.push_back(int32_t(t));
    auto m = put_context(*store_, "ctx", kv_.view(), po);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    manifest_ = *m;
  }

  std::unique_ptr<Server> serve(LinkConfig link = {}) {
    ServerOptions so;
    so.link = std::move(link);
    auto server = Server::start(store_, so);
    EXPECT_TRUE(server.ok()) << server.status().to_string();
    return std::move(*server);
  }

  FetchOptions fetch_options(const Server& server) const {
    FetchOptions fo;
    fo.port = server.port();
    fo.id = "ctx";
    fo.controller.slo_s = 10;
    fo.io_timeout_ms = 3000;
    return fo;
  }

  // Recompute by copying the chunk's tokens from the original (stands in for prefill).
  RecomputeFn copy_from_original() {
    return [this](uint32_t, uint32_t begin, std::span<const int32_t> tokens, const KVView& dst) {
      copy_tokens(kv_, dst, begin, uint32_t(tokens.size()));
      return Status::Ok();
    };
  }

  static void copy_tokens(const KVCache& from, const KVView& to, uint32_t begin, uint32_t count) {
    const size_t es = dtype_size(from.dtype);
    const size_t row = from.shape.channels() * es;
    for (uint32_t l = 0; l < from.shape.layers; ++l)
      for (uint32_t k = 0; k < 2; ++k)
        for (uint32_t t = begin; t < begin + count; ++t)
          std::memcpy(to.element(l, k, t, 0, 0),
                      from.data.data() + ((size_t(l) * 2 + k) * from.shape.tokens + t) * row, row);
  }

  // The decode of `level`'s whole frame, encoded locally.
  KVCache local_decode(int level) const {
    EncodeOptions eo;
    eo.level = level;
    eo.chunk_tokens = kChunkTokens;
    std::vector<uint8_t> frame(max_encoded_size(shape_, DType::kF16, eo));
    auto n = encode_into(const_cast<KVCache&>(kv_).view(), eo, frame);
    EXPECT_TRUE(n.ok());
    frame.resize(*n);
    KVCache out = *KVCache::allocate(DType::kF16, shape_);
    EXPECT_TRUE(decode_into(frame, out.view()).ok());
    return out;
  }

  // Every chunk of `got` equals, bit for bit, the local decode of the level it came at (or the
  // original, for text chunks).
  void expect_exact(const KVCache& got, const FetchReport& r) const {
    ASSERT_EQ(r.chunks.size(), manifest_.num_chunks());
    std::map<int, KVCache> decoded;
    const size_t row = shape_.channels() * 2;
    for (const auto& c : r.chunks) {
      const KVCache* ref = &kv_;
      if (c.level >= 0) {
        if (!decoded.count(c.level)) decoded.emplace(c.level, local_decode(c.level));
        ref = &decoded.at(c.level);
      }
      for (uint32_t l = 0; l < shape_.layers; ++l)
        for (uint32_t k = 0; k < 2; ++k) {
          const size_t off = ((size_t(l) * 2 + k) * shape_.tokens + manifest_.chunk_token_begin(c.chunk)) * row;
          const size_t n = manifest_.chunk_token_count(c.chunk) * row;
          ASSERT_EQ(std::memcmp(got.data.data() + off, ref->data.data() + off, n), 0)
              << "chunk " << c.chunk << " via " << c.via << " layer " << l << " kv " << k;
        }
    }
  }

  KVShape shape_;
  KVCache kv_;
  std::shared_ptr<Store> store_;
  Manifest manifest_;
  const std::vector<int> levels_ = {0, 3, 7};
};

TEST_F(TransportTest, FixedLevelEqualsLocalDecodeBitForBit) {
  auto server = serve();
  for (int option = 0; option < 3; ++option) {
    FetchOptions fo = fetch_options(*server);
    fo.controller.policy = Policy::kFixed;
    fo.controller.plan = {option};
    KVCache out;
    FetchReport r;
    Status s = fetch_context(fo, &out, &r);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_TRUE(r.complete);
    EXPECT_TRUE(r.failures.empty());
    for (const auto& c : r.chunks) EXPECT_EQ(c.level, levels_[option]);
    EXPECT_EQ(out.data, local_decode(levels_[option]).data) << "level " << levels_[option];
  }
  if (::testing::Test::HasFailure()) return;
  // Lossless level: the original itself.
  FetchOptions fo = fetch_options(*server);
  fo.controller.policy = Policy::kFixed;
  fo.controller.plan = {0};
  KVCache out;
  FetchReport r;
  ASSERT_TRUE(fetch_context(fo, &out, &r).ok());
  EXPECT_EQ(out.data, kv_.data);
}

TEST_F(TransportTest, AdaptiveThroughAnEmulatedLinkIsExactPerChunk) {
  // Fast, then a link ~1000x slower. Whatever the controller decides on this real-time run
  // (KV at some levels, recompute, abandoned requests), every chunk must be exact.
  auto trace = LinkTrace::parse("0 0.5\n0.004 0.0005\n");
  ASSERT_TRUE(trace.ok());
  auto server = serve(LinkConfig{*trace, 0.002});
  FetchOptions fo = fetch_options(*server);
  fo.controller.slo_s = 0.1;
  fo.controller.estimator.prior_gbps = 0.5;
  fo.controller.cost.rtt_s = 0.002;
  fo.controller.cost.prefill_tokens_per_s = 4000;
  fo.recompute = copy_from_original();
  std::vector<uint32_t> ready_order;
  fo.observer.on_chunk_ready = [&](const ChunkReport& c) { ready_order.push_back(c.chunk); };
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fo, &out, &r);
  ASSERT_TRUE(s.ok()) << s.to_string() << "\n" << r.to_json();
  EXPECT_TRUE(r.complete);
  EXPECT_EQ(ready_order.size(), manifest_.num_chunks());
  expect_exact(out, r);
  for (const auto& c : r.chunks) {
    EXPECT_GE(c.ready_s, c.arrival_s);
    EXPECT_GE(c.arrival_s, c.request_s);
  }
  EXPECT_GT(r.bytes, 0u);
  EXPECT_NE(r.to_json().find("\"ttft_ms\""), std::string::npos);
}

TEST_F(TransportTest, TextChunksAreRecomputedInOrder) {
  auto server = serve();
  FetchOptions fo = fetch_options(*server);
  fo.controller.policy = Policy::kFixed;
  fo.controller.plan = {kTextOption, 1, kTextOption, 2, kTextOption};
  fo.controller.cost.prefill_tokens_per_s = 1e6;
  std::vector<uint32_t> recomputed;
  fo.recompute = [&](uint32_t chunk, uint32_t begin, std::span<const int32_t> tokens, const KVView& dst) {
    recomputed.push_back(chunk);
    EXPECT_EQ(tokens.size(), manifest_.chunk_token_count(chunk));
    EXPECT_EQ(tokens[0], int32_t(begin));  // the token ids put with the context
    copy_tokens(kv_, dst, begin, uint32_t(tokens.size()));
    return Status::Ok();
  };
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fo, &out, &r);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(recomputed, (std::vector<uint32_t>{0, 2, 4}));
  EXPECT_EQ(r.text_chunks, 3u);
  expect_exact(out, r);
}

TEST_F(TransportTest, UnknownContextAndNoServerAreClearErrors) {
  auto server = serve();
  FetchOptions fo = fetch_options(*server);
  fo.id = "nope";
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fo, &out, &r);
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.to_string();
  EXPECT_FALSE(r.complete);
  ASSERT_FALSE(r.failures.empty());
  EXPECT_FALSE(r.error.empty());

  fo.id = "ctx";
  fo.port = uint16_t(test::free_port());
  s = fetch_context(fo, &out, &r);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.to_string();
  EXPECT_FALSE(r.complete);
}

TEST_F(TransportTest, ServerStopsWithClientsConnected) {
  auto server = serve(LinkConfig{LinkTrace::constant(0.001), 30.0});  // very slow, very far
  FetchOptions fo = fetch_options(*server);
  fo.max_reconnects = 0;
  fo.io_timeout_ms = 2000;
  KVCache out;
  FetchReport r;
  std::thread fetcher([&] { (void)fetch_context(fo, &out, &r); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->stop();  // must not hang on the paced sender
  fetcher.join();
  EXPECT_FALSE(r.complete);
  EXPECT_GE(server->stats().connections, 1u);
}

}  // namespace
}  // namespace kvcodec
