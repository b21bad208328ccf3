// The GPU workflow of an inference server (CUDA builds): compress a context straight out of a
// vLLM-style paged KV cache in device memory, ship the frame, and on the receiving side decode
// each chunk as it arrives straight into that server's paged blocks -- no staging of the
// uncompressed cache in host memory, caller-owned workspaces, one stream, one sync point per
// direction. Without a usable GPU it says so and exits with 77 (ctest: skipped).
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "kvcodec/cuda.hpp"
#include "kvcodec/kvcodec.hpp"

namespace {

int fail(const char* what, const kvcodec::Status& s) {
  std::fprintf(stderr, "%s: %s\n", what, s.to_string().c_str());
  return 1;
}
int fail(const char* what, cudaError_t e) {
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return 1;
}

template <typename T>
cudaError_t device_alloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}

// One server's paged cache in device memory: per layer (2, num_blocks, block_size, kv_heads,
// head_dim) fp16, and the device arrays a paged KVView points to (layer pointers, block table).
struct DevicePagedCache {
  std::vector<void*> layers;
  void** layers_dev = nullptr;
  int32_t* block_table_dev = nullptr;
  size_t layer_bytes = 0;

  cudaError_t allocate(const kvcodec::KVShape& s, uint32_t num_blocks, uint32_t block_size,
                       const std::vector<int32_t>& block_table) {
    layer_bytes = 2ull * num_blocks * block_size * s.channels() * sizeof(uint16_t);
    for (uint32_t l = 0; l < s.layers; ++l) {
      void* p = nullptr;
      if (cudaError_t e = cudaMalloc(&p, layer_bytes); e != cudaSuccess) return e;
      layers.push_back(p);
    }
    if (cudaError_t e = device_alloc(&layers_dev, sizeof(void*) * layers.size()); e != cudaSuccess) return e;
    if (cudaError_t e = device_alloc(&block_table_dev, sizeof(int32_t) * block_table.size()); e != cudaSuccess) return e;
    if (cudaError_t e = cudaMemcpy(layers_dev, layers.data(), sizeof(void*) * layers.size(), cudaMemcpyHostToDevice);
        e != cudaSuccess)
      return e;
    return cudaMemcpy(block_table_dev, block_table.data(), sizeof(int32_t) * block_table.size(),
                      cudaMemcpyHostToDevice);
  }
  ~DevicePagedCache() {
    for (void* p : layers) cudaFree(p);
    cudaFree(layers_dev);
    cudaFree(block_table_dev);
  }
};

}  // namespace

