// Metrics (issue 9 item 6): the library's MetricsSink events (kvcodec/metrics.hpp) and
// `kvcodec serve --metrics-port`, scraped over HTTP: the counters move by exactly the traffic
// sent, the text parses as Prometheus exposition format 0.0.4, and the responder answers bad
// requests and other paths without blocking the data server.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_test_util.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/metrics.hpp"

namespace kvcodec {
namespace {

using test::CliTest;
using test::RunResult;
using test::slurp;

constexpr KVShape kShape{2, 40, 2, 16};

// ---- The library's events -----------------------------------------------------------------------

struct Recorder : MetricsSink {
  std::mutex mu;
  std::vector<MetricEvent> events;
  void record(const MetricEvent& e) noexcept override {
    std::lock_guard lock(mu);
    events.push_back(e);
  }
};

TEST_F(CliTest, MetricsSinkSeesEncodeDecodeAndChecksumFailures) {
  auto kv = load_kv(make_cache("in.safetensors", DType::kF16, kShape));
  ASSERT_TRUE(kv.ok());
  Recorder sink;
  EncodeOptions eo;
  eo.level = 3;
  eo.chunk_tokens = 16;
  eo.metrics = &sink;
  std::vector<uint8_t> frame(max_encoded_size(kv->shape, kv->dtype, eo));
  auto n = encode_into(kv->view(), eo, frame);
  ASSERT_TRUE(n.ok());
  frame.resize(*n);
  ASSERT_EQ(sink.events.size(), 1u);
  const MetricEvent enc = sink.events[0];
  EXPECT_EQ(enc.kind, MetricKind::kEncode);
  EXPECT_EQ(enc.level, 3);
  EXPECT_EQ(enc.coded_bytes, *n);
  EXPECT_EQ(enc.raw_bytes, kv->data.size());
  EXPECT_EQ(enc.elements, kShape.elements());
  EXPECT_GE(enc.seconds, 0);

  // A whole frame, then one chunk (chunk 1: tokens 16..31).
  auto out = KVCache::allocate(kv->dtype, kv->shape);
  ASSERT_TRUE(out.ok());
  DecodeOptions d;
  d.metrics = &sink;
  ASSERT_TRUE(decode_into(frame, out->view(), d).ok());
  ASSERT_EQ(sink.events.size(), 2u);
  EXPECT_EQ(sink.events[1].kind, MetricKind::kDecode);
  EXPECT_EQ(sink.events[1].level, 3);
  EXPECT_EQ(sink.events[1].raw_bytes, kv->data.size());
  auto info = read_frame_info(frame);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(sink.events[1].coded_bytes, info->payload_bytes());
  const ChunkInfo& c1 = info->chunks[1];
  std::span<const uint8_t> head(frame.data(), info->head_bytes), body(frame.data() + c1.offset, c1.size);
  ASSERT_TRUE(decode_chunk_into(head, 1, body, out->view(), d).ok());
  ASSERT_EQ(sink.events.size(), 3u);
  EXPECT_EQ(sink.events[2].kind, MetricKind::kDecode);
  EXPECT_EQ(sink.events[2].coded_bytes, c1.size);
  EXPECT_EQ(sink.events[2].elements, uint64_t(kShape.layers) * 2 * 16 * kShape.channels());

  // A flipped byte in a chunk body: the decode fails and a checksum failure is recorded.
  std::vector<uint8_t> bad(body.begin(), body.end());
  bad[bad.size() / 2] ^= 0x10;
  EXPECT_EQ(decode_chunk_into(head, 1, bad, out->view(), d).code(), StatusCode::kChecksumMismatch);
  ASSERT_EQ(sink.events.size(), 4u);
  EXPECT_EQ(sink.events[3].kind, MetricKind::kChecksumFailure);

  // Without a sink nothing is recorded (and nothing else changes: the same bytes).
  eo.metrics = nullptr;
  std::vector<uint8_t> again(max_encoded_size(kv->shape, kv->dtype, eo));
  auto m = encode_into(kv->view(), eo, again);
  ASSERT_TRUE(m.ok());
  again.resize(*m);
  EXPECT_EQ(again, frame);
  EXPECT_EQ(sink.events.size(), 4u);
}

// ---- Scraping `kvcodec serve --metrics-port` ------------------------------------------------------

// Sends `request` to 127.0.0.1:port and returns everything the peer sends until it closes.
std::string http(uint16_t port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const timeval timeout{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return "";
  }
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, size_t(n));
  ::close(fd);
  return out;
}

std::string body_of(const std::string& response) {
  const size_t p = response.find("\r\n\r\n");
  return p == std::string::npos ? "" : response.substr(p + 4);
}

// A parsed exposition: sample values by "name{labels}", and the TYPE of each family. Fails the
// test on any line that is not a comment or a well-formed sample of a declared family.
struct Exposition {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
  std::set<std::string> helps;

