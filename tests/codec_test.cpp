// Round trips of the core codec over dtypes, layouts, shapes and levels; the documented error
// bound; determinism across thread counts; partial decodes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/simd.hpp"
#include "kvcodec/codec.hpp"
#include "bound_check.hpp"
#include "common/dtype.hpp"
#include "encode/quantize.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

// A KV-like tensor: per-channel means and scales spread over two orders of magnitude, a few
// outlier channels, AR(1) correlation along tokens. Stored contiguous [L, 2, T, H, D].
std::vector<float> make_kv(const KVShape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  const size_t C = s.channels();
  std::vector<float> out(s.elements());
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv) {
      std::vector<float> mean(C), scale(C), prev(C, 0.f);
      for (size_t c = 0; c < C; ++c) {
        scale[c] = std::exp(n01(rng)) * (c % 17 == 3 ? 20.f : 1.f);
        mean[c] = n01(rng) * scale[c] * 0.5f;
      }
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (size_t c = 0; c < C; ++c) {
          prev[c] = 0.8f * prev[c] + 0.6f * n01(rng);
          out[((size_t(l) * 2 + kv) * s.tokens + t) * C + c] = mean[c] + scale[c] * prev[c];
        }
    }
  return out;
}

// Converts f32 values to raw bytes of dtype dt.
std::vector<uint8_t> to_dtype(const std::vector<float>& v, DType dt) {
  std::vector<uint8_t> out(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    switch (dt) {
      case DType::kF32: std::memcpy(&out[i * 4], &v[i], 4); break;
      case DType::kF16: {
        uint16_t h = detail::f32_to_f16(v[i]);
        std::memcpy(&out[i * 2], &h, 2);
        break;
      }
      case DType::kBF16: {
        uint16_t h = detail::f32_to_bf16(v[i]);
        std::memcpy(&out[i * 2], &h, 2);
        break;
      }
      case DType::kF8E4M3: out[i] = detail::f32_to_f8e4m3(v[i] * 0.1f); break;
    }
  }
  return out;
}

float value_at(const std::vector<uint8_t>& raw, size_t i, DType dt) {
  return detail::load_as_f32(raw.data() + i * dtype_size(dt), uint8_t(dt));
}

std::vector<uint8_t> encode(const KVView& v, const EncodeOptions& o) {
  std::vector<uint8_t> frame(max_encoded_size(v.shape, v.dtype, o));
  EXPECT_GT(frame.size(), 0u);
  auto n = encode_into(v, o, frame);
  EXPECT_TRUE(n.ok()) << n.status().to_string();
  frame.resize(n.ok() ? *n : 0);
  return frame;
}

struct Case {
  KVShape shape;
  DType dtype;
  int level;
  uint32_t chunk_tokens;
  uint32_t group_tokens;
  StepMode mode = StepMode::kLayer;
};

class RoundTrip : public ::testing::TestWithParam<Case> {};

TEST_P(RoundTrip, ContiguousWithinBound) {
  const Case c = GetParam();
  auto values = make_kv(c.shape, 42 + c.level);
  auto raw = to_dtype(values, c.dtype);
  KVView src = contiguous_view(raw.data(), c.dtype, c.shape);
  EncodeOptions o;
  o.level = c.level;
  o.chunk_tokens = c.chunk_tokens;
  o.group_tokens = c.group_tokens;
  o.step_mode = c.mode;
  auto frame = encode(src, o);
  ASSERT_FALSE(frame.empty());
  ASSERT_TRUE(verify_frame(frame).ok());

  std::vector<uint8_t> out(raw.size(), 0xCD);
  ASSERT_TRUE(decode_into(frame, contiguous_view(out.data(), c.dtype, c.shape)).ok());
  if (c.level == 0) {
    EXPECT_EQ(out, raw) << "lossless must be bit-exact";
    return;
  }
  // The documented bound on every element, from the frame's recorded steps and the scale the
  // documentation defines, computed from the input (bound_check.hpp; not the encoder's code).
  const KVCache in{c.dtype, c.shape, raw}, dec{c.dtype, c.shape, out};
  const test::BoundReport r = test::check_bound(frame, in, dec);
  EXPECT_EQ(r.violations, 0u) << r.first;
  EXPECT_EQ(r.checked, c.shape.elements());
}

