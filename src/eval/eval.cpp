// The evaluation harness: contexts, the reference and compressed continuations, aggregation.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/dtype.hpp"
#include "kvcodec/eval.hpp"
#include "kvcodec/model.hpp"
#include "kvcodec/tokenizer.hpp"
#include "transform.hpp"

namespace kvcodec::eval {
namespace {

// Sums of one scheme setting over one context.
struct Accum {
  uint64_t bytes = 0;
  double nll = 0.0;
  uint64_t top1 = 0;
  double kl = 0.0;
  std::vector<double> attn_err2, attn_ref2;  // per layer
  std::vector<double> err2[2], ref2[2], max_abs[2];  // [K/V][layer]
};

struct ContextResult {
  double base_nll = 0.0;
  std::vector<Accum> schemes;
};

StatusOr<std::string> read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError("cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return IoError("cannot read " + path);
  return ss.str();
}

FloatKV float_kv_of(const KVState& kv) {
  FloatKV out = FloatKV::zeros(kv.shape());
  for (uint32_t l = 0; l < kv.layers(); ++l) {
    std::memcpy(out.slice(l, 0), kv.keys(l), out.slice_size() * sizeof(float));
    std::memcpy(out.slice(l, 1), kv.values(l), out.slice_size() * sizeof(float));
  }
  return out;
}

StatusOr<KVState> state_of(const FloatKV& kv) {
  KVCache cache;
  cache.dtype = DType::kF32;
  cache.shape = kv.shape;
  cache.data.resize(kv.values.size() * sizeof(float));
  std::memcpy(cache.data.data(), kv.values.data(), cache.data.size());
  return KVState::from_cache(cache);
}

// The last byte offset from which the text still yields `tokens` tokens (binary search; the
// token count of a suffix shrinks as the offset grows).
StatusOr<uint64_t> last_offset(const Tokenizer& tok, std::string_view text, uint32_t tokens) {
  if (!context_tokens(tok, text, 0, tokens).ok())
    return OutOfRange("the text yields fewer than " + std::to_string(tokens) + " tokens (context + continuation + 1)");
  uint64_t lo = 0, hi = text.size();  // lo works, hi does not
  while (hi - lo > 1) {
    const uint64_t mid = lo + (hi - lo) / 2;
    (context_tokens(tok, text, mid, tokens).ok() ? lo : hi) = mid;
  }
  return lo;
}

// A calibration context: its cache (the first n tokens, rounded to fp16) to cal.caches, its
// tokens (with the continuation) to contexts.
Status add_calibration_context(const Model& model, std::vector<int32_t> tokens, uint32_t n, Calibration& cal,
                               std::vector<std::vector<int32_t>>& contexts) {
  KVState st = model.new_state();
  KVCODEC_RETURN_IF_ERROR(model.forward(std::span<const int32_t>(tokens).first(n), st, nullptr));
  cal.caches.push_back(float_kv_of(st));
  round_to_f16(cal.caches.back());
  contexts.push_back(std::move(tokens));
  return Status::Ok();
}

// The calibration contexts (EvalOptions::calib_text_path, CalibrateOptions::text_path): `count`
// contexts of `needed` tokens from the texts of a comma-separated list of files, context i from
// text i % texts (so any prefix of them covers the texts evenly), each text's share spread evenly
// over it from its first to its last usable offset (add_calibration_context); *offsets gets
// each context's offset in its text, *texts_used the number of texts.
Status calibration_contexts(const Model& model, const Tokenizer& tok, const std::string& paths, uint32_t count,
                            uint32_t needed, uint32_t n, Calibration& cal, std::vector<std::vector<int32_t>>& contexts,
                            std::vector<uint64_t>* offsets, uint32_t* texts_used) {
  std::vector<std::string> texts;
  for (size_t at = 0; at <= paths.size();) {
    const size_t comma = std::min(paths.find(',', at), paths.size());
    if (comma == at) return InvalidArgument("calibration texts: empty file name in '" + paths + "'");
    KVCODEC_ASSIGN_OR_RETURN(std::string t, read_text(paths.substr(at, comma - at)));
    texts.push_back(std::move(t));
    at = comma + 1;
  }
  if (count < texts.size())
    return InvalidArgument("calibration: " + std::to_string(texts.size()) + " texts need at least as many contexts, got " +
                           std::to_string(count));
  std::vector<uint64_t> last(texts.size());
  for (size_t j = 0; j < texts.size(); ++j) {
    auto l = last_offset(tok, texts[j], needed);
    if (!l.ok()) return l.status().with_context("calibration text " + std::to_string(j + 1));
    last[j] = *l;
  }
  const uint32_t T = uint32_t(texts.size());
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t j = i % T, k = i / T, share = count / T + (j < count % T ? 1 : 0);
    const uint64_t off = share > 1 ? last[j] * k / (share - 1) : 0;
    KVCODEC_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, context_tokens(tok, texts[j], off, needed));
    KVCODEC_RETURN_IF_ERROR(add_calibration_context(model, std::move(tokens), n, cal, contexts));
    if (offsets) offsets->push_back(off);
  }
  *texts_used = T;
  return Status::Ok();
}

