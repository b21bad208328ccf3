// The GPU encoder (cuda.hpp, encode/warp_encode.hpp, encode/block_model.hpp): its per-thread,
// per-warp and per-block code run on the host by warp and block emulation in every build, and
// the real kernels in builds with -DKVCODEC_CUDA=ON on a machine with a GPU (skipped without a
// device). Frames are compared with the CPU encoder's byte for byte over dtypes, all levels,
// group sizes 1 and > 1, step modes, table group counts 1..16, shapes with fewer and more
// channels than lanes (and than groups), partial chunks, every source layout, random, constant,
// all-escape, synthetic and real caches; the model builder alone is compared with the CPU's on
// crafted histograms (ties, single values, only escapes, long normalisation corrections).
#include <gtest/gtest.h>

#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "encode/encode_model.hpp"
#include "common/frame.hpp"
#include "kvcodec/codec.hpp"
#include "encode/block_model.hpp"
#include "encode/encode_plan.hpp"
#include "encode/warp_encode.hpp"
#include "kvcodec/synthetic.hpp"
#include "roundtrip_check.hpp"

namespace kvcodec {
namespace {

using namespace test;

// ---- warp emulation --------------------------------------------------------------------------

// Encodes `src` with the GPU encoder's code run on the host, in the kernels' order: phase 1 per
// (unit, channel), the model builder by detail::HostBlock per unit, warp_encode_unit by
// detail::HostWarp per (chunk, unit), and the frame assembly.
StatusOr<std::vector<uint8_t>> emulate_encode(const KVView& src, const EncodeOptions& o) {
  KVCODEC_ASSIGN_OR_RETURN(detail::EncodeLayout el, detail::encode_layout(src.shape, src.dtype, o));
  const uint32_t units = el.units(), C = el.channels;
  const uint64_t per_channel = uint64_t(units) * C, elements = per_channel * el.tokens;
  const Status bad_source = InvalidArgument("source view: block table entry outside [0, num_blocks)");

  std::vector<detail::ChannelSums> sums(per_channel);
  std::vector<ChannelGrid> grids(per_channel);
  std::vector<detail::LaneGrid> lane(per_channel);
  std::vector<uint32_t> hist(units * el.hist_per_unit(), 0);
  std::vector<uint64_t> feature(per_channel);
  const std::vector<double> rel = detail::layer_rel_steps(el, o);
  for (uint32_t u = 0; u < units; ++u)
    for (uint32_t c = 0; c < C; ++c)
      if (!detail::stats_channel(el, src, u, c, sums.data())) return bad_source;
  for (uint32_t u = 0; u < units; ++u) {
    const double rms = el.step_mode == StepMode::kLayer ? detail::layer_scale(&sums[uint64_t(u) * C], C) : 0.0;
    for (uint32_t c = 0; c < C; ++c) detail::grid_channel(el, rel[u / 2], rms, sums.data(), u, c, grids.data(), lane.data());
  }
  for (uint32_t u = 0; u < units; ++u)
    for (uint32_t c = 0; c < C; ++c)
      if (!detail::histogram_channel(el, src, u, c, lane.data(), hist.data(), feature.data())) return bad_source;

  // Tables and models, one block per unit. Outputs start as garbage: every byte read must be
  // written first.
  const detail::ModelLayout ml = detail::model_layout(el);
  std::vector<uint32_t> codes(uint64_t(units) * el.max_tables * el.bins, 0xEEEEEEEEu);
  std::vector<uint16_t> table_base(per_channel, 0xEEEE);
  std::vector<uint8_t> models(units * ml.model_stride, 0xEE), scratch(units * ml.scratch_stride, 0xEE);
  std::vector<uint32_t> model_size(units, 0xEEEEEEEEu), raw_planes(units, 0xEEEEEEEEu);
  std::vector<uint64_t> group_sums(ml.sums_bytes / sizeof(uint64_t));
  const detail::ModelArgs args{hist.data(),       feature.data(), grids.data(),      codes.data(),
                               table_base.data(), models.data(),  model_size.data(), scratch.data(),
                               raw_planes.data()};
  for (uint32_t u = 0; u < units; ++u) {
    detail::HostBlock blk;
    detail::ModelShared sh;
    std::fill(group_sums.begin(), group_sums.end(), 0xEEEEEEEEEEEEEEEEull);
    if (!detail::block_build_model(blk, el, ml, args, u, sh, group_sums.data()))
      return Internal("a table could not be normalised");
  }
  if (!el.lossless && el.group_tokens > 1) {  // deltas of escaped anchors: recount, rebuild on the same groups
    for (uint32_t u = 0; u < units; ++u)
      for (uint32_t c = 0; c < C; ++c)
        if (!detail::recount_deltas_channel(el, src, u, c, lane.data(), codes.data(), table_base.data(), hist.data()))
          return bad_source;
    for (uint32_t u = 0; u < units; ++u) {
      detail::HostBlock blk;
      detail::ModelShared sh;
      std::fill(group_sums.begin(), group_sums.end(), 0xEEEEEEEEEEEEEEEEull);
      if (!detail::block_build_model(blk, el, ml, args, u, sh, group_sums.data(), true))
        return Internal("a table could not be normalised");
    }
  }

  std::vector<uint16_t> words(el.planes * elements);
  std::vector<uint8_t> escapes(el.lossless ? 0 : el.elem_size * elements);
  std::vector<detail::UnitStage> stages(uint64_t(el.num_chunks) * units);
  const detail::EncodeTables tab{codes.data(), table_base.data(), lane.data(), raw_planes.data()};
  const detail::EncodeStaging stg{words.data(), escapes.data(), stages.data()};
  for (uint32_t k = 0; k < el.num_chunks; ++k)
    for (uint32_t u = 0; u < units; ++u) {
      detail::HostWarp w;
      if (detail::warp_encode_unit(w, el, src, tab, stg, k, u) != detail::kUnitOk) return bad_source;
    }
  std::vector<uint64_t> model_offset(units), offset(el.num_chunks);
  std::vector<uint32_t> size(el.num_chunks);
  const uint64_t model_bytes = detail::place_models(units, model_size.data(), model_offset.data());
  const uint64_t head_bytes = detail::head_bytes_for(el, model_bytes);
  uint64_t frame_bytes = 0;
  EXPECT_EQ(detail::assign_chunks(el, stages.data(), head_bytes, UINT64_MAX, offset.data(), size.data(), &frame_bytes),
            detail::kAssignOk);
  std::vector<uint8_t> frame(frame_bytes, 0xEE);  // every byte must be written
  const detail::HeaderTemplate hdr = detail::header_template(el, o);
  for (uint32_t u = 0; u < units; ++u) {
    detail::HostBlock blk;
    detail::block_write_model(blk, hdr, ml, models.data(), model_size.data(), model_offset.data(), model_bytes, u,
                              frame.data());
  }
  for (uint32_t k = 0; k < el.num_chunks; ++k)
    for (uint32_t u = 0; u < units; ++u) {
      detail::HostWarp w;
      detail::warp_write_unit(w, el, src, stg, offset.data(), k, u, frame.data());
    }
  const uint64_t max_segments = detail::max_chunk_segments(el);
  std::vector<uint64_t> digests(max_segments * el.num_chunks);
  for (uint32_t k = 0; k < el.num_chunks; ++k)
    for (uint64_t s = 0; s < max_segments; ++s)
      detail::chunk_segment_digest(offset.data(), size.data(), k, s, max_segments, frame.data(), digests.data());
  for (uint32_t k = 0; k < el.num_chunks; ++k)
    detail::finish_chunk(model_bytes, offset.data(), size.data(), digests.data(), max_segments, frame_bytes, k,
                         frame.data());
  const uint64_t head_segments = detail::checksum_segments(head_bytes);
  for (uint64_t s = 0; s < head_segments; ++s) detail::head_segment_digest(head_bytes, s, frame.data(), digests.data());
  detail::finish_head(head_bytes, digests.data(), frame.data());
  return frame;
}

struct Case {
  KVShape shape;
  DType dtype;
  EncodeOptions options;
};

std::string describe(const Case& c) {
  const EncodeOptions& o = c.options;
  return std::string(dtype_name(c.dtype)) + " L" + std::to_string(c.shape.layers) + " T" +
         std::to_string(c.shape.tokens) + " C" + std::to_string(c.shape.channels()) + " level " +
         std::to_string(o.level) + " chunk " + std::to_string(o.chunk_tokens) + " group " +
         std::to_string(o.group_tokens) + " tables " + std::to_string(o.table_groups) +
         (o.step_mode == StepMode::kLayer ? " layer-steps" : "");
}

EncodeOptions options(int level, uint32_t chunk, uint32_t group, uint32_t tables = 8,
                      StepMode mode = StepMode::kChannel) {
  EncodeOptions o;
  o.level = level;
  o.chunk_tokens = chunk;
  o.group_tokens = group;
  o.table_groups = tables;
  o.step_mode = mode;
  return o;
}

// Every dtype and level, group sizes 1 and 3; C = 6 (< 32 lanes: several tokens per warp step),
// 96 and 256; partial last chunks; plus the other step mode, one table group, 4-token groups.
std::vector<Case> cases() {
  std::vector<Case> out;
  const KVShape shapes[] = {{2, 45, 1, 6}, {2, 70, 3, 32}, {1, 33, 2, 128}};
  for (const KVShape& s : shapes)
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3})
      for (int level = 0; level <= kMaxLevel; ++level)
        for (uint32_t gt : {1u, 3u}) {
          if (level == 0 && gt > 1) continue;  // group_tokens does not apply to lossless
          out.push_back({s, dt, options(level, 16, gt)});
        }
  out.push_back({{2, 300, 2, 16}, DType::kF16, options(4, 256, 4)});
  out.push_back({{3, 50, 2, 8}, DType::kBF16, options(5, 16, 2, 8, StepMode::kLayer)});
  out.push_back({{2, 40, 1, 64}, DType::kF16, options(3, 7, 1, 1)});
  out.push_back({{2, 40, 1, 64}, DType::kF32, options(0, 7, 1, 1)});
  return out;
}

