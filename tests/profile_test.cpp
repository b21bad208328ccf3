// Transform coding with a profile (include/kvcodec/profile.hpp, docs/format.md 2.1 and 8):
// round trips within the documented bound, range decodes, keys before RoPE, version 1-3
// compatibility, the errors of a missing / wrong / corrupt profile or frame, determinism, and
// the committed version 4 golden frame (tests/golden/v4/).
#include <bit>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/bytes.hpp"
#include "common/checksum.hpp"
#include "common/dtype.hpp"
#include "common/frame.hpp"
#include "common/quant.hpp"
#include "common/profile_rows.hpp"
#include "common/simd.hpp"
#include "common/xxh64.hpp"
#include "decode/packed_model.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "profile_test_util.hpp"

namespace kvcodec {
namespace {

using test::encode_with;
using test::make_cache;
using test::make_test_profile;
using test::to_f16;
using test::uniform;

// The documented bound (docs/format.md 7): per (layer, K/V, token, head) row,
//   ||x - x_hat||_2 <= sqrt(d) * step / 2 * (1 + 1e-4) + ||ulp(x_hat) / 2||_2 + 1e-6 ||x||_2
// with step <= kLevelStep[n] * layer_factor(l) * (RMS deviation of the (layer, K/V)'s
// coefficients from their per-component means).
void expect_within_bound(const std::vector<uint16_t>& in, const std::vector<uint16_t>& out, const KVShape& s,
                         const Profile& p, int level, uint32_t first) {
  std::vector<float> coef;
  ASSERT_TRUE(profile_forward(p, contiguous_view(const_cast<uint16_t*>(in.data()), DType::kF16, s), first, coef).ok());
  const uint32_t d = s.head_dim, C = uint32_t(s.channels());
  size_t checked = 0;
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv) {
      const float* y = coef.data() + (size_t(l) * 2 + kv) * s.tokens * C;
      double ss = 0;
      for (uint32_t c = 0; c < C; ++c) {
        double m = 0;
        for (uint32_t t = 0; t < s.tokens; ++t) m += y[size_t(t) * C + c];
        m /= s.tokens;
        for (uint32_t t = 0; t < s.tokens; ++t) ss += (y[size_t(t) * C + c] - m) * (y[size_t(t) * C + c] - m);
      }
      const double step = kLevelStep[level] * layer_factor(l, s.layers) * std::sqrt(ss / (double(s.tokens) * C));
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (uint32_t h = 0; h < s.kv_heads; ++h) {
          const size_t at = ((size_t(l) * 2 + kv) * s.tokens + t) * C + size_t(h) * d;
          double e2 = 0, u2 = 0, x2 = 0;
          for (uint32_t i = 0; i < d; ++i) {
            const double x = detail::f16_to_f32(in[at + i]), xh = detail::f16_to_f32(out[at + i]);
            const double ulp = std::ldexp(1.0, std::max(-24, std::ilogb(std::max(std::fabs(xh), 1e-30)) - 10));
            e2 += (x - xh) * (x - xh);
            u2 += ulp * ulp / 4;
            x2 += x * x;
          }
          const double bound = std::sqrt(double(d)) * step / 2 * (1 + 1e-4) + std::sqrt(u2) + 1e-6 * std::sqrt(x2);
          ASSERT_LE(std::sqrt(e2), bound) << "layer " << l << " kv " << kv << " token " << t << " head " << h;
          ++checked;
        }
    }
  EXPECT_EQ(checked, size_t(s.layers) * 2 * s.tokens * s.kv_heads);
}

const KVShape kShape{3, 70, 2, 16};

TEST(Profile, RoundTripWithinBoundEveryLevel) {
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 1));
  const Profile p = make_test_profile(kShape, false, 3);
  for (int level = 1; level <= kMaxLevel; ++level) {
    EncodeOptions o;
    o.level = level;
    o.chunk_tokens = 32;
    auto frame = encode_with(in, kShape, o, p);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    auto info = read_frame_info(*frame);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->format_version, kTransformFormatVersion);
    EXPECT_TRUE(info->transformed);
    EXPECT_EQ(info->profile_digest, p.digest);
    EXPECT_EQ(info->dtype, DType::kF16);
    std::vector<uint16_t> out(in.size());
    ASSERT_TRUE(decode_into(*frame, p, contiguous_view(out.data(), DType::kF16, kShape)).ok());
    expect_within_bound(in, out, kShape, p, level, 0);
  }
}

TEST(Profile, KeysBeforeRopeRoundTripAtLargePositions) {
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 2));
  const Profile p = make_test_profile(kShape, true, 4);
  ASSERT_EQ(p.rope_cos.size(), size_t(kShape.head_dim / 2) * kRopePositionBits);
  for (uint32_t first : {0u, 12345u, (1u << 24) - kShape.tokens}) {
    EncodeOptions o;
    o.level = 3;
    auto frame = encode_with(in, kShape, o, p, first);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    EXPECT_EQ(read_frame_info(*frame)->first_position, first);
    std::vector<uint16_t> out(in.size());
    ASSERT_TRUE(decode_into(*frame, p, contiguous_view(out.data(), DType::kF16, kShape)).ok());
    expect_within_bound(in, out, kShape, p, o.level, first);
  }
  EncodeOptions o;
  EXPECT_EQ(encode_with(in, kShape, o, p, (1u << 24) - kShape.tokens + 1).status().code(), StatusCode::kInvalidArgument);
}

