// Fuzzes the fetch client's whole response handling (fetch_context in transport_client.cpp: the
// manifest exchange, the pipelined response reader, verification, retries, level fallback,
// reconnection, text recompute and the decoder worker), fed arbitrary response bytes: a fake
// server on loopback answers the client's k-th connection with the k-th segment of the input
// (segments separated by "--KVCONN--", at most 4) and then closes its side. Message-header and
// manifest checksums are repaired first (fuzz_wire covers the checks themselves). Seeds: server
// traffic captured from real fetches (tests/fuzz/corpus/fetch, written by kvcodec_fuzz_capture), and
// error-code-0, the input that found an Error answer with code 0 taken for success.
//
// Properties: no crash, hang, leak or sanitizer report; a fetch that fails says so (an error and
// a failure record); a fetch that succeeds has every chunk, and when the manifest it was given is
// one of the fixture contexts (stream_fixture.hpp), every chunk is exactly that level's decode
// (or the original, for text): the client never accepts a wrong tensor, whatever the server sends.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "fuzz/stream_fixture.hpp"
#include "kvcodec/stream.hpp"

namespace {

using namespace kvcodec;
using namespace kvcodec::stream_detail;

constexpr char kDelimiter[] = "--KVCONN--";
constexpr size_t kMaxConnections = 4;

struct Fixture {
  std::vector<fuzz::FixtureContext> contexts;
  int listen_fd = -1;
  uint16_t port = 0;
};

Fixture& fixture() {
  static Fixture* f = [] {
    auto* x = new Fixture;
    auto s = open_store("mem:");
    fuzz::fixture_check(s.status(), "mem store");
    x->contexts = fuzz::put_fixture_contexts(**s);
    x->listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (x->listen_fd < 0 || ::bind(x->listen_fd, reinterpret_cast<sockaddr*>(&a), len) != 0 ||
        ::listen(x->listen_fd, 16) != 0 || ::getsockname(x->listen_fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      std::abort();
    x->port = ntohs(a.sin_port);
    return x;
  }();
  return *f;
}

// Answers one connection with `seg` as a server would: its i-th whole message once the client
// has sent i+1 whole requests (or after 40 ms without progress), then the bytes after the last
// whole message; 40 ms after the last it shuts its write side. Returns when the client closes.
void answer_connection(int fd, std::span<const uint8_t> seg, const std::atomic<bool>& stop) {
  std::vector<std::span<const uint8_t>> pieces;
  while (!seg.empty()) {
    // The first whole message alone, else everything that is left.
    size_t len = 0;
    if (seg.size() >= kMessageHeaderBytes)
      if (auto h = decode_header(seg); h.ok() && h->payload_bytes <= seg.size() - kMessageHeaderBytes)
        len = kMessageHeaderBytes + size_t(h->payload_bytes);
    if (len == 0) len = seg.size();
    pieces.push_back(seg.first(len));
    seg = seg.subspan(len);
  }
  std::vector<uint8_t> got;
  size_t requests = 0, next = 0;
  int idle = 0;
  bool client_open = true, write_open = true;
  while (!stop && client_open) {
    if (next < pieces.size() && (requests > next || idle >= 8)) {
      (void)send_all(fd, pieces[next++]);  // fits the socket buffers (inputs are small)
      idle = 0;
      continue;
    }
    if (next == pieces.size() && write_open && idle >= 8) {  // nothing more to say: close
      ::shutdown(fd, SHUT_WR);
      write_open = false;
    }
    pollfd q{fd, POLLIN, 0};
    if (::poll(&q, 1, 5) <= 0) {
      ++idle;
      continue;
    }
    uint8_t buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      client_open = false;
      continue;
    }
    got.insert(got.end(), buf, buf + n);
    fuzz::whole_messages(got, &requests);
  }
}

// The fake server: connection k is answered with segments[k]; connections past the segments
// are closed at once.
void fake_server(const std::vector<std::vector<uint8_t>>& segments, const std::atomic<bool>& stop) {
  const int lfd = fixture().listen_fd;
  for (size_t k = 0; !stop;) {
    pollfd p{lfd, POLLIN, 0};
    if (::poll(&p, 1, 5) <= 0) continue;
    const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    if (k < segments.size()) answer_connection(fd, segments[k], stop);
    ::close(fd);
    ++k;
  }
}

// The fixture context `m` describes: compared in m's manifest version (the captured seeds carry
// version 1 manifests; the fixture's levels need no profile, so nothing is lost).
const fuzz::FixtureContext* known(const Manifest& m) {
  for (const auto& c : fixture().contexts) {
    Manifest same = c.manifest;
    same.profiles_known = m.profiles_known;
    if (serialize_manifest(same) == serialize_manifest(m)) return &c;
  }
  return nullptr;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& fx = fixture();
  std::vector<std::vector<uint8_t>> segments;
  const std::string_view delim(kDelimiter);
  for (std::string_view in(reinterpret_cast<const char*>(data), size); segments.size() < kMaxConnections;) {
    const size_t cut = in.find(delim);
    segments.emplace_back(in.begin(), cut == in.npos ? in.end() : in.begin() + cut);
    fuzz::repair_message_checksums(segments.back());
    if (cut == in.npos) break;
    in.remove_prefix(cut + delim.size());
  }

  const fuzz::FixtureContext* context = nullptr;
  FetchOptions o;
  o.port = fx.port;
  o.id = "ctx0";
  o.io_timeout_ms = 300;
  o.connect_timeout_ms = 2000;
  o.max_reconnects = int(kMaxConnections) - 1;
  o.max_manifest_bytes = 1 << 20;
  o.max_output_bytes = 1 << 20;
  o.decode_gbps = 1;
  o.on_manifest = [&](const Manifest& m, ControllerConfig&) {
    context = known(m);
    return Status::Ok();
  };
  // Text chunks are "recomputed" as the original cache (what a model's prefill would give).
  KVCache out;
  o.recompute = [&](uint32_t, uint32_t begin, std::span<const int32_t> tokens, const KVView&) {
    if (context) fuzz::copy_token_rows(context->original, out, begin, begin + uint32_t(tokens.size()));
    return Status::Ok();
  };

  std::atomic<bool> stop{false};
  std::thread server([&] { fake_server(segments, stop); });
  FetchReport report;
  const Status s = fetch_context(o, &out, &report);
  stop = true;
  server.join();

  if (!s.ok()) {
    if (report.error.empty() || report.complete) std::abort();
    return 0;
  }
  if (!report.complete || report.chunks.size() != out.shape.tokens / std::max<uint32_t>(1, report.chunk_tokens) +
                                                      (out.shape.tokens % std::max<uint32_t>(1, report.chunk_tokens) != 0))
    std::abort();
  if (!context) return 0;
  for (const ChunkReport& c : report.chunks) {
    const uint32_t begin = c.chunk * context->manifest.chunk_tokens;
    const uint32_t end = std::min(begin + context->manifest.chunk_tokens, context->manifest.shape.tokens);
    const KVCache& want = c.level < 0 ? context->original : context->exact.at(c.level);
    if (!fuzz::token_rows_equal(out, want, begin, end)) std::abort();  // a wrong tensor accepted
  }
  return 0;
}
