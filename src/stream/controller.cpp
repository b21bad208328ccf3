// The per-chunk controller (controller.hpp; design and planner in docs/controller.md).
#include <algorithm>
#include <cmath>

#include "kvcodec/controller.hpp"
#include "pipeline.hpp"

namespace kvcodec {
namespace {

constexpr uint32_t kMaxChunks = 1u << 20;
constexpr size_t kMaxOptions = 64;  // options used so far are tracked in a 64-bit mask

bool finite_nonneg(double x) { return std::isfinite(x) && x >= 0; }

}  // namespace

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
  KVCODEC_RETURN_IF_ERROR(cost.validate());
  return estimator.validate();
}

// ---- Controller ---------------------------------------------------------------------------------

Controller::Controller(ContextProfile profile, ControllerConfig config)
    : profile_(std::move(profile)), config_(std::move(config)), estimator_(config_.estimator) {}

StatusOr<Controller> Controller::create(ContextProfile profile, ControllerConfig config) {
  KVCODEC_RETURN_IF_ERROR(profile.validate());
  KVCODEC_RETURN_IF_ERROR(config.validate());
  const uint32_t n = profile.chunks();
  const bool text_ok = profile.text_available && config.cost.prefill_tokens_per_s > 0;
  if (config.policy == Policy::kFixed) {
    if (config.plan.size() == 1) config.plan.assign(n, config.plan[0]);
    if (config.plan.size() != n)
      return InvalidArgument("fixed plan must have one option per chunk (or a single one)");
    for (int o : config.plan) {
      if (o == kTextOption ? !text_ok : (o < 0 || size_t(o) >= profile.options.size()))
        return InvalidArgument("fixed plan names an option the context does not offer");
    }
  } else if (profile.options.empty() && !text_ok) {
    return InvalidArgument("no way to fetch the context: no options and no prefill");
  }
  Controller c(std::move(profile), std::move(config));
  c.text_allowed_ = text_ok;
  c.by_quality_ = detail::options_by_quality(c.profile_);
  c.state_.resize(n);
  c.decisions_.reserve(n);
  c.back_ = n;
  c.work_s_.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    c.work_s_[i].resize(c.profile_.options.size() + 1);
    for (int o = kTextOption; o < int(c.profile_.options.size()); ++o)
      c.work_s_[i][size_t(o + 1)] = detail::chunk_work_seconds(c.profile_, c.config_.cost, i, o);
  }
  return c;
}

struct Controller::Prediction {
  double gbps = 0;  // the bandwidth planned with
  detail::PipelineState state;
  std::vector<double> ready_s;  // per chunk; -1 for undecided
  double first_arrival_s = -1;  // first and last KV chunk still on the way (-1: none)
  double last_arrival_s = -1;
};

bool Controller::all_ready() const noexcept {
  if (!all_requested()) return false;
  return std::all_of(state_.begin(), state_.end(), [](const ChunkState& s) { return s.ready_s >= 0; });
}

uint64_t Controller::request_bytes(uint32_t chunk, int option, uint64_t used_mask) const noexcept {
  if (option == kTextOption) return 0;  // token ids are at the client already
  uint64_t b = profile_.chunk_bytes(chunk, option);
  if (!(used_mask >> option & 1)) b += profile_.options[size_t(option)].setup_bytes;
  return b;
}

