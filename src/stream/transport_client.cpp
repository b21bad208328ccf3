// The fetch client (stream.hpp): one connection with pipelined requests, a decoder thread and a
// prefill thread, all driven by the Controller.
//
// The fetching thread runs an event loop over the socket and an eventfd that the workers signal
// when a chunk is in place. Responses arrive in request order; each is verified against the
// manifest before a worker may touch the destination. Failures are handled per chunk (retry at
// the same level, then another level, then text) or per connection (reconnect and re-send what
// is outstanding), and every one is appended to the report.
#include <poll.h>

#include <algorithm>
#include <cmath>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "byte_io.hpp"
#include "common/profile_rows.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/stream.hpp"
#include "transport_wire.hpp"

namespace kvcodec {

using namespace stream_detail;

namespace {
// "L4". (Appending to a string avoids GCC 12's false -Wrestrict on "literal" + string.)
std::string level_name(int level) {
  std::string s = "L";
  s += std::to_string(level);
  return s;
}
}  // namespace

ContextProfile profile_from_manifest(const Manifest& m, double decode_gbps, bool text_available) {
  ContextProfile p;
  for (const auto& l : m.levels) {
    ChunkOption o;
    o.name = level_name(l.level);
    o.level = l.level;
    o.distortion = l.rel_error;
    o.decode_gbps = decode_gbps > 0 ? decode_gbps : l.decode_gbps;
    o.setup_bytes = l.head_bytes;
    p.options.push_back(o);
  }
  const uint32_t n = m.num_chunks();
  for (uint32_t c = 0; c < n; ++c) {
    p.chunk_tokens.push_back(m.chunk_token_count(c));
    std::vector<uint64_t> sizes;
    for (const auto& l : m.levels) sizes.push_back(l.chunks[c].size);
    p.bytes.push_back(std::move(sizes));
  }
  p.raw_bytes_per_token = 2ull * m.shape.layers * m.shape.channels() * dtype_size(m.dtype);
  p.elements_per_token = 2ull * m.shape.layers * m.shape.channels();
  p.text_available = text_available && m.has_text();
  return p;
}

std::string FetchReport::to_json() const {
  nlohmann::json j;
  j["id"] = id;
  j["server"] = server;
  j["dtype"] = dtype_name(dtype);
  j["shape"] = {{"layers", shape.layers}, {"tokens", shape.tokens}, {"kv_heads", shape.kv_heads},
                {"head_dim", shape.head_dim}};
  j["chunk_tokens"] = chunk_tokens;
  j["slo_ms"] = slo_s * 1e3;
  j["ttft_ms"] = ttft_s * 1e3;
  j["slo_met"] = slo_met;
  j["complete"] = complete;
  j["bytes"] = bytes;
  j["bits_per_element"] = bits_per_element;
  j["text_chunks"] = text_chunks;
  j["objective"] = objective;
  j["prefill_tokens"] = prefill_tokens;
  j["prefill_gpu_s"] = prefill_gpu_s;
  j["decode"] = nlohmann::json::array();
  for (const auto& d : decode)
    j["decode"].push_back({{"level", d.level}, {"seed_gbps", d.seed_gbps}, {"measured_gbps", d.measured_gbps},
                           {"effective_gbps", d.effective_gbps},
                           {"final_gbps", d.final_gbps}, {"chunks", d.chunks}});
  j["setup_ms"] = setup_s * 1e3;
  j["stream_ms"] = stream_s * 1e3;
  j["chunks"] = nlohmann::json::array();
  for (const auto& c : chunks)
    j["chunks"].push_back({{"chunk", c.chunk},
                           {"via", c.via},
                           {"level", c.level},
                           {"bytes", c.bytes},
                           {"request_ms", c.request_s * 1e3},
                           {"first_byte_ms", c.first_byte_s * 1e3},
                           {"arrival_ms", c.arrival_s * 1e3},
                           {"ready_ms", c.ready_s * 1e3},
                           {"estimate_gbps", c.estimate_gbps},
                           {"work_ms", c.work_s * 1e3},
                           {"service_ms", c.service_s * 1e3},
                           {"attempts", c.attempts},
                           {"fallback", c.fallback},
                           {"abandoned_kv", c.abandoned_kv}});
  j["failures"] = nlohmann::json::array();
  for (const auto& f : failures)
    j["failures"].push_back({{"time_ms", f.time_s * 1e3},
                             {"chunk", f.chunk},
                             {"level", f.level},
                             {"error", f.status.to_string()},
                             {"action", f.action}});
  if (!complete) j["error"] = error;
  return j.dump(2);
}

namespace {

using Clock = std::chrono::steady_clock;

// A worker thread running jobs in FIFO order; each finished job's result is queued and the
// eventfd is signalled.
class Worker {
 public:
  using Job = std::function<Status()>;
  struct Done {
    uint32_t chunk;
    Status status;
    double work_s;     // the job's own time on the worker
    // From when the worker could have taken the job (queued, and the previous job done) until it
    // was done: work_s plus the wait for the thread to be scheduled -- what the job cost the
    // queue on this machine, as the timing model counts a FIFO server's time.
    double service_s;
  };

