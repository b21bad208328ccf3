// A minimal fork-join loop: runs fn(i) for i in [0, n) on up to `threads` threads (0 = all
// hardware threads). Work is claimed dynamically; results must not depend on the order.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

namespace kvcodec::detail {

inline unsigned resolve_threads(int threads) {
  if (threads > 0) return unsigned(threads);
  return std::max(1u, std::thread::hardware_concurrency());
}

template <typename Fn>
void parallel_for(size_t n, int threads, Fn&& fn) {
  const size_t t = std::min<size_t>(resolve_threads(threads), n);
  if (t <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (size_t k = 1; k < t; ++k) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

}  // namespace kvcodec::detail
