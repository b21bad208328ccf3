// Server (stream.hpp): answers manifest and chunk requests from a Store, through a LinkEmulator.
//
// Threads: one accept thread; per connection a reader (parses requests and fetches the answer
// from the store at once, so store latency overlaps the link) and a sender (releases responses
// in request order on the emulated link's schedule). stop() shuts every socket down, which
// unblocks all of them.
//
// Hostile peers (issue 11): the reader stops reading while its connection's unsent responses,
// or all connections', are at their limit (TCP backpressure instead of an unbounded queue); a
// request must arrive, and a response leave, without a pause over request_timeout_ms (sockets
// have SO_SNDTIMEO); idle connections are closed after idle_timeout_ms, and when the
// connection limits are reached the idlest idle connection makes room for the new one.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <thread>

#include "byte_io.hpp"
#include "kvcodec/stream.hpp"
#include "transport_wire.hpp"

namespace kvcodec {

using namespace stream_detail;

namespace {
constexpr int kPollMs = 100;  // how often blocked threads look at the stop flag

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

struct Server::Impl {
  std::shared_ptr<Store> store;
  ServerOptions options;
  LinkEmulator link;
  int listen_fd = -1;
  uint16_t port = 0;
  std::atomic<bool> stopping{false};
  std::thread acceptor;

  std::mutex faults_mu;
  FaultInjection faults;

  mutable std::mutex stats_mu;
  ServerStats stats;

  // Manifests by context id (re-read on every manifest request, so a re-put is picked up).
  std::mutex manifests_mu;
  std::map<std::string, Manifest> manifests;

  struct Connection {
    int fd = -1;
    uint32_t peer = 0;  // IPv4 address
    std::thread thread;
    std::atomic<bool> done{false};
    std::atomic<bool> evicted{false};
    std::atomic<int64_t> last_active_ms{0};  // last request received or response sent
    uint64_t inflight = 0;                   // unsent response bytes (budget_mu)
  };
  std::mutex conns_mu;
  std::list<Connection> conns;

  // Response bytes answered but not yet sent (Connection::inflight and their sum).
  std::mutex budget_mu;
  std::condition_variable budget_cv;
  uint64_t inflight_total = 0;

  explicit Impl(std::shared_ptr<Store> s, const ServerOptions& o)
      : store(std::move(s)), options(o), link(o.link) {}