  Worker(int event_fd, std::mutex& done_mu, std::deque<Done>& done)
      : event_fd_(event_fd), done_mu_(done_mu), done_(done), thread_([this] { run(); }) {}
  ~Worker() {
    {
      std::lock_guard lock(mu_);
      quit_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void submit(uint32_t chunk, Job job) {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back({chunk, std::move(job), std::chrono::steady_clock::now()});
    }
    cv_.notify_one();
  }

 private:
  void run() {
    for (;;) {
      Queued job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return quit_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      const auto t0 = std::chrono::steady_clock::now();
      Status s = job.run();
      const auto t1 = std::chrono::steady_clock::now();
      const double work_s = std::chrono::duration<double>(t1 - t0).count();
      const double service_s = std::chrono::duration<double>(t1 - std::max(job.queued, last_done_)).count();
      last_done_ = t1;
      {
        std::lock_guard lock(done_mu_);
        done_.push_back({job.chunk, s, work_s, service_s});
      }
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof one);
    }
  }
  int event_fd_;
  std::mutex& done_mu_;
  std::deque<Done>& done_;
  std::mutex mu_;
  std::condition_variable cv_;
  struct Queued {
    uint32_t chunk = 0;
    Job run;
    std::chrono::steady_clock::time_point queued;
  };
  std::deque<Queued> jobs_;
  std::chrono::steady_clock::time_point last_done_{};  // the worker's thread only
  bool quit_ = false;
  std::thread thread_;
};

class Fetcher {
 public:
  Fetcher(const FetchOptions& o, KVCache* out, FetchReport* report)
      : o_(o), out_(out), report_(report), t0_(Clock::now()) {}
  ~Fetcher() {
    // Workers first (they write into *out_), then the descriptors they signal.
    prefiller_.reset();
    decoder_.reset();
    if (fd_ >= 0) ::close(fd_);
    if (event_fd_ >= 0) ::close(event_fd_);
  }

  Status run();

 private:
  enum class Phase { kWaiting, kRequested, kWorking, kReady };
  struct Chunk {
    Phase phase = Phase::kWaiting;
    int level = -1;  // level requested / delivered, -1 for text
    int decided_level = -1;  // the controller's choice (before any fallback)
    std::set<int> tried;
    int attempts_at_level = 0;
    ChunkReport rep;
  };
  struct Outstanding {
    uint32_t request_id;
    uint32_t chunk;
    int level;
    bool with_head;
    double sent_s;
    bool abandoned = false;  // the controller switched the chunk to TEXT: measure, then drop
  };

  // Seconds on the stream clock: since the fetch began until the setup is done, then since the
  // first chunk could be requested (the controller's and the server's link clock's origin).
  double now() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }
  void fail(int chunk, int level, const Status& s, std::string action) {
    if (s.code() == StatusCode::kChecksumMismatch && o_.metrics) {
      MetricEvent e;
      e.kind = MetricKind::kChecksumFailure;
      e.level = level;
      e.code = s.code();
      e.what = "fetch";
      o_.metrics->record(e);
    }
    FetchFailure f{now(), chunk, level, s, std::move(action)};
    report_->failures.push_back(f);
    if (o_.observer.on_failure) o_.observer.on_failure(f);
  }

  // kChunkFetched (and kTextFallback for a recomputed chunk) into o_.metrics.
  void record_chunk(const ChunkReport& r) const {
    MetricEvent e;
    e.kind = MetricKind::kChunkFetched;
    e.level = r.level;
    e.seconds = r.ready_s - r.request_s;
    e.coded_bytes = r.bytes;
    o_.metrics->record(e);
    if (r.level < 0) {
      e.kind = MetricKind::kTextFallback;
      o_.metrics->record(e);
    }
  }

  Status connect();
  Status reconnect(const Status& why);
  Status send_request(const Request& r, uint32_t* id);
  Status fetch_manifest();
  Status keep_decodable_levels();
  std::string skipped_;  // the levels keep_decodable_levels left out, and why ("" when none)
  StatusOr<ContextProfile> seeded_profile(bool text_ok);
  Status request_chunk(uint32_t chunk, int level);
  Status start_text(uint32_t chunk);
  Status on_decision(const Decision& d);
  Status dispatch_text();
  Status pump_socket();
  Status on_response(const MessageHeader& h, std::vector<uint8_t>& payload, double first_byte_s);
  Status chunk_failed(uint32_t chunk, int level, const Status& why, bool retry_same_level);
  Status drain_workers();

  const FetchOptions& o_;
  KVCache* out_;
  FetchReport* report_;
  Clock::time_point t0_;
  int fd_ = -1;
  int event_fd_ = -1;
  int reconnects_ = 0;
  uint32_t next_request_id_ = 1;

