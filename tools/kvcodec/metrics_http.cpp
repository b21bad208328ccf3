#include "metrics_http.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace kvcodec::cli {

namespace {

// Seconds: from 100 us (a small chunk decoded) to 10 s (a store timing out).
const std::vector<double> kSecondsBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                             0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,     10};
const std::vector<double> kBitsBuckets = {0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32};

struct Family {
  const char* name;
  const char* type;
  const char* help;
};

// Every family the sink exports, in the order rendered (present with zero values from the start,
// so a scraper sees every series' name before the first event).
const Family kFamilies[] = {
    {"kvcodec_encode_seconds", "histogram", "Wall time of encoding one frame, seconds."},
    {"kvcodec_encode_input_bytes_total", "counter", "Uncompressed KV bytes encoded."},
    {"kvcodec_encode_output_bytes_total", "counter", "Frame bytes written by the encoder."},
    {"kvcodec_encode_bits_per_element", "histogram", "Bits per element of each encoded frame."},
    {"kvcodec_frames_encoded_total", "counter", "Frames encoded, by quality level."},
    {"kvcodec_decode_seconds", "histogram", "Wall time of decoding one frame or chunk, seconds."},
    {"kvcodec_decode_input_bytes_total", "counter", "Frame or chunk bytes decoded."},
    {"kvcodec_decode_output_bytes_total", "counter", "Uncompressed KV bytes written by the decoder."},
    {"kvcodec_chunks_fetched_total", "counter", "Chunks fetched into place, by level delivered (text: recomputed)."},
    {"kvcodec_text_fallbacks_total", "counter", "Chunks recomputed from their text instead of decoded."},
    {"kvcodec_checksum_failures_total", "counter", "Bytes that failed checksum verification, by where."},
    {"kvcodec_store_errors_total", "counter", "Failed store operations (missing keys excluded), by status code."},
    {"kvcodec_server_requests_total", "counter", "Requests answered by the server, by type."},
    {"kvcodec_server_errors_total", "counter", "Requests answered with an error, by status code."},
    {"kvcodec_server_request_seconds", "histogram", "Time to build an answer (store reads included), seconds."},
    {"kvcodec_server_response_bytes_total", "counter", "Response bytes answered, by request type."},
};

std::string label(const char* key, const std::string& value) { return std::string(key) + "=\"" + value + "\""; }

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string with_labels(const std::string& name, const std::string& labels) {
  return labels.empty() ? name : name + "{" + labels + "}";
}

}  // namespace

std::string prometheus_family(const std::string& name, const std::string& type, const std::string& help,
                              const std::string& samples) {
  return "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + samples;
}

void PrometheusSink::add(const std::string& name, const std::string& labels, double v) { counters_[name][labels] += v; }

void PrometheusSink::observe(const std::string& name, const std::string& labels, const std::vector<double>& bounds,
                             double v) {
  Histogram& h = histograms_[name][labels];
  if (h.counts.empty()) h.counts.assign(bounds.size() + 1, 0);
  size_t b = 0;
  while (b < bounds.size() && v > bounds[b]) ++b;
  ++h.counts[b];
  h.sum += v;
  ++h.count;
}

void PrometheusSink::record(const MetricEvent& e) noexcept {
  try {
    std::lock_guard lock(mu_);
    const std::string level = label("level", e.level < 0 ? "text" : std::to_string(e.level));
    const std::string code = label("code", status_code_name(e.code));
    switch (e.kind) {
      case MetricKind::kEncode:
        observe("kvcodec_encode_seconds", "", kSecondsBuckets, e.seconds);
        add("kvcodec_encode_input_bytes_total", "", double(e.raw_bytes));
        add("kvcodec_encode_output_bytes_total", "", double(e.coded_bytes));
        if (e.elements) observe("kvcodec_encode_bits_per_element", "", kBitsBuckets, 8.0 * double(e.coded_bytes) / double(e.elements));
        add("kvcodec_frames_encoded_total", level, 1);
        break;
      case MetricKind::kDecode:
        observe("kvcodec_decode_seconds", "", kSecondsBuckets, e.seconds);
        add("kvcodec_decode_input_bytes_total", "", double(e.coded_bytes));
        add("kvcodec_decode_output_bytes_total", "", double(e.raw_bytes));
        break;
      case MetricKind::kChunkFetched: add("kvcodec_chunks_fetched_total", level, 1); break;
      case MetricKind::kTextFallback: add("kvcodec_text_fallbacks_total", "", 1); break;
      case MetricKind::kChecksumFailure: add("kvcodec_checksum_failures_total", label("where", e.what), 1); break;
      case MetricKind::kStoreError: add("kvcodec_store_errors_total", code, 1); break;
      case MetricKind::kRequest: {
        const std::string type = label("type", e.what);
        add("kvcodec_server_requests_total", type, 1);
        if (e.code != StatusCode::kOk) add("kvcodec_server_errors_total", code, 1);
        observe("kvcodec_server_request_seconds", type, kSecondsBuckets, e.seconds);
        add("kvcodec_server_response_bytes_total", type, double(e.coded_bytes));
        break;
      }
    }
  } catch (...) {  // allocation failure: the event is lost, the caller is not disturbed
  }
}