TEST(Profile, RangeDecodesMatchTheWholeDecodeAndLeaveTheRestAlone) {
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 5));
  const Profile p = make_test_profile(kShape, true, 6);
  EncodeOptions o;
  o.chunk_tokens = 16;
  auto frame = encode_with(in, kShape, o, p);
  ASSERT_TRUE(frame.ok());
  std::vector<uint16_t> whole(in.size());
  ASSERT_TRUE(decode_into(*frame, p, contiguous_view(whole.data(), DType::kF16, kShape)).ok());
  DecodeOptions r;
  r.chunk_begin = 1;
  r.chunk_end = 3;
  r.layer_begin = 1;
  r.layer_end = 2;
  r.threads = 3;
  std::vector<uint16_t> part(in.size(), 0x7e00);
  ASSERT_TRUE(decode_into(*frame, p, contiguous_view(part.data(), DType::kF16, kShape), r).ok());
  const uint32_t C = uint32_t(kShape.channels());
  size_t inside = 0;
  for (uint32_t l = 0; l < kShape.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < kShape.tokens; ++t)
        for (uint32_t c = 0; c < C; ++c) {
          const size_t at = ((size_t(l) * 2 + kv) * kShape.tokens + t) * C + c;
          const bool in_range = l == 1 && t >= 16 && t < 48;
          inside += in_range;
          ASSERT_EQ(part[at], in_range ? whole[at] : uint16_t(0x7e00)) << l << " " << kv << " " << t << " " << c;
        }
  EXPECT_EQ(inside, size_t(2) * 32 * C);
}

// A buffer of max_encoded_size is encoded into in place; a smaller one through a copy: same
// bytes, and one byte short of the frame is kBufferTooSmall with nothing else wrong.
TEST(Profile, SmallerBuffersGiveTheSameFrame) {
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 5));
  const Profile p = make_test_profile(kShape, true, 6);
  EncodeOptions o;
  o.chunk_tokens = 16;
  const auto frame = encode_with(in, kShape, o, p, 9);
  ASSERT_TRUE(frame.ok());
  const KVView v = contiguous_view(const_cast<uint16_t*>(in.data()), DType::kF16, kShape);
  std::vector<uint8_t> exact(frame->size());
  auto n = encode_into(v, o, p, exact, 9);
  ASSERT_TRUE(n.ok()) << n.status().to_string();
  EXPECT_EQ(exact, *frame);
  exact.pop_back();
  EXPECT_EQ(encode_into(v, o, p, exact, 9).status().code(), StatusCode::kBufferTooSmall);
  std::vector<uint16_t> out(in.size());
  EXPECT_TRUE(decode_into(*frame, p, contiguous_view(out.data(), DType::kF16, kShape)).ok());
}

TEST(Profile, BytesDoNotDependOnThreads) {
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 7));
  const Profile p = make_test_profile(kShape, true, 8);
  EncodeOptions a, b;
  a.threads = 1;
  b.threads = 4;
  b.chunk_tokens = a.chunk_tokens = 16;
  EXPECT_EQ(*encode_with(in, kShape, a, p), *encode_with(in, kShape, b, p));
}

TEST(Profile, MissingOrWrongProfileIsAnErrorAndWritesNothing) {
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 9));
  const Profile p = make_test_profile(kShape, false, 10);
  const Profile other = make_test_profile(kShape, false, 11);
  ASSERT_NE(p.digest, other.digest);
  EncodeOptions o;
  auto frame = encode_with(in, kShape, o, p);
  ASSERT_TRUE(frame.ok());
  std::vector<uint16_t> out(in.size(), 0x1234);
  const KVView v = contiguous_view(out.data(), DType::kF16, kShape);
  Status s = decode_into(*frame, v);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("profile"), std::string::npos) << s.to_string();
  EXPECT_EQ(FrameDecoder::open(*frame).status().code(), StatusCode::kInvalidArgument);
  auto stats = analyze_frame(*frame);  // the coefficients' symbols: no profile needed
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  EXPECT_EQ(stats->symbols + stats->stored_bytes / 4, kShape.elements());
  EXPECT_EQ(decode_into(*frame, other, v).code(), StatusCode::kInvalidArgument);
  // The GPU decoder's model packing (what the CUDA Decoder is built from) refuses it.
  EXPECT_EQ(detail::pack_model(*frame).status().code(), StatusCode::kUnavailable);
  for (uint16_t x : out) ASSERT_EQ(x, 0x1234);
  // A profile of another shape at encode time, level 0, non-finite input.
  const KVShape small{2, 70, 2, 16};
  EXPECT_EQ(encode_with(in, kShape, o, make_test_profile(small, false, 1)).status().code(), StatusCode::kInvalidArgument);
  o.level = 0;
  EXPECT_EQ(encode_with(in, kShape, o, p).status().code(), StatusCode::kInvalidArgument);
  o.level = 4;
  std::vector<uint16_t> nan = in;
  nan[100] = 0x7e00;
  EXPECT_EQ(encode_with(nan, kShape, o, p).status().code(), StatusCode::kInvalidArgument);
}

