// Internal: the timing model of controller.hpp, written once and used by both the Controller's
// planner (over a constant estimated bandwidth) and the simulator (over the true trace), plus
// the plan-family search shared by the planner and the oracle.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kvcodec/controller.hpp"

namespace kvcodec::detail {

inline double bytes_per_second(double gbps) noexcept { return gbps * 1e9 / 8.0; }

// A link of constant bandwidth (the planner's view: the current estimate).
struct ConstantLink {
  double gbps;
  double finish_time(double start_s, uint64_t bytes) const noexcept {
    return start_s + double(bytes) / bytes_per_second(gbps);
  }
};

// Where the shared resources stand after the chunks added so far (all times on one clock).
struct PipelineState {
  double link_free_s = 0;     // the server's link finishes what it was asked to send
  double decoder_free_s = 0;  // the decoder finishes its queue
  double gpu_free_s = 0;      // the prefill queue finishes
  double ready_max_s = 0;     // every chunk added so far is ready
};

struct ChunkTiming {
  double server_start_s = 0;  // first byte leaves the server
  double server_end_s = 0;    // last byte leaves the server
  double arrival_s = 0;       // last byte reaches the client
  double ready_s = 0;         // decoded
};

// Seconds of decoder (KV options) or GPU (TEXT) work chunk c at `option` costs.
inline double chunk_work_seconds(const ContextProfile& p, const CostModel& cost, uint32_t c,
                                 int option) noexcept {
  if (option == kTextOption) return cost.prefill_seconds(p.chunk_tokens[c], p.token_begin(c));
  const double gbps = p.options[size_t(option)].decode_gbps;
  if (gbps <= 0) return 0;
  return double(p.chunk_tokens[c]) * double(p.raw_bytes_per_token) / (gbps * 1e9);
}

// Timing of one more KV chunk on the FIFO link and decoder, given when its request was sent.
template <typename Link>
ChunkTiming advance_kv(PipelineState& s, const Link& link, double rtt_s, double request_s,
                       uint64_t bytes, double work_s) noexcept {
  ChunkTiming t;
  t.server_start_s = std::max(s.link_free_s, request_s + rtt_s / 2);
  t.server_end_s = link.finish_time(t.server_start_s, bytes);
  t.arrival_s = t.server_end_s + rtt_s / 2;
  s.link_free_s = t.server_end_s;
  t.ready_s = s.decoder_free_s = std::max(t.arrival_s, s.decoder_free_s) + work_s;
  s.ready_max_s = std::max(s.ready_max_s, t.ready_s);
  return t;
}

// Ready time of one more TEXT chunk: its token ids are at the client already (the prompt, or
// the manifest), so it needs no transfer; its prefill starts once the GPU queue is free and
// `deps_ready_s`, the time every earlier chunk of the context is ready (prefill attends over
// their KV).
inline double advance_text(PipelineState& s, double decided_s, double deps_ready_s,
                           double work_s) noexcept {
  const double ready = std::max({decided_s, s.gpu_free_s, deps_ready_s}) + work_s;
  s.gpu_free_s = ready;
  s.ready_max_s = std::max(s.ready_max_s, ready);
  return ready;
}

// ---- Plan search --------------------------------------------------------------------------------

// The plans considered for the r chunks not yet decided: the first `text` of them as TEXT, the
// others as KV, `count_a` of them at option `a` and the rest at option `b` (b == a: uniform).
// option_at() lists them in context order, KV at `a` first; the adaptive controller fetches
// the KV part from the back of the context, `a` first. The oracle refines further, chunk by
// chunk.
struct PlanShape {
  uint32_t text = 0;
  int a = 0, b = 0;
  uint32_t count_a = 0;

