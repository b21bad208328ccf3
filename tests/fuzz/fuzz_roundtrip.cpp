// The round-trip property as a fuzz target: the input seeds a random cache and options
// (roundtrip_check.hpp: shapes, dtypes, levels, token groups, outlier channels, NaN, +-Inf),
// which must encode, decode and meet the documented bound on every element.
#include <cstdio>
#include <cstdlib>
#include <random>

#include "roundtrip_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::seed_seq seq(data, data + size);
  std::mt19937_64 rng(seq);
  const kvcodec::test::RoundTripInput in = kvcodec::test::random_round_trip_input(rng);
  const std::string err = kvcodec::test::check_round_trip(in);
  if (!err.empty()) {
    std::fprintf(stderr, "round trip broken: %s\n", err.c_str());
    std::abort();
  }
  return 0;
}
