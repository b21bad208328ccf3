// Frames from untrusted sources: truncated, bit-flipped, wrong-version and absurd-shape frames
// must return errors, never crash, never allocate absurd memory, never decode silently wrong.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "common/frame.hpp"
#include "common/checksum.hpp"
#include "common/xxh64.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

struct Encoded {
  KVShape shape{3, 150, 2, 16};
  std::vector<uint8_t> raw;
  std::vector<uint8_t> frame;
};

Encoded make_frame(int level, uint32_t group_tokens = 1) {
  Encoded e;
  std::mt19937 rng(1234);
  std::normal_distribution<float> n(0.f, 1.f);
  e.raw.resize(e.shape.elements() * 2);
  for (size_t i = 0; i < e.shape.elements(); ++i) {
    const uint16_t h = detail::f32_to_f16(n(rng) * float(1 + i % 7));
    std::memcpy(&e.raw[2 * i], &h, 2);
  }
  EncodeOptions o;
  o.level = level;
  o.chunk_tokens = 64;
  o.group_tokens = group_tokens;
  KVView v = contiguous_view(e.raw.data(), DType::kF16, e.shape);
  e.frame.resize(max_encoded_size(e.shape, DType::kF16, o));
  auto n_or = encode_into(v, o, e.frame);
  EXPECT_TRUE(n_or.ok());
  e.frame.resize(*n_or);
  return e;
}

Status decode(const Encoded& e, std::span<const uint8_t> frame, std::vector<uint8_t>& out) {
  out.assign(e.raw.size(), 0);
  return decode_into(frame, contiguous_view(out.data(), DType::kF16, e.shape));
}

TEST(Format, InfoDescribesTheFrame) {
  auto e = make_frame(4);
  auto info = read_frame_info(e.frame);
  ASSERT_TRUE(info.ok()) << info.status().to_string();
  EXPECT_EQ(info->format_version, kFormatVersion);
  EXPECT_EQ(info->dtype, DType::kF16);
  EXPECT_EQ(info->shape, e.shape);
  EXPECT_EQ(info->level, 4);
  EXPECT_EQ(info->chunks.size(), 3u);
  EXPECT_EQ(info->chunks[2].tokens, 22u);
  EXPECT_EQ(info->frame_bytes, e.frame.size());
  EXPECT_GT(info->table_bytes, 0u);
  EXPECT_LE(info->table_bytes, info->model_bytes);
  // The head alone is enough for read_frame_info; less than the head is a clear error.
  std::span<const uint8_t> head(e.frame.data(), info->head_bytes);
  EXPECT_TRUE(read_frame_info(head).ok());
  EXPECT_EQ(read_frame_info(head.first(info->head_bytes - 1)).status().code(), StatusCode::kBufferTooSmall);
  auto hs = frame_head_size(head.first(kHeaderBytes));
  ASSERT_TRUE(hs.ok());
  EXPECT_EQ(*hs, info->head_bytes);
}

TEST(Format, EveryTruncationIsAnError) {
  for (int level : {0, 5}) {
    auto e = make_frame(level, level ? 4 : 1);
    std::vector<uint8_t> out;
    ASSERT_TRUE(decode(e, e.frame, out).ok());
    // Every prefix length up to the head, then a stride through the bodies.
    for (size_t len = 0; len < e.frame.size(); len += (len < 2048 ? 1 : 97)) {
      std::span<const uint8_t> prefix(e.frame.data(), len);
      EXPECT_FALSE(decode(e, prefix, out).ok()) << "prefix " << len;
      EXPECT_FALSE(verify_frame(prefix).ok()) << "prefix " << len;
    }
  }
}

TEST(Format, EveryBitFlipIsDetected) {
  // With checksums on, any flipped bit in head or body must be an error (never a wrong tensor).
  for (int level : {0, 6}) {
    auto e = make_frame(level);
    std::vector<uint8_t> out;
    std::mt19937 rng(99);
    for (int trial = 0; trial < 400; ++trial) {
      auto f = e.frame;
      const size_t pos = trial < 64 ? size_t(trial) : rng() % f.size();  // all header bytes, then random
      f[pos] ^= uint8_t(1u << (rng() % 8));
      const Status s = decode(e, f, out);
      EXPECT_FALSE(s.ok()) << "flip at byte " << pos << " level " << level;
    }
  }
}

