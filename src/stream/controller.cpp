// The per-chunk controller (controller.hpp; design and planner in docs/controller.md).
#include <algorithm>
#include <cmath>

#include "kvcodec/controller.hpp"
#include "pipeline.hpp"

namespace kvcodec {
namespace {

constexpr uint32_t kMaxChunks = 1u << 20;
constexpr size_t kMaxOptions = 64;  // options used so far are tracked in a 64-bit mask
// Slack before a chunk still on its way counts as overdue (Impl::predict): a busy machine can
// leave the client's thread unscheduled for about this long.
constexpr double kOverdueSlackS = 0.005;
// The hedge's margin: how late a client may come back when asked (Controller::wake_s).
constexpr double kHedgeMarginS = 0.001;

bool finite_nonneg(double x) { return std::isfinite(x) && x >= 0; }

}  // namespace

std::string_view objective_name(Objective objective) noexcept {
  switch (objective) {
    case Objective::kBestQualityWithinSlo: return "quality";
    case Objective::kMinTtft: return "ttft";
    case Objective::kMinPrefillWithinSlo: return "min-prefill";
    case Objective::kMinPrefillUnhedged: return "min-prefill-unhedged";
  }
  return "unknown";
}

StatusOr<Objective> parse_objective(std::string_view name) {
  for (Objective o : {Objective::kMinPrefillWithinSlo, Objective::kBestQualityWithinSlo, Objective::kMinTtft,
                      Objective::kMinPrefillUnhedged})
    if (name == objective_name(o)) return o;
  return InvalidArgument("objective must be min-prefill, quality, ttft or min-prefill-unhedged");
}

// ---- CostModel ----------------------------------------------------------------------------------

Status CostModel::validate() const {
  if (!finite_nonneg(rtt_s)) return InvalidArgument("rtt must be finite and >= 0");
  if (!std::isfinite(prefill_tokens_per_s)) return InvalidArgument("prefill tokens/s must be finite");
  if (!finite_nonneg(prefill_attention_tokens))
    return InvalidArgument("prefill attention tokens must be finite and >= 0");
  if (!finite_nonneg(first_token_s)) return InvalidArgument("first-token time must be finite and >= 0");
  return Status::Ok();
}

double CostModel::prefill_seconds(uint32_t tokens, uint64_t position) const noexcept {
  if (prefill_tokens_per_s <= 0) return INFINITY;
  // Sum over the chunk's tokens q = position .. position + tokens - 1 of (1 + q / A).
  double cost = tokens;
  if (prefill_attention_tokens > 0) {
    const double n = tokens, p = double(position);
    cost += (n * p + n * (n - 1) / 2) / prefill_attention_tokens;
  }
  return cost / prefill_tokens_per_s;
}

// ---- ContextProfile -----------------------------------------------------------------------------

uint64_t ContextProfile::tokens() const noexcept {
  uint64_t t = 0;
  for (uint32_t n : chunk_tokens) t += n;
  return t;
}

uint64_t ContextProfile::token_begin(uint32_t c) const noexcept {
  uint64_t t = 0;
  for (uint32_t i = 0; i < c && i < chunk_tokens.size(); ++i) t += chunk_tokens[i];
  return t;
}

uint64_t ContextProfile::chunk_bytes(uint32_t c, int option) const noexcept {
  return option == kTextOption ? 0 : bytes[c][size_t(option)];
}

double ContextProfile::distortion(int option) const noexcept {
  return option == kTextOption ? 0.0 : options[size_t(option)].distortion;
}

Status ContextProfile::validate() const {
  if (chunk_tokens.empty()) return InvalidArgument("profile has no chunks");
  if (chunk_tokens.size() > kMaxChunks) return ResourceExhausted("profile has too many chunks");
  if (options.empty() && !text_available)
    return InvalidArgument("profile has neither options nor text");
  if (options.size() > kMaxOptions) return ResourceExhausted("profile has more than 64 options");
  if (bytes.size() != chunk_tokens.size())
    return InvalidArgument("profile sizes must have one row per chunk");
  if (raw_bytes_per_token == 0) return InvalidArgument("profile raw bytes per token must be > 0");
  for (const auto& o : options) {
    if (!finite_nonneg(o.distortion)) return InvalidArgument("option distortion must be finite and >= 0");
    if (!std::isfinite(o.decode_gbps)) return InvalidArgument("option decode GB/s must be finite");
  }
  for (size_t c = 0; c < chunk_tokens.size(); ++c) {
    if (chunk_tokens[c] == 0) return InvalidArgument("profile chunk with 0 tokens");
    if (bytes[c].size() != options.size())
      return InvalidArgument("profile sizes must have one entry per option");
  }
  return Status::Ok();
}

// ---- ControllerConfig ---------------------------------------------------------------------------

Status ControllerConfig::validate() const {
  if (!(slo_s > 0) || !std::isfinite(slo_s)) return InvalidArgument("SLO must be > 0 and finite");
  if (!(slo_headroom >= 0 && slo_headroom < 1)) return InvalidArgument("SLO headroom must be in [0, 1)");
  if (prefill_queue < 1) return InvalidArgument("prefill queue must be >= 1");
  if (!(max_distortion >= 0)) return InvalidArgument("max distortion must be >= 0");
  if (!(hedge_drop_factor >= 1) || !std::isfinite(hedge_drop_factor))
    return InvalidArgument("hedge drop factor must be finite and >= 1");
  for (double t : plan_request_s)
    if (!(t >= 0) || !std::isfinite(t)) return InvalidArgument("plan request times must be finite and >= 0");
  KVCODEC_RETURN_IF_ERROR(cost.validate());
  return estimator.validate();
}

// ---- Controller ---------------------------------------------------------------------------------

struct Controller::Impl {
  std::optional<Decision> next_request(double now_s);
  Status on_chunk_received(uint32_t chunk, uint64_t bytes, double transfer_s, double now_s);
  Status on_progress(uint32_t chunk, uint64_t bytes_received, double now_s);
  Status on_chunk_ready(uint32_t chunk, double now_s);
  Status on_chunk_decoded(uint32_t chunk, double decode_s);
  double decode_gbps(int option) const noexcept;
  void refresh_work();  // work_s_ of the KV options from the decode estimates
  StatusOr<Decision> fall_back_to_text(uint32_t chunk, double now_s);
  std::optional<double> wake_s() const noexcept;
  bool all_requested() const noexcept { return front_ == back_; }
  // kFixed with request times: the end chunk to request next (the earlier time; front on a tie).
  uint32_t fixed_next() const noexcept {
    const std::vector<double>& t = config_.plan_request_s;
    return t[back_ - 1] < t[front_] ? back_ - 1 : front_;
  }
  bool all_ready() const noexcept;

