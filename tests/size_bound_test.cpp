// The size bound (docs/format.md 4.4): a unit whose coding would expand it is stored raw, so
// max_encoded_size stays within the raw bytes plus a head bound -- at most 1.05x the raw bytes
// for a 256-token Llama-3-8B chunk at every level -- and every frame fits it. Stored units make
// a version-3 frame that decodes exactly; frames without one stay version 2.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "encode/model_values.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/synthetic.hpp"
#include "cuda_test_util.hpp"

namespace kvcodec {
namespace {

using namespace test;

uint64_t raw_bytes(const KVShape& s, DType dt) { return s.elements() * dtype_size(dt); }

// The part of max_encoded_size that does not grow with tokens: header, model section bound.
uint64_t head_bound(const KVShape& s, DType dt, const EncodeOptions& o) {
  const bool lossless = o.level == 0;
  const uint32_t slots = lossless ? uint32_t(dtype_size(dt)) : (o.group_tokens > 1 ? 2 : 1);
  return kHeaderBytes + 2ull * s.layers * detail::max_layer_model_bytes(s.channels(), o.table_groups, slots, lossless);
}

TEST(SizeBound, Llama3ChunkWithin105PercentOfRawAtEveryLevel) {
  const KVShape s{32, 256, 8, 128};  // one 256-token chunk of Llama-3-8B (LMCache's object)
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3})
    for (int level = 0; level <= kMaxLevel; ++level) {
      EncodeOptions o;
      o.level = level;
      const double ratio = double(max_encoded_size(s, dt, o)) / double(raw_bytes(s, dt));
      EXPECT_LE(ratio, 1.05) << dtype_name(dt) << " level " << level;
      // Beyond the head bound, at most 1% over the raw bytes (unit directories and headers).
      const double body = double(max_encoded_size(s, dt, o) - head_bound(s, dt, o)) / double(raw_bytes(s, dt));
      EXPECT_LE(body, 1.01) << dtype_name(dt) << " level " << level;
    }
}

TEST(SizeBound, RealFramesFitTheBound) {
  auto kv = make_synthetic("llama3-8b", 256, DType::kBF16, 2);
  ASSERT_TRUE(kv.ok()) << kv.status().to_string();
  for (int level : {0, 4, 9}) {
    EncodeOptions o;
    o.level = level;
    o.threads = 0;
    const size_t bound = max_encoded_size(kv->shape, kv->dtype, o);
    std::vector<uint8_t> frame(bound);
    auto n = encode_into(kv->view(), o, frame);
    ASSERT_TRUE(n.ok()) << n.status().to_string();
    EXPECT_LE(*n, bound);
    EXPECT_LE(double(bound), 1.05 * double(raw_bytes(kv->shape, kv->dtype)));
  }
}

