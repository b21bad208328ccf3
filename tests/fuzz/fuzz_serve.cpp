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
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <memory>

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

// Sends `in` on a fresh connection while reading what the server sends: until it closes when
// `half_close` (then the write side is shut after the input, so a server waiting for the rest of
// a request sees the end at once), else until `responses` whole messages have arrived.
std::vector<uint8_t> exchange(std::span<const uint8_t> in, bool half_close, size_t responses) {
  auto fd = connect_tcp("127.0.0.1", fixture().server->port(), 2000);
  fuzz::fixture_check(fd.status(), "connect");
  std::vector<uint8_t> out;
  size_t sent = 0, got = 0;
  bool write_open = true;
  auto finish_writing = [&] {
    if (half_close) ::shutdown(*fd, SHUT_WR);
    write_open = false;
  };
  if (in.empty()) finish_writing();
  while (half_close || got < responses) {
    pollfd p{*fd, short(POLLIN | (write_open ? POLLOUT : 0)), 0};
    if (::poll(&p, 1, 10000) <= 0) std::abort();  // the server neither answers nor closes: a hang
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      uint8_t buf[65536];
      const ssize_t n = ::recv(*fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.insert(out.end(), buf, buf + n);
      fuzz::whole_messages(out, &got);
    }
    if (write_open && (p.revents & POLLOUT)) {
      const ssize_t n = ::send(*fd, in.data() + sent, in.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) sent += size_t(n);
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) write_open = false;  // reset by the server
      if (sent == in.size() && write_open) finish_writing();
    }
  }
  ::close(*fd);
  return out;
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
