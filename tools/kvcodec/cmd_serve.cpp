// kvcodec serve: serve stored contexts over TCP through an emulated link (stream.hpp).
//
//   kvcodec serve --store URI --port P [--host ADDR] [--bandwidth-gbps X | --trace FILE] [--rtt-ms Y]
//                 [--max-connections N]
#include <csignal>
#include <cstdio>
#include <thread>

#include "cli.hpp"
#include "commands.hpp"
#include "stream_cli.hpp"
#include "kvcodec/stream.hpp"

namespace kvcodec::cli {

namespace {
volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }
}  // namespace

int cmd_serve(int argc, char** argv) {
  Args a("serve",
         "kvcodec serve --store URI --port P [--host ADDR] [--bandwidth-gbps X | --trace FILE] [--rtt-ms Y] [--max-connections N]");
  a.option("--store", "file:DIR, redis://HOST:PORT[/DB] or redis-cluster://HOST:PORT[,...] (mem: would be empty)")
      .option("--port", "TCP port (0: any free port, printed)")
      .option("--host", "IPv4 address to listen on (default 127.0.0.1)")
      .option("--bandwidth-gbps", "emulated link bandwidth, Gb/s (default: unlimited)")
      .option("--trace", "emulated bandwidth over time: lines 'time_s gbps' (time 0 = first request)")
      .option("--rtt-ms", "emulated round-trip time added to every response (default 0)")
      .option("--max-connections", "connections served at once; more are closed at accept (default 64)");
  if (!a.parse(argc, argv)) return a.exit_code();
  if (!a.has("--store") || !a.has("--port")) return a.fail("--store and --port are required");
  if (a.has("--bandwidth-gbps") && a.has("--trace")) return a.fail("give --bandwidth-gbps or --trace, not both");
  const int64_t port = a.get_int("--port", 0);
  const double gbps = a.get_double("--bandwidth-gbps", 0);
  const double rtt_ms = a.get_double("--rtt-ms", 0);
  const int64_t max_connections = a.get_int("--max-connections", ServerOptions{}.max_connections);
  if (a.failed()) return 2;
  if (max_connections < 1 || max_connections > 65536) return a.fail("--max-connections must be in 1..65536");
  if (port < 0 || port > 65535) return a.fail("--port must be in 0..65535");
  if (a.get("--store") == "mem:") return a.fail("a mem: store is empty in a new process; use file:DIR or redis://");

  ServerOptions so;
  so.host = a.get("--host", "127.0.0.1");
  so.port = uint16_t(port);
  so.max_connections = int(max_connections);
  so.link.rtt_s = rtt_ms / 1e3;
  if (Status s = check_seconds(so.link.rtt_s, 60, "--rtt-ms / 1000"); !s.ok()) return a.fail(std::string(s.message()));
  if (a.has("--bandwidth-gbps")) {
    if (Status s = check_link_gbps(gbps, "--bandwidth-gbps"); !s.ok()) return a.fail(std::string(s.message()));
    so.link.trace = LinkTrace::constant(gbps);
  } else if (a.has("--trace")) {
    auto t = LinkTrace::load(a.get("--trace"));
    if (!t.ok()) return a.fail(t.status());
    so.link.trace = *t;
  }
  auto store = open_cli_store(a.get("--store"));
  if (!store.ok()) return a.fail(store.status());
  auto server = Server::start(std::shared_ptr<Store>(std::move(*store)), so);
  if (!server.ok()) return a.fail(server.status());
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::printf("serving %s on %s:%u (link: %s, rtt %.3g ms); Ctrl-C stops\n", a.get("--store").c_str(),
              so.host.c_str(), (*server)->port(),
              a.has("--trace") ? a.get("--trace").c_str()
                               : (a.has("--bandwidth-gbps") ? (a.get("--bandwidth-gbps") + " Gb/s").c_str() : "unlimited"),
              rtt_ms);
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
