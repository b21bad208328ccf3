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

  DecodeOptions o;
  o.verify_checksums = false;
  // FrameDecoder parses the head once, then decodes up to 64 chunks; decode_chunk_into parses
  // it on every call, so it gets one chunk per input (picked by the input's size). Index n is
  // one past the last chunk and must be an error.
  const uint32_t n = uint32_t(info->chunks.size());
  const uint32_t tried = std::min<uint32_t>(n, 64);
  auto body_of = [&](uint32_t c) {
    if (c < n && info->chunks[c].offset + info->chunks[c].size <= size)
      return bytes.subspan(info->chunks[c].offset, info->chunks[c].size);
    return bytes.subspan(info->head_bytes);
  };
  auto must_fail = [&](uint32_t c, const Status& s) {
    if (c == n && s.ok()) std::abort();
  };
  const uint32_t pick = size % (tried + 1) == tried ? n : uint32_t(size % (tried + 1));
  must_fail(pick, decode_chunk_into(head, pick, body_of(pick), dst->view(), o));
  if (auto decoder = FrameDecoder::open(head); decoder.ok()) {
    for (uint32_t c = 0; c < tried; ++c) (void)decoder->decode_chunk(c, body_of(c), dst->view(), o);
    must_fail(n, decoder->decode_chunk(n, body_of(n), dst->view(), o));
  }
  return 0;
}
