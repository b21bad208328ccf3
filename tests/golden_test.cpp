// Golden frames (tests/golden/, see its README.md): small frames committed to the repository,
// encoded once from the deterministic inputs below. Every run checks that
//   * each still decodes (whole and chunk by chunk) to the committed XXH64 digest,
//   * re-encoding the same input with the same options gives the committed bytes exactly
//     (the format and the encoder are stable: a change must be deliberate, see the README),
//   * lossless frames give back their input bit for bit;
//   * lossy frames carry their input (<name>.input.safetensors, equal to make_input()) and decode
//     within the documented error bound of it on every element (bound_check.hpp: steps read
//     from the frame, scale from the input, independently of the encoder's arithmetic).
//
// KVCODEC_WRITE_GOLDEN=1 rewrites the frames and tests/golden/digests.txt instead of checking.
#include <gtest/gtest.h>

#include <cinttypes>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <fstream>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "bound_check.hpp"
#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "common/xxh64.hpp"
#include "golden_digests.hpp"
#include "kvcodec/io.hpp"
#include "roundtrip_check.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

struct GoldenCase {
  const char* name;
  DType dtype;
  KVShape shape;
  int level;
  uint32_t chunk_tokens;
  uint32_t group_tokens;
  uint32_t table_groups;
  StepMode step_mode;
  bool specials = false;  // make_input adds hostile values (add_specials); no version-1 record
};

// Never edit a case in place: golden frames are a record. Add new cases with new names.
const GoldenCase kCases[] = {
    {"f16_level4_group4", DType::kF16, {2, 40, 2, 16}, 4, 16, 4, 8, StepMode::kChannel},
    {"f16_lossless", DType::kF16, {2, 33, 2, 8}, 0, 16, 1, 1, StepMode::kChannel},
    {"bf16_level6_layer_steps", DType::kBF16, {3, 24, 1, 32}, 6, 8, 1, 4, StepMode::kLayer},
    {"f32_lossless", DType::kF32, {1, 20, 2, 8}, 0, 7, 1, 2, StepMode::kChannel},
    {"f8e4m3_level2", DType::kF8E4M3, {2, 16, 2, 8}, 2, 8, 2, 2, StepMode::kChannel},
    {"f16_one_token", DType::kF16, {2, 1, 1, 8}, 4, 256, 1, 8, StepMode::kChannel},
    // Issue 11: escapes (an outlier channel whose anchors leave their tables' windows, NaN,
    // +-Inf, the dtype's extremes), a head and chunks over 4 KiB (multi-segment checksums),
    // f16 / bf16 values whose grid points would overflow, f8e4m3 saturation and decodes that
    // round a tie between two f8e4m3 values.
    {"f16_level3_group4_specials", DType::kF16, {4, 300, 2, 16}, 3, 256, 4, 16, StepMode::kChannel, true},
    {"bf16_level5_specials", DType::kBF16, {1, 64, 1, 16}, 5, 32, 2, 4, StepMode::kLayer, true},
    {"f8e4m3_level4_specials", DType::kF8E4M3, {1, 40, 1, 16}, 4, 16, 1, 2, StepMode::kLayer, true},
    // Format version 3: stored units (docs/format.md 4.4), from the "stored_" input below.
    {"stored_f32_lossless", DType::kF32, {1, 48, 2, 16}, 0, 16, 1, 1, StepMode::kChannel},
    // Format version 5: raw byte planes (docs/format.md 4.5): enough elements per (layer, K/V)
    // that the noisy low byte codes to within 1/64 of its 8 bits and is kept raw.
    {"raw_planes_f16_lossless", DType::kF16, {2, 64, 2, 32}, 0, 32, 1, 2, StepMode::kChannel},
};

// "stored_" cases: constant tokens, then one chunk of random bits that coding would expand.
bool has_stored_units(const GoldenCase& c) { return std::string_view(c.name).starts_with("stored_"); }
// "raw_planes_" cases: frames of format version 5 (a byte plane kept raw).
bool has_raw_planes(const GoldenCase& c) { return std::string_view(c.name).starts_with("raw_planes_"); }
uint16_t expected_version(const GoldenCase& c) {
  return has_raw_planes(c) ? kRawPlanesFormatVersion : has_stored_units(c) ? kStoredUnitsFormatVersion : kFormatVersion;
}

