// The one fork-join loop of the project (the codec, the model and the tools use it): runs work on
// up to `threads` std::threads (0 = all hardware threads), the caller's included, and never
// throws. An exception thrown by the work (std::bad_alloc of a scratch buffer, ...) stops the
// loop from starting more work and comes back as a Status: kResourceExhausted for bad_alloc,
// kInternal for anything else. When the system refuses to start a thread (std::system_error),
// the threads already running -- at least the caller -- do the remaining work.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "kvcodec/status.hpp"

namespace kvcodec::detail {

inline unsigned resolve_threads(int threads) {
  if (threads > 0) return unsigned(threads);
  return std::max(1u, std::thread::hardware_concurrency());
}

// The Status of an exception caught by the loop.
inline Status status_of_exception(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory");
  } catch (const std::exception& x) {
    return Internal(std::string("unexpected exception: ") + x.what());
  } catch (...) {
    return Internal("unexpected exception");
  }
}

// Runs fn(i) for i in [0, n). Work is claimed dynamically, so results must not depend on which
// thread runs which index or in what order.
template <typename Fn>
[[nodiscard]] Status parallel_for(size_t n, int threads, Fn&& fn) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;
  auto worker = [&]() noexcept {
    try {
      for (size_t i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1, std::memory_order_relaxed)) < n;)
        fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      failed.store(true, std::memory_order_relaxed);
    }
  };
  const size_t t = std::min<size_t>(resolve_threads(threads), n);
  std::vector<std::thread> pool;
  if (t > 1) {
    try {
      pool.reserve(t - 1);
      for (size_t k = 1; k < t; ++k) pool.emplace_back(worker);
    } catch (...) {  // no more threads (std::system_error) or no memory for them: fewer do it all
    }
  }
  worker();
  for (auto& th : pool) th.join();
  return error ? status_of_exception(error) : Status::Ok();
}

// Splits [0, n) into at most `threads` contiguous ranges of at least min_per_range indices
// (fewer ranges when n is small: a small call stays on the caller's thread) and runs
// fn(begin, end) on each, as parallel_for does.
template <typename Fn>
[[nodiscard]] Status parallel_ranges(size_t n, int threads, size_t min_per_range, Fn&& fn) {
  if (n == 0) return Status::Ok();
  const size_t parts =
      std::max<size_t>(1, std::min<size_t>(resolve_threads(threads), n / std::max<size_t>(1, min_per_range)));
  return parallel_for(parts, int(parts), [&](size_t p) { fn(n * p / parts, n * (p + 1) / parts); });
}

}  // namespace kvcodec::detail