// Streaming decode: a FrameDecoder opened on the head with the profile decodes each chunk (in
// any order, any layer range) to exactly the whole-frame decode; decode_chunk_into the same.
TEST(Profile, FrameDecoderWithTheProfileDecodesChunksAsTheWholeDecode) {
  const KVShape s{3, 150, 2, 16};
  for (bool rope : {false, true}) {
    SCOPED_TRACE(rope ? "keys before RoPE" : "plain");
    const std::vector<uint16_t> in = to_f16(make_cache(s, 21));
    const auto p = std::make_shared<const Profile>(make_test_profile(s, rope, 22));
    EncodeOptions o;
    o.level = 5;
    o.chunk_tokens = 64;  // three chunks, the last one partial
    auto frame = encode_with(in, s, o, *p, rope ? 1000 : 0);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    std::vector<uint16_t> whole(in.size());
    ASSERT_TRUE(decode_into(*frame, *p, contiguous_view(whole.data(), DType::kF16, s)).ok());
    auto info = read_frame_info(*frame);
    ASSERT_TRUE(info.ok());
    ASSERT_EQ(info->chunks.size(), 3u);
    const std::span<const uint8_t> head = std::span<const uint8_t>(*frame).first(info->head_bytes);
    auto body = [&](uint32_t k) { return std::span<const uint8_t>(*frame).subspan(info->chunks[k].offset, info->chunks[k].size); };
    auto dec = FrameDecoder::open(head, p);
    ASSERT_TRUE(dec.ok()) << dec.status().to_string();
    EXPECT_TRUE(dec->info().transformed);
    EXPECT_EQ(dec->info().dtype, DType::kF16);
    EXPECT_EQ(dec->info().profile_digest, p->digest);
    std::vector<uint16_t> chunked(in.size(), 0x1234);
    DecodeOptions two;
    two.threads = 2;
    for (uint32_t k = 3; k-- > 0;)
      ASSERT_TRUE(dec->decode_chunk(k, body(k), contiguous_view(chunked.data(), DType::kF16, s), two).ok());
    EXPECT_EQ(chunked, whole);
    // One chunk, one layer: exactly its rows are written.
    std::vector<uint16_t> one(in.size(), 0x1234);
    DecodeOptions lo;
    lo.layer_begin = 1;
    lo.layer_end = 2;
    ASSERT_TRUE(decode_chunk_into(head, 1, body(1), *p, contiguous_view(one.data(), DType::kF16, s), lo).ok());
    for (size_t i = 0; i < one.size(); ++i) {
      const size_t t = i / s.channels() % s.tokens, l = i / (s.channels() * s.tokens * 2);
      ASSERT_EQ(one[i], l == 1 && t >= 64 && t < 128 ? whole[i] : uint16_t(0x1234)) << i;
    }
    // A corrupt body is an error, not a tensor.
    std::vector<uint8_t> bad(body(2).begin(), body(2).end());
    bad[bad.size() / 2] ^= 1;
    EXPECT_EQ(dec->decode_chunk(2, bad, contiguous_view(one.data(), DType::kF16, s)).code(), StatusCode::kChecksumMismatch);
    // Missing or wrong profile: kInvalidArgument naming the digest the frame needs.
    char need[17];
    std::snprintf(need, sizeof need, "%016llx", static_cast<unsigned long long>(p->digest));
    const auto other = std::make_shared<const Profile>(make_test_profile(s, rope, 23));
    for (const auto& q : {std::shared_ptr<const Profile>(), other}) {
      auto wrong = FrameDecoder::open(head, q);
      ASSERT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(std::string(wrong.status().message()).find(need), std::string::npos) << wrong.status().to_string();
    }
    EXPECT_EQ(decode_chunk_into(head, 0, body(0), *other, contiguous_view(one.data(), DType::kF16, s)).code(),
              StatusCode::kInvalidArgument);
    const KVShape small{2, 150, 2, 16};
    EXPECT_EQ(FrameDecoder::open(head, std::make_shared<const Profile>(make_test_profile(small, rope, 22))).status().code(),
              StatusCode::kInvalidArgument);
  }
}

TEST(Profile, OlderFramesDecodeAsWithoutAProfile) {
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 12));
  const Profile p = make_test_profile(kShape, false, 13);
  EncodeOptions o;
  std::vector<uint8_t> frame(max_encoded_size(kShape, DType::kF16, o));
  auto n = encode_into(contiguous_view(const_cast<uint16_t*>(in.data()), DType::kF16, kShape), o, frame);
  ASSERT_TRUE(n.ok());
  frame.resize(*n);
  EXPECT_EQ(read_frame_info(frame)->format_version, kFormatVersion);
  std::vector<uint16_t> a(in.size()), b(in.size());
  ASSERT_TRUE(decode_into(frame, contiguous_view(a.data(), DType::kF16, kShape)).ok());
  ASSERT_TRUE(decode_into(frame, p, contiguous_view(b.data(), DType::kF16, kShape)).ok());
  EXPECT_EQ(a, b);
  // A plain head opens with a profile too (unused), and decodes chunks as without one.
  auto dec = FrameDecoder::open(frame, std::make_shared<const Profile>(p));
  ASSERT_TRUE(dec.ok()) << dec.status().to_string();
  EXPECT_FALSE(dec->info().transformed);
  std::vector<uint16_t> c(in.size());
  for (uint32_t k = 0; k < dec->info().chunks.size(); ++k) {
    const ChunkInfo& ci = dec->info().chunks[k];
    ASSERT_TRUE(dec->decode_chunk(k, std::span<const uint8_t>(frame).subspan(ci.offset, ci.size),
                                  contiguous_view(c.data(), DType::kF16, kShape)).ok());
  }
  EXPECT_EQ(a, c);
}