  struct ChunkState {
    int option = kTextOption;
    uint64_t bytes = 0;                                    // requested, setup included
    uint64_t received = 0;                                 // on_progress
    double request_s = -1, arrival_s = -1, ready_s = -1;  // -1: not yet
  };
  struct Prediction;  // every decided chunk replayed at the current estimate
  Impl(ContextProfile profile, ControllerConfig config);
  Prediction predict(double now_s) const;
  // Every decided chunk replayed over a constant link of `gbps` (predict() at its estimate).
  Prediction replay(double now_s, double gbps) const;
  bool link_full(const Prediction& p) const;
  // Cold start: the time the first KV bytes can be timed; probing while before it, unmeasured.
  double probe_end_s(double now_s) const noexcept;
  bool probing(double now_s) const noexcept;
  bool guessing() const noexcept;  // nothing measured, and the prior is a guess
  bool defer_text(double now_s, const Prediction& p) const;
  double decoder_bound_gbps(uint32_t chunk, int option) const noexcept;
  detail::PlanScore score_shape(double now_s, const Prediction& p,
                                const detail::PlanShape& shape) const;
  int equal_budget_choice(uint32_t chunk) const;
  // Fewest bytes on the wire, among `options`.
  int smallest_option(uint32_t chunk, const std::vector<int>& options) const;
  detail::PlanShape plan_rest(double now_s, const Prediction& p, detail::PlanScore* score) const;
  Decision decide(uint32_t chunk, int option, double now_s, double predicted_ttft_s);
  std::optional<Decision> abandon_late_kv(double now_s, const Prediction& p);
  // The hedge of kMinPrefillWithinSlo (ControllerConfig::hedge_drop_factor).
  bool hedged() const noexcept;
  // TTFT if the link dropped now by the hedge factor: the KV on its way comes at that rate (with
  // `extra`, a request for the back chunk at that option, unless kNoOption), nothing else is
  // requested, and the GPU recomputes from the front every chunk whose KV would not be ready
  // before its prefill.
  double drop_recovery_s(double now_s, const Prediction& p, int extra) const;
  // The plan's option for the back chunk, or the best one below it in quality that keeps the
  // fetch drop-safe; kNoOption when none does and the GPU can take the front chunk instead.
  int hedge_option(double now_s, const Prediction& p, int planned, bool gpu_room) const;
  static constexpr int kNoOption = -2;
  // When predict() may next see more than the events tell: while a KV chunk is on its way,
  // every kOverdueSlackS once it could be late (-1: nothing on the way).
  double late_kv_wake_s() const noexcept;
  // The first KV chunk still on its way, in request order (-1: none), and the time its first
  // byte could reach the client (the chunks before it off the link, half a round trip each way).
  int first_kv_on_way(double* first_byte_s) const noexcept;
  // Bytes a request brings: the body, plus the option's setup bytes on its first use.
  uint64_t request_bytes(uint32_t chunk, int option, uint64_t used_mask) const noexcept;

