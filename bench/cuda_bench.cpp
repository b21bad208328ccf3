// GPU microbenchmarks (Google Benchmark, manual time from CUDA events): encoding a
// Llama-3-8B-shaped synthetic cache from a device KV view into a device frame (one
// encode_async: analysis, tables, lanes and frame on the device) and decoding the frame straight
// into a device KV view (with and without the device checksum pass), next to the ceilings
// measured in the same run -- a device-to-device copy of the same bytes and host-to-device
// transfers of the raw and the compressed bytes. GB/s are of uncompressed fp16.
//
//   KVCODEC_BENCH_TOKENS=8192 kvcodec_cuda_bench --benchmark_out=gpu.json --benchmark_out_format=json
//
// Tokens default to 2048 (256 MiB); 8192 is the 1 GiB cache of docs/results/gpu.md. Without a
// CUDA device every benchmark reports an error and the program exits normally.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/codec.hpp"
#include "kvcodec/cuda.hpp"
#include "kvcodec/synthetic.hpp"

namespace kvcodec {
namespace {

uint32_t bench_tokens() {
  const char* e = std::getenv("KVCODEC_BENCH_TOKENS");
  return e && *e ? uint32_t(std::strtoul(e, nullptr, 10)) : 2048u;
}

// One level's frame, uploaded, with a decoder and a destination: built once per level.
struct Fixture {
  KVShape shape;
  uint64_t raw_bytes = 0;
  std::vector<uint8_t> frame;
  void* raw_host = nullptr;    // pinned
  void* frame_host = nullptr;  // pinned
  void* raw_dev = nullptr;
  void* out_dev = nullptr;
  void* frame_dev = nullptr;
  void* ws_dev = nullptr;
  void* ws_unverified_dev = nullptr;
  void* enc_ws_dev = nullptr;
  void* enc_out_dev = nullptr;  // max_encoded_size bytes
  size_t enc_capacity = 0;
  std::unique_ptr<cuda::Decoder> dec;             // verifies chunk checksums on the device
  std::unique_ptr<cuda::Decoder> dec_unverified;  // does not
  std::unique_ptr<cuda::Encoder> enc;
  std::vector<cuda::DeviceChunk> chunks;
  cudaStream_t stream = nullptr;
  std::string error;

