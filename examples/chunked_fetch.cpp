// Streaming-style decoding: a receiver gets the frame head first and then chunk bodies one by
// one (from a network or a store), decoding each as it arrives with a FrameDecoder.
#include <cmath>
#include <cstdio>
#include <vector>

#include "kvcodec/kvcodec.hpp"

int main() {
  const kvcodec::KVShape shape{3, 1000, 2, 64};
  std::vector<float> kv(shape.elements());
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = float(i % 977) * 0.01f - 4.0f;

  kvcodec::EncodeOptions opt;
  opt.level = 6;
  opt.chunk_tokens = 256;  // the unit of streaming and random access
  std::vector<uint8_t> frame(kvcodec::max_encoded_size(shape, kvcodec::DType::kF32, opt));
  auto n = kvcodec::encode_into(kvcodec::contiguous_view(kv.data(), kvcodec::DType::kF32, shape), opt, frame);
  if (!n.ok()) return 1;

  // Sender side: the head is sent first, then each chunk body (offsets from the chunk index).
  auto info = kvcodec::read_frame_info(frame);
  if (!info.ok()) return 1;
  const std::vector<uint8_t> head(frame.begin(), frame.begin() + long(info->head_bytes));

  // Receiver side.
  auto decoder = kvcodec::FrameDecoder::open(head);
  if (!decoder.ok()) return std::fprintf(stderr, "%s\n", decoder.status().to_string().c_str()), 1;
  std::vector<float> out(kv.size());
  const kvcodec::KVView dst = kvcodec::contiguous_view(out.data(), kvcodec::DType::kF32, shape);
  for (uint32_t k = 0; k < decoder->info().chunks.size(); ++k) {
    const kvcodec::ChunkInfo& c = decoder->info().chunks[k];
    std::vector<uint8_t> body(frame.begin() + long(c.offset), frame.begin() + long(c.offset + c.size));
    // A corrupt or truncated body is reported (checksum), never decoded into garbage.
    if (kvcodec::Status s = decoder->decode_chunk(k, body, dst); !s.ok())
      return std::fprintf(stderr, "chunk %u: %s\n", k, s.to_string().c_str()), 1;
    std::printf("chunk %u: tokens %u..%u, %u bytes\n", k, c.token_begin, c.token_begin + c.tokens - 1, c.size);
  }
  // Every value within the documented bound (config.hpp), checked with larger quantities: the
  // scale is at most the (layer, K/V) tensor's RMS, layer_factor at most kLayerFactor[2], an f32
  // ulp at most |x_hat| * 2^-23 (2^-149 for subnormals).
  const size_t slice = size_t(shape.tokens) * shape.channels();
  for (size_t begin = 0; begin < kv.size(); begin += slice) {
    double sum_sq = 0;
    for (size_t i = begin; i < begin + slice; ++i) sum_sq += double(kv[i]) * kv[i];
    const double max_step = kvcodec::kLevelStep[opt.level] * kvcodec::kLayerFactor[2] * std::sqrt(sum_sq / slice);
    for (size_t i = begin; i < begin + slice; ++i)
      if (std::fabs(double(kv[i]) - out[i]) > max_step / 2 + (std::fabs(out[i]) * 0x1p-23 + 0x1p-149) / 2)
        return std::fprintf(stderr, "element %zu: error above the documented bound\n", i), 1;
  }
  std::printf("every value within the documented error bound of level %d\n", opt.level);
  return 0;
}
