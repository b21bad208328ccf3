// Fuzzes decode_into on whole frames, into a contiguous and an LMCache-layout destination.
// The head checksum is repaired and chunk checksums are not verified, so mutated heads and
// bodies reach the model parser, the entropy decoder and the dequantizer (with verification
// they would almost always stop at a checksum); the second call verifies them.
#include <span>

#include "fuzz_util.hpp"
#include "identity_profile.hpp"
#include "kvcodec/codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvcodec;
  const std::vector<uint8_t> frame = fuzz::with_valid_head_checksum({data, size});
  auto info = read_frame_info(frame);
  if (!info.ok()) return 0;
  auto dst = fuzz::small_destination(*info);
  if (!dst) return 0;
  DecodeOptions o;
  o.verify_checksums = false;
  (void)decode_into(frame, dst->view(), o);
  o.verify_checksums = true;
  (void)decode_into(frame, lmcache_view(dst->data.data(), dst->dtype, dst->shape), o);
  if (info->transformed) {  // version 4: through the transform, with a profile the frame names
    auto p = fuzz_identity_profile(info->shape, true);
    if (!p.ok()) return 0;
    p->digest = info->profile_digest;
    o.verify_checksums = false;
    (void)decode_into(frame, *p, dst->view(), o);
  }
  return 0;
}
