// Metric functions on logits and rate-distortion curves (eval.hpp).
#include <algorithm>
#include <cmath>

#include "kvcodec/eval.hpp"

namespace kvcodec::eval {

std::vector<double> log_softmax(std::span<const float> logits) {
  std::vector<double> out(logits.size());
  if (logits.empty()) return out;
  const double top = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float v : logits) sum += std::exp(double(v) - top);
  const double log_z = top + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i) out[i] = double(logits[i]) - log_z;
  return out;
}

double negative_log_likelihood(std::span<const float> logits, int32_t target) {
  return -log_softmax(logits)[size_t(target)];
}

double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits) {
  const std::vector<double> lp = log_softmax(p_logits);
  const std::vector<double> lq = log_softmax(q_logits);
  double kl = 0.0;
  for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return std::max(kl, 0.0);  // rounding can leave a tiny negative sum for near-equal rows
}

double perplexity(std::span<const double> nll) {
  if (nll.empty()) return 1.0;
  double sum = 0.0;
  for (double v : nll) sum += v;
  return std::exp(sum / double(nll.size()));
}

Crossing interpolate_crossing(std::vector<CurvePoint> points, double target, bool log_metric) {
  std::sort(points.begin(), points.end(), [](const CurvePoint& a, const CurvePoint& b) { return a.bits > b.bits; });
  for (size_t i = 0; i < points.size(); ++i) {
    if (points[i].metric < target) continue;
    if (i == 0) return {std::nullopt, "above target at every setting"};
    const CurvePoint& hi = points[i - 1];  // more bits, below the target
    const CurvePoint& lo = points[i];      // fewer bits, at or above it
    double f;
    if (log_metric && hi.metric > 0.0) {
      f = (std::log(target) - std::log(hi.metric)) / (std::log(lo.metric) - std::log(hi.metric));
    } else {
      f = (target - hi.metric) / (lo.metric - hi.metric);
    }
    return {hi.bits + f * (lo.bits - hi.bits), ""};
  }
  return {std::nullopt, "not reached"};
}

}  // namespace kvcodec::eval