TEST(WarpEncodeEmulation, MatchesCpuEncoderByteForByte) {
  uint64_t seed = 300;
  for (const Case& c : cases()) {
    SCOPED_TRACE(describe(c));
    KVCache kv = random_cache(c.shape, c.dtype, seed++);
    const auto ref = encode(kv.view(), c.options);
    ASSERT_FALSE(ref.empty());
    auto frame = emulate_encode(kv.view(), c.options);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    ASSERT_EQ(frame_difference(*frame, ref), "");
  }
}

// Units that coding would expand are stored raw (docs/format.md 4.4) by both encoders alike.
TEST(WarpEncodeEmulation, StoredUnitsAsTheCpuEncoder) {
  for (const auto& [dt, level] : kExpandingCases) {
      const Case c{{2, 80, 2, 16}, dt, options(level, 16, 1)};
      SCOPED_TRACE(describe(c));
      KVCache kv = skewed_cache(c.shape, dt, 64, level == 0, 5);
      const auto ref = encode(kv.view(), c.options);
      ASSERT_EQ(read_frame_info(ref)->format_version, kStoredUnitsFormatVersion);
      for (Layout l : {Layout::kContiguous, Layout::kPagedSlots}) {
        Dest d(c.shape, dt, l);
        d.scatter(kv.data);
        auto frame = emulate_encode(d.host_view(), c.options);
        ASSERT_TRUE(frame.ok()) << frame.status().to_string();
        EXPECT_EQ(frame_difference(*frame, ref), "");
      }
    }
}