// Frames of caches that coding expands: stored units, version 3, exact values, within the bound.
TEST(SizeBound, ExpandingUnitsAreStoredRaw) {
  const KVShape s{2, 80, 2, 16};
  for (const auto& [dt, level] : kExpandingCases) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " level " + std::to_string(level));
      KVCache kv = skewed_cache(s, dt, 64, level == 0, 5);
      EncodeOptions o;
      o.level = level;
      o.chunk_tokens = 16;
      const size_t bound = max_encoded_size(s, dt, o);
      std::vector<uint8_t> frame(bound);
      auto n = encode_into(kv.view(), o, frame);
      ASSERT_TRUE(n.ok()) << n.status().to_string();
      frame.resize(*n);
      auto info = read_frame_info(frame);
      ASSERT_TRUE(info.ok());
      auto stats = analyze_frame(frame);
      ASSERT_TRUE(stats.ok()) << stats.status().to_string();
      EXPECT_EQ(info->format_version, kStoredUnitsFormatVersion);
      // Some units of the random last chunk are stored; the constant chunks' are coded.
      const size_t row = s.channels() * dtype_size(dt);
      EXPECT_GE(stats->stored_units, 1u);
      EXPECT_EQ(stats->stored_bytes, stats->stored_units * 16 * row);
      std::vector<uint8_t> back(kv.data.size());
      ASSERT_TRUE(decode_into(frame, contiguous_view(back.data(), dt, s)).ok());
      // Stored elements come back exactly, at every level.
      uint32_t seen = 0;
      for (uint32_t k = 0; k < info->chunks.size(); ++k)
        for (uint32_t u = 0; u < 2 * s.layers; ++u) {
          uint32_t entry;
          std::memcpy(&entry, &frame[info->chunks[k].offset + 4 * u], 4);
          if (!(entry & kStoredUnitFlag)) continue;
          ++seen;
          const size_t at = (size_t(u) * s.tokens + 16 * k) * row;
          EXPECT_EQ(0, std::memcmp(&back[at], &kv.data[at], 16 * row)) << "chunk " << k << " unit " << u;
        }
      EXPECT_EQ(seen, stats->stored_units);
      if (level == 0) EXPECT_EQ(back, kv.data);
      // Chunk by chunk, through the streaming decoder.
      auto dec = FrameDecoder::open(frame);
      ASSERT_TRUE(dec.ok());
      std::vector<uint8_t> chunked(kv.data.size());
      for (uint32_t k = 0; k < info->chunks.size(); ++k) {
        const ChunkInfo& ci = info->chunks[k];
        ASSERT_TRUE(dec->decode_chunk(k, {frame.data() + ci.offset, ci.size}, contiguous_view(chunked.data(), dt, s)).ok());
      }
      EXPECT_EQ(chunked, back);
    }
}

TEST(SizeBound, CompressibleFramesStayVersion2) {
  KVCache kv = random_cache({2, 64, 2, 16}, DType::kBF16, 3);
  for (int level : {0, 4}) {
    EncodeOptions o;
    o.level = level;
    const auto frame = encode(kv.view(), o);
    auto info = read_frame_info(frame);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->format_version, kFormatVersion);
    EXPECT_EQ(analyze_frame(frame)->stored_units, 0u);
  }
}

// A damaged stored unit is an error, never wrong values: its size, its flag.
TEST(SizeBound, DamagedStoredUnitsAreErrors) {
  const KVShape s{2, 80, 2, 16};
  KVCache kv = skewed_cache(s, DType::kF32, 64, true, 5);
  EncodeOptions o;
  o.level = 0;
  o.chunk_tokens = 16;
  const auto frame = encode(kv.view(), o);
  auto info = read_frame_info(frame);
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(info->format_version, kStoredUnitsFormatVersion);
  const uint64_t body = info->chunks[4].offset;
  uint32_t entry;
  std::memcpy(&entry, &frame[body], 4);
  ASSERT_TRUE(entry & kStoredUnitFlag);  // unit (0, K) of chunk 4, the random one
  DecodeOptions unchecked;
  unchecked.verify_checksums = false;
  std::vector<uint8_t> out(kv.data.size());
  const KVView dst = contiguous_view(out.data(), DType::kF32, s);
  auto bad = frame;
  bad[body + 3] &= 0x7F;  // the flag cleared: the raw bytes read as a lane stream
  EXPECT_EQ(decode_into(bad, dst, unchecked).code(), StatusCode::kCorruptData);
  EXPECT_EQ(decode_into(bad, dst).code(), StatusCode::kChecksumMismatch);
  // A reader of versions 1-2 (the version field rewritten) never sees a stored unit: the head
  // checksum no longer matches.
  bad = frame;
  bad[4] = 2;
  EXPECT_EQ(decode_into(bad, dst).code(), StatusCode::kChecksumMismatch);
  bad[4] = uint8_t(kMaxFormatVersion + 1);
  EXPECT_EQ(decode_into(bad, dst).code(), StatusCode::kUnsupportedVersion);
}

}  // namespace
}  // namespace kvcodec
