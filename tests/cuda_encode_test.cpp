// The GPU encoder (cuda.hpp, detail/warp_encode.hpp): its per-thread and per-warp code run on
// the host by warp emulation in every build, and the real kernels in builds with
// -DKVCODEC_CUDA=ON on a machine with a GPU (skipped without a device). Frames are compared
// with the CPU encoder's byte for byte over dtypes, all levels, group sizes 1 and > 1, step
// modes, shapes with fewer and more channels than lanes, partial chunks, every source layout,
// random, synthetic and real caches.
#include <gtest/gtest.h>

#include <iterator>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/detail/encode_plan.hpp"
#include "kvcodec/detail/warp_encode.hpp"
#include "kvcodec/synthetic.hpp"

namespace kvcodec {
namespace {

using namespace test;

// ---- warp emulation --------------------------------------------------------------------------

// Encodes `src` with the GPU encoder's code run on the host, in the kernels' order: phase 1 per
// (unit, channel), the host step, warp_encode_unit by detail::HostWarp per (chunk, unit), and
// the frame assembly.
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

  detail::EncodePlan plan;
  KVCODEC_RETURN_IF_ERROR(detail::build_encode_plan(el, o, hist.data(), feature.data(), grids.data(), plan));

  std::vector<uint16_t> words(el.planes * elements);
  std::vector<uint8_t> escapes(el.lossless ? 0 : el.elem_size * elements);
  std::vector<detail::UnitStage> stages(uint64_t(el.num_chunks) * units);
  const detail::EncodeTables tab{plan.codes.data(), plan.table_base.data(), lane.data()};
  const detail::EncodeStaging stg{words.data(), escapes.data(), stages.data()};
  for (uint32_t k = 0; k < el.num_chunks; ++k)
    for (uint32_t u = 0; u < units; ++u) {
      detail::HostWarp w;
      if (detail::warp_encode_unit(w, el, src, tab, stg, k, u) != detail::kUnitOk) return bad_source;
    }
  std::vector<uint64_t> offset(el.num_chunks);
  std::vector<uint32_t> size(el.num_chunks);
  uint64_t frame_bytes = 0;
  EXPECT_TRUE(detail::assign_chunks(el, stages.data(), plan.head.size(), UINT64_MAX, offset.data(), size.data(),
                                    &frame_bytes));
  std::vector<uint8_t> frame(frame_bytes, 0xEE);  // every byte must be written
  std::copy(plan.head.begin(), plan.head.end(), frame.begin());
  for (uint32_t k = 0; k < el.num_chunks; ++k)
    for (uint32_t u = 0; u < units; ++u) {
      detail::HostWarp w;
      detail::warp_write_unit(w, el, stg, offset.data(), k, u, frame.data());
    }
  const uint64_t max_segments = detail::max_chunk_segments(el);
  std::vector<uint64_t> digests(max_segments * el.num_chunks);
  for (uint32_t k = 0; k < el.num_chunks; ++k)
    for (uint64_t s = 0; s < max_segments; ++s)
      detail::chunk_segment_digest(offset.data(), size.data(), k, s, max_segments, frame.data(), digests.data());
  for (uint32_t k = 0; k < el.num_chunks; ++k)
    detail::finish_chunk(plan.info.model_bytes, offset.data(), size.data(), digests.data(), max_segments, frame_bytes,
                         k, frame.data());
  const uint64_t head_segments = detail::checksum_segments(plan.head.size());
  for (uint64_t s = 0; s < head_segments; ++s)
    detail::head_segment_digest(plan.head.size(), s, frame.data(), digests.data());
  detail::finish_head(plan.head.size(), digests.data(), frame.data());
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
    ASSERT_EQ(*frame, ref);
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
      EXPECT_EQ(*frame, ref);
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
    EXPECT_EQ(*frame, encode(kv->view(), o)) << "level " << level;
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
        EXPECT_EQ(*frame, encode(kv->view(), o));
      }
  }
}

// A paged source whose block table points outside the cache is an error, found without
// reading outside it.
TEST(WarpEncodeEmulation, BadBlockTableIsAnError) {
  const KVShape s{1, 40, 1, 8};
  Dest d(s, DType::kF16, Layout::kPagedNHD);
  d.block_table[1] = int32_t(d.num_blocks) + 5;
  EXPECT_EQ(emulate_encode(d.host_view(), {}).status().code(), StatusCode::kInvalidArgument);
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
    ASSERT_EQ(gpu_encode(d, c.options), ref);
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
    EXPECT_EQ(gpu_encode(d, c.options), ref);
  }
}

