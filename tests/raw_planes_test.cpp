// Raw byte planes (format version 5, docs/format.md 4.5): lossless byte planes whose coding would
// save under 1/64 of their bytes are kept as they are. Checks the encoder's choice (noise in the
// low mantissa bytes: raw; smooth caches: coded, frames unchanged at version 2), bit-exact round
// trips through every decoder (AVX2 and scalar loops, chunk and layer ranges, the warp decoder
// run on the host), the size bound, and that malformed raw planes and markers are rejected with
// corrupt_data everywhere.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.hpp"
#include "common/dtype.hpp"
#include "common/frame.hpp"
#include "common/simd.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "warp_emulation.hpp"

namespace kvcodec {
namespace {

// Every mantissa bit and the exponent's low bit noise, as the low bits of real caches are: the low
// byte (f16, bf16; the only byte of f8e4m3) or the three low bytes (f32) are kept raw.
KVCache noisy_cache(DType dt, KVShape shape, uint64_t seed) {
  auto kv = KVCache::allocate(dt, shape);
  EXPECT_TRUE(kv.ok());
  std::mt19937_64 rng(seed);
  const size_t es = dtype_size(dt);
  for (size_t e = 0; e < shape.elements(); ++e) {
    const uint64_t r = rng();
    if (dt == DType::kF8E4M3) {  // no noise below 3 mantissa bits: random bytes
      kv->data[e] = uint8_t(r >> 56);
      continue;
    }
    // +-(1 + m) * 2^b, b in {0, 1}: sign, the exponent's low bit and the mantissa all noise.
    const float x = (r & 1 ? -1.0f : 1.0f) * (r & 2 ? 2.0f : 1.0f) * (1.0f + float(r >> 41) * 0x1p-23f);
    detail::store_from_f32(kv->data.data() + e * es, uint8_t(dt), x);
  }
  return std::move(kv).value();
}

// A smooth cache: few distinct low bytes, every plane worth coding.
KVCache smooth_cache(DType dt, KVShape shape) {
  auto kv = KVCache::allocate(dt, shape);
  EXPECT_TRUE(kv.ok());
  const size_t es = dtype_size(dt);
  const uint32_t C = uint32_t(shape.channels());
  for (size_t e = 0; e < shape.elements(); ++e)
    detail::store_from_f32(kv->data.data() + e * es, uint8_t(dt), 0.25f * float(e % C % 7) + 0.5f);
  return std::move(kv).value();
}

std::vector<uint8_t> encode(const KVCache& kv, EncodeOptions o) {
  std::vector<uint8_t> frame(max_encoded_size(kv.shape, kv.dtype, o));
  auto size = encode_into(const_cast<KVCache&>(kv).view(), o, frame);
  EXPECT_TRUE(size.ok()) << size.status().to_string();
  frame.resize(size.ok() ? *size : 0);
  return frame;
}

EncodeOptions lossless(uint32_t chunk_tokens, uint32_t table_groups = 8) {
  EncodeOptions o;
  o.level = 0;
  o.chunk_tokens = chunk_tokens;
  o.table_groups = table_groups;
  return o;
}

uint32_t raw_planes_of(std::span<const uint8_t> frame, size_t layer_model) {
  auto h = detail::parse_head(frame);
  EXPECT_TRUE(h.ok()) << h.status().to_string();
  return h.ok() ? h->layers[layer_model].raw_planes : 0u;
}

// Decodes `frame` every way there is and expects `kv` back bit for bit.
void expect_round_trip(std::span<const uint8_t> frame, const KVCache& kv) {
  for (bool simd : {true, false}) {
    SCOPED_TRACE(simd ? "AVX2 where present" : "scalar");
    detail::set_simd_enabled(simd);
    auto out = KVCache::allocate(kv.dtype, kv.shape);
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(decode_into(frame, out->view()).ok());
    EXPECT_TRUE(out->data == kv.data);
    // Chunk by chunk, last first; then a layer range.
    auto info = read_frame_info(frame);
    ASSERT_TRUE(info.ok());
    std::fill(out->data.begin(), out->data.end(), 0);
    for (size_t k = info->chunks.size(); k-- > 0;) {
      const ChunkInfo& c = info->chunks[k];
      ASSERT_TRUE(decode_chunk_into(frame.first(info->head_bytes), uint32_t(k), frame.subspan(c.offset, c.size),
                                    out->view())
                      .ok());
    }
    EXPECT_TRUE(out->data == kv.data);
    if (kv.shape.layers > 1) {
      auto part = KVCache::allocate(kv.dtype, kv.shape);
      ASSERT_TRUE(part.ok());
      DecodeOptions o;
      o.layer_begin = 1;
      o.layer_end = 2;
      ASSERT_TRUE(decode_into(frame, part->view(), o).ok());
      const size_t layer_bytes = kv.data.size() / kv.shape.layers;
      EXPECT_EQ(std::memcmp(part->data.data() + layer_bytes, kv.data.data() + layer_bytes, layer_bytes), 0);
    }
  }
  detail::set_simd_enabled(true);
  auto out = KVCache::allocate(kv.dtype, kv.shape);
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(test::emulate_decode(frame, out->view()).ok());  // the warp decoder, on the host
  EXPECT_TRUE(out->data == kv.data);
}

TEST(RawPlanes, NoisyLowBytesAreKeptRawAndDecodeExactly) {
  struct Case {
    DType dt;
    KVShape shape;
    uint32_t chunk, groups, expect_raw;
  };
  const Case cases[] = {
      {DType::kF16, {2, 96, 2, 64}, 32, 8, 0x1},
      {DType::kBF16, {2, 96, 2, 64}, 40, 2, 0x1},  // partial last chunk
      {DType::kF32, {2, 64, 1, 64}, 16, 4, 0x7},
      {DType::kF16, {2, 70, 1, 36}, 16, 1, 0x1},  // C % 8 != 0: the scalar loop only
      {DType::kF8E4M3, {1, 64, 2, 64}, 64, 1, 0x1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(dtype_name(c.dt)) + " C " + std::to_string(c.shape.channels()));
    const KVCache kv = noisy_cache(c.dt, c.shape, 11);
    const EncodeOptions o = lossless(c.chunk, c.groups);
    const auto frame = encode(kv, o);
    ASSERT_FALSE(frame.empty());
    EXPECT_LE(frame.size(), max_encoded_size(c.shape, c.dt, o));
    auto info = read_frame_info(frame);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->format_version, kRawPlanesFormatVersion);
    for (size_t m = 0; m < 2 * c.shape.layers; ++m) EXPECT_EQ(raw_planes_of(frame, m), c.expect_raw) << "model " << m;
    auto stats = analyze_frame(frame);
    ASSERT_TRUE(stats.ok()) << stats.status().to_string();
    const uint64_t raw = uint64_t(__builtin_popcount(c.expect_raw));
    EXPECT_EQ(stats->symbols, c.shape.elements() * (dtype_size(c.dt) - raw));
    EXPECT_GE(stats->raw_plane_bytes, c.shape.elements() * raw);
    EXPECT_EQ(encode(kv, o), frame) << "deterministic";
    expect_round_trip(frame, kv);
  }
}

TEST(RawPlanes, SmoothCachesKeepEveryPlaneCodedAndVersion2) {
  for (DType dt : {DType::kF16, DType::kBF16, DType::kF32}) {
    SCOPED_TRACE(dtype_name(dt));
    const KVCache kv = smooth_cache(dt, {2, 64, 2, 32});
    const auto frame = encode(kv, lossless(16));
    auto info = read_frame_info(frame);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->format_version, kFormatVersion);
    EXPECT_EQ(analyze_frame(frame)->raw_plane_bytes, 0u);
    expect_round_trip(frame, kv);
  }
}