int main() {
  if (kvcodec::Status s = kvcodec::cuda::device_status(); !s.ok()) {
    std::printf("skipped: %s\n", s.to_string().c_str());
    return 77;
  }
  const kvcodec::KVShape shape{4, 1000, 8, 128};  // 4 layers, 1000 tokens, 8 KV heads of 128
  const uint32_t block_size = 16, num_blocks = 96;
  std::vector<int32_t> blocks;  // this request's blocks, in token order (any blocks of the pool)
  for (uint32_t i = 0; i < (shape.tokens + block_size - 1) / block_size; ++i) blocks.push_back(int32_t(95 - i));

  cudaStream_t stream;
  if (cudaError_t e = cudaStreamCreate(&stream); e != cudaSuccess) return fail("stream", e);

  // ---- sender: the cache lives on the GPU; fill it with some fp16 values ------------------------
  DevicePagedCache src;
  if (cudaError_t e = src.allocate(shape, num_blocks, block_size, blocks); e != cudaSuccess) return fail("alloc", e);
  {
    std::vector<uint16_t> host(src.layer_bytes / 2);
    for (size_t i = 0; i < host.size(); ++i) host[i] = uint16_t(0x3800 + (i * 7919 % 2048));  // values in [0.5, 1)
    for (void* p : src.layers) cudaMemcpy(p, host.data(), src.layer_bytes, cudaMemcpyHostToDevice);
  }
  const kvcodec::KVView src_view = kvcodec::vllm_paged_view(src.layers_dev, kvcodec::DType::kF16, shape,
                                                            src.block_table_dev, num_blocks, block_size);
  kvcodec::EncodeOptions opt;  // level 4, 256-token chunks
  auto enc_ws_bytes = kvcodec::cuda::Encoder::workspace_size(shape, kvcodec::DType::kF16, opt);
  if (!enc_ws_bytes.ok()) return fail("encoder workspace", enc_ws_bytes.status());
  const size_t capacity = kvcodec::max_encoded_size(shape, kvcodec::DType::kF16, opt);
  void* enc_ws = nullptr;
  uint8_t* frame_dev = nullptr;
  cudaMalloc(&enc_ws, *enc_ws_bytes);  // caller-owned, reusable for every context of this shape
  device_alloc(&frame_dev, capacity);
  auto enc = kvcodec::cuda::Encoder::create(shape, kvcodec::DType::kF16, opt, enc_ws, *enc_ws_bytes, stream);
  if (!enc.ok()) return fail("encoder", enc.status());
  if (kvcodec::Status s = enc->encode_async(src_view, frame_dev, capacity, stream); !s.ok()) return fail("encode", s);
  auto frame_bytes = enc->synchronize(stream);  // the one sync point of the encode
  if (!frame_bytes.ok()) return fail("encode", frame_bytes.status());
  std::vector<uint8_t> wire(*frame_bytes);  // "the network": the frame in host memory
  cudaMemcpy(wire.data(), frame_dev, wire.size(), cudaMemcpyDeviceToHost);

  // ---- receiver: head first, then each chunk as it arrives --------------------------------------
  auto head_bytes = kvcodec::frame_head_size(std::span<const uint8_t>(wire.data(), kvcodec::kHeaderBytes));
  if (!head_bytes.ok()) return fail("head", head_bytes.status());
  const std::span<const uint8_t> head(wire.data(), *head_bytes);
  auto info = kvcodec::read_frame_info(head);
  if (!info.ok()) return fail("head", info.status());
  DevicePagedCache dst;  // the receiving server's pool (here: the same block numbers)
  if (cudaError_t e = dst.allocate(shape, num_blocks, block_size, blocks); e != cudaSuccess) return fail("alloc", e);
  const kvcodec::KVView dst_view = kvcodec::vllm_paged_view(dst.layers_dev, kvcodec::DType::kF16, shape,
                                                            dst.block_table_dev, num_blocks, block_size);
  auto dec_ws_bytes = kvcodec::cuda::Decoder::workspace_size(head, /*max_batch=*/1);
  if (!dec_ws_bytes.ok()) return fail("decoder workspace", dec_ws_bytes.status());
  void* dec_ws = nullptr;
  uint8_t* chunk_dev = nullptr;
  cudaMalloc(&dec_ws, *dec_ws_bytes);
  device_alloc(&chunk_dev, info->frame_bytes);  // one slot per chunk (a ring of slots would do)
  auto dec = kvcodec::cuda::Decoder::create(head, dec_ws, *dec_ws_bytes, 1, stream);  // checksums on the device
  if (!dec.ok()) return fail("decoder", dec.status());
  for (uint32_t k = 0; k < info->chunks.size(); ++k) {
    const kvcodec::ChunkInfo& c = info->chunks[k];
    uint8_t* body = chunk_dev + c.offset;
    cudaMemcpyAsync(body, wire.data() + c.offset, c.size, cudaMemcpyHostToDevice, stream);
    const kvcodec::cuda::DeviceChunk chunk{k, body};
    if (kvcodec::Status s = dec->decode_async({&chunk, 1}, dst_view, stream); !s.ok()) return fail("decode", s);
  }
  if (kvcodec::Status s = dec->synchronize(stream); !s.ok()) return fail("decode", s);  // the one sync point

  // ---- check: the receiver's blocks hold what the CPU decoder makes of the frame ----------------
  std::vector<std::vector<uint16_t>> got(shape.layers, std::vector<uint16_t>(dst.layer_bytes / 2, 0));
  std::vector<void*> got_ptrs;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    cudaMemcpy(got[l].data(), dst.layers[l], dst.layer_bytes, cudaMemcpyDeviceToHost);
    got_ptrs.push_back(got[l].data());
  }
  std::vector<std::vector<uint16_t>> want(shape.layers, std::vector<uint16_t>(dst.layer_bytes / 2, 0));
  std::vector<void*> want_ptrs;
  for (auto& w : want) want_ptrs.push_back(w.data());
  const kvcodec::KVView want_view = kvcodec::vllm_paged_view(want_ptrs.data(), kvcodec::DType::kF16, shape,
                                                             blocks.data(), num_blocks, block_size);
  if (kvcodec::Status s = kvcodec::decode_into(wire, want_view); !s.ok()) return fail("CPU decode", s);
  const kvcodec::KVView got_view = kvcodec::vllm_paged_view(got_ptrs.data(), kvcodec::DType::kF16, shape,
                                                            blocks.data(), num_blocks, block_size);
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < shape.tokens; ++t)
        for (uint32_t h = 0; h < shape.kv_heads; ++h)
          for (uint32_t d = 0; d < shape.head_dim; ++d)
            if (std::memcmp(got_view.element(l, kv, t, h, d), want_view.element(l, kv, t, h, d), 2) != 0) {
              std::fprintf(stderr, "GPU and CPU decodes differ at layer %u kv %u token %u\n", l, kv, t);
              return 1;
            }
  std::printf("encoded %u tokens on the GPU into %zu bytes (%.2f bits/element), decoded %zu chunks on the GPU "
              "into paged blocks: identical to the CPU decoder\n",
              shape.tokens, wire.size(), info->bits_per_element(), info->chunks.size());
  cudaFree(enc_ws);
  cudaFree(frame_dev);
  cudaFree(dec_ws);
  cudaFree(chunk_dev);
  cudaStreamDestroy(stream);
  return 0;
}
