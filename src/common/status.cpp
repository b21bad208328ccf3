#include "kvcodec/status.hpp"

namespace kvcodec {

const char* status_code_name(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid_argument";
    case StatusCode::kCorruptData: return "corrupt_data";
    case StatusCode::kUnsupportedVersion: return "unsupported_version";
    case StatusCode::kBufferTooSmall: return "buffer_too_small";
    case StatusCode::kChecksumMismatch: return "checksum_mismatch";
    case StatusCode::kOutOfRange: return "out_of_range";
    case StatusCode::kUnavailable: return "unavailable";
    case StatusCode::kIoError: return "io_error";
    case StatusCode::kNotFound: return "not_found";
    case StatusCode::kTimeout: return "timeout";
    case StatusCode::kResourceExhausted: return "resource_exhausted";
    case StatusCode::kInternal: return "internal";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (ok()) return "ok";
  std::string s = status_code_name(code_);
  if (message_[0]) {
    s += ": ";
    s += message_;
  }
  return s;
}

Status Status::with_context(std::string_view context) const noexcept {
  if (ok()) return *this;
  char buf[kMaxMessage + 1];
  size_t n = 0;
  auto put = [&](std::string_view s) {
    for (char c : s) {
      if (n < kMaxMessage) buf[n++] = c;
    }
  };
  put(context);
  put(": ");
  put(message_);
  return Status(code_, std::string_view(buf, n));
}

}  // namespace kvcodec