  Manifest manifest_;
  std::optional<Controller> controller_;
  std::map<int, std::vector<uint8_t>> heads_;  // verified heads by level
  std::map<int, FrameDecoder> decoders_;       // opened once per level (tables built once)
  // Response buffers, recycled once their chunk is decoded: after the first few chunks no
  // response lands in freshly mapped memory (no first-touch page faults per chunk).
  std::vector<uint8_t> take_buffer(size_t bytes);
  std::shared_ptr<std::mutex> pool_mu_ = std::make_shared<std::mutex>();
  std::shared_ptr<std::vector<std::vector<uint8_t>>> pool_ = std::make_shared<std::vector<std::vector<uint8_t>>>();
  std::vector<Chunk> chunks_;
  std::deque<Outstanding> outstanding_;
  std::set<uint32_t> text_pending_;  // TEXT chunks waiting for every earlier chunk

  // Receive state of the message being read.
  uint8_t hdr_[kMessageHeaderBytes];
  size_t hdr_have_ = 0;
  std::optional<MessageHeader> cur_;
  std::vector<uint8_t> payload_;
  size_t payload_have_ = 0;
  double first_byte_s_ = 0;
  double last_byte_s_ = 0;

  std::mutex done_mu_;
  std::deque<Worker::Done> done_;
  std::unique_ptr<Worker> decoder_, prefiller_;
};

Status Fetcher::connect() {
  KVCODEC_ASSIGN_OR_RETURN(fd_, connect_tcp(o_.host, o_.port, o_.connect_timeout_ms));
  hdr_have_ = 0;
  cur_.reset();
  payload_.clear();
  payload_have_ = 0;
  return Status::Ok();
}

Status Fetcher::send_request(const Request& r, uint32_t* id) {
  MessageHeader h;
  h.type = r.type;
  h.request_id = *id = next_request_id_++;
  auto msg = make_message(h, encode_request_payload(r));
  return send_all(fd_, msg);
}

Status Fetcher::reconnect(const Status& why) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (++reconnects_ > o_.max_reconnects) {
    fail(-1, -1, why, "abort");
    return Unavailable("gave up after " + std::to_string(o_.max_reconnects) + " reconnections: " + why.to_string());
  }
  fail(-1, -1, why, "reconnect");
  // Everything outstanding was lost with the connection: request it again, in order.
  std::deque<Outstanding> lost;
  lost.swap(outstanding_);
  Status s = connect();
  if (!s.ok()) {
    fail(-1, -1, s, "abort");
    return s;
  }
  for (const Outstanding& r : lost) {
    chunks_[r.chunk].rep.attempts++;
    KVCODEC_RETURN_IF_ERROR(request_chunk(r.chunk, r.level));
  }
  return Status::Ok();
}

Status Fetcher::fetch_manifest() {
  Request r;
  r.type = MsgType::kGetManifest;
  r.id = o_.id;
  uint32_t id = 0;
  KVCODEC_RETURN_IF_ERROR(send_request(r, &id));
  uint8_t hdr[kMessageHeaderBytes];
  KVCODEC_RETURN_IF_ERROR(recv_exact(fd_, hdr, o_.io_timeout_ms));
  KVCODEC_ASSIGN_OR_RETURN(MessageHeader h, decode_header(hdr));
  // Bounded before allocating: a server (or whatever answers on its port) may claim 4 GiB.
  const uint64_t limit = h.type == MsgType::kError ? kMaxErrorPayload : o_.max_manifest_bytes;
  if (h.payload_bytes > limit)
    return ResourceExhausted("manifest response of " + std::to_string(h.payload_bytes) + " bytes, over the limit of " +
                             std::to_string(limit));
  std::vector<uint8_t> payload(h.payload_bytes);
  KVCODEC_RETURN_IF_ERROR(recv_exact(fd_, payload, o_.io_timeout_ms));
  report_->bytes += kMessageHeaderBytes + payload.size();
  if (h.request_id != id) return CorruptData("manifest response has the wrong request id");
  if (h.type == MsgType::kError)
    return Status(StatusCode(h.code), std::string(payload.begin(), payload.end())).with_context("server");
  if (h.type != MsgType::kManifest) return CorruptData("expected a manifest response");
  KVCODEC_ASSIGN_OR_RETURN(manifest_, parse_manifest(payload));
  return Status::Ok();
}

Status Fetcher::request_chunk(uint32_t chunk, int level) {
  Chunk& c = chunks_[chunk];
  Request r;
  r.type = MsgType::kGetChunk;
  r.id = o_.id;
  r.level = level;
  r.chunk = chunk;
  // Ask for the head with the first chunk of a level (and again until one has arrived).
  r.with_head = !heads_.count(level) &&
                std::none_of(outstanding_.begin(), outstanding_.end(),
                             [&](const Outstanding& q) { return q.level == level && q.with_head; });
  uint32_t id = 0;
  const double t = now();
  Status s = send_request(r, &id);
  c.phase = Phase::kRequested;
  c.level = level;
  c.tried.insert(level);
  c.rep.request_s = t;
  outstanding_.push_back({id, chunk, level, r.with_head, t});
  // A failed send shows up as a dead connection when the socket is next read.
  return s.ok() || s.code() == StatusCode::kIoError ? Status::Ok() : s;
}