TEST(Profile, CorruptProfileFilesAreRejected) {
  const KVShape s{1, 4, 1, 4};
  const Profile p = make_test_profile(s, true, 14);
  const std::vector<uint8_t> bytes = serialize_profile(p);
  auto back = parse_profile(bytes);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->digest, p.digest);
  EXPECT_EQ(serialize_profile(*back), bytes);
  EXPECT_EQ(serialized_profile_size(p), bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::vector<uint8_t> bad = bytes;
    bad[i] ^= 0x10;
    auto r = parse_profile(bad);
    ASSERT_FALSE(r.ok()) << "flip at byte " << i;
    EXPECT_TRUE(r.status().code() == StatusCode::kCorruptData || r.status().code() == StatusCode::kUnsupportedVersion);
  }
  for (size_t n : {size_t(0), size_t(8), bytes.size() - 1})
    EXPECT_EQ(parse_profile(std::span<const uint8_t>(bytes).first(n)).status().code(), StatusCode::kCorruptData);
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_EQ(parse_profile(longer).status().code(), StatusCode::kCorruptData);
}

TEST(Profile, CorruptVersion4FramesAreErrors) {
  const KVShape s{1, 20, 1, 8};
  const std::vector<uint16_t> in = to_f16(make_cache(s, 15));
  const Profile p = make_test_profile(s, true, 16);
  EncodeOptions o;
  o.chunk_tokens = 8;
  auto frame = encode_with(in, s, o, p);
  ASSERT_TRUE(frame.ok());
  std::vector<uint16_t> out(in.size());
  const KVView v = contiguous_view(out.data(), DType::kF16, s);
  for (size_t i = 0; i < frame->size(); ++i) {
    std::vector<uint8_t> bad = *frame;
    bad[i] ^= 0x01;
    EXPECT_FALSE(decode_into(bad, p, v).ok()) << "flip at byte " << i;
  }
  EXPECT_EQ(decode_into(std::span<const uint8_t>(*frame).first(frame->size() - 1), p, v).code(),
            StatusCode::kBufferTooSmall);
}

// ---- golden frame (tests/golden/v4) -----------------------------------------------------------