// The head of `frame` rewritten with the layer models `models` (serialized as given, or by
// `write` for the one it names), version `version`; the chunk bodies are kept.
std::vector<uint8_t> rewrite_head(std::span<const uint8_t> frame, uint16_t version, size_t model_index,
                                  const std::function<void(const FrameInfo&, std::vector<uint8_t>&)>& write) {
  auto h = detail::parse_head(frame);
  EXPECT_TRUE(h.ok());
  FrameInfo f = h->info;
  const uint64_t old_head = f.head_bytes;
  f.format_version = version;
  std::vector<uint8_t> model;
  for (size_t m = 0; m < h->layers.size(); ++m) {
    if (m == model_index) write(f, model);
    else detail::write_layer_model(f, h->layers[m], model);
  }
  std::vector<uint8_t> out;
  detail::write_head(f, model, out);
  out.insert(out.end(), frame.begin() + old_head, frame.end());
  return out;
}

// Every reader says corrupt_data (the CPU decoder whole and by chunk, analyze_frame, the warp
// decoder), never crashes.
void expect_corrupt(std::span<const uint8_t> bad, const KVCache& kv) {
  auto out = KVCache::allocate(kv.dtype, kv.shape);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(decode_into(bad, out->view()).code(), StatusCode::kCorruptData);
  EXPECT_EQ(analyze_frame(bad).status().code(), StatusCode::kCorruptData);
  EXPECT_FALSE(test::emulate_decode(bad, out->view()).ok());
  auto info = read_frame_info(bad);
  if (!info.ok()) return;  // the head itself was rejected (checked by the callers)
  const ChunkInfo& c = info->chunks[0];
  EXPECT_EQ(decode_chunk_into(bad.first(info->head_bytes), 0, bad.subspan(c.offset, c.size), out->view()).code(),
            StatusCode::kCorruptData);
}

