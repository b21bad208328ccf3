// Recording the library's events into a caller's MetricsSink (kvcodec/metrics.hpp): the clock is
// read and an event built only when there is a sink.
#pragma once

#include <chrono>

#include "kvcodec/metrics.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec::detail {

// Wall time since construction, measured only with a sink.
class MetricTimer {
 public:
  explicit MetricTimer(MetricsSink* sink) noexcept : sink_(sink) {
    if (sink_) start_ = std::chrono::steady_clock::now();
  }
  MetricsSink* sink() const noexcept { return sink_; }
  double seconds() const noexcept {
    return sink_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() : 0.0;
  }

 private:
  MetricsSink* sink_;
  std::chrono::steady_clock::time_point start_{};
};

inline void record(MetricsSink* sink, const MetricEvent& e) noexcept {
  if (sink) sink->record(e);
}

// After a decode: kDecode on success, kChecksumFailure when verification failed.
inline void record_decode(const MetricTimer& timer, const Status& s, int level, uint64_t raw_bytes,
                          uint64_t coded_bytes, uint64_t elements) noexcept {
  if (!timer.sink()) return;
  MetricEvent e;
  e.level = level;
  if (s.ok()) {
    e.kind = MetricKind::kDecode;
    e.seconds = timer.seconds();
    e.raw_bytes = raw_bytes;
    e.coded_bytes = coded_bytes;
    e.elements = elements;
  } else if (s.code() == StatusCode::kChecksumMismatch) {
    e.kind = MetricKind::kChecksumFailure;
    e.code = s.code();
    e.what = "decode";
  } else {
    return;
  }
  timer.sink()->record(e);
}

}  // namespace kvcodec::detail
