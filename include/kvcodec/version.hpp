// Library version (distinct from the frame format version in format.hpp).
#pragma once

#define KVCODEC_VERSION_MAJOR 0
#define KVCODEC_VERSION_MINOR 1
#define KVCODEC_VERSION_PATCH 0

namespace kvcodec {
inline constexpr const char* kLibraryVersion = "0.1.0";
}  // namespace kvcodec
