// Deterministic streaming simulator and the trace-aware oracle (simulator.hpp).
#include "kvcodec/simulator.hpp"

#include <algorithm>
#include <cmath>
#include <queue>
#include <tuple>

#include "pipeline.hpp"

namespace kvcodec {
namespace {

struct Event {
  double time_s;
  int kind;  // 0: chunk arrived, 1: chunk ready (an arrival is handled before a ready at a tie),
             // 2: the controller asked to be called (Controller::wake_s)
  uint32_t chunk;
  uint32_t generation;  // a chunk re-decided (abandoned KV) gets a new one; old readies lapse
  bool operator>(const Event& o) const {
    return std::tie(time_s, kind, chunk, generation) >
           std::tie(o.time_s, o.kind, o.chunk, o.generation);
  }
};

void summarize(const ContextProfile& p, const ControllerConfig& config, SimResult* r) {
  double ready = 0, distortion = 0;
  for (const ChunkTimeline& t : r->chunks) {
    ready = std::max(ready, t.ready_s);
    r->bytes += t.bytes;
    distortion += p.chunk_tokens[t.chunk] * p.distortion(t.option);
    r->text_chunks += t.option == kTextOption;
    if (t.option == kTextOption) {
      r->prefill_tokens += p.chunk_tokens[t.chunk];
      r->prefill_s += config.cost.prefill_seconds(p.chunk_tokens[t.chunk], p.token_begin(t.chunk));
    }
  }
  const double tokens = double(p.tokens());
  r->ttft_s = ready + config.cost.first_token_s;
  r->slo_met = r->ttft_s <= config.slo_s;
  r->distortion = distortion / tokens;
  if (p.elements_per_token)
    r->bits_per_element = 8.0 * double(r->bytes) / (double(p.elements_per_token) * tokens);
}

// Adds chunk c at option o to a plan whose chunks 0..c-1 are in `s` (every chunk decided at
// time 0, in context order, as Policy::kFixed runs it); `used` marks the options whose frame
// head is already fetched; r.distortion accumulates.
void add_fixed_chunk(const ContextProfile& p, const CostModel& cost, const std::vector<std::vector<double>>& work_s,
                     const LinkTrace& link, uint32_t c, int o, detail::PipelineState& s, uint64_t& used,
                     detail::PlanScore& r) {
  const double work = work_s[c][size_t(o + 1)];
  if (o == kTextOption) {
    // In context order, every earlier chunk is already in s.ready_max_s.
    detail::advance_text(s, 0.0, s.ready_max_s, work);
    r.prefill_s += work;
    return;
  }
  uint64_t bytes = p.chunk_bytes(c, o);
  if (!(used >> o & 1)) bytes += p.options[size_t(o)].setup_bytes;
  used |= uint64_t(1) << o;
  detail::advance_kv(s, link, cost.rtt_s, 0.0, bytes, work);
  r.distortion += p.chunk_tokens[c] * p.distortion(o);
}

// Scores a whole plan.
detail::PlanScore score_fixed(const ContextProfile& p, const CostModel& cost,
                              const std::vector<std::vector<double>>& work_s,
                              const LinkTrace& link, const std::vector<int>& plan) {
  detail::PipelineState s;
  detail::PlanScore r;
  uint64_t used = 0;
  for (uint32_t c = 0; c < p.chunks(); ++c) add_fixed_chunk(p, cost, work_s, link, c, plan[c], s, used, r);
  r.ttft_s = s.ready_max_s + cost.first_token_s;
  return r;
}

// Plans at most this many (choices^chunks) are searched exactly.
constexpr double kExactPlans = 1 << 22;

// Exact search: every plan, depth first in context order with the pipeline state carried
// along. A branch is cut as soon as the best plan so far is better than what the branch has
// already spent (its ready time and distortion only grow as chunks are added), so the result is
// the best plan of all, found in far fewer steps than choices^chunks.
struct ExactSearch {
  const ContextProfile& p;
  const CostModel& cost;
  const std::vector<std::vector<double>>& work_s;
  const LinkTrace& link;
  const std::vector<int>& choices;
  Objective objective;
  double target_s;
  std::vector<int> plan, best_plan;
  detail::PlanScore best;