TEST(WarpEncodeEmulation, EverySourceLayout) {
  for (const Case& c : {Case{{3, 50, 2, 8}, DType::kBF16, options(5, 16, 2)},
                        Case{{2, 40, 2, 8}, DType::kF16, options(0, 16, 1)}}) {
    SCOPED_TRACE(describe(c));
    KVCache kv = random_cache(c.shape, c.dtype, 9);
    const auto ref = encode(kv.view(), c.options);
    for (Layout l : kAllLayouts) {
      SCOPED_TRACE(int(l));
      Dest d(c.shape, c.dtype, l);
      d.scatter(kv.data);
      auto frame = emulate_encode(d.host_view(), c.options);
      ASSERT_TRUE(frame.ok()) << frame.status().to_string();
      EXPECT_EQ(frame_difference(*frame, ref), "");
    }
  }
}

TEST(WarpEncodeEmulation, SyntheticLlama3Shape) {
  auto kv = make_synthetic("llama3-8b", 40, DType::kF16, 5);
  ASSERT_TRUE(kv.ok()) << kv.status().to_string();
  for (int level : {0, 4, 9}) {
    EncodeOptions o = options(level, 16, level == 9 ? 4 : 1);
    o.threads = 0;
    auto frame = emulate_encode(kv->view(), o);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    EXPECT_EQ(frame_difference(*frame, encode(kv->view(), o)), "") << "level " << level;
    // Lossless: the low (mantissa) byte plane is kept raw (format version 5, docs/format.md 4.5).
    if (level == 0) EXPECT_EQ(read_frame_info(*frame)->format_version, kRawPlanesFormatVersion);
  }
}

// Raw byte planes in every dtype (the three low planes of f32) and a stored unit in the same
// frame: both encoders choose and write them alike, and the frame is version 5.
TEST(WarpEncodeEmulation, RawPlanesAsTheCpuEncoder) {
  const KVShape s{2, 64, 2, 32};
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    SCOPED_TRACE(dtype_name(dt));
    auto kv = KVCache::allocate(dt, s);
    ASSERT_TRUE(kv.ok());
    std::mt19937_64 rng(17);
    for (uint8_t& b : kv->data) b = uint8_t(rng() >> 56);  // random bits
    const size_t row = s.channels() * dtype_size(dt);
    for (uint32_t t = 0; t < 16; ++t)  // unit (0, K) of chunk 0 constant: coded, not raw
      std::memset(kv->data.data() + t * row, 0x11, row);
    const EncodeOptions o = options(0, 16, 1, 2);
    const auto ref = encode(kv->view(), o);
    ASSERT_EQ(read_frame_info(ref)->format_version, kRawPlanesFormatVersion);
    auto stats = analyze_frame(ref);
    ASSERT_TRUE(stats.ok());
    EXPECT_GT(stats->raw_plane_bytes, 0u);
    EXPECT_GT(stats->stored_units, 0u);
    auto frame = emulate_encode(kv->view(), o);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    EXPECT_EQ(frame_difference(*frame, ref), "");
  }
}

TEST(WarpEncodeEmulation, RealCache) {
  KVCODEC_REQUIRE_DATA("models/kvc-bytes-a.bin");
  KVCODEC_REQUIRE_DATA("text/techdocs_valid.txt");
  for (DType dt : {DType::kF16, DType::kBF16}) {
    auto kv = real_cache(dt, 160);
    ASSERT_TRUE(kv.ok()) << kv.status().to_string();
    for (int level : {0, 2, 6, 9})
      for (uint32_t gt : {1u, 4u}) {
        if (level == 0 && gt > 1) continue;
        const EncodeOptions o = options(level, 64, gt);
        SCOPED_TRACE(std::string(dtype_name(dt)) + " level " + std::to_string(level) + " group " + std::to_string(gt));
        Dest d(kv->shape, dt, Layout::kPagedNHD);
        d.scatter(kv->data);
        auto frame = emulate_encode(d.host_view(), o);
        ASSERT_TRUE(frame.ok()) << frame.status().to_string();
        EXPECT_EQ(frame_difference(*frame, encode(kv->view(), o)), "");
      }
  }
}

