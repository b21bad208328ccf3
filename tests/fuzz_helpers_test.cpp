// The checksum repairs of the fuzz targets (tests/fuzz/fuzz_util.hpp, stream_fixture.hpp): a
// repair that computes the wrong checksum keeps every mutated input at the checksum check, and
// the fuzzer then reports coverage it never reached (issue 11 item 6: the frame helper repaired
// version-2 heads the version-1 way, so 3 million runs of fuzz_decode added 4 inputs).
#include <gtest/gtest.h>

#include <filesystem>

#include "fuzz/fuzz_util.hpp"
#include "fuzz/stream_fixture.hpp"
#include "golden_digests.hpp"

namespace kvcodec {
namespace {

std::vector<std::vector<uint8_t>> golden_frames() {
  std::vector<std::vector<uint8_t>> out;
  for (const auto& e : std::filesystem::directory_iterator(test::golden_dir()))
    if (e.path().extension() == ".kvc") {
      auto bytes = read_file(e.path().string());
      EXPECT_TRUE(bytes.ok());
      if (bytes.ok()) out.push_back(std::move(*bytes));
    }
  return out;
}

TEST(FuzzHelpers, FrameRepairRestoresTheExactChecksums) {
  const auto frames = golden_frames();
  ASSERT_GE(frames.size(), 4u);
  for (const auto& frame : frames) {
    ASSERT_TRUE(verify_frame(frame).ok());
    auto info = read_frame_info(frame);
    ASSERT_TRUE(info.ok());
    EXPECT_GE(info->format_version, 2);  // segmented checksums: the case the old repair got wrong
    // The head checksum (bytes 56..63) broken: the repair gives back the frame bit for bit.
    std::vector<uint8_t> bad = frame;
    bad[60] ^= 0x5a;
    EXPECT_EQ(verify_frame(bad).code(), StatusCode::kChecksumMismatch);
    EXPECT_EQ(fuzz::with_valid_head_checksum(bad), frame);
    // A chunk body changed: with_valid_checksums repairs its index entry and the head.
    if (info->chunks.empty() || info->chunks[0].size == 0) continue;
    bad = frame;
    bad[info->chunks[0].offset] ^= 0x01;
    EXPECT_FALSE(verify_frame(bad).ok());
    const std::vector<uint8_t> fixed = fuzz::with_valid_checksums(bad);
    EXPECT_EQ(fixed.size(), frame.size());
    EXPECT_TRUE(verify_frame(fixed).ok()) << verify_frame(fixed).to_string();
  }
}

TEST(FuzzHelpers, WireRepairRestoresHeaderAndManifestChecksums) {
  using namespace stream_detail;
  auto store = open_store("mem:");
  ASSERT_TRUE(store.ok());
  const auto contexts = fuzz::put_fixture_contexts(**store);
  const std::vector<uint8_t> manifest = serialize_manifest(contexts[0].manifest);
  MessageHeader h;
  h.type = MsgType::kManifest;
  h.request_id = 7;
  h.payload_bytes = manifest.size();
  const std::vector<uint8_t> good = make_message(h, manifest);
  std::vector<uint8_t> two = good;
  two.insert(two.end(), good.begin(), good.end());
  std::vector<uint8_t> bad = two;
  bad[25] ^= 0x10;                                    // first header's checksum
  bad[good.size() + kMessageHeaderBytes + 9] ^= 0x02;  // a field of the second manifest
  fuzz::repair_message_checksums(bad);
  EXPECT_TRUE(std::equal(bad.begin(), bad.begin() + long(good.size()), good.begin()));
  ASSERT_TRUE(decode_header(std::span(bad).subspan(good.size())).ok());
  // The mutated manifest now passes its checksum (and reaches the parser's other checks).
  const auto second = std::span<const uint8_t>(bad).subspan(good.size() + kMessageHeaderBytes);
  EXPECT_NE(parse_manifest(second).status().code(), StatusCode::kChecksumMismatch);
  size_t count = 0;
  EXPECT_EQ(fuzz::whole_messages(bad, &count), bad.size());
  EXPECT_EQ(count, 2u);
}

}  // namespace
}  // namespace kvcodec
