// kvcodec inspect: describes a .kvc frame (parameters, section sizes, chunk index) and verifies
// its checksums. Exit status 1 (and one line on stderr) when a checksum does not match, after
// the description has been printed.
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/io.hpp"
#include "profile_file.hpp"

namespace kvcodec::cli {
namespace {

// The options of `kvcodec inspect`.
struct InspectArgs {
  std::string in, profile;
  bool json = false;     // one JSON object instead of text
  bool entropy = false;  // decode every stream and compare with the empirical entropy
};

void declare(Command& cmd, InspectArgs& o) {
  cmd.positional("IN.kvc", o.in, "frame written by kvcodec encode");
  cmd.flag("--json", o.json, "print one JSON object instead of text");
  cmd.flag("--entropy", o.entropy, "decode every stream and compare the payload with the symbols' empirical entropy");
  cmd.option("--profile", o.profile, "check a transform-coded frame (format version 4) against this profile");
}

const char* step_mode_name(StepMode m) { return m == StepMode::kLayer ? "layer" : "channel"; }

// Shortest decimal that reads back as the same double (valid JSON for finite values).
std::string number(double v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

// Relative excess of `bits` over `reference`, in percent.
double excess_pct(double bits, double reference) { return reference > 0 ? 100.0 * (bits - reference) / reference : 0.0; }

void print_json(const FrameInfo& f, uint64_t file_bytes, const Status& verified, const FrameStats* st) {
  std::printf("{\"format_version\": %u, \"dtype\": \"%s\", \"layers\": %u, \"kv_heads\": %u, "
              "\"head_dim\": %u, \"tokens\": %u, \"chunks\": %zu, \"level\": %d, \"chunk_tokens\": %u, "
              "\"group_tokens\": %u, \"table_groups\": %u, \"step_mode\": \"%s\", ",
              f.format_version, dtype_name(f.dtype), f.shape.layers, f.shape.kv_heads, f.shape.head_dim,
              f.shape.tokens, f.chunks.size(), f.level, f.chunk_tokens, f.group_tokens, f.table_groups,
              step_mode_name(f.step_mode));
  std::printf("\"bits_per_element\": %s, \"uncompressed_bytes\": %" PRIu64 ", \"table_bytes\": %" PRIu64
              ", \"model_bytes\": %" PRIu64 ", \"head_bytes\": %" PRIu64 ", \"payload_bytes\": %" PRIu64
              ", \"frame_bytes\": %" PRIu64 ", \"file_bytes\": %" PRIu64 ", \"checksum_ok\": %s, ",
              number(f.bits_per_element()).c_str(), f.shape.elements() * dtype_size(f.dtype), f.table_bytes,
              f.model_bytes, f.head_bytes, f.payload_bytes(), f.frame_bytes, file_bytes,
              verified.ok() ? "true" : "false");
  if (st)
    std::printf("\"entropy\": {\"symbols\": %" PRIu64 ", \"escapes\": %" PRIu64 ", \"entropy_bits\": %s, "
                "\"model_bits\": %s, \"word_bytes\": %" PRIu64 ", \"lane_bytes\": %" PRIu64
                ", \"escape_bytes\": %" PRIu64 ", \"raw_plane_bytes\": %" PRIu64
                ", \"words_over_entropy_pct\": %s, \"lanes_over_entropy_pct\": %s}, ",
                st->symbols, st->escapes, number(st->entropy_bits).c_str(), number(st->model_bits).c_str(),
                st->word_bytes, st->lane_bytes, st->escape_bytes, st->raw_plane_bytes,
                number(excess_pct(8.0 * double(st->word_bytes), st->entropy_bits)).c_str(),
                number(excess_pct(8.0 * double(st->lane_bytes), st->entropy_bits)).c_str());
  if (f.transformed)
    std::printf("\"profile_digest\": \"%s\", \"first_position\": %u, \"profile_model_refs\": %u, ",
                digest_hex(f.profile_digest).c_str(), f.first_position, f.profile_model_refs);
  std::printf("\"chunk_list\": [");
  for (size_t i = 0; i < f.chunks.size(); ++i) {
    const ChunkInfo& c = f.chunks[i];
    std::printf("%s{\"index\": %zu, \"token_begin\": %u, \"tokens\": %u, \"offset\": %" PRIu64
                ", \"bytes\": %u, \"checksum\": \"%016" PRIx64 "\"}",
                i ? ", " : "", i, c.token_begin, c.tokens, c.offset, c.size, c.checksum);
  }
  std::printf("]}\n");
}

void print_text(const std::string& path, const FrameInfo& f, uint64_t file_bytes, const Status& verified,
                const FrameStats* st) {
  const uint64_t raw = f.shape.elements() * dtype_size(f.dtype);
  std::printf("frame         %s (format version %u)\n", path.c_str(), f.format_version);
  std::printf("cache         %s, %u layers x {K,V} x %u tokens x %u kv_heads x %u head_dim (%" PRIu64 " bytes)\n",
              dtype_name(f.dtype), f.shape.layers, f.shape.tokens, f.shape.kv_heads, f.shape.head_dim, raw);
  std::printf("coding        level %d%s, step mode %s, %u tokens per chunk, %u per group, %u table groups\n",
              f.level, f.level == 0 ? " (lossless)" : "", step_mode_name(f.step_mode), f.chunk_tokens,
              f.group_tokens, f.table_groups);
  std::printf("size          %" PRIu64 " bytes = head %" PRIu64 " (model %" PRIu64 ", of which tables %" PRIu64
              ") + payload %" PRIu64 "\n",
              f.frame_bytes, f.head_bytes, f.model_bytes, f.table_bytes, f.payload_bytes());
  if (file_bytes < f.frame_bytes)
    std::printf("file          %" PRIu64 " bytes (truncated: %" PRIu64 " bytes of the frame missing)\n", file_bytes,
                f.frame_bytes - file_bytes);
  else if (file_bytes > f.frame_bytes)
    std::printf("file          %" PRIu64 " bytes (%" PRIu64 " bytes after the frame)\n", file_bytes,
                file_bytes - f.frame_bytes);
  std::printf("rate          %.4f bits/element, %.2fx smaller than %s\n", f.bits_per_element(),
              double(raw) / double(f.frame_bytes), dtype_name(f.dtype));
  if (f.transformed)
    std::printf("transform     per-head PCA with profile %s, first position %u (decode needs --profile)\n",
                digest_hex(f.profile_digest).c_str(), f.first_position);
  if (f.profile_models)
    std::printf("models        %u of %u (layer, K/V) reference the profile's layer model, the others carry their own "
                "tables (steps and centres are the profile's)\n", f.profile_model_refs, 2 * f.shape.layers);
  std::printf("checksums     %s\n", verified.ok() ? "ok" : verified.to_string().c_str());
  std::printf("tables        %.3f%% of the frame\n", 100.0 * double(f.table_bytes) / double(f.frame_bytes));
  if (st) {
    std::printf("entropy       %" PRIu64 " symbols (%" PRIu64 " escaped): empirical entropy %.0f bytes under the frame's "
                "model;\n              rANS lane streams %" PRIu64 " bytes (%+.3f%%; the words alone %" PRIu64 ", %+.3f%%)\n",
                st->symbols, st->escapes, st->entropy_bits / 8, st->lane_bytes,
                excess_pct(8.0 * double(st->lane_bytes), st->entropy_bits), st->word_bytes,
                excess_pct(8.0 * double(st->word_bytes), st->entropy_bits));
    if (st->raw_plane_bytes)
      std::printf("raw planes    %" PRIu64 " bytes of byte planes kept as they are (format version 5)\n",
                  st->raw_plane_bytes);
  }
  std::printf("\n%6s %12s %8s %14s %10s  %s\n", "chunk", "first token", "tokens", "offset", "bytes", "xxh64");
  for (size_t i = 0; i < f.chunks.size(); ++i) {
    const ChunkInfo& c = f.chunks[i];
    std::printf("%6zu %12u %8u %14" PRIu64 " %10u  %016" PRIx64 "\n", i, c.token_begin, c.tokens, c.offset, c.size,
                c.checksum);
  }
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  Command cmd("inspect", "kvcodec inspect IN.kvc [--json] [--entropy] [--profile P.kvprofile]");
  InspectArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  const std::string& in = a.in;

  StatusOr<std::vector<uint8_t>> frame = read_file(in);
  if (!frame.ok()) return cmd.fail(frame.status());
  StatusOr<FrameInfo> info = read_frame_info(*frame);
  if (!info.ok()) return cmd.fail(info.status().with_context(in));
  std::optional<Profile> profile;
  if (!a.profile.empty()) {
    StatusOr<Profile> p = load_profile(a.profile);
    if (!p.ok()) return cmd.fail(p.status());
    if (Status s = check_frame_profile(*info, &*p); !s.ok()) return cmd.fail(s.with_context(in));
    profile = std::move(*p);
  }
  const Status verified = verify_frame(*frame);
  std::optional<FrameStats> stats;
  if (a.entropy && verified.ok()) {
    auto s = profile ? analyze_frame(*frame, *profile) : analyze_frame(*frame);
    if (!s.ok()) return cmd.fail(s.status().with_context(in));
    stats = *s;
  }
  const FrameStats* st = stats ? &*stats : nullptr;
  if (a.json)
    print_json(*info, frame->size(), verified, st);
  else
    print_text(in, *info, frame->size(), verified, st);
  std::fflush(stdout);
  return verified.ok() ? 0 : cmd.fail(verified.with_context(in));
}

}  // namespace kvcodec::cli