Controller::Prediction Controller::predict(double now_s) const {
  // Replays every decided chunk at the current estimate, keeping what has been observed:
  // measured arrivals and ready times replace predictions, and nothing still pending is
  // predicted to happen before now.
  const double rtt = config_.cost.rtt_s;
  Prediction p;
  p.ready_s.assign(profile_.chunks(), -1);
  p.gbps = estimator_.estimate_gbps();
  {
    // A chunk still arriving long after it should have caps the estimate: its bytes have not
    // made it in the time it has been on the link. (The estimator only learns from complete
    // chunks; without this a link that collapses mid-chunk would go unnoticed until the chunk
    // ends.)
    double link_free = 0;
    for (uint32_t c : request_order_) {
      const ChunkState& st = state_[c];
      if (st.option == kTextOption) continue;
      if (st.arrival_s >= 0) {
        link_free = std::max(link_free, st.arrival_s - rtt / 2);
        continue;
      }
      // Seconds since its first byte could have reached the client.
      const double on_link_s = now_s - (std::max(link_free, st.request_s + rtt / 2) + rtt / 2);
      const double expected_s = double(st.bytes) * 8 / (p.gbps * 1e9);
      if (on_link_s > expected_s) {
        const double received = std::max<double>(double(st.received), 1.0);
        p.gbps = std::min(p.gbps, received * 8 / on_link_s / 1e9);
      }
      break;
    }
  }
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

bool Controller::link_full(const Prediction& p) const {
  if (p.first_arrival_s < 0) return false;  // nothing outstanding
  // A request sent when the next chunk arrives reaches the server rtt/2 later; the link stays
  // busy if what is already outstanding lasts until then.
  return p.last_arrival_s >= p.first_arrival_s + config_.cost.rtt_s;
}

int Controller::equal_budget_choice(uint32_t c) const {
  // CacheGen: each chunk gets slo / n; the best option whose transfer at the last measured
  // throughput fits it, else TEXT (else the smallest option when TEXT is unavailable).
  const double budget = config_.slo_s / profile_.chunks();
  const double bps = detail::bytes_per_second(estimator_.last_sample_gbps());
  for (int o : by_quality_)
    if (double(profile_.chunk_bytes(c, o)) / bps <= budget) return o;
  if (text_allowed_) return kTextOption;
  return *std::min_element(by_quality_.begin(), by_quality_.end(), [&](int x, int y) {
    return profile_.chunk_bytes(c, x) < profile_.chunk_bytes(c, y);
  });
}

detail::PlanShape Controller::plan_rest(double now_s, const Prediction& p,
                                        detail::PlanScore* score_out) const {
  // Re-plans every undecided chunk as if all were decided now and the bandwidth stayed at the
  // estimate: TEXT from the front (the GPU prefills in context order), KV from the back.
  const detail::ConstantLink link{p.gbps};
  double front_ready = 0;
  for (uint32_t c = 0; c < front_; ++c) front_ready = std::max(front_ready, p.ready_s[c]);
  const uint32_t remaining = back_ - front_;
  auto score = [&](const detail::PlanShape& shape) {
    detail::PipelineState s = p.state;
    detail::PlanScore r;
    double ready = front_ready;
    for (uint32_t i = 0; i < shape.text; ++i)
      ready = detail::advance_text(s, now_s, ready, work_s_[front_ + i][0]);
    uint64_t used = used_mask_;
    for (uint32_t j = 0; j < remaining - shape.text; ++j) {
      const uint32_t c = back_ - 1 - j;
      const int o = j < shape.count_a ? shape.a : shape.b;
      detail::advance_kv(s, link, config_.cost.rtt_s, now_s, request_bytes(c, o, used),
                         work_s_[c][size_t(o + 1)]);
      used |= uint64_t(1) << o;
      r.distortion += profile_.chunk_tokens[c] * profile_.distortion(o);
    }
    r.ttft_s = s.ready_max_s + config_.cost.first_token_s;
    return r;
  };
  return detail::search_plans(remaining, by_quality_, text_allowed_, config_.objective,
                              config_.slo_s * (1 - config_.slo_headroom), score, score_out);
}

Decision Controller::decide(uint32_t chunk, int option, double now_s, double predicted_ttft_s) {
  Decision d;
  d.chunk = chunk;
  d.option = option;
  d.bytes = request_bytes(chunk, option, used_mask_);
  d.estimate_gbps = estimator_.estimate_gbps();
  d.predicted_ttft_s = predicted_ttft_s;
  if (option != kTextOption) used_mask_ |= uint64_t(1) << option;
  state_[chunk] = {option, d.bytes, 0, now_s, -1, -1};
  request_order_.push_back(chunk);
  decisions_.push_back(d);
  if (chunk == front_) ++front_; else --back_;
  return d;
}

std::optional<Decision> Controller::next_request(double now_s) {
  if (all_requested() && config_.policy != Policy::kAdaptive) return std::nullopt;
  switch (config_.policy) {
    case Policy::kFixed:  // the plan needs no feedback: everything at once, in order
      return decide(front_, config_.plan[front_], now_s, 0);
    case Policy::kEqualBudget:
      if (link_full(predict(now_s))) return std::nullopt;
      return decide(front_, equal_budget_choice(front_), now_s, 0);
    case Policy::kAdaptive:
      break;
  }
  // Decide as late as possible: the front chunk only when the GPU would otherwise idle, a
  // back chunk only when the link would.
  const bool gpu_idle = std::none_of(state_.begin(), state_.end(), [](const ChunkState& s) {
    return s.option == kTextOption && s.request_s >= 0 && s.ready_s < 0;
  });
  if (all_requested() && !(gpu_idle && text_allowed_)) return std::nullopt;
  const Prediction p = predict(now_s);
  if (all_requested()) return abandon_late_kv(now_s, p);
  const bool link_room = !link_full(p);
  if (!(gpu_idle && text_allowed_) && !link_room) return std::nullopt;
  detail::PlanScore score;
  const detail::PlanShape plan = plan_rest(now_s, p, &score);
  if (gpu_idle && plan.text > 0) return decide(front_, kTextOption, now_s, score.ttft_s);
  if (link_room && plan.text < back_ - front_)
    return decide(back_ - 1, plan.count_a > 0 ? plan.a : plan.b, now_s, score.ttft_s);
  if (gpu_idle && text_allowed_) return abandon_late_kv(now_s, p);
  return std::nullopt;
}

std::optional<Decision> Controller::abandon_late_kv(double now_s, const Prediction& p) {
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

Status Controller::on_chunk_received(uint32_t chunk, uint64_t bytes, double transfer_s, double now_s) {
  if (chunk >= state_.size() || state_[chunk].request_s < 0)
    return OutOfRange("received a chunk that was not requested");
  ChunkState& st = state_[chunk];
  if (st.arrival_s >= 0) return InvalidArgument("chunk received twice");
  // An abandoned KV request still measures the link; the chunk itself is being recomputed.
  if (st.option != kTextOption) st.arrival_s = now_s;
  estimator_.add_sample(bytes, transfer_s);
  return Status::Ok();
}

Status Controller::on_progress(uint32_t chunk, uint64_t bytes_received, double /*now_s*/) {
  if (chunk >= state_.size() || state_[chunk].request_s < 0)
    return OutOfRange("progress on a chunk that was not requested");
  ChunkState& st = state_[chunk];
  if (bytes_received > st.bytes && st.option != kTextOption)
    return InvalidArgument("progress beyond the chunk's size");
  st.received = bytes_received;
  return Status::Ok();
}

Status Controller::on_chunk_ready(uint32_t chunk, double now_s) {
  if (chunk >= state_.size() || state_[chunk].request_s < 0)
    return OutOfRange("ready chunk was not requested");
  ChunkState& st = state_[chunk];
  if (st.option != kTextOption && st.arrival_s < 0)
    return InvalidArgument("chunk ready before it was received");
  if (st.ready_s >= 0) return InvalidArgument("chunk ready twice");
  st.ready_s = now_s;
  return Status::Ok();
}

StatusOr<Decision> Controller::fall_back_to_text(uint32_t chunk, double now_s) {
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
