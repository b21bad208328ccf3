// Fork-join helper for the reference model: splits an index range over std::threads.
//
// Threads are started per call. A prefill of a few hundred tokens does milliseconds of work per
// call, against tens of microseconds to start a thread, so a pool would buy nothing; callers
// pass a minimum amount of work per thread so that small calls stay on the calling thread.
#pragma once

#include <algorithm>
#include <cstddef>
#include <system_error>
#include <thread>
#include <vector>

namespace kvcodec::model_detail {

// Calls fn(begin, end) on disjoint sub-ranges covering [0, n), using at most `threads` threads
// (the caller's included) and giving each at least `min_per_thread` indices. Returns when all
// are done. fn must not throw.
template <typename Fn>
void parallel_for(unsigned threads, size_t n, size_t min_per_thread, Fn&& fn) {
  if (n == 0) return;
  size_t parts = std::min<size_t>(std::max(1u, threads), n / std::max<size_t>(1, min_per_thread));
  if (parts <= 1) {
    fn(size_t{0}, n);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(parts - 1);
  auto bound = [&](size_t p) { return n * p / parts; };
  for (size_t p = 1; p < parts; ++p) {
    try {
      workers.emplace_back([&fn, b = bound(p), e = bound(p + 1)] { fn(b, e); });
    } catch (const std::system_error&) {  // no more threads available: do the rest here
      for (size_t q = p; q < parts; ++q) fn(bound(q), bound(q + 1));
      break;
    }
  }
  fn(size_t{0}, bound(1));
  for (auto& w : workers) w.join();
}

}  // namespace kvcodec::model_detail
