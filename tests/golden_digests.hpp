// The committed golden frames (tests/golden/) and their digests, read by golden_test and by the
// decoder-only test (which links only the decoder library, so this stays header-only).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace kvcodec::test {

inline std::string golden_dir() { return std::string(KVCODEC_TEST_DIR) + "/golden"; }

// digests.txt: "name xxh64-of-the-decoded-cache" per line; '#' starts a comment. records.txt
// (the same syntax, names are paths under golden_dir()): frames of earlier encoders kept as
// decode tests after a deliberate encoder change.
inline std::map<std::string, uint64_t> read_digests(const std::string& file = "digests.txt") {
  std::map<std::string, uint64_t> out;
  std::ifstream in(golden_dir() + "/" + file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string name, hex;
    fields >> name >> hex;
    out[name] = std::strtoull(hex.c_str(), nullptr, 16);
  }
  return out;
}

}  // namespace kvcodec::test
