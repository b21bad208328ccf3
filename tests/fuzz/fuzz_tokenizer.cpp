// Fuzzes the llama2.c tokenizer loader (Tokenizer::parse) and, on what it accepts, encoding and
// decoding a fixed text (the merge queue must tolerate any finite scores).
#include <span>
#include <string>

#include "kvcodec/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvcodec;
  auto t = Tokenizer::parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!t.ok()) return 0;
  const std::vector<int32_t> ids = t->encode("Once upon a time, \xc3\xa9t\xc3\xa9 <0x41> ab", true);
  (void)t->decode(ids);
  return 0;
}
