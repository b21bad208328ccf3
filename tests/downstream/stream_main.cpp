// The stream component of an installed kvcodec: puts a small context into a process-local store
// at two levels, reads the lossless level back piece by piece (manifest, head, chunk bodies, each
// verified) and decodes it. Prints "downstream_stream: ok" and exits 0 on success.
#include <kvcodec/io.hpp>
#include <kvcodec/kvcodec.hpp>
#include <kvcodec/store.hpp>

#include <cstdio>
#include <vector>

namespace {

int fail(const char* what, const kvcodec::Status& s) {
  std::fprintf(stderr, "downstream_stream: %s: %s\n", what, s.to_string().c_str());
  return 1;
}

}  // namespace

int main() {
  const kvcodec::KVShape shape{2, 40, 2, 8};
  auto kv = kvcodec::KVCache::allocate(kvcodec::DType::kF16, shape);
  if (!kv.ok()) return fail("allocate", kv.status());
  for (size_t i = 0; i < kv->data.size(); i += 2) {
    kv->data[i] = uint8_t(i * 13);
    kv->data[i + 1] = uint8_t(0x34 + (i / 2) % 4);
  }
  auto store = kvcodec::open_store("mem:");
  if (!store.ok()) return fail("open_store", store.status());
  kvcodec::PutOptions put;
  put.levels = {0, 4};
  put.chunk_tokens = 16;
  put.measure = false;
  auto manifest = kvcodec::put_context(**store, "ctx", kv->view(), put);
  if (!manifest.ok()) return fail("put_context", manifest.status());

  auto m = kvcodec::get_manifest(**store, "ctx");
  if (!m.ok()) return fail("get_manifest", m.status());
  if (m->num_chunks() != 3 || m->levels.size() != 2) {
    std::fprintf(stderr, "downstream_stream: the manifest describes the wrong context\n");
    return 1;
  }
  auto head = kvcodec::get_head(**store, "ctx", *m, 0);
  if (!head.ok()) return fail("get_head", head.status());
  auto out = kvcodec::KVCache::allocate(m->dtype, m->shape);
  if (!out.ok()) return fail("allocate", out.status());
  for (uint32_t c = 0; c < m->num_chunks(); ++c) {
    auto body = kvcodec::get_chunk(**store, "ctx", *m, 0, c);
    if (!body.ok()) return fail("get_chunk", body.status());
    if (auto s = kvcodec::decode_chunk_into(*head, c, *body, out->view()); !s.ok()) return fail("decode", s);
  }
  if (out->data != kv->data) {
    std::fprintf(stderr, "downstream_stream: the lossless level came back changed\n");
    return 1;
  }
  std::printf("downstream_stream: ok (%u chunks at %zu levels)\n", m->num_chunks(), m->levels.size());
  return 0;
}
