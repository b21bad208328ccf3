// kvcodec calibrate: a transform-coding profile (include/kvcodec/profile.hpp, docs/format.md 8)
// of a model, from the caches of contexts of a calibration text, or from KV cache files already
// dumped; `encode --profile` uses it.
#include <cinttypes>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "common/hex.hpp"
#include "commands.hpp"
#include "kvcodec/eval.hpp"
#include "kvcodec/io.hpp"
#include "profile_file.hpp"

namespace kvcodec::cli {

std::string digest_hex(uint64_t digest) { return detail::hex64(digest); }

namespace {

struct CalibrateArgs {
  eval::CalibrateOptions cal;
  std::vector<std::string> kv_files;
  std::optional<double> rope_theta;
  std::string output;
  std::string keys = "before-rope";
  std::string models = "on";
  std::string steps = "rd";
};

void declare(Command& cmd, CalibrateArgs& o) {
  eval::CalibrateOptions& c = o.cal;
  cmd.option("--model", c.model_path, "llama2.c checkpoint (e.g. ../shared/data/models/kvc-bytes-a.bin)");
  cmd.option("--tokenizer", c.tokenizer, "llama2.c tokenizer .bin, or 'bytes' for byte-level models (default bytes)");
  cmd.option("--text", c.text_path,
             "calibration text file(s), comma-separated (other texts than the caches the profile will code; "
             "several make the rate-distortion steps robust)");
  cmd.option("--contexts", c.contexts, "contexts, alternating between the texts, spread evenly over each (default 8)",
             Range{1, 100000});
  cmd.option("--context-tokens", c.context_tokens, "tokens per context (default 3/4 of seq_len)", Range{0, kMaxTokens});
  cmd.option("--keys", o.keys, "before-rope (keys decorrelated with RoPE undone, the default) or after-rope");
  cmd.option("--models", o.models, "on (default): also the stored layer models (profile version 2: frames reference "
             "their tables instead of carrying them), or off (version 1)");
  cmd.option("--steps", o.steps,
             "rd (default with --model): the layer models' steps moved half way from rms's toward an allocation on "
             "each (layer, K/V)'s measured sensitivity (next-token KL under noise); rms: layer_factor and RMS as "
             "without a profile (the only choice for KV files)");
  cmd.option("--rope-theta", o.rope_theta, "the model's RoPE base, for KV files with --keys before-rope");
  cmd.app().add_option("KV", o.kv_files, "KV cache files (.safetensors or .npy) of the model, instead of --model");
  cmd.option("-o,--output", o.output, "output profile (.kvprofile), written atomically");
}

}  // namespace

int cmd_calibrate(int argc, char** argv) {
  Command cmd("calibrate",
              "kvcodec calibrate --model M.bin --tokenizer T.bin|bytes --text FILE -o OUT.kvprofile [--contexts N] "
              "[--context-tokens N] [--keys before-rope|after-rope], or kvcodec calibrate KV1 [KV2 ...] "
              "-o OUT.kvprofile [--keys after-rope | --rope-theta X]");
  CalibrateArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  const bool from_files = !a.kv_files.empty();
  if (from_files && !a.cal.model_path.empty()) return cmd.usage_error("give KV files or --model, not both");
  if (!from_files && (a.cal.model_path.empty() || a.cal.text_path.empty()))
    return cmd.usage_error("--model and --text are required (or KV cache files)");
  if (a.output.empty()) return cmd.usage_error("missing -o OUT.kvprofile");
  if (a.keys != "before-rope" && a.keys != "after-rope") return cmd.usage_error("--keys: expected before-rope or after-rope");
  a.cal.keys_before_rope = a.keys == "before-rope";
  if (a.models != "on" && a.models != "off") return cmd.usage_error("--models: expected on or off");
  a.cal.models = a.models == "on";
  if (a.steps != "rd" && a.steps != "rms") return cmd.usage_error("--steps: expected rd or rms");
  a.cal.rd = a.cal.models && !from_files && a.steps == "rd";
  if (from_files && a.cal.keys_before_rope && !a.rope_theta)
    return cmd.usage_error("KV files with --keys before-rope need --rope-theta (the model's RoPE base), or use --keys after-rope");
  auto calibrate = [&]() -> StatusOr<Profile> {
    if (!from_files) return eval::calibrate_model_profile(a.cal);
    std::vector<KVCache> caches;
    for (const std::string& path : a.kv_files) {
      StatusOr<KVCache> kv = load_kv(path);
      if (!kv.ok()) return kv.status();  // names the file
      caches.push_back(std::move(*kv));
    }
    return eval::calibrate_kv_profile(caches, a.cal.keys_before_rope, a.rope_theta.value_or(0), a.cal.models);
  };
  StatusOr<Profile> p = calibrate();
  if (!p.ok()) return cmd.fail(p.status());
  const std::vector<uint8_t> bytes = serialize_profile(*p);
  const Status st = write_file_with(a.output, bytes.size(), [&](std::span<uint8_t> out) -> StatusOr<size_t> {
    std::copy(bytes.begin(), bytes.end(), out.begin());
    return bytes.size();
  });
  if (!st.ok()) return cmd.fail(st);
  std::printf("%s: profile version %d of %u layers x 2 x %u kv_heads x %u head_dim, keys %s, %zu bytes, digest %016" PRIx64
              "\n", a.output.c_str(), p->models.empty() ? 1 : 2, p->layers, p->kv_heads, p->head_dim,
              a.cal.keys_before_rope ? "before RoPE" : "after RoPE", bytes.size(), p->digest);
  return 0;
}

}  // namespace kvcodec::cli