TEST(CudaEncode, SyntheticAndRealCaches) {
  KVCODEC_REQUIRE_GPU();
  std::vector<KVCache> caches;
  auto syn = make_synthetic("llama3-8b", 300, DType::kF16, 5);
  ASSERT_TRUE(syn.ok());
  caches.push_back(std::move(*syn));
  if (std::filesystem::exists(test::data_path("models/kvc-bytes-a.bin"))) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
      auto real = real_cache(dt, 512);
      ASSERT_TRUE(real.ok()) << real.status().to_string();
      caches.push_back(std::move(*real));
    }
  }
  for (KVCache& kv : caches)
    for (int level = 0; level <= kMaxLevel; ++level)
      for (uint32_t gt : {1u, 4u}) {
        if (level == 0 && gt > 1) continue;
        SCOPED_TRACE(std::string(dtype_name(kv.dtype)) + " L" + std::to_string(kv.shape.layers) + " level " +
                     std::to_string(level) + " group " + std::to_string(gt));
        EncodeOptions o = options(level, 256, gt);
        o.threads = 0;
        Dest d(kv.shape, kv.dtype, level % 2 ? Layout::kPagedHND : Layout::kLMCache);
        d.scatter(kv.data);
        ASSERT_EQ(gpu_encode(d, o), encode(kv.view(), o));
      }
}

// The two-phase API: one Encoder for several contexts, GPU encode -> GPU decode, argument and
// capacity errors as values.
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
  EXPECT_EQ(enc->encode_async(dst, cap, stream).code(), StatusCode::kInvalidArgument);  // no tables yet
  EXPECT_EQ(enc->build_tables(stream).code(), StatusCode::kInvalidArgument);           // nothing analysed

  for (uint64_t seed : {31u, 32u}) {
    KVCache kv = random_cache(s, DType::kF16, seed);
    const auto ref = encode(kv.view(), o);
    Dest d(s, DType::kF16, Layout::kPagedNHD);
    d.scatter(kv.data);
    DeviceDest dd(d);
    ASSERT_TRUE(enc->analyze_async(dd.view(), stream).ok());
    ASSERT_TRUE(enc->build_tables(stream).ok());
    ASSERT_TRUE(enc->encode_async(dst, cap, stream).ok());
    auto n = enc->synchronize(stream);
    ASSERT_TRUE(n.ok()) << n.status().to_string();
    std::vector<uint8_t> frame(*n);
    ASSERT_EQ(cudaMemcpy(frame.data(), dst, *n, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(frame, ref);
    // The frame in device memory decodes on the device to what the CPU decodes.
    Dest out(s, DType::kF16, Layout::kContiguous);
    DeviceDest dout(out);
    ASSERT_TRUE(cuda::decode_frame(dst, frame, dout.view(), stream).ok());
    EXPECT_EQ(dout.gather(), cpu_decode(ref, s, DType::kF16));

    // Too small for the frame: reported at synchronize, the encoder stays usable.
    ASSERT_TRUE(enc->encode_async(dst, *n - 1, stream).ok());
    EXPECT_EQ(enc->synchronize(stream).status().code(), StatusCode::kBufferTooSmall);
    // Too small for the head: reported at once.
    EXPECT_EQ(enc->encode_async(dst, 100, stream).code(), StatusCode::kBufferTooSmall);
  }
  // Mismatching views are rejected before anything runs; a bad block table at build_tables.
  KVCache other = random_cache({4, 200, 2, 32}, DType::kF16, 1);
  Dest wrong(other.shape, DType::kF16, Layout::kContiguous);
  DeviceDest dwrong(wrong);
  EXPECT_EQ(enc->analyze_async(dwrong.view(), stream).code(), StatusCode::kInvalidArgument);
  Dest bad(s, DType::kF16, Layout::kPagedNHD);
  bad.block_table[2] = -1;
  DeviceDest dbad(bad);
  ASSERT_TRUE(enc->analyze_async(dbad.view(), stream).ok());
  EXPECT_EQ(enc->build_tables(stream).code(), StatusCode::kInvalidArgument);
  cudaFree(dst);
  cudaFree(ws);
  cudaStreamDestroy(stream);
}
#endif

}  // namespace
}  // namespace kvcodec
