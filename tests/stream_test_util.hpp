// Helpers for the streaming tests (store_test, transport_test, stream_fault_test): small
// deterministic KV caches and a redis-server the test starts and stops itself.
#pragma once

#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/dtype.hpp"
#include "common/xxh64.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/store.hpp"
#include "kvcodec/stream.hpp"
#include "test_util.hpp"

namespace kvcodec::test {

// A version 2 manifest's bytes rewritten by hand as version 1 (docs/streaming.md: 40-byte level
// records, no flags or profile digest), as a library before the profile digest wrote them.
inline std::vector<uint8_t> manifest_as_version1(const std::vector<uint8_t>& v2, uint32_t levels, uint32_t chunks) {
  std::vector<uint8_t> out(v2.begin(), v2.begin() + 40);
  out[4] = 1;
  out[5] = 0;
  size_t at = 40;
  for (uint32_t l = 0; l < levels; ++l) {
    out.push_back(v2[at]);                          // level
    out.insert(out.end(), 7, 0);                    // reserved (the flags byte too)
    out.insert(out.end(), v2.begin() + at + 8, v2.begin() + at + 40);  // head, checksum, error, speed
    at += 48;                                       // skips the profile digest
    out.insert(out.end(), v2.begin() + at, v2.begin() + at + 12 * chunks);
    at += 12 * chunks;
  }
  out.insert(out.end(), v2.begin() + at, v2.end() - 8);  // token ids
  const uint64_t sum = detail::xxh64(out.data(), out.size());
  for (int i = 0; i < 8; ++i) out.push_back(uint8_t(sum >> (8 * i)));
  return out;
}

// A cache whose channels have different scales and whose tokens are correlated (a random walk
// per channel), so that lossy levels really lose something and sizes differ between levels.
inline KVCache make_kv(const KVShape& shape, DType dtype, uint32_t seed) {
  auto cache = KVCache::allocate(dtype, shape);
  EXPECT_TRUE(cache.ok()) << cache.status().to_string();
  KVCache kv = std::move(*cache);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  KVView v = kv.view();
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t h = 0; h < shape.kv_heads; ++h)
        for (uint32_t d = 0; d < shape.head_dim; ++d) {
          const float scale = 0.2f + 2.f * float((d * 7 + h) % 5);
          float x = 0.f;
          for (uint32_t t = 0; t < shape.tokens; ++t) {
            x = 0.9f * x + 0.3f * n(rng);
            const float value = scale * x;
            void* p = v.element(l, k, t, h, d);
            if (dtype == DType::kF32) {
              *static_cast<float*>(p) = value;
            } else {
              EXPECT_EQ(dtype, DType::kF16);
              *static_cast<uint16_t*>(p) = detail::f32_to_f16(value);
            }
          }
        }
  return kv;
}

// `kv` encoded at `level` in chunks of `chunk_tokens` and decoded: what a fetch at that level
// must deliver.
inline KVCache local_decode(const KVCache& kv, int level, uint32_t chunk_tokens) {
  EncodeOptions eo;
  eo.level = level;
  eo.chunk_tokens = chunk_tokens;
  std::vector<uint8_t> frame(max_encoded_size(kv.shape, kv.dtype, eo));
  auto n = encode_into(const_cast<KVCache&>(kv).view(), eo, frame);
  EXPECT_TRUE(n.ok());
  frame.resize(*n);
  KVCache out = *KVCache::allocate(kv.dtype, kv.shape);
  EXPECT_TRUE(decode_into(frame, out.view()).ok());
  return out;
}

// A RecomputeFn that "recomputes" TEXT chunks by copying them from the original cache.
inline RecomputeFn copy_recompute(const KVCache& kv) {
  return [&kv](uint32_t, uint32_t begin, std::span<const int32_t> tokens, const KVView& dst) {
    const size_t row = kv.shape.channels() * dtype_size(kv.dtype);
    for (uint32_t l = 0; l < kv.shape.layers; ++l)
      for (uint32_t k = 0; k < 2; ++k)
        for (uint32_t t = begin; t < begin + tokens.size(); ++t)
          std::memcpy(dst.element(l, k, t, 0, 0), kv.data.data() + ((l * 2 + k) * kv.shape.tokens + t) * row, row);
    return Status::Ok();
  };
}

// Each chunk of `got` equals the local decode of the level it was delivered at (the original
// for text): a fetch delivers exact data or nothing.
inline void expect_chunks_exact(const KVCache& original, uint32_t chunk_tokens, const KVCache& got,
                                const FetchReport& r) {
  std::map<int, KVCache> decoded;
  const KVShape& shape = original.shape;
  const size_t row = shape.channels() * dtype_size(original.dtype);
  for (const auto& c : r.chunks) {
    const KVCache* ref = &original;
    if (c.level >= 0) {
      if (!decoded.count(c.level)) decoded.emplace(c.level, local_decode(original, c.level, chunk_tokens));
      ref = &decoded.at(c.level);
    }
    const uint32_t begin = c.chunk * chunk_tokens, count = std::min(chunk_tokens, shape.tokens - begin);
    for (uint32_t l = 0; l < shape.layers; ++l)
      for (uint32_t k = 0; k < 2; ++k) {
        const size_t off = ((l * 2 + k) * shape.tokens + begin) * row;
        ASSERT_EQ(std::memcmp(got.data.data() + off, ref->data.data() + off, count * row), 0)
            << "chunk " << c.chunk << " via " << c.via;
      }
  }
}

// KVCODEC_REDIS_URL (scripts/test.sh starts a redis-server and exports it), or "" after marking
// the test skipped (or failed under CI=true, where Redis must be there).
#define KVCODEC_REQUIRE_REDIS(url_var)                                                       \
  const char* url_var##_env = std::getenv("KVCODEC_REDIS_URL");                              \
  if (!url_var##_env || !*url_var##_env) {                                                   \
    if (::kvcodec::test::running_in_ci()) FAIL() << "KVCODEC_REDIS_URL must be set under CI=true"; \
    GTEST_SKIP() << "KVCODEC_REDIS_URL not set (scripts/test.sh starts a redis-server)";     \
  }                                                                                          \
  const std::string url_var = url_var##_env

// A loopback TCP port that was free a moment ago.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// A private redis-server on a loopback port, no persistence; killed by the destructor.
class RedisProcess {
 public:
  // `extra`: more redis-server options, e.g. {"--maxmemory", "2mb"}.
  explicit RedisProcess(std::vector<std::string> extra = {}) : port_(free_port()) {
    std::vector<std::string> args = {"redis-server", "--port", std::to_string(port_), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--loglevel", "warning"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      int null = ::open("/dev/null", O_WRONLY);  // keep the test log readable
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execvp("redis-server", argv.data());
      ::_exit(127);
    }
  }
  ~RedisProcess() { kill(); }

  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  // Waits (at most 5 s) until the server answers (with `o`'s credentials).
  bool wait_ready(StoreOptions o = {}) const {
    for (int i = 0; i < 100; ++i) {
      o.connect_timeout_ms = 100;
      if (open_store(url(), o).ok()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  void pause() const { ::kill(pid_, SIGSTOP); }
  void resume() const { ::kill(pid_, SIGCONT); }
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  int port_;
  pid_t pid_ = -1;
};

}  // namespace kvcodec::test