class Evaluator {
 public:
  Evaluator(const Model& model, const SchemeList& schemes, uint32_t n, uint32_t m)
      : model_(model), schemes_(schemes), n_(n), m_(m), layers_(model.config().layers) {}

  Status run(std::span<const int32_t> tokens, ContextResult& res) const {
    KVState prefill = model_.new_state();
    KVCODEC_RETURN_IF_ERROR(model_.forward(tokens.first(n_), prefill, nullptr));
    FloatKV original = float_kv_of(prefill);
    round_to_f16(original);
    KVCODEC_ASSIGN_OR_RETURN(KVState context, state_of(original));

    // The reference continuation: its logits, and the real queries of every layer.
    const std::span<const int32_t> input = tokens.subspan(n_, m_);
    const std::span<const int32_t> targets = tokens.subspan(n_ + 1, m_);
    KVState state = context;
    AttentionRecorder recorder;
    std::vector<float> ref_logits;
    KVCODEC_RETURN_IF_ERROR(model_.forward(input, state, &ref_logits, &recorder));
    std::vector<std::vector<float>> ref_attn(layers_);
    for (uint32_t l = 0; l < layers_; ++l)
      KVCODEC_RETURN_IF_ERROR(model_.attention_output(l, recorder.queries[l], n_, context, ref_attn[l]));
    const size_t vocab = model_.config().vocab_size;
    std::vector<int32_t> ref_top1(m_);
    for (uint32_t i = 0; i < m_; ++i) {
      std::span<const float> row(ref_logits.data() + i * vocab, vocab);
      res.base_nll += negative_log_likelihood(row, targets[i]);
      ref_top1[i] = argmax(row);
    }

    res.schemes.resize(schemes_.size());
    FloatKV decoded;
    std::vector<float> logits, attn;
    for (size_t s = 0; s < schemes_.size(); ++s) {
      const Scheme& scheme = *schemes_[s];
      Accum& a = res.schemes[s];
      KVCODEC_ASSIGN_OR_RETURN(a.bytes, scheme.run(original, decoded));
      round_to_f16(decoded);  // the decoded cache, as a server holds it
      if (scheme.lossless() && decoded.values != original.values)
        return Internal("lossless scheme " + scheme.name() + " did not reproduce the cache");
      tensor_error(original, decoded, a);

      KVCODEC_ASSIGN_OR_RETURN(KVState lossy_context, state_of(decoded));
      state = lossy_context;
      KVCODEC_RETURN_IF_ERROR(model_.forward(input, state, &logits));
      for (uint32_t i = 0; i < m_; ++i) {
        std::span<const float> row(logits.data() + i * vocab, vocab);
        std::span<const float> ref_row(ref_logits.data() + i * vocab, vocab);
        a.nll += negative_log_likelihood(row, targets[i]);
        a.kl += kl_divergence(ref_row, row);
        a.top1 += argmax(row) == ref_top1[i];
      }
      a.attn_err2.assign(layers_, 0.0);
      a.attn_ref2.assign(layers_, 0.0);
      for (uint32_t l = 0; l < layers_; ++l) {
        KVCODEC_RETURN_IF_ERROR(model_.attention_output(l, recorder.queries[l], n_, lossy_context, attn));
        for (size_t i = 0; i < attn.size(); ++i) {
          const double d = double(attn[i]) - ref_attn[l][i];
          a.attn_err2[l] += d * d;
          a.attn_ref2[l] += double(ref_attn[l][i]) * ref_attn[l][i];
        }
      }
    }
    return Status::Ok();
  }

