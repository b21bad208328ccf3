// The coded units of one (layer, K/V) encode task, chunk after chunk, in one anonymous mapping
// reserved at their largest possible size (common/stored_unit.hpp bounds every unit). Pages are
// resident only once written, and release_below() hands back the pages of the units already
// copied into the frame, so the coded units and the frame are never both held in full.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kvcodec/status.hpp"

namespace kvcodec::detail {

class UnitStore {
 public:
  UnitStore() = default;
  UnitStore(const UnitStore&) = delete;
  UnitStore& operator=(const UnitStore&) = delete;
  UnitStore(UnitStore&& o) noexcept { *this = std::move(o); }
  UnitStore& operator=(UnitStore&& o) noexcept {
    if (this != &o) {
      unmap();
      base_ = std::exchange(o.base_, nullptr);
      cap_ = std::exchange(o.cap_, 0);
      used_ = std::exchange(o.used_, 0);
      released_ = std::exchange(o.released_, 0);
      begin_ = std::move(o.begin_);
      stored_ = std::move(o.stored_);
    }
    return *this;
  }
  ~UnitStore() { unmap(); }

  // Address space for `bytes` of units (nothing is resident until written).
  Status reserve(size_t bytes) {
    unmap();
    cap_ = std::max<size_t>(bytes, 1);
    void* p = ::mmap(nullptr, cap_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      cap_ = 0;
      return ResourceExhausted("out of memory reserving " + std::to_string(bytes) + " bytes for coded units");
    }
#if defined(MADV_NOHUGEPAGE)
    ::madvise(p, cap_, MADV_NOHUGEPAGE);  // small pages: released page by page; advice only
#endif
    base_ = static_cast<uint8_t*>(p);
    begin_.assign(1, 0);
    return Status::Ok();
  }

  // Room for the next unit's n bytes, or nullptr past the reservation (never for units within
  // the bounds reserve() was given). commit() ends the unit.
  uint8_t* extend(size_t n) { return n <= cap_ - used_ ? base_ + used_ : nullptr; }
  void commit(size_t n, bool stored) {
    used_ += n;
    begin_.push_back(used_);
    stored_.push_back(stored ? 1 : 0);
  }

  size_t units() const { return stored_.size(); }
  size_t size(size_t k) const { return begin_[k + 1] - begin_[k]; }
  const uint8_t* data(size_t k) const { return base_ + begin_[k]; }
  bool stored(size_t k) const { return stored_[k] != 0; }
  bool any_stored() const {
    for (uint8_t s : stored_)
      if (s) return true;
    return false;
  }

  // Hands back the whole pages below unit k (units [0, k) are no longer read).
  void release_below(size_t k) {
    static const size_t page = size_t(::sysconf(_SC_PAGESIZE));
    const size_t end = begin_[std::min(k, units())] / page * page;
    if (end > released_) {
      ::madvise(base_ + released_, end - released_, MADV_DONTNEED);  // advice: failure only costs memory
      released_ = end;
    }
  }

 private:
  void unmap() {
    if (base_) ::munmap(base_, cap_);
    base_ = nullptr;
  }

  uint8_t* base_ = nullptr;
  size_t cap_ = 0, used_ = 0, released_ = 0;
  std::vector<size_t> begin_;   // unit k is [begin_[k], begin_[k + 1])
  std::vector<uint8_t> stored_; // 1: unit k is stored raw
};

}  // namespace kvcodec::detail