TEST(RawPlanes, MalformedMarkersAndPlanesAreCorrupt) {
  const KVShape shape{2, 48, 2, 64};
  const KVCache kv = noisy_cache(DType::kF16, shape, 5);
  const auto good = encode(kv, lossless(16, 2));
  ASSERT_EQ(read_frame_info(good)->format_version, kRawPlanesFormatVersion);
  auto h = detail::parse_head(good);
  ASSERT_TRUE(h.ok());
  const detail::LayerModel m0 = h->layers[0];
  ASSERT_EQ(m0.raw_planes, 1u);
  ASSERT_EQ(m0.groups, 2u);
  {
    SCOPED_TRACE("the unchanged head, rewritten");
    auto same = rewrite_head(good, kRawPlanesFormatVersion, 0,
                             [&](const FrameInfo& f, std::vector<uint8_t>& out) { detail::write_layer_model(f, m0, out); });
    EXPECT_EQ(same, good);
  }
  {
    SCOPED_TRACE("markers in a version 3 frame");
    auto bad = rewrite_head(good, kStoredUnitsFormatVersion, 0,
                            [&](const FrameInfo& f, std::vector<uint8_t>& out) { detail::write_layer_model(f, m0, out); });
    EXPECT_EQ(read_frame_info(bad).status().code(), StatusCode::kCorruptData);
    expect_corrupt(bad, kv);
  }
  {
    SCOPED_TRACE("plane 0 a marker in group 0 and a table in group 1");
    auto bad = rewrite_head(good, kRawPlanesFormatVersion, 0, [&](const FrameInfo& f, std::vector<uint8_t>& out) {
      detail::LayerModel m = m0;
      m.raw_planes = 0;
      m.tables[2] = m.tables[1];  // group 1, plane 0: a valid table (group 0 plane 1's)
      std::vector<uint8_t> t;
      detail::write_layer_model(f, m, t);  // groups, 4 tables, channel groups; table 0 is empty
      out.push_back(t[0]);
      out.push_back(0);  // group 0, plane 0: a marker
      out.push_back(0);
      out.insert(out.end(), t.begin() + 1 + 1 + 0, t.end());  // the empty table's n - 1 byte dropped
    });
    EXPECT_EQ(read_frame_info(bad).status().code(), StatusCode::kCorruptData);
    expect_corrupt(bad, kv);
  }
  {
    SCOPED_TRACE("plane 0 marked raw in no model, its units still raw");
    auto bad = rewrite_head(good, kRawPlanesFormatVersion, 0, [&](const FrameInfo& f, std::vector<uint8_t>& out) {
      detail::LayerModel m = m0;
      m.raw_planes = 0;
      for (uint32_t g = 0; g < m.groups; ++g) m.tables[g * m.slots] = m.tables[g * m.slots + 1];
      detail::write_layer_model(f, m, out);
    });
    ASSERT_TRUE(read_frame_info(bad).ok());
    ASSERT_TRUE(verify_frame(bad).ok());
    expect_corrupt(bad, kv);
  }
  {
    SCOPED_TRACE("plane 1 marked raw too, its units coded");
    auto bad = rewrite_head(good, kRawPlanesFormatVersion, 0, [&](const FrameInfo& f, std::vector<uint8_t>& out) {
      detail::LayerModel m = m0;
      m.raw_planes = 3;
      detail::write_layer_model(f, m, out);
    });
    ASSERT_TRUE(verify_frame(bad).ok());
    expect_corrupt(bad, kv);
  }
  {
    SCOPED_TRACE("version 5 at a lossy level");
    EncodeOptions o = lossless(16, 2);
    o.level = 4;
    const auto lossy = encode(kv, o);
    auto hl = detail::parse_head(lossy);
    ASSERT_TRUE(hl.ok());
    auto bad = rewrite_head(lossy, kRawPlanesFormatVersion, 0, [&](const FrameInfo& f, std::vector<uint8_t>& out) {
      detail::write_layer_model(f, hl->layers[0], out);
    });
    EXPECT_EQ(read_frame_info(bad).status().code(), StatusCode::kCorruptData);
  }
}

}  // namespace
}  // namespace kvcodec