TEST(Format, CorruptBodiesFailEvenWithoutChecksums) {
  // The rANS end-state check and strict sizes catch corruption the checksum would have caught.
  auto e = make_frame(5, 3);
  auto info = read_frame_info(e.frame);
  ASSERT_TRUE(info.ok());
  DecodeOptions d;
  d.verify_checksums = false;
  std::mt19937 rng(5);
  int detected = 0, trials = 300;
  std::vector<uint8_t> out(e.raw.size());
  std::vector<uint8_t> clean(e.raw.size());
  ASSERT_TRUE(decode_into(e.frame, contiguous_view(clean.data(), DType::kF16, e.shape), d).ok());
  for (int t = 0; t < trials; ++t) {
    auto f = e.frame;
    const size_t pos = info->head_bytes + rng() % (f.size() - info->head_bytes);
    f[pos] ^= uint8_t(1u << (rng() % 8));
    const Status s = decode_into(f, contiguous_view(out.data(), DType::kF16, e.shape), d);
    if (!s.ok()) ++detected;
    else if (out == clean) ++detected;  // flip in padding or an unused bit: harmless
  }
  // Structural checks alone catch the vast majority; the checksum covers the rest.
  EXPECT_GT(detected, trials * 9 / 10);
}

TEST(Format, WrongVersionAndMagic) {
  auto e = make_frame(3);
  std::vector<uint8_t> out;
  auto f = e.frame;
  for (uint16_t version : {uint16_t(0), uint16_t(kMaxFormatVersion + 1)}) {
    std::memcpy(&f[4], &version, 2);
    EXPECT_EQ(decode(e, f, out).code(), StatusCode::kUnsupportedVersion) << version;
  }
  f = e.frame;
  f[0] = 'X';
  EXPECT_EQ(decode(e, f, out).code(), StatusCode::kCorruptData);
}

// Format version 1 differs only in its checksums (plain XXH64 of each chunk body and of the
// head): a frame rewritten as version 1 still decodes to the same values.
TEST(Format, Version1FramesStillDecode) {
  auto e = make_frame(4);
  auto info = read_frame_info(e.frame);
  ASSERT_TRUE(info.ok());
  ASSERT_GT(info->chunks[0].size, detail::kChecksumSegmentBytes) << "want multi-segment chunks";
  std::vector<uint8_t> v1 = e.frame;
  const uint16_t version = 1;
  std::memcpy(&v1[4], &version, 2);
  EXPECT_EQ(read_frame_info(v1).status().code(), StatusCode::kChecksumMismatch);  // v2 checksums, v1 header
  for (size_t k = 0; k < info->chunks.size(); ++k) {
    const uint64_t sum = detail::xxh64(v1.data() + info->chunks[k].offset, info->chunks[k].size);
    std::memcpy(&v1[kHeaderBytes + info->model_bytes + k * kIndexEntryBytes + 16], &sum, 8);
  }
  detail::Xxh64State head;
  head.update(v1.data(), 56);
  head.update(v1.data() + kHeaderBytes, info->head_bytes - kHeaderBytes);
  const uint64_t head_sum = head.digest();
  std::memcpy(&v1[56], &head_sum, 8);
  auto info1 = read_frame_info(v1);
  ASSERT_TRUE(info1.ok()) << info1.status().to_string();
  EXPECT_EQ(info1->format_version, 1);
  EXPECT_TRUE(verify_frame(v1).ok());
  std::vector<uint8_t> out1, out2;
  ASSERT_TRUE(decode(e, v1, out1).ok());
  ASSERT_TRUE(decode(e, e.frame, out2).ok());
  EXPECT_EQ(out1, out2);
  // A version 1 chunk whose body changed fails its (plain XXH64) checksum.
  v1[info->chunks[1].offset + 100] ^= 1;
  EXPECT_EQ(decode(e, v1, out1).code(), StatusCode::kChecksumMismatch);
}

