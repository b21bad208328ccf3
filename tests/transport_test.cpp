// Link emulation, server and pipelined client over loopback TCP (src/stream/include/kvcodec/stream.hpp).
#include "kvcodec/stream.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <poll.h>

#include <array>
#include <cstring>
#include <fstream>
#include <optional>
#include <thread>

#include "kvcodec/codec.hpp"
#include "stream/transport_wire.hpp"
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

// ---- hostile peers (issue 11, items 3-5) ------------------------------------------------------

// A raw loopback connection to `port` (blocking), or -1.
int raw_connect(uint16_t port) {
  auto fd = stream_detail::connect_tcp("127.0.0.1", port, 2000);
  return fd.ok() ? *fd : -1;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
constexpr bool kSanitized = __has_feature(address_sanitizer) || __has_feature(thread_sanitizer);
#else
constexpr bool kSanitized = false;
#endif

// Resident set size of this process, bytes.
uint64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * uint64_t(::sysconf(_SC_PAGESIZE));
}

// Polls `done` for up to 5 s.
template <typename F>
bool eventually(F done) {
  for (int i = 0; i < 500 && !done(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return done();
}

// Item 3: 64 idle connections (the connection cap) used to reset every new client indefinitely.
TEST_F(TransportTest, IdleConnectionsDoNotLockOutClients) {
  auto server = serve();
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) idle.push_back(raw_connect(server->port()));
  ASSERT_TRUE(eventually([&] { return server->stats().connections >= 64; }));
  for (int round = 0; round < 3; ++round) {
    FetchOptions fo = fetch_options(*server);
    fo.max_reconnects = 0;
    KVCache out;
    FetchReport r;
    Status s = fetch_context(fo, &out, &r);
    ASSERT_TRUE(s.ok()) << "round " << round << ": " << s.to_string();
    expect_exact(out, r);
  }
  EXPECT_GE(server->stats().evicted, 3u);
  for (int fd : idle) ::close(fd);
}

TEST_F(TransportTest, IdleConnectionsAreClosedAfterTheTimeout) {
  ServerOptions so;
  so.idle_timeout_ms = 200;
  auto server = Server::start(store_, so);
  ASSERT_TRUE(server.ok());
  std::vector<int> idle;
  for (int i = 0; i < 5; ++i) idle.push_back(raw_connect((*server)->port()));
  ASSERT_TRUE(eventually([&] { return (*server)->stats().idle_closed == 5; }));
  for (int fd : idle) {
    char b;
    EXPECT_EQ(::recv(fd, &b, 1, 0), 0);  // closed by the server
    ::close(fd);
  }
  // A half-sent request is closed after request_timeout_ms, not held forever.
  so.request_timeout_ms = 200;
  so.idle_timeout_ms = 60000;
  auto s2 = Server::start(store_, so);
  ASSERT_TRUE(s2.ok());
  int fd = raw_connect((*s2)->port());
  ASSERT_EQ(::send(fd, "KVCT", 4, MSG_NOSIGNAL), 4);
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 3000), 1);
  char b;
  EXPECT_LE(::recv(fd, &b, 1, 0), 0);
  ::close(fd);
}