  double at(const std::string& key) const {
    auto it = samples.find(key);
    EXPECT_NE(it, samples.end()) << "no sample " << key;
    return it == samples.end() ? -1 : it->second;
  }
};

Exposition parse_exposition(const std::string& text) {
  Exposition e;
  static const std::regex sample(
      R"re(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})? ([-+]?[0-9.]+([eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN)$)re");
  static const std::regex meta(R"re(^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$)re");
  std::istringstream in(text);
  std::smatch m;
  for (std::string line; std::getline(in, line);) {
    if (std::regex_match(line, m, meta)) {
      if (m[1] == "HELP") e.helps.insert(m[2]);
      else e.types[m[2]] = m[3];
      continue;
    }
    const bool is_sample = std::regex_match(line, m, sample);
    EXPECT_TRUE(is_sample) << "not a sample line: '" << line << "'";
    if (!is_sample) continue;
    std::string family = m[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!e.types.count(family) && family.size() > std::strlen(suffix) &&
          family.compare(family.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
        family.resize(family.size() - std::strlen(suffix));
    EXPECT_TRUE(e.types.count(family)) << "sample before its TYPE line: " << line;
    EXPECT_TRUE(e.helps.count(family)) << "sample without a HELP line: " << line;
    EXPECT_EQ(family.rfind("kvcodec_", 0), 0u) << line;
    if (e.types[family] == "counter") EXPECT_TRUE(family.size() > 6 && family.ends_with("_total")) << family;
    e.samples[std::string(m[1]) + std::string(m[2])] = std::stod(m[4] == "+Inf" ? "inf" : std::string(m[4]));
  }
  return e;
}

// Every histogram: buckets non-decreasing in le order, the +Inf bucket equal to _count.
void expect_histograms_consistent(const std::string& text) {
  std::istringstream in(text);
  std::map<std::string, std::vector<double>> buckets;  // series (name + other labels) -> cumulative counts
  static const std::regex bucket(R"re(^([a-z_]+)_bucket\{(.*)le="([^"]+)"\} ([0-9]+)$)re");
  std::smatch m;
  for (std::string line; std::getline(in, line);)
    if (std::regex_match(line, m, bucket)) buckets[std::string(m[1]) + "{" + std::string(m[2])].push_back(std::stod(m[4]));
  EXPECT_FALSE(buckets.empty());
  const Exposition e = parse_exposition(text);
  for (const auto& [series, counts] : buckets) {
    for (size_t i = 1; i < counts.size(); ++i) EXPECT_LE(counts[i - 1], counts[i]) << series;
    const std::string name = series.substr(0, series.find('{'));
    std::string labels = series.substr(series.find('{') + 1);
    if (!labels.empty()) labels = "{" + labels.substr(0, labels.size() - 1) + "}";
    EXPECT_EQ(counts.back(), e.at(name + "_count" + labels)) << series;
  }
}

TEST_F(CliTest, ServeExportsPrometheusMetricsOverHttp) {
  const std::string in = make_cache("in.safetensors", DType::kF16, kShape), store = "file:" + path("store");
  ASSERT_EQ(run({"put", "--store", store, "--id", "ctx", in, "--levels", "2,4", "--chunk-tokens", "16"}).exit_code, 0);
  const pid_t serve = start({"serve", "--store", store, "--port", "0", "--metrics-port", "0"}, "serve");
  const std::string started = wait_for_output("serve", "metrics on http://127.0.0.1:");
  ASSERT_FALSE(started.empty()) << slurp(path("serve.err"));
  const uint16_t data_port = uint16_t(std::stoi(started.substr(started.find("127.0.0.1:") + 10)));
  const uint16_t metrics_port = uint16_t(std::stoi(started.substr(started.find("metrics on http://127.0.0.1:") + 28)));

  // Before any traffic: every family declared, no request counted.
  std::string r = http(metrics_port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << r;
  Exposition before = parse_exposition(body_of(r));
  EXPECT_EQ(before.types["kvcodec_server_request_seconds"], "histogram");
  EXPECT_EQ(before.at("kvcodec_server_requests_total"), 0);
  EXPECT_EQ(before.at("kvcodec_server_connections_total"), 0);

  // A silent metrics connection does not hold up the data server: a fetch runs meanwhile.
  const int silent = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(metrics_port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(silent, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  const std::string server = "127.0.0.1:" + std::to_string(data_port);
  RunResult f = run({"fetch", "--server", server, "--id", "ctx", "-o", path("out.safetensors"), "--policy", "fixed:4",
                     "--quiet", "--json", path("report.json")});
  ASSERT_EQ(f.exit_code, 0) << f.err;
  ::close(silent);
  expect_error(run({"fetch", "--server", server, "--id", "nope", "-o", path("o2.safetensors"), "--quiet"}), "fetch", 1);

  const auto report = nlohmann::json::parse(slurp(path("report.json")), nullptr, false);
  ASSERT_FALSE(report.is_discarded());
  ASSERT_EQ(report["chunks"].size(), 3u);  // 40 tokens in chunks of 16
  int chunk_requests = 0;
  for (const auto& c : report["chunks"]) chunk_requests += c["attempts"].get<int>();

  // Bytes count as sent once send() has returned, which can be after the client has read them
  // and exited: scrape until the last response is counted (at most ~2 s), then check.
  auto answered_of = [](const Exposition& e) {
    return e.at("kvcodec_server_response_bytes_total{type=\"manifest\"}") +
           e.at("kvcodec_server_response_bytes_total{type=\"chunk\"}");
  };
  std::string text;
  Exposition after;
  for (int i = 0; i < 100; ++i) {
    r = http(metrics_port, "GET /metrics HTTP/1.0\r\n\r\n");
    ASSERT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
    text = body_of(r);
    after = parse_exposition(text);
    if (after.at("kvcodec_server_bytes_sent_total") >= answered_of(after)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(after.at("kvcodec_server_requests_total{type=\"manifest\"}"), 2);
  EXPECT_EQ(after.at("kvcodec_server_requests_total{type=\"chunk\"}"), chunk_requests);
  EXPECT_EQ(after.at("kvcodec_server_errors_total{code=\"not_found\"}"), 1);
  EXPECT_EQ(after.at("kvcodec_server_request_seconds_count{type=\"chunk\"}"), chunk_requests);
  EXPECT_EQ(after.at("kvcodec_server_connections_total"), 2);
  EXPECT_EQ(after.at("kvcodec_store_errors_total"), 0);
  EXPECT_EQ(after.at("kvcodec_checksum_failures_total"), 0);
  // Every byte answered was sent: the responses' bytes by type add up to the bytes sent.
  const double answered = answered_of(after);
  EXPECT_GT(answered, report["bytes"].get<double>() * 0.5);
  EXPECT_EQ(after.at("kvcodec_server_bytes_sent_total"), answered);
  expect_histograms_consistent(text);

  // HEAD, other paths, other methods, and requests that are not HTTP.
  r = http(metrics_port, "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_TRUE(body_of(r).empty());
  EXPECT_EQ(http(metrics_port, "GET /other HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 ", 0), 0u);
  EXPECT_EQ(http(metrics_port, "GET /metrics/x HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 ", 0), 0u);
  EXPECT_EQ(http(metrics_port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").rfind("HTTP/1.1 405 ", 0), 0u);
  EXPECT_EQ(http(metrics_port, "hello\r\n\r\n").rfind("HTTP/1.1 400 ", 0), 0u);
  EXPECT_EQ(http(metrics_port, "GET /metrics SPDY/3\r\n\r\n").rfind("HTTP/1.1 400 ", 0), 0u);
  EXPECT_EQ(http(metrics_port, "GET /metrics HTTP/1.1\r\n" + std::string(10000, 'x')).rfind("HTTP/1.1 400 ", 0), 0u);
  // Still serving afterwards.
  EXPECT_EQ(http(metrics_port, "GET /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
  EXPECT_EQ(stop(serve), 0);
}

TEST_F(CliTest, MetricsPortIsCheckedLikeEveryOption) {
  RunResult r = run({"serve", "--store", "file:" + path("s"), "--port", "0", "--metrics-port", "70000"});
  expect_error(r, "serve", 2);
  EXPECT_NE(r.err.find("--metrics-port must be in 0..65535"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace kvcodec
