// kvcodec decode: decompresses a .kvc frame into a single "kv" tensor file.
#include <chrono>
#include <cstdio>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"

namespace kvcodec::cli {

int cmd_decode(int argc, char** argv) {
  Args a("decode", "kvcodec decode IN.kvc -o OUT.safetensors [--threads N] [--max-decoded-bytes B]");
  a.positional("IN.kvc", "frame written by kvcodec encode")
      .option("--output", "output: .safetensors (any dtype) or .npy (f32, f16); one tensor 'kv'", "-o")
      .option("--threads", "worker threads, 0 = all cores (default 0)")
      .option("--max-decoded-bytes", "refuse frames that decode to more bytes, 0 = no limit (default 4 GiB)");
  if (!a.parse(argc, argv)) return a.exit_code();
  const int64_t threads = a.get_int("--threads", 0);
  const int64_t max_decoded = a.get_int("--max-decoded-bytes", int64_t(4) << 30);
  if (a.failed()) return 2;
  if (threads < 0 || threads > 4096) return a.fail("--threads must be in 0..4096");
  if (max_decoded < 0) return a.fail("--max-decoded-bytes must be >= 0");
  if (!a.has("--output")) return a.fail("missing -o OUT.safetensors");
  const std::string in = a.positionals()[0], out = a.get("--output");

  StatusOr<FileBytes> frame = FileBytes::read(in);
  if (!frame.ok()) return a.fail(frame.status());
  StatusOr<FrameInfo> info = read_frame_info(frame->bytes());
  if (!info.ok()) return a.fail(info.status().with_context(in));
  DecodeOptions o;
  o.threads = int(threads);
  o.max_decoded_bytes = uint64_t(max_decoded);
  if (o.max_decoded_bytes && decoded_bytes(*info, o) > o.max_decoded_bytes)  // before allocating
    return a.fail(ResourceExhausted(in + " decodes to " + std::to_string(decoded_bytes(*info, o)) +
                                    " bytes, over --max-decoded-bytes " + std::to_string(o.max_decoded_bytes)));
  // Decoded a few layers at a time into one buffer and written as they come (no whole-cache copy).
  double seconds = 0;
  bool decode_failed = false;
  const Status st = save_kv_by_layers(out, info->dtype, info->shape, [&](uint32_t lb, uint32_t le, const KVView& v) {
    DecodeOptions layers = o;
    layers.layer_begin = lb;
    layers.layer_end = le;
    layers.verify_checksums = lb == 0;  // chunk checksums cover every layer: checked with the first
    const auto start = std::chrono::steady_clock::now();
    Status s = decode_into(frame->bytes(), v, layers);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    decode_failed = !s.ok();
    return s;
  });
  if (!st.ok()) return a.fail(decode_failed ? st.with_context(in) : st);

  const KVShape& sh = info->shape;
  const size_t bytes = size_t(decoded_bytes(*info, o));
  std::printf("%s: %s [%u layers x 2 x %u tokens x %u kv_heads x %u head_dim], %zu bytes, decoded in %.3f s (%.1f MB/s)\n",
              out.c_str(), dtype_name(info->dtype), sh.layers, sh.tokens, sh.kv_heads, sh.head_dim, bytes, seconds,
              double(bytes) / 1e6 / seconds);
  return 0;
}

}  // namespace kvcodec::cli