// Item 4: a client pipelining GetChunk requests without reading used to grow the server's queue
// without bound (1 MB of requests: 5 MB -> 828 MB RSS). Now the reader stops at the limit.
TEST_F(TransportTest, PipelinedRequestsWithoutReadingAreBounded) {
  ServerOptions so;
  so.max_inflight_bytes_per_connection = 256 << 10;
  auto server = Server::start(store_, so);
  ASSERT_TRUE(server.ok());
  const uint64_t rss0 = rss_bytes();
  int fd = raw_connect((*server)->port());
  ASSERT_GE(fd, 0);
  uint64_t biggest = 0;
  for (const auto& c : manifest_.levels[0].chunks) biggest = std::max<uint64_t>(biggest, c.size);
  stream_detail::Request req;
  req.type = stream_detail::MsgType::kGetChunk;
  req.id = "ctx";
  req.level = 0;
  std::vector<uint8_t> burst;
  // 16 MB of requests: more than the kernel's socket buffers on both ends hold.
  const int sndbuf = 64 << 10;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  for (uint32_t i = 0; burst.size() < (16u << 20); ++i) {
    req.chunk = i % manifest_.num_chunks();
    stream_detail::MessageHeader h;
    h.type = req.type;
    h.request_id = i;
    const auto payload = stream_detail::encode_request_payload(req);
    h.payload_bytes = payload.size();
    const auto msg = stream_detail::make_message(h, payload);
    burst.insert(burst.end(), msg.begin(), msg.end());
  }
  size_t sent = 0;
  for (int stuck = 0; sent < burst.size() && stuck < 50;) {  // until the server stops reading
    const ssize_t n = ::send(fd, burst.data() + sent, burst.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += size_t(n);
      stuck = 0;
    } else {
      ++stuck;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  EXPECT_LT(sent, burst.size()) << "the server read every request without the client reading a response";
  const ServerStats st = (*server)->stats();
  EXPECT_LE(st.peak_inflight_bytes, (256u << 10) + 2 * (biggest + 64));
  // (Sanitizer builds keep freed memory in quarantine: RSS says nothing there.)
  if (!kSanitized) EXPECT_LT(rss_bytes() - std::min(rss_bytes(), rss0), 64ull << 20);
  // Other clients are still served meanwhile.
  FetchOptions fo = fetch_options(**server);
  KVCache out;
  FetchReport r;
  ASSERT_TRUE(fetch_context(fo, &out, &r).ok());
  ::close(fd);
}

// Item 5: the client allocated whatever payload length a server claimed (up to 4 GiB) before
// failing. A fake server answers the manifest request with a 4 GiB header.
TEST_F(TransportTest, ClientBoundsResponsesBeforeAllocating) {
  const int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  socklen_t len = sizeof a;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
  std::thread fake([lfd] {
    const int fd = ::accept(lfd, nullptr, nullptr);
    uint8_t hdr[stream_detail::kMessageHeaderBytes];
    if (!stream_detail::recv_exact(fd, hdr, 3000).ok()) return ::close(fd), void();
    auto h = stream_detail::decode_header(hdr);
    std::vector<uint8_t> payload(h.ok() ? h->payload_bytes : 0);
    (void)stream_detail::recv_exact(fd, payload, 3000);
    stream_detail::MessageHeader out;
    out.type = stream_detail::MsgType::kManifest;
    out.request_id = h.ok() ? h->request_id : 0;
    out.payload_bytes = 4ull << 30;
    uint8_t ob[stream_detail::kMessageHeaderBytes];
    stream_detail::encode_header(out, ob);
    (void)stream_detail::send_all(fd, ob);
    char b;
    (void)::recv(fd, &b, 1, 0);  // until the client closes
    ::close(fd);
  });
  FetchOptions fo;
  fo.port = ntohs(a.sin_port);
  fo.id = "ctx";
  fo.io_timeout_ms = 2000;
  fo.max_reconnects = 0;
  KVCache out;
  FetchReport r;
  Status s = fetch_context(fo, &out, &r);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.to_string();
  fake.join();
  ::close(lfd);
}

// A listening socket on 127.0.0.1 at a free port (*port).
int listen_loopback(uint16_t* port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), len), 0);
  EXPECT_EQ(::listen(fd, 4), 0);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

// Reads one whole message (header, then its payload) from a fake server's connection; nullopt
// when the peer closed, stalled 5 s or sent a malformed header.
std::optional<stream_detail::MessageHeader> recv_request(int fd, std::vector<uint8_t>* payload) {
  using namespace stream_detail;
  uint8_t hdr[kMessageHeaderBytes];
  if (!recv_exact(fd, hdr, 5000).ok()) return std::nullopt;
  auto h = decode_header(hdr);
  if (!h.ok()) return std::nullopt;
  payload->resize(h->payload_bytes);
  if (!recv_exact(fd, *payload, 5000).ok()) return std::nullopt;
  return *h;
}

