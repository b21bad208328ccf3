// The Redis store (private to src/stream; open it through open_store).
#pragma once

#include <memory>
#include <string_view>

#include "kvcodec/store.hpp"

namespace kvcodec {

// "redis://HOST:PORT[/DB]". Connects and PINGs; kUnavailable when the server cannot be reached.
StatusOr<std::unique_ptr<Store>> open_redis_store(std::string_view uri, const StoreOptions& options);

}  // namespace kvcodec