 private:
  void tensor_error(const FloatKV& ref, const FloatKV& dec, Accum& a) const {
    for (uint32_t kv = 0; kv < 2; ++kv) {
      a.err2[kv].assign(layers_, 0.0);
      a.ref2[kv].assign(layers_, 0.0);
      a.max_abs[kv].assign(layers_, 0.0);
      for (uint32_t l = 0; l < layers_; ++l) {
        const float* x = ref.slice(l, kv);
        const float* y = dec.slice(l, kv);
        for (size_t i = 0; i < ref.slice_size(); ++i) {
          const double d = double(y[i]) - x[i];
          a.err2[kv][l] += d * d;
          a.ref2[kv][l] += double(x[i]) * x[i];
          a.max_abs[kv][l] = std::max(a.max_abs[kv][l], std::fabs(d));
        }
      }
    }
  }

  const Model& model_;
  const SchemeList& schemes_;
  uint32_t n_, m_, layers_;
};

double ratio_sqrt(double num, double den) { return den > 0.0 ? std::sqrt(num / den) : (num > 0.0 ? INFINITY : 0.0); }

// Pools the per-context sums of every scheme into report rows.
std::vector<SchemeRow> aggregate(const SchemeList& schemes, const std::vector<ContextResult>& results,
                                 const KVShape& shape, uint32_t m) {
  const double contexts = double(results.size());
  const double positions = contexts * m;
  double base_nll = 0.0;
  for (const ContextResult& r : results) base_nll += r.base_nll;
  const double ppl_base = std::exp(base_nll / positions);
  std::vector<SchemeRow> rows;
  for (size_t s = 0; s < schemes.size(); ++s) {
    SchemeRow row;
    row.scheme = schemes[s]->name();
    row.level = schemes[s]->level();
    row.setting = schemes[s]->setting();
    row.lossless = schemes[s]->lossless();
    double bytes = 0, nll = 0, kl = 0, kl2 = 0, top1 = 0;
    const uint32_t layers = shape.layers;
    std::vector<double> attn_err2(layers, 0.0), attn_ref2(layers, 0.0);
    std::vector<double> err2[2], ref2[2];
    for (int kv = 0; kv < 2; ++kv) {
      err2[kv].assign(layers, 0.0);
      ref2[kv].assign(layers, 0.0);
      row.tensor_max_abs[kv].assign(layers, 0.0);
    }
    for (const ContextResult& r : results) {
      const Accum& a = r.schemes[s];
      bytes += double(a.bytes);
      nll += a.nll;
      top1 += double(a.top1);
      kl += a.kl;
      kl2 += (a.kl / m) * (a.kl / m);
      for (uint32_t l = 0; l < layers; ++l) {
        attn_err2[l] += a.attn_err2[l];
        attn_ref2[l] += a.attn_ref2[l];
        for (int kv = 0; kv < 2; ++kv) {
          err2[kv][l] += a.err2[kv][l];
          ref2[kv][l] += a.ref2[kv][l];
          row.tensor_max_abs[kv][l] = std::max(row.tensor_max_abs[kv][l], a.max_abs[kv][l]);
        }
      }
    }
    row.bytes = bytes / contexts;
    row.bits_per_element = 8.0 * row.bytes / double(shape.elements());
    row.ppl_base = ppl_base;
    row.ppl = std::exp(nll / positions);
    row.ppl_delta_pct = 100.0 * (row.ppl / ppl_base - 1.0);
    row.top1_agreement = top1 / positions;
    row.kl = kl / positions;
    // Spread of the per-context mean KL around the overall mean.
    const double var = contexts > 1 ? std::max(0.0, (kl2 - contexts * row.kl * row.kl) / (contexts - 1)) : 0.0;
    row.kl_stderr = std::sqrt(var / contexts);
    double e = 0, r = 0;
    for (uint32_t l = 0; l < layers; ++l) {
      row.attn_rel_err_layer.push_back(ratio_sqrt(attn_err2[l], attn_ref2[l]));
      e += attn_err2[l];
      r += attn_ref2[l];
      for (int kv = 0; kv < 2; ++kv) row.tensor_rel_err[kv].push_back(ratio_sqrt(err2[kv][l], ref2[kv][l]));
    }
    row.attn_rel_err = ratio_sqrt(e, r);
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}

// Calibration::sensitivity from the first kSensitivityContexts calibration contexts of each
// calibration text (contexts alternate between the texts): per (layer, K/V), noise uniform in
// [-a, a] (a = sqrt(3) * kNoise * the tensor's RMS, from a fixed hash) added to that tensor alone,
// the continuation's KL against the clean cache per unit of the mean squared error added, pooled
// over the contexts.
constexpr uint32_t kSensitivityContexts = 4;
constexpr double kNoise = 0.2;

uint64_t noise_hash(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

Status measure_sensitivity(const Model& model, const std::vector<std::vector<int32_t>>& contexts, uint32_t n,
                           uint32_t texts, Calibration& cal) {
  const uint32_t L = model.config().layers;
  const size_t vocab = model.config().vocab_size;
  std::vector<double> kl(size_t(L) * 2, 0.0), mse(size_t(L) * 2, 0.0);
  std::vector<float> ref, logits;
  const ModelConfig& cfg = model.config();
  const uint32_t d = cfg.head_dim(), group = cfg.heads / cfg.kv_heads;
  cal.query_pair_energy.assign(size_t(L) * cfg.kv_heads * (d / 2), 0.0);
  const size_t probes = std::min<size_t>(size_t(kSensitivityContexts) * texts, contexts.size());
  for (size_t c = 0; c < probes; ++c) {
    const FloatKV& clean = cal.caches[c];
    const std::span<const int32_t> input = std::span<const int32_t>(contexts[c]).subspan(n, contexts[c].size() - n - 1);
    KVCODEC_ASSIGN_OR_RETURN(KVState st, state_of(clean));
    AttentionRecorder rec;
    KVCODEC_RETURN_IF_ERROR(model.forward(input, st, &ref, &rec));
    for (uint32_t l = 0; l < L; ++l)  // RoPE rotates pairs: their energy is that of the un-rotated query
      for (size_t t = 0; t < input.size(); ++t)
        for (uint32_t h = 0; h < cfg.heads; ++h)
          for (uint32_t i = 0; i < d / 2; ++i) {
            const float* q = rec.queries[l].data() + (t * cfg.heads + h) * d + 2 * i;
            cal.query_pair_energy[(size_t(l) * cfg.kv_heads + h / group) * (d / 2) + i] += double(q[0]) * q[0] + double(q[1]) * q[1];
          }
    for (uint32_t u = 0; u < 2 * L; ++u) {
      FloatKV noisy = clean;
      float* x = noisy.slice(u / 2, u % 2);
      double ss = 0, sum = 0;
      for (size_t i = 0; i < noisy.slice_size(); ++i) {
        ss += double(x[i]) * x[i];
        sum += x[i];
      }
      const double size = double(noisy.slice_size());
      const double a = std::sqrt(3.0) * kNoise * std::sqrt(std::max(0.0, ss / size - (sum / size) * (sum / size)));
      double err = 0;
      for (size_t i = 0; i < noisy.slice_size(); ++i) {
        const double r = double(noise_hash((uint64_t(c) * 64 + u) << 32 | i) >> 11) / double(1ull << 53);
        const float y = float(x[i] + a * (2 * r - 1));
        err += (double(y) - x[i]) * (double(y) - x[i]);
        x[i] = y;
      }
      KVCODEC_ASSIGN_OR_RETURN(KVState ns, state_of(noisy));
      KVCODEC_RETURN_IF_ERROR(model.forward(input, ns, &logits));
      double k = 0;
      for (size_t i = 0; i < input.size(); ++i)
        k += kl_divergence(std::span<const float>(ref.data() + i * vocab, vocab),
                           std::span<const float>(logits.data() + i * vocab, vocab));
      kl[u] += k / double(input.size());
      mse[u] += err / size;
    }
  }
  cal.sensitivity.assign(size_t(L) * 2, 0.0);
  for (size_t u = 0; u < kl.size(); ++u) cal.sensitivity[u] = mse[u] > 0 ? std::max(kl[u], 0.0) / mse[u] : 0.0;
  return Status::Ok();
}

// Calibrates the schemes that need it on caches of other contexts (EvalOptions::calib_*).
Status calibrate_schemes(const EvalOptions& o, const Model& model, const Tokenizer& tok, const std::string& text,
                         uint32_t needed, SchemeList& schemes, EvalReport& report) {
  bool any = false;
  for (const auto& s : schemes) any |= s->needs_calibration();
  if (!any) return Status::Ok();
  if (o.calib_contexts == 0) return InvalidArgument("calibrated schemes need calib_contexts >= 1");
  const uint32_t n = o.context_tokens ? o.context_tokens : model.config().seq_len * 3 / 4;
  Calibration cal;
  std::vector<std::vector<int32_t>> contexts;
  uint32_t texts = 1;
  if (!o.calib_text_path.empty()) {
    KVCODEC_RETURN_IF_ERROR(calibration_contexts(model, tok, o.calib_text_path, o.calib_contexts, needed, n, cal,
                                                 contexts, &report.calib_offsets, &texts));
  } else {  // the test text, midway between two test offsets (2i+1 of 2k half-steps)
    KVCODEC_ASSIGN_OR_RETURN(uint64_t last, last_offset(tok, text, needed));
    const uint32_t k = o.calib_contexts;
    for (uint32_t i = 0; i < k; ++i) {
      const uint64_t off = last * (2 * i + 1) / (2 * k);
      KVCODEC_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, context_tokens(tok, text, off, needed));
      KVCODEC_RETURN_IF_ERROR(add_calibration_context(model, std::move(tokens), n, cal, contexts));
      report.calib_offsets.push_back(off);
    }
  }
  report.calib_text = o.calib_text_path.empty() ? o.text_path : o.calib_text_path;
  bool sensitivity = false;
  for (const auto& s : schemes) sensitivity |= s->needs_sensitivity();
  if (sensitivity) KVCODEC_RETURN_IF_ERROR(measure_sensitivity(model, contexts, n, texts, cal));
  for (auto& s : schemes)
    if (s->needs_calibration()) KVCODEC_RETURN_IF_ERROR(s->calibrate(cal));
  return Status::Ok();
}

}  // namespace

