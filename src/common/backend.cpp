#include "kvcodec/backend.hpp"

#include <string>

#if defined(KVCODEC_HAS_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace kvcodec {

const char* backend_name(Backend b) noexcept {
  switch (b) {
    case Backend::kCpu: return "cpu";
    case Backend::kCuda: return "cuda";
  }
  return "unknown";
}

StatusOr<Backend> parse_backend(std::string_view name) {
  if (name == "cpu") return Backend::kCpu;
  if (name == "cuda" || name == "gpu") return Backend::kCuda;
  return InvalidArgument("unknown backend '" + std::string(name) + "' (cpu, cuda)");
}

bool backend_built(Backend b) noexcept {
  switch (b) {
    case Backend::kCpu: return true;
    case Backend::kCuda:
#if defined(KVCODEC_HAS_CUDA)
      return true;
#else
      return false;
#endif
  }
  return false;
}

Status backend_status(Backend b) {
  switch (b) {
    case Backend::kCpu: return Status::Ok();
    case Backend::kCuda: {
#if defined(KVCODEC_HAS_CUDA)
      int n = 0;
      const cudaError_t e = cudaGetDeviceCount(&n);
      if (e != cudaSuccess)
        return Unavailable(std::string("cuda backend: no usable device (") + cudaGetErrorString(e) + ")");
      if (n == 0) return Unavailable("cuda backend: no CUDA device");
      return Status::Ok();
#else
      return Unavailable("cuda backend not built (configure with -DKVCODEC_CUDA=ON)");
#endif
    }
  }
  return InvalidArgument("unknown backend");
}

}  // namespace kvcodec