// Queues chunk `chunk` for recompute. Its token ids came with the manifest: nothing to transfer.
// A KV request still outstanding for it is abandoned (its response, if it comes, only measures
// the link).
Status Fetcher::start_text(uint32_t chunk) {
  Chunk& c = chunks_[chunk];
  for (Outstanding& q : outstanding_)
    if (q.chunk == chunk && !q.abandoned) {
      q.abandoned = true;
      c.rep.abandoned_kv = true;
    }
  c.phase = Phase::kWaiting;
  c.level = -1;
  c.rep.request_s = c.rep.first_byte_s = c.rep.arrival_s = now();
  c.rep.bytes = 0;
  text_pending_.insert(chunk);
  return Status::Ok();
}

Status Fetcher::on_decision(const Decision& d) {
  Chunk& c = chunks_[d.chunk];
  c.rep.estimate_gbps = d.estimate_gbps;
  if (d.option == kTextOption) {
    if (!d.replaces_request) c.rep.attempts = 1;
    return start_text(d.chunk);
  }
  c.rep.attempts = 1;
  c.attempts_at_level = 1;
  c.decided_level = manifest_.levels[size_t(d.option)].level;
  return request_chunk(d.chunk, c.decided_level);
}

// Queues the recompute of pending TEXT chunks, in chunk order, once every earlier chunk is ready
// or is itself queued for recompute (its prefill attends to them): the prefill worker runs its
// queue in order, so a chunk queued behind the recompute of the chunks before it starts only
// once they are in place -- without waiting for this thread to see them finish.
Status Fetcher::dispatch_text() {
  while (!text_pending_.empty()) {
    const uint32_t chunk = *text_pending_.begin();
    for (uint32_t i = 0; i < chunk; ++i)
      if (chunks_[i].phase != Phase::kReady && !(chunks_[i].phase == Phase::kWorking && chunks_[i].level < 0))
        return Status::Ok();
    for (uint32_t i = chunk + 1; i < chunks_.size(); ++i)
      if (chunks_[i].phase == Phase::kWorking && chunks_[i].level < 0) return Status::Ok();
    text_pending_.erase(text_pending_.begin());
    chunks_[chunk].phase = Phase::kWorking;
    const uint32_t begin = manifest_.chunk_token_begin(chunk);
    std::span<const int32_t> tokens(manifest_.text_tokens.data() + begin, manifest_.chunk_token_count(chunk));
    KVView dst = out_->view();
    prefiller_->submit(chunk, [this, chunk, begin, tokens, dst] { return o_.recompute(chunk, begin, tokens, dst); });
  }
  return Status::Ok();
}

// Reads what the socket has, handling every complete response. Errors returned are fatal.
Status Fetcher::pump_socket() {
  // Bounded: back to the event loop after a complete response or about 1 MiB, so that workers'
  // completions and new decisions are not held up while a large chunk streams in.
  size_t budget = 1u << 20;
  for (;;) {
    if (budget == 0) return Status::Ok();
    uint8_t* dst;
    size_t want;
    if (!cur_) {
      dst = hdr_ + hdr_have_;
      want = kMessageHeaderBytes - hdr_have_;
    } else {
      // The buffer grows with the bytes that arrive (from 64 KiB, doubling), not with what the
      // header claims: a server cannot make the client allocate what it never sends.
      if (payload_have_ == payload_.size())
        payload_.resize(size_t(std::min<uint64_t>(cur_->payload_bytes, std::max<size_t>(2 * payload_have_, 64 << 10))));
      dst = payload_.data() + payload_have_;
      want = payload_.size() - payload_have_;
    }
    ssize_t n = want ? ::recv(fd_, dst, want, MSG_DONTWAIT) : 0;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Status::Ok();
    if (n < 0 && errno == EINTR) continue;
    if (want && n <= 0)
      return reconnect(n == 0 ? Unavailable("connection closed by the server")
                              : IoError(std::string("recv: ") + std::strerror(errno)));
    last_byte_s_ = now();
    budget -= std::min(budget, size_t(n));
    if (!cur_) {
      if (hdr_have_ == 0) first_byte_s_ = last_byte_s_;
      hdr_have_ += size_t(n);
      if (hdr_have_ < kMessageHeaderBytes) continue;
      auto h = decode_header(hdr_);
      if (!h.ok()) return reconnect(h.status().with_context("response header"));
      if (outstanding_.empty() || h->request_id != outstanding_.front().request_id)
        return reconnect(CorruptData("response to a request that is not outstanding"));
      const Outstanding& q = outstanding_.front();
      const uint64_t limit =
          h->type == MsgType::kError ? kMaxErrorPayload
                                     : 8 + (q.with_head ? manifest_.find_level(q.level)->head_bytes : 0) +
                                           manifest_.find_level(q.level)->chunks[q.chunk].size;
      if (h->payload_bytes > limit || (h->type != MsgType::kChunk && h->type != MsgType::kError))
        return reconnect(CorruptData("unexpected response type or size"));
      cur_ = *h;
      // A recycled buffer (its pages already resident), grown below as the bytes arrive.
      payload_ = take_buffer(0);
      payload_have_ = 0;
    } else {
      payload_have_ += size_t(n);
      const Outstanding& q = outstanding_.front();
      const Chunk& c = chunks_[q.chunk];
      // Progress of the controller's own request (not of a retry at another level) lets it see
      // a link that collapses in the middle of a chunk. Counted in body bytes: the client may
      // attach the level's head to a request the controller did not count it for (the request
      // that carried it was lost), and the head would then take the count past the chunk's
      // size -- which ended a fetch in the chaos run.
      const uint64_t head = q.with_head ? manifest_.find_level(q.level)->head_bytes : 0;
      if (cur_->type == MsgType::kChunk && !q.abandoned && q.level == c.decided_level &&
          c.attempts_at_level == 1 && payload_have_ > 8 + head)
        KVCODEC_RETURN_IF_ERROR(controller_->on_progress(q.chunk, payload_have_ - 8 - head, last_byte_s_));
    }
    if (cur_ && payload_have_ == cur_->payload_bytes) {
      MessageHeader h = *cur_;
      cur_.reset();
      hdr_have_ = 0;
      report_->bytes += kMessageHeaderBytes + payload_.size();
      KVCODEC_RETURN_IF_ERROR(on_response(h, payload_, first_byte_s_));
      return Status::Ok();  // a response is complete: let the loop hand it on
    }
  }
}