// Random inputs of the round-trip property test (outlier channels that escape anchors, NaN,
// +-Inf, values at the dtype's range, every option): the emulated GPU encoder's frames are the
// CPU encoder's, including the second pass over the deltas of escaped anchors.
TEST(WarpEncodeEmulation, RandomInputsMatchTheCpuEncoder) {
  std::mt19937_64 rng(1106);
  int with_deltas = 0;
  for (int i = 0; i < 61; ++i) {
    test::RoundTripInput in = i == 60 ? test::escaped_anchor_input() : test::random_round_trip_input(rng);
    if (i % 2 == 0 && in.options.level > 0) in.options.group_tokens = 2 + uint32_t(i % 5);  // deltas in most
    SCOPED_TRACE("case " + std::to_string(i));
    const KVView v = contiguous_view(in.raw.data(), in.dtype, in.shape);
    const auto ref = encode(v, in.options);
    ASSERT_FALSE(ref.empty());
    auto frame = emulate_encode(v, in.options);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    ASSERT_EQ(frame_difference(*frame, ref), "");
    with_deltas += in.options.level > 0 && in.options.group_tokens > 1;
  }
  EXPECT_GT(with_deltas, 20);
}

// A paged source whose block table points outside the cache is an error, found without
// reading outside it.
TEST(WarpEncodeEmulation, BadBlockTableIsAnError) {
  const KVShape s{1, 40, 1, 8};
  Dest d(s, DType::kF16, Layout::kPagedNHD);
  d.block_table[1] = int32_t(d.num_blocks) + 5;
  EXPECT_EQ(emulate_encode(d.host_view(), {}).status().code(), StatusCode::kInvalidArgument);
}

// Edge cases of the model builder, end to end: constant caches (one distinct value per table),
// caches of nothing but escapes (NaN, inf), and the extreme table group counts, with fewer
// channels than groups; f16 at levels 0, 1 and 4, and f32 lossless (4 byte planes).
struct EdgeCase {
  std::string name;
  KVCache kv;
  EncodeOptions options;
};

std::vector<EdgeCase> edge_cases() {
  std::vector<EdgeCase> out;
  const KVShape small{2, 40, 1, 6}, wide{1, 70, 2, 32};
  for (const KVShape& s : {small, wide})
    for (DType dt : {DType::kF16, DType::kF32})
      for (int level : {0, 1, 4})
        for (uint32_t groups : {1u, 8u, kMaxTableGroups})
          for (std::string kind : {"random", "constant", "nan", "inf"}) {
            if (level == 0 && kind != "random" && kind != "constant") continue;  // specials are plain bytes
            if (dt == DType::kF32 && level != 0) continue;
            KVCache kv = random_cache(s, dt, 77 + groups);
            const float v = kind == "constant" ? 1.5f : kind == "nan" ? NAN : INFINITY;
            if (kind != "random")
              for (size_t i = 0; i < s.elements(); ++i)
                detail::store_from_f32(kv.data.data() + dtype_size(dt) * i, uint8_t(dt), v);
            out.push_back({kind + " " + std::string(dtype_name(dt)) + " C" + std::to_string(s.channels()) + " level " +
                               std::to_string(level) + " groups " + std::to_string(groups),
                           std::move(kv), options(level, 16, level == 4 ? 3 : 1, groups)});
          }
  return out;
}

TEST(WarpEncodeEmulation, ModelEdgeCases) {
  for (EdgeCase& e : edge_cases()) {
    SCOPED_TRACE(e.name);
    auto frame = emulate_encode(e.kv.view(), e.options);
    ASSERT_TRUE(frame.ok()) << frame.status().to_string();
    ASSERT_EQ(frame_difference(*frame, encode(e.kv.view(), e.options)), "");
  }
}

// A chunk of 4 GiB or more cannot be indexed (u32 sizes): the frame assembly says so rather than
// truncating its size, as encode_into returns kResourceExhausted.
TEST(WarpEncodeEmulation, ChunksOf4GiBAreRejected) {
  detail::EncodeLayout el;
  el.layers = 2;  // 4 units
  el.planes = 1;
  el.lossless = 1;
  el.num_chunks = 1;
  std::vector<detail::UnitStage> stages(4);
  for (auto& st : stages) st.words[0] = 1u << 29;  // 1 GiB of words per unit: 4 GiB + headers
  uint64_t offset, frame_bytes;
  uint32_t size;
  EXPECT_EQ(detail::assign_chunks(el, stages.data(), 64, UINT64_MAX, &offset, &size, &frame_bytes),
            detail::kAssignChunkTooLarge);
  stages[0].words[0] = 1u << 28;
  EXPECT_EQ(detail::assign_chunks(el, stages.data(), 64, UINT64_MAX, &offset, &size, &frame_bytes), detail::kAssignOk);
  EXPECT_EQ(size, 4u * 4 + 4 * (4 + 128) + 2 * ((1u << 28) + 3 * (1u << 29)));
  EXPECT_EQ(detail::assign_chunks(el, stages.data(), 64, frame_bytes - 1, &offset, &size, &frame_bytes),
            detail::kAssignTooSmall);
}

