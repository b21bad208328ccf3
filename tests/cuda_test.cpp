// The CUDA backend: backend selection in every build; the warp decoder (decode/warp_decode.hpp)
// run on the host by warp emulation against the CPU decoder in every build; and, in builds
// with -DKVCODEC_CUDA=ON on a machine with a GPU, the real kernels against the CPU decoder
// (skipped without a device). Outputs are compared bit for bit over dtypes, levels, group sizes,
// shapes with fewer and more channels than lanes, every destination layout, random, synthetic
// and real caches, and corrupt frames.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/backend.hpp"
#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "decode/packed_model.hpp"
#include "decode/warp_decode.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/model.hpp"
#include "kvcodec/synthetic.hpp"
#include "cuda_test_util.hpp"
#include "warp_emulation.hpp"

#if defined(KVCODEC_HAS_CUDA)
#include <cuda_runtime_api.h>

#include "kvcodec/cuda.hpp"
#endif

namespace kvcodec {
namespace {

using namespace test;

// ---- warp emulation --------------------------------------------------------------------------

struct Case {
  KVShape shape;
  DType dtype;
  int level;
  uint32_t chunk_tokens, group_tokens;
};

std::string describe(const Case& c) {
  return std::string(dtype_name(c.dtype)) + " L" + std::to_string(c.shape.layers) + " T" +
         std::to_string(c.shape.tokens) + " C" + std::to_string(c.shape.channels()) + " level " +
         std::to_string(c.level) + " chunk " + std::to_string(c.chunk_tokens) + " group " +
         std::to_string(c.group_tokens);
}

std::vector<Case> cases() {
  std::vector<Case> out;
  // C = 6 (< 32 lanes: several tokens per warp step, in-step anchors), 96, and 256.
  const KVShape shapes[] = {{2, 45, 1, 6}, {2, 70, 3, 32}, {1, 33, 2, 128}};
  for (const KVShape& s : shapes)
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3})
      for (int level : {0, 1, 4, 9})
        for (uint32_t gt : {1u, 3u}) {
          if (level == 0 && gt > 1) continue;  // group_tokens does not apply to lossless
          out.push_back({s, dt, level, 16, gt});
        }
  out.push_back({{2, 300, 2, 16}, DType::kF16, 4, 256, 1});
  out.push_back({{2, 300, 2, 16}, DType::kF16, 4, 256, 4});
  return out;
}

EncodeOptions options_of(const Case& c) {
  EncodeOptions o;
  o.level = c.level;
  o.chunk_tokens = c.chunk_tokens;
  o.group_tokens = c.group_tokens;
  return o;
}

TEST(Backend, Selection) {
  EXPECT_EQ(*parse_backend("cpu"), Backend::kCpu);
  EXPECT_EQ(*parse_backend("cuda"), Backend::kCuda);
  EXPECT_EQ(parse_backend("tpu").status().code(), StatusCode::kInvalidArgument);
  EXPECT_STREQ(backend_name(Backend::kCuda), "cuda");
  EXPECT_TRUE(backend_built(Backend::kCpu));
  EXPECT_TRUE(backend_status(Backend::kCpu).ok());
#if defined(KVCODEC_HAS_CUDA)
  EXPECT_TRUE(backend_built(Backend::kCuda));
  int n = 0;
  const bool device = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  // Without a device the backend is built but unavailable: an error value, not a crash.
  EXPECT_EQ(backend_status(Backend::kCuda).ok(), device);
  EXPECT_EQ(cuda::device_status().ok(), device);
  if (!device) {
    EXPECT_EQ(backend_status(Backend::kCuda).code(), StatusCode::kUnavailable);
    KVCache kv = random_cache({1, 8, 1, 8}, DType::kF16, 1);
    const auto frame = encode(kv.view(), {});
    int dummy = 0;
    EXPECT_EQ(cuda::Decoder::create(frame, &dummy, 1 << 20, 1, nullptr).status().code(), StatusCode::kUnavailable);
  }
#else
  EXPECT_FALSE(backend_built(Backend::kCuda));
  EXPECT_EQ(backend_status(Backend::kCuda).code(), StatusCode::kUnavailable);
#endif
}

