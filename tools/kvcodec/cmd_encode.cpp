// kvcodec encode: compresses a KV cache file (.safetensors / .npy) into a .kvc frame.
#include <chrono>
#include <cstdio>
#include <optional>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "profile_file.hpp"

namespace kvcodec::cli {
namespace {

// The options of `kvcodec encode`; the codec's settings are bound straight to EncodeOptions.
struct EncodeArgs {
  std::string in, output, profile;
  uint32_t first_position = 0;
  EncodeOptions codec = [] {
    EncodeOptions o;
    o.threads = 0;  // all cores: the output does not depend on it
    return o;
  }();
};

void declare(Command& cmd, EncodeArgs& o) {
  cmd.positional("IN", o.in, "KV cache, .safetensors or .npy (docs/file-conventions.md)");
  cmd.option("-o,--output", o.output, "output frame (.kvc), written atomically");
  cmd.option("--level", o.codec.level, "quality level: 0 lossless, 1..9 lossy (default 4)", Range{0, kMaxLevel});
  cmd.option("--chunk-tokens", o.codec.chunk_tokens, "tokens per independently decodable chunk (default 256)",
             Range{1, kMaxChunkTokens});
  cmd.option("--group-tokens", o.codec.group_tokens, "tokens per anchor/delta group, 1 = no deltas (default 1)",
             Range{1, kMaxGroupTokens});
  cmd.option("--table-groups", o.codec.table_groups, "probability tables per layer and K/V, 1..16 (default 8)",
             Range{1, kMaxTableGroups});
  cmd.option("--threads", o.codec.threads, "worker threads, 0 = all cores (default 0); output does not depend on it",
             Range{0, 4096});
  cmd.option("--profile", o.profile, "transform-code with this profile (kvcodec calibrate; format version 4, levels 1..9)");
  cmd.option("--first-position", o.first_position, "RoPE position of the first token (with --profile; default 0)",
             Range{0, kMaxTokens - 1});
}

}  // namespace

int cmd_encode(int argc, char** argv) {
  Command cmd("encode",
              "kvcodec encode IN -o OUT.kvc [--level N] [--chunk-tokens N] [--group-tokens N] "
              "[--table-groups N] [--threads N] [--profile P.kvprofile [--first-position N]]");
  EncodeArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (a.output.empty()) return cmd.usage_error("missing -o OUT.kvc");
  const std::string& in = a.in;
  const std::string& out = a.output;
  const EncodeOptions& o = a.codec;

  StatusOr<KVFile> kv = KVFile::open(in);  // the file read once, viewed in place
  if (!kv.ok()) return cmd.fail(kv.status());
  if (Status s = validate_options(o); !s.ok()) return cmd.fail(s);
  std::optional<Profile> profile;
  if (!a.profile.empty()) {
    StatusOr<Profile> p = load_profile(a.profile);
    if (!p.ok()) return cmd.fail(p.status());
    profile = std::move(*p);
  }
  const size_t capacity = profile ? max_encoded_size(kv->shape(), kv->dtype(), o, *profile)
                                  : max_encoded_size(kv->shape(), kv->dtype(), o);

  size_t size = 0;
  double seconds = 0;
  const Status st = write_file_with(out, capacity, [&](std::span<uint8_t> frame) {
    const auto start = std::chrono::steady_clock::now();
    StatusOr<size_t> n = profile ? encode_into(kv->view(), o, *profile, frame, a.first_position)
                                 : encode_into(kv->view(), o, frame);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (n.ok()) size = *n;
    return n;
  });
  if (!st.ok()) return cmd.fail(st);

  const KVShape& sh = kv->shape();
  const double bytes = double(kv->bytes());
  std::printf("%s: %s [%u layers x 2 x %u tokens x %u kv_heads x %u head_dim], %zu bytes\n", in.c_str(),
              dtype_name(kv->dtype()), sh.layers, sh.tokens, sh.kv_heads, sh.head_dim, size_t(kv->bytes()));
  std::printf("%s: %zu bytes, level %d, %.3f bits/element, %.2fx smaller, encoded in %.3f s (%.1f MB/s)\n",
              out.c_str(), size, o.level, 8.0 * double(size) / double(sh.elements()), bytes / double(size), seconds,
              bytes / 1e6 / seconds);
  return 0;
}

}  // namespace kvcodec::cli