  ContextProfile profile_;
  ControllerConfig config_;
  BandwidthEstimator estimator_;
  bool text_allowed_ = false;
  std::vector<int> by_quality_;              // option indices, best quality first
  std::vector<int> plannable_;               // by_quality_ within the objective's quality floor
  // Decode throughput, measured online: per option (its own chunks) and the machine's load (each
  // sample's speed over its option's seed, for options not measured yet). In "Gb/s", i.e. 8 x
  // GB/s (resp. 8 x the ratio), to reuse the bandwidth estimator's window and fast paths.
  std::vector<BandwidthEstimator> decode_est_;
  BandwidthEstimator load_est_;
  uint32_t decode_samples_ = 0;
  std::vector<std::vector<double>> work_s_;  // [chunk][option + 1]: decode / prefill seconds
  std::vector<ChunkState> state_;
  std::vector<uint32_t> request_order_;
  std::vector<Decision> decisions_;
  uint64_t used_mask_ = 0;  // options fetched at least once (setup paid)
  double first_kv_request_s_ = -1;  // -1: no KV requested yet
  double text_deferred_until_s_ = -1;  // a TEXT decision waits for the probe until then
  double last_asked_s_ = 0;  // now_s of the latest next_request (wake_s counts from it)
  double hedge_bound_s_ = 0;  // max(SLO target, recomputing everything from t = 0)
  double hedge_wake_s_ = -1;  // when the hedge's slack runs out with no news (-1: none)
  // Undecided chunks are [front_, back_): decisions take the front (TEXT, and every decision
  // of the in-order policies) or the back (the adaptive policy's KV requests).
  uint32_t front_ = 0;
  uint32_t back_ = 0;
};

Controller::Controller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Controller::Controller(Controller&&) noexcept = default;
Controller& Controller::operator=(Controller&&) noexcept = default;
Controller::~Controller() = default;

std::optional<Decision> Controller::next_request(double now_s) { return impl_->next_request(now_s); }
Status Controller::on_chunk_received(uint32_t chunk, uint64_t bytes, double transfer_s, double now_s) {
  return impl_->on_chunk_received(chunk, bytes, transfer_s, now_s);
}
Status Controller::on_progress(uint32_t chunk, uint64_t bytes_received, double now_s) {
  return impl_->on_progress(chunk, bytes_received, now_s);
}
Status Controller::on_chunk_ready(uint32_t chunk, double now_s) { return impl_->on_chunk_ready(chunk, now_s); }
Status Controller::on_chunk_decoded(uint32_t chunk, double decode_s) {
  return impl_->on_chunk_decoded(chunk, decode_s);
}
double Controller::decode_gbps(int option) const noexcept { return impl_->decode_gbps(option); }
uint32_t Controller::decode_samples() const noexcept { return impl_->decode_samples_; }
StatusOr<Decision> Controller::fall_back_to_text(uint32_t chunk, double now_s) {
  return impl_->fall_back_to_text(chunk, now_s);
}
std::optional<double> Controller::wake_s() const noexcept { return impl_->wake_s(); }
bool Controller::all_requested() const noexcept { return impl_->all_requested(); }
bool Controller::all_ready() const noexcept { return impl_->all_ready(); }
const ContextProfile& Controller::profile() const noexcept { return impl_->profile_; }
const ControllerConfig& Controller::config() const noexcept { return impl_->config_; }
const BandwidthEstimator& Controller::estimator() const noexcept { return impl_->estimator_; }
const std::vector<Decision>& Controller::decisions() const noexcept { return impl_->decisions_; }


namespace {
// A throughput estimator with the bandwidth estimator's window and fast paths, for decode
// speeds: every sample counts (no minimum size), and the prior is the seed's measurement.
EstimatorConfig decode_estimator_config(const EstimatorConfig& link, double prior) {
  EstimatorConfig e = link;
  e.prior_gbps = prior > 0 ? prior : 1.0;
  e.prior_measured = true;
  e.min_sample_bytes = 0;
  return e;
}
}  // namespace

Controller::Impl::Impl(ContextProfile profile, ControllerConfig config)
    : profile_(std::move(profile)),
      config_(std::move(config)),
      estimator_(config_.estimator),
      load_est_(decode_estimator_config(config_.estimator, 8.0)) {
  for (const ChunkOption& o : profile_.options)
    decode_est_.emplace_back(decode_estimator_config(config_.estimator, 8.0 * o.decode_gbps));
}

double Controller::Impl::decode_gbps(int option) const noexcept {
  if (option < 0 || size_t(option) >= profile_.options.size()) return 0;
  const double seed = profile_.options[size_t(option)].decode_gbps;
  if (seed <= 0) return seed;
  const BandwidthEstimator& own = decode_est_[size_t(option)];
  if (own.samples() > 0) return own.estimate_gbps() / 8;
  return seed * load_est_.estimate_gbps() / 8;
}

void Controller::Impl::refresh_work() {
  for (int o = 0; o < int(profile_.options.size()); ++o) {
    const double gbps = decode_gbps(o);
    if (!(gbps > 0)) continue;
    for (uint32_t c = 0; c < profile_.chunks(); ++c)
      work_s_[c][size_t(o + 1)] = double(profile_.chunk_tokens[c]) * double(profile_.raw_bytes_per_token) / (gbps * 1e9);
  }
}

Status Controller::Impl::on_chunk_decoded(uint32_t chunk, double decode_s) {
  if (chunk >= state_.size() || state_[chunk].request_s < 0)
    return OutOfRange("decoded a chunk that was not requested");
  const int o = state_[chunk].option;
  if (o == kTextOption) return InvalidArgument("decode time of a chunk recomputed from text");
  if (!(decode_s > 0) || !std::isfinite(decode_s)) return Status::Ok();  // nothing to learn
  const double seed = profile_.options[size_t(o)].decode_gbps;
  if (seed <= 0) return Status::Ok();  // raw bytes: no decoder
  const uint64_t raw = uint64_t(profile_.chunk_tokens[chunk]) * profile_.raw_bytes_per_token;
  decode_est_[size_t(o)].add_sample(raw, decode_s);
  load_est_.add_sample(raw, decode_s * seed);  // 8 x (measured GB/s / seed GB/s)
  ++decode_samples_;
  refresh_work();
  return Status::Ok();
}

StatusOr<Controller> Controller::create(ContextProfile profile, ControllerConfig config) {
  KVCODEC_RETURN_IF_ERROR(profile.validate());
  KVCODEC_RETURN_IF_ERROR(config.validate());
  const uint32_t n = profile.chunks();
  const bool text_ok = profile.text_available && config.cost.prefill_tokens_per_s > 0;
  if (config.policy == Policy::kFixed) {
    if (config.plan.size() == 1) config.plan.assign(n, config.plan[0]);
    if (config.plan.size() != n)
      return InvalidArgument("fixed plan must have one option per chunk (or a single one)");
    if (!config.plan_request_s.empty() && config.plan_request_s.size() != n)
      return InvalidArgument("fixed plan's request times must be one per chunk");
    for (int o : config.plan) {
      if (o == kTextOption ? !text_ok : (o < 0 || size_t(o) >= profile.options.size()))
        return InvalidArgument("fixed plan names an option the context does not offer");
    }
  } else if (profile.options.empty() && !text_ok) {
    return InvalidArgument("no way to fetch the context: no options and no prefill");
  }
  auto impl = std::make_unique<Impl>(std::move(profile), std::move(config));
  Impl& c = *impl;
  c.text_allowed_ = text_ok;
  c.by_quality_ = detail::options_by_quality(c.profile_);
  c.plannable_ = detail::plannable_options(c.profile_, c.config_, text_ok);
  c.state_.resize(n);
  c.decisions_.reserve(n);
  c.back_ = n;
  c.work_s_.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    c.work_s_[i].resize(c.profile_.options.size() + 1);
    for (int o = kTextOption; o < int(c.profile_.options.size()); ++o)
      c.work_s_[i][size_t(o + 1)] = detail::chunk_work_seconds(c.profile_, c.config_.cost, i, o);
  }
  double all_text = c.config_.cost.first_token_s;
  for (uint32_t i = 0; i < n; ++i) all_text += c.work_s_[i][0];
  c.hedge_bound_s_ = std::max(c.config_.slo_s * (1 - c.config_.slo_headroom), all_text);
  return Controller(std::move(impl));
}

