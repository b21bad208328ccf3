// Fuzzes analyze_frame (codec.hpp, `kvcodec inspect --entropy`) on frames whose head and chunk
// checksums are repaired, so mutations reach the unit directories, lane streams and escapes.
#include "fuzz_util.hpp"
#include "kvcodec/codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvcodec;
  const std::vector<uint8_t> frame = fuzz::with_valid_checksums({data, size});
  (void)analyze_frame(frame);
  return 0;
}
