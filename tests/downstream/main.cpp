// Encodes and decodes a small f16 cache with an installed kvcodec: lossless must come back bit
// for bit, and the frame must describe the cache. Prints "downstream: ok" and exits 0 on success.
#include <kvcodec/io.hpp>
#include <kvcodec/kvcodec.hpp>

#include <cstdio>
#include <vector>

namespace {

int fail(const char* what, const kvcodec::Status& s) {
  std::fprintf(stderr, "downstream: %s: %s\n", what, s.to_string().c_str());
  return 1;
}

}  // namespace

int main() {
  const kvcodec::KVShape shape{2, 33, 2, 8};  // layers, tokens, kv_heads, head_dim
  auto kv = kvcodec::KVCache::allocate(kvcodec::DType::kF16, shape);
  if (!kv.ok()) return fail("allocate", kv.status());
  for (size_t i = 0; i < kv->data.size(); i += 2) {
    kv->data[i] = uint8_t(i * 7);
    kv->data[i + 1] = uint8_t(0x30 + (i / 2) % 8);  // small positive f16 values
  }

  kvcodec::EncodeOptions options;
  options.level = 0;
  options.chunk_tokens = 16;
  std::vector<uint8_t> frame(kvcodec::max_encoded_size(shape, kv->dtype, options));
  auto size = kvcodec::encode_into(kv->view(), options, frame);
  if (!size.ok()) return fail("encode", size.status());
  frame.resize(*size);

  auto info = kvcodec::read_frame_info(frame);
  if (!info.ok()) return fail("read_frame_info", info.status());
  if (info->shape != shape || info->chunks.size() != 3) {
    std::fprintf(stderr, "downstream: frame describes the wrong cache\n");
    return 1;
  }
  auto out = kvcodec::KVCache::allocate(info->dtype, info->shape);
  if (!out.ok()) return fail("allocate", out.status());
  if (auto s = kvcodec::decode_into(frame, out->view()); !s.ok()) return fail("decode", s);
  if (out->data != kv->data) {
    std::fprintf(stderr, "downstream: lossless round trip changed the data\n");
    return 1;
  }
  std::printf("downstream: ok (%zu bytes of f16 in a %zu-byte frame)\n", kv->data.size(), frame.size());
  return 0;
}