std::vector<Threshold> compute_thresholds(const std::vector<SchemeRow>& rows) {
  std::vector<Threshold> out;
  std::vector<std::string> order;
  std::map<std::string, std::pair<std::vector<CurvePoint>, std::vector<CurvePoint>>> curves;
  for (const SchemeRow& r : rows) {
    if (!curves.count(r.scheme)) order.push_back(r.scheme);
    curves[r.scheme].first.push_back({r.bits_per_element, r.kl});
    curves[r.scheme].second.push_back({r.bits_per_element, r.ppl_delta_pct});
  }
  for (const std::string& name : order) {
    const auto& [kl, ppl] = curves[name];
    out.push_back({name, interpolate_crossing(kl, kKlTarget, true), interpolate_crossing(ppl, kPplTargetPct, false),
                   interpolate_crossing(kl, kKlFineTarget, true)});
  }
  return out;
}

StatusOr<EvalReport> run_eval(const EvalOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  auto progress = [&](const std::string& line) {
    if (o.progress) o.progress(line);
  };

  if (o.contexts == 0) return InvalidArgument("contexts must be at least 1");
  if (o.threads == 0) return InvalidArgument("threads must be at least 1");
  KVCODEC_ASSIGN_OR_RETURN(SchemeList schemes, make_schemes(o.schemes));
  KVCODEC_ASSIGN_OR_RETURN(Model model, Model::load(o.model_path));
  model.set_threads(1);  // parallelism comes from evaluating contexts concurrently
  KVCODEC_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::open(o.tokenizer));
  const ModelConfig& cfg = model.config();
  if (tok.vocab_size() != cfg.vocab_size)
    return InvalidArgument("tokenizer vocabulary (" + std::to_string(tok.vocab_size()) + ") differs from the model's (" +
                           std::to_string(cfg.vocab_size) + ")");
  const uint32_t n = o.context_tokens ? o.context_tokens : cfg.seq_len * 3 / 4;
  const uint32_t m = o.continue_tokens ? o.continue_tokens : (cfg.seq_len > n ? cfg.seq_len - n : 0);
  if (n < 1 || m < 1 || uint64_t(n) + m > cfg.seq_len)
    return InvalidArgument("need context >= 1, continuation >= 1 and context + continuation <= seq_len (" +
                           std::to_string(cfg.seq_len) + "), got " + std::to_string(n) + " + " + std::to_string(m));
  KVCODEC_ASSIGN_OR_RETURN(std::string text, read_text(o.text_path));

  // Offsets spread evenly over [0, last usable offset].
  const uint32_t needed = n + m + 1;
  KVCODEC_ASSIGN_OR_RETURN(uint64_t last, last_offset(tok, text, needed));
  EvalReport report;
  for (uint32_t i = 0; i < o.contexts; ++i)
    report.offsets.push_back(o.contexts > 1 ? last * i / (o.contexts - 1) : 0);
  progress("eval: " + std::to_string(o.contexts) + " contexts of " + std::to_string(n) + " + " + std::to_string(m) +
           " tokens, " + std::to_string(schemes.size()) + " scheme settings, " + std::to_string(o.threads) + " threads");

  // Contexts run concurrently; results land in their slot, so the report does not depend on
  // the thread count.
  KVCODEC_RETURN_IF_ERROR(calibrate_schemes(o, model, tok, text, needed, schemes, report));
  const Evaluator evaluator(model, schemes, n, m);
  std::vector<ContextResult> results(o.contexts);
  std::vector<Status> statuses(o.contexts);
  std::atomic<uint32_t> next{0}, done{0};
  std::mutex progress_mutex;
  auto worker = [&] {
    for (uint32_t i = next++; i < o.contexts; i = next++) {
      auto tokens = context_tokens(tok, text, report.offsets[i], needed);
      statuses[i] = tokens.ok() ? evaluator.run(*tokens, results[i]) : tokens.status();
      if (!statuses[i].ok()) statuses[i] = statuses[i].with_context("context at offset " + std::to_string(report.offsets[i]));
      const uint32_t finished = ++done;
      std::lock_guard<std::mutex> lock(progress_mutex);
      const double t = elapsed();
      progress("eval: context " + std::to_string(finished) + "/" + std::to_string(o.contexts) + " done, " +
               format_seconds(t) + " elapsed, ~" + format_seconds(t / finished * (o.contexts - finished)) + " left");
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < std::min<unsigned>(o.threads, o.contexts); ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  for (const Status& s : statuses) KVCODEC_RETURN_IF_ERROR(s);

  report.model = o.model_path;
  report.tokenizer = o.tokenizer;
  report.text = o.text_path;
  report.contexts = o.contexts;
  report.context_tokens = n;
  report.continue_tokens = m;
  report.shape = cfg.kv_shape(n);
  report.rows = aggregate(schemes, results, report.shape, m);
  report.thresholds = compute_thresholds(report.rows);
  report.seconds = elapsed();
  return report;
}

StatusOr<Profile> calibrate_model_profile(const CalibrateOptions& o) {
  if (o.contexts == 0) return InvalidArgument("contexts must be at least 1");
  KVCODEC_ASSIGN_OR_RETURN(Model model, Model::load(o.model_path));
  KVCODEC_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::open(o.tokenizer));
  if (tok.vocab_size() != model.config().vocab_size) return InvalidArgument("tokenizer vocabulary differs from the model's");
  const uint32_t n = o.context_tokens ? o.context_tokens : model.config().seq_len * 3 / 4;
  if (n < 1 || n > model.config().seq_len)
    return InvalidArgument("context tokens must be 1.." + std::to_string(model.config().seq_len));
  if (o.rd && !o.models) return InvalidArgument("rate-distortion steps need the profile's layer models");
  const uint32_t m = o.rd ? std::min<uint32_t>(64, model.config().seq_len - n) : 0;  // continuation (sensitivity)
  if (o.rd && m == 0) return InvalidArgument("rate-distortion steps need context tokens below seq_len (a continuation)");
  const uint32_t needed = n + (m ? m + 1 : 0);
  Calibration cal;
  std::vector<std::vector<int32_t>> contexts;
  uint32_t texts = 1;
  KVCODEC_RETURN_IF_ERROR(calibration_contexts(model, tok, o.text_path, o.contexts, needed, n, cal, contexts, nullptr, &texts));
  if (o.rd) KVCODEC_RETURN_IF_ERROR(measure_sensitivity(model, contexts, n, texts, cal));
  KVCODEC_ASSIGN_OR_RETURN(auto p, internal::calibrate_profile(cal.caches, o.keys_before_rope, cal.rope_theta));
  KVCODEC_ASSIGN_OR_RETURN(Profile lp, internal::to_library_profile(*p, cal.rope_theta));
  if (o.models) KVCODEC_RETURN_IF_ERROR(internal::add_profile_models(lp, cal.caches, cal.sensitivity));
  return lp;
}

