// Fuzzes chunk-wise decoding, as a streaming client does it: the head parsed once, then each
// chunk body decoded alone, through decode_chunk_into and FrameDecoder. Bodies are taken where
// the index says when they fit in the input, else from whatever bytes remain (wrong sizes too).
// The head checksum is repaired and chunk checksums are not verified (see fuzz_decode.cpp).
#include <algorithm>
#include <span>

#include "fuzz_util.hpp"
#include "kvcodec/codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvcodec;
  const std::vector<uint8_t> repaired = fuzz::with_valid_head_checksum({data, size});
  const std::span<const uint8_t> bytes(repaired);
  auto info = read_frame_info(bytes);
  if (!info.ok()) return 0;
  auto dst = fuzz::small_destination(*info);
  if (!dst) return 0;
  const auto head = bytes.first(info->head_bytes);
  auto decoder = FrameDecoder::open(head);

  DecodeOptions o;
  o.verify_checksums = false;
  const uint32_t chunks = uint32_t(std::min<size_t>(info->chunks.size(), 64));
  for (uint32_t c = 0; c <= chunks; ++c) {  // c == chunks: one past the end must be an error
    std::span<const uint8_t> body = bytes.subspan(info->head_bytes);
    if (c < chunks && info->chunks[c].offset + info->chunks[c].size <= size)
      body = bytes.subspan(info->chunks[c].offset, info->chunks[c].size);
    if (decode_chunk_into(head, c, body, dst->view(), o).ok() && c == chunks) std::abort();
    if (decoder.ok()) (void)decoder->decode_chunk(c, body, dst->view(), o);
  }
  return 0;
}
