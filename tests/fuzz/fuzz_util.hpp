// Helpers shared by the libFuzzer targets.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/xxh64.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/io.hpp"

namespace kvcodec::fuzz {

// Frames may claim caches of up to kMaxElements; the decode targets only allocate destinations
// for small ones (a real caller would not allocate a terabyte either).
inline constexpr uint64_t kMaxFuzzCacheBytes = 1u << 20;

// A destination for decoding `info`'s cache, or nothing when the claimed cache is too large.
inline std::optional<KVCache> small_destination(const FrameInfo& info) {
  if (info.shape.elements() * dtype_size(info.dtype) > kMaxFuzzCacheBytes) return std::nullopt;
  auto kv = KVCache::allocate(info.dtype, info.shape);
  if (!kv.ok()) return std::nullopt;
  return std::move(kv).value();
}

// A copy of `in` whose frame-head checksum is correct, so that mutations of the head reach the
// model-section and chunk-index parsers instead of stopping at the checksum. The checksum is
// XXH64 (seed 0) of header bytes 0..55 then bytes 64..head_bytes-1, stored at bytes 56..63
// (docs/format.md, "Header"). Inputs whose header does not parse are returned unchanged.
inline std::vector<uint8_t> with_valid_head_checksum(std::span<const uint8_t> in) {
  constexpr size_t kChecksumOffset = 56;
  std::vector<uint8_t> out(in.begin(), in.end());
  auto head = frame_head_size(in.first(std::min<size_t>(in.size(), kHeaderBytes)));
  if (!head.ok() || *head > in.size()) return out;
  detail::Xxh64State st;
  st.update(out.data(), kChecksumOffset);
  st.update(out.data() + kHeaderBytes, size_t(*head) - kHeaderBytes);
  const uint64_t sum = st.digest();
  for (int i = 0; i < 8; ++i) out[kChecksumOffset + i] = uint8_t(sum >> (8 * i));
  return out;
}

// The file readers take paths: each input is written to an in-memory file (memfd), reachable
// through a symlink with the extension the reader dispatches on. No disk I/O per input.
class MemFile {
 public:
  explicit MemFile(const std::string& extension) {
    fd_ = ::memfd_create("kvcodec-fuzz", MFD_CLOEXEC);
    if (fd_ < 0) std::abort();
    dir_ = std::filesystem::temp_directory_path() / ("kvcodec_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / ("input" + extension)).string();
    std::filesystem::remove(path_);
    std::filesystem::create_symlink("/proc/self/fd/" + std::to_string(fd_), path_);
  }
  ~MemFile() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    ::close(fd_);
  }

  // Replaces the file's contents with `bytes`; returns the path to read it through.
  const std::string& write(std::span<const uint8_t> bytes) {
    if (::ftruncate(fd_, 0) != 0) std::abort();
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, off_t(done));
      if (n <= 0) std::abort();
      done += size_t(n);
    }
    return path_;
  }

 private:
  int fd_ = -1;
  std::filesystem::path dir_;
  std::string path_;
};

}  // namespace kvcodec::fuzz