std::string PrometheusSink::render() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const Family& f : kFamilies) {
    std::string samples;
    const bool histogram = std::strcmp(f.type, "histogram") == 0;
    if (!histogram) {
      auto it = counters_.find(f.name);
      if (it == counters_.end() || it->second.empty()) samples = std::string(f.name) + " 0\n";
      else
        for (const auto& [labels, v] : it->second) samples += with_labels(f.name, labels) + " " + number(v) + "\n";
    } else {
      const auto& bounds = std::strcmp(f.name, "kvcodec_encode_bits_per_element") == 0 ? kBitsBuckets : kSecondsBuckets;
      std::map<std::string, Histogram> series;
      if (auto it = histograms_.find(f.name); it != histograms_.end()) series = it->second;
      if (series.empty()) series[""].counts.assign(bounds.size() + 1, 0);
      for (const auto& [labels, h] : series) {
        const std::string sep = labels.empty() ? "" : labels + ",";
        uint64_t cumulative = 0;
        for (size_t b = 0; b <= bounds.size(); ++b) {
          cumulative += h.counts[b];
          const std::string le = b < bounds.size() ? number(bounds[b]) : "+Inf";
          samples += std::string(f.name) + "_bucket{" + sep + "le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
        }
        samples += with_labels(std::string(f.name) + "_sum", labels) + " " + number(h.sum) + "\n";
        samples += with_labels(std::string(f.name) + "_count", labels) + " " + std::to_string(h.count) + "\n";
      }
    }
    out += prometheus_family(f.name, f.type, f.help, samples);
  }
  return out;
}

// ---- HTTP ----------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::start(const std::string& host, uint16_t port,
                                                                      std::function<std::string()> body) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1)
    return InvalidArgument("metrics: listen address must be a numeric IPv4 address, got '" + host + "'");
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return IoError(std::string("metrics: socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 16) != 0) {
    Status s = Unavailable("metrics: cannot listen on " + host + ":" + std::to_string(port) + ": " + std::strerror(errno));
    ::close(fd);
    return s;
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
  s->listen_fd_ = fd;
  s->port_ = ntohs(addr.sin_port);
  s->body_ = std::move(body);
  MetricsHttpServer* raw = s.get();
  s->thread_ = std::thread([raw] { raw->loop(); });
  return s;
}

MetricsHttpServer::~MetricsHttpServer() { stop(); }

void MetricsHttpServer::stop() {
  if (stopping_.exchange(true)) return;
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
}

void MetricsHttpServer::loop() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    const timeval timeout{2, 0};  // a slow or silent peer holds the responder for at most this long
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    respond(fd);
    // Lingering close: the peer reads the whole response before the connection goes, even if it
    // sent more than was read (closing with unread input would reset the connection).
    ::shutdown(fd, SHUT_WR);
    char sink[4096];
    for (size_t drained = 0; drained < (64u << 10);) {
      const ssize_t n = ::recv(fd, sink, sizeof sink, 0);
      if (n <= 0) break;
      drained += size_t(n);
    }
    ::close(fd);
  }
}

namespace {

std::string response(const char* status, const std::string& content_type, const std::string& body, bool head_only,
                     const char* extra_header = "") {
  return std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + content_type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_header + "Connection: close\r\n\r\n" +
         (head_only ? "" : body);
}

}  // namespace

void MetricsHttpServer::respond(int fd) {
  constexpr size_t kMaxHead = 8192;
  std::string req;
  char buf[1024];
  while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos && req.size() <= kMaxHead) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;  // closed, or timed out: answer what arrived
    req.append(buf, size_t(n));
  }
  const std::string text = "text/plain; charset=utf-8";
  std::string out;
  const size_t eol = req.find_first_of("\r\n");
  const std::string line = req.substr(0, eol);
  const size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  const bool complete = req.find("\r\n\r\n") != std::string::npos || req.find("\n\n") != std::string::npos;
  if (req.size() > kMaxHead || !complete || sp1 == std::string::npos || sp2 == sp1 ||
      line.compare(sp2 + 1, 7, "HTTP/1.") != 0) {
    out = response("400 Bad Request", text, "bad request\n", false);
  } else {
    const std::string method = line.substr(0, sp1);
    std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    if (method != "GET" && method != "HEAD")
      out = response("405 Method Not Allowed", text, "only GET\n", false, "Allow: GET, HEAD\r\n");
    else if (target != "/metrics")
      out = response("404 Not Found", text, "not found: try /metrics\n", method == "HEAD");
    else
      out = response("200 OK", "text/plain; version=0.0.4; charset=utf-8", body_(), method == "HEAD");
  }
  for (size_t sent = 0; sent < out.size();) {
    const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += size_t(n);
  }
}

}  // namespace kvcodec::cli