struct Controller::Impl::Prediction {
  double gbps = 0;  // the bandwidth planned with
  detail::PipelineState state;
  std::vector<double> ready_s;  // per chunk; -1 for undecided
  double first_arrival_s = -1;  // first and last KV chunk still on the way (-1: none)
  double last_arrival_s = -1;
};

bool Controller::Impl::all_ready() const noexcept {
  if (!all_requested()) return false;
  return std::all_of(state_.begin(), state_.end(), [](const ChunkState& s) { return s.ready_s >= 0; });
}

uint64_t Controller::Impl::request_bytes(uint32_t chunk, int option, uint64_t used_mask) const noexcept {
  if (option == kTextOption) return 0;  // token ids are at the client already
  uint64_t b = profile_.chunk_bytes(chunk, option);
  if (!(used_mask >> option & 1)) b += profile_.options[size_t(option)].setup_bytes;
  return b;
}

int Controller::Impl::first_kv_on_way(double* first_byte_s) const noexcept {
  const double rtt = config_.cost.rtt_s;
  double link_free = 0;
  for (uint32_t c : request_order_) {
    const ChunkState& st = state_[c];
    if (st.option == kTextOption) continue;
    if (st.arrival_s >= 0) {
      link_free = std::max(link_free, st.arrival_s - rtt / 2);
      continue;
    }
    *first_byte_s = std::max(link_free, st.request_s + rtt / 2) + rtt / 2;
    return int(c);
  }
  return -1;
}

Controller::Impl::Prediction Controller::Impl::predict(double now_s) const {
  // The bandwidth planned with: the estimate, or what the first KV chunk still arriving has
  // delivered so far (received bytes / time on the link) when that says more. The estimator only
  // learns from complete chunks; without this a link that collapses mid-chunk would go unnoticed
  // until the chunk ends, and a cold start would plan on the prior until the first chunk ends.
  double gbps = estimator_.estimate_gbps();
  double first_byte_s = 0;
  const int c = first_kv_on_way(&first_byte_s);
  const double on_link_s = now_s - first_byte_s;  // since its first byte could have come
  if (c < 0 || on_link_s <= 0) return replay(now_s, gbps);
  const ChunkState& st = state_[size_t(c)];
  const double delivered_gbps = std::max<double>(double(st.received), 1.0) * 8 / on_link_s / 1e9;
  if (guessing()) {
    // Cold: the prior is a guess. Once the probe window is over, what has come is the best
    // measurement there is, whichever way it points.
    // (Nothing received yet is no measurement, until the silence is long: the client's
    // thread may simply not have run.)
    if (now_s >= probe_end_s(now_s) && (st.received > 0 || on_link_s > 4 * kOverdueSlackS))
      gbps = delivered_gbps;
  } else if (on_link_s > 1.5 * double(st.received) * 8 / (gbps * 1e9) + kOverdueSlackS &&
             (st.received > 0 || on_link_s > 4 * kOverdueSlackS)) {
    // A chunk arriving at less than 2/3 of the estimate's pace caps the estimate: its bytes so
    // far took half their expected time again plus a scheduling slack, so that a small chunk
    // (tens of microseconds at the estimate) whose bytes the client has not read yet because
    // its thread was not running is not taken for a collapsed link. Measured on the bytes
    // received, not the whole chunk, a link that collapses mid-chunk is seen within a few
    // slacks instead of after the chunk's whole expected time.
    gbps = std::min(gbps, delivered_gbps);
  }
  return replay(now_s, gbps);
}

