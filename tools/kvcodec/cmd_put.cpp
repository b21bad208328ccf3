// kvcodec put: store a KV cache as multi-level chunks (store.hpp).
//
//   kvcodec put --store URI --id NAME IN.safetensors [--levels LIST] [--chunk-tokens N]
//               [--text FILE --tokenizer T|bytes [--offset B]] [--ttl SECONDS] [--threads N] [--json]
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli.hpp"
#include "commands.hpp"
#include "stream_cli.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/store.hpp"
#include "kvcodec/tokenizer.hpp"

namespace kvcodec::cli {

int cmd_put(int argc, char** argv) {
  Args a("put",
         "kvcodec put --store URI --id NAME IN.safetensors [--levels LIST] [--chunk-tokens N] "
         "[--text FILE --tokenizer T|bytes [--offset B]] [--ttl SECONDS] [--threads N] [--json]");
  a.positional("IN", "KV cache (.safetensors or .npy, conventions in docs/file-conventions.md)")
      .option("--store", "mem:, file:DIR, redis://HOST:PORT[/DB] or redis-cluster://HOST:PORT[,HOST:PORT...]")
      .option("--id", "context id ([A-Za-z0-9._-], 1..200 characters)")
      .option("--levels", "comma-separated levels to store (default 0,2,4,6,8)")
      .option("--chunk-tokens", "tokens per chunk (default 256)")
      .option("--text", "text the context was prefilled from: its token ids are stored for the text fallback")
      .option("--tokenizer", "tokenizer of --text: a llama2.c tokenizer .bin or 'bytes'")
      .option("--offset", "byte offset of the context in --text (default 0), as for kv-dump")
      .option("--ttl", "every key of the context expires SECONDS after the put (default: never; not file:)")
      .option("--threads", "encoder threads (default 0 = all cores)")
      .flag("--json", "print the manifest summary as JSON");
  if (!a.parse(argc, argv)) return a.exit_code();
  if (!a.has("--store") || !a.has("--id")) return a.fail("--store and --id are required");
  if (a.has("--text") != a.has("--tokenizer")) return a.fail("--text and --tokenizer go together");
  PutOptions po;
  if (a.has("--levels")) {
    po.levels.clear();
    for (int64_t l : a.get_int_list("--levels")) po.levels.push_back(int(l));
  }
  const int64_t chunk_tokens = a.get_int("--chunk-tokens", 256);
  const int64_t offset = a.get_int("--offset", 0);
  po.threads = int(a.get_int("--threads", 0));
  const int64_t ttl = a.get_int("--ttl", 0);
  if (a.failed()) return 2;
  if (a.has("--ttl") && (ttl < 1 || ttl > int64_t(UINT32_MAX)))
    return a.fail("--ttl must be in 1.." + std::to_string(UINT32_MAX) + " seconds");
  po.ttl_seconds = uint32_t(ttl);
  if (chunk_tokens < 1 || chunk_tokens > kMaxChunkTokens)
    return a.fail("--chunk-tokens must be in 1.." + std::to_string(kMaxChunkTokens));
  if (offset < 0 || po.threads < 0) return a.fail("--offset and --threads must be >= 0");
  po.chunk_tokens = uint32_t(chunk_tokens);

  auto kv = load_kv(a.positionals()[0]);
  if (!kv.ok()) return a.fail(kv.status());
  if (a.has("--text")) {
    std::ifstream f(a.get("--text"), std::ios::binary);
    if (!f) return a.fail(NotFound("cannot read " + a.get("--text")));
    std::stringstream text;
    text << f.rdbuf();
    auto tok = Tokenizer::open(a.get("--tokenizer"));
    if (!tok.ok()) return a.fail(tok.status());
    auto ids = context_tokens(*tok, text.str(), uint64_t(offset), kv->shape.tokens);
    if (!ids.ok()) return a.fail(ids.status().with_context("--text"));
    po.text_tokens = std::move(*ids);
  }
  auto store = open_cli_store(a.get("--store"));
  if (!store.ok()) return a.fail(store.status());
  auto m = put_context(**store, a.get("--id"), kv->view(), po);
  if (!m.ok()) return a.fail(m.status());
  if (a.has("--json")) {
    std::printf("%s\n", manifest_json(*m, a.get("--id")).c_str());
    return 0;
  }
  std::printf("stored '%s' in %s: %u tokens in %u chunks of %u, %s, text %s\n", a.get("--id").c_str(),
              (*store)->uri().c_str(), m->shape.tokens, m->num_chunks(), m->chunk_tokens, dtype_name(m->dtype),
              m->has_text() ? "yes" : "no");
  std::printf("%6s %12s %10s %10s %10s\n", "level", "bytes", "bits/elem", "rel.err", "dec GB/s");
  for (const auto& l : m->levels)
    std::printf("%6d %12llu %10.3f %10.5f %10.2f\n", l.level, static_cast<unsigned long long>(l.frame_bytes()),
                8.0 * double(l.frame_bytes()) / double(m->shape.elements()), l.rel_error, l.decode_gbps);
  return 0;
}

}  // namespace kvcodec::cli