  void run(uint32_t c, const detail::PipelineState& s, uint64_t used, const detail::PlanScore& spent) {
    const detail::PlanScore so_far{s.ready_max_s + cost.first_token_s, spent.distortion, spent.prefill_s};
    if (detail::better(best, so_far, objective, target_s)) return;
    if (c == p.chunks()) {
      if (detail::better(so_far, best, objective, target_s)) {
        best = so_far;
        best_plan = plan;
      }
      return;
    }
    for (int o : choices) {
      detail::PipelineState next = s;
      uint64_t next_used = used;
      detail::PlanScore next_spent = spent;
      add_fixed_chunk(p, cost, work_s, link, c, o, next, next_used, next_spent);
      plan[c] = o;
      run(c + 1, next, next_used, next_spent);
    }
  }
};

}  // namespace

StatusOr<SimResult> simulate(const ContextProfile& profile, const ControllerConfig& config,
                             const LinkTrace& link) {
  KVCODEC_RETURN_IF_ERROR(link.validate());
  KVCODEC_ASSIGN_OR_RETURN(Controller controller, Controller::create(profile, config));
  const double rtt = config.cost.rtt_s;
  SimResult result;
  result.chunks.resize(profile.chunks());
  detail::PipelineState truth;                           // the real link and compute queues
  std::vector<double> busy_s(profile.chunks(), 0);       // link time of each chunk's bytes
  std::vector<double> server_start(profile.chunks(), 0);
  std::vector<uint32_t> on_link;                         // KV chunks in link order
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events;

  std::vector<double> ready(profile.chunks(), -1);
  std::vector<uint32_t> generation(profile.chunks(), 0);

  // The link and the decoder are FIFO and the GPU prefills in decision order, so a chunk's
  // whole timeline is known the moment it is decided.
  auto issue = [&](double now) -> Status {
    while (auto d = controller.next_request(now)) {
      const double work = detail::chunk_work_seconds(profile, config.cost, d->chunk, d->option);
      ChunkTimeline& t = result.chunks[d->chunk];
      const uint32_t gen = d->replaces_request ? ++generation[d->chunk] : 0;
      // An abandoned request's bytes stay on the link (no cancellation) and count.
      const uint64_t abandoned = d->replaces_request ? t.bytes : 0;
      t = {d->chunk, d->option, d->bytes + abandoned, now, now, 0, d->estimate_gbps};
      if (d->option == kTextOption) {
        double deps = 0;
        for (uint32_t c = 0; c < d->chunk; ++c) {
          if (ready[c] < 0) return Internal("TEXT chunk decided before an earlier chunk");
          deps = std::max(deps, ready[c]);
        }
        t.ready_s = detail::advance_text(truth, now, deps, work);
      } else {
        const detail::ChunkTiming k = detail::advance_kv(truth, link, rtt, now, d->bytes, work);
        t.arrival_s = k.arrival_s;
        t.ready_s = k.ready_s;
        busy_s[d->chunk] = k.server_end_s - k.server_start_s;
        server_start[d->chunk] = k.server_start_s;
        on_link.push_back(d->chunk);
        events.push({k.arrival_s, 0, d->chunk, gen});
      }
      ready[d->chunk] = t.ready_s;
      events.push({t.ready_s, 1, d->chunk, gen});
    }
    if (const auto wake = controller.wake_s(); wake && *wake > now) events.push({*wake, 2, 0, 0});
    return Status::Ok();
  };
  KVCODEC_RETURN_IF_ERROR(issue(0.0));
  while (!events.empty()) {
    const Event e = events.top();
    events.pop();
    // What a client observes: a KV chunk arrives (timed from its first to its last byte, i.e.
    // the link's busy time for it); chunks become ready.
    if (e.kind == 0) {
      KVCODEC_RETURN_IF_ERROR(controller.on_chunk_received(e.chunk, result.chunks[e.chunk].bytes,
                                                           busy_s[e.chunk], e.time_s));
    } else if (e.kind == 1 && e.generation == generation[e.chunk]) {
      const int option = result.chunks[e.chunk].option;
      if (option != kTextOption)  // the decoder's time, as a client measures it
        KVCODEC_RETURN_IF_ERROR(controller.on_chunk_decoded(
            e.chunk, detail::chunk_work_seconds(profile, config.cost, e.chunk, option)));
      KVCODEC_RETURN_IF_ERROR(controller.on_chunk_ready(e.chunk, e.time_s));
    }
    // The client can count the bytes of the chunk it is receiving.
    const double sent_by = e.time_s - rtt / 2;  // server time of the bytes arriving now
    for (uint32_t c : on_link) {
      const double end = result.chunks[c].arrival_s - rtt / 2;
      if (server_start[c] < sent_by && sent_by < end) {
        const double got = link.bytes_between(server_start[c], sent_by);
        KVCODEC_RETURN_IF_ERROR(controller.on_progress(c, uint64_t(got), e.time_s));
        break;
      }
    }
    KVCODEC_RETURN_IF_ERROR(issue(e.time_s));
  }
  if (!controller.all_ready()) return Internal("simulation ended with chunks never requested");
  summarize(profile, config, &result);
  return result;
}

StatusOr<std::vector<int>> oracle_plan(const ContextProfile& profile,
                                       const ControllerConfig& config, const LinkTrace& link) {
  KVCODEC_RETURN_IF_ERROR(link.validate());
  KVCODEC_RETURN_IF_ERROR(profile.validate());
  KVCODEC_RETURN_IF_ERROR(config.validate());
  const uint32_t n = profile.chunks();
  const bool text_ok = profile.text_available && config.cost.prefill_tokens_per_s > 0;
  if (profile.options.empty() && !text_ok)
    return InvalidArgument("no way to fetch the context: no options and no prefill");
  std::vector<std::vector<double>> work_s(n, std::vector<double>(profile.options.size() + 1));
  for (uint32_t c = 0; c < n; ++c)
    for (int o = kTextOption; o < int(profile.options.size()); ++o)
      work_s[c][size_t(o + 1)] = detail::chunk_work_seconds(profile, config.cost, c, o);

  auto expand = [n](const detail::PlanShape& shape) {
    std::vector<int> plan(n);
    for (uint32_t c = 0; c < n; ++c) plan[c] = shape.option_at(c);
    return plan;
  };
  auto score_plan = [&](const std::vector<int>& plan) {
    return score_fixed(profile, config.cost, work_s, link, plan);
  };
  // The oracle knows the truth, so it plans against the SLO itself (no headroom).
  const double target = config.slo_s;
  detail::PlanScore best;
  std::vector<int> plan = expand(detail::search_plans(
      n, detail::plannable_options(profile, config, text_ok), text_ok, config.objective, target,
      [&](const detail::PlanShape& shape) { return score_plan(expand(shape)); }, &best));

  // Refine chunk by chunk: any single change that improves the plan is kept, until none does.
  // Each pass costs chunks x (options + 1) exact simulations.
  std::vector<int> choices;
  if (text_ok) choices.push_back(kTextOption);
  for (int o : detail::plannable_options(profile, config, text_ok)) choices.push_back(o);
  constexpr int kMaxPasses = 64;
  for (int pass = 0; pass < kMaxPasses; ++pass) {
    bool improved = false;
    for (uint32_t c = 0; c < n; ++c) {
      for (int o : choices) {
        if (o == plan[c]) continue;
        const int previous = plan[c];
        plan[c] = o;
        const detail::PlanScore s = score_plan(plan);
        if (detail::better(s, best, config.objective, target)) {
          best = s;
          improved = true;
        } else {
          plan[c] = previous;
        }
      }
    }
    if (!improved) break;
  }
  // Few enough plans: search them all, starting from the plan found above (it cuts most
  // branches at once).
  if (std::pow(double(choices.size()), double(n)) <= kExactPlans) {
    ExactSearch exact{profile, config.cost, work_s, link, choices, config.objective, target, plan, plan, best};
    exact.run(0, detail::PipelineState{}, 0, detail::PlanScore{});
    plan = exact.best_plan;
  }
  return plan;
}

}  // namespace kvcodec
