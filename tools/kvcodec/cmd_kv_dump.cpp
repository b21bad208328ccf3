// `kvcodec kv-dump`: export the KV cache of a real model's prefill, or a synthetic one, or fit
// synthetic statistics to an exported cache.
//
//   kvcodec kv-dump --model M --tokenizer T|bytes --text FILE [--offset B] [--tokens N]
//                   [--dtype f16|bf16|f32] [--threads N] -o kv.safetensors
//   kvcodec kv-dump --synthetic llama3-8b|mistral-7b|llama3-70b --tokens N [--seed S]
//                   [--dtype ...] -o kv.safetensors
//   kvcodec kv-dump --fit-stats a.safetensors[,b.safetensors...] [--rope-theta X]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/model.hpp"
#include "kvcodec/synthetic.hpp"
#include "kvcodec/tokenizer.hpp"

namespace kvcodec::cli {
namespace {

using Clock = std::chrono::steady_clock;

// The options of `kvcodec kv-dump`; exactly one of --model, --synthetic, --fit-stats picks the mode.
struct KvDumpArgs {
  std::optional<std::string> model, synthetic, fit_stats;
  std::optional<std::string> tokenizer, text, output;  // --model needs all three, --synthetic -o
  int64_t offset = 0;
  std::optional<int64_t> tokens;  // --model: default (and 0) the model's seq_len; --synthetic: required
  std::string dtype = "f16";
  int threads = 0;  // all cores
  int64_t seed = 1;
  double rope_theta = 10000.0;
};

void declare(Command& cmd, KvDumpArgs& o) {
  cmd.option("--model", o.model, "llama2.c checkpoint to prefill");
  cmd.option("--tokenizer", o.tokenizer, "llama2.c tokenizer .bin, or 'bytes' (id = byte value, no BOS)");
  cmd.option("--text", o.text, "text file the context is cut from");
  cmd.option("--offset", o.offset, "byte offset of the context in the text (default 0; a cut UTF-8 character is skipped)",
             Range{0});
  cmd.option("--tokens", o.tokens, "context length in tokens, BOS included (default: the model's seq_len)", Range{0});
  cmd.option("--dtype", o.dtype, "dtype of the exported cache: f16 (default), bf16, f32");
  cmd.option("--threads", o.threads, "prefill threads (default: all cores)", Range{0, 65536});
  cmd.option("--synthetic", o.synthetic, "synthetic cache of a real-model shape: llama3-8b, mistral-7b, llama3-70b");
  cmd.option("--seed", o.seed, "seed of the synthetic cache (default 1)");
  cmd.option("--fit-stats", o.fit_stats, "print the synthetic-generator statistics fitted to these KV files (comma-separated)");
  cmd.option("--rope-theta", o.rope_theta, "RoPE base the fitted file's keys were rotated with (default 10000)");
  cmd.option("-o", o.output, "output .safetensors (or .npy) file");
}

void print_shape(const KVCache& kv) {
  const KVShape& s = kv.shape;
  std::printf("shape: layers %u, tokens %u, kv_heads %u, head_dim %u (%s, %.2f MiB)\n", s.layers,
              s.tokens, s.kv_heads, s.head_dim, dtype_name(kv.dtype), double(kv.data.size()) / (1 << 20));
}

// The first bytes of a context as one printable line.
std::string preview(const std::string& text, size_t max_chars) {
  std::string out;
  for (char ch : text.substr(0, max_chars)) {
    if (ch == '\n') out += "\\n";
    else if (static_cast<unsigned char>(ch) < 0x20) out += '?';
    else out += ch;
  }
  return out;
}

int dump_model(const Command& cmd, const KvDumpArgs& a) {
  if (!a.tokenizer) return cmd.usage_error("--model needs --tokenizer");
  if (!a.text) return cmd.usage_error("--model needs --text");
  if (!a.output) return cmd.usage_error("--model needs -o");
  const int64_t offset = a.offset;
  int64_t tokens = a.tokens.value_or(0);

  auto model = Model::load(*a.model);
  if (!model.ok()) return cmd.fail(model.status());
  if (a.threads > 0) model->set_threads(unsigned(a.threads));
  const ModelConfig& c = model->config();
  if (tokens == 0) tokens = c.seq_len;
  if (tokens > c.seq_len)
    return cmd.usage_error("--tokens " + std::to_string(tokens) + " exceeds the model's seq_len " + std::to_string(c.seq_len));
  auto dtype = parse_dtype(a.dtype);
  if (!dtype.ok()) return cmd.fail(dtype.status());

  auto tokenizer = Tokenizer::open(*a.tokenizer);
  if (!tokenizer.ok()) return cmd.fail(tokenizer.status());
  if (tokenizer->vocab_size() != c.vocab_size)
    return cmd.usage_error("tokenizer vocabulary (" + std::to_string(tokenizer->vocab_size()) +
                  ") does not match the model's (" + std::to_string(c.vocab_size) + ")");
  std::ifstream f(*a.text, std::ios::binary);
  if (!f) return cmd.fail(IoError("cannot open " + *a.text));
  std::stringstream text;
  text << f.rdbuf();
  auto ids = context_tokens(*tokenizer, text.str(), uint64_t(offset), uint32_t(tokens));
  if (!ids.ok()) return cmd.fail(ids.status());

  KVState state = model->new_state();
  const auto start = Clock::now();
  if (Status s = model->forward(*ids, state, nullptr); !s.ok()) return cmd.fail(s);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  auto cache = state.to_cache(*dtype);
  if (!cache.ok()) return cmd.fail(cache.status());
  if (Status s = save_kv(*a.output, *cache); !s.ok()) return cmd.fail(s);

  std::printf("context: %u tokens from %s at byte %lld (%s tokenizer): \"%s...\"\n", uint32_t(ids->size()),
              a.text->c_str(), static_cast<long long>(offset),
              tokenizer->is_bytes() ? "bytes" : "llama2.c", preview(tokenizer->decode(*ids), 60).c_str());
  print_shape(*cache);
  std::printf("prefill: %.3f s, %.0f tokens/s (%u threads)\n", seconds, double(ids->size()) / seconds,
              model->threads());
  std::printf("wrote %s\n", a.output->c_str());
  return 0;
}

int dump_synthetic(const Command& cmd, const KvDumpArgs& a) {
  if (!a.output) return cmd.usage_error("--synthetic needs -o");
  if (!a.tokens) return cmd.usage_error("--synthetic needs --tokens");
  const int64_t tokens = *a.tokens, seed = a.seed;
  if (tokens <= 0 || tokens > int64_t(kMaxTokens))
    return cmd.usage_error("--tokens must be in 1.." + std::to_string(kMaxTokens));
  auto dtype = parse_dtype(a.dtype);
  if (!dtype.ok()) return cmd.fail(dtype.status());

  const auto start = Clock::now();
  auto cache = make_synthetic(*a.synthetic, uint32_t(tokens), *dtype, uint64_t(seed));
  if (!cache.ok()) return cmd.fail(cache.status());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (Status s = save_kv(*a.output, *cache); !s.ok()) return cmd.fail(s);
  std::printf("synthetic: %s, seed %lld, statistics fitted to kvc-bytes-a (generated in %.2f s)\n",
              a.synthetic->c_str(), static_cast<long long>(seed), seconds);
  print_shape(*cache);
  std::printf("wrote %s\n", a.output->c_str());
  return 0;
}

int fit_stats(const Command& cmd, const KvDumpArgs& a) {
  const double theta = a.rope_theta;
  std::vector<KVCache> caches;
  std::stringstream list(*a.fit_stats);
  for (std::string path; std::getline(list, path, ',');) {
    auto cache = load_kv(path);
    if (!cache.ok()) return cmd.fail(cache.status().with_context(path));
    caches.push_back(std::move(cache).value());
  }
  auto stats = fit_kv_stats(caches, float(theta));
  if (!stats.ok()) return cmd.fail(stats.status());
  std::printf("# mean statistics of %zu cache(s) (keys un-rotated with RoPE theta %g)\n", caches.size(), theta);
  std::printf("%-5s %-2s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n", "layer", "kv", "logstd", "slope", "spread", "outl_fr",
              "outl_sc", "mean/std", "ar1", "ar1_sd", "kurt");
  for (size_t l = 0; l < stats->layers.size(); ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const ChannelStats& s = stats->layers[l][size_t(kv)];
      std::printf("%-5zu %-2s %8.4f %8.4f %8.4f %8.4f %8.3f %8.4f %8.4f %8.4f %8.3f\n", l, kv ? "V" : "K",
                  s.log_std_mean, s.log_std_slope, s.log_std_spread, s.outlier_fraction, s.outlier_scale,
                  s.mean_to_std, s.ar1_mean, s.ar1_spread, s.kurtosis);
    }
  }
  return 0;
}

}  // namespace

int cmd_kv_dump(int argc, char** argv) {
  Command cmd("kv-dump",
              "kvcodec kv-dump --model M --tokenizer T|bytes --text FILE [--offset B] [--tokens N] [--dtype D] -o OUT\n"
              "       kvcodec kv-dump --synthetic NAME --tokens N [--seed S] [--dtype D] -o OUT\n"
              "       kvcodec kv-dump --fit-stats KV_FILE[,KV_FILE...] [--rope-theta X]");
  KvDumpArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  const int modes = int(a.model.has_value()) + int(a.synthetic.has_value()) + int(a.fit_stats.has_value());
  if (modes != 1) return cmd.usage_error("give exactly one of --model, --synthetic, --fit-stats (see --help)");
  if (a.model) return dump_model(cmd, a);
  if (a.synthetic) return dump_synthetic(cmd, a);
  return fit_stats(cmd, a);
}

}  // namespace kvcodec::cli
