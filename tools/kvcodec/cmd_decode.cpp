// kvcodec decode: decompresses a .kvc frame into a single "kv" tensor file.
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

// The options of `kvcodec decode`.
struct DecodeArgs {
  std::string in, output, profile;
  int threads = 0;                              // all cores
  int64_t max_decoded_bytes = int64_t(4) << 30;  // 0 = no limit
};

void declare(Command& cmd, DecodeArgs& o) {
  cmd.positional("IN.kvc", o.in, "frame written by kvcodec encode");
  cmd.option("-o,--output", o.output, "output: .safetensors (any dtype) or .npy (f32, f16); one tensor 'kv'");
  cmd.option("--threads", o.threads, "worker threads, 0 = all cores (default 0)", Range{0, 4096});
  cmd.option("--max-decoded-bytes", o.max_decoded_bytes,
             "refuse frames that decode to more bytes, 0 = no limit (default 4 GiB)", Range{0, INT64_MAX});
  cmd.option("--profile", o.profile, "the profile a transform-coded frame (format version 4) was encoded with");
}

}  // namespace

int cmd_decode(int argc, char** argv) {
  Command cmd("decode", "kvcodec decode IN.kvc -o OUT.safetensors [--threads N] [--max-decoded-bytes B] [--profile P.kvprofile]");
  DecodeArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (a.output.empty()) return cmd.usage_error("missing -o OUT.safetensors");
  const std::string& in = a.in;
  const std::string& out = a.output;

  StatusOr<FileBytes> frame = FileBytes::read(in);
  if (!frame.ok()) return cmd.fail(frame.status());
  StatusOr<FrameInfo> info = read_frame_info(frame->bytes());
  if (!info.ok()) return cmd.fail(info.status().with_context(in));
  std::optional<Profile> profile;
  if (!a.profile.empty()) {
    StatusOr<Profile> p = load_profile(a.profile);
    if (!p.ok()) return cmd.fail(p.status());
    profile = std::move(*p);
  }
  if (Status s = check_frame_profile(*info, profile ? &*profile : nullptr); !s.ok()) return cmd.fail(s.with_context(in));
  DecodeOptions o;
  o.threads = a.threads;
  o.max_decoded_bytes = uint64_t(a.max_decoded_bytes);
  if (o.max_decoded_bytes && decoded_bytes(*info, o) > o.max_decoded_bytes)  // before allocating
    return cmd.fail(ResourceExhausted(in + " decodes to " + std::to_string(decoded_bytes(*info, o)) +
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
    Status s = profile ? decode_into(frame->bytes(), *profile, v, layers) : decode_into(frame->bytes(), v, layers);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    decode_failed = !s.ok();
    return s;
  });
  if (!st.ok()) return cmd.fail(decode_failed ? st.with_context(in) : st);

  const KVShape& sh = info->shape;
  const size_t bytes = size_t(decoded_bytes(*info, o));
  std::printf("%s: %s [%u layers x 2 x %u tokens x %u kv_heads x %u head_dim], %zu bytes, decoded in %.3f s (%.1f MB/s)\n",
              out.c_str(), dtype_name(info->dtype), sh.layers, sh.tokens, sh.kv_heads, sh.head_dim, bytes, seconds,
              double(bytes) / 1e6 / seconds);
  return 0;
}

}  // namespace kvcodec::cli
