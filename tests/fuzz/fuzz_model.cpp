// Fuzzes the llama2.c model loader (Model::load, model.hpp) through an in-memory file.
#include "fuzz_util.hpp"
#include "kvcodec/model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static kvcodec::fuzz::MemFile file(".bin");
  (void)kvcodec::Model::load(file.write({data, size}));
  return 0;
}
