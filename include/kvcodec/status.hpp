// Status and StatusOr: errors are values in kvcodec.
//
// No function of the public API throws. Every fallible call returns a Status (or StatusOr<T>),
// whose code is one of the pinned StatusCode values below. The numeric values are part of the
// API and never change meaning; new codes are only ever appended.
//
// Status and StatusOr are [[nodiscard]]: dropping one draws a compiler warning. Where dropping
// an error is the intent (best-effort cleanup), say so with ignore_error().
//
// Status does not allocate: the message is kept in a fixed inline buffer (truncated at
// kMaxMessage bytes), so it can be returned from hot paths and from out-of-memory situations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace kvcodec {

// Pinned error codes. Values are stable across releases (documented in docs/format.md).
enum class StatusCode : int32_t {
  kOk = 0,
  kInvalidArgument = 1,     // a parameter, shape, layout or option is out of its documented range
  kCorruptData = 2,         // a frame or file is malformed (bad magic, impossible field, bad stream)
  kUnsupportedVersion = 3,  // a frame of a format version this library does not read
  kBufferTooSmall = 4,      // a caller-owned buffer is smaller than required (see max_encoded_size)
  kChecksumMismatch = 5,    // a chunk or header checksum does not match its bytes
  kOutOfRange = 6,          // a chunk / layer / token index beyond what the frame holds
  kUnavailable = 7,         // a backend, store or peer is not available (not built, down, refused)
  kIoError = 8,             // reading or writing a file or socket failed
  kNotFound = 9,            // a key, context or tensor name does not exist
  kTimeout = 10,            // an operation did not finish within its deadline
  kResourceExhausted = 11,  // a size or count exceeds a documented limit, or allocation failed
  kInternal = 12,           // a bug: an invariant of the library itself was violated
};

// Short stable name of a code, e.g. "corrupt_data".
const char* status_code_name(StatusCode code) noexcept;

class [[nodiscard]] Status {
 public:
  static constexpr size_t kMaxMessage = 151;

  Status() noexcept = default;
  Status(StatusCode code, std::string_view message) noexcept : code_(code) { set_message(message); }

  static Status Ok() noexcept { return Status(); }

  bool ok() const noexcept { return code_ == StatusCode::kOk; }
  StatusCode code() const noexcept { return code_; }
  // The message, without the code name. Empty for OK.
  const char* message() const noexcept { return message_; }
  // "code_name: message", for logs and CLI output.
  std::string to_string() const;

  // Prepends context, e.g. s.with_context("chunk 3") -> "chunk 3: <message>".
  Status with_context(std::string_view context) const noexcept;

  // Drops this status on purpose (best-effort work whose failure changes nothing).
  void ignore_error() const noexcept {}

 private:
  void set_message(std::string_view m) noexcept {
    size_t n = m.size() < kMaxMessage ? m.size() : kMaxMessage;
    std::memcpy(message_, m.data(), n);
    message_[n] = '\0';
  }
  StatusCode code_ = StatusCode::kOk;
  char message_[kMaxMessage + 1] = {0};
};

// Convenience constructors, one per code.
inline Status InvalidArgument(std::string_view m) { return {StatusCode::kInvalidArgument, m}; }
inline Status CorruptData(std::string_view m) { return {StatusCode::kCorruptData, m}; }
inline Status UnsupportedVersion(std::string_view m) { return {StatusCode::kUnsupportedVersion, m}; }
inline Status BufferTooSmall(std::string_view m) { return {StatusCode::kBufferTooSmall, m}; }
inline Status ChecksumMismatch(std::string_view m) { return {StatusCode::kChecksumMismatch, m}; }
inline Status OutOfRange(std::string_view m) { return {StatusCode::kOutOfRange, m}; }
inline Status Unavailable(std::string_view m) { return {StatusCode::kUnavailable, m}; }
inline Status IoError(std::string_view m) { return {StatusCode::kIoError, m}; }
inline Status NotFound(std::string_view m) { return {StatusCode::kNotFound, m}; }
inline Status Timeout(std::string_view m) { return {StatusCode::kTimeout, m}; }
inline Status ResourceExhausted(std::string_view m) { return {StatusCode::kResourceExhausted, m}; }
inline Status Internal(std::string_view m) { return {StatusCode::kInternal, m}; }

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& s) : status_(s) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = Internal("StatusOr constructed from an OK status without a value");
  }
  StatusOr(T value) : has_value_(true) { new (&storage_) T(std::move(value)); }  // NOLINT
  StatusOr(const StatusOr& o) : status_(o.status_), has_value_(o.has_value_) {
    if (has_value_) new (&storage_) T(*o);
  }
  StatusOr(StatusOr&& o) noexcept : status_(o.status_), has_value_(o.has_value_) {
    if (has_value_) new (&storage_) T(std::move(*o));
  }
  StatusOr& operator=(StatusOr o) noexcept {
    reset();
    status_ = o.status_;
    has_value_ = o.has_value_;
    if (has_value_) new (&storage_) T(std::move(*o));
    return *this;
  }
  ~StatusOr() { reset(); }

  bool ok() const noexcept { return has_value_; }
  const Status& status() const noexcept { return status_; }
  // Drops this result on purpose (see Status::ignore_error).
  void ignore_error() const noexcept {}
  T& value() & { return *ptr(); }
  const T& value() const& { return *ptr(); }
  T&& value() && { return std::move(*ptr()); }
  T& operator*() & { return *ptr(); }
  const T& operator*() const& { return *ptr(); }
  T* operator->() { return ptr(); }
  const T* operator->() const { return ptr(); }

 private:
  T* ptr() { return std::launder(reinterpret_cast<T*>(&storage_)); }
  const T* ptr() const { return std::launder(reinterpret_cast<const T*>(&storage_)); }
  void reset() {
    if (has_value_) ptr()->~T();
    has_value_ = false;
  }
  Status status_;
  bool has_value_ = false;
  alignas(T) unsigned char storage_[sizeof(T)];
};

}  // namespace kvcodec

// Propagates a non-OK Status to the caller.
#define KVCODEC_RETURN_IF_ERROR(expr)              \
  do {                                             \
    ::kvcodec::Status kvcodec_status_ = (expr);    \
    if (!kvcodec_status_.ok()) return kvcodec_status_; \
  } while (0)

#define KVCODEC_CONCAT_INNER_(a, b) a##b
#define KVCODEC_CONCAT_(a, b) KVCODEC_CONCAT_INNER_(a, b)
// Assigns the value of a StatusOr expression to `lhs`, or returns its Status.
#define KVCODEC_ASSIGN_OR_RETURN(lhs, expr)                                   \
  auto KVCODEC_CONCAT_(kvcodec_or_, __LINE__) = (expr);                       \
  if (!KVCODEC_CONCAT_(kvcodec_or_, __LINE__).ok())                           \
    return KVCODEC_CONCAT_(kvcodec_or_, __LINE__).status();                   \
  lhs = std::move(KVCODEC_CONCAT_(kvcodec_or_, __LINE__)).value()
