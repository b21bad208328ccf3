// Decode a compressed context straight into a vLLM-style paged KV cache: per layer a tensor
// (2, num_blocks, block_size, kv_heads, head_dim), the context's tokens scattered over blocks
// listed in a block table. Encoding reads from the same paged view.
#include <cstdio>
#include <numeric>
#include <vector>

#include "kvcodec/kvcodec.hpp"

int main() {
  const kvcodec::KVShape shape{2, 100, 4, 64};
  const uint32_t block_size = 16, num_blocks = 32;

  // The server's cache: one buffer per layer; this request owns blocks 31, 30, ... (any order).
  std::vector<std::vector<uint16_t>> layers(shape.layers,
                                            std::vector<uint16_t>(2ull * num_blocks * block_size * shape.channels()));
  std::vector<void*> layer_ptrs;
  for (auto& l : layers) {
    std::iota(l.begin(), l.end(), uint16_t(0x3000));  // some fp16 bit patterns
    layer_ptrs.push_back(l.data());
  }
  std::vector<int32_t> block_table;
  for (uint32_t i = 0; i < (shape.tokens + block_size - 1) / block_size; ++i) block_table.push_back(int32_t(31 - i));

  const kvcodec::KVView paged = kvcodec::vllm_paged_view(layer_ptrs.data(), kvcodec::DType::kF16, shape,
                                                         block_table.data(), num_blocks, block_size);
  kvcodec::EncodeOptions opt;
  opt.level = 0;  // lossless: the decoded blocks are bit-identical
  std::vector<uint8_t> frame(kvcodec::max_encoded_size(shape, paged.dtype, opt));
  auto n = kvcodec::encode_into(paged, opt, frame);
  if (!n.ok()) return std::fprintf(stderr, "%s\n", n.status().to_string().c_str()), 1;
  frame.resize(*n);

  // Another request's blocks (here: a fresh cache) receive the context.
  std::vector<std::vector<uint16_t>> dst(shape.layers, std::vector<uint16_t>(layers[0].size(), 0));
  std::vector<void*> dst_ptrs;
  for (auto& l : dst) dst_ptrs.push_back(l.data());
  const kvcodec::KVView into = kvcodec::vllm_paged_view(dst_ptrs.data(), kvcodec::DType::kF16, shape,
                                                        block_table.data(), num_blocks, block_size);
  if (kvcodec::Status s = kvcodec::decode_into(frame, into); !s.ok())
    return std::fprintf(stderr, "%s\n", s.to_string().c_str()), 1;
  // Lossless: every token of the context, in the blocks the table names, is bit-identical.
  const size_t row = shape.channels();
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t t = 0; t < shape.tokens; ++t) {
        const size_t at = ((size_t(k) * num_blocks + size_t(block_table[t / block_size])) * block_size + t % block_size) * row;
        for (size_t c = 0; c < row; ++c)
          if (dst[l][at + c] != layers[l][at + c])
            return std::fprintf(stderr, "layer %u kv %u token %u differs\n", l, k, t), 1;
      }
  std::printf("decoded %u tokens into %zu paged blocks per layer (%zu-byte frame), bit-identical\n", shape.tokens,
              block_table.size(), frame.size());
  return 0;
}
