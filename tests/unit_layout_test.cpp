// Chunk bodies whose checksums are valid but whose unit directory or unit layout is not
// (common/unit.hpp: the one parser of both, used by the CPU decoder, analyze_frame and the warp
// decoder). Each crafted frame passes verify_frame, so only the structural checks can catch it:
// decode_into, decode_chunk_into, analyze_frame (`kvcodec inspect --entropy`) and the warp
// decoder must all return an error -- never crash, never report garbage. Regression test of
// issue 11 item 2: analyze_frame trusted the unit sizes (SIGSEGV in LaneReader::open, or
// "4294967295 escapes" and exit 0).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/bytes.hpp"
#include "common/checksum.hpp"
#include "common/frame.hpp"
#include "common/unit.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "warp_emulation.hpp"

namespace kvcodec {
namespace {

struct Frame {
  std::vector<uint8_t> bytes;
  FrameInfo info;
};

Frame encode_frame(int level, DType dtype) {
  const KVShape shape{2, 24, 2, 8};
  auto kv = KVCache::allocate(dtype, shape);
  EXPECT_TRUE(kv.ok());
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const KVView v = kv->view();
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t t = 0; t < shape.tokens; ++t)
        for (uint32_t h = 0; h < shape.kv_heads; ++h)
          for (uint32_t d = 0; d < shape.head_dim; ++d) {
            const float x = (t % 11 == 3 && d == 2) ? 5000.0f : 0.5f * float(d % 3) + 0.1f * n(rng);  // with escapes
            if (dtype == DType::kF32) *static_cast<float*>(v.element(l, k, t, h, d)) = x;
            else EXPECT_TRUE(false) << "f32 only";
          }
  EncodeOptions o;
  o.level = level;
  o.chunk_tokens = 16;
  Frame f;
  f.bytes.resize(max_encoded_size(shape, dtype, o));
  auto size = encode_into(kv->view(), o, f.bytes);
  EXPECT_TRUE(size.ok()) << size.status().to_string();
  f.bytes.resize(size.ok() ? *size : 0);
  auto info = read_frame_info(f.bytes);
  EXPECT_TRUE(info.ok());
  if (info.ok()) f.info = *info;
  return f;
}

// Recomputes every chunk checksum in the index and the head checksum after an edit of a body.
void reseal(Frame& f) {
  uint8_t* p = f.bytes.data();
  const FrameInfo& i = f.info;
  for (size_t k = 0; k < i.chunks.size(); ++k) {
    const ChunkInfo& c = i.chunks[k];
    const uint64_t sum = detail::frame_checksum(i.format_version, p + c.offset, c.size);
    detail::store_le64(p + kHeaderBytes + i.model_bytes + k * kIndexEntryBytes + 16, sum);
  }
  detail::store_le64(p + detail::kOffHeadChecksum, detail::head_checksum(i.format_version, p, i.head_bytes));
}

// Unit u's layout in chunk 0 of an intact frame.
detail::UnitLayout layout_of(const Frame& f, uint32_t u, uint64_t* unit_offset) {
  const ChunkInfo& c = f.info.chunks[0];
  detail::HostWarp w;
  uint64_t off = 0, size = 0;
  EXPECT_EQ(detail::locate_unit(w, f.bytes.data() + c.offset, c.size, 2 * f.info.shape.layers, u, &off, &size), 0u);
  detail::UnitLayout ul;
  const bool lossless = f.info.level == 0;
  const uint32_t es = uint32_t(dtype_size(f.info.dtype));
  EXPECT_EQ(detail::parse_unit(f.bytes.data() + c.offset + off, size, lossless ? es : 1, lossless, es, &ul), 0u);
  *unit_offset = c.offset + off;
  return ul;
}

struct Mutation {
  const char* name;
  std::function<void(Frame&)> apply;
};

// Directory entry u of chunk 0.
uint8_t* dir_entry(Frame& f, uint32_t u) { return f.bytes.data() + f.info.chunks[0].offset + 4 * u; }
void add_to_entry(Frame& f, uint32_t u, int64_t delta) {
  detail::store_le32(dir_entry(f, u), uint32_t(int64_t(detail::load_le32(dir_entry(f, u))) + delta));
}

std::vector<Mutation> mutations(bool lossy) {
  std::vector<Mutation> m = {
      {"unit size beyond the body", [](Frame& f) { detail::store_le32(dir_entry(f, 0), 0x7fffffffu); }},
      {"unit 0 four bytes short, unit 1 four long", [](Frame& f) { add_to_entry(f, 0, -4); add_to_entry(f, 1, 4); }},
      {"unit 0 four bytes long, unit 1 four short", [](Frame& f) { add_to_entry(f, 0, 4); add_to_entry(f, 1, -4); }},
      {"unit 0 empty, unit 1 holding both", [](Frame& f) {
         const uint32_t s0 = detail::load_le32(dir_entry(f, 0));
         detail::store_le32(dir_entry(f, 0), 0);
         add_to_entry(f, 1, s0);
       }},
      {"word count beyond the unit", [](Frame& f) {
         uint64_t at = 0;
         const detail::UnitLayout ul = layout_of(f, 0, &at);
         detail::store_le32(f.bytes.data() + at + ul.stream[0], ul.words[0] + 1000);
       }},
  };
  if (lossy) {
    m.push_back({"escape count 2^32 - 1", [](Frame& f) {
                   uint64_t at = 0;
                   const detail::UnitLayout ul = layout_of(f, 0, &at);
                   detail::store_le32(f.bytes.data() + at + ul.streams_end, 0xffffffffu);
                 }});
    m.push_back({"escape count one too many", [](Frame& f) {
                   uint64_t at = 0;
                   const detail::UnitLayout ul = layout_of(f, 0, &at);
                   detail::store_le32(f.bytes.data() + at + ul.streams_end, ul.n_esc + 1);
                 }});
  }
  return m;
}

int run_cli_inspect_entropy(const std::string& path) {
  const std::string cmd = std::string("'") + KVCODEC_CLI_PATH + "' inspect --entropy '" + path + "' >/dev/null 2>&1";
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void check_rejected(int level) {
  const Frame good = encode_frame(level, DType::kF32);
  ASSERT_FALSE(good.bytes.empty());
  ASSERT_GE(good.info.chunks.size(), 2u);
  {
    auto stats = analyze_frame(good.bytes);
    ASSERT_TRUE(stats.ok()) << stats.status().to_string();
    if (level > 0) EXPECT_GT(stats->escapes, 0u) << "the input should produce escapes";
  }
  const auto dir = std::filesystem::temp_directory_path() / ("kvcodec_unit_layout_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  for (const Mutation& m : mutations(level > 0)) {
    SCOPED_TRACE(m.name);
    Frame bad = good;
    m.apply(bad);
    reseal(bad);
    ASSERT_TRUE(verify_frame(bad.bytes).ok()) << "the crafted frame must have valid checksums";
    auto out = KVCache::allocate(good.info.dtype, good.info.shape);
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(decode_into(bad.bytes, out->view()).code(), StatusCode::kCorruptData);
    const ChunkInfo& c = good.info.chunks[0];
    const std::span<const uint8_t> bytes(bad.bytes);
    EXPECT_EQ(decode_chunk_into(bytes.first(good.info.head_bytes), 0, bytes.subspan(c.offset, c.size), out->view())
                  .code(),
              StatusCode::kCorruptData);
    auto stats = analyze_frame(bad.bytes);
    EXPECT_EQ(stats.status().code(), StatusCode::kCorruptData)
        << (stats.ok() ? "analyze_frame accepted it: " + std::to_string(stats->escapes) + " escapes" : "");
    EXPECT_FALSE(test::emulate_decode(bad.bytes, out->view()).ok());
    if (!std::string(KVCODEC_CLI_PATH).empty()) {
      const std::string path = (dir / "bad.kvc").string();
      ASSERT_TRUE(write_file(path, bad.bytes.data(), bad.bytes.size()).ok());
      EXPECT_EQ(run_cli_inspect_entropy(path), 1);
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(UnitLayout, LossyCraftedUnitsAreRejectedEverywhere) { check_rejected(1); }
TEST(UnitLayout, LosslessCraftedUnitsAreRejectedEverywhere) { check_rejected(0); }

}  // namespace
}  // namespace kvcodec