// A fake server on loopback answering the client's first connection: the manifest request with
// `manifest` (serialized, checksummed), then every chunk request with a header claiming
// `chunk_claim` payload bytes and nothing after it, until the client closes.
class HostileServer {
 public:
  HostileServer(const Manifest& manifest, uint64_t chunk_claim) {
    lfd_ = listen_loopback(&port_);
    thread_ = std::thread([this, bytes = serialize_manifest(manifest), chunk_claim] {
      using namespace stream_detail;
      const int fd = ::accept(lfd_, nullptr, nullptr);
      for (;;) {
        std::vector<uint8_t> payload;
        const auto h = recv_request(fd, &payload);
        if (!h) break;
        MessageHeader out;
        out.request_id = h->request_id;
        out.type = h->type == MsgType::kGetManifest ? MsgType::kManifest : MsgType::kChunk;
        out.payload_bytes = h->type == MsgType::kGetManifest ? bytes.size() : chunk_claim;
        uint8_t ob[kMessageHeaderBytes];
        encode_header(out, ob);
        (void)send_all(fd, ob);
        if (h->type == MsgType::kGetManifest) (void)send_all(fd, bytes);
      }
      ::close(fd);
    });
  }
  ~HostileServer() {
    thread_.join();
    ::close(lfd_);
  }
  uint16_t port() const { return port_; }

