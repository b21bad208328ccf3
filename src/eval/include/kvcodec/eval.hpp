// Model-quality evaluation of KV-cache compression (`kvcodec eval`).
//
// For each of N contexts cut from a text at offsets spread evenly over it, the reference model
// prefills the context (n tokens) and its KV cache is rounded to fp16: that cache, as a server
// holds it, is the ORIGINAL. Every scheme setting (baselines.hpp) compresses the original and
// its decoded cache (again fp16) is loaded back into the model, which then runs the next m
// tokens of the text attending to it. Compared with the same continuation over the original:
//
//   ppl             perplexity of the m continuation targets (tokens n+1 .. n+m), pooled over
//                   all contexts: exp(sum of NLL / (N m)); ppl_delta_pct = 100 (ppl/ppl_base - 1)
//   top1_agreement  fraction of the N m positions whose argmax token equals the original's
//   kl              mean KL(original || compressed) of the next-token distributions, nats/token
//   attn_rel_err    per layer, ||A_c - A_o||_F / ||A_o||_F where A is the attention output
//                   (before wo) of the continuation's REAL queries (recorded in the original
//                   run) over the context's keys and values alone; pooled over contexts
//   tensor error    per layer and K/V: relative Frobenius error and max |x - x_hat|
//   bits_per_element = 8 * bytes / (2 L T C), bytes averaged over contexts.
// A lossless scheme therefore shows ppl_delta_pct 0, kl 0 and top1 1 exactly.
//
// Contexts follow the model's definition (tokenizer.hpp, context_tokens): the first n + m + 1
// tokens of the text from the context's byte offset on. Offsets are spread evenly from 0 to the
// last offset that still yields n + m + 1 tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/baselines.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::eval {

// ---- Metrics on logits (natural logarithms) --------------------------------------------------
// log softmax(logits), computed in double with the maximum subtracted.
std::vector<double> log_softmax(std::span<const float> logits);
// -log softmax(logits)[target] in nats. target must index logits.
double negative_log_likelihood(std::span<const float> logits, int32_t target);
// KL(softmax(p) || softmax(q)) in nats; exactly 0 for identical rows. Sizes must match.
double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits);
// exp(mean of nll); 1 for an empty span.
double perplexity(std::span<const double> nll);

// Bits per element where a metric along a curve first reaches `target` (interpolated), for the
// rate-distortion points of one scheme. Points are (bits_per_element, metric); the search walks
// from the most bits down and interpolates between the last point below the target and the
// first at or above it (log-linear in the metric when `log_metric`, e.g. KL). nullopt when no
// point reaches the target, or when even the most bits exceed it (see Threshold notes).
struct CurvePoint {
  double bits = 0;
  double metric = 0;
};
struct Crossing {
  std::optional<double> bits;
  std::string note;  // "" when found, else "not reached" or "above target at every setting"
};
Crossing interpolate_crossing(std::vector<CurvePoint> points, double target, bool log_metric);

// ---- The harness -----------------------------------------------------------------------------
struct EvalOptions {
  std::string model_path;           // llama2.c checkpoint
  std::string tokenizer = "bytes";  // "bytes" or a llama2.c tokenizer .bin
  std::string text_path;
  uint32_t contexts = 32;
  uint32_t context_tokens = 0;   // n; 0 = 3/4 of the model's seq_len
  uint32_t continue_tokens = 0;  // m; 0 = seq_len - n (n + m must not exceed seq_len)
  std::string schemes = std::string(kDefaultSchemes);  // make_schemes syntax
  unsigned threads = 1;          // contexts evaluated in parallel (the model uses 1 thread each)
  // Calibration of the schemes that need it (kvpca, kvtc): caches of `calib_contexts` contexts of
  // the same length cut from `calib_text_path`, one file or several comma-separated (contexts
  // alternate between them, each text's share spread evenly over it), default: the test text, at
  // offsets midway between the test contexts' (disjoint only when the text is long enough; other
  // texts always are).
  std::string calib_text_path;
  uint32_t calib_contexts = 8;
  // Called from the calling thread or a worker (serialized) with one progress line.
  std::function<void(const std::string&)> progress;
};