std::string golden(const std::string& name) { return std::string(KVCODEC_TEST_DIR) + "/golden/v4/" + name; }

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
void write_all(const std::string& path, std::span<const uint8_t> b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// f16, 2 layers x 40 tokens x 2 heads x 16, level 4, chunks of 16, keys before RoPE from
// position 100. The profile file is committed (its RoPE tables came from libm once).
// The batched transforms (rows side by side, AVX-512 register blocks when d % 8 == 0) give the
// bits of the row-by-row reference on every SIMD path: AVX-512, AVX2 and the baseline.
TEST(Profile, BatchedTransformsMatchTheRowByRowReference) {
  for (uint32_t d : {6u, 40u, 64u, 128u}) {
    const KVShape s{1, 1, 2, d};
    const Profile p = make_test_profile(s, true, 7 + d);
    const size_t head = detail::profile_head(p, 0, 0, 1), n = 37, stride = d + 3;
    const uint32_t pos0 = 1000003;
    std::vector<float> x(n * stride), ref_y(n * stride), ref_x(n * d);
    for (size_t i = 0; i < x.size(); ++i) x[i] = 3.0f * uniform(d * 100000 + i);
    std::vector<double> at, axes, cs;
    detail::transposed_axes(p, head, at);
    detail::head_axes(p, head, axes);
    detail::rope_table(p, pos0, uint32_t(n), cs);
    for (size_t r = 0; r < n; ++r) {
      detail::forward_row(p, head, at.data(), 0, pos0 + uint32_t(r), x.data() + r * stride, ref_y.data() + r * stride);
      detail::inverse_row(p, head, 0, pos0 + uint32_t(r), ref_y.data() + r * stride, ref_x.data() + r * d);
    }
    // The product alone, on doubles with full mantissas (float inputs make its products exact).
    std::vector<double> m(size_t(d) * d), v(n * d), init(d), ref(n * d, 0.0);
    for (size_t i = 0; i < m.size(); ++i) m[i] = double(uniform(i + 11)) / 3.0;
    for (size_t i = 0; i < v.size(); ++i) v[i] = double(uniform(i + 99999)) / 7.0;
    for (size_t i = 0; i < d; ++i) init[i] = double(uniform(i + 555)) / 11.0;
    for (size_t r = 0; r < n; ++r)
      for (size_t j = 0; j < d; ++j) {
        double acc = init[j];
        for (size_t k = 0; k < d; ++k) acc += m[k * d + j] * v[r * d + k];
        ref[r * d + j] = acc;
      }
    for (int path = 0; path < 3; ++path) {
      detail::set_avx512_enabled(path == 0);
      detail::set_simd_enabled(path < 2);
      detail::RowScratch w;
      w.size_for(n, d);
      for (size_t r = 0; r < n; ++r)
        for (size_t i = 0; i < d; ++i) w.in[r * d + i] = x[r * stride + i];
      std::vector<float> y(n * stride), back(n * d);
      std::vector<double> out(n * d);
      detail::rows_product(init.data(), m.data(), v.data(), n, d, out.data(), false);
      for (size_t i = 0; i < out.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint64_t>(out[i]), std::bit_cast<uint64_t>(ref[i])) << "product, d " << d << " path " << path;
      // Factors that are floats with full 24-bit significands (exact products): the fused path.
      std::vector<double> mf(m.size()), vf(v.size()), reff(ref.size());
      for (size_t i = 0; i < m.size(); ++i) mf[i] = double(float(m[i] * 1.0000001));
      for (size_t i = 0; i < v.size(); ++i) vf[i] = double(float(v[i] * 0.9999999 * 1000.0));
      for (size_t r = 0; r < n; ++r)
        for (size_t j = 0; j < d; ++j) {
          double acc = init[j];
          for (size_t k = 0; k < d; ++k) acc += mf[k * d + j] * vf[r * d + k];
          reff[r * d + j] = acc;
        }
      detail::rows_product(init.data(), mf.data(), vf.data(), n, d, out.data(), true);
      for (size_t i = 0; i < out.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint64_t>(out[i]), std::bit_cast<uint64_t>(reff[i])) << "exact product, d " << d << " path " << path;
      detail::forward_rows(p, head, at.data(), 0, cs.data(), n, w, y.data(), stride);
      detail::inverse_rows(p, head, axes.data(), 0, cs.data(), ref_y.data(), stride, n, w, back.data());
      for (size_t r = 0; r < n; ++r)
        for (size_t i = 0; i < d; ++i) {
          ASSERT_EQ(std::bit_cast<uint32_t>(y[r * stride + i]), std::bit_cast<uint32_t>(ref_y[r * stride + i]))
              << "forward, d " << d << " path " << path << " row " << r << " component " << i;
          ASSERT_EQ(std::bit_cast<uint32_t>(back[r * d + i]), std::bit_cast<uint32_t>(ref_x[r * d + i]))
              << "inverse, d " << d << " path " << path << " row " << r << " channel " << i;
        }
    }
    detail::set_avx512_enabled(true);
    detail::set_simd_enabled(true);
  }
}

// KVCODEC_WRITE_GOLDEN: a golden profile and frame (STEM.kvprofile, STEM.kvc) and the digest of
// the frame's decode.
void write_golden(const std::string& stem, const std::string& digest_file, const Profile& p,
                  const std::vector<uint8_t>& frame, const KVShape& s) {
  write_all(golden(stem + ".kvprofile"), serialize_profile(p));
  write_all(golden(stem + ".kvc"), frame);
  std::vector<uint16_t> out(s.elements());
  ASSERT_TRUE(decode_into(frame, p, contiguous_view(out.data(), DType::kF16, s)).ok());
  std::ofstream(golden(digest_file)) << std::hex << detail::xxh64(out.data(), out.size() * 2, 0) << "\n";
}

TEST(Profile, GoldenVersion4Frame) {
  const KVShape s{2, 40, 2, 16};
  const std::vector<uint16_t> in = to_f16(make_cache(s, 21));
  EncodeOptions o;
  o.chunk_tokens = 16;
  o.rd_quantize = false;  // the default, the encoder of this frame
  if (std::getenv("KVCODEC_WRITE_GOLDEN")) {
    const Profile p = make_test_profile(s, true, 22);
    auto frame = encode_with(in, s, o, p, 100);
    ASSERT_TRUE(frame.ok());
    write_golden("f16_level4_rope", "digest.txt", p, *frame, s);
    GTEST_SKIP() << "rewrote tests/golden/v4";
  }
  auto p = parse_profile(read_all(golden("f16_level4_rope.kvprofile")));
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  const std::vector<uint8_t> frame = read_all(golden("f16_level4_rope.kvc"));
  ASSERT_FALSE(frame.empty());
  EXPECT_EQ(read_frame_info(frame)->format_version, kTransformFormatVersion);
  std::vector<uint16_t> out(in.size());
  ASSERT_TRUE(decode_into(frame, *p, contiguous_view(out.data(), DType::kF16, s)).ok());
  std::ifstream dig(golden("digest.txt"));
  uint64_t want = 0;
  dig >> std::hex >> want;
  EXPECT_EQ(detail::xxh64(out.data(), out.size() * 2, 0), want);
  expect_within_bound(in, out, s, *p, o.level, 100);
  auto again = encode_with(in, s, o, *p, 100);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, frame) << "the encoder no longer writes the committed version 4 frame";
  // The baseline (SSE2) transforms give the same bits as the AVX2 ones.
  detail::set_simd_enabled(false);
  auto scalar = encode_with(in, s, o, *p, 100);
  std::vector<uint16_t> out2(in.size());
  const Status st = decode_into(frame, *p, contiguous_view(out2.data(), DType::kF16, s));
  detail::set_simd_enabled(true);
  ASSERT_TRUE(scalar.ok() && st.ok());
  EXPECT_EQ(*scalar, frame);
  EXPECT_EQ(out2, out);
}

// ---- Profile models (docs/format.md 2.2, profile version 2) --------------------------------

// A profile with layer models calibrated on two caches of other seeds than the tests code.
Profile models_profile(const KVShape& s, bool rope, uint64_t seed) {
  Profile p = make_test_profile(s, rope, seed);
  const KVShape cs{s.layers, 90, s.kv_heads, s.head_dim};
  std::vector<std::vector<uint16_t>> caches = {to_f16(make_cache(cs, seed + 100)), to_f16(make_cache(cs, seed + 101))};
  std::vector<KVView> views;
  for (auto& c : caches) views.push_back(contiguous_view(c.data(), DType::kF16, cs));
  const Status st = calibrate_profile_models(p, views);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return p;
}