  int option_at(uint32_t i) const noexcept {  // i: 0-based among the remaining chunks
    if (i < text) return kTextOption;
    return i < text + count_a ? a : b;
  }
};

struct PlanScore {
  double ttft_s = 0;
  double distortion = 0;  // token-weighted sum over the planned chunks
  double prefill_s = 0;   // GPU seconds of the planned TEXT chunks
};

// True when `x` is better than `y` for the objective; `target_s` is the TTFT to meet.
inline bool better(const PlanScore& x, const PlanScore& y, Objective objective,
                   double target_s) noexcept {
  constexpr double kRel = 1e-9;
  auto less = [](double u, double v) { return u < v - kRel * std::max(std::abs(u), std::abs(v)); };
  if (objective != Objective::kMinTtft) {
    const bool fx = x.ttft_s <= target_s, fy = y.ttft_s <= target_s;
    if (fx != fy) return fx;
    if (!fx) return less(x.ttft_s, y.ttft_s);
    if (is_min_prefill(objective)) {
      if (less(x.prefill_s, y.prefill_s)) return true;
      if (less(y.prefill_s, x.prefill_s)) return false;
    }
    if (less(x.distortion, y.distortion)) return true;
    if (less(y.distortion, x.distortion)) return false;
    return less(x.ttft_s, y.ttft_s);
  }
  if (less(x.ttft_s, y.ttft_s)) return true;
  if (less(y.ttft_s, x.ttft_s)) return false;
  return less(x.distortion, y.distortion);
}

// Option indices from best to worst quality (distortion, then mean size).
inline std::vector<int> options_by_quality(const ContextProfile& p) {
  std::vector<int> order(p.options.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<double> mean(p.options.size(), 0);
  for (const auto& row : p.bytes)
    for (size_t o = 0; o < row.size(); ++o) mean[o] += double(row[o]);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
    if (p.options[x].distortion != p.options[y].distortion)
      return p.options[x].distortion < p.options[y].distortion;
    return mean[x] < mean[y];
  });
  return order;
}

// The options a plan may use under `config`, best quality first: all of them, except that
// kMinPrefillWithinSlo drops those above its quality floor (unless nothing else could fetch the
// context: no option within the floor and no TEXT).
inline std::vector<int> plannable_options(const ContextProfile& p, const ControllerConfig& config,
                                          bool text_ok) {
  std::vector<int> order = options_by_quality(p);
  if (!is_min_prefill(config.objective)) return order;
  std::vector<int> kept;
  for (int o : order)
    if (p.options[size_t(o)].distortion <= config.max_distortion) kept.push_back(o);
  return kept.empty() && !text_ok ? order : kept;
}

// Best PlanShape for `remaining` chunks under `objective`. `score(shape)` predicts a plan.
// For each text prefix and each pair of options (a better than b) the split count_a is found
// by bisection (within the SLO: the most chunks at a that still meet it) or ternary search
// (lowest TTFT), so the cost is O(remaining * options^2 * log(remaining)) scores.
template <typename Score>
PlanShape search_plans(uint32_t remaining, const std::vector<int>& by_quality, bool text_allowed,
                       Objective objective, double target_s, Score&& score,
                       PlanScore* best_score) {
  PlanShape best;
  PlanScore best_s;
  bool have = false;
  auto consider = [&](const PlanShape& shape) {
    const PlanScore s = score(shape);
    if (!have || better(s, best_s, objective, target_s)) {
      best = shape;
      best_s = s;
      have = true;
    }
    return s;
  };
  const uint32_t max_text = text_allowed ? remaining : 0;
  for (uint32_t text = 0; text <= max_text; ++text) {
    const uint32_t rest = remaining - text;
    if (rest == 0 || by_quality.empty()) {
      if (rest == 0) consider({text, 0, 0, 0});  // no option to fetch the rest with otherwise
      continue;
    }
    for (size_t ia = 0; ia < by_quality.size(); ++ia) {
      const int a = by_quality[ia];
      consider({text, a, a, rest});  // uniform
      for (size_t ib = ia + 1; ib < by_quality.size(); ++ib) {
        const int b = by_quality[ib];
        auto at = [&](uint32_t k) { return PlanShape{text, a, b, k}; };
        uint32_t lo = 0, hi = rest;  // count_a in [lo, hi]
        if (objective != Objective::kMinTtft) {
          // More chunks at the better option cost more time: find the largest count that fits.
          if (score(at(0)).ttft_s > target_s) continue;
          while (lo < hi) {
            const uint32_t mid = lo + (hi - lo + 1) / 2;
            if (score(at(mid)).ttft_s <= target_s) lo = mid; else hi = mid - 1;
          }
          consider(at(lo));
        } else {
          while (hi - lo > 2) {
            const uint32_t m1 = lo + (hi - lo) / 3, m2 = hi - (hi - lo) / 3;
            if (score(at(m1)).ttft_s <= score(at(m2)).ttft_s) hi = m2; else lo = m1;
          }
          for (uint32_t k = lo; k <= hi; ++k) consider(at(k));
        }
      }
    }
  }
  if (best_score) *best_score = best_s;
  return best;
}

}  // namespace kvcodec::detail