// The diagnostics the GPU tests print when a device output differs name the right place.
TEST(WarpEncodeEmulation, DifferencesAreLocated) {
  const KVShape s{2, 40, 1, 64};
  KVCache kv = random_cache(s, DType::kF16, 4);
  const auto ref = encode(kv.view(), options(4, 16, 1));
  const FrameInfo info = *read_frame_info(ref);
  EXPECT_EQ(frame_difference(ref, ref), "");
  auto at = [&](size_t i) {
    auto bad = ref;
    bad[i] ^= 1;
    return frame_difference(bad, ref);
  };
  EXPECT_NE(at(48).find("header byte 48; 1 bytes differ"), std::string::npos) << at(48);
  EXPECT_NE(at(kHeaderBytes + 3).find("model section byte 3 of"), std::string::npos) << at(kHeaderBytes + 3);
  EXPECT_NE(at(kHeaderBytes + info.model_bytes + kIndexEntryBytes + 17).find("chunk index entry 1 (checksum)"),
            std::string::npos);
  const ChunkInfo& c1 = info.chunks[1];
  EXPECT_NE(at(c1.offset + 4).find("chunk 1 unit directory entry 1 (layer 0 V)"), std::string::npos) << at(c1.offset + 4);
  uint32_t u0;
  std::memcpy(&u0, ref.data() + c1.offset, 4);
  const size_t unit1 = c1.offset + 4 * 4 + u0;  // 2 layers: 4 directory entries, then unit 0
  EXPECT_NE(at(unit1 + 5).find("chunk 1 unit 1 (layer 0 V) byte 5 of"), std::string::npos) << at(unit1 + 5);
  auto shorter = ref;
  shorter.pop_back();
  EXPECT_NE(frame_difference(shorter, ref).find("prefix"), std::string::npos);

  auto t = kv.data;
  t[2 * (((1 * 2 + 1) * s.tokens + 7) * s.channels() + 9)] ^= 1;  // layer 1 V, token 7, channel 9
  EXPECT_NE(tensor_difference(t, kv.data, s, DType::kF16).find("layer 1 V token 7 channel 9"), std::string::npos)
      << tensor_difference(t, kv.data, s, DType::kF16);
  EXPECT_EQ(tensor_difference(kv.data, kv.data, s, DType::kF16), "");
}

// ---- the model builder alone -------------------------------------------------------------------

// Builds the model of one unit from histograms ([slot][bin][channel]) and features with the CPU
// encoder's build_layer_model + write_layer_model and with the device model builder run on the
// host (HostBlock), and expects the same code tables, table bases and model bytes.
void expect_same_model(uint32_t C, uint32_t slots, bool lossless, uint32_t table_groups, std::vector<uint32_t> hist,
                       const std::vector<uint64_t>& feature) {
  SCOPED_TRACE("C " + std::to_string(C) + " slots " + std::to_string(slots) + (lossless ? " lossless" : " lossy") +
               " groups " + std::to_string(table_groups));
  detail::EncodeLayout el;
  el.lossless = lossless;
  el.layers = 1;
  el.channels = C;
  el.slots = slots;
  el.bins = lossless ? detail::kLosslessBins : detail::kLossyBins;
  el.max_tables = table_groups * slots;
  ASSERT_EQ(hist.size(), el.hist_per_unit());
  std::vector<ChannelGrid> grids(C);
  std::mt19937 rng(C);
  for (auto& g : grids) g = {int32_t(rng() % 1281) - 640, int32_t(rng() % (2u << 22)) - (1 << 22)};

  // CPU
  const detail::Histograms hs{C, slots, el.bins, hist.data()};
  detail::LayerModel m;
  std::vector<uint32_t> cpu_codes;
  ASSERT_TRUE(detail::build_layer_model(hs, feature.data(), lossless, table_groups, m, cpu_codes).ok());
  if (!lossless)
    for (const ChannelGrid& g : grids) {
      m.step_code.push_back(g.step_code);
      m.center.push_back(g.center);
    }
  FrameInfo f;
  f.level = lossless ? 0 : 1;
  std::vector<uint8_t> cpu_bytes;
  detail::write_layer_model(f, m, cpu_bytes);

  // Device code on the host; unit 0 of a one-layer layout. Each phase's calls in order, then in
  // reverse: on a GPU they run in any order.
  const detail::ModelLayout ml = detail::model_layout(el);
  for (bool reverse : {false, true}) {
    SCOPED_TRACE(reverse ? "phases in reverse" : "phases in order");
    std::vector<uint32_t> codes(el.max_tables * el.bins, 0xEEEEEEEEu);
    std::vector<uint16_t> table_base(C, 0xEEEE);
    std::vector<uint8_t> model(ml.model_stride, 0xEE), scratch(ml.scratch_stride, 0xEE);
    std::vector<uint64_t> sums(ml.sums_bytes / 8, 0xEEEEEEEEEEEEEEEEull);
    uint32_t model_size = 0;
    const detail::ModelArgs args{hist.data(), feature.data(), grids.data(), codes.data(), table_base.data(),
                                 model.data(), &model_size,   scratch.data()};
    detail::HostBlock blk;
    blk.reverse = reverse;
    detail::ModelShared sh;
    ASSERT_TRUE(detail::block_build_model(blk, el, ml, args, 0, sh, sums.data()));

    ASSERT_EQ(std::vector<uint8_t>(model.begin(), model.begin() + model_size), cpu_bytes);
    codes.resize(cpu_codes.size());
    EXPECT_EQ(codes, cpu_codes);
    for (uint32_t c = 0; c < C; ++c) ASSERT_EQ(table_base[c], m.channel_group[c] * slots) << "channel " << c;
  }
}

