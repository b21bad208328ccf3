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

int dump_model(Args& a) {
  for (const char* required : {"--tokenizer", "--text", "-o"})
    if (!a.has(required)) return a.fail(std::string("--model needs ") + required);
  const int64_t offset = a.get_int("--offset", 0);
  const int64_t threads = a.get_int("--threads", 0);
  int64_t tokens = a.get_int("--tokens", 0);
  if (a.failed()) return 2;
  if (offset < 0 || threads < 0 || tokens < 0) return a.fail("--offset, --threads and --tokens must be >= 0");

  auto model = Model::load(a.get("--model"));
  if (!model.ok()) return a.fail(model.status());
  if (threads > 0) model->set_threads(unsigned(threads));
  const ModelConfig& c = model->config();
  if (tokens == 0) tokens = c.seq_len;
  if (tokens > c.seq_len)
    return a.fail("--tokens " + std::to_string(tokens) + " exceeds the model's seq_len " + std::to_string(c.seq_len));
  auto dtype = parse_dtype(a.get("--dtype", "f16"));
  if (!dtype.ok()) return a.fail(dtype.status());

  auto tokenizer = Tokenizer::open(a.get("--tokenizer"));
  if (!tokenizer.ok()) return a.fail(tokenizer.status());
  if (tokenizer->vocab_size() != c.vocab_size)
    return a.fail("tokenizer vocabulary (" + std::to_string(tokenizer->vocab_size()) +
                  ") does not match the model's (" + std::to_string(c.vocab_size) + ")");
  std::ifstream f(a.get("--text"), std::ios::binary);
  if (!f) return a.fail(IoError("cannot open " + a.get("--text")));
  std::stringstream text;
  text << f.rdbuf();
  auto ids = context_tokens(*tokenizer, text.str(), uint64_t(offset), uint32_t(tokens));
  if (!ids.ok()) return a.fail(ids.status());

  KVState state = model->new_state();
  const auto start = Clock::now();
  if (Status s = model->forward(*ids, state, nullptr); !s.ok()) return a.fail(s);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  auto cache = state.to_cache(*dtype);
  if (!cache.ok()) return a.fail(cache.status());
  if (Status s = save_kv(a.get("-o"), *cache); !s.ok()) return a.fail(s);

  std::printf("context: %u tokens from %s at byte %lld (%s tokenizer): \"%s...\"\n", uint32_t(ids->size()),
              a.get("--text").c_str(), static_cast<long long>(offset),
              tokenizer->is_bytes() ? "bytes" : "llama2.c", preview(tokenizer->decode(*ids), 60).c_str());
  print_shape(*cache);
  std::printf("prefill: %.3f s, %.0f tokens/s (%u threads)\n", seconds, double(ids->size()) / seconds,
              model->threads());
  std::printf("wrote %s\n", a.get("-o").c_str());
  return 0;
}

int dump_synthetic(Args& a) {
  if (!a.has("-o")) return a.fail("--synthetic needs -o");
  if (!a.has("--tokens")) return a.fail("--synthetic needs --tokens");
  const int64_t tokens = a.get_int("--tokens", 0);
  const int64_t seed = a.get_int("--seed", 1);
  if (a.failed()) return 2;
  if (tokens <= 0 || tokens > int64_t(kMaxTokens)) return a.fail("--tokens must be in 1.." + std::to_string(kMaxTokens));
  auto dtype = parse_dtype(a.get("--dtype", "f16"));
  if (!dtype.ok()) return a.fail(dtype.status());

  const auto start = Clock::now();
  auto cache = make_synthetic(a.get("--synthetic"), uint32_t(tokens), *dtype, uint64_t(seed));
  if (!cache.ok()) return a.fail(cache.status());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (Status s = save_kv(a.get("-o"), *cache); !s.ok()) return a.fail(s);
  std::printf("synthetic: %s, seed %lld, statistics fitted to kvc-bytes-a (generated in %.2f s)\n",
              a.get("--synthetic").c_str(), static_cast<long long>(seed), seconds);
  print_shape(*cache);
  std::printf("wrote %s\n", a.get("-o").c_str());
  return 0;
}

int fit_stats(Args& a) {
  const double theta = a.get_double("--rope-theta", 10000.0);
  if (a.failed()) return 2;
  std::vector<KVCache> caches;
  std::stringstream list(a.get("--fit-stats"));
  for (std::string path; std::getline(list, path, ',');) {
    auto cache = load_kv(path);
    if (!cache.ok()) return a.fail(cache.status().with_context(path));
    caches.push_back(std::move(cache).value());
  }
  auto stats = fit_kv_stats(caches, float(theta));
  if (!stats.ok()) return a.fail(stats.status());
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
  Args a("kv-dump",
         "kvcodec kv-dump --model M --tokenizer T|bytes --text FILE [--offset B] [--tokens N] [--dtype D] -o OUT\n"
         "       kvcodec kv-dump --synthetic NAME --tokens N [--seed S] [--dtype D] -o OUT\n"
         "       kvcodec kv-dump --fit-stats KV_FILE[,KV_FILE...] [--rope-theta X]");
  a.option("--model", "llama2.c checkpoint to prefill")
      .option("--tokenizer", "llama2.c tokenizer .bin, or 'bytes' (id = byte value, no BOS)")
      .option("--text", "text file the context is cut from")
      .option("--offset", "byte offset of the context in the text (default 0; a cut UTF-8 character is skipped)")
      .option("--tokens", "context length in tokens, BOS included (default: the model's seq_len)")
      .option("--dtype", "dtype of the exported cache: f16 (default), bf16, f32")
      .option("--threads", "prefill threads (default: all cores)")
      .option("--synthetic", "synthetic cache of a real-model shape: llama3-8b, mistral-7b, llama3-70b")
      .option("--seed", "seed of the synthetic cache (default 1)")
      .option("--fit-stats", "print the synthetic-generator statistics fitted to these KV files (comma-separated)")
      .option("--rope-theta", "RoPE base the fitted file's keys were rotated with (default 10000)")
      .option("-o", "output .safetensors (or .npy) file");
  if (!a.parse(argc, argv)) return a.exit_code();
  const int modes = int(a.has("--model")) + int(a.has("--synthetic")) + int(a.has("--fit-stats"));
  if (modes != 1) return a.fail("give exactly one of --model, --synthetic, --fit-stats (see --help)");
  if (a.has("--model")) return dump_model(a);
  if (a.has("--synthetic")) return dump_synthetic(a);
  return fit_stats(a);
}

}  // namespace kvcodec::cli