Controller::Impl::Prediction Controller::Impl::replay(double now_s, double gbps) const {
  // Replays every decided chunk at `gbps`, keeping what has been observed: measured arrivals
  // and ready times replace predictions, and nothing still pending is predicted to happen
  // before now.
  const double rtt = config_.cost.rtt_s;
  Prediction p;
  p.ready_s.assign(profile_.chunks(), -1);
  p.gbps = gbps;
  const detail::ConstantLink link{p.gbps};
  detail::PipelineState& s = p.state;
  for (uint32_t c : request_order_) {  // KV: FIFO on the link and the decoder
    const ChunkState& st = state_[c];
    if (st.option == kTextOption) continue;
    double arrival = st.arrival_s;
    if (arrival >= 0) {
      s.link_free_s = std::max(s.link_free_s, arrival - rtt / 2);
    } else {
      const double start = std::max(s.link_free_s, st.request_s + rtt / 2);
      arrival = std::max(link.finish_time(start, st.bytes) + rtt / 2, now_s);
      s.link_free_s = arrival - rtt / 2;
      if (p.first_arrival_s < 0) p.first_arrival_s = arrival;
      p.last_arrival_s = arrival;
    }
    double ready = st.ready_s;
    if (ready < 0)
      ready = std::max(std::max(arrival, s.decoder_free_s) + work_s_[c][size_t(st.option + 1)], now_s);
    s.decoder_free_s = std::max(s.decoder_free_s, ready);
    p.ready_s[c] = ready;
  }
  double prefix = 0;  // every earlier chunk is ready
  for (uint32_t c = 0; c < profile_.chunks(); ++c) {  // TEXT: prefilled in context order
    const ChunkState& st = state_[c];
    if (st.request_s >= 0 && st.option == kTextOption) {
      double ready = st.ready_s;
      if (ready < 0)
        ready = std::max(std::max({st.request_s, s.gpu_free_s, prefix}) + work_s_[c][0], now_s);
      s.gpu_free_s = std::max(s.gpu_free_s, ready);
      p.ready_s[c] = ready;
    }
    prefix = std::max(prefix, p.ready_s[c]);
    s.ready_max_s = std::max(s.ready_max_s, p.ready_s[c]);
  }
  return p;
}

bool Controller::Impl::link_full(const Prediction& p) const {
  if (p.first_arrival_s < 0) return false;  // nothing outstanding
  // A request sent when the next chunk arrives reaches the server rtt/2 later; the link stays
  // busy if what is already outstanding lasts until then.
  return p.last_arrival_s >= p.first_arrival_s + config_.cost.rtt_s;
}

int Controller::Impl::equal_budget_choice(uint32_t c) const {
  // CacheGen: each chunk gets slo / n; the best option whose transfer at the last measured
  // throughput fits it, else TEXT (else the smallest option when TEXT is unavailable).
  const double budget = config_.slo_s / profile_.chunks();
  const double bps = detail::bytes_per_second(estimator_.last_sample_gbps());
  for (int o : by_quality_)
    if (double(profile_.chunk_bytes(c, o)) / bps <= budget) return o;
  if (text_allowed_) return kTextOption;
  return smallest_option(c, by_quality_);
}

int Controller::Impl::smallest_option(uint32_t c, const std::vector<int>& options) const {
  return *std::min_element(options.begin(), options.end(), [&](int x, int y) {
    return profile_.chunk_bytes(c, x) < profile_.chunk_bytes(c, y);
  });
}

detail::PlanScore Controller::Impl::score_shape(double now_s, const Prediction& p,
                                          const detail::PlanShape& shape) const {
  // The undecided chunks [front_, back_) as if all were decided now and the bandwidth stayed
  // at p.gbps: shape.text TEXT chunks from the front (the GPU prefills in context order), the
  // rest KV from the back.
  const detail::ConstantLink link{p.gbps};
  double ready = 0;
  for (uint32_t c = 0; c < front_; ++c) ready = std::max(ready, p.ready_s[c]);
  detail::PipelineState s = p.state;
  detail::PlanScore r;
  for (uint32_t i = 0; i < shape.text; ++i) {
    ready = detail::advance_text(s, now_s, ready, work_s_[front_ + i][0]);
    r.prefill_s += work_s_[front_ + i][0];
  }
  uint64_t used = used_mask_;
  for (uint32_t j = 0; j < back_ - front_ - shape.text; ++j) {
    const uint32_t c = back_ - 1 - j;
    const int o = j < shape.count_a ? shape.a : shape.b;
    detail::advance_kv(s, link, config_.cost.rtt_s, now_s, request_bytes(c, o, used),
                       work_s_[c][size_t(o + 1)]);
    used |= uint64_t(1) << o;
    r.distortion += profile_.chunk_tokens[c] * profile_.distortion(o);
  }
  r.ttft_s = s.ready_max_s + config_.cost.first_token_s;
  return r;
}