// Random histograms in the shape the encoders count: per channel a spread of values around a
// centre (lossy: grid offsets with some escapes; lossless: byte planes), `tokens` per slot.
std::vector<uint32_t> random_hist(uint32_t C, uint32_t slots, bool lossless, uint32_t tokens, std::mt19937_64& rng) {
  const uint32_t bins = lossless ? detail::kLosslessBins : detail::kLossyBins;
  std::vector<uint32_t> h(uint64_t(slots) * bins * C, 0);
  for (uint32_t c = 0; c < C; ++c)
    for (uint32_t s = 0; s < slots; ++s) {
      const double spread = 0.3 + double(rng() % 1000) / 10.0;
      const int32_t mid = lossless ? int32_t(rng() % 256) : detail::kQLimit + int32_t(rng() % 21) - 10;
      std::normal_distribution<double> d(mid, spread);
      for (uint32_t t = 0; t < tokens; ++t) {
        int64_t b = std::llround(d(rng));
        if (lossless) b = (b % 256 + 256) % 256;
        else if (b < 0 || b >= int64_t(detail::kEscBin) || rng() % 211 == 0) b = detail::kEscBin;
        ++h[(uint64_t(s) * bins + uint64_t(b)) * C + c];
      }
    }
  return h;
}

TEST(BlockModelEmulation, RandomHistograms) {
  std::mt19937_64 rng(5);
  for (uint32_t C : {1u, 3u, 7u, 40u, 300u, 1500u})
    for (uint32_t groups : {1u, 2u, 5u, 8u, kMaxTableGroups})
      for (int kind = 0; kind < 5; ++kind) {
        const bool lossless = kind < 3;
        const uint32_t slots = lossless ? 1u << kind : kind - 2;  // 1, 2, 4 byte planes; anchor (+ delta)
        std::vector<uint64_t> feature(C);
        for (auto& f : feature) f = rng() % (C > 100 ? 50 : 4);  // many ties
        expect_same_model(C, slots, lossless, groups, random_hist(C, slots, lossless, 64, rng), feature);
      }
}

// Channels whose features are all equal: the quantile split falls back to channel order.
TEST(BlockModelEmulation, AllFeaturesEqual) {
  std::mt19937_64 rng(6);
  for (bool lossless : {false, true})
    for (uint32_t C : {16u, 257u})
      expect_same_model(C, lossless ? 2 : 1, lossless, 8, random_hist(C, lossless ? 2 : 1, lossless, 100, rng),
                        std::vector<uint64_t>(C, 42));
}

// Channels with identical histograms and distinct features: every group's table is the same, so
// every cost ties and every channel moves to the lowest group.
TEST(BlockModelEmulation, ClusteringTiesGoToTheLowestGroup) {
  std::mt19937_64 rng(7);
  for (bool lossless : {false, true}) {
    const uint32_t C = 40, bins = lossless ? detail::kLosslessBins : detail::kLossyBins;
    const std::vector<uint32_t> one = random_hist(1, 1, lossless, 200, rng);
    std::vector<uint32_t> h(uint64_t(bins) * C);
    for (uint32_t b = 0; b < bins; ++b)
      for (uint32_t c = 0; c < C; ++c) h[uint64_t(b) * C + c] = one[b];
    std::vector<uint64_t> feature(C);
    for (uint32_t c = 0; c < C; ++c) feature[c] = (c * 17) % C;
    expect_same_model(C, 1, lossless, 8, h, feature);
  }
  // A real tie: groups {A, T} and {T', B} with B the mirror image of A and T = T' symmetric, so
  // T and T' cost the same under both tables and both go to group 0.
  const uint32_t C = 4, q = detail::kQLimit;
  std::vector<uint32_t> h(uint64_t(detail::kLossyBins) * C, 0);
  auto at = [&](uint32_t b, uint32_t c) -> uint32_t& { return h[uint64_t(b) * C + c]; };
  at(q - 5, 0) = 10, at(q - 4, 0) = 5;  // A
  at(q - 5, 1) = 1, at(q + 5, 1) = 1;   // T
  at(q - 5, 2) = 1, at(q + 5, 2) = 1;   // T'
  at(q + 5, 3) = 10, at(q + 4, 3) = 5;  // B
  expect_same_model(C, 1, false, 2, h, {0, 1, 2, 3});
}

