// Piecewise-constant link traces (controller.hpp): parsing and transfer times.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>

#include "kvcodec/controller.hpp"
#include "kvcodec/io.hpp"

namespace kvcodec {
namespace {

// Limits on what a trace file may hold; they bound memory for untrusted input.
constexpr size_t kMaxTraceSteps = 1u << 20;

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r");
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r") - first + 1);
}

// Parses one whitespace-separated number from the front of `s`, advancing it.
bool take_number(std::string_view& s, double* out) {
  s = trim(s);
  const auto end = std::min(s.find_first_of(" \t"), s.size());
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + end, *out);
  if (ec != std::errc() || ptr != s.data() + end) return false;
  s.remove_prefix(end);
  return true;
}

Status line_error(size_t line, std::string_view what) {
  return InvalidArgument("trace line " + std::to_string(line) + ": " + std::string(what));
}

}  // namespace

Status check_link_gbps(double gbps, std::string_view what) {
  if (std::isfinite(gbps) && gbps >= kMinLinkGbps && gbps <= kMaxLinkGbps) return Status::Ok();
  return InvalidArgument(std::string(what) + " must be a bandwidth in [1e-6, 1e6] Gb/s, got " + std::to_string(gbps));
}

Status check_seconds(double s, double max_s, std::string_view what) {
  if (std::isfinite(s) && s >= 0 && s <= max_s && (s == 0 || std::isnormal(s))) return Status::Ok();
  return InvalidArgument(std::string(what) + " must be a time in [0, " + std::to_string(max_s) + "] s, got " +
                         std::to_string(s));
}

LinkTrace LinkTrace::constant(double gbps) { return LinkTrace{{{0.0, gbps}}}; }

Status LinkTrace::validate() const {
  if (steps.empty()) return InvalidArgument("trace has no steps");
  if (steps.size() > kMaxTraceSteps) return ResourceExhausted("trace has too many steps");
  if (steps.front().time_s != 0) return InvalidArgument("trace must start at time 0");
  for (size_t i = 0; i < steps.size(); ++i) {
    KVCODEC_RETURN_IF_ERROR(check_link_gbps(steps[i].gbps, "trace bandwidth"));
    KVCODEC_RETURN_IF_ERROR(check_seconds(steps[i].time_s, kMaxTraceSeconds, "trace time"));
    if (i > 0 && !(steps[i].time_s > steps[i - 1].time_s))
      return InvalidArgument("trace times must strictly increase");
  }
  return Status::Ok();
}

StatusOr<LinkTrace> LinkTrace::parse(std::string_view text) {
  LinkTrace trace;
  size_t line_no = 0;
  while (!text.empty()) {
    const auto nl = std::min(text.find('\n'), text.size());
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(std::min(nl + 1, text.size()));
    ++line_no;
    line = trim(line.substr(0, std::min(line.find('#'), line.size())));
    if (line.empty()) continue;
    Step step;
    if (!take_number(line, &step.time_s) || !take_number(line, &step.gbps))
      return line_error(line_no, "expected \"time_s gbps\"");
    if (!trim(line).empty()) return line_error(line_no, "unexpected text after \"time_s gbps\"");
    if (Status s = check_seconds(step.time_s, kMaxTraceSeconds, "time"); !s.ok()) return line_error(line_no, s.message());
    if (Status s = check_link_gbps(step.gbps, "bandwidth"); !s.ok()) return line_error(line_no, s.message());
    if (trace.steps.empty() && step.time_s != 0) return line_error(line_no, "first step must be at time 0");
    if (!trace.steps.empty() && !(step.time_s > trace.steps.back().time_s))
      return line_error(line_no, "times must strictly increase");
    if (trace.steps.size() == kMaxTraceSteps) return ResourceExhausted("trace has too many steps");
    trace.steps.push_back(step);
  }
  if (trace.steps.empty()) return InvalidArgument("trace has no steps");
  return trace;
}

StatusOr<LinkTrace> LinkTrace::load(const std::string& path) {
  auto bytes = read_file(path);
  if (!bytes.ok()) return bytes.status().with_context(path);
  auto trace = parse({reinterpret_cast<const char*>(bytes->data()), bytes->size()});
  if (!trace.ok()) return trace.status().with_context(path);
  return trace;
}

double LinkTrace::gbps_at(double t_s) const noexcept {
  auto it = std::upper_bound(steps.begin(), steps.end(), t_s,
                             [](double t, const Step& s) { return t < s.time_s; });
  return it == steps.begin() ? steps.front().gbps : std::prev(it)->gbps;
}

double LinkTrace::finish_time(double start_s, uint64_t bytes) const noexcept {
  auto it = std::upper_bound(steps.begin(), steps.end(), start_s,
                             [](double t, const Step& s) { return t < s.time_s; });
  size_t i = it == steps.begin() ? 0 : size_t(it - steps.begin()) - 1;
  double t = start_s, left_bits = 8.0 * double(bytes);
  for (;; ++i) {
    const double rate = steps[i].gbps * 1e9;  // bits per second
    const bool last = i + 1 == steps.size();
    const double capacity = last ? INFINITY : (steps[i + 1].time_s - t) * rate;
    if (left_bits <= capacity) return t + left_bits / rate;
    left_bits -= capacity;
    t = steps[i + 1].time_s;
  }
}

double LinkTrace::bytes_between(double t0_s, double t1_s) const noexcept {
  double bits = 0;
  for (size_t i = 0; i < steps.size() && t0_s < t1_s; ++i) {
    const double end = i + 1 < steps.size() ? steps[i + 1].time_s : INFINITY;
    const double a = std::max(t0_s, steps[i].time_s), b = std::min(t1_s, end);
    if (b > a) bits += (b - a) * steps[i].gbps * 1e9;
  }
  return bits / 8;
}

}  // namespace kvcodec