using test::golden_dir;
using test::read_digests;
std::string input_path(const GoldenCase& c) { return golden_dir() + "/" + c.name + ".input.safetensors"; }

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The hostile values of a `specials` case at channel c, token t (r: the element's hash, x: the
// ordinary value), exact float arithmetic only. Channel 1 is a slow triangle wave of amplitude
// 96 (its anchors fall outside their tables' windows and escape, with their groups' deltas);
// channel 2 sits at the dtype's largest finite values (f16 65504, bf16 3.39e38, f8e4m3 448:
// grid points beyond them would overflow or saturate, so they escape or round to the extreme);
// channel 3 sits near 100 with small steps (f8e4m3 values there are 8 apart: decodes land on
// ties); elsewhere about 1 in 64 values is NaN, +Inf, -Inf, -0 or a spike of 1000.
float special_value(const GoldenCase& gc, uint32_t c, uint32_t t, uint64_t r, float x) {
  const float big = gc.dtype == DType::kF16 ? 65504.f : gc.dtype == DType::kBF16 ? 0x1.fep127f : 448.f;
  const float tri = float(int(t % 64) < 32 ? int(t % 64) - 16 : 48 - int(t % 64)) * 6.0f;  // -96 .. 96
  switch (c) {
    case 1: return tri + x;
    case 2: return (r >> 20) & 1 ? big : -big + float(int(r >> 30 & 3)) * (big * 0x1p-8f);
    case 3: return 100.0f + float(int(r >> 24 & 7)) * 2.0f;
    default: break;
  }
  switch ((r >> 12) & 63) {
    case 0: return NAN;
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return -0.0f;
    case 4: return 1000.0f;
    default: return x;
  }
}

// The input of a case, identical on every platform: only integer arithmetic, exact
// integer-to-float conversions and float additions of exactly representable values (no libm),
// then the library's bit-exact dtype conversions. Like real caches it has per-channel offsets,
// a slow drift along tokens, noise and rare outliers (which lossy levels escape).
KVCache make_input(const GoldenCase& c) {
  auto kv = KVCache::allocate(c.dtype, c.shape);
  EXPECT_TRUE(kv.ok());
  const KVView v = kv->view();
  uint64_t i = 0;
  for (uint32_t l = 0; l < c.shape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t t = 0; t < c.shape.tokens; ++t)
        for (uint32_t h = 0; h < c.shape.kv_heads; ++h)
          for (uint32_t d = 0; d < c.shape.head_dim; ++d, ++i) {
            const uint64_t r = splitmix64(i);
            const float offset = float(int((h * c.shape.head_dim + d) % 7) - 3) * 0.25f;
            const float drift = float(t % 16) * 0.0078125f;
            const float noise = float(int32_t(r >> 40) - (1 << 23)) * 0x1p-26f;  // [-0.125, 0.125)
            const float outlier = (r & 0x3ff) < 8 ? float(int((r >> 10) & 7) + 4) : 0.0f;
            float x = offset + drift + noise + outlier;
            if (c.specials) x = special_value(c, h * c.shape.head_dim + d, t, r, x);
            if (has_stored_units(c) && t + c.chunk_tokens >= c.shape.tokens) {
              std::memcpy(v.element(l, k, t, h, d), &r, dtype_size(c.dtype));  // random bits
              continue;
            }
            detail::store_from_f32(v.element(l, k, t, h, d), uint8_t(c.dtype), has_stored_units(c) ? offset : x);
          }
  return std::move(kv).value();
}

EncodeOptions options_of(const GoldenCase& c) {
  EncodeOptions o;
  o.level = c.level;
  o.chunk_tokens = c.chunk_tokens;
  o.group_tokens = c.group_tokens;
  o.table_groups = c.table_groups;
  o.step_mode = c.step_mode;
  return o;
}

std::vector<uint8_t> encode(const GoldenCase& c, KVCache& input) {
  const EncodeOptions o = options_of(c);
  std::vector<uint8_t> frame(max_encoded_size(c.shape, c.dtype, o));
  auto size = encode_into(input.view(), o, frame);
  EXPECT_TRUE(size.ok()) << size.status().to_string();
  frame.resize(size.ok() ? *size : 0);
  return frame;
}

uint64_t digest(const std::vector<uint8_t>& bytes) { return detail::xxh64(bytes.data(), bytes.size()); }

bool writing_golden() {
  const char* e = std::getenv("KVCODEC_WRITE_GOLDEN");
  return e && std::string(e) == "1";
}

// Regeneration: encode every case, write its frame, and record the digest of its decoding.
TEST(Golden, WriteWhenAsked) {
  if (!writing_golden()) GTEST_SKIP() << "set KVCODEC_WRITE_GOLDEN=1 to rewrite tests/golden";
  std::ofstream digests(golden_dir() + "/digests.txt");
  digests << "# XXH64 (seed 0, hex) of each golden frame decoded into the contiguous layout\n"
          << "# [layers, 2, tokens, kv_heads, head_dim]. Written by golden_test with KVCODEC_WRITE_GOLDEN=1.\n";
  for (const GoldenCase& c : kCases) {
    KVCache input = make_input(c);
    const std::vector<uint8_t> frame = encode(c, input);
    ASSERT_TRUE(write_file(golden_dir() + "/" + c.name + ".kvc", frame.data(), frame.size()).ok());
    if (c.level > 0) ASSERT_TRUE(save_kv(input_path(c), input).ok());
    auto out = KVCache::allocate(c.dtype, c.shape);
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(decode_into(frame, out->view()).ok());
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016" PRIx64, digest(out->data));
    digests << c.name << " " << hex << "\n";
  }
}

class GoldenFrame : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenFrame, DecodesToDigestAndReencodesIdentically) {
  if (writing_golden()) GTEST_SKIP() << "rewriting the golden frames";
  const GoldenCase& c = GetParam();
  auto frame = read_file(golden_dir() + "/" + c.name + ".kvc");
  ASSERT_TRUE(frame.ok()) << frame.status().to_string();
  const auto digests = read_digests();
  ASSERT_TRUE(digests.count(c.name)) << "no digest for " << c.name << " in digests.txt";