const Case kCases[] = {
    {{2, 300, 2, 16}, DType::kF16, 0, 128, 1},   // lossless f16, partial last chunk
    {{2, 300, 2, 16}, DType::kBF16, 0, 256, 1},  // lossless bf16
    {{2, 100, 3, 8}, DType::kF32, 0, 64, 1},     // lossless f32, odd head count
    {{1, 50, 1, 8}, DType::kF8E4M3, 0, 16, 1},   // lossless f8
    {{3, 1, 2, 8}, DType::kF16, 4, 256, 1},      // one token
    {{3, 257, 2, 16}, DType::kF16, 1, 256, 1},   // chunk boundary + 1
    {{3, 257, 2, 16}, DType::kF16, 4, 256, 10},  // anchors and deltas, group across chunk end
    {{3, 200, 2, 16}, DType::kBF16, 6, 64, 4},
    {{2, 200, 4, 32}, DType::kF32, 9, 100, 3},
    {{2, 130, 1, 8}, DType::kF8E4M3, 5, 32, 1},
    {{5, 64, 3, 24}, DType::kF16, 8, 7, 2},      // tiny chunks, odd group size
    {{3, 257, 2, 16}, DType::kF16, 4, 256, 1, StepMode::kChannel},  // per-channel steps
    {{3, 200, 2, 16}, DType::kBF16, 7, 64, 4, StepMode::kChannel},
    {{2, 100, 3, 8}, DType::kF32, 2, 64, 1, StepMode::kChannel},
};
INSTANTIATE_TEST_SUITE_P(Codec, RoundTrip, ::testing::ValuesIn(kCases));

TEST(Codec, SameValuesFromEveryLayout) {
  const KVShape s{3, 70, 2, 8};
  auto raw = to_dtype(make_kv(s, 7), DType::kF16);
  EncodeOptions o;
  o.level = 5;
  o.chunk_tokens = 32;
  auto frame = encode(contiguous_view(raw.data(), DType::kF16, s), o);
  std::vector<uint8_t> ref(raw.size());
  ASSERT_TRUE(decode_into(frame, contiguous_view(ref.data(), DType::kF16, s)).ok());
  const size_t C = s.channels(), es = 2;

  // LMCache [2, L, T, H*D]
  std::vector<uint8_t> lm(raw.size());
  ASSERT_TRUE(decode_into(frame, lmcache_view(lm.data(), DType::kF16, s)).ok());
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      ASSERT_EQ(0, std::memcmp(&lm[((size_t(kv) * s.layers + l) * s.tokens * C) * es],
                               &ref[((size_t(l) * 2 + kv) * s.tokens * C) * es], s.tokens * C * es));
  // The same values laid out as LMCache encode to the same bytes.
  std::vector<uint8_t> raw_lm(raw.size());
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      std::memcpy(&raw_lm[((size_t(kv) * s.layers + l) * s.tokens * C) * es],
                  &raw[((size_t(l) * 2 + kv) * s.tokens * C) * es], s.tokens * C * es);
  EXPECT_EQ(encode(lmcache_view(raw_lm.data(), DType::kF16, s), o), frame);
  // Re-encoding the decoded values: the reference for the layouts below.
  const auto ref_frame = encode(contiguous_view(ref.data(), DType::kF16, s), o);

  // vLLM paged: block size 16, blocks scattered in reverse order.
  const uint32_t bs = 16, nb = 8;
  std::vector<int32_t> table;
  for (uint32_t i = 0; i < (s.tokens + bs - 1) / bs; ++i) table.push_back(int32_t(nb - 1 - i));
  std::vector<std::vector<uint8_t>> layer_mem(s.layers, std::vector<uint8_t>(2ull * nb * bs * C * es, 0));
  std::vector<void*> ptrs;
  for (auto& m : layer_mem) ptrs.push_back(m.data());
  KVView paged = vllm_paged_view(ptrs.data(), DType::kF16, s, table.data(), nb, bs);
  ASSERT_TRUE(decode_into(frame, paged).ok());
  std::vector<uint8_t> back(raw.size());
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < s.tokens; ++t)
        ASSERT_EQ(0, std::memcmp(paged.element(l, kv, t, 0, 0), &ref[(((size_t(l) * 2 + kv) * s.tokens + t) * C) * es],
                                 C * es));
  // Encoding from the paged cache gives the identical frame.
  EXPECT_EQ(encode(paged, o), ref_frame);

  // Hugging Face per-layer [1, H, T, D]
  std::vector<std::vector<uint8_t>> hk(s.layers, std::vector<uint8_t>(s.tokens * C * es)), hv = hk;
  std::vector<void*> kp, vp;
  for (uint32_t l = 0; l < s.layers; ++l) {
    kp.push_back(hk[l].data());
    vp.push_back(hv[l].data());
  }
  KVView hf = per_layer_view(kp.data(), vp.data(), DType::kF16, s, true);
  ASSERT_TRUE(decode_into(frame, hf).ok());
  EXPECT_EQ(encode(hf, o), ref_frame);
}