StatusOr<Profile> calibrate_kv_profile(const std::vector<KVCache>& caches, bool keys_before_rope, double rope_theta,
                                       bool models) {
  if (caches.empty()) return InvalidArgument("no KV caches to calibrate on");
  if (keys_before_rope && !(rope_theta > 1 && std::isfinite(rope_theta)))
    return InvalidArgument("keys before RoPE need the model's RoPE base (rope_theta > 1)");
  std::vector<FloatKV> floats;
  for (size_t c = 0; c < caches.size(); ++c) {
    const KVCache& kv = caches[c];
    FloatKV f = FloatKV::zeros(kv.shape);
    const size_t es = dtype_size(kv.dtype);
    for (size_t i = 0; i < f.values.size(); ++i) {
      f.values[i] = detail::load_as_f32(kv.data.data() + i * es, uint8_t(kv.dtype));
      if (!std::isfinite(f.values[i]))
        return InvalidArgument("KV cache " + std::to_string(c + 1) + ": a non-finite value (element " +
                               std::to_string(i) + ")");
    }
    floats.push_back(std::move(f));
  }
  KVCODEC_ASSIGN_OR_RETURN(auto p, internal::calibrate_profile(floats, keys_before_rope, rope_theta));
  KVCODEC_ASSIGN_OR_RETURN(Profile lp, internal::to_library_profile(*p, rope_theta));
  if (models) KVCODEC_RETURN_IF_ERROR(internal::add_profile_models(lp, floats));
  return lp;
}

}  // namespace kvcodec::eval