struct SchemeRow {
  std::string scheme;   // curve name
  int level = 0;
  std::string setting;
  bool lossless = false;
  double bits_per_element = 0;
  double bytes = 0;  // mean compressed bytes per context
  double ppl_base = 0;
  double ppl = 0;
  double ppl_delta_pct = 0;
  double top1_agreement = 0;
  double kl = 0;
  double kl_stderr = 0;      // standard error of kl over contexts
  double attn_rel_err = 0;   // pooled over layers
  std::vector<double> attn_rel_err_layer;
  std::vector<double> tensor_rel_err[2];  // [K/V][layer]
  std::vector<double> tensor_max_abs[2];  // [K/V][layer]
};

struct Threshold {
  std::string scheme;
  Crossing kl;   // bits at which mean KL reaches kKlTarget
  Crossing ppl;  // bits at which ppl_delta_pct reaches kPplTargetPct
  Crossing kl_fine;  // bits at which mean KL reaches kKlFineTarget
};
inline constexpr double kKlTarget = 0.01;     // nats/token
inline constexpr double kKlFineTarget = 0.001;  // nats/token: near-lossless
inline constexpr double kPplTargetPct = 1.0;  // percent

struct EvalReport {
  std::string model, tokenizer, text;
  uint32_t contexts = 0, context_tokens = 0, continue_tokens = 0;
  KVShape shape;  // of one context's cache
  std::vector<uint64_t> offsets;
  std::string calib_text;               // empty when no scheme was calibrated; several: comma-separated
  std::vector<uint64_t> calib_offsets;  // each in its own text (contexts alternate between the texts)
  double seconds = 0;
  std::vector<SchemeRow> rows;
  std::vector<Threshold> thresholds;
};

// Runs the whole evaluation. Errors: bad options or scheme list (kInvalidArgument), unreadable
// files, a text too short for the contexts (kOutOfRange), or any scheme failing its round trip.
StatusOr<EvalReport> run_eval(const EvalOptions& options);
// Thresholds of every curve of `rows` (called by run_eval).
std::vector<Threshold> compute_thresholds(const std::vector<SchemeRow>& rows);

// Renderings of a report: the JSON document, a fixed-width text table (rows then thresholds),
// and a two-panel SVG (bits per element vs perplexity change, and vs KL on a log axis; one
// curve per scheme).
std::string report_json(const EvalReport& report);
std::string report_table(const EvalReport& report);
std::string report_svg(const EvalReport& report);

// `kvcodec calibrate`: a transform-coding profile (include/kvcodec/profile.hpp) of a model from
// the caches of `contexts` contexts of `context_tokens` tokens spread over a text, f16-rounded
// as eval's caches are (per (layer, K/V, kv head) PCA, keys before RoPE unless told otherwise).
struct CalibrateOptions {
  std::string model_path;
  std::string tokenizer = "bytes";
  std::string text_path;  // one file or several comma-separated (contexts alternate between them)
  uint32_t contexts = 8;
  uint32_t context_tokens = 0;  // 0 = 3/4 of the model's seq_len
  bool keys_before_rope = true;
  // Also calibrate the stored layer models (profile version 2, docs/format.md 8): frames coded
  // with the profile then reference its tables instead of carrying their own where that is smaller.
  bool models = false;
  // With models: steps allocated by rate-distortion on each (layer, K/V)'s measured sensitivity
  // (next-token KL per unit of squared error, noise added to the first 4 contexts of each text
  // and their continuations of up to 64 tokens: context_tokens must leave room for them within
  // seq_len) instead of layer_factor and the calibration RMS (calibrate_profile_models).
  bool rd = false;
};
StatusOr<Profile> calibrate_model_profile(const CalibrateOptions& options);
// The same from KV caches already dumped (`kvcodec kv-dump`, a server's export): all of one
// model (layers, kv heads, head_dim; any token counts), keys cached with RoPE at positions
// 0..T-1. keys_before_rope needs the model's RoPE base (rope_theta > 1). kInvalidArgument for
// no caches, different shapes or a non-finite value.
// models: as CalibrateOptions::models.
StatusOr<Profile> calibrate_kv_profile(const std::vector<KVCache>& caches, bool keys_before_rope, double rope_theta,
                                       bool models = false);

}  // namespace kvcodec::eval
