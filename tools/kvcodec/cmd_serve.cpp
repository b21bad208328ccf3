// kvcodec serve: serve stored contexts over TCP through an emulated link (stream.hpp).
//
//   kvcodec serve --store URI --port P [--host ADDR] [--bandwidth-gbps X | --trace FILE] [--rtt-ms Y]
//                 [--max-connections N]
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "cli.hpp"
#include "commands.hpp"
#include "stream_cli.hpp"
#include "kvcodec/stream.hpp"

namespace kvcodec::cli {

namespace {
volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

// The options of `kvcodec serve`.
struct ServeArgs {
  std::string store;
  std::optional<int> port;           // required; 0: any free port
  std::string host = "127.0.0.1";
  std::optional<double> bandwidth_gbps;  // or trace; neither: unlimited
  std::optional<std::string> trace;
  double rtt_ms = 0;
  int max_connections = ServerOptions{}.max_connections;
};

void declare(Command& cmd, ServeArgs& o) {
  cmd.option("--store", o.store, "file:DIR, redis://HOST:PORT[/DB] or redis-cluster://HOST:PORT[,...] (mem: would be empty)");
  cmd.option("--port", o.port, "TCP port (0: any free port, printed)", Range{0, 65535});
  cmd.option("--host", o.host, "IPv4 address to listen on (default 127.0.0.1)");
  cmd.option("--bandwidth-gbps", o.bandwidth_gbps, "emulated link bandwidth, Gb/s (default: unlimited)");
  cmd.option("--trace", o.trace, "emulated bandwidth over time: lines 'time_s gbps' (time 0 = first request)");
  cmd.option("--rtt-ms", o.rtt_ms, "emulated round-trip time added to every response (default 0)");
  cmd.option("--max-connections", o.max_connections, "connections served at once; more are closed at accept (default 64)",
             Range{1, 65536});
}

// The usage errors no single option shows; "" when there is none.
std::string check(const ServeArgs& a) {
  if (a.store.empty() || !a.port) return "--store and --port are required";
  if (a.bandwidth_gbps && a.trace) return "give --bandwidth-gbps or --trace, not both";
  if (a.store == "mem:") return "a mem: store is empty in a new process; use file:DIR or redis://";
  if (Status s = check_seconds(a.rtt_ms / 1e3, 60, "--rtt-ms / 1000"); !s.ok()) return std::string(s.message());
  if (a.bandwidth_gbps)
    if (Status s = check_link_gbps(*a.bandwidth_gbps, "--bandwidth-gbps"); !s.ok()) return std::string(s.message());
  return "";
}

}  // namespace

int cmd_serve(int argc, char** argv) {
  Command cmd("serve",
              "kvcodec serve --store URI --port P [--host ADDR] [--bandwidth-gbps X | --trace FILE] [--rtt-ms Y] "
              "[--max-connections N]");
  ServeArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (std::string error = check(a); !error.empty()) return cmd.usage_error(error);

  ServerOptions so;
  so.host = a.host;
  so.port = uint16_t(*a.port);
  so.max_connections = a.max_connections;
  so.link.rtt_s = a.rtt_ms / 1e3;
  if (a.bandwidth_gbps) {
    so.link.trace = LinkTrace::constant(*a.bandwidth_gbps);
  } else if (a.trace) {
    auto t = LinkTrace::load(*a.trace);
    if (!t.ok()) return cmd.fail(t.status());
    so.link.trace = *t;
  }
  auto store = open_cli_store(a.store);
  if (!store.ok()) return cmd.fail(store.status());
  auto server = Server::start(std::shared_ptr<Store>(std::move(*store)), so);
  if (!server.ok()) return cmd.fail(server.status());
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  char bandwidth[64] = "unlimited";
  if (a.bandwidth_gbps) std::snprintf(bandwidth, sizeof bandwidth, "%g Gb/s", *a.bandwidth_gbps);
  std::printf("serving %s on %s:%u (link: %s, rtt %.3g ms); Ctrl-C stops\n", a.store.c_str(), so.host.c_str(),
              (*server)->port(), a.trace ? a.trace->c_str() : bandwidth, a.rtt_ms);
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  (*server)->stop();
  const ServerStats st = (*server)->stats();
  std::printf("stopped: %llu connections, %llu requests (%llu errors), %.1f MB sent\n",
              static_cast<unsigned long long>(st.connections), static_cast<unsigned long long>(st.requests),
              static_cast<unsigned long long>(st.error_responses), double(st.bytes_sent) / 1e6);
  return 0;
}

}  // namespace kvcodec::cli
