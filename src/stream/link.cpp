// LinkEmulator (stream.hpp): bandwidth and round-trip delay emulated in the sender.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>

#include "kvcodec/stream.hpp"

namespace kvcodec {

namespace {
using Clock = std::chrono::steady_clock;
constexpr double kSliceSeconds = 1e-3;   // pacing granularity: ~1 ms of link time per write
constexpr uint64_t kMinSlice = 4u << 10;
constexpr uint64_t kMaxSlice = 4u << 20;
}  // namespace

Status LinkConfig::validate() const {
  KVCODEC_RETURN_IF_ERROR(check_seconds(rtt_s, 60, "rtt"));
  if (trace) KVCODEC_RETURN_IF_ERROR(trace->validate());
  return Status::Ok();
}

struct LinkEmulator::State {
  std::mutex mu;
  bool clock_running = false;
  Clock::time_point origin;
  int open_connections = 0;
  double link_free_s = 0;  // when the emulated link finishes what it has been given
  bool shut_down = false;
  std::condition_variable wake;
};

LinkEmulator::LinkEmulator(LinkConfig config)
    : config_(std::move(config)), state_(std::make_shared<State>()) {}

void LinkEmulator::connection_opened() {
  std::lock_guard lock(state_->mu);
  if (state_->open_connections++ == 0) state_->clock_running = false;  // idle link: restart
}

void LinkEmulator::connection_closed() {
  std::lock_guard lock(state_->mu);
  --state_->open_connections;
}

void LinkEmulator::restart_clock() {
  std::lock_guard lock(state_->mu);
  state_->clock_running = false;
}

bool LinkEmulator::clock_running() const {
  std::lock_guard lock(state_->mu);
  return state_->clock_running;
}

double LinkEmulator::now_s() {
  std::lock_guard lock(state_->mu);
  const auto now = Clock::now();
  if (!state_->clock_running) {
    state_->clock_running = true;
    state_->origin = now;
    state_->link_free_s = 0;
  }
  return std::chrono::duration<double>(now - state_->origin).count();
}

LinkEmulator::Slot LinkEmulator::schedule(double arrival_s, double ready_s, uint64_t bytes) {
  std::lock_guard lock(state_->mu);
  Slot slot;
  slot.start_s = std::max({arrival_s + config_.rtt_s / 2, ready_s, state_->link_free_s});
  slot.finish_s = config_.trace ? config_.trace->finish_time(slot.start_s, bytes) : slot.start_s;
  state_->link_free_s = slot.finish_s;
  return slot;
}

double LinkEmulator::release_time(const Slot& slot, uint64_t prefix) const noexcept {
  const double left = config_.trace ? config_.trace->finish_time(slot.start_s, prefix) : slot.start_s;
  return left + config_.rtt_s / 2;
}

uint64_t LinkEmulator::slice_bytes(double t_s) const noexcept {
  if (!config_.trace) return kMaxSlice;
  const double bytes = config_.trace->gbps_at(t_s) * 1e9 / 8 * kSliceSeconds;
  return std::clamp(uint64_t(bytes), kMinSlice, kMaxSlice);
}

bool LinkEmulator::sleep_until(double t_s) {
  std::unique_lock lock(state_->mu);
  const auto until = state_->origin + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(t_s));
  return !state_->wake.wait_until(lock, until, [&] { return state_->shut_down; });
}

void LinkEmulator::shutdown() {
  {
    std::lock_guard lock(state_->mu);
    state_->shut_down = true;
  }
  state_->wake.notify_all();
}

}  // namespace kvcodec