Status Fetcher::on_response(const MessageHeader& h, std::vector<uint8_t>& payload, double first_byte_s) {
  const Outstanding q = outstanding_.front();
  outstanding_.pop_front();
  Chunk& c = chunks_[q.chunk];
  if (q.abandoned) {
    // The chunk is being recomputed; a complete response still tells how fast the link is.
    if (h.type == MsgType::kChunk) {
      return controller_->on_chunk_received(q.chunk, kMessageHeaderBytes + payload.size(), last_byte_s_ - first_byte_s,
                                            now());
    }
    return Status::Ok();
  }
  if (h.type == MsgType::kError) {
    Status s(StatusCode(h.code), std::string(payload.begin(), payload.end()));
    // Transient server-side trouble is retried at the same level; a value missing or corrupt in
    // the store will not get better by asking again.
    const bool transient = s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kTimeout ||
                           s.code() == StatusCode::kIoError;
    return chunk_failed(q.chunk, q.level, s.with_context("server"), transient);
  }
  ByteReader r(payload);
  const uint64_t head_bytes = r.u64();
  if (!r.ok() || head_bytes > r.remaining() || (head_bytes > 0) != q.with_head)
    return chunk_failed(q.chunk, q.level, CorruptData("malformed chunk response"), true);
  auto head = r.bytes(head_bytes);
  auto body = r.bytes(r.remaining());
  if (q.with_head) {
    Status hs = verify_head(manifest_, q.level, head);
    if (!hs.ok()) return chunk_failed(q.chunk, q.level, hs, true);
    auto decoder = FrameDecoder::open(head, o_.profile);
    if (!decoder.ok()) {
      // A level coded with another profile than ours (or with one when we have none; a version 1
      // manifest does not say) cannot be decoded by asking again or elsewhere: the fetch ends,
      // naming the profile it needs. Other heads that do not open: another level.
      if (decoder.status().code() == StatusCode::kInvalidArgument) {
        const Status ps = decoder.status().with_context("level " + std::to_string(q.level));
        fail(int(q.chunk), q.level, ps, "abort");
        return ps;
      }
      return chunk_failed(q.chunk, q.level, decoder.status().with_context("head"), false);
    }
    heads_[q.level].assign(head.begin(), head.end());
    decoders_.insert_or_assign(q.level, std::move(*decoder));
  }
  Status bs = verify_chunk(manifest_, q.level, q.chunk, body);
  if (!bs.ok()) return chunk_failed(q.chunk, q.level, bs, true);
  if (!heads_.count(q.level))  // the head's response was lost and is requested again
    return chunk_failed(q.chunk, q.level, Unavailable("head of the level not received"), true);

  const double t = now();
  c.rep.first_byte_s = first_byte_s;
  c.rep.arrival_s = t;
  c.rep.bytes = kMessageHeaderBytes + payload.size();
  // The link's time is first to last byte; checking and opening the head above is the client's.
  KVCODEC_RETURN_IF_ERROR(controller_->on_chunk_received(q.chunk, c.rep.bytes, last_byte_s_ - first_byte_s, t));
  c.phase = Phase::kWorking;
  // The job owns the response buffer (the body is in it) and gives it back to the pool once the
  // chunk is decoded; the decoder stays in decoders_ (never erased once opened).
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(payload));
  const size_t body_offset = size_t(body.data() - owned->data());
  const size_t body_size = body.size();
  const FrameDecoder* decoder = &decoders_.at(q.level);
  DecodeOptions dopt;
  dopt.threads = o_.decode_threads;
  dopt.metrics = o_.metrics;
  KVView dst = out_->view();
  const uint32_t chunk = q.chunk;
  decoder_->submit(chunk, [decoder, owned, body_offset, body_size, chunk, dst, dopt, mu = pool_mu_, pool = pool_] {
    Status s = decoder->decode_chunk(chunk, std::span<const uint8_t>(owned->data() + body_offset, body_size), dst, dopt);
    std::lock_guard lock(*mu);
    pool->push_back(std::move(*owned));
    return s;
  });
  return Status::Ok();
}