// Writes a header field and recomputes nothing: the checksum or the validation must reject it.
TEST(Format, AbsurdShapesAreRejectedBeforeAllocating) {
  auto e = make_frame(2);
  std::vector<uint8_t> out;
  const size_t fields[] = {12, 16, 20, 24};  // layers, tokens, kv_heads, head_dim
  for (size_t off : fields) {
    for (uint32_t v : {0u, 0xffffffffu, 1u << 20}) {
      auto f = e.frame;
      std::memcpy(&f[off], &v, 4);
      auto info = read_frame_info(f);
      EXPECT_FALSE(info.ok()) << "field " << off << " = " << v;
    }
  }
  // A forged head that passes the checksum (recomputed) but claims 1024 layers x 65536 channels
  // with a tiny model section must still be rejected without allocating gigabytes.
  std::vector<uint8_t> forged(kHeaderBytes + 24, 0);
  std::memcpy(forged.data(), kFrameMagic, 4);
  forged[4] = 1;
  forged[8] = 2;
  forged[10] = 32;
  forged[11] = 12;
  const uint32_t L = 1024, T = 1, H = 256, D = 256, CT = 1, NC = 1;
  std::memcpy(&forged[12], &L, 4);
  std::memcpy(&forged[16], &T, 4);
  std::memcpy(&forged[20], &H, 4);
  std::memcpy(&forged[24], &D, 4);
  std::memcpy(&forged[28], &CT, 4);
  forged[32] = 1;
  forged[34] = 1;
  std::memcpy(&forged[36], &NC, 4);
  const uint64_t fb = forged.size();  // the one chunk is empty and starts right after the head
  std::memcpy(&forged[48], &fb, 8);
  std::memcpy(&forged[kHeaderBytes], &fb, 8);
  detail::Xxh64State st;
  st.update(forged.data(), 56);
  st.update(forged.data() + kHeaderBytes, forged.size() - kHeaderBytes);
  const uint64_t sum = st.digest();
  std::memcpy(&forged[56], &sum, 8);
  auto info = read_frame_info(forged);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), StatusCode::kCorruptData) << info.status().to_string();
  EXPECT_NE(std::string(info.status().message()).find("model section"), std::string::npos);
}

TEST(Format, ChunkDecodeChecksBodyAndIndex) {
  auto e = make_frame(4);
  auto info = read_frame_info(e.frame);
  ASSERT_TRUE(info.ok());
  std::span<const uint8_t> head(e.frame.data(), info->head_bytes);
  const ChunkInfo& c = info->chunks[1];
  std::vector<uint8_t> body(e.frame.begin() + c.offset, e.frame.begin() + c.offset + c.size);
  std::vector<uint8_t> out(e.raw.size());
  KVView v = contiguous_view(out.data(), DType::kF16, e.shape);
  EXPECT_TRUE(decode_chunk_into(head, 1, body, v).ok());
  // The body of another chunk, a short body, a flipped body.
  const ChunkInfo& c0 = info->chunks[0];
  std::vector<uint8_t> other(e.frame.begin() + c0.offset, e.frame.begin() + c0.offset + c0.size);
  EXPECT_FALSE(decode_chunk_into(head, 1, other, v).ok());
  EXPECT_FALSE(decode_chunk_into(head, 1, std::span<const uint8_t>(body).first(body.size() - 4), v).ok());
  body[body.size() / 2] ^= 0x10;
  EXPECT_EQ(decode_chunk_into(head, 1, body, v).code(), StatusCode::kChecksumMismatch);
}

// docs/format.md 2: varints are in their shortest form. The head is re-serialized with the last
// channel's centre written overlong (its last byte continued by a 0 byte): corrupt, while the
// same head written canonically parses.
TEST(Format, OverlongVarintsAreCorrupt) {
  const Encoded e = make_frame(4);
  auto head = detail::parse_head(e.frame);
  ASSERT_TRUE(head.ok()) << head.status().to_string();
  auto write = [&](bool overlong) {
    FrameInfo f = head->info;
    std::vector<uint8_t> model;
    for (size_t i = 0; i < head->layers.size(); ++i) {
      detail::write_layer_model(f, head->layers[i], model);
      if (overlong && i + 1 == head->layers.size()) {
        model.back() |= 0x80;
        model.push_back(0);
      }
    }
    std::vector<uint8_t> out;
    detail::write_head(f, model, out);
    return out;
  };
  const std::vector<uint8_t> canonical = write(false);
  ASSERT_TRUE(detail::parse_head(canonical).ok());
  EXPECT_TRUE(std::equal(canonical.begin(), canonical.end(), e.frame.begin()));  // the encoder's own head
  auto bad = detail::parse_head(write(true));
  EXPECT_EQ(bad.status().code(), StatusCode::kCorruptData) << bad.status().to_string();
}

}  // namespace
}  // namespace kvcodec
