// Compress a KV cache held in kvcodec's contiguous layout [layers, 2, tokens, kv_heads, head_dim]
// and decompress it again, with caller-owned buffers and Status-based error handling.
#include <cmath>
#include <cstdio>
#include <vector>

#include "kvcodec/kvcodec.hpp"

int main() {
  const kvcodec::KVShape shape{4, 1000, 8, 128};  // 4 layers, 1000 tokens, 8 KV heads of 128
  // fp32 here to keep the example short; f16, bf16 and f8e4m3 caches are encoded the same way.
  std::vector<float> kv(shape.elements());
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = std::sin(0.001f * float(i)) * float(1 + i % 13);

  const kvcodec::KVView src = kvcodec::contiguous_view(kv.data(), kvcodec::DType::kF32, shape);
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
  std::printf("%zu bytes -> %zu bytes (%.2f bits per element, %zu chunks)\n", kv.size() * sizeof(float), frame.size(),
              info->bits_per_element(), info->chunks.size());

  std::vector<float> out(kv.size());
  kvcodec::Status s = kvcodec::decode_into(frame, kvcodec::contiguous_view(out.data(), kvcodec::DType::kF32, shape));
  if (!s.ok()) {
    std::fprintf(stderr, "decode failed: %s\n", s.to_string().c_str());
    return 1;
  }
  // The documented bound (config.hpp): |x - x_hat| <= step / 2 + ulp(x_hat) / 2 with
  // step <= kLevelStep[level] * layer_factor(l) * scale. Here it is checked with quantities
  // that are never smaller: the scale (RMS deviation of a (layer, K/V) tensor from its channel
  // means) is at most the tensor's RMS, layer_factor is at most kLayerFactor[2], and an fp32
  // ulp is at most |x_hat| * 2^-23 (2^-149 for subnormals).
  const size_t slice = size_t(shape.tokens) * shape.channels();  // one (layer, K/V) tensor
  double max_err = 0, worst = 0;
  for (size_t begin = 0; begin < kv.size(); begin += slice) {
    double sum_sq = 0;
    for (size_t i = begin; i < begin + slice; ++i) sum_sq += double(kv[i]) * double(kv[i]);
    const double max_step = kvcodec::kLevelStep[opt.level] * kvcodec::kLayerFactor[2] * std::sqrt(sum_sq / slice);
    for (size_t i = begin; i < begin + slice; ++i) {
      const double x = kv[i], x_hat = out[i];
      const double bound = max_step / 2 + (std::fabs(x_hat) * 0x1p-23 + 0x1p-149) / 2;
      max_err = std::fmax(max_err, std::fabs(x - x_hat));
      worst = std::fmax(worst, std::fabs(x - x_hat) / bound);
    }
  }
  std::printf("max abs error %.4g (%.3f of the documented bound)\n", max_err, worst);
  if (!(worst <= 1)) {
    std::fprintf(stderr, "error above the documented bound\n");
    return 1;
  }
  return 0;
}
