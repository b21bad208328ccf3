// Fuzzes verify_frame on whole frames whose head checksum has been repaired, so the chunk
// checksums over the (mutated) bodies are what gets checked.
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)kvcodec::verify_frame(kvcodec::fuzz::with_valid_head_checksum({data, size}));
  return 0;
}