TEST(Codec, DeterministicAcrossThreads) {
  const KVShape s{4, 600, 2, 32};
  auto raw = to_dtype(make_kv(s, 9), DType::kBF16);
  KVView v = contiguous_view(raw.data(), DType::kBF16, s);
  for (int level : {0, 3, 7}) {
    EncodeOptions o;
    o.level = level;
    o.group_tokens = level == 7 ? 5 : 1;
    o.threads = 1;
    auto a = encode(v, o);
    o.threads = 3;
    auto b = encode(v, o);
    o.threads = 0;
    auto c = encode(v, o);
    EXPECT_EQ(a, b);
    EXPECT_EQ(a, c);
    std::vector<uint8_t> d1(raw.size()), d2(raw.size());
    DecodeOptions d;
    d.threads = 1;
    ASSERT_TRUE(decode_into(a, contiguous_view(d1.data(), DType::kBF16, s), d).ok());
    d.threads = 4;
    ASSERT_TRUE(decode_into(a, contiguous_view(d2.data(), DType::kBF16, s), d).ok());
    EXPECT_EQ(d1, d2);
  }
}

TEST(Codec, SimdAndScalarPathsAgree) {
  // C = 48: the vector loops run; 301 tokens: a partial chunk. C = 9: scalar decode, and streams
  // whose length is not a multiple of 8 (the vector encoder's scalar tail). C = 64: the decoder's
  // unrolled loops (C % 32 == 0). f8: one byte plane when lossless.
  for (const KVShape s : {KVShape{3, 301, 3, 16}, KVShape{2, 37, 1, 9}, KVShape{2, 150, 2, 32}})
  for (DType dt : {DType::kF16, DType::kBF16, DType::kF32, DType::kF8E4M3}) {
    auto values = make_kv(s, 21);
    values[s.channels() + 5] = INFINITY;  // an escape inside a vector group
    auto raw = to_dtype(values, dt);
    for (int level : {0, 1, 5, 9}) {
      EncodeOptions o;
      o.level = level;
      o.chunk_tokens = 100;
      auto frame = encode(contiguous_view(raw.data(), dt, s), o);
      detail::set_simd_enabled(false);
      const auto scalar_frame = encode(contiguous_view(raw.data(), dt, s), o);
      detail::set_simd_enabled(true);
      EXPECT_EQ(frame, scalar_frame) << "SIMD and scalar encoders differ";
      detail::set_avx512_enabled(false);  // the AVX2 paths where the CPU has AVX-512
      const auto avx2_frame = encode(contiguous_view(raw.data(), dt, s), o);
      detail::set_avx512_enabled(true);
      EXPECT_EQ(frame, avx2_frame) << "AVX-512 and AVX2 encoders differ";
      std::vector<uint8_t> a(raw.size()), b(raw.size());
      ASSERT_TRUE(decode_into(frame, contiguous_view(a.data(), dt, s)).ok());
      detail::set_simd_enabled(false);
      const Status st = decode_into(frame, contiguous_view(b.data(), dt, s));
      detail::set_simd_enabled(true);
      ASSERT_TRUE(st.ok());
      EXPECT_EQ(a, b) << dtype_name(dt) << " level " << level;
    }
  }
}