TEST(WarpEmulation, MatchesCpuDecoderBitForBit) {
  uint64_t seed = 100;
  for (const Case& c : cases()) {
    SCOPED_TRACE(describe(c));
    KVCache kv = random_cache(c.shape, c.dtype, seed++);
    const auto frame = encode(kv.view(), options_of(c));
    const auto ref = cpu_decode(frame, c.shape, c.dtype);
    ASSERT_FALSE(ref.empty());
    Dest d(c.shape, c.dtype, Layout::kContiguous);
    ASSERT_TRUE(emulate_decode(frame, d.host_view()).ok());
    ASSERT_EQ(d.difference(ref), "");
  }
}

TEST(WarpEmulation, EveryLayout) {
  for (const Case& c : {Case{{3, 50, 2, 8}, DType::kBF16, 5, 16, 2}, Case{{2, 40, 2, 8}, DType::kF16, 0, 16, 1}}) {
    SCOPED_TRACE(describe(c));
    KVCache kv = random_cache(c.shape, c.dtype, 9);
    const auto frame = encode(kv.view(), options_of(c));
    const auto ref = cpu_decode(frame, c.shape, c.dtype);
    for (Layout l : kAllLayouts) {
      SCOPED_TRACE(int(l));
      Dest d(c.shape, c.dtype, l);
      ASSERT_TRUE(emulate_decode(frame, d.host_view()).ok());
      EXPECT_EQ(d.difference(ref), "");
    }
  }
}

// Frames with stored units (docs/format.md 4.4): the warp decoder copies them like the CPU.
TEST(WarpEmulation, StoredUnits) {
  for (const auto& [dt, level] : kExpandingCases) {
      const Case c{{2, 80, 2, 16}, dt, level, 16, 1};
      SCOPED_TRACE(describe(c));
      KVCache kv = skewed_cache(c.shape, dt, 64, level == 0, 5);
      const auto frame = encode(kv.view(), options_of(c));
      ASSERT_EQ(read_frame_info(frame)->format_version, kStoredUnitsFormatVersion);
      const auto ref = cpu_decode(frame, c.shape, c.dtype);
      for (Layout l : {Layout::kContiguous, Layout::kPagedHND, Layout::kPagedSlots}) {
        Dest d(c.shape, c.dtype, l);
        ASSERT_TRUE(emulate_decode(frame, d.host_view()).ok());
        EXPECT_EQ(d.difference(ref), "");
      }
    }
}

TEST(WarpEmulation, SyntheticLlama3Shape) {
  auto kv = make_synthetic("llama3-8b", 40, DType::kF16, 5);
  ASSERT_TRUE(kv.ok()) << kv.status().to_string();
  for (int level : {0, 4}) {
    EncodeOptions o;
    o.level = level;
    o.chunk_tokens = 16;
    o.threads = 0;
    const auto frame = encode(kv->view(), o);
    const auto ref = cpu_decode(frame, kv->shape, kv->dtype);
    Dest d(kv->shape, kv->dtype, Layout::kLMCache);
    ASSERT_TRUE(emulate_decode(frame, d.host_view()).ok());
    EXPECT_EQ(d.difference(ref), "") << "level " << level;
  }
}

TEST(WarpEmulation, RealCache) {
  KVCODEC_REQUIRE_DATA("models/kvc-bytes-a.bin");
  KVCODEC_REQUIRE_DATA("text/techdocs_valid.txt");
  for (DType dt : {DType::kF16, DType::kBF16}) {
    auto kv = real_cache(dt, 160);
    ASSERT_TRUE(kv.ok()) << kv.status().to_string();
    for (int level : {0, 2, 6, 9})
      for (uint32_t gt : {1u, 4u}) {
        if (level == 0 && gt > 1) continue;
        SCOPED_TRACE(std::string(dtype_name(dt)) + " level " + std::to_string(level) + " group " + std::to_string(gt));
        EncodeOptions o;
        o.level = level;
        o.chunk_tokens = 64;
        o.group_tokens = gt;
        const auto frame = encode(kv->view(), o);
        const auto ref = cpu_decode(frame, kv->shape, dt);
        Dest d(kv->shape, dt, Layout::kPagedNHD);
        ASSERT_TRUE(emulate_decode(frame, d.host_view()).ok());
        EXPECT_EQ(d.difference(ref), "");
      }
  }
}

