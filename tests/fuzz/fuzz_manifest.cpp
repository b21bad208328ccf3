// Fuzzes parse_manifest (store.hpp), the first thing a client reads from a server or a store.
// Property: a manifest that parses serializes back to bytes that parse to the same manifest.
#include <cstdlib>
#include <span>

#include "kvcodec/store.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvcodec;
  auto m = parse_manifest(std::span<const uint8_t>(data, size));
  if (!m.ok()) return 0;
  const std::vector<uint8_t> bytes = serialize_manifest(*m);
  auto again = parse_manifest(bytes);
  if (!again.ok() || serialize_manifest(*again) != bytes) std::abort();
  (void)m->num_chunks();
  for (const auto& l : m->levels) (void)m->find_level(l.level);
  return 0;
}
