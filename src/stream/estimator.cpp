// Bandwidth estimator (controller.hpp; the method is explained in docs/controller.md).
#include <cmath>

#include "kvcodec/controller.hpp"

namespace kvcodec {

Status EstimatorConfig::validate() const {
  if (!(prior_gbps > 0) || !std::isfinite(prior_gbps))
    return InvalidArgument("estimator prior_gbps must be > 0");
  if (window < 1 || window > 1024) return InvalidArgument("estimator window must be in 1..1024");
  if (!(drop_ratio > 0 && drop_ratio <= 1))
    return InvalidArgument("estimator drop_ratio must be in (0, 1]");
  if (!(rise_ratio >= 1) || !std::isfinite(rise_ratio))
    return InvalidArgument("estimator rise_ratio must be >= 1");
  return Status::Ok();
}

BandwidthEstimator::BandwidthEstimator(const EstimatorConfig& config)
    : config_(config), estimate_gbps_(config.prior_gbps) {}

double BandwidthEstimator::last_sample_gbps() const noexcept {
  return window_.empty() ? config_.prior_gbps : window_.back();
}

void BandwidthEstimator::add_sample(uint64_t bytes, double seconds) {
  if (bytes < config_.min_sample_bytes || !(seconds > 0) || !std::isfinite(seconds)) return;
  const double gbps = double(bytes) * 8.0 / seconds / 1e9;
  ++total_samples_;
  if (window_.empty()) {
    // The prior is a guess, not a measurement: the first sample replaces it outright.
    window_.push_back(gbps);
  } else if (gbps < config_.drop_ratio * estimate_gbps_) {
    // A sudden drop: planning on the old figure would overshoot the SLO, so believe it now.
    window_.assign(1, gbps);
    rises_in_a_row_ = 0;
  } else if (gbps > config_.rise_ratio * estimate_gbps_ && ++rises_in_a_row_ >= 2) {
    // A rise confirmed by two samples in a row: restart from the two.
    const double previous = window_.back();
    window_.assign({previous, gbps});
    rises_in_a_row_ = 0;
  } else {
    if (gbps <= config_.rise_ratio * estimate_gbps_) rises_in_a_row_ = 0;
    window_.push_back(gbps);
  }
  if (window_.size() > config_.window)
    window_.erase(window_.begin(), window_.end() - config_.window);
  recompute();
}

void BandwidthEstimator::recompute() {
  // Harmonic mean: the throughput that, applied to every recent chunk, gives their total time.
  double inverse_sum = 0;
  for (double g : window_) inverse_sum += 1.0 / g;
  estimate_gbps_ = double(window_.size()) / inverse_sum;
}

}  // namespace kvcodec
