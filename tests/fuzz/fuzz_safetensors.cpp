// Fuzzes the safetensors reader and the KV conventions on top of it (read_safetensors, load_kv).
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static kvcodec::fuzz::MemFile file(".safetensors");
  const std::string& path = file.write({data, size});
  (void)kvcodec::read_safetensors(path);
  (void)kvcodec::load_kv(path);
  return 0;
}
