// Execution backends: where encode and decode run.
//
// The one place that says which backends exist in this build and whether they can run now
// (as zfp's zfp_stream_set_execution does). Asking for a backend that was not built, or that
// has no device to run on, is an error value (kUnavailable), never a crash.
//
//   kCpu   always built and available (codec.hpp).
//   kCuda  built with -DKVCODEC_CUDA=ON (kvcodec::cuda target, cuda.hpp); available when the
//          CUDA runtime reports at least one device.
#pragma once

#include <cstdint>
#include <string_view>

#include "kvcodec/status.hpp"

namespace kvcodec {

enum class Backend : uint8_t {
  kCpu = 0,
  kCuda = 1,
};

const char* backend_name(Backend b) noexcept;  // "cpu", "cuda"
// Accepts "cpu" and "cuda" (also "gpu"); kInvalidArgument otherwise.
StatusOr<Backend> parse_backend(std::string_view name);
// True when the backend was compiled into this build of the library.
bool backend_built(Backend b) noexcept;
// OK when the backend is built and can run now; kUnavailable with the reason otherwise
// ("not built", "no CUDA device", the CUDA runtime's error). Probes the device on every call
// (cheap after the first: the CUDA runtime caches it).
Status backend_status(Backend b);

}  // namespace kvcodec
