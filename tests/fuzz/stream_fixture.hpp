// The stored contexts behind the whole-loop fuzz targets (fuzz_serve, fuzz_fetch) and the
// traffic capture that seeds them (capture_traffic.cpp): small, deterministic, with several
// levels, text tokens and a partial last chunk, so that captured streams replay against the
// same manifests and chunks. Also the exact decode of each level (what a fetch must deliver).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "common/dtype.hpp"
#include "common/xxh64.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/store.hpp"
#include "stream/transport_wire.hpp"

namespace kvcodec::fuzz {

struct FixtureContext {
  std::string id;
  KVCache original;
  Manifest manifest;
  std::map<int, KVCache> exact;  // level -> the whole context decoded from that level's frame
};

inline void fixture_check(const Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "stream fixture: %s: %s\n", what, s.to_string().c_str());
  std::abort();
}

// Puts the fixture contexts into `store` and returns them with their exact decodes.
inline std::vector<FixtureContext> put_fixture_contexts(Store& store) {
  struct Spec {
    const char* id;
    DType dtype;
    KVShape shape;
    std::vector<int> levels;
    uint32_t chunk_tokens;
    bool text;
  };
  const Spec specs[] = {{"ctx0", DType::kF16, {2, 40, 1, 8}, {0, 5}, 16, true},
                        {"ctx1", DType::kBF16, {1, 20, 2, 4}, {3}, 8, false}};
  std::vector<FixtureContext> out;
  for (const Spec& s : specs) {
    FixtureContext c;
    c.id = s.id;
    auto kv = KVCache::allocate(s.dtype, s.shape);
    fixture_check(kv.status(), "allocate");
    for (size_t e = 0; e < s.shape.elements(); ++e)
      detail::store_from_f32(kv->data.data() + dtype_size(s.dtype) * e, uint8_t(s.dtype),
                             std::sin(0.1f * float(e)) * (e % 17 == 3 ? 40.f : 1.f));
    c.original = std::move(*kv);
    PutOptions po;
    po.levels = s.levels;
    po.chunk_tokens = s.chunk_tokens;
    po.measure = false;  // manifests byte-identical in every process (captured seeds replay)
    if (s.text)
      for (uint32_t t = 0; t < s.shape.tokens; ++t) po.text_tokens.push_back(int32_t(7 + t));
    auto m = put_context(store, c.id, c.original.view(), po);
    fixture_check(m.status(), "put_context");
    c.manifest = *m;
    for (const auto& l : m->levels) {
      auto head = get_head(store, c.id, *m, l.level);
      fixture_check(head.status(), "get_head");
      auto dst = KVCache::allocate(s.dtype, s.shape);
      fixture_check(dst.status(), "allocate");
      for (uint32_t ch = 0; ch < m->num_chunks(); ++ch) {
        auto body = get_chunk(store, c.id, *m, l.level, ch);
        fixture_check(body.status(), "get_chunk");
        fixture_check(decode_chunk_into(*head, ch, *body, dst->view()), "decode_chunk_into");
      }
      c.exact.emplace(l.level, std::move(*dst));
    }
    out.push_back(std::move(c));
  }
  return out;
}

// Rewrites the header checksum of every message in a stream of messages (header, payload,
// header, ...), and the trailing checksum of every manifest payload, so that mutations reach the
// code behind the checksums. Stops at the first header whose payload runs past the end.
inline void repair_message_checksums(std::span<uint8_t> s) {
  using namespace stream_detail;
  size_t at = 0;
  while (s.size() - at >= kMessageHeaderBytes) {
    uint8_t* h = s.data() + at;
    const uint64_t sum = detail::xxh64(h, 24);
    for (int i = 0; i < 8; ++i) h[24 + i] = uint8_t(sum >> (8 * i));
    uint64_t payload = 0;
    for (int i = 0; i < 8; ++i) payload |= uint64_t(h[16 + i]) << (8 * i);
    const uint16_t type = uint16_t(h[6] | (h[7] << 8));
    at += kMessageHeaderBytes;
    if (payload > s.size() - at) return;
    if (type == uint16_t(MsgType::kManifest) && payload >= 8) {
      uint8_t* p = s.data() + at;
      const uint64_t m = detail::xxh64(p, size_t(payload) - 8);
      for (int i = 0; i < 8; ++i) p[payload - 8 + i] = uint8_t(m >> (8 * i));
    }
    at += size_t(payload);
  }
}

// The size of the whole messages (valid header, payload complete) at the start of `s`;
// *count: how many.
inline size_t whole_messages(std::span<const uint8_t> s, size_t* count) {
  using namespace stream_detail;
  size_t at = 0;
  *count = 0;
  while (s.size() - at >= kMessageHeaderBytes) {
    auto h = decode_header(s.subspan(at));
    if (!h.ok() || h->payload_bytes > s.size() - at - kMessageHeaderBytes) break;
    at += kMessageHeaderBytes + size_t(h->payload_bytes);
    ++*count;
  }
  return at;
}

}  // namespace kvcodec::fuzz