// The bound of docs/format.md 7 with profile models: the step is the profile model's.
void expect_within_model_bound(const std::vector<uint16_t>& in, const std::vector<uint16_t>& out, const KVShape& s,
                               const Profile& p, int level) {
  const uint32_t d = s.head_dim, C = uint32_t(s.channels());
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv) {
      detail::LayerModel m;
      ASSERT_TRUE(detail::parse_profile_model(p.models[(size_t(level - 1) * s.layers + l) * 2 + kv], C, m).ok());
      float step = 0;
      for (int32_t code : m.step_code) step = std::max(step, detail::step_from_code(code));
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (uint32_t h = 0; h < s.kv_heads; ++h) {
          const size_t at = ((size_t(l) * 2 + kv) * s.tokens + t) * C + size_t(h) * d;
          double e2 = 0, u2 = 0;
          for (uint32_t i = 0; i < d; ++i) {
            const double x = detail::f16_to_f32(in[at + i]), xh = detail::f16_to_f32(out[at + i]);
            const double ulp = std::ldexp(1.0, std::max(-24, std::ilogb(std::max(std::fabs(xh), 1e-30)) - 10));
            e2 += (x - xh) * (x - xh);
            u2 += ulp * ulp / 4;
          }
          ASSERT_LE(std::sqrt(e2), std::sqrt(double(d)) * step / 2 * (1 + 1e-4) + std::sqrt(u2) + 1e-5)
              << "level " << level << " layer " << l << " kv " << kv << " token " << t;
        }
    }
}

TEST(ProfileModels, FramesReferenceTheProfileAndDecodeWithinBound) {
  const Profile p = models_profile(kShape, true, 31);
  ASSERT_EQ(p.models.size(), size_t(kMaxLevel) * 2 * kShape.layers);
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 32));
  uint32_t refs = 0;
  for (int level = 1; level <= kMaxLevel; ++level) {
    EncodeOptions o;
    o.level = level;
    auto frame = encode_with(in, kShape, o, p, 7);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    auto info = read_frame_info(*frame);
    ASSERT_TRUE(info.ok());
    EXPECT_TRUE(info->profile_models);
    refs += info->profile_model_refs;
    if (info->profile_model_refs == 2 * kShape.layers)  // the transform block and the source bytes alone
      EXPECT_EQ(info->model_bytes, kTransformBlockBytes + 2 * kShape.layers);
    std::vector<uint16_t> out(in.size());
    ASSERT_TRUE(decode_into(*frame, p, contiguous_view(out.data(), DType::kF16, kShape)).ok());
    expect_within_model_bound(in, out, kShape, p, level);
    auto stats = analyze_frame(*frame, p);  // the coefficients' symbols, referenced models included
    ASSERT_TRUE(stats.ok()) << stats.status().to_string();
    EXPECT_GT(stats->entropy_bits, 0.0);
    // Threads do not change the bytes.
    o.threads = 3;
    auto again = encode_with(in, kShape, o, p, 7);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *frame);
  }
  EXPECT_GT(refs, 0u) << "no (layer, K/V) used the profile's tables";
}

TEST(ProfileModels, ProfileFilesRoundTripAndVersion1IsUnchanged) {
  const Profile p = models_profile(kShape, false, 41);
  const std::vector<uint8_t> bytes = serialize_profile(p);
  EXPECT_EQ(detail::load_le16(bytes.data() + 4), 2);
  EXPECT_EQ(serialized_profile_size(p), bytes.size());  // the layer models counted, without serializing
  auto back = parse_profile(bytes);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->models, p.models);
  EXPECT_EQ(back->digest, p.digest);
  Profile v1 = p;
  v1.models.clear();
  const std::vector<uint8_t> b1 = serialize_profile(v1);
  EXPECT_EQ(detail::load_le16(b1.data() + 4), 1);
  EXPECT_EQ(serialized_profile_size(v1), b1.size());
  EXPECT_EQ(b1, serialize_profile(make_test_profile(kShape, false, 41)));
  // Corruptions: a model size beyond the file, a model that does not parse, trailing bytes.
  auto corrupt = [&](size_t at, uint8_t v) {
    std::vector<uint8_t> b = bytes;
    b[at] = v;
    const uint64_t digest = detail::frame_checksum(2, b.data(), b.size() - 8);
    detail::store_le64(b.data() + b.size() - 8, digest);
    return parse_profile(b).status().code();
  };
  const size_t models_at = b1.size() - 8;
  EXPECT_EQ(corrupt(models_at + 3, 0x7f), StatusCode::kCorruptData);  // size of the first model
  EXPECT_EQ(corrupt(models_at + 4, 0), StatusCode::kCorruptData);     // 0 groups
  std::vector<uint8_t> extra = bytes;
  extra.insert(extra.end() - 8, uint8_t(0));
  detail::store_le64(extra.data() + extra.size() - 8, detail::frame_checksum(2, extra.data(), extra.size() - 8));
  EXPECT_EQ(parse_profile(extra).status().code(), StatusCode::kCorruptData);
}