// Every count in one bin (a single distinct value), and in the lossy escape bin only.
TEST(BlockModelEmulation, SingleValueAndOnlyEscapes) {
  for (bool lossless : {false, true})
    for (uint32_t bin : {0u, 7u, uint32_t(detail::kQLimit), 255u, detail::kEscBin}) {
      const uint32_t bins = lossless ? detail::kLosslessBins : detail::kLossyBins;
      if (bin >= bins) continue;
      const uint32_t C = 9, slots = 2;
      std::vector<uint32_t> h(uint64_t(slots) * bins * C, 0);
      for (uint32_t s = 0; s < slots; ++s)
        for (uint32_t c = 0; c < C; ++c) h[(uint64_t(s) * bins + bin) * C + c] = 30;
      SCOPED_TRACE("bin " + std::to_string(bin));
      expect_same_model(C, slots, lossless, 4, h, std::vector<uint64_t>(C, 0));
    }
  // A lossy delta slot that counts nothing (no delta tokens).
  const uint32_t C = 5, bins = detail::kLossyBins;
  std::vector<uint32_t> h(2ull * bins * C, 0);
  for (uint32_t c = 0; c < C; ++c) h[uint64_t(detail::kQLimit + c) * C + c] = 10;
  expect_same_model(C, 2, false, 3, h, {1, 2, 3, 4, 5});
}

// Tables whose first rounding is far from 4096, so the correction takes many one-unit steps:
// 255 lossy values and 256 lossless bytes with one dominant count and many small ones
// (removing), and 250 equal counts each rounded down by 0.384 (adding 96 units, every choice a
// tie: to the lowest symbols); plus lossy counts spread over more than 255 bins (the sliding
// window, with equal runs).
TEST(BlockModelEmulation, ManyCorrectionSteps) {
  auto initial_error = [](const std::vector<uint64_t>& counts) {
    uint64_t total = 0;
    int64_t sum = 0;
    for (uint64_t c : counts) total += c;
    for (uint64_t c : counts) sum += detail::initial_freq(c, total);
    return sum - int64_t(detail::kRansM);
  };
  for (bool lossless : {false, true}) {
    const uint32_t bins = lossless ? detail::kLosslessBins : detail::kLossyBins, C = 2;
    const uint32_t first = lossless ? 0 : detail::kQLimit - 127, n = lossless ? 256 : 255;
    std::vector<uint32_t> removing(uint64_t(bins) * C, 0), adding(uint64_t(bins) * C, 0);
    std::vector<uint64_t> counts_removing, counts_adding;
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t rm = i == n / 3 ? 1000000 : 1 + i * 7 % 40, add = i < 250 ? 3 : 0;
      removing[uint64_t(first + i) * C] = removing[uint64_t(first + i) * C + 1] = rm;
      adding[uint64_t(first + i) * C] = adding[uint64_t(first + i) * C + 1] = add;
      counts_removing.push_back(2 * rm);
      counts_adding.push_back(2 * add);
    }
    SCOPED_TRACE(lossless ? "lossless" : "lossy");
    EXPECT_GE(initial_error(counts_removing), 200);
    EXPECT_EQ(initial_error(counts_adding), -96);
    expect_same_model(C, 1, lossless, 1, removing, {0, 0});
    expect_same_model(C, 1, lossless, 1, adding, {0, 0});
  }
  // More than 255 lossy bins seen: the densest 255-wide window, the first of equal ones.
  for (uint32_t spread : {300u, 509u}) {
    const uint32_t C = 3, bins = detail::kLossyBins;
    std::vector<uint32_t> h(uint64_t(bins) * C, 0);
    for (uint32_t b = 0; b < spread; ++b)
      for (uint32_t c = 0; c < C; ++c) h[uint64_t(b) * C + c] = 1 + (b % 7 == c);
    expect_same_model(C, 1, false, 2, h, {3, 1, 2});
  }
}

#if defined(KVCODEC_HAS_CUDA)
// ---- the real kernels ------------------------------------------------------------------------