// Corrupting chunk bodies: the warp decoder fails exactly when the CPU decoder (checksums off)
// fails, and otherwise produces the CPU's output -- it never reads or writes out of bounds.
TEST(WarpEmulation, CorruptBodiesBehaveLikeTheCpuDecoder) {
  std::mt19937_64 rng(3);
  for (const Case& c : {Case{{2, 40, 2, 16}, DType::kF16, 0, 16, 1}, Case{{2, 40, 2, 16}, DType::kF16, 7, 16, 2},
                        Case{{1, 40, 1, 8}, DType::kF32, 3, 16, 1}}) {
    SCOPED_TRACE(describe(c));
    KVCache kv = random_cache(c.shape, c.dtype, 11);
    const auto frame = encode(kv.view(), options_of(c));
    const uint64_t head = read_frame_info(frame)->head_bytes;
    int failures = 0;
    for (int trial = 0; trial < 300; ++trial) {
      auto bad = frame;
      const int flips = 1 + int(rng() % 3);
      for (int i = 0; i < flips; ++i) bad[head + rng() % (bad.size() - head)] ^= uint8_t(1 + rng() % 255);
      const auto ref = cpu_decode(bad, c.shape, c.dtype, /*verify=*/false);
      Dest d(c.shape, c.dtype, Layout::kContiguous);
      const Status st = emulate_decode(bad, d.host_view());
      ASSERT_EQ(st.ok(), !ref.empty()) << "trial " << trial << ": " << st.to_string();
      if (st.ok()) ASSERT_EQ(d.difference(ref), "");
      else ++failures;
    }
    EXPECT_GT(failures, 250);  // nearly every corruption is detected without the checksum
  }
}

#if defined(KVCODEC_HAS_CUDA)
// ---- the real kernels ------------------------------------------------------------------------

TEST(CudaDecode, MatchesCpuDecoderBitForBit) {
  KVCODEC_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const Case& c : cases()) {
    SCOPED_TRACE(describe(c));
    KVCache kv = random_cache(c.shape, c.dtype, seed++);
    const auto frame = encode(kv.view(), options_of(c));
    const auto ref = cpu_decode(frame, c.shape, c.dtype);
    for (Layout l : kAllLayouts) {
      SCOPED_TRACE(int(l));
      EXPECT_EQ(gpu_decode_difference(frame, c.shape, c.dtype, l, ref), "");
    }
  }
}

TEST(CudaDecode, SyntheticAndRealCaches) {
  KVCODEC_REQUIRE_GPU();
  for (KVCache& kv : synthetic_and_real_caches())
    for (int level = 0; level <= kMaxLevel; ++level)
      for (uint32_t gt : {1u, 4u}) {
        if (level == 0 && gt > 1) continue;
        SCOPED_TRACE(std::string(dtype_name(kv.dtype)) + " L" + std::to_string(kv.shape.layers) + " level " +
                     std::to_string(level) + " group " + std::to_string(gt));
        EncodeOptions o;
        o.level = level;
        o.group_tokens = gt;
        o.threads = 0;
        const auto frame = encode(kv.view(), o);
        const auto ref = cpu_decode(frame, kv.shape, kv.dtype);
        const Layout l = level % 2 ? Layout::kPagedHND : Layout::kLMCache;
        EXPECT_EQ(gpu_decode_difference(frame, kv.shape, kv.dtype, l, ref), "");
      }
}