TEST(ProfileModels, NeedTheProfileWithModelsAndRejectBadSources) {
  const Profile p = models_profile(kShape, true, 51);
  const std::vector<uint16_t> in = to_f16(make_cache(kShape, 52));
  EncodeOptions o;
  o.level = 6;
  auto frame = encode_with(in, kShape, o, p);
  ASSERT_TRUE(frame.ok());
  std::vector<uint16_t> out(in.size());
  const KVView v = contiguous_view(out.data(), DType::kF16, kShape);
  // A buffer of exactly the frame's size gives the same frame; one byte less is too small.
  const KVView src = contiguous_view(const_cast<uint16_t*>(in.data()), DType::kF16, kShape);
  std::vector<uint8_t> exact(frame->size());
  auto n = encode_into(src, o, p, exact);
  ASSERT_TRUE(n.ok()) << n.status().to_string();
  EXPECT_EQ(exact, *frame);
  std::vector<uint8_t> small(frame->size() - 1);
  EXPECT_EQ(encode_into(src, o, p, small).status().code(), StatusCode::kBufferTooSmall);
  Profile no_models = p;
  no_models.models.clear();  // same digest, no models: what a stale copy would be
  EXPECT_EQ(decode_into(*frame, no_models, v).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(decode_into(*frame, v).code(), StatusCode::kInvalidArgument);
  // A source byte of 2 (the first layer model's, after the transform block) is corrupt.
  std::vector<uint8_t> bad = *frame;
  bad[kHeaderBytes + kTransformBlockBytes] = 2;
  detail::store_le64(bad.data() + detail::kOffHeadChecksum, detail::head_checksum(4, bad.data(), read_frame_info(*frame)->head_bytes));
  EXPECT_EQ(read_frame_info(bad).status().code(), StatusCode::kCorruptData);
  // Anchor groups: the profile's models are not used (flags 1, as with a version 1 profile).
  o.group_tokens = 4;
  auto grouped = encode_with(in, kShape, o, p);
  ASSERT_TRUE(grouped.ok());
  EXPECT_FALSE(read_frame_info(*grouped)->profile_models);
  ASSERT_TRUE(decode_into(*grouped, p, v).ok());
}

TEST(ProfileModels, SensitivityAllocatesTheSteps) {
  // Rate-distortion allocation at half strength: step ~ 1 / sensitivity^(1/4), the geometric mean
  // kept. Raising one tensor's sensitivity 4x makes its step sqrt(2)x smaller (8 codes of 16 per
  // octave) relative to every other tensor's.
  Profile a = make_test_profile(kShape, false, 71), b = a;
  const KVShape cs{kShape.layers, 90, kShape.kv_heads, kShape.head_dim};
  std::vector<uint16_t> cache = to_f16(make_cache(cs, 72));
  const std::vector<KVView> views = {contiguous_view(cache.data(), DType::kF16, cs)};
  std::vector<double> w(size_t(kShape.layers) * 2, 1.0);
  ASSERT_TRUE(calibrate_profile_models(a, views, w).ok());
  const uint32_t C = uint32_t(kShape.channels());
  w[1] = 4.0;
  ASSERT_TRUE(calibrate_profile_models(b, views, w).ok());
  for (int level = 2; level <= kMaxLevel; level += 3) {
    std::vector<int32_t> shift;
    for (size_t u = 0; u < w.size(); ++u) {
      detail::LayerModel ma, mb;
      const size_t i = size_t(level - 1) * w.size() + u;
      ASSERT_TRUE(detail::parse_profile_model(a.models[i], C, ma).ok());
      ASSERT_TRUE(detail::parse_profile_model(b.models[i], C, mb).ok());
      shift.push_back(mb.step_code[0] - ma.step_code[0]);
    }
    for (size_t u = 2; u < shift.size(); ++u) EXPECT_NEAR(shift[u], shift[0], 1) << "level " << level;
    EXPECT_NEAR(shift[1] - shift[0], -8, 1) << "level " << level;
  }
  // However lopsided the sensitivity, no step moves more than 2x (16 codes) from the plain
  // RMS-relative one (calibration without sensitivity): 1e4x wants 10x, tensor 1 gets 2x finer.
  Profile plain = a;
  ASSERT_TRUE(calibrate_profile_models(plain, views, {}).ok());
  w[1] = 1e4;
  ASSERT_TRUE(calibrate_profile_models(b, views, w).ok());
  for (int level = 2; level <= kMaxLevel; level += 3)
    for (size_t u = 0; u < w.size(); ++u) {
      detail::LayerModel mp, mb;
      const size_t i = size_t(level - 1) * w.size() + u;
      ASSERT_TRUE(detail::parse_profile_model(plain.models[i], C, mp).ok());
      ASSERT_TRUE(detail::parse_profile_model(b.models[i], C, mb).ok());
      EXPECT_LE(std::abs(mb.step_code[0] - mp.step_code[0]), 17) << "level " << level << ", tensor " << u;
      if (u == 1) EXPECT_NEAR(mb.step_code[0] - mp.step_code[0], -16, 1) << "level " << level;
    }
  w[1] = 16.0;
  // Component weights: a channel of 4x the weight gets a step 2x smaller (16 codes) than the others.
  std::vector<double> cw(w.size() * C, 1.0);
  cw[0] = 4.0;
  ASSERT_TRUE(calibrate_profile_models(b, views, w, cw).ok());
  detail::LayerModel m;
  ASSERT_TRUE(detail::parse_profile_model(b.models[size_t(4) * w.size()], C, m).ok());  // level 5, layer 0 K
  EXPECT_NEAR(m.step_code[0] - m.step_code[1], -16, 1);
  for (uint32_t c = 2; c < C; ++c) EXPECT_EQ(m.step_code[c], m.step_code[1]);
  EXPECT_EQ(calibrate_profile_models(b, views, {}, cw).code(), StatusCode::kInvalidArgument);  // needs sensitivity
  std::vector<double> bad(size_t(kShape.layers) * 2, 1.0);
  bad[0] = -1;
  EXPECT_EQ(calibrate_profile_models(a, views, bad).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(calibrate_profile_models(a, views, std::vector<double>(3, 1.0)).code(), StatusCode::kInvalidArgument);
}

TEST(ProfileModels, GoldenFrame) {
  const KVShape s{2, 40, 2, 16};
  const std::vector<uint16_t> in = to_f16(make_cache(s, 61));
  EncodeOptions o;
  o.chunk_tokens = 16;
  o.level = 5;
  o.rd_quantize = false;  // the default, the encoder of this frame
  if (std::getenv("KVCODEC_WRITE_GOLDEN")) {
    const Profile p = models_profile(s, true, 62);
    auto frame = encode_with(in, s, o, p, 100);
    ASSERT_TRUE(frame.ok());
    write_golden("f16_level5_models", "digest_models.txt", p, *frame, s);
    GTEST_SKIP() << "rewrote tests/golden/v4 (models)";
  }
  auto p = parse_profile(read_all(golden("f16_level5_models.kvprofile")));
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  ASSERT_FALSE(p->models.empty());
  const std::vector<uint8_t> frame = read_all(golden("f16_level5_models.kvc"));
  ASSERT_FALSE(frame.empty());
  auto info = read_frame_info(frame);
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->profile_models);
  EXPECT_GT(info->profile_model_refs, 0u);
  std::vector<uint16_t> out(in.size());
  ASSERT_TRUE(decode_into(frame, *p, contiguous_view(out.data(), DType::kF16, s)).ok());
  std::ifstream dig(golden("digest_models.txt"));
  uint64_t want = 0;
  dig >> std::hex >> want;
  EXPECT_EQ(detail::xxh64(out.data(), out.size() * 2, 0), want);
  // Streaming: chunk by chunk from the head alone, with the profile (its models), the same values.
  const auto shared = std::make_shared<const Profile>(*p);
  auto dec = FrameDecoder::open(std::span<const uint8_t>(frame).first(info->head_bytes), shared);
  ASSERT_TRUE(dec.ok()) << dec.status().to_string();
  std::vector<uint16_t> chunked(in.size());
  for (uint32_t k = 0; k < info->chunks.size(); ++k) {
    const ChunkInfo& ci = info->chunks[k];
    ASSERT_TRUE(dec->decode_chunk(k, std::span<const uint8_t>(frame).subspan(ci.offset, ci.size),
                                  contiguous_view(chunked.data(), DType::kF16, s)).ok());
  }
  EXPECT_EQ(chunked, out);
  EXPECT_EQ(FrameDecoder::open(frame, nullptr).status().code(), StatusCode::kInvalidArgument);
  expect_within_model_bound(in, out, s, *p, o.level);
  auto again = encode_with(in, s, o, *p, 100);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, frame) << "the encoder no longer writes the committed version 4 frame with profile models";
  // Calibrating the same models again gives the same profile (integer-deterministic encoder).
  EXPECT_EQ(serialize_profile(models_profile(s, true, 62)), serialize_profile(*p));
}

