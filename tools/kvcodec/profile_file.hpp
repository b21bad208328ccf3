// Reading a --profile FILE for encode, decode and inspect (cmd_calibrate.cpp writes them).
#pragma once

#include <string>

#include "common/profile_rows.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/io.hpp"  // load_profile
#include "kvcodec/profile.hpp"

namespace kvcodec::cli {

// kInvalidArgument when a transform-coded frame has no profile (nullptr) or another one than it
// names (the library's check, its message telling to pass --profile); OK for frames of versions
// 1-3 (a profile given for them is not used).
inline Status check_frame_profile(const FrameInfo& f, const Profile* p) {
  return detail::check_frame_profile(f, p, "--profile");
}
// "0123456789abcdef"
std::string digest_hex(uint64_t digest);

}  // namespace kvcodec::cli
