// Fuzzes the server's whole request-handling path (Server in transport_server.cpp: accept,
// reader loop, request parsing, store look-ups, answers, the sender on the emulated link), fed
// from a buffer: each input is the byte stream a client sends on one loopback connection to a
// Server over the fixture contexts (stream_fixture.hpp). Message-header and manifest checksums
// are repaired first (the checksum checks themselves are fuzz_wire's), so mutations reach the
// code behind them. Seeds: client traffic captured from real fetches (tests/fuzz/corpus/serve,
// written by kvcodec_fuzz_capture).
//
// Properties, checked on everything the server sends back until it closes the connection: whole
// messages with valid headers; one response per complete request, in request order, with that
// request's id (a prefix: the server may close early on a bad request); manifest responses that
// parse; chunk responses whose head and body verify against the stored manifest for exactly the
// level and chunk requested; error responses within the 4 KiB limit. A crash, hang, leak or
// sanitizer report in any server thread fails as well.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <memory>
#include <optional>

#include "stream/byte_io.hpp"
#include "fuzz/stream_fixture.hpp"
#include "kvcodec/stream.hpp"

namespace {

using namespace kvcodec;
using namespace kvcodec::stream_detail;

struct Fixture {
  std::shared_ptr<Store> store;
  std::vector<fuzz::FixtureContext> contexts;
  std::unique_ptr<Server> server;
};

Fixture& fixture() {
  static Fixture* f = [] {
    auto* x = new Fixture;
    auto s = open_store("mem:");
    fuzz::fixture_check(s.status(), "mem store");
    x->store = std::shared_ptr<Store>(std::move(*s));
    x->contexts = fuzz::put_fixture_contexts(*x->store);
    ServerOptions o;
    o.idle_timeout_ms = 5000;
    o.request_timeout_ms = 2000;
    auto srv = Server::start(x->store, o);
    fuzz::fixture_check(srv.status(), "server");
    x->server = std::move(*srv);
    return x;
  }();
  return *f;
}

// The harness opens thousands of loopback connections a second, so the kernel holds tens of
// thousands of them in TIME-WAIT (its table overflows) and a new connection now and then meets
// an old one's state: its SYN is answered only after a 1 s retransmission, or it is lost before
// the server's accept loop ever sees it while the client's side looks connected. So connections
// come from 4096 loopback source addresses (127.0.16.0/20, the port picked per address pair),
// are closed with a reset (no TIME-WAIT on either side), and a connection the server has not
// accepted is retried; a hang is a server that accepted the connection and then went quiet.
uint64_t g_opened = 0;  // connections of this harness that reached the server

bool server_accepted(uint64_t n) {
  const ServerStats st = fixture().server->stats();
  return st.connections + st.refused >= n;
}

void close_with_reset(int fd) {
  const linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

int connect_to_server() {
  static uint32_t next = 0;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  sockaddr_in from{}, to{};
  from.sin_family = to.sin_family = AF_INET;
  from.sin_addr.s_addr = htonl((127u << 24) | (16u << 8) | (next++ % 4096));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons(fixture().server->port());
  if (fd < 0 || ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) != 0 ||
      ::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0)
    fuzz::fixture_check(Unavailable(std::string("socket: ") + std::strerror(errno)), "connect");
  // A blocking connect that waits for a retransmitted SYN sees libFuzzer's timer signal (EINTR)
  // and goes on in the background: wait for it.
  int err = ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0 ? 0 : errno;
  if (err == EINTR || err == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    while (::poll(&p, 1, 10000) < 0 && errno == EINTR) {
    }
    socklen_t len = sizeof err;
    if (p.revents == 0) err = ETIMEDOUT;
    else ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  }
  if (err != 0) fuzz::fixture_check(Unavailable(std::string("connect: ") + std::strerror(err)), "connect");
  return fd;
}

// Sends `in` on a fresh connection while reading what the server sends: until it closes when
// `half_close` (then the write side is shut after the input, so a server waiting for the rest of
// a request sees the end at once), else until `responses` whole messages have arrived. Nothing
// when the connection never reached the server.
std::optional<std::vector<uint8_t>> try_exchange(std::span<const uint8_t> in, bool half_close, size_t responses) {
  const int fd = connect_to_server();
  const uint64_t number = ++g_opened;
  std::vector<uint8_t> out;
  size_t sent = 0, got = 0;
  bool write_open = true;
  auto finish_writing = [&] {
    if (half_close) ::shutdown(fd, SHUT_WR);
    write_open = false;
  };
  if (in.empty()) finish_writing();
  int quiet_ms = 0;
  while (half_close || got < responses) {
    pollfd p{fd, short(POLLIN | (write_open ? POLLOUT : 0)), 0};
    const int rc = ::poll(&p, 1, 1000);
    if (rc < 0) continue;  // a signal
    if (rc == 0) {
      if (!server_accepted(number)) {  // lost before the server saw it
        --g_opened;
        close_with_reset(fd);
        return std::nullopt;
      }
      if ((quiet_ms += 1000) >= 10000) std::abort();  // the server neither answers nor closes: a hang
      continue;
    }
    quiet_ms = 0;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      uint8_t buf[65536];
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.insert(out.end(), buf, buf + n);
      fuzz::whole_messages(out, &got);
    }
    if (write_open && (p.revents & POLLOUT)) {
      const ssize_t n = ::send(fd, in.data() + sent, in.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) sent += size_t(n);
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) write_open = false;  // reset by the server
      if (sent == in.size() && write_open) finish_writing();
    }
  }
  close_with_reset(fd);
  return out;
}

