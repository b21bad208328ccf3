// kvcodec put: store a KV cache as multi-level chunks (store.hpp).
//
//   kvcodec put --store URI --id NAME IN.safetensors [--levels LIST] [--chunk-tokens N]
//               [--text FILE --tokenizer T|bytes [--offset B]] [--ttl SECONDS] [--threads N] [--json]
//               [--profile P.kvprofile [--first-position N]]
#include <cstdio>
#include <optional>
#include <fstream>
#include <sstream>

#include "cli.hpp"
#include "commands.hpp"
#include "profile_file.hpp"
#include "stream_cli.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/store.hpp"
#include "kvcodec/tokenizer.hpp"

namespace kvcodec::cli {
namespace {

// The options of `kvcodec put`; the encoder's settings are bound straight to PutOptions.
struct PutArgs {
  std::string in, store, id;
  std::optional<std::string> text, tokenizer;  // the text fallback: both or neither
  std::optional<std::string> profile;
  int64_t offset = 0;
  bool json = false;
  PutOptions put = [] {
    PutOptions o;
    o.threads = 0;  // all cores
    return o;
  }();
};

void declare(Command& cmd, PutArgs& o) {
  cmd.positional("IN", o.in, "KV cache (.safetensors or .npy, conventions in docs/file-conventions.md)");
  cmd.option("--store", o.store, "mem:, file:DIR, redis://HOST:PORT[/DB] or redis-cluster://HOST:PORT[,HOST:PORT...]");
  cmd.option("--id", o.id, "context id ([A-Za-z0-9._-], 1..200 characters)");
  cmd.option("--levels", o.put.levels, "comma-separated levels to store (default 0,2,4,6,8)", Range{0, kMaxLevel});
  cmd.option("--chunk-tokens", o.put.chunk_tokens, "tokens per chunk (default 256)", Range{1, kMaxChunkTokens});
  cmd.option("--text", o.text, "text the context was prefilled from: its token ids are stored for the text fallback");
  cmd.option("--tokenizer", o.tokenizer, "tokenizer of --text: a llama2.c tokenizer .bin or 'bytes'");
  cmd.option("--offset", o.offset, "byte offset of the context in --text (default 0), as for kv-dump", Range{0});
  cmd.option("--ttl", o.put.ttl_seconds,
             "every key of the context expires SECONDS after the put (default: never; not file:)", Range{1, UINT32_MAX});
  cmd.option("--threads", o.put.threads, "encoder threads (default 0 = all cores)", Range{0, 4096});
  cmd.option("--profile", o.profile, "transform-code the lossy levels with this profile (kvcodec calibrate); fetch needs it too");
  cmd.option("--first-position", o.put.first_position, "RoPE position of the first token (with --profile; default 0)",
             Range{0, kMaxTokens - 1});
  cmd.flag("--json", o.json, "print the manifest summary as JSON");
}

}  // namespace

int cmd_put(int argc, char** argv) {
  Command cmd("put",
              "kvcodec put --store URI --id NAME IN.safetensors [--levels LIST] [--chunk-tokens N] "
              "[--text FILE --tokenizer T|bytes [--offset B]] [--ttl SECONDS] [--threads N] [--json] "
              "[--profile P.kvprofile [--first-position N]]");
  PutArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (a.store.empty() || a.id.empty()) return cmd.usage_error("--store and --id are required");
  if (a.text.has_value() != a.tokenizer.has_value()) return cmd.usage_error("--text and --tokenizer go together");
  if (a.put.levels.empty()) return cmd.usage_error("--levels is empty");
  PutOptions& po = a.put;

  if (a.profile) {
    StatusOr<Profile> p = load_profile(*a.profile);
    if (!p.ok()) return cmd.fail(p.status());
    std::fprintf(stderr, "profile %s: %llu bytes\n", digest_hex(p->digest).c_str(),
                 static_cast<unsigned long long>(serialized_profile_size(*p)));
    po.profile = std::make_shared<const Profile>(std::move(*p));
  }
  auto kv = load_kv(a.in);
  if (!kv.ok()) return cmd.fail(kv.status());
  if (a.text) {
    std::ifstream f(*a.text, std::ios::binary);
    if (!f) return cmd.fail(NotFound("cannot read " + *a.text));
    std::stringstream text;
    text << f.rdbuf();
    auto tok = Tokenizer::open(*a.tokenizer);
    if (!tok.ok()) return cmd.fail(tok.status());
    auto ids = context_tokens(*tok, text.str(), uint64_t(a.offset), kv->shape.tokens);
    if (!ids.ok()) return cmd.fail(ids.status().with_context("--text"));
    po.text_tokens = std::move(*ids);
  }
  auto store = open_cli_store(a.store);
  if (!store.ok()) return cmd.fail(store.status());
  auto m = put_context(**store, a.id, kv->view(), po);
  if (!m.ok()) return cmd.fail(m.status());
  if (a.json) {
    std::printf("%s\n", manifest_json(*m, a.id).c_str());
    return 0;
  }
  std::printf("stored '%s' in %s: %u tokens in %u chunks of %u, %s, text %s\n", a.id.c_str(),
              (*store)->uri().c_str(), m->shape.tokens, m->num_chunks(), m->chunk_tokens, dtype_name(m->dtype),
              m->has_text() ? "yes" : "no");
  std::printf("%6s %12s %10s %10s %10s\n", "level", "bytes", "bits/elem", "rel.err", "dec GB/s");
  for (const auto& l : m->levels)
    std::printf("%6d %12llu %10.3f %10.5f %10.2f\n", l.level, static_cast<unsigned long long>(l.frame_bytes()),
                8.0 * double(l.frame_bytes()) / double(m->shape.elements()), l.rel_error, l.decode_gbps);
  return 0;
}

}  // namespace kvcodec::cli
