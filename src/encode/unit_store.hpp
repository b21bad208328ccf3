// The coded units of one (layer, K/V) encode task, chunk after chunk, in one anonymous mapping
// reserved at their largest possible size (common/stored_unit.hpp bounds every unit). Pages are
// resident only once written, and release_below() hands back the pages of the units already
// copied into the frame, so the coded units and the frame are never both held in full.
// UnitStorePool keeps stores, with their pages, from one encoding to the next (see there).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
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
      touched_ = std::exchange(o.touched_, 0);
      keep_pages_ = std::exchange(o.keep_pages_, false);
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
    clear();
    return Status::Ok();
  }

  // No units, the mapping and its resident pages kept for the next ones.
  void clear() {
    used_ = released_ = 0;
    begin_.assign(1, 0);
    stored_.clear();
  }
  size_t capacity() const { return cap_; }
  // Bytes at the start of the mapping that units have been written to (its pages may be resident).
  size_t touched() const { return touched_; }
  // While set, release_below() hands nothing back (the store's pages are kept for reuse).
  void set_keep_pages(bool keep) { keep_pages_ = keep; }

  // Room for the next unit's n bytes, or nullptr past the reservation (never for units within
  // the bounds reserve() was given). commit() ends the unit.
  uint8_t* extend(size_t n) { return n <= cap_ - used_ ? base_ + used_ : nullptr; }
  void commit(size_t n, bool stored) {
    used_ += n;
    touched_ = std::max(touched_, used_);
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
    if (keep_pages_) return;
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
    cap_ = used_ = released_ = touched_ = 0;
  }

  uint8_t* base_ = nullptr;
  size_t cap_ = 0, used_ = 0, released_ = 0, touched_ = 0;
  bool keep_pages_ = false;
  std::vector<size_t> begin_;   // unit k is [begin_[k], begin_[k + 1])
  std::vector<uint8_t> stored_; // 1: unit k is stored raw
};

// Unit stores kept between encodings with their pages resident, so that the next encoding writes
// its units without a page fault per 4 KiB (and without handing the pages back as it copies
// them: on this VM the faults and the release took about 7% of a level-2 encode). The first
// encoding of a process does not keep its pages (keep_pages() is false until one has finished):
// it hands each unit's pages back once copied, so a one-shot command's peak memory stays about
// input + output. Later encodings (a server, a benchmark) take kept stores and give them back
// with their pages while the kept pages total at most keep_bytes.
class UnitStorePool {
 public:
  UnitStorePool(size_t keep_bytes, size_t keep_stores) : keep_bytes_(keep_bytes), keep_stores_(keep_stores) {}

  bool keep_pages() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return finished_ > 0;
  }
  void encoding_finished() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++finished_;
  }

  // A store with room for `bytes`: a kept one (its pages reused) or a new reservation. A kept
  // store too small for it is unmapped, so that the pool follows the sizes in use.
  Status take(size_t bytes, UnitStore& out) {
    UnitStore small;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = free_.size(); i-- > 0;) {
        if (free_[i].capacity() < bytes) continue;
        out = std::move(free_[i]);
        free_.erase(free_.begin() + std::ptrdiff_t(i));
        kept_ -= out.touched();
        out.clear();
        return Status::Ok();
      }
      if (!free_.empty()) {
        small = std::move(free_.back());
        free_.pop_back();
        kept_ -= small.touched();
      }
    }
    return out.reserve(bytes);  // `small` is unmapped on return
  }

  // Keeps s (and its resident pages) if the budget allows, else unmaps it.
  void give(UnitStore&& s) {
    UnitStore drop = std::move(s);  // unmapped on return unless kept (after the lock is released)
    drop.set_keep_pages(false);
    std::lock_guard<std::mutex> lock(mutex_);
    if (drop.capacity() == 0 || free_.size() >= keep_stores_ || drop.touched() > keep_bytes_ - kept_) return;
    kept_ += drop.touched();
    free_.push_back(std::move(drop));
  }

  size_t kept_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return kept_;
  }

 private:
  const size_t keep_bytes_, keep_stores_;
  mutable std::mutex mutex_;
  std::vector<UnitStore> free_;
  size_t kept_ = 0;
  uint64_t finished_ = 0;
};

}  // namespace kvcodec::detail