  // The frame says what it is.
  auto info = read_frame_info(*frame);
  ASSERT_TRUE(info.ok()) << info.status().to_string();
  EXPECT_EQ(info->format_version, expected_version(c));
  EXPECT_EQ(info->dtype, c.dtype);
  EXPECT_EQ(info->shape, c.shape);
  EXPECT_EQ(info->level, c.level);
  EXPECT_EQ(info->chunk_tokens, c.chunk_tokens);
  EXPECT_EQ(info->group_tokens, c.group_tokens);
  EXPECT_EQ(info->frame_bytes, frame->size());
  ASSERT_TRUE(verify_frame(*frame).ok());

  // Whole-frame decode.
  auto out = KVCache::allocate(c.dtype, c.shape);
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(decode_into(*frame, out->view()).ok());
  EXPECT_EQ(digest(out->data), digests.at(c.name)) << "decoded cache differs from the recorded one";

  // Chunk by chunk, from the head and each body alone, in reverse order.
  auto chunked = KVCache::allocate(c.dtype, c.shape);
  ASSERT_TRUE(chunked.ok());
  const std::span<const uint8_t> bytes(*frame);
  for (size_t k = info->chunks.size(); k-- > 0;) {
    const ChunkInfo& ch = info->chunks[k];
    ASSERT_TRUE(decode_chunk_into(bytes.first(info->head_bytes), uint32_t(k), bytes.subspan(ch.offset, ch.size),
                                  chunked->view())
                    .ok());
  }
  EXPECT_EQ(chunked->data, out->data);

  // Same input, same options: same bytes.
  KVCache input = make_input(c);
  EXPECT_TRUE(encode(c, input) == *frame) << "the encoder no longer reproduces " << c.name
                                          << ".kvc (see tests/golden/README.md)";
  if (c.level == 0) EXPECT_EQ(out->data, input.data) << "lossless frame is not exact";

  // What the hostile cases are for: escapes, multi-segment checksums, exact specials.
  if (c.specials) {
    auto st = analyze_frame(*frame);
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    EXPECT_GT(st->escapes, 0u);
    test::RoundTripInput rt{c.shape, c.dtype, options_of(c), input.data};
    EXPECT_EQ(test::check_round_trip(rt), "");  // the documented bound on every element
    const size_t es = dtype_size(c.dtype);
    for (size_t i = 0; i < input.data.size() / es; ++i) {
      const float x = detail::load_as_f32(&input.data[i * es], uint8_t(c.dtype));
      if (!std::isfinite(x))
        EXPECT_EQ(std::memcmp(&input.data[i * es], &out->data[i * es], es), 0) << "element " << i;
    }
  }
}

