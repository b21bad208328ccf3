// Writes the seed corpora of the streaming parsers' fuzz targets:
//   kvcodec_fuzz_stream_seeds DIR  ->  DIR/manifest/*   manifests of small contexts (with and
//                                                        without text tokens, several levels,
//                                                        levels transform-coded with a profile,
//                                                        one written back as version 1)
//                                      DIR/wire/*       request streams as the fetch client
//                                                        sends them (manifest, then chunks)
//                                      DIR/tokenizer/*  small llama2.c tokenizers
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.hpp"
#include "identity_profile.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/store.hpp"
#include "stream/transport_wire.hpp"

namespace {

using namespace kvcodec;

void check(const Status& s, const std::string& what) {
  if (s.ok()) return;
  std::fprintf(stderr, "kvcodec_fuzz_stream_seeds: %s: %s\n", what.c_str(), s.to_string().c_str());
  std::exit(1);
}

void write_manifests(const std::filesystem::path& dir) {
  auto store = open_store("mem:");
  check(store.status(), "mem store");
  int i = 0;
  for (uint32_t tokens : {5u, 40u}) {
    const KVShape shape{2, tokens, 1, 8};
    auto kv = KVCache::allocate(DType::kF16, shape);
    check(kv.status(), "allocate");
    for (size_t e = 0; e < shape.elements(); ++e)
      detail::store_from_f32(kv->data.data() + 2 * e, uint8_t(DType::kF16), std::sin(0.1f * float(e)));
    for (int kind = 0; kind < 3; ++kind) {
      const bool text = kind == 1;
      PutOptions po;
      po.levels = text ? std::vector<int>{0, 5} : std::vector<int>{3};
      po.chunk_tokens = 16;
      if (kind == 2) {  // level 0 plain, levels 2 and 6 transform-coded: profile digests in the manifest
        auto p = fuzz_identity_profile(shape, true);
        check(p.status(), "profile");
        po.profile = std::make_shared<const Profile>(std::move(*p));
        po.levels = {0, 2, 6};
      }
      if (text)
        for (uint32_t t = 0; t < tokens; ++t) po.text_tokens.push_back(int32_t(t));
      const std::string id = "ctx" + std::to_string(i);
      auto m = put_context(**store, id, kv->view(), po);
      check(m.status(), "put_context");
      const std::vector<uint8_t> bytes = serialize_manifest(*m);
      check(write_file((dir / (id + ".manifest")).string(), bytes.data(), bytes.size()), "write manifest");
      if (kind == 2) {  // the same as version 1 (no digests): parse, mark unknown, write back
        Manifest v1 = *m;
        v1.profiles_known = false;
        const std::vector<uint8_t> old = serialize_manifest(v1);
        check(write_file((dir / (id + "-v1.manifest")).string(), old.data(), old.size()), "write manifest");
      }
      ++i;
    }
  }
}

void write_wire(const std::filesystem::path& dir) {
  using namespace stream_detail;
  for (int s = 0; s < 3; ++s) {
    std::vector<uint8_t> stream;
    uint32_t id = 1;
    auto add = [&](const Request& r) {
      MessageHeader h;
      h.type = r.type;
      h.request_id = id++;
      const std::vector<uint8_t> p = encode_request_payload(r);
      h.payload_bytes = p.size();
      const std::vector<uint8_t> m = make_message(h, p);
      stream.insert(stream.end(), m.begin(), m.end());
    };
    Request r;
    r.type = MsgType::kGetManifest;
    r.id = "ctx" + std::to_string(s);
    add(r);
    r.type = MsgType::kGetChunk;
    for (uint32_t c = 0; c < uint32_t(2 + s); ++c) {
      r.chunk = c;
      r.level = s * 3;
      r.with_head = c == 0;
      add(r);
    }
    check(write_file((dir / ("requests" + std::to_string(s))).string(), stream.data(), stream.size()), "write");
  }
}

void write_tokenizers(const std::filesystem::path& dir) {
  const char* pieces[] = {"<unk>", "<s>", "</s>", " ", "a", "b", "ab", " a", "Once", " upon"};
  for (int v = 0; v < 2; ++v) {
    std::string b(4, '\0');
    const int32_t max_len = 5;
    std::memcpy(b.data(), &max_len, 4);
    for (int i = 0; i < 10; ++i) {
      const float score = v ? -float(i) : float(i % 3);
      const int32_t len = int32_t(std::strlen(pieces[i]));
      b.append(reinterpret_cast<const char*>(&score), 4).append(reinterpret_cast<const char*>(&len), 4);
      b.append(pieces[i]);
    }
    check(write_file((dir / ("tok" + std::to_string(v) + ".bin")).string(), reinterpret_cast<const uint8_t*>(b.data()), b.size()), "write");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: kvcodec_fuzz_stream_seeds DIR\n");
    return 2;
  }
  const std::filesystem::path root = argv[1];
  for (const char* sub : {"manifest", "wire", "tokenizer"}) std::filesystem::create_directories(root / sub);
  write_manifests(root / "manifest");
  write_wire(root / "wire");
  write_tokenizers(root / "tokenizer");
  return 0;
}
