// Fuzzes LinkTrace::parse (controller.hpp) and the timing arithmetic on what it accepts: every
// bandwidth and time passed check_link_gbps / check_seconds, so transfer times are finite and
// do not decrease with the byte count.
#include <cmath>
#include <cstdlib>
#include <string_view>

#include "kvcodec/controller.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvcodec;
  auto t = LinkTrace::parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!t.ok()) return 0;
  if (!t->validate().ok()) std::abort();
  double last = 0;
  for (uint64_t bytes : {0ull, 1ull, 4096ull, 1ull << 30, 1ull << 40}) {
    const double f = t->finish_time(0.5, bytes);
    if (!std::isfinite(f) || f < last) std::abort();
    last = f;
  }
  if (!std::isfinite(t->bytes_between(0, t->steps.back().time_s + 1))) std::abort();
  return 0;
}