  ~Fixture() {
    cudaFreeHost(raw_host);
    cudaFreeHost(frame_host);
    cudaFree(raw_dev);
    cudaFree(out_dev);
    cudaFree(frame_dev);
    cudaFree(ws_dev);
    cudaFree(ws_unverified_dev);
    cudaFree(enc_ws_dev);
    cudaFree(enc_out_dev);
    if (stream) cudaStreamDestroy(stream);
  }
};

Fixture& fixture(int level) {
  static std::map<int, std::unique_ptr<Fixture>> cache;
  auto& f = cache[level];
  if (f) return *f;
  f = std::make_unique<Fixture>();
  if (Status s = cuda::device_status(); !s.ok()) {
    f->error = s.to_string();
    return *f;
  }
  auto kv = make_synthetic("llama3-8b", bench_tokens(), DType::kF16, 1);
  if (!kv.ok()) {
    f->error = kv.status().to_string();
    return *f;
  }
  f->shape = kv->shape;
  f->raw_bytes = kv->data.size();
  EncodeOptions o;
  o.level = level;
  o.threads = 0;
  f->frame.resize(max_encoded_size(kv->shape, kv->dtype, o));
  auto n = encode_into(kv->view(), o, f->frame);
  if (!n.ok()) {
    f->error = n.status().to_string();
    return *f;
  }
  f->frame.resize(*n);
  cudaStreamCreate(&f->stream);
  cudaMallocHost(&f->raw_host, f->raw_bytes);
  cudaMallocHost(&f->frame_host, f->frame.size());
  cudaMalloc(&f->raw_dev, f->raw_bytes);
  cudaMalloc(&f->out_dev, f->raw_bytes);
  cudaMalloc(&f->frame_dev, f->frame.size());
  std::memcpy(f->raw_host, kv->data.data(), f->raw_bytes);
  std::memcpy(f->frame_host, f->frame.data(), f->frame.size());
  cudaMemcpy(f->raw_dev, f->raw_host, f->raw_bytes, cudaMemcpyHostToDevice);
  cudaMemcpy(f->frame_dev, f->frame_host, f->frame.size(), cudaMemcpyHostToDevice);
  const FrameInfo info = *read_frame_info(f->frame);
  const uint32_t chunks = uint32_t(info.chunks.size());
  const size_t ws = *cuda::Decoder::workspace_size(f->frame, chunks);
  cudaMalloc(&f->ws_dev, ws);
  auto dec = cuda::Decoder::create(f->frame, f->ws_dev, ws, chunks, f->stream);
  if (!dec.ok()) {
    f->error = dec.status().to_string();
    return *f;
  }
  f->dec = std::make_unique<cuda::Decoder>(std::move(*dec));
  cudaMalloc(&f->ws_unverified_dev, ws);
  auto unverified = cuda::Decoder::create(f->frame, f->ws_unverified_dev, ws, chunks, f->stream, false);
  if (!unverified.ok()) {
    f->error = unverified.status().to_string();
    return *f;
  }
  f->dec_unverified = std::make_unique<cuda::Decoder>(std::move(*unverified));
  for (uint32_t k = 0; k < chunks; ++k)
    f->chunks.push_back({k, static_cast<const uint8_t*>(f->frame_dev) + info.chunks[k].offset});
  f->enc_capacity = max_encoded_size(kv->shape, kv->dtype, o);
  const size_t enc_ws = *cuda::Encoder::workspace_size(kv->shape, kv->dtype, o);
  cudaMalloc(&f->enc_ws_dev, enc_ws);
  cudaMalloc(&f->enc_out_dev, f->enc_capacity);
  auto enc = cuda::Encoder::create(kv->shape, kv->dtype, o, f->enc_ws_dev, enc_ws, f->stream);
  if (!enc.ok()) {
    f->error = enc.status().to_string();
    return *f;
  }
  f->enc = std::make_unique<cuda::Encoder>(std::move(*enc));
  if (cudaGetLastError() != cudaSuccess) f->error = "CUDA setup failed";
  return *f;
}

// Runs `op` per iteration between two events; reports GB/s of `bytes` (uncompressed).
template <typename Op>
void timed(benchmark::State& state, Fixture& f, uint64_t bytes, Op&& op) {
  if (!f.error.empty()) {
    state.SkipWithError(f.error.c_str());
    return;
  }
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (auto _ : state) {
    cudaEventRecord(a, f.stream);
    if (Status s = op(); !s.ok()) {
      state.SkipWithError(s.to_string().c_str());
      break;
    }
    cudaEventRecord(b, f.stream);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
  state.counters["raw_bytes"] = double(f.raw_bytes);
  state.counters["frame_bytes"] = double(f.frame.size());
  state.counters["bits_per_element"] = 8.0 * double(f.frame.size()) / double(f.shape.elements());
}

Status cuda_status(cudaError_t e) {
  return e == cudaSuccess ? Status::Ok() : Internal(cudaGetErrorString(e));
}

// Whole encodes from the raw cache on the device (contiguous view) into a device frame.
void BM_Encode(benchmark::State& state) {
  Fixture& f = fixture(int(state.range(0)));
  const KVView src = contiguous_view(f.raw_dev, DType::kF16, f.shape);
  timed(state, f, f.raw_bytes, [&] {
    return f.enc->encode_async(src, static_cast<uint8_t*>(f.enc_out_dev), f.enc_capacity, f.stream);
  });
  if (!f.enc) return;
  auto n = f.enc->synchronize(f.stream);
  std::vector<uint8_t> frame(n.ok() ? *n : 0);
  cudaMemcpy(frame.data(), f.enc_out_dev, frame.size(), cudaMemcpyDeviceToHost);
  if (frame != f.frame) state.SkipWithError("GPU frame differs from the CPU encoder's");
}
void BM_Decode(benchmark::State& state) {
  Fixture& f = fixture(int(state.range(0)));
  const KVView dst = contiguous_view(f.out_dev, DType::kF16, f.shape);
  timed(state, f, f.raw_bytes, [&] { return f.dec->decode_async(f.chunks, dst, f.stream); });
  if (f.dec && !f.dec->synchronize(f.stream).ok()) state.SkipWithError("device reported corrupt data");
}
// The same without the device checksum pass (for callers that verified the bytes elsewhere).
void BM_DecodeUnverified(benchmark::State& state) {
  Fixture& f = fixture(int(state.range(0)));
  const KVView dst = contiguous_view(f.out_dev, DType::kF16, f.shape);
  timed(state, f, f.raw_bytes, [&] { return f.dec_unverified->decode_async(f.chunks, dst, f.stream); });
  if (f.dec_unverified && !f.dec_unverified->synchronize(f.stream).ok())
    state.SkipWithError("device reported corrupt data");
}
void BM_CopyDeviceToDevice(benchmark::State& state) {
  Fixture& f = fixture(int(state.range(0)));
  timed(state, f, f.raw_bytes, [&] {
    return cuda_status(cudaMemcpyAsync(f.out_dev, f.raw_dev, f.raw_bytes, cudaMemcpyDeviceToDevice, f.stream));
  });
}
void BM_HostToDeviceRaw(benchmark::State& state) {
  Fixture& f = fixture(int(state.range(0)));
  timed(state, f, f.raw_bytes, [&] {
    return cuda_status(cudaMemcpyAsync(f.raw_dev, f.raw_host, f.raw_bytes, cudaMemcpyHostToDevice, f.stream));
  });
}
// Compressed bytes moved; throughput counted in the uncompressed bytes they stand for.
void BM_HostToDeviceFrame(benchmark::State& state) {
  Fixture& f = fixture(int(state.range(0)));
  timed(state, f, f.raw_bytes, [&] {
    return cuda_status(
        cudaMemcpyAsync(f.frame_dev, f.frame_host, f.frame.size(), cudaMemcpyHostToDevice, f.stream));
  });
}

// Level 0 (lossless), 4 (default), 9 (smallest).
BENCHMARK(BM_Encode)->Arg(0)->Arg(4)->Arg(9)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->Arg(0)->Arg(4)->Arg(9)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeUnverified)->Arg(4)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CopyDeviceToDevice)->Arg(4)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_HostToDeviceRaw)->Arg(4)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_HostToDeviceFrame)->Arg(0)->Arg(4)->Arg(9)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvcodec

BENCHMARK_MAIN();
