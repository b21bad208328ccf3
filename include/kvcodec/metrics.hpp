// Metrics: what the codec and the streaming library did, pushed to the caller as it happens.
//
// Give a MetricsSink to EncodeOptions / DecodeOptions (and, in the stream component, to
// PutOptions, FetchOptions and ServerOptions); every call made with those options records its
// events into it. Without a sink (the default, nullptr) nothing is measured: no clock is read and
// no event is built.
//
//   struct Counter : kvcodec::MetricsSink {
//     std::atomic<uint64_t> decoded{0};
//     void record(const kvcodec::MetricEvent& e) noexcept override {
//       if (e.kind == kvcodec::MetricKind::kDecode) decoded += e.raw_bytes;
//     }
//   } sink;
//   kvcodec::DecodeOptions o;  o.metrics = &sink;
//   kvcodec::decode_into(frame, dst, o);
//
// Threading: record() is called on the thread that did the work, right after it, possibly from
// several threads at once (a server's connections, a fetch's decoder); it must be thread-safe,
// fast, and must not throw. The sink is not owned: it must outlive every call (and every server
// or fetch) given it. `kvcodec serve --metrics-port` exports these events in Prometheus text
// format (docs/integration.md lists the metric names).
//
// Stability: new kinds and new fields may be added at the end; a sink ignores kinds it does not
// know.
#pragma once

#include <cstdint>

#include "kvcodec/status.hpp"

namespace kvcodec {

enum class MetricKind : uint8_t {
  // A frame encoded (encode_into): seconds, raw_bytes, coded_bytes, elements, level.
  kEncode = 0,
  // A frame, or one chunk of it, decoded (decode_into, decode_chunk_into, FrameDecoder):
  // seconds, raw_bytes (decoded), coded_bytes (read), elements, level.
  kDecode = 1,
  // A fetched chunk is in the destination (fetch_context): level delivered (-1: recomputed from
  // its text), coded_bytes received, seconds from its first request until it was ready.
  kChunkFetched = 2,
  // A fetched chunk recomputed from its text instead of decoded (planned or after a failure).
  kTextFallback = 3,
  // Bytes that failed checksum verification: a frame or chunk being decoded, a chunk received by
  // a client, a value read back from a store. level, code (kChecksumMismatch).
  kChecksumFailure = 4,
  // A store operation failed (not a missing key): code; what = the operation ("get", "put").
  kStoreError = 5,
  // A server answered a request: what = "manifest" or "chunk", code (kOk or the error sent),
  // seconds to build the answer (store reads included), coded_bytes of the response.
  kRequest = 6,
};

struct MetricEvent {
  MetricKind kind = MetricKind::kEncode;
  int level = -1;                    // quality level, -1 when none applies
  StatusCode code = StatusCode::kOk;
  double seconds = 0;                // wall time of the work
  uint64_t raw_bytes = 0;            // uncompressed KV bytes
  uint64_t coded_bytes = 0;          // frame / chunk / response bytes
  uint64_t elements = 0;             // KV elements (bits per element = 8 * coded_bytes / elements)
  const char* what = "";             // a static string naming the operation or request type
};

class MetricsSink {
 public:
  virtual ~MetricsSink() = default;
  virtual void record(const MetricEvent& event) noexcept = 0;
};

}  // namespace kvcodec