detail::PlanShape Controller::Impl::plan_rest(double now_s, const Prediction& p,
                                        detail::PlanScore* score_out) const {
  // Re-plans every undecided chunk at the estimate (score_shape).
  return detail::search_plans(
      back_ - front_, plannable_, text_allowed_, config_.objective,
      config_.slo_s * (1 - config_.slo_headroom),
      [&](const detail::PlanShape& shape) { return score_shape(now_s, p, shape); }, score_out);
}

double Controller::Impl::probe_end_s(double now_s) const noexcept {
  // The first KV request's bytes start arriving a round trip after it was sent; by the time
  // min_sample_bytes would take at the prior, their rate says whether the link is faster or
  // slower than the prior.
  const double sent = first_kv_request_s_ >= 0 ? first_kv_request_s_ : now_s;
  const EstimatorConfig& e = config_.estimator;
  return sent + config_.cost.rtt_s + double(e.min_sample_bytes) / detail::bytes_per_second(e.prior_gbps);
}

bool Controller::Impl::probing(double now_s) const noexcept {
  // For the lowest TTFT, and for the least prefill (whose GPU time a guessed prior would
  // commit to TEXT). The quality objective keeps the prior's caution: TEXT is exact.
  return (config_.objective == Objective::kMinTtft || config_.objective == Objective::kMinPrefillWithinSlo) &&
         guessing() && !plannable_.empty() && now_s < probe_end_s(now_s);
}

bool Controller::Impl::guessing() const noexcept {
  return estimator_.samples() == 0 && !config_.estimator.prior_measured;
}

bool Controller::Impl::defer_text(double now_s, const Prediction& p) const {
  // Committing the front chunk to TEXT now puts a floor of its prefill under TTFT; waiting for
  // the probe delays the prefill queue by at most the wait. Wait only when the floor could cost
  // more than the wait: when fetching every undecided chunk as KV over an infinitely fast link
  // (the best any bandwidth allows) would beat that floor by more than the wait.
  double deps = 0;
  for (uint32_t c = 0; c < front_; ++c) deps = std::max(deps, p.ready_s[c]);
  const double floor_s = std::max({now_s, p.state.gpu_free_s, deps}) + work_s_[front_][0] +
                         config_.cost.first_token_s;
  const Prediction fastest = replay(now_s, INFINITY);
  double best_s = INFINITY;
  for (int o : plannable_)
    best_s = std::min(best_s, score_shape(now_s, fastest, {0, o, o, back_ - front_}).ttft_s);
  return floor_s - best_s > probe_end_s(now_s) - now_s;
}

Decision Controller::Impl::decide(uint32_t chunk, int option, double now_s, double predicted_ttft_s) {
  Decision d;
  d.chunk = chunk;
  d.option = option;
  d.bytes = request_bytes(chunk, option, used_mask_);
  d.estimate_gbps = estimator_.estimate_gbps();
  d.predicted_ttft_s = predicted_ttft_s;
  if (option != kTextOption) {
    used_mask_ |= uint64_t(1) << option;
    if (first_kv_request_s_ < 0) first_kv_request_s_ = now_s;
  }
  state_[chunk] = {option, d.bytes, 0, now_s, -1, -1};
  request_order_.push_back(chunk);
  decisions_.push_back(d);
  if (chunk == front_) ++front_; else --back_;
  return d;
}

std::optional<Decision> Controller::Impl::next_request(double now_s) {
  if (all_requested() && config_.policy != Policy::kAdaptive) return std::nullopt;
  switch (config_.policy) {
    case Policy::kFixed: {  // the plan needs no feedback: everything at once, in order, or on its times
      if (config_.plan_request_s.empty()) return decide(front_, config_.plan[front_], now_s, 0);
      const uint32_t c = fixed_next();
      if (config_.plan_request_s[c] > now_s) return std::nullopt;
      return decide(c, config_.plan[c], now_s, 0);
    }
    case Policy::kEqualBudget:
      if (link_full(predict(now_s))) return std::nullopt;
      return decide(front_, equal_budget_choice(front_), now_s, 0);
    case Policy::kAdaptive:
      break;
  }
  last_asked_s_ = now_s;
  hedge_wake_s_ = -1;
  if (now_s >= text_deferred_until_s_) text_deferred_until_s_ = -1;
  // Decide as late as possible: the front chunk only when the GPU would otherwise idle, a
  // back chunk only when the link would.
  const auto text_queued = std::count_if(state_.begin(), state_.end(), [](const ChunkState& s) {
    return s.option == kTextOption && s.request_s >= 0 && s.ready_s < 0;
  });
  const bool gpu_idle = text_queued == 0;
  // Room for one more TEXT decision: the GPU queue holds fewer than prefill_queue chunks.
  const bool gpu_room = uint32_t(text_queued) < config_.prefill_queue;
  if (all_requested() && !(gpu_idle && text_allowed_)) return std::nullopt;
  const Prediction p = predict(now_s);
  if (all_requested()) return abandon_late_kv(now_s, p);
  // Cold start: until the first KV bytes are timed the bandwidth is unknown, not the prior.
  // The link is then kept busy with the cheapest requests for the fastest link the decoder could
  // keep up with (requests from the back cost a slow link nothing: the back chunks, the ones a
  // plan fetches, leave first, and the GPU abandons the others when it reaches them), and TEXT
  // may wait for the measurement (defer_text).
  const bool probe = probing(now_s);
  const bool link_room = probe || !link_full(p);
  if (!(gpu_room && text_allowed_) && !link_room) return std::nullopt;
  detail::PlanScore score;
  const detail::PlanShape plan = plan_rest(now_s, p, &score);
  if (gpu_room && plan.text > 0) {
    if (!probe || !defer_text(now_s, p)) return decide(front_, kTextOption, now_s, score.ttft_s);
    text_deferred_until_s_ = probe_end_s(now_s);
  }
  if (link_room && (plan.text < back_ - front_ || probe)) {
    const uint32_t c = back_ - 1;
    // For the lowest TTFT a probe is the cheapest request: it arrives, and measures the link,
    // soonest. Within an SLO it is the plan's own choice, so a link that turns out fast costs no
    // quality; only a plan that fetches nothing probes at the cheapest option.
    const bool kv_planned = plan.text < back_ - front_;
    int option = kv_planned && !(probe && config_.objective == Objective::kMinTtft)
                     ? (plan.count_a > 0 ? plan.a : plan.b)
                     : smallest_option(c, plannable_);
    if (!probe && hedged()) option = hedge_option(now_s, p, option, gpu_room);
    if (option != kNoOption && (!probe || !link_full(replay(now_s, decoder_bound_gbps(c, option)))))
      return decide(c, option, now_s, score.ttft_s);
  }
  // The hedge: were the link to drop now, recomputing from the front must still finish in time.
  // One chunk at a time: the GPU's queue is not held for insurance.
  if (hedged() && gpu_idle && front_ < back_) {
    const double slack = hedge_bound_s_ - kHedgeMarginS - drop_recovery_s(now_s, p, kNoOption);
    if (slack <= 1e-9) return decide(front_, kTextOption, now_s, score.ttft_s);
    // With no news, the slack runs out at the GPU's pace: be asked again then.
    hedge_wake_s_ = now_s + slack;
  }
  if (gpu_idle && text_allowed_) return abandon_late_kv(now_s, p);
  return std::nullopt;
}

