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
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.hpp"
#include "common/profile_rows.hpp"
#include "common/simd.hpp"
#include "common/xxh64.hpp"
#include "decode/packed_model.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"

namespace kvcodec {
namespace {

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// Uniform in [-1, 1) with 2^-20 resolution (exact in float).
float uniform(uint64_t key) { return float(int32_t(splitmix(key) >> 43) - (1 << 20)) / float(1 << 20); }

// A correlated cache: every head row is a few latent factors mixed into head_dim channels plus
// small noise and a per-channel offset, so a PCA basis concentrates it.
std::vector<float> make_cache(const KVShape& s, uint64_t seed) {
  std::vector<float> x(size_t(s.elements()));
  const uint32_t d = s.head_dim, C = uint32_t(s.channels());
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (uint32_t h = 0; h < s.kv_heads; ++h) {
          const uint64_t row = ((uint64_t(l) * 2 + kv) * s.tokens + t) * s.kv_heads + h;
          const float f0 = 4.0f * uniform(seed * 1000003 + row * 3), f1 = 2.0f * uniform(seed * 1000003 + row * 3 + 1);
          for (uint32_t i = 0; i < d; ++i) {
            const float mix0 = uniform(seed + 77 + (l * 64 + h) * 4096 + i), mix1 = uniform(seed + 99 + (l * 64 + h) * 4096 + i);
            x[((size_t(l) * 2 + kv) * s.tokens + t) * C + size_t(h) * d + i] =
                0.5f * uniform(seed + i + 17 * h) + f0 * mix0 + f1 * mix1 + 0.05f * uniform(seed * 7 + row * 4096 + i);
          }
        }
  return x;
}

// A profile whose axes are a Householder reflection I - 2 v v^T / |v|^2 per head (orthonormal),
// means from the hash; keys_before_rope as asked.
Profile make_test_profile(const KVShape& s, bool rope, uint64_t seed) {
  const uint32_t d = s.head_dim;
  const size_t heads = size_t(s.layers) * 2 * s.kv_heads;
  std::vector<float> means(heads * d), axes(heads * d * d);
  for (size_t hd = 0; hd < heads; ++hd) {
    std::vector<double> v(d);
    double n2 = 0;
    for (uint32_t i = 0; i < d; ++i) {
      v[i] = uniform(seed + hd * 131 + i) + (i == 0 ? 2.0 : 0.0);
      n2 += v[i] * v[i];
      means[hd * d + i] = 0.5f * uniform(seed + 5 + i);
    }
    for (uint32_t k = 0; k < d; ++k)
      for (uint32_t i = 0; i < d; ++i)
        axes[(hd * d + k) * d + i] = float((k == i ? 1.0 : 0.0) - 2.0 * v[k] * v[i] / n2);
  }
  auto p = make_profile(s.layers, s.kv_heads, d, std::move(means), std::move(axes), rope, 10000.0);
  EXPECT_TRUE(p.ok()) << p.status().to_string();
  return *p;
}

std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = detail::f32_to_f16(x[i]);
  return h;
}

StatusOr<std::vector<uint8_t>> encode_with(const std::vector<uint16_t>& in, const KVShape& s, const EncodeOptions& o,
                                           const Profile& p, uint32_t first = 0) {
  std::vector<uint8_t> frame(max_encoded_size(s, DType::kF16, o, p));
  KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(contiguous_view(const_cast<uint16_t*>(in.data()), DType::kF16, s), o, p,
                                                 frame, first));
  frame.resize(n);
  return frame;
}

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
}

TEST(Profile, CorruptProfileFilesAreRejected) {
  const KVShape s{1, 4, 1, 4};
  const Profile p = make_test_profile(s, true, 14);
  const std::vector<uint8_t> bytes = serialize_profile(p);
  auto back = parse_profile(bytes);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->digest, p.digest);
  EXPECT_EQ(serialize_profile(*back), bytes);
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

TEST(Profile, GoldenVersion4Frame) {
  const KVShape s{2, 40, 2, 16};
  const std::vector<uint16_t> in = to_f16(make_cache(s, 21));
  EncodeOptions o;
  o.chunk_tokens = 16;
  if (std::getenv("KVCODEC_WRITE_GOLDEN")) {
    const Profile p = make_test_profile(s, true, 22);
    auto frame = encode_with(in, s, o, p, 100);
    ASSERT_TRUE(frame.ok());
    write_all(golden("f16_level4_rope.kvprofile"), serialize_profile(p));
    write_all(golden("f16_level4_rope.kvc"), *frame);
    std::vector<uint16_t> out(in.size());
    ASSERT_TRUE(decode_into(*frame, p, contiguous_view(out.data(), DType::kF16, s)).ok());
    std::ofstream(golden("digest.txt")) << std::hex << detail::xxh64(out.data(), out.size() * 2, 0) << "\n";
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

}  // namespace
}  // namespace kvcodec
