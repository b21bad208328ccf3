// The decoder-only build (kvcodec_decoder: common, decode and io, no encoder object). This
// program is linked against it alone, so building it proves that decoding needs no encoder
// code; running it checks that every golden frame (tests/golden, both format versions) decodes
// to its recorded digest -- whole, chunk by chunk through a FrameDecoder, and through
// analyze_frame. tests/decode_only/no_encoder.cmake checks the archive holds no encoder symbol.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/xxh64.hpp"
#include "../golden_digests.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"

namespace kvcodec {
namespace {

using test::golden_dir;
using test::read_digests;

uint64_t digest(const std::vector<uint8_t>& bytes) { return detail::xxh64(bytes.data(), bytes.size()); }

void check_frame(const std::string& path, uint64_t expected) {
  SCOPED_TRACE(path);
  auto frame = read_file(path);
  ASSERT_TRUE(frame.ok()) << frame.status().to_string();
  auto info = read_frame_info(*frame);
  ASSERT_TRUE(info.ok()) << info.status().to_string();
  ASSERT_TRUE(verify_frame(*frame).ok());

  auto whole = KVCache::allocate(info->dtype, info->shape);
  ASSERT_TRUE(whole.ok());
  ASSERT_TRUE(decode_into(*frame, whole->view()).ok());
  EXPECT_EQ(digest(whole->data), expected);

  const std::span<const uint8_t> bytes(*frame);
  auto decoder = FrameDecoder::open(bytes.first(info->head_bytes));
  ASSERT_TRUE(decoder.ok()) << decoder.status().to_string();
  auto chunked = KVCache::allocate(info->dtype, info->shape);
  ASSERT_TRUE(chunked.ok());
  for (uint32_t k = 0; k < info->chunks.size(); ++k) {
    const ChunkInfo& c = info->chunks[k];
    ASSERT_TRUE(decoder->decode_chunk(k, bytes.subspan(c.offset, c.size), chunked->view()).ok());
  }
  EXPECT_EQ(chunked->data, whole->data);

  auto stats = analyze_frame(*frame);
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  EXPECT_GT(stats->symbols, 0u);
}

TEST(DecodeOnly, GoldenFramesDecodeToTheirDigests) {
  const auto digests = read_digests();
  ASSERT_FALSE(digests.empty());
  for (const auto& [name, expected] : digests) {
    check_frame(golden_dir() + "/" + name + ".kvc", expected);
    // Format version 1 records exist for the cases that predate version 2 (tests/golden/README.md).
    if (std::filesystem::exists(golden_dir() + "/v1/" + name + ".kvc"))
      check_frame(golden_dir() + "/v1/" + name + ".kvc", expected);
  }
  for (const auto& [path, expected] : read_digests("records.txt")) check_frame(golden_dir() + "/" + path + ".kvc", expected);
}

}  // namespace
}  // namespace kvcodec