// Encodes the context held by `d` (uploaded to the device) on the GPU.
std::vector<uint8_t> gpu_encode(Dest& d, const EncodeOptions& o) {
  DeviceDest dd(d);
  const size_t cap = max_encoded_size(d.shape, d.dtype, o);
  uint8_t* dst = dev_alloc<uint8_t>(cap);
  auto n = cuda::encode_frame(dd.view(), o, dst, cap, nullptr);
  EXPECT_TRUE(n.ok()) << n.status().to_string();
  std::vector<uint8_t> frame(n.ok() ? *n : 0);
  EXPECT_EQ(cudaMemcpy(frame.data(), dst, frame.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(dst);
  return frame;
}

TEST(CudaEncode, MatchesCpuEncoderByteForByte) {
  KVCODEC_REQUIRE_GPU();
  uint64_t seed = 300;
  size_t i = 0;
  for (const Case& c : cases()) {
    SCOPED_TRACE(describe(c));
    KVCache kv = random_cache(c.shape, c.dtype, seed++);
    const auto ref = encode(kv.view(), c.options);
    Dest d(c.shape, c.dtype, kAllLayouts[i++ % std::size(kAllLayouts)]);
    d.scatter(kv.data);
    EXPECT_EQ(frame_difference(gpu_encode(d, c.options), ref), "");
  }
}

TEST(CudaEncode, EverySourceLayout) {
  KVCODEC_REQUIRE_GPU();
  const Case c{{3, 50, 2, 8}, DType::kBF16, options(5, 16, 2)};
  KVCache kv = random_cache(c.shape, c.dtype, 9);
  const auto ref = encode(kv.view(), c.options);
  for (Layout l : kAllLayouts) {
    SCOPED_TRACE(int(l));
    Dest d(c.shape, c.dtype, l);
    d.scatter(kv.data);
    EXPECT_EQ(frame_difference(gpu_encode(d, c.options), ref), "");
  }
}

TEST(CudaEncode, SyntheticAndRealCaches) {
  KVCODEC_REQUIRE_GPU();
  for (KVCache& kv : synthetic_and_real_caches())
    for (int level = 0; level <= kMaxLevel; ++level)
      for (uint32_t gt : {1u, 4u}) {
        if (level == 0 && gt > 1) continue;
        SCOPED_TRACE(std::string(dtype_name(kv.dtype)) + " L" + std::to_string(kv.shape.layers) + " level " +
                     std::to_string(level) + " group " + std::to_string(gt));
        EncodeOptions o = options(level, 256, gt);
        o.threads = 0;
        Dest d(kv.shape, kv.dtype, level % 2 ? Layout::kPagedHND : Layout::kLMCache);
        d.scatter(kv.data);
        EXPECT_EQ(frame_difference(gpu_encode(d, o), encode(kv.view(), o)), "");
      }
}

// The model builder's edge cases (see WarpEncodeEmulation.ModelEdgeCases) on the real kernels:
// every table group count with its shared-memory size, up to 16 groups x 4 byte planes (f32
// lossless: 128 KiB of group sums per block).
TEST(CudaEncode, ModelEdgeCases) {
  KVCODEC_REQUIRE_GPU();
  size_t i = 0;
  for (EdgeCase& e : edge_cases()) {
    SCOPED_TRACE(e.name);
    Dest d(e.kv.shape, e.kv.dtype, kAllLayouts[i++ % std::size(kAllLayouts)]);
    d.scatter(e.kv.data);
    EXPECT_EQ(frame_difference(gpu_encode(d, e.options), encode(e.kv.view(), e.options)), "");
  }
}

// One Encoder for several contexts, GPU encode -> GPU decode, argument and capacity errors as
// values.
TEST(CudaEncode, EncoderReuseRoundTripAndErrors) {
  KVCODEC_REQUIRE_GPU();
  const KVShape s{4, 200, 2, 64};
  const EncodeOptions o = options(3, 32, 2);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  const size_t ws_bytes = *cuda::Encoder::workspace_size(s, DType::kF16, o);
  uint8_t* ws = dev_alloc<uint8_t>(ws_bytes);
  auto enc = cuda::Encoder::create(s, DType::kF16, o, ws, ws_bytes, stream);
  ASSERT_TRUE(enc.ok()) << enc.status().to_string();
  const size_t cap = max_encoded_size(s, DType::kF16, o);
  uint8_t* dst = dev_alloc<uint8_t>(cap);

  for (uint64_t seed : {31u, 32u}) {
    KVCache kv = random_cache(s, DType::kF16, seed);
    const auto ref = encode(kv.view(), o);
    Dest d(s, DType::kF16, Layout::kPagedNHD);
    d.scatter(kv.data);
    DeviceDest dd(d);
    ASSERT_TRUE(enc->encode_async(dd.view(), dst, cap, stream).ok());
    auto n = enc->synchronize(stream);
    ASSERT_TRUE(n.ok()) << n.status().to_string();
    std::vector<uint8_t> frame(*n);
    ASSERT_EQ(cudaMemcpy(frame.data(), dst, *n, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(frame_difference(frame, ref), "");
    // The frame in device memory decodes on the device to what the CPU decodes.
    Dest out(s, DType::kF16, Layout::kContiguous);
    DeviceDest dout(out);
    ASSERT_TRUE(cuda::decode_frame(dst, frame, dout.view(), stream).ok());
    EXPECT_EQ(dout.difference(cpu_decode(ref, s, DType::kF16)), "");

    // Too small for the frame: reported at synchronize, the encoder stays usable.
    ASSERT_TRUE(enc->encode_async(dd.view(), dst, *n - 1, stream).ok());
    EXPECT_EQ(enc->synchronize(stream).status().code(), StatusCode::kBufferTooSmall);
    // Too small for the header and chunk index: reported at once.
    EXPECT_EQ(enc->encode_async(dd.view(), dst, 100, stream).code(), StatusCode::kBufferTooSmall);
    EXPECT_EQ(enc->encode_async(dd.view(), nullptr, cap, stream).code(), StatusCode::kInvalidArgument);
  }
  // Mismatching views are rejected before anything runs; a bad block table at synchronize.
  KVCache other = random_cache({4, 200, 2, 32}, DType::kF16, 1);
  Dest wrong(other.shape, DType::kF16, Layout::kContiguous);
  DeviceDest dwrong(wrong);
  EXPECT_EQ(enc->encode_async(dwrong.view(), dst, cap, stream).code(), StatusCode::kInvalidArgument);
  Dest bad(s, DType::kF16, Layout::kPagedNHD);
  bad.block_table[2] = -1;
  DeviceDest dbad(bad);
  ASSERT_TRUE(enc->encode_async(dbad.view(), dst, cap, stream).ok());
  EXPECT_EQ(enc->synchronize(stream).status().code(), StatusCode::kInvalidArgument);
  cudaFree(dst);
  cudaFree(ws);
  cudaStreamDestroy(stream);
}
#endif

}  // namespace
}  // namespace kvcodec
