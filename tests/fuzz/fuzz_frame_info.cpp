// Fuzzes frame-head parsing: read_frame_info on the input as it is (checksum rejections) and
// with its head checksum repaired (the header, model section and chunk index parsers), and
// frame_head_size on the first kHeaderBytes. Any successful parse must be self-consistent.
#include <cstdlib>
#include <span>

#include "fuzz_util.hpp"

namespace {

void check(std::span<const uint8_t> bytes) {
  using namespace kvcodec;
  auto head = frame_head_size(bytes.first(std::min<size_t>(bytes.size(), kHeaderBytes)));
  auto info = read_frame_info(bytes);
  if (!info.ok()) return;
  // A parsed head is whole, agrees with the header's own size field and indexes chunks that
  // lie inside the frame.
  if (!head.ok() || *head != info->head_bytes || info->head_bytes > bytes.size()) std::abort();
  if (info->head_bytes > info->frame_bytes) std::abort();
  for (const ChunkInfo& c : info->chunks)
    if (c.offset < info->head_bytes || c.offset + c.size > info->frame_bytes) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check({data, size});
  const std::vector<uint8_t> repaired = kvcodec::fuzz::with_valid_head_checksum({data, size});
  check(repaired);
  return 0;
}