// The large hostile case's head and chunks span several 4 KiB checksum segments.
TEST(Golden, MultiSegmentChecksumsAreCovered) {
  auto frame = read_file(golden_dir() + "/f16_level3_group4_specials.kvc");
  ASSERT_TRUE(frame.ok());
  auto info = read_frame_info(*frame);
  ASSERT_TRUE(info.ok());
  EXPECT_GT(info->head_bytes, 4096u);
  EXPECT_GT(info->chunks[0].size, 4096u);
}

// A lossy frame against the input it was encoded from, committed next to it: the decoded values
// are within the documented bound of the input (not merely equal to an earlier decoding).
TEST_P(GoldenFrame, LossyFrameIsWithinTheBoundOfItsInput) {
  if (writing_golden()) GTEST_SKIP() << "rewriting the golden frames";
  const GoldenCase& c = GetParam();
  if (c.level == 0) return;  // lossless frames are compared with make_input() bit for bit above
  auto frame = read_file(golden_dir() + "/" + c.name + ".kvc");
  ASSERT_TRUE(frame.ok()) << frame.status().to_string();
  auto input = load_kv(input_path(c));
  ASSERT_TRUE(input.ok()) << input.status().to_string() << " (KVCODEC_WRITE_GOLDEN=1 writes the inputs)";
  EXPECT_TRUE(input->data == make_input(c).data) << input_path(c) << " differs from make_input()";
  auto out = KVCache::allocate(c.dtype, c.shape);
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(decode_into(*frame, out->view()).ok());
  const test::BoundReport r = test::check_bound(*frame, *input, *out);
  EXPECT_EQ(r.violations, 0u) << r.first;
  EXPECT_EQ(r.checked + r.non_finite, c.shape.elements());  // every element checked
  if (c.shape.tokens > 1) EXPECT_LT(r.exact, r.checked) << "a lossy frame that decodes exactly tests nothing";
}

// tests/golden/v1/: the same cases as written by format version 1 (before segmented checksums);
// readers must keep decoding them to the same values.
TEST_P(GoldenFrame, Version1RecordStillDecodes) {
  if (writing_golden()) GTEST_SKIP() << "rewriting the golden frames";
  const GoldenCase& c = GetParam();
  if (c.specials || has_stored_units(c) || has_raw_planes(c)) GTEST_SKIP() << c.name << " was added after version 1";
  auto frame = read_file(golden_dir() + "/v1/" + c.name + ".kvc");
  ASSERT_TRUE(frame.ok()) << frame.status().to_string();
  auto info = read_frame_info(*frame);
  ASSERT_TRUE(info.ok()) << info.status().to_string();
  EXPECT_EQ(info->format_version, 1);
  ASSERT_TRUE(verify_frame(*frame).ok());
  auto out = KVCache::allocate(c.dtype, c.shape);
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(decode_into(*frame, out->view()).ok());
  EXPECT_EQ(digest(out->data), read_digests().at(c.name));
}

// tests/golden/records.txt: frames of earlier encoders (before a deliberate encoder change) still
// decode to the values they decoded to, within the documented bound of their inputs.
TEST(Golden, EarlierEncodersRecordsStillDecode) {
  if (writing_golden()) GTEST_SKIP() << "rewriting the golden frames";
  const auto records = read_digests("records.txt");
  ASSERT_FALSE(records.empty());
  for (const auto& [path, expected] : records) {
    SCOPED_TRACE(path);
    const std::string name = path.substr(path.rfind('/') + 1);
    const GoldenCase* c = nullptr;
    for (const GoldenCase& k : kCases)
      if (name == k.name) c = &k;
    ASSERT_NE(c, nullptr) << "no golden case named " << name;
    auto frame = read_file(golden_dir() + "/" + path + ".kvc");
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    ASSERT_TRUE(verify_frame(*frame).ok());
    auto out = KVCache::allocate(c->dtype, c->shape);
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(decode_into(*frame, out->view()).ok());
    EXPECT_EQ(digest(out->data), expected);
    if (c->level == 0) continue;
    const KVCache input = make_input(*c);
    const test::BoundReport r = test::check_bound(*frame, input, *out);
    EXPECT_EQ(r.violations, 0u) << r.first;
  }
}

INSTANTIATE_TEST_SUITE_P(All, GoldenFrame, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<GoldenCase>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace kvcodec