double Controller::Impl::decoder_bound_gbps(uint32_t chunk, int option) const noexcept {
  // The link rate beyond which the decoder, not the link, limits KV at this option.
  const double work = work_s_[chunk][size_t(option + 1)];
  if (!(work > 0)) return INFINITY;
  const double gbps = double(profile_.chunk_bytes(chunk, option)) * 8 / work / 1e9;
  return std::max(estimator_.estimate_gbps(), gbps);
}

std::optional<double> Controller::Impl::wake_s() const noexcept {
  double wake = text_deferred_until_s_;
  if (config_.policy == Policy::kFixed && !config_.plan_request_s.empty() && !all_requested())
    wake = config_.plan_request_s[fixed_next()];
  if (config_.policy == Policy::kAdaptive && !all_ready()) {
    for (double w : {late_kv_wake_s(), hedge_wake_s_})
      if (w >= 0 && (wake < 0 || w < wake)) wake = w;
  }
  if (wake < 0) return std::nullopt;
  return wake;
}

double Controller::Impl::late_kv_wake_s() const noexcept {
  // The chunk predict() watches can be found late from a slack after its first byte could
  // arrive (cold: once the probe window is over); after that the bytes received decide, so ask
  // again every slack while it is on its way. Without being asked then, a client that hears
  // nothing until the chunk ends (the simulator; a real client whose socket is quiet) would
  // plan on a bandwidth the link no longer has until it is too late to recompute.
  double first_byte_s = 0;
  if (first_kv_on_way(&first_byte_s) < 0) return -1;
  const double first = guessing() ? std::max(probe_end_s(last_asked_s_), first_byte_s + 4 * kOverdueSlackS)
                                  : first_byte_s + kOverdueSlackS;
  return std::max(first, last_asked_s_ + kOverdueSlackS);
}

bool Controller::Impl::hedged() const noexcept {
  return config_.policy == Policy::kAdaptive && config_.objective == Objective::kMinPrefillWithinSlo &&
         text_allowed_;
}

double Controller::Impl::drop_recovery_s(double now_s, const Prediction& p, int extra) const {
  const uint32_t n = profile_.chunks();
  const double rtt = config_.cost.rtt_s;
  const detail::ConstantLink low{p.gbps / config_.hedge_drop_factor};
  std::vector<double> kv_ready(n, INFINITY);
  // Server time of the bytes arriving now; the link carries what is left of each request in
  // request order, from there on at the low rate.
  double link_free = now_s - rtt / 2, decoder_free = now_s;
  auto send = [&](uint32_t c, uint64_t bytes, double request_s, int option) {
    link_free = low.finish_time(std::max(link_free, request_s + rtt / 2), bytes);
    kv_ready[c] = decoder_free = std::max(link_free + rtt / 2, decoder_free) + work_s_[c][size_t(option + 1)];
  };
  for (uint32_t c : request_order_) {
    const ChunkState& st = state_[c];
    if (st.option == kTextOption || st.ready_s >= 0) continue;
    if (st.arrival_s >= 0) {  // decoding
      kv_ready[c] = p.ready_s[c];
      decoder_free = std::max(decoder_free, kv_ready[c]);
      continue;
    }
    send(c, st.bytes - std::min(st.received, st.bytes), st.request_s, st.option);
  }
  if (extra != kNoOption) send(back_ - 1, request_bytes(back_ - 1, extra, used_mask_), now_s, extra);
  double gpu = now_s, prefix = 0;
  for (uint32_t c = 0; c < n; ++c) {
    const ChunkState& st = state_[c];
    double ready = st.ready_s;
    if (ready < 0 && st.request_s >= 0 && st.option == kTextOption) {
      ready = p.ready_s[c];
      gpu = std::max(gpu, ready);
    } else if (ready < 0) {
      const double text = std::max(gpu, prefix) + work_s_[c][0];
      ready = std::min(kv_ready[c], text);
      if (ready == text) gpu = text;
    }
    prefix = std::max(prefix, ready);
  }
  return prefix + config_.cost.first_token_s;
}