// A chunk could not be delivered at `level`: retry, another level, or text -- or give up.
Status Fetcher::chunk_failed(uint32_t chunk, int level, const Status& why, bool retry_same_level) {
  Chunk& c = chunks_[chunk];
  if (retry_same_level && c.attempts_at_level < o_.attempts_per_level) {
    fail(int(chunk), level, why, "retry");
    ++c.attempts_at_level;
    ++c.rep.attempts;
    return request_chunk(chunk, level);
  }
  // Another stored level: the closest smaller one first (similar quality, fewer bytes), then
  // the closest larger one.
  int best = -1;
  for (const auto& l : manifest_.levels) {
    if (c.tried.count(l.level)) continue;
    auto rank = [&](int x) { return x > level ? 100 + (x - level) : level - x; };
    if (best < 0 || rank(l.level) < rank(best)) best = l.level;
  }
  c.rep.fallback = true;
  if (best >= 0) {
    fail(int(chunk), level, why, "level " + std::to_string(best));
    c.attempts_at_level = 1;
    ++c.rep.attempts;
    return request_chunk(chunk, best);
  }
  auto d = controller_->fall_back_to_text(chunk, now());
  if (d.ok() && o_.recompute) {
    fail(int(chunk), level, why, "text");
    ++c.rep.attempts;
    c.rep.estimate_gbps = d->estimate_gbps;
    return start_text(chunk);
  }
  fail(int(chunk), level, why, "abort");
  return why.with_context("chunk " + std::to_string(chunk) + " could not be delivered at any level" +
                          (manifest_.has_text() && o_.recompute ? "" : " and has no text fallback"));
}

std::vector<uint8_t> Fetcher::take_buffer(size_t bytes) {
  std::vector<uint8_t> b;
  {
    std::lock_guard lock(*pool_mu_);
    // The largest buffer: it already holds the most pages in memory.
    auto it = std::max_element(pool_->begin(), pool_->end(),
                               [](const auto& x, const auto& y) { return x.capacity() < y.capacity(); });
    if (it != pool_->end()) {
      b = std::move(*it);
      pool_->erase(it);
    }
  }
  b.resize(bytes);  // within the capacity: no allocation, only the growth is written
  return b;
}

Status Fetcher::drain_workers() {
  uint64_t count;
  [[maybe_unused]] ssize_t n = ::read(event_fd_, &count, sizeof count);
  std::deque<Worker::Done> done;
  {
    std::lock_guard lock(done_mu_);
    done.swap(done_);
  }
  for (const auto& d : done) {
    Chunk& c = chunks_[d.chunk];
    // A verified chunk that does not decode, or a recompute that fails, is not retried: it
    // would fail the same way. The fetch stops with the error.
    if (!d.status.ok()) {
      fail(int(d.chunk), c.level, d.status, "abort");
      return d.status.with_context("chunk " + std::to_string(d.chunk));
    }
    c.phase = Phase::kReady;
    c.rep.ready_s = now();
    c.rep.work_s = d.work_s;
    c.rep.service_s = d.service_s;
    if (c.level >= 0) KVCODEC_RETURN_IF_ERROR(controller_->on_chunk_decoded(d.chunk, d.service_s));
    c.rep.chunk = d.chunk;
    c.rep.level = c.level;
    c.rep.via = c.level < 0 ? std::string("text") : level_name(c.level);
    KVCODEC_RETURN_IF_ERROR(controller_->on_chunk_ready(d.chunk, c.rep.ready_s));
    if (o_.metrics) record_chunk(c.rep);
    if (o_.observer.on_chunk_ready) o_.observer.on_chunk_ready(c.rep);
  }
  return Status::Ok();
}

