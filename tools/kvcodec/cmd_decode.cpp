// kvcodec decode: decompresses a .kvc frame into a single "kv" tensor file.
#include <chrono>
#include <cstdio>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"

namespace kvcodec::cli {
namespace {

// The options of `kvcodec decode`.
struct DecodeArgs {
  std::string in, output;
  int threads = 0;                              // all cores
  int64_t max_decoded_bytes = int64_t(4) << 30;  // 0 = no limit
};

void declare(Command& cmd, DecodeArgs& o) {
  cmd.positional("IN.kvc", o.in, "frame written by kvcodec encode");
  cmd.option("-o,--output", o.output, "output: .safetensors (any dtype) or .npy (f32, f16); one tensor 'kv'");
  cmd.option("--threads", o.threads, "worker threads, 0 = all cores (default 0)", Range{0, 4096});
  cmd.option("--max-decoded-bytes", o.max_decoded_bytes,
             "refuse frames that decode to more bytes, 0 = no limit (default 4 GiB)", Range{0, INT64_MAX});
}

}  // namespace

int cmd_decode(int argc, char** argv) {
  Command cmd("decode", "kvcodec decode IN.kvc -o OUT.safetensors [--threads N] [--max-decoded-bytes B]");
  DecodeArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (a.output.empty()) return cmd.usage_error("missing -o OUT.safetensors");
  const std::string& in = a.in;
  const std::string& out = a.output;

  StatusOr<std::vector<uint8_t>> frame = read_file(in);
  if (!frame.ok()) return cmd.fail(frame.status());
  StatusOr<FrameInfo> info = read_frame_info(*frame);
  if (!info.ok()) return cmd.fail(info.status().with_context(in));
  DecodeOptions o;
  o.threads = a.threads;
  o.max_decoded_bytes = uint64_t(a.max_decoded_bytes);
  if (o.max_decoded_bytes && decoded_bytes(*info, o) > o.max_decoded_bytes)  // before allocating
    return cmd.fail(ResourceExhausted(in + " decodes to " + std::to_string(decoded_bytes(*info, o)) +
                                    " bytes, over --max-decoded-bytes " + std::to_string(o.max_decoded_bytes)));
  StatusOr<KVCache> kv = KVCache::allocate(info->dtype, info->shape);
  if (!kv.ok()) return cmd.fail(kv.status());

  const auto start = std::chrono::steady_clock::now();
  if (Status s = decode_into(*frame, kv->view(), o); !s.ok()) return cmd.fail(s.with_context(in));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (Status s = save_kv(out, *kv); !s.ok()) return cmd.fail(s);

  const KVShape& sh = kv->shape;
  std::printf("%s: %s [%u layers x 2 x %u tokens x %u kv_heads x %u head_dim], %zu bytes, decoded in %.3f s (%.1f MB/s)\n",
              out.c_str(), dtype_name(kv->dtype), sh.layers, sh.tokens, sh.kv_heads, sh.head_dim,
              kv->data.size(), seconds, double(kv->data.size()) / 1e6 / seconds);
  return 0;
}

}  // namespace kvcodec::cli