int Controller::Impl::hedge_option(double now_s, const Prediction& p, int planned, bool gpu_room) const {
  // Options from the plan's down to the lowest quality within the floor.
  auto it = std::find(plannable_.begin(), plannable_.end(), planned);
  if (it == plannable_.end()) return planned;
  int best = planned;
  double best_s = INFINITY;
  for (; it != plannable_.end(); ++it) {
    const double r = drop_recovery_s(now_s, p, *it);
    if (r <= hedge_bound_s_ - kHedgeMarginS) return *it;
    if (r < best_s) {
      best_s = r;
      best = *it;
    }
  }
  // None is safe: the GPU takes the front chunk first if it can; else the safest request.
  return gpu_room && front_ < back_ - 1 ? kNoOption : best;
}

std::optional<Decision> Controller::Impl::abandon_late_kv(double now_s, const Prediction& p) {
  // The first chunk not yet ready is the one the prefill queue would take next. If it is a KV
  // chunk still on its way and recomputing it (every earlier chunk being ready) is predicted
  // to finish first, recompute it.
  double deps = 0;
  for (uint32_t c = 0; c < profile_.chunks(); ++c) {
    const ChunkState& st = state_[c];
    if (st.ready_s >= 0) {
      deps = std::max(deps, st.ready_s);
      continue;
    }
    if (st.request_s < 0 || st.option == kTextOption || st.arrival_s >= 0) return std::nullopt;
    const double recompute_ready = std::max(now_s, deps) + work_s_[c][0];
    if (!(recompute_ready < p.ready_s[c])) return std::nullopt;
    // Recompute costs GPU work: under kMinPrefillWithinSlo, only to save the SLO.
    if (is_min_prefill(config_.objective) &&
        p.state.ready_max_s + config_.cost.first_token_s <= config_.slo_s * (1 - config_.slo_headroom))
      return std::nullopt;
    Decision d;
    d.chunk = c;
    d.option = kTextOption;
    d.estimate_gbps = estimator_.estimate_gbps();
    d.predicted_ttft_s = recompute_ready;
    d.replaces_request = true;
    state_[c] = {kTextOption, 0, 0, now_s, -1, -1};
    for (Decision& old : decisions_)
      if (old.chunk == c) old = d;
    return d;
  }
  return std::nullopt;
}

Status Controller::Impl::on_chunk_received(uint32_t chunk, uint64_t bytes, double transfer_s, double now_s) {
  if (chunk >= state_.size() || state_[chunk].request_s < 0)
    return OutOfRange("received a chunk that was not requested");
  ChunkState& st = state_[chunk];
  if (st.arrival_s >= 0) return InvalidArgument("chunk received twice");
  // An abandoned KV request still measures the link; the chunk itself is being recomputed.
  if (st.option != kTextOption) st.arrival_s = now_s;
  estimator_.add_sample(bytes, transfer_s);
  return Status::Ok();
}

Status Controller::Impl::on_progress(uint32_t chunk, uint64_t bytes_received, double /*now_s*/) {
  if (chunk >= state_.size() || state_[chunk].request_s < 0)
    return OutOfRange("progress on a chunk that was not requested");
  ChunkState& st = state_[chunk];
  if (bytes_received > st.bytes && st.option != kTextOption)
    return InvalidArgument("progress beyond the chunk's size");
  st.received = bytes_received;
  return Status::Ok();
}

Status Controller::Impl::on_chunk_ready(uint32_t chunk, double now_s) {
  if (chunk >= state_.size() || state_[chunk].request_s < 0)
    return OutOfRange("ready chunk was not requested");
  ChunkState& st = state_[chunk];
  if (st.option != kTextOption && st.arrival_s < 0)
    return InvalidArgument("chunk ready before it was received");
  if (st.ready_s >= 0) return InvalidArgument("chunk ready twice");
  st.ready_s = now_s;
  return Status::Ok();
}

StatusOr<Decision> Controller::Impl::fall_back_to_text(uint32_t chunk, double now_s) {
  if (chunk >= state_.size() || state_[chunk].request_s < 0)
    return OutOfRange("fallback for a chunk that was not requested");
  if (!text_allowed_) return Unavailable("no text fallback: the context has no text or no prefill");
  if (state_[chunk].ready_s >= 0) return InvalidArgument("fallback for a chunk already ready");
  Decision d;
  d.chunk = chunk;
  d.option = kTextOption;
  d.estimate_gbps = estimator_.estimate_gbps();
  d.replaces_request = true;
  state_[chunk] = {kTextOption, 0, 0, now_s, -1, -1};
  for (Decision& old : decisions_)
    if (old.chunk == chunk) old = d;
  return d;
}

}  // namespace kvcodec