// Levels transform-coded with another profile than ours, or with one when we have none (the
// manifest names it, version 2), are dropped before planning: the controller plans with the
// levels this client can decode (a "skip" failure each). None left: the fetch ends at once,
// naming the profile needed, before any chunk is requested.
Status Fetcher::keep_decodable_levels() {
  std::vector<ManifestLevel> keep;
  std::vector<std::pair<int, Status>> skipped;
  for (ManifestLevel& l : manifest_.levels) {
    if (Status ps = check_level_profile(manifest_, l, o_.profile.get()); !ps.ok())
      skipped.emplace_back(l.level, ps);
    else
      keep.push_back(std::move(l));
  }
  if (keep.empty()) {
    fail(-1, skipped.front().first, skipped.front().second, "abort");
    return skipped.front().second;
  }
  for (const auto& [level, why] : skipped) {
    fail(-1, level, why, "skip");
    skipped_ += (skipped_.empty() ? "levels " : ", ") + std::to_string(level);
  }
  if (!skipped.empty()) skipped_ += " not planned: " + std::string(skipped.front().second.message());
  manifest_.levels = std::move(keep);
  return Status::Ok();
}

// The controller's view of the context, seeded with this machine's decode speed per level
// (calibrated, memoized) unless FetchOptions::decode_gbps is given or calibration is off (the
// manifest's figure). A level transform-coded with our profile is calibrated with it: its
// decode includes the inverse transform. A version 1 manifest does not say which levels are:
// with a profile of the context's shape given, its lossy levels are taken to be (put_context
// codes them all with it).
StatusOr<ContextProfile> Fetcher::seeded_profile(bool text_ok) {
  ContextProfile profile = profile_from_manifest(manifest_, o_.decode_gbps, text_ok);
  if (o_.decode_gbps <= 0 && o_.calibrate_decoder) {
    const bool fits = o_.profile && detail::check_profile_shape(*o_.profile, manifest_.shape).ok();
    for (size_t i = 0; i < manifest_.levels.size(); ++i) {
      const ManifestLevel& l = manifest_.levels[i];
      const bool transformed = manifest_.profiles_known ? l.profile_digest.has_value() : fits && l.level > 0;
      KVCODEC_ASSIGN_OR_RETURN(profile.options[i].decode_gbps,
                               calibrate_decode_gbps(manifest_.dtype, manifest_.shape, l.level, o_.decode_threads,
                                                     transformed ? o_.profile : nullptr));
    }
  }
  return profile;
}

