// Fuzzes the .npy reader and load_kv on .npy files.
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static kvcodec::fuzz::MemFile file(".npy");
  const std::string& path = file.write({data, size});
  (void)kvcodec::read_npy(path);
  (void)kvcodec::load_kv(path);
  return 0;
}
