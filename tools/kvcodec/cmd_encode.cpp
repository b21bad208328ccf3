// kvcodec encode: compresses a KV cache file (.safetensors / .npy) into a .kvc frame.
#include <chrono>
#include <cstdio>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"

namespace kvcodec::cli {
namespace {

// An integer option that must lie in [lo, hi]; reports through Args::fail otherwise.
int64_t int_in_range(Args& a, const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const int64_t v = a.get_int(name, fallback);
  if (!a.failed() && (v < lo || v > hi))
    a.fail(std::string(name) + " must be in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " +
           std::to_string(v));
  return v;
}

}  // namespace

int cmd_encode(int argc, char** argv) {
  Args a("encode",
         "kvcodec encode IN -o OUT.kvc [--level N] [--chunk-tokens N] [--group-tokens N] "
         "[--table-groups N] [--threads N]");
  a.positional("IN", "KV cache, .safetensors or .npy (docs/file-conventions.md)")
      .option("--output", "output frame (.kvc), written atomically", "-o")
      .option("--level", "quality level: 0 lossless, 1..9 lossy (default 4)")
      .option("--chunk-tokens", "tokens per independently decodable chunk (default 256)")
      .option("--group-tokens", "tokens per anchor/delta group, 1 = no deltas (default 1)")
      .option("--table-groups", "probability tables per layer and K/V, 1..16 (default 8)")
      .option("--threads", "worker threads, 0 = all cores (default 0); output does not depend on it");
  if (!a.parse(argc, argv)) return a.exit_code();

  const EncodeOptions defaults;
  EncodeOptions o;
  o.level = int(int_in_range(a, "--level", defaults.level, 0, kMaxLevel));
  o.chunk_tokens = uint32_t(int_in_range(a, "--chunk-tokens", defaults.chunk_tokens, 1, kMaxChunkTokens));
  o.group_tokens = uint32_t(int_in_range(a, "--group-tokens", defaults.group_tokens, 1, kMaxGroupTokens));
  o.table_groups = uint32_t(int_in_range(a, "--table-groups", defaults.table_groups, 1, kMaxTableGroups));
  o.threads = int(int_in_range(a, "--threads", 0, 0, 4096));
  if (a.failed()) return 2;
  if (!a.has("--output")) return a.fail("missing -o OUT.kvc");
  const std::string in = a.positionals()[0], out = a.get("--output");

  StatusOr<KVFile> kv = KVFile::open(in);  // the file read once, viewed in place
  if (!kv.ok()) return a.fail(kv.status());
  if (Status s = validate_options(o); !s.ok()) return a.fail(s);

  size_t size = 0;
  double seconds = 0;
  const Status st = write_file_with(out, max_encoded_size(kv->shape(), kv->dtype(), o), [&](std::span<uint8_t> frame) {
    const auto start = std::chrono::steady_clock::now();
    StatusOr<size_t> n = encode_into(kv->view(), o, frame);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (n.ok()) size = *n;
    return n;
  });
  if (!st.ok()) return a.fail(st);

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