// Frames of rate-distortion optimised quantization (EncodeOptions::rd_quantize, off by default) with
// the committed profiles: STEM.kvc decodes to DIGEST's values within the bound and re-encoding
// gives it byte for byte. KVCODEC_WRITE_GOLDEN writes the frame and digest (not the profile).
void check_golden_rdq(const std::string& profile_file, const std::string& stem, const std::string& digest_file,
                      uint64_t seed, int level, bool models) {
  const KVShape s{2, 40, 2, 16};
  const std::vector<uint16_t> in = to_f16(make_cache(s, seed));
  EncodeOptions o;
  o.chunk_tokens = 16;
  o.level = level;
  o.rd_quantize = true;
  auto p = parse_profile(read_all(golden(profile_file)));
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  auto frame = encode_with(in, s, o, *p, 100);
  ASSERT_TRUE(frame.ok()) << frame.status().to_string();
  if (std::getenv("KVCODEC_WRITE_GOLDEN")) {
    write_all(golden(stem + ".kvc"), *frame);
    std::vector<uint16_t> out(s.elements());
    ASSERT_TRUE(decode_into(*frame, *p, contiguous_view(out.data(), DType::kF16, s)).ok());
    std::ofstream(golden(digest_file)) << std::hex << detail::xxh64(out.data(), out.size() * 2, 0) << "\n";
    GTEST_SKIP() << "rewrote tests/golden/v4/" << stem;
  }
  const std::vector<uint8_t> committed = read_all(golden(stem + ".kvc"));
  ASSERT_FALSE(committed.empty());
  std::vector<uint16_t> out(in.size());
  ASSERT_TRUE(decode_into(committed, *p, contiguous_view(out.data(), DType::kF16, s)).ok());
  std::ifstream dig(golden(digest_file));
  uint64_t want = 0;
  dig >> std::hex >> want;
  EXPECT_EQ(detail::xxh64(out.data(), out.size() * 2, 0), want);
  if (models) expect_within_model_bound(in, out, s, *p, level);
  else expect_within_bound(in, out, s, *p, level, 100);
  EXPECT_EQ(*frame, committed) << "the encoder no longer writes the committed frame " << stem;
  // Smaller than the frame of the plain quantizer.
  o.rd_quantize = false;
  auto plain = encode_with(in, s, o, *p, 100);
  ASSERT_TRUE(plain.ok());
  EXPECT_LT(committed.size(), plain->size());
}

TEST(Profile, GoldenVersion4FrameRdq) {
  check_golden_rdq("f16_level4_rope.kvprofile", "f16_level4_rope_rdq", "digest_rdq.txt", 21, 4, false);
}

TEST(ProfileModels, GoldenFrameRdq) {
  check_golden_rdq("f16_level5_models.kvprofile", "f16_level5_models_rdq", "digest_models_rdq.txt", 61, 5, true);
}

}  // namespace
}  // namespace kvcodec