TEST(Codec, PartialDecodeWritesOnlyTheRange) {
  const KVShape s{4, 300, 2, 8};
  auto raw = to_dtype(make_kv(s, 3), DType::kF16);
  EncodeOptions o;
  o.level = 0;
  o.chunk_tokens = 64;
  auto frame = encode(contiguous_view(raw.data(), DType::kF16, s), o);
  std::vector<uint8_t> out(raw.size(), 0);
  DecodeOptions d;
  d.chunk_begin = 1;
  d.chunk_end = 3;
  d.layer_begin = 2;
  d.layer_end = 3;
  ASSERT_TRUE(decode_into(frame, contiguous_view(out.data(), DType::kF16, s), d).ok());
  const size_t C = s.channels();
  for (uint32_t l = 0; l < s.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < s.tokens; ++t) {
        const size_t off = (((size_t(l) * 2 + kv) * s.tokens + t) * C) * 2;
        const bool inside = l == 2 && t >= 64 && t < 192;
        if (inside) ASSERT_EQ(0, std::memcmp(&out[off], &raw[off], C * 2));
        else ASSERT_TRUE(std::all_of(&out[off], &out[off] + C * 2, [](uint8_t b) { return b == 0; }));
      }

  // One chunk from the head and its body alone, as a streaming client does.
  auto info = read_frame_info(frame);
  ASSERT_TRUE(info.ok());
  std::vector<uint8_t> head(frame.begin(), frame.begin() + info->head_bytes);
  const ChunkInfo& ci = info->chunks[4];
  std::vector<uint8_t> body(frame.begin() + ci.offset, frame.begin() + ci.offset + ci.size);
  std::fill(out.begin(), out.end(), 0);
  ASSERT_TRUE(decode_chunk_into(head, 4, body, contiguous_view(out.data(), DType::kF16, s)).ok());
  const size_t off = (((size_t(1) * 2 + 1) * s.tokens + 256) * C) * 2;
  EXPECT_EQ(0, std::memcmp(&out[off], &raw[off], 44 * C * 2));
  EXPECT_EQ(decode_chunk_into(head, 5, body, contiguous_view(out.data(), DType::kF16, s)).code(),
            StatusCode::kOutOfRange);
}