std::vector<uint8_t> exchange(std::span<const uint8_t> in, bool half_close, size_t responses) {
  for (int attempt = 0; attempt < 3; ++attempt)
    if (auto out = try_exchange(in, half_close, responses)) return std::move(*out);
  std::abort();  // three connections in a row never reached the server's accept loop
}

const fuzz::FixtureContext* find_context(const std::string& id) {
  for (const auto& c : fixture().contexts)
    if (c.id == id) return &c;
  return nullptr;
}

void check_response(const Request& req, uint32_t id, const MessageHeader& h, std::span<const uint8_t> p) {
  if (h.request_id != id) std::abort();
  if (h.type == MsgType::kError) {
    if (h.code == 0 || p.size() > kMaxErrorPayload) std::abort();
    return;
  }
  const fuzz::FixtureContext* c = find_context(req.id);
  if (!c) std::abort();  // an unknown id must be an error
  if (req.type == MsgType::kGetManifest) {
    auto m = parse_manifest(p);
    if (h.type != MsgType::kManifest || !m.ok() || serialize_manifest(*m) != serialize_manifest(c->manifest))
      std::abort();
    return;
  }
  if (h.type != MsgType::kChunk || p.size() < 8) std::abort();
  ByteReader r(p);
  const uint64_t head_bytes = r.u64();
  if (head_bytes > r.remaining() || (head_bytes > 0) != req.with_head) std::abort();
  auto head = r.bytes(head_bytes);
  auto body = r.bytes(r.remaining());
  if (req.with_head && !verify_head(c->manifest, req.level, head).ok()) std::abort();
  if (!verify_chunk(c->manifest, req.level, req.chunk, body).ok()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> in(data, data + size);
  fuzz::repair_message_checksums(in);

  // The leading valid requests of the input, in order (what the reader loop must answer); any
  // bytes after them make the server close the connection (at once, or at the end of input).
  struct Sent {
    Request req;
    uint32_t id;
  };
  std::deque<Sent> requests;
  std::span<const uint8_t> s(in);
  while (s.size() >= kMessageHeaderBytes) {
    auto h = decode_header(s);
    if (!h.ok() || h->payload_bytes > kMaxRequestPayload || h->payload_bytes > s.size() - kMessageHeaderBytes)
      break;
    if (h->type != MsgType::kGetManifest && h->type != MsgType::kGetChunk) break;
    auto req = decode_request_payload(h->type, s.subspan(kMessageHeaderBytes, size_t(h->payload_bytes)));
    // A request that does not parse is answered with an error (it has an id and a type).
    Request r = req.ok() ? *req : Request{h->type, "\x01", 0, 0, false};
    requests.push_back({r, h->request_id});
    s = s.subspan(kMessageHeaderBytes + size_t(h->payload_bytes));
  }
  const bool trailing = !s.empty();
  const size_t expected = requests.size();
  const std::vector<uint8_t> out = exchange(in, trailing, expected);

  size_t whole = 0;
  const size_t whole_bytes = fuzz::whole_messages(out, &whole);
  // Without trailing bytes every request is answered; with them the server closes and may cut
  // the response it was sending (and drop the ones not yet sent).
  if (!trailing && (whole != expected || whole_bytes != out.size())) std::abort();
  if (whole > expected) std::abort();  // a response to nothing
  if (whole_bytes < out.size()) {  // only the start of one more message may follow
    const auto rest = std::span<const uint8_t>(out).subspan(whole_bytes);
    if (rest.size() >= kMessageHeaderBytes && !decode_header(rest).ok()) std::abort();
  }
  for (std::span<const uint8_t> o(out.data(), whole_bytes); !o.empty();) {
    auto h = decode_header(o);
    const auto p = o.subspan(kMessageHeaderBytes, size_t(h->payload_bytes));
    check_response(requests.front().req, requests.front().id, *h, p);
    requests.pop_front();
    o = o.subspan(kMessageHeaderBytes + size_t(h->payload_bytes));
  }
  return 0;
}
