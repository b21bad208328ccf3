// Reading a --profile FILE for encode, decode and inspect (cmd_calibrate.cpp writes them).
#pragma once

#include <string>

#include "kvcodec/format.hpp"
#include "kvcodec/io.hpp"  // load_profile
#include "kvcodec/profile.hpp"

namespace kvcodec::cli {

// kInvalidArgument when a transform-coded frame has no profile (nullptr) or another one than it
// names; OK for frames of versions 1-3 (a profile given for them is not used).
Status check_frame_profile(const FrameInfo& f, const Profile* p);
// "0123456789abcdef"
std::string digest_hex(uint64_t digest);

}  // namespace kvcodec::cli