TEST(Codec, NonFiniteValuesAreEscapedExactly) {
  const KVShape s{1, 40, 1, 8};
  auto values = make_kv(s, 5);
  values[3] = INFINITY;
  values[17] = -INFINITY;
  values[100] = NAN;
  values[101] = 1e30f;  // far outside every grid
  auto raw = to_dtype(values, DType::kF32);
  EncodeOptions o;
  o.level = 7;
  auto frame = encode(contiguous_view(raw.data(), DType::kF32, s), o);
  std::vector<uint8_t> out(raw.size());
  ASSERT_TRUE(decode_into(frame, contiguous_view(out.data(), DType::kF32, s)).ok());
  for (size_t i : {3, 17, 100, 101}) EXPECT_EQ(0, std::memcmp(&out[i * 4], &raw[i * 4], 4)) << i;
  // Every other value within the documented bound too. The bound is relative to the (layer,
  // K/V) tensor's RMS deviation, which the one finite outlier (1e30) inflates: the grids get
  // coarser and the other 316 values come back with a relative RMS error of 0.275 instead of
  // 0.090 without it (measured). That is what the documentation promises (config.hpp), and a
  // weakness of the scale: one finite outlier costs its whole tensor precision (reported with
  // issue 16).
  const test::BoundReport r = test::check_bound(frame, KVCache{DType::kF32, s, raw}, KVCache{DType::kF32, s, out});
  EXPECT_EQ(r.violations, 0u) << r.first;
  EXPECT_EQ(r.checked + r.non_finite, s.elements());
  double num = 0, den = 0;
  for (size_t i = 0; i < s.elements(); ++i) {
    if (i == 3 || i == 17 || i == 100 || i == 101) continue;
    const double x = value_at(raw, i, DType::kF32), d = x - value_at(out, i, DType::kF32);
    num += d * d;
    den += x * x;
  }
  const double with_outlier = std::sqrt(num / den);
  // Without the finite outlier, NaN and +-Inf alone leave the scale alone (they are excluded):
  // the other values keep the level's precision.
  values[101] = 0.5f;
  raw = to_dtype(values, DType::kF32);
  frame = encode(contiguous_view(raw.data(), DType::kF32, s), o);
  ASSERT_TRUE(decode_into(frame, contiguous_view(out.data(), DType::kF32, s)).ok());
  const test::BoundReport q = test::check_bound(frame, KVCache{DType::kF32, s, raw}, KVCache{DType::kF32, s, out});
  EXPECT_EQ(q.violations, 0u) << q.first;
  EXPECT_EQ(q.non_finite, 3u);
  EXPECT_LT(q.rms_rel_error, 0.12);
  EXPECT_GT(with_outlier, 2 * q.rms_rel_error) << "the weakness above is gone: tighten this test";
}

TEST(Codec, SizesShrinkWithLevel) {
  const KVShape s{4, 512, 2, 32};
  auto raw = to_dtype(make_kv(s, 11), DType::kF16);
  KVView v = contiguous_view(raw.data(), DType::kF16, s);
  size_t prev = SIZE_MAX;
  for (int level = 0; level <= kMaxLevel; ++level) {
    EncodeOptions o;
    o.level = level;
    auto f = encode(v, o);
    EXPECT_LT(f.size(), prev) << "level " << level;
    EXPECT_LE(f.size(), max_encoded_size(s, DType::kF16, o));
    prev = f.size();
  }
}

TEST(Codec, PayloadWithinOnePercentOfEntropy) {
  // Llama-3-8B-like units: 8 heads x 128 channels x 256-token chunks = 262144 symbols per stream.
  // (Each stream carries 136 bytes of word count and lane states, so much smaller units or rates
  // near 1 bit/element pay more than 1% for them: see docs/results/cpu.md.)
  const KVShape s{1, 512, 8, 128};
  auto raw = to_dtype(make_kv(s, 17), DType::kF16);
  for (int level : {2, 5, 8}) {
    EncodeOptions o;
    o.level = level;
    auto frame = encode(contiguous_view(raw.data(), DType::kF16, s), o);
    auto st = analyze_frame(frame);
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    EXPECT_EQ(st->symbols, s.elements());
    // The stored (normalised) model costs a little more than the empirical distribution...
    EXPECT_GE(st->model_bits, st->entropy_bits);
    EXPECT_LT(st->model_bits, st->entropy_bits * 1.005);
    // ...and the lane streams, lane states included, stay within 1% of the entropy.
    EXPECT_LT(8.0 * double(st->lane_bytes), st->entropy_bits * 1.01) << "level " << level;
    EXPECT_GT(8.0 * double(st->lane_bytes), st->entropy_bits);
  }
}