  void accept_loop();
  bool admit(uint32_t peer);
  bool wait_for_room(Connection& c);
  void hold(Connection& c, int64_t bytes);
  // Sent responses' buffers, kept for the next responses of any connection: their pages stay
  // resident (a fresh buffer per chunk cost page faults that delayed the first byte by 10-50 ms
  // per 7 MB). At most a quarter of max_inflight_bytes is kept.
  std::vector<uint8_t> reuse_buffer();
  void recycle(std::vector<uint8_t>&& buffer);
  std::mutex spare_mu;
  std::vector<std::vector<uint8_t>> spare;
  uint64_t spare_bytes = 0;
  void serve(Connection& c);
  // The response message, built in `out` (a recycled buffer: a chunk's head and body are read
  // from the store straight into it).
  void answer(const MessageHeader& h, std::span<const uint8_t> payload, MsgType* type, StatusCode* code,
              std::vector<uint8_t>& out);
  void record_request(const MessageHeader& h, StatusCode code, double seconds, uint64_t bytes) const;
  StatusOr<Manifest> manifest_for(const std::string& id);
  void send_response(int fd, std::vector<uint8_t>& msg, double arrival_s, double ready_s, bool is_chunk,
                     bool* dropped);
  void count(uint64_t requests, uint64_t errors, uint64_t bytes) {
    std::lock_guard lock(stats_mu);
    stats.requests += requests;
    stats.error_responses += errors;
    stats.bytes_sent += bytes;
  }
};

StatusOr<std::unique_ptr<Server>> Server::start(std::shared_ptr<Store> store, const ServerOptions& options) {
  if (!store) return InvalidArgument("server: no store");
  KVCODEC_RETURN_IF_ERROR(options.link.validate().with_context("server link"));
  if (options.max_connections < 1 || options.max_connections_per_peer < 1)
    return InvalidArgument("server: max_connections and max_connections_per_peer must be >= 1");
  if (options.idle_timeout_ms < 1 || options.request_timeout_ms < 1)
    return InvalidArgument("server: idle_timeout_ms and request_timeout_ms must be >= 1");
  if (options.max_inflight_bytes_per_connection < 1 || options.max_inflight_bytes < 1)
    return InvalidArgument("server: in-flight byte limits must be >= 1");
  auto impl = std::make_unique<Impl>(std::move(store), options);

  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(options.port);
  if (::inet_pton(AF_INET, options.host.c_str(), &addr.sin_addr) != 1)
    return InvalidArgument("server: listen address must be a numeric IPv4 address, got '" + options.host + "'");
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return IoError(std::string("server: socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    Status s = Unavailable("server: cannot listen on " + options.host + ":" + std::to_string(options.port) +
                           ": " + std::strerror(errno));
    ::close(fd);
    return s;
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  impl->listen_fd = fd;
  impl->port = ntohs(addr.sin_port);
  Impl* raw = impl.get();
  impl->acceptor = std::thread([raw] { raw->accept_loop(); });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { stop(); }
uint16_t Server::port() const noexcept { return impl_->port; }
void Server::restart_link_clock() { impl_->link.restart_clock(); }

void Server::inject(const FaultInjection& f) {
  std::lock_guard lock(impl_->faults_mu);
  impl_->faults.corrupt_chunks += f.corrupt_chunks;
  impl_->faults.drop_mid_chunk += f.drop_mid_chunk;
  impl_->faults.stall_mid_chunk += f.stall_mid_chunk;
  if (f.stall_ms) impl_->faults.stall_ms = f.stall_ms;
}

ServerStats Server::stats() const {
  std::lock_guard lock(impl_->stats_mu);
  return impl_->stats;
}

void Server::stop() {
  if (impl_->stopping.exchange(true)) return;
  impl_->link.shutdown();
  if (impl_->acceptor.joinable()) impl_->acceptor.join();
  ::close(impl_->listen_fd);
  std::lock_guard lock(impl_->conns_mu);
  for (auto& c : impl_->conns) ::shutdown(c.fd, SHUT_RDWR);
  for (auto& c : impl_->conns) {
    c.thread.join();
    ::close(c.fd);
  }
  impl_->conns.clear();
}

void Server::Impl::accept_loop() {
  while (!stopping) {
    pollfd p{listen_fd, POLLIN, 0};
    if (::poll(&p, 1, kPollMs) <= 0) continue;
    sockaddr_in peer_addr{};
    socklen_t peer_len = sizeof peer_addr;
    int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer_addr), &peer_len, SOCK_CLOEXEC);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const timeval send_timeout{options.request_timeout_ms / 1000, (options.request_timeout_ms % 1000) * 1000};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
    std::lock_guard lock(conns_mu);
    // Reap finished connections.
    for (auto it = conns.begin(); it != conns.end();) {
      if (it->done) {
        it->thread.join();
        ::close(it->fd);
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
    if (!admit(peer_addr.sin_addr.s_addr)) {
      ::close(fd);  // refused: the client sees the connection closed and reports it
      std::lock_guard s(stats_mu);
      ++stats.refused;
      continue;
    }
    {
      std::lock_guard s(stats_mu);
      ++stats.connections;
    }
    Connection& c = conns.emplace_back();
    c.fd = fd;
    c.peer = peer_addr.sin_addr.s_addr;
    c.last_active_ms = now_ms();
    c.thread = std::thread([this, &c] { serve(c); });
  }
}

// Whether a new connection from `peer` may be served (conns_mu held): within the limits, or after
// closing the idlest connection without responses in flight in the scope that is full (the
// peer's own connections first, else all). False when every connection of that scope is busy.
bool Server::Impl::admit(uint32_t peer) {
  int total = 0, same = 0;
  for (const Connection& c : conns)
    if (!c.done && !c.evicted) {
      ++total;
      same += c.peer == peer;
    }
  const bool peer_full = same >= options.max_connections_per_peer;
  if (!peer_full && total < options.max_connections) return true;
  Connection* victim = nullptr;
  {
    std::lock_guard budget(budget_mu);
    for (Connection& c : conns)
      if (!c.done && !c.evicted && (!peer_full || c.peer == peer) && c.inflight == 0 &&
          (!victim || c.last_active_ms < victim->last_active_ms))
        victim = &c;
  }
  if (!victim) return false;
  victim->evicted = true;
  ::shutdown(victim->fd, SHUT_RDWR);  // its reader and sender end; reaped later
  std::lock_guard s(stats_mu);
  ++stats.evicted;
  return true;
}

// Waits until connection c may read another request: its unsent responses and everyone's below
// their limits. False when the server stops or c is evicted.
bool Server::Impl::wait_for_room(Connection& c) {
  std::unique_lock lock(budget_mu);
  while (c.inflight >= options.max_inflight_bytes_per_connection || inflight_total >= options.max_inflight_bytes) {
    if (stopping || c.evicted) return false;
    budget_cv.wait_for(lock, std::chrono::milliseconds(kPollMs));
  }
  return !stopping && !c.evicted;
}

std::vector<uint8_t> Server::Impl::reuse_buffer() {
  std::lock_guard lock(spare_mu);
  if (spare.empty()) return {};
  std::vector<uint8_t> b = std::move(spare.back());
  spare.pop_back();
  spare_bytes -= b.capacity();
  return b;
}

void Server::Impl::recycle(std::vector<uint8_t>&& buffer) {
  constexpr size_t kMaxSpare = 8;
  if (buffer.capacity() < (64u << 10)) return;  // manifests and errors: not worth keeping
  std::lock_guard lock(spare_mu);
  if (spare.size() < kMaxSpare && spare_bytes + buffer.capacity() <= options.max_inflight_bytes / 4) {
    spare_bytes += buffer.capacity();
    spare.push_back(std::move(buffer));
  }
}

// Adds (bytes > 0: answered) or removes (< 0: sent or dropped) unsent response bytes of c.
void Server::Impl::hold(Connection& c, int64_t bytes) {
  {
    std::lock_guard lock(budget_mu);
    c.inflight += uint64_t(bytes);
    inflight_total += uint64_t(bytes);
    if (bytes > 0) {
      std::lock_guard s(stats_mu);
      stats.peak_inflight_bytes = std::max(stats.peak_inflight_bytes, inflight_total);
    }
  }
  if (bytes < 0) budget_cv.notify_all();
}

StatusOr<Manifest> Server::Impl::manifest_for(const std::string& id) {
  {
    std::lock_guard lock(manifests_mu);
    if (auto it = manifests.find(id); it != manifests.end()) return it->second;
  }
  KVCODEC_ASSIGN_OR_RETURN(Manifest m, get_manifest(*store, id));
  std::lock_guard lock(manifests_mu);
  manifests[id] = m;
  return m;
}

// kRequest for one request answered, and kStoreError / kChecksumFailure when the store failed or
// held corrupt bytes (a missing context or level, or a bad request, is neither).
void Server::Impl::record_request(const MessageHeader& h, StatusCode code, double seconds, uint64_t bytes) const {
  MetricEvent e;
  e.kind = MetricKind::kRequest;
  e.what = h.type == MsgType::kGetManifest ? "manifest" : "chunk";
  e.code = code;
  e.seconds = seconds;
  e.coded_bytes = bytes;
  options.metrics->record(e);
  MetricEvent f;
  f.code = code;
  f.what = "get";
  if (code == StatusCode::kChecksumMismatch || code == StatusCode::kCorruptData) {
    f.kind = MetricKind::kChecksumFailure;
    options.metrics->record(f);
  } else if (code == StatusCode::kUnavailable || code == StatusCode::kTimeout || code == StatusCode::kIoError ||
             code == StatusCode::kInternal) {
    f.kind = MetricKind::kStoreError;
    options.metrics->record(f);
  }
}

// The response to one request, as a whole message (header + payload); *type is its type and
// *code the error's code (kOk unless *type is kError).
void Server::Impl::answer(const MessageHeader& h, std::span<const uint8_t> payload, MsgType* type,
                          StatusCode* code, std::vector<uint8_t>& out_msg) {
  MessageHeader out;
  out.request_id = h.request_id;
  *code = StatusCode::kOk;
  auto error = [&](const Status& s) {
    out.type = MsgType::kError;
    out.code = uint32_t(s.code());
    *type = out.type;
    *code = s.code();
    const std::string text = std::string(s.message()).substr(0, kMaxErrorPayload);  // what clients accept
    out_msg = make_message(out, std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  };
  auto req = decode_request_payload(h.type, payload);
  if (!req.ok()) return error(req.status());
  if (req->type == MsgType::kGetManifest) {
    auto bytes = store->get(manifest_key(req->id));
    if (!bytes.ok()) {
      // A store that is down or slow: answer from the manifest served before, so clients can
      // still plan and recompute from text what the store cannot deliver.
      const StatusCode code = bytes.status().code();
      std::lock_guard lock(manifests_mu);
      auto it = manifests.find(req->id);
      if ((code != StatusCode::kUnavailable && code != StatusCode::kTimeout) || it == manifests.end())
        return error(bytes.status());
      out.type = *type = MsgType::kManifest;
      out_msg = make_message(out, serialize_manifest(it->second));
      return;
    }
    auto m = parse_manifest(*bytes);
    if (!m.ok()) return error(m.status().with_context("stored manifest"));
    {
      std::lock_guard lock(manifests_mu);
      manifests[req->id] = *m;
    }
    out.type = *type = MsgType::kManifest;
    out_msg = make_message(out, *bytes);
    return;
  }
  auto m = manifest_for(req->id);
  if (!m.ok()) return error(m.status());
  // Verified against the manifest here too: a value corrupted in the store is answered with an
  // error (the client then tries another level) instead of bytes the client would reject.
  // Payload: u64 head size, head, body; the header is written once the size is known.
  out_msg.clear();
  out_msg.resize(kMessageHeaderBytes + 8);
  if (req->with_head) {
    const Status hs = append_head(*store, req->id, *m, req->level, out_msg);
    if (!hs.ok()) return error(hs);
  }
  detail::store_le64(out_msg.data() + kMessageHeaderBytes, out_msg.size() - kMessageHeaderBytes - 8);
  const Status bs = append_chunk(*store, req->id, *m, req->level, req->chunk, out_msg);
  if (!bs.ok()) return error(bs);
  out.type = *type = MsgType::kChunk;
  out.payload_bytes = out_msg.size() - kMessageHeaderBytes;
  encode_header(out, out_msg.data());
}

void Server::Impl::send_response(int fd, std::vector<uint8_t>& msg, double arrival_s, double ready_s,
                                 bool is_chunk, bool* dropped) {
  bool corrupt = false, drop = false, stall = false;
  int stall_ms = 0;
  if (is_chunk) {
    std::lock_guard lock(faults_mu);
    if (faults.corrupt_chunks > 0) corrupt = faults.corrupt_chunks-- > 0;
    if (faults.drop_mid_chunk > 0) drop = faults.drop_mid_chunk-- > 0;
    if (faults.stall_mid_chunk > 0) stall = faults.stall_mid_chunk-- > 0;
    stall_ms = faults.stall_ms;
  }
  if (corrupt) msg[msg.size() - 1 - (msg.size() - kMessageHeaderBytes) / 3] ^= 0x40;  // in the body

  if (arrival_s < 0) {
    if (send_all(fd, msg).ok()) count(0, 0, msg.size());
    else *dropped = true;
    return;
  }
  // Ready when the reader had the bytes, not when this thread got to them: a sender thread that a
  // busy machine wakes late must not leave the emulated link idle (release times are absolute,
  // so it catches up).
  const LinkEmulator::Slot slot = link.schedule(arrival_s, ready_s, msg.size());
  // The header leaves when transmission starts, so the client's first-to-last-byte time is the
  // link time of the whole response.
  uint64_t sent = 0;
  const uint64_t half = msg.size() / 2;
  if (!link.sleep_until(link.release_time(slot, 0))) return;
  while (sent < msg.size()) {
    uint64_t next = sent == 0 ? kMessageHeaderBytes : std::min<uint64_t>(msg.size(), sent + link.slice_bytes(link.now_s()));
    if ((drop || stall) && sent < half && next > half) next = half;
    if (sent > 0 && !link.sleep_until(link.release_time(slot, next))) return;
    if (!send_all(fd, std::span(msg).subspan(sent, next - sent)).ok()) {
      *dropped = true;
      return;
    }
    count(0, 0, next - sent);
    sent = next;
    if (sent == half && drop) {
      ::shutdown(fd, SHUT_RDWR);
      *dropped = true;
      return;
    }
    if (sent == half && stall) {
      stall = false;
      if (!link.sleep_until(link.now_s() + stall_ms / 1e3)) return;
    }
  }
}

void Server::Impl::serve(Connection& c) {
  link.connection_opened();
  struct Pending {
    std::vector<uint8_t> msg;
    double arrival_s;
    double ready_s;  // the response existed (trace clock)
    bool is_chunk;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Pending> queue;
  bool reader_done = false;

  std::thread sender([&] {
    bool dropped = false;
    while (!dropped) {
      Pending p;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return !queue.empty() || reader_done; });
        if (queue.empty()) break;
        p = std::move(queue.front());
        queue.pop_front();
      }
      send_response(c.fd, p.msg, p.arrival_s, p.ready_s, p.is_chunk, &dropped);
      hold(c, -int64_t(p.msg.size()));
      c.last_active_ms = now_ms();
      recycle(std::move(p.msg));
    }
    if (dropped) ::shutdown(c.fd, SHUT_RDWR);  // unblocks the reader
  });

  uint8_t hdr[kMessageHeaderBytes];
  const int timeout = options.request_timeout_ms;
  while (!stopping && wait_for_room(c)) {
    // Wait for a request, looking at the stop flag and the idle time now and then.
    pollfd p{c.fd, POLLIN, 0};
    int rc = ::poll(&p, 1, kPollMs);
    if (rc == 0) {
      bool idle;
      {
        std::lock_guard lock(budget_mu);
        idle = c.inflight == 0;
      }
      if (idle && now_ms() - c.last_active_ms > options.idle_timeout_ms) {
        std::lock_guard s(stats_mu);
        ++stats.idle_closed;
        break;
      }
      continue;
    }
    if (rc < 0 || !recv_exact(c.fd, hdr, timeout).ok()) break;
    auto h = decode_header(hdr);
    if (!h.ok() || h->payload_bytes > kMaxRequestPayload ||
        (h->type != MsgType::kGetManifest && h->type != MsgType::kGetChunk))
      break;  // a peer that does not speak the protocol: close
    std::vector<uint8_t> payload(h->payload_bytes);
    if (!recv_exact(c.fd, payload, timeout).ok()) break;
    c.last_active_ms = now_ms();
    // Chunk requests go through the emulated link (and start its clock); manifest requests are
    // the client's setup and are answered at once.
    const double arrival = h->type == MsgType::kGetChunk ? link.now_s() : -1;
    MsgType type = MsgType::kError;
    StatusCode code = StatusCode::kOk;
    const auto started = options.metrics ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    std::vector<uint8_t> msg = reuse_buffer();
    answer(*h, payload, &type, &code, msg);
    count(1, type == MsgType::kError ? 1 : 0, 0);
    if (options.metrics)
      record_request(*h, code, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(),
                     msg.size());
    hold(c, int64_t(msg.size()));
    std::lock_guard lock(mu);
    const double ready = arrival >= 0 ? link.now_s() : -1;
    queue.push_back({std::move(msg), arrival, ready, type == MsgType::kChunk});
    cv.notify_one();
  }
  {
    std::lock_guard lock(mu);
    reader_done = true;
    for (const Pending& p : queue) hold(c, -int64_t(p.msg.size()));
    queue.clear();
  }
  cv.notify_one();
  ::shutdown(c.fd, SHUT_RDWR);
  sender.join();
  link.connection_closed();  // the fd is closed when the connection is reaped (under conns_mu)
  c.done = true;
}

}  // namespace kvcodec
