// kvcodec serve: serve stored contexts over TCP through an emulated link (stream.hpp).
//
//   kvcodec serve --store URI --port P [--host ADDR] [--bandwidth-gbps X | --trace FILE] [--rtt-ms Y]
//                 [--max-connections N] [--metrics-port N]
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "cli.hpp"
#include "commands.hpp"
#include "metrics_http.hpp"
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
  std::optional<int> metrics_port;  // Prometheus text on http://127.0.0.1:PORT/metrics (0: any free port)
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
  cmd.option("--metrics-port", o.metrics_port,
             "serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0: any free port, printed)", Range{0, 65535});
}

// The server's own counters (ServerStats), next to the sink's families in the exposition.
std::string server_stats_text(const ServerStats& st) {
  auto counter = [](const char* name, const char* help, uint64_t v) {
    return prometheus_family(name, "counter", help, std::string(name) + " " + std::to_string(v) + "\n");
  };
  return counter("kvcodec_server_bytes_sent_total", "Bytes sent to clients (responses, headers included).", st.bytes_sent) +
         counter("kvcodec_server_connections_total", "Connections accepted.", st.connections) +
         counter("kvcodec_server_connections_refused_total", "Connections closed at accept: every slot busy.", st.refused) +
         counter("kvcodec_server_connections_evicted_total", "Idle connections closed to make room.", st.evicted) +
         counter("kvcodec_server_connections_idle_closed_total", "Connections closed after the idle timeout.",
                 st.idle_closed);
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
              "[--max-connections N] [--metrics-port N]");
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
  PrometheusSink metrics;
  if (a.metrics_port) so.metrics = &metrics;
  auto server = Server::start(std::shared_ptr<Store>(std::move(*store)), so);
  if (!server.ok()) return cmd.fail(server.status());
  std::unique_ptr<MetricsHttpServer> http;
  if (a.metrics_port) {
    const Server* srv = server->get();
    auto h = MetricsHttpServer::start("127.0.0.1", uint16_t(*a.metrics_port),
                                      [&metrics, srv] { return metrics.render() + server_stats_text(srv->stats()); });
    if (!h.ok()) return cmd.fail(h.status());
    http = std::move(*h);
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  char bandwidth[64] = "unlimited";
  if (a.bandwidth_gbps) std::snprintf(bandwidth, sizeof bandwidth, "%g Gb/s", *a.bandwidth_gbps);
  std::printf("serving %s on %s:%u (link: %s, rtt %.3g ms); Ctrl-C stops\n", a.store.c_str(), so.host.c_str(),
              (*server)->port(), a.trace ? a.trace->c_str() : bandwidth, a.rtt_ms);
  if (http) std::printf("metrics on http://127.0.0.1:%u/metrics\n", http->port());
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (http) http->stop();
  (*server)->stop();
  const ServerStats st = (*server)->stats();
  std::printf("stopped: %llu connections, %llu requests (%llu errors), %.1f MB sent\n",
              static_cast<unsigned long long>(st.connections), static_cast<unsigned long long>(st.requests),
              static_cast<unsigned long long>(st.error_responses), double(st.bytes_sent) / 1e6);
  return 0;
}

}  // namespace kvcodec::cli