TEST(Codec, RejectsBadArguments) {
  const KVShape s{1, 4, 1, 8};
  std::vector<uint8_t> raw(s.elements() * 2);
  KVView v = contiguous_view(raw.data(), DType::kF16, s);
  EncodeOptions o;
  std::vector<uint8_t> dst(max_encoded_size(s, DType::kF16, o));
  o.level = kMaxLevel + 1;
  EXPECT_EQ(encode_into(v, o, dst).status().code(), StatusCode::kInvalidArgument);
  o.level = 2;
  o.chunk_tokens = 0;
  EXPECT_EQ(encode_into(v, o, dst).status().code(), StatusCode::kInvalidArgument);
  o.chunk_tokens = 256;
  EXPECT_EQ(encode_into(v, o, std::span<uint8_t>(dst.data(), 10)).status().code(), StatusCode::kBufferTooSmall);
  KVView bad = v;
  bad.data = nullptr;
  EXPECT_EQ(encode_into(bad, o, dst).status().code(), StatusCode::kInvalidArgument);
  // Destination mismatch on decode.
  auto n = encode_into(v, o, dst);
  ASSERT_TRUE(n.ok());
  std::span<const uint8_t> frame(dst.data(), *n);
  std::vector<uint8_t> out(s.elements() * 4);
  EXPECT_EQ(decode_into(frame, contiguous_view(out.data(), DType::kF32, s)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(decode_into(frame, contiguous_view(out.data(), DType::kF16, {1, 5, 1, 8})).code(),
            StatusCode::kInvalidArgument);
}

// Issue 11, items 7 and 9: an expansion limit (zero-bit streams are legal, so a tiny frame can
// decode to gigabytes) and bytes after frame_bytes (a frame is exactly frame_bytes long).
TEST(Codec, DecodeLimitAndTrailingBytes) {
  const KVShape s{2, 64, 1, 8};
  std::vector<uint8_t> raw(s.elements() * 2, 0);  // constant: almost no payload
  EncodeOptions o;
  o.chunk_tokens = 16;
  auto frame = encode(contiguous_view(raw.data(), DType::kF16, s), o);
  auto info = read_frame_info(frame);
  ASSERT_TRUE(info.ok());
  std::vector<uint8_t> out(raw.size());
  const KVView dst = contiguous_view(out.data(), DType::kF16, s);
  EXPECT_EQ(decoded_bytes(*info), raw.size());
  DecodeOptions d;
  d.max_decoded_bytes = raw.size() - 1;
  EXPECT_EQ(decode_into(frame, dst, d).code(), StatusCode::kResourceExhausted);
  d.max_decoded_bytes = raw.size();
  EXPECT_TRUE(decode_into(frame, dst, d).ok());
  // A range is measured alone: one layer of chunks 1..2 is 2 x 32 tokens x 8 x 2 bytes.
  d.chunk_begin = 1;
  d.chunk_end = 3;
  d.layer_end = 1;
  EXPECT_EQ(decoded_bytes(*info, d), 2u * 32 * 8 * 2);
  d.max_decoded_bytes = 2u * 32 * 8 * 2;
  EXPECT_TRUE(decode_into(frame, dst, d).ok());
  d.max_decoded_bytes -= 1;
  EXPECT_EQ(decode_into(frame, dst, d).code(), StatusCode::kResourceExhausted);
  const ChunkInfo& c1 = info->chunks[1];
  d.max_decoded_bytes = 16u * 8 * 2 - 1;  // one chunk, one layer
  EXPECT_EQ(decode_chunk_into(frame, 1, std::span(frame).subspan(c1.offset, c1.size), dst, d).code(),
            StatusCode::kResourceExhausted);
  d.max_decoded_bytes = 0;  // no limit
  EXPECT_TRUE(decode_chunk_into(frame, 1, std::span(frame).subspan(c1.offset, c1.size), dst, d).ok());

  std::vector<uint8_t> longer = frame;
  longer.push_back(0);
  EXPECT_EQ(decode_into(longer, dst).code(), StatusCode::kCorruptData);
  EXPECT_EQ(verify_frame(longer).code(), StatusCode::kCorruptData);
  EXPECT_TRUE(read_frame_info(longer).ok());  // the head alone is still readable
  longer.pop_back();
  longer.pop_back();
  EXPECT_EQ(decode_into(longer, dst).code(), StatusCode::kBufferTooSmall);
}

}  // namespace
}  // namespace kvcodec