// The streaming API: chunks in separate buffers, in any order, batches and layer ranges, one
// workspace and stream, errors only at synchronize.
TEST(CudaDecode, BatchesLayerRangesAndChunkOrder) {
  KVCODEC_REQUIRE_GPU();
  const KVShape s{4, 200, 2, 64};
  KVCache kv = random_cache(s, DType::kF16, 21);
  EncodeOptions o;
  o.level = 3;
  o.chunk_tokens = 32;
  o.group_tokens = 2;
  const auto frame = encode(kv.view(), o);
  const auto ref = cpu_decode(frame, s, DType::kF16);
  const FrameInfo info = *read_frame_info(frame);
  const std::span<const uint8_t> head(frame.data(), info.head_bytes);
  const uint32_t n = uint32_t(info.chunks.size());
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  const size_t bytes = *cuda::Decoder::workspace_size(head, 3);
  uint8_t* ws = dev_alloc<uint8_t>(bytes);
  auto dec = cuda::Decoder::create(head, ws, bytes, 3, stream);
  ASSERT_TRUE(dec.ok()) << dec.status().to_string();
  // Each chunk in its own buffer, checked on the host first.
  std::vector<DeviceFrame> bodies;
  for (uint32_t k = 0; k < n; ++k) {
    std::vector<uint8_t> body(frame.begin() + info.chunks[k].offset,
                              frame.begin() + info.chunks[k].offset + info.chunks[k].size);
    ASSERT_TRUE(dec->verify_chunk(k, body).ok());
    bodies.emplace_back(body);
  }
  Dest d(s, DType::kF16, Layout::kContiguous);
  DeviceDest dd(d);
  // Layers [0, 2) then [2, 4), chunks in reverse, three at a time.
  for (uint32_t lb : {0u, 2u})
    for (uint32_t k = n; k > 0;) {
      std::vector<cuda::DeviceChunk> batch;
      for (; k > 0 && batch.size() < 3; --k) batch.push_back({k - 1, bodies[k - 1].p});
      ASSERT_TRUE(dec->decode_async(batch, dd.view(), stream, lb, lb + 2).ok());
    }
  ASSERT_TRUE(dec->synchronize(stream).ok());
  EXPECT_EQ(dd.difference(ref), "");

  // Argument errors are reported before anything is enqueued.
  std::vector<cuda::DeviceChunk> four(4, {0, bodies[0].p});
  EXPECT_EQ(dec->decode_async(four, dd.view(), stream).code(), StatusCode::kInvalidArgument);
  const cuda::DeviceChunk beyond{n, bodies[0].p};
  EXPECT_EQ(dec->decode_async({&beyond, 1}, dd.view(), stream).code(), StatusCode::kOutOfRange);
  KVView wrong = dd.view();
  wrong.dtype = DType::kBF16;
  EXPECT_EQ(dec->decode_async({&beyond, 0}, wrong, stream).code(), StatusCode::kInvalidArgument);
  std::vector<uint8_t> bad_body(info.chunks[0].size, 0);
  EXPECT_EQ(dec->verify_chunk(0, bad_body).code(), StatusCode::kChecksumMismatch);

  // A corrupt chunk on the device, batched with a good one: the device checksum names it at
  // synchronize, and nothing of it is written (the good chunk is decoded).
  std::vector<uint8_t> corrupt(frame.begin() + info.chunks[1].offset,
                               frame.begin() + info.chunks[1].offset + info.chunks[1].size);
  for (size_t i = 4 * 2 * s.layers; i < corrupt.size(); i += 7) corrupt[i] ^= 0x5A;
  DeviceFrame bad(corrupt);
  Dest fresh(s, DType::kF16, Layout::kContiguous);
  DeviceDest fd(fresh);
  const std::vector<uint8_t> untouched = fd.gather();
  const cuda::DeviceChunk bad_and_good[2] = {{1, bad.p}, {0, bodies[0].p}};
  ASSERT_TRUE(dec->decode_async(bad_and_good, fd.view(), stream).ok());
  Status st = dec->synchronize(stream);
  EXPECT_EQ(st.code(), StatusCode::kChecksumMismatch) << st.to_string();
  EXPECT_NE(std::string(st.message()).find("chunk 1"), std::string::npos) << st.to_string();
  const std::vector<uint8_t> after = fd.gather();
  const size_t row = size_t(s.channels()) * 2;  // bytes of one token of one (layer, K/V)
  for (uint32_t u = 0; u < 2 * s.layers; ++u)
    for (uint32_t t = 0; t < s.tokens; ++t) {
      const size_t at = (size_t(u) * s.tokens + t) * row;
      const bool chunk1 = t >= info.chunks[1].token_begin && t < info.chunks[1].token_begin + info.chunks[1].tokens;
      const bool chunk0 = t < info.chunks[0].tokens;
      if (chunk1) ASSERT_TRUE(std::equal(after.begin() + at, after.begin() + at + row, untouched.begin() + at));
      if (chunk0) ASSERT_TRUE(std::equal(after.begin() + at, after.begin() + at + row, ref.begin() + at));
    }
  // Without device checksums the structural checks find it: kCorruptData naming it.
  auto unchecked = cuda::Decoder::create(head, ws, bytes, 3, stream, /*verify_checksums=*/false);
  ASSERT_TRUE(unchecked.ok()) << unchecked.status().to_string();
  const cuda::DeviceChunk bad_chunk{1, bad.p};
  ASSERT_TRUE(unchecked->decode_async({&bad_chunk, 1}, dd.view(), stream).ok());
  st = unchecked->synchronize(stream);
  EXPECT_EQ(st.code(), StatusCode::kCorruptData) << st.to_string();
  EXPECT_NE(std::string(st.message()).find("chunk 1"), std::string::npos) << st.to_string();
  // The decoder recovers: the next call is clean.
  const cuda::DeviceChunk good{1, bodies[1].p};
  ASSERT_TRUE(unchecked->decode_async({&good, 1}, dd.view(), stream).ok());
  EXPECT_TRUE(unchecked->synchronize(stream).ok());
  cudaFree(ws);
  cudaStreamDestroy(stream);
}