Status Fetcher::run() {
  report_->id = o_.id;
  report_->server = o_.host + ":" + std::to_string(o_.port);
  report_->slo_s = o_.controller.slo_s;
  KVCODEC_RETURN_IF_ERROR(validate_context_id(o_.id));
  KVCODEC_RETURN_IF_ERROR(o_.controller.validate());
  if (o_.io_timeout_ms <= 0 || o_.connect_timeout_ms <= 0 || o_.attempts_per_level < 1 || o_.max_reconnects < 0)
    return InvalidArgument("fetch: timeouts must be > 0, attempts >= 1, reconnects >= 0");

  // The manifest: without it nothing can be planned. A lost connection, a timeout or corrupt
  // bytes are retried on a new connection (as reconnections: max_reconnects in all); a server's
  // answer that the context is missing or too large, or any other error, ends the fetch.
  Status ms = connect();
  if (ms.ok()) ms = fetch_manifest();
  auto transient = [](StatusCode c) {
    return c == StatusCode::kUnavailable || c == StatusCode::kTimeout || c == StatusCode::kIoError ||
           c == StatusCode::kChecksumMismatch || c == StatusCode::kCorruptData;
  };
  while (!ms.ok() && transient(ms.code()) && reconnects_ < o_.max_reconnects) {
    ++reconnects_;
    fail(-1, -1, ms.with_context("manifest"), "reconnect");
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ms = connect();
    if (ms.ok()) ms = fetch_manifest();
  }
  if (!ms.ok()) {
    fail(-1, -1, ms, "abort");
    return ms.with_context("manifest");
  }
  report_->shape = manifest_.shape;
  report_->dtype = manifest_.dtype;
  report_->chunk_tokens = manifest_.chunk_tokens;
  KVCODEC_RETURN_IF_ERROR(keep_decodable_levels());
  // A destination of the right shape and dtype is used as it is (a server's preallocated KV
  // memory); anything else is replaced.
  const uint64_t output_bytes = manifest_.shape.elements() * dtype_size(manifest_.dtype);
  if (output_bytes > o_.max_output_bytes) {
    Status big = ResourceExhausted("manifest: the context decodes to " + std::to_string(output_bytes) +
                                   " bytes, over the limit of " + std::to_string(o_.max_output_bytes));
    fail(-1, -1, big, "abort");
    return big;
  }
  if (out_->dtype != manifest_.dtype || out_->shape != manifest_.shape ||
      out_->data.size() != manifest_.shape.elements() * dtype_size(manifest_.dtype)) {
    KVCODEC_ASSIGN_OR_RETURN(*out_, KVCache::allocate(manifest_.dtype, manifest_.shape));
  }
  const bool text_ok = bool(o_.recompute);
  KVCODEC_ASSIGN_OR_RETURN(ContextProfile profile, seeded_profile(text_ok));
  for (size_t i = 0; i < manifest_.levels.size(); ++i)
    report_->decode.push_back({manifest_.levels[i].level, profile.options[i].decode_gbps, 0, 0, 0});
  ControllerConfig cc = o_.controller;
  if (o_.on_manifest) {
    if (Status s = o_.on_manifest(manifest_, cc); !s.ok()) {
      // e.g. a fixed level that is stored but was not planned: say why.
      if (!skipped_.empty()) s = Status(s.code(), std::string(s.message()) + " (" + skipped_ + ")");
      return s;
    }
  }
  if (!text_ok) cc.cost.prefill_tokens_per_s = 0;  // TEXT is not an option without recompute
  report_->objective = std::string(objective_name(cc.objective));
  KVCODEC_ASSIGN_OR_RETURN(Controller ctl, Controller::create(std::move(profile), cc));
  controller_.emplace(std::move(ctl));
  chunks_.resize(manifest_.num_chunks());
  for (uint32_t i = 0; i < chunks_.size(); ++i) chunks_[i].rep.chunk = i;

  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) return IoError("eventfd failed");
  decoder_ = std::make_unique<Worker>(event_fd_, done_mu_, done_);
  prefiller_ = std::make_unique<Worker>(event_fd_, done_mu_, done_);
  // Setup (manifest, destination, workers) is done: the stream clock starts now.
  report_->setup_s = now();
  t0_ = Clock::now();

  last_byte_s_ = now();
  while (!controller_->all_ready()) {
    while (auto d = controller_->next_request(now())) KVCODEC_RETURN_IF_ERROR(on_decision(*d));
    KVCODEC_RETURN_IF_ERROR(dispatch_text());
    pollfd p[2] = {{fd_, POLLIN, 0}, {event_fd_, POLLIN, 0}};
    // Wake when the controller asked to be asked again (cold-start probe), else poll in 100 ms slices.
    int wait_ms = std::min(o_.io_timeout_ms, 100);
    if (auto wake = controller_->wake_s())
      wait_ms = std::clamp(int(std::ceil((*wake - now()) * 1e3)), 0, wait_ms);
    const int rc = ::poll(p, 2, wait_ms);
    if (rc < 0 && errno != EINTR) return IoError(std::string("poll: ") + std::strerror(errno));
    if (p[1].revents & POLLIN) KVCODEC_RETURN_IF_ERROR(drain_workers());
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) KVCODEC_RETURN_IF_ERROR(pump_socket());
    if (outstanding_.empty()) {
      last_byte_s_ = now();  // the timeout only runs while waiting for the server
    } else if (now() - last_byte_s_ > o_.io_timeout_ms / 1e3) {
      KVCODEC_RETURN_IF_ERROR(reconnect(Timeout("no data from the server for " +
                                                std::to_string(o_.io_timeout_ms) + " ms")));
      last_byte_s_ = now();
    }
  }

  report_->stream_s = now();
  report_->ttft_s = report_->setup_s + report_->stream_s + o_.controller.cost.first_token_s;
  report_->slo_met = report_->ttft_s <= o_.controller.slo_s;
  report_->complete = true;
  uint64_t delivered = 0;
  std::vector<double> decode_s(manifest_.levels.size(), 0), service_s(decode_s), raw(decode_s);
  const CostModel& cost = controller_->config().cost;
  for (const Chunk& c : chunks_) {
    report_->chunks.push_back(c.rep);
    const uint32_t tokens = manifest_.chunk_token_count(c.rep.chunk);
    if (c.level < 0) {
      ++report_->text_chunks;
      report_->prefill_tokens += tokens;
      report_->prefill_gpu_s += cost.prefill_seconds(tokens, manifest_.chunk_token_begin(c.rep.chunk));
      continue;
    }
    delivered += c.rep.bytes;
    for (size_t i = 0; i < manifest_.levels.size(); ++i) {
      if (manifest_.levels[i].level != c.level) continue;
      decode_s[i] += c.rep.work_s;
      service_s[i] += c.rep.service_s;
      raw[i] += double(manifest_.raw_chunk_bytes(c.rep.chunk));
      ++report_->decode[i].chunks;
    }
  }
  for (size_t i = 0; i < manifest_.levels.size(); ++i) {
    DecodeSpeed& d = report_->decode[i];
    d.measured_gbps = decode_s[i] > 0 ? raw[i] / decode_s[i] / 1e9 : 0;
    d.effective_gbps = service_s[i] > 0 ? raw[i] / service_s[i] / 1e9 : 0;
    d.final_gbps = controller_->decode_gbps(int(i));
  }
  report_->bits_per_element = 8.0 * double(delivered) / double(manifest_.shape.elements());
  return Status::Ok();
}

}  // namespace

Status fetch_context(const FetchOptions& options, KVCache* out, FetchReport* report) {
  if (!out || !report) return InvalidArgument("fetch: null output or report");
  *report = FetchReport{};
  Status s;
  {
    Fetcher f(options, out, report);
    s = f.run();
    if (!s.ok() && report->chunks.empty()) {
      // Record what was delivered before the failure.
      report->complete = false;
    }
  }
  if (!s.ok()) report->error = s.to_string();
  return s;
}

}  // namespace kvcodec
