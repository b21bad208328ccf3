// The cuda component of an installed kvcodec: links the GPU backend and asks for a device. With
// one, it encodes a small cache on the GPU and checks the frame against the CPU encoder's; with
// none (a CI machine), reporting kUnavailable is the expected outcome. Exits 0 on success.
#include <kvcodec/backend.hpp>
#include <kvcodec/cuda.hpp>
#include <kvcodec/io.hpp>
#include <kvcodec/kvcodec.hpp>

#include <cuda_runtime_api.h>

#include <cstdio>
#include <vector>

int main() {
  const kvcodec::Status status = kvcodec::cuda::device_status();
  if (!status.ok()) {
    if (status.code() != kvcodec::StatusCode::kUnavailable || !kvcodec::backend_built(kvcodec::Backend::kCuda)) {
      std::fprintf(stderr, "downstream_cuda: unexpected: %s\n", status.to_string().c_str());
      return 1;
    }
    std::printf("downstream_cuda: ok (no device: %s)\n", status.message());
    return 0;
  }
  const kvcodec::KVShape shape{2, 40, 2, 8};
  auto kv = kvcodec::KVCache::allocate(kvcodec::DType::kF16, shape);
  if (!kv.ok()) return 1;
  for (size_t i = 0; i < kv->data.size(); i += 2) {
    kv->data[i] = uint8_t(i * 13);
    kv->data[i + 1] = uint8_t(0x34 + (i / 2) % 4);
  }
  kvcodec::EncodeOptions options;
  options.chunk_tokens = 16;
  std::vector<uint8_t> cpu(kvcodec::max_encoded_size(shape, kv->dtype, options));
  auto cpu_size = kvcodec::encode_into(kv->view(), options, cpu);
  if (!cpu_size.ok()) return 1;
  cpu.resize(*cpu_size);

  void* src_dev = nullptr;
  void* dst_dev = nullptr;
  const size_t capacity = kvcodec::max_encoded_size(shape, kv->dtype, options);
  cudaStream_t stream = nullptr;  // the default stream, passed as a kvcodec::cuda::CudaStream
  if (cudaMalloc(&src_dev, kv->data.size()) != cudaSuccess || cudaMalloc(&dst_dev, capacity) != cudaSuccess) return 1;
  cudaMemcpy(src_dev, kv->data.data(), kv->data.size(), cudaMemcpyHostToDevice);
  auto view = kvcodec::contiguous_view(src_dev, kv->dtype, shape);
  auto size = kvcodec::cuda::encode_frame(view, options, static_cast<uint8_t*>(dst_dev), capacity, stream);
  std::vector<uint8_t> gpu(size.ok() ? *size : 0);
  if (size.ok()) cudaMemcpy(gpu.data(), dst_dev, gpu.size(), cudaMemcpyDeviceToHost);
  cudaFree(src_dev);
  cudaFree(dst_dev);
  if (!size.ok() || gpu != cpu) {
    std::fprintf(stderr, "downstream_cuda: the GPU frame differs from the CPU frame\n");
    return 1;
  }
  std::printf("downstream_cuda: ok (%zu-byte frame, same bytes as the CPU)\n", gpu.size());
  return 0;
}