// A batch of 300 chunks takes several launches (128 chunks each): all decoded, and a corrupt
// chunk in a later launch is still named.
TEST(CudaDecode, BatchesLargerThanOneLaunch) {
  KVCODEC_REQUIRE_GPU();
  const KVShape s{2, 600, 1, 8};
  KVCache kv = random_cache(s, DType::kF16, 8);
  EncodeOptions o;
  o.level = 5;
  o.chunk_tokens = 2;
  const auto frame = encode(kv.view(), o);
  const auto ref = cpu_decode(frame, s, DType::kF16);
  const FrameInfo info = *read_frame_info(frame);
  const uint32_t n = uint32_t(info.chunks.size());
  ASSERT_EQ(n, 300u);
  EXPECT_EQ(gpu_decode_difference(frame, s, DType::kF16, Layout::kPagedHND, ref), "");

  auto bad = frame;
  bad[info.chunks[250].offset + info.chunks[250].size - 1] ^= 0x40;
  Dest d(s, DType::kF16, Layout::kPagedHND);
  DeviceDest dd(d);
  DeviceFrame dbad(bad);
  const Status st = cuda::decode_frame(dbad.p, bad, dd.view(), nullptr);
  EXPECT_EQ(st.code(), StatusCode::kChecksumMismatch) << st.to_string();
  EXPECT_NE(std::string(st.message()).find("chunk 250"), std::string::npos) << st.to_string();
}

// Same contract as the emulation test, on the device (checksums off); with device checksums,
// every corruption is a checksum mismatch.
TEST(CudaDecode, CorruptBodiesBehaveLikeTheCpuDecoder) {
  KVCODEC_REQUIRE_GPU();
  std::mt19937_64 rng(5);
  const Case c{{2, 40, 2, 16}, DType::kF16, 6, 16, 2};
  KVCache kv = random_cache(c.shape, c.dtype, 13);
  const auto frame = encode(kv.view(), options_of(c));
  const uint64_t head = read_frame_info(frame)->head_bytes;
  for (int trial = 0; trial < 100; ++trial) {
    auto bad = frame;
    bad[head + rng() % (bad.size() - head)] ^= uint8_t(1 + rng() % 255);
    const auto ref = cpu_decode(bad, c.shape, c.dtype, false);
    Dest d(c.shape, c.dtype, Layout::kPagedNHD);
    DeviceDest dd(d);
    DeviceFrame df(bad);
    const Status st = cuda::decode_frame(df.p, bad, dd.view(), nullptr, /*verify_checksums=*/false);
    ASSERT_EQ(st.ok(), !ref.empty()) << st.to_string();
    if (st.ok()) ASSERT_EQ(dd.difference(ref), "");
    else EXPECT_EQ(st.code(), StatusCode::kCorruptData);
    EXPECT_EQ(cuda::decode_frame(df.p, bad, dd.view(), nullptr).code(), StatusCode::kChecksumMismatch);
  }
}

// A paged destination whose block table points outside the cache: an error, no stray writes.
TEST(CudaDecode, BadBlockTableIsAnError) {
  KVCODEC_REQUIRE_GPU();
  const KVShape s{1, 40, 1, 8};
  KVCache kv = random_cache(s, DType::kF16, 2);
  const auto frame = encode(kv.view(), {});
  Dest d(s, DType::kF16, Layout::kPagedNHD);
  d.block_table[1] = int32_t(d.num_blocks) + 5;
  DeviceDest dd(d);
  DeviceFrame df(frame);
  const Status st = cuda::decode_frame(df.p, frame, dd.view(), nullptr);
  EXPECT_EQ(st.code(), StatusCode::kCorruptData) << st.to_string();
}
#endif

}  // namespace
}  // namespace kvcodec
