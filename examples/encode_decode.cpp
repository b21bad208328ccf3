// Compress a KV cache held in kvcodec's contiguous layout [layers, 2, tokens, kv_heads, head_dim]
// and decompress it again, with caller-owned buffers and Status-based error handling.
#include <cmath>
#include <cstdio>
#include <vector>

#include "kvcodec/kvcodec.hpp"
#include "common/dtype.hpp"  // only for filling the example tensor with fp16 values

int main() {
  const kvcodec::KVShape shape{4, 1000, 8, 128};  // 4 layers, 1000 tokens, 8 KV heads of 128
  std::vector<uint16_t> kv(shape.elements());
  for (size_t i = 0; i < kv.size(); ++i)
    kv[i] = kvcodec::detail::f32_to_f16(std::sin(0.001f * float(i)) * float(1 + i % 13));

  const kvcodec::KVView src = kvcodec::contiguous_view(kv.data(), kvcodec::DType::kF16, shape);
  kvcodec::EncodeOptions opt;
  opt.level = 4;    // 0 = lossless; higher = smaller, with a documented error bound
  opt.threads = 0;  // all cores; the output bytes do not depend on it

  // The caller owns the output buffer: size it with max_encoded_size.
  std::vector<uint8_t> frame(kvcodec::max_encoded_size(shape, src.dtype, opt));
  kvcodec::StatusOr<size_t> n = kvcodec::encode_into(src, opt, frame);
  if (!n.ok()) {
    std::fprintf(stderr, "encode failed: %s\n", n.status().to_string().c_str());
    return 1;
  }
  frame.resize(*n);

  // The frame describes itself: no model name or side information is needed to decode it.
  auto info = kvcodec::read_frame_info(frame);
  if (!info.ok()) return 1;
  std::printf("%zu bytes -> %zu bytes (%.2f bits per element, %zu chunks)\n", kv.size() * 2, frame.size(),
              info->bits_per_element(), info->chunks.size());

  std::vector<uint16_t> out(kv.size());
  kvcodec::Status s = kvcodec::decode_into(frame, kvcodec::contiguous_view(out.data(), kvcodec::DType::kF16, shape));
  if (!s.ok()) {
    std::fprintf(stderr, "decode failed: %s\n", s.to_string().c_str());
    return 1;
  }
  double max_err = 0;
  for (size_t i = 0; i < kv.size(); ++i)
    max_err = std::fmax(max_err, std::fabs(kvcodec::detail::f16_to_f32(kv[i]) - kvcodec::detail::f16_to_f32(out[i])));
  std::printf("max abs error %.4g\n", max_err);
  return 0;
}
