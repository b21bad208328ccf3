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

#include "common/checksum.hpp"
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
// model-section and chunk-index parsers instead of stopping at the checksum. The checksum covers
// header bytes 0..55 then bytes 64..head_bytes-1 and is stored at bytes 56..63; version 2 frames
// (every seed) checksum that string in 4 KiB segments, version 1 frames with one XXH64
// (docs/format.md, "Checksums"; common/checksum.hpp). Inputs whose header does not parse are
// returned unchanged. (Until issue 11 this repaired every frame the version-1 way, so mutated
// version-2 heads never got past the checksum.)
inline std::vector<uint8_t> with_valid_head_checksum(std::span<const uint8_t> in) {
  constexpr size_t kChecksumOffset = 56, kVersionOffset = 4;
  std::vector<uint8_t> out(in.begin(), in.end());
  auto head = frame_head_size(in.first(std::min<size_t>(in.size(), kHeaderBytes)));
  if (!head.ok() || *head > in.size()) return out;
  const uint16_t version = uint16_t(out[kVersionOffset] | out[kVersionOffset + 1] << 8);
  const uint64_t sum = detail::frame_checksum(
      version, detail::ChecksumInput{out.data(), kChecksumOffset, out.data() + kHeaderBytes, *head - kHeaderBytes});
  for (int i = 0; i < 8; ++i) out[kChecksumOffset + i] = uint8_t(sum >> (8 * i));
  return out;
}

// A copy of `in` with every chunk checksum in the index made correct as well (version-aware),
// for targets that verify chunks: mutations of chunk bodies then reach the decoder. Inputs whose
// head does not parse are returned with the head checksum repaired only.
inline std::vector<uint8_t> with_valid_checksums(std::span<const uint8_t> in) {
  std::vector<uint8_t> out = with_valid_head_checksum(in);
  auto info = read_frame_info(out);
  if (!info.ok() || info->frame_bytes > out.size()) return out;
  // The index entries: 24 bytes each after the header and model section (docs/format.md 3):
  // offset u64, size u32, reserved u32, checksum u64.
  const uint64_t index_at = kHeaderBytes + info->model_bytes;
  for (size_t k = 0; k < info->chunks.size(); ++k) {
    const ChunkInfo& c = info->chunks[k];
    const uint64_t entry = index_at + k * 24 + 16;
    if (entry + 8 > info->head_bytes) return out;
    const uint64_t sum = detail::frame_checksum(info->format_version, out.data() + c.offset, c.size);
    for (int i = 0; i < 8; ++i) out[entry + i] = uint8_t(sum >> (8 * i));
  }
  return with_valid_head_checksum(out);
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
