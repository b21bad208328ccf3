// Captures real fetch traffic as seed corpora for the whole-loop fuzz targets:
//   kvcodec_fuzz_capture DIR  ->  DIR/serve/<fetch>-<k>   what the client sent on its k-th connection
//                                 DIR/fetch/<fetch>       what the server sent, connections joined
//                                                         by fuzz_fetch's "--KVCONN--"
// A Server over the fixture contexts (stream_fixture.hpp) and fetch_context talk through a
// recording relay on loopback; some fetches run with server-side faults (a corrupt chunk, a
// connection dropped mid-chunk, a stall) so the captures include retries and reconnections.
// The committed corpora in tests/fuzz/corpus/ were written by this tool.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <thread>

#include "fuzz/stream_fixture.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/stream.hpp"

namespace {

using namespace kvcodec;
using namespace kvcodec::stream_detail;

// Forwards connections from its own port to `target`, recording both directions per connection.
class Relay {
 public:
  struct Conn {
    std::vector<uint8_t> up, down;  // client -> server, server -> client
  };
  explicit Relay(uint16_t target) : target_(target) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd_, 8) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      std::abort();
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~Relay() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : pumps_) t.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  // The connections recorded since the last call (after each has closed).
  std::vector<Conn> take() {
    for (auto& t : pumps_) t.join();
    pumps_.clear();
    std::lock_guard lock(mu_);
    std::vector<Conn> out;
    out.swap(conns_);
    return out;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 10) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      auto s = connect_tcp("127.0.0.1", target_, 2000);
      fuzz::fixture_check(s.status(), "relay connect");
      size_t index;
      {
        std::lock_guard lock(mu_);
        index = conns_.size();
        conns_.emplace_back();
      }
      pumps_.emplace_back([this, c, s = *s, index] { pump(c, s, index); });
    }
  }
  void pump(int client, int server, size_t index) {
    bool open[2] = {true, true};  // client -> server, server -> client
    while (open[0] || open[1]) {
      pollfd p[2] = {{client, short(open[0] ? POLLIN : 0), 0}, {server, short(open[1] ? POLLIN : 0), 0}};
      if (::poll(p, 2, 100) <= 0) continue;
      for (int d = 0; d < 2; ++d) {
        if (!open[d] || !(p[d].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        uint8_t buf[65536];
        const ssize_t n = ::recv(p[d].fd, buf, sizeof buf, 0);
        const int to = d == 0 ? server : client;
        if (n <= 0) {
          ::shutdown(to, SHUT_WR);
          open[d] = false;
          continue;
        }
        {
          std::lock_guard lock(mu_);
          auto& rec = d == 0 ? conns_[index].up : conns_[index].down;
          rec.insert(rec.end(), buf, buf + n);
        }
        if (!send_all(to, std::span(buf, size_t(n))).ok()) open[d] = false;
      }
    }
    ::close(client);
    ::close(server);
  }

  uint16_t target_, port_ = 0;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> pumps_;  // touched by the acceptor and by take() between fetches
  std::mutex mu_;
  std::vector<Conn> conns_;
};

void write(const std::filesystem::path& p, const std::vector<uint8_t>& b) {
  fuzz::fixture_check(write_file(p.string(), b.data(), b.size()), "write");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: kvcodec_fuzz_capture DIR\n");
    return 2;
  }
  const std::filesystem::path root = argv[1];
  std::filesystem::create_directories(root / "serve");
  std::filesystem::create_directories(root / "fetch");
  auto st = open_store("mem:");
  fuzz::fixture_check(st.status(), "mem store");
  std::shared_ptr<Store> store(std::move(*st));
  const auto contexts = fuzz::put_fixture_contexts(*store);
  auto server = Server::start(store, ServerOptions{});
  fuzz::fixture_check(server.status(), "server");

  struct Case {
    const char* name;
    const char* id;
    FaultInjection faults;
    Objective objective;
  };
  FaultInjection corrupt, drop, none;
  corrupt.corrupt_chunks = 1;
  drop.drop_mid_chunk = 1;
  const Case cases[] = {{"ctx0", "ctx0", none, Objective::kBestQualityWithinSlo},
                        {"ctx0-ttft", "ctx0", none, Objective::kMinTtft},
                        {"ctx1", "ctx1", none, Objective::kBestQualityWithinSlo},
                        {"ctx0-corrupt", "ctx0", corrupt, Objective::kBestQualityWithinSlo},
                        {"ctx0-drop", "ctx0", drop, Objective::kBestQualityWithinSlo},
                        {"missing", "nope", none, Objective::kBestQualityWithinSlo}};
  for (const Case& c : cases) {
    Relay relay((*server)->port());
    (*server)->inject(c.faults);
    FetchOptions o;
    o.port = relay.port();
    o.id = c.id;
    o.decode_gbps = 1;
    o.controller.objective = c.objective;
    o.recompute = [](uint32_t, uint32_t, std::span<const int32_t>, const KVView&) { return Status::Ok(); };
    KVCache out;
    FetchReport report;
    const Status s = fetch_context(o, &out, &report);
    std::printf("%s: %s, %zu failure(s)\n", c.name, s.ok() ? "ok" : s.to_string().c_str(), report.failures.size());
    std::vector<uint8_t> down;
    const auto conns = relay.take();
    for (size_t k = 0; k < conns.size(); ++k) {
      write(root / "serve" / (std::string(c.name) + "-" + std::to_string(k)), conns[k].up);
      if (k > 0) down.insert(down.end(), {'-', '-', 'K', 'V', 'C', 'O', 'N', 'N', '-', '-'});
      down.insert(down.end(), conns[k].down.begin(), conns[k].down.end());
    }
    write(root / "fetch" / c.name, down);
  }
  return 0;
}