 private:
  int lfd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

// A manifest for an f16 context of `shape`, one level, chunk sizes `chunk_size`.
Manifest claimed_manifest(const KVShape& shape, uint32_t chunk_size) {
  Manifest m;
  m.dtype = DType::kF16;
  m.shape = shape;
  m.chunk_tokens = 16;
  ManifestLevel l;
  l.level = 4;
  l.head_bytes = 100;
  l.chunks.assign(m.num_chunks(), ManifestChunk{chunk_size, 0});
  m.levels.push_back(l);
  return m;
}

// Issue 11 (found by fuzz_fetch's design review): a manifest of a hundred bytes may claim a
// context of any size, and the client allocated the whole destination before anything else.
TEST_F(TransportTest, ClientBoundsTheContextAManifestClaims) {
  HostileServer fake(claimed_manifest({4, 4096, 8, 128}, 1000), 0);  // 64 MiB of f16
  FetchOptions fo;
  fo.port = fake.port();
  fo.id = "ctx";
  fo.max_reconnects = 0;
  fo.max_output_bytes = 1 << 20;
  KVCache out;
  FetchReport r;
  const Status s = fetch_context(fo, &out, &r);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.to_string();
  EXPECT_TRUE(out.data.empty());
  ASSERT_FALSE(r.failures.empty());
  EXPECT_EQ(r.failures.back().action, "abort");
}

// A chunk response header claiming 1 GiB (the manifest allows it) and then silence: the client
// allocated the claimed size at the header (zero-filled: 1 GiB resident) while waiting for bytes
// that never came. Now its buffer grows with the bytes received.
TEST_F(TransportTest, ClientBuffersWhatArrivesNotWhatIsClaimed) {
  const uint32_t claim = 1u << 30;
  HostileServer fake(claimed_manifest({1, 32, 1, 8}, claim - 8), claim);
  FetchOptions fo;
  fo.port = fake.port();
  fo.id = "ctx";
  fo.io_timeout_ms = 1500;
  fo.max_reconnects = 0;
  fo.decode_gbps = 1;
  const uint64_t rss0 = rss_bytes();
  std::atomic<bool> done{false};
  std::atomic<uint64_t> peak{rss0};
  std::thread sampler([&] {
    while (!done) {
      peak = std::max<uint64_t>(peak, rss_bytes());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  KVCache out;
  FetchReport r;
  const Status s = fetch_context(fo, &out, &r);
  done = true;
  sampler.join();
  EXPECT_FALSE(s.ok());  // the connection timed out and reconnecting is not allowed
  EXPECT_LT(peak - std::min<uint64_t>(peak, rss0), 256ull << 20);
}

// Found by fuzz_fetch (seventh session): an Error answer to the manifest request with code 0
// (kOk) read as a successful exchange, and the client planned with an empty manifest (undefined
// behaviour in keep_decodable_levels). An Error must carry an error code, any other message 0.
TEST_F(TransportTest, ErrorResponsesWithoutAnErrorCodeAreCorrupt) {
  using namespace stream_detail;
  auto header = [](MsgType type, uint32_t code) {
    MessageHeader h;
    h.type = type;
    h.code = code;
    std::array<uint8_t, kMessageHeaderBytes> b{};
    encode_header(h, b.data());
    return b;
  };
  EXPECT_TRUE(decode_header(header(MsgType::kError, uint32_t(StatusCode::kNotFound))).ok());
  EXPECT_TRUE(decode_header(header(MsgType::kManifest, 0)).ok());
  EXPECT_EQ(decode_header(header(MsgType::kManifest, 5)).status().code(), StatusCode::kCorruptData);
  EXPECT_EQ(decode_header(header(MsgType::kGetChunk, 1)).status().code(), StatusCode::kCorruptData);

  for (const uint32_t code : {0u, uint32_t(StatusCode::kInternal) + 1, 0xFFFFFFFFu}) {
    EXPECT_EQ(decode_header(header(MsgType::kError, code)).status().code(), StatusCode::kCorruptData) << code;
    uint16_t port = 0;
    const int lfd = listen_loopback(&port);
    std::thread fake([lfd, code] {
      const int fd = ::accept(lfd, nullptr, nullptr);
      std::vector<uint8_t> payload;
      if (const auto h = recv_request(fd, &payload)) {
        const std::string msg = "all is well";
        MessageHeader out;
        out.type = MsgType::kError;
        out.request_id = h->request_id;
        out.code = code;
        out.payload_bytes = msg.size();
        uint8_t ob[kMessageHeaderBytes];
        encode_header(out, ob);
        (void)send_all(fd, ob);
        (void)send_all(fd, std::span(reinterpret_cast<const uint8_t*>(msg.data()), msg.size()));
        char b;
        (void)::recv(fd, &b, 1, 0);  // until the client closes
      }
      ::close(fd);
    });
    FetchOptions fo;
    fo.port = port;
    fo.id = "ctx";
    fo.io_timeout_ms = 2000;
    fo.max_reconnects = 0;
    KVCache out;
    FetchReport r;
    const Status s = fetch_context(fo, &out, &r);
    EXPECT_EQ(s.code(), StatusCode::kCorruptData) << code << ": " << s.to_string();
    EXPECT_FALSE(r.complete);
    EXPECT_TRUE(out.data.empty());
    fake.join();
    ::close(lfd);
  }
}

// Issue 11 (found by the chaos run, scripts/chaos.sh): a connection lost, stalled or corrupted
// during the manifest exchange ended the fetch, while the same faults on chunks are retried. Now
// the manifest is asked for again on a new connection (counted as a reconnection).
TEST_F(TransportTest, ManifestExchangeIsRetriedOnANewConnection) {
  auto server = serve();
  uint16_t port = 0;
  const int lfd = listen_loopback(&port);
  // The first connection is closed once its request arrived; the second is relayed to the server.
  std::thread relay([lfd, port = server->port()] {
    int c = ::accept(lfd, nullptr, nullptr);
    uint8_t buf[65536];
    (void)::recv(c, buf, sizeof buf, 0);
    ::close(c);
    pollfd l{lfd, POLLIN, 0};
    if (::poll(&l, 1, 5000) <= 0) return;  // the client gave up (as it did before the fix)
    c = ::accept(lfd, nullptr, nullptr);
    auto s = stream_detail::connect_tcp("127.0.0.1", port, 2000);
    if (!s.ok()) return ::close(c), void();
    for (bool open = true; open;) {
      pollfd p[2] = {{c, POLLIN, 0}, {*s, POLLIN, 0}};
      if (::poll(p, 2, 5000) <= 0) break;
      for (int d = 0; d < 2 && open; ++d)
        if (p[d].revents & (POLLIN | POLLHUP | POLLERR)) {
          const ssize_t n = ::recv(p[d].fd, buf, sizeof buf, 0);
          open = n > 0 && stream_detail::send_all(d == 0 ? *s : c, std::span(buf, size_t(n))).ok();
        }
    }
    ::close(c);
    ::close(*s);
  });
  FetchOptions fo = fetch_options(*server);
  fo.port = port;
  KVCache out;
  FetchReport r;
  const Status s = fetch_context(fo, &out, &r);
  relay.join();
  ::close(lfd);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_FALSE(r.failures.empty());
  EXPECT_EQ(r.failures.front().action, "reconnect");
  EXPECT_EQ(r.failures.front().chunk, -1);
  expect_exact(out, r);
}

// Issue 11 (found by the chaos run): a chunk's first request may carry its level's head although
// the controller counted the head with another chunk (whose request was lost), and the client
// counted the head as chunk progress: "progress beyond the chunk's size" ended the fetch. Here
// chunk 0 at level 3 (with the head) is answered "not found", so it falls back to level 0, and
// the connection drops: on the new one, chunk 1's re-sent request carries level 3's head, and
// its response arrives in 64-byte pieces.
TEST_F(TransportTest, ProgressIsCountedInBodyBytes) {
  using namespace stream_detail;
  uint16_t port = 0;
  const int lfd = listen_loopback(&port);
  std::thread fake([&] {
    auto answer = [&](int fd, const MessageHeader& h, std::span<const uint8_t> payload, bool slow) {
      MessageHeader out;
      out.request_id = h.request_id;
      std::vector<uint8_t> body;
      if (h.type == MsgType::kGetManifest) {
        out.type = MsgType::kManifest;
        body = serialize_manifest(manifest_);
      } else {
        auto r = decode_request_payload(h.type, payload);
        if (!r.ok()) return false;
        std::vector<uint8_t> head;
        if (r->with_head) head = *get_head(*store_, "ctx", manifest_, r->level);
        const auto chunk = *get_chunk(*store_, "ctx", manifest_, r->level, r->chunk);
        for (int i = 0; i < 8; ++i) body.push_back(uint8_t(head.size() >> (8 * i)));
        body.insert(body.end(), head.begin(), head.end());
        body.insert(body.end(), chunk.begin(), chunk.end());
        out.type = MsgType::kChunk;
      }
      const auto msg = make_message(out, body);
      for (size_t at = 0; at < msg.size(); at += slow ? 64 : msg.size()) {
        if (!send_all(fd, std::span(msg).subspan(at, std::min<size_t>(slow ? 64 : msg.size(), msg.size() - at))).ok())
          return false;
        if (slow) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return true;
    };
    for (int conn = 0; conn < 2; ++conn) {
      pollfd l{lfd, POLLIN, 0};
      if (::poll(&l, 1, 5000) <= 0) return;
      const int fd = ::accept(lfd, nullptr, nullptr);
      for (;;) {
        std::vector<uint8_t> payload;
        const auto h = recv_request(fd, &payload);
        if (!h) break;
        auto r = decode_request_payload(h->type, payload);
        if (conn == 0 && h->type == MsgType::kGetChunk && r.ok()) {
          if (r->level != 3) break;  // chunk 0's fallback: drop the connection
          if (r->chunk == 0) {
            MessageHeader e;
            e.type = MsgType::kError;
            e.request_id = h->request_id;
            e.code = uint32_t(StatusCode::kNotFound);
            const std::string text = "gone";
            (void)send_all(fd, make_message(e, std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size())));
          }
          continue;  // other level-3 requests stay unanswered on this connection
        }
        if (!answer(fd, *h, payload, conn == 1)) break;
      }
      ::close(fd);
    }
  });
  FetchOptions fo;
  fo.port = port;
  fo.id = "ctx";
  fo.controller.slo_s = 10;
  fo.controller.policy = Policy::kFixed;
  fo.controller.plan = {1};  // level 3
  fo.io_timeout_ms = 3000;
  KVCache out;
  FetchReport r;
  const Status s = fetch_context(fo, &out, &r);
  fake.join();
  ::close(lfd);
  ASSERT_TRUE(s.ok()) << s.to_string() << "\n" << r.to_json();
  EXPECT_EQ(r.chunks[0].level, 0);
  EXPECT_EQ(r.chunks[1].level, 3);
  expect_exact(out, r);
}

}  // namespace
}  // namespace kvcodec
