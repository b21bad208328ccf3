// `kvcodec serve --metrics-port`: the library's metric events (kvcodec/metrics.hpp) collected in
// Prometheus form, and a small HTTP/1.1 responder that serves them as text exposition format
// 0.0.4 on GET /metrics (docs/integration.md lists the metrics).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvcodec/metrics.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec::cli {

// A MetricsSink that keeps counters and histograms (thread-safe) and renders them as Prometheus
// text: names kvcodec_*, counters ending in _total, durations in seconds as histograms.
class PrometheusSink : public MetricsSink {
 public:
  void record(const MetricEvent& e) noexcept override;
  // Every metric family, each with its HELP and TYPE lines.
  std::string render() const;

  struct Histogram {
    std::vector<uint64_t> counts;  // per bucket (not cumulative), the last one +Inf
    double sum = 0;
    uint64_t count = 0;
  };

 private:
  void observe(const std::string& name, const std::string& labels, const std::vector<double>& bounds, double v);
  void add(const std::string& name, const std::string& labels, double v);
  mutable std::mutex mu_;
  std::map<std::string, std::map<std::string, double>> counters_;        // name -> labels -> value
  std::map<std::string, std::map<std::string, Histogram>> histograms_;  // name -> labels -> histogram
};

// One metric family's lines: "# HELP name help", "# TYPE name type", then `samples` (each a whole
// line "name{labels} value\n"). For callers adding their own counters to the exposition.
std::string prometheus_family(const std::string& name, const std::string& type, const std::string& help,
                              const std::string& samples);

// Serves GET /metrics on host:port (0: any free port) from a background thread, one connection
// at a time, each bounded: the request head must arrive within 2 s and fit in 8 KiB, and the
// connection is closed after the response. Other paths get 404, other methods 405, anything
// that is not an HTTP/1.x request 400. `body` is called per scrape, on that thread.
class MetricsHttpServer {
 public:
  static StatusOr<std::unique_ptr<MetricsHttpServer>> start(const std::string& host, uint16_t port,
                                                            std::function<std::string()> body);
  ~MetricsHttpServer();
  uint16_t port() const noexcept { return port_; }
  void stop();

 private:
  MetricsHttpServer() = default;
  void loop();
  void respond(int fd);
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::function<std::string()> body_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace kvcodec::cli
