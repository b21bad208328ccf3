// The Redis Cluster (and Valkey cluster) store.
//
// Routing: a table of the 16384 hash slots to the master serving each, read with CLUSTER SLOTS
// from any node (the seeds of the URI first, at open). A command batch goes to its slot's master
// over one of that node's pooled connections (ConnectionPool: opened on demand, reused across
// calls; calls to different nodes, and up to connections_per_node calls to one node, run in
// parallel). Replies are then checked for the cluster's redirections:
//   MOVED slot host:port  the slot has a new owner: update the table, refresh it (rate-limited:
//                         a failover or a resharding moved many slots) and resend there;
//   ASK slot host:port    the slot is being migrated and this key is already at the target:
//                         resend only the redirected commands there, each after ASKING;
//   TRYAGAIN, CLUSTERDOWN, LOADING, READONLY, MASTERDOWN: transient (a migration, a failover
//                         in progress): refresh, back off, resend.
// Transport failures (a master killed, a timeout) drop the connection, refresh the table and
// back off (20 ms doubling to 500 ms) until the slot's replica is promoted or
// StoreOptions::failover_timeout_ms has passed; then the last error is returned. Every command
// the store sends is idempotent (SET, STRLEN, GET, EXISTS, DEL, SCAN), so resending one whose
// reply was lost is harmless; a put is still confirmed by STRLEN on the node that owns the slot.
#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <thread>

#include "store_redis.hpp"

namespace kvcodec {

namespace {

using namespace redis;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct SlotRange {
  int first, last;
  Endpoint master;
};

// CLUSTER SLOTS: [[first, last, [host, port, id...], replicas...]...]. An empty host means "the
// node you asked" (a node that does not know its own address).
StatusOr<std::vector<SlotRange>> parse_slots(const redisReply* r, const std::string& asked_host) {
  if (r->type == REDIS_REPLY_ERROR) return IoError("CLUSTER SLOTS: " + std::string(text(r)));
  if (r->type != REDIS_REPLY_ARRAY) return CorruptData("CLUSTER SLOTS: reply is not an array");
  std::vector<SlotRange> ranges;
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* e = r->element[i];
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
        e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
        e->element[2]->elements < 2 || e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
        e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
      return CorruptData("CLUSTER SLOTS: malformed entry");
    SlotRange s{int(e->element[0]->integer), int(e->element[1]->integer), {}};
    if (s.first < 0 || s.last >= kSlots || s.first > s.last) return CorruptData("CLUSTER SLOTS: bad slot range");
    s.master.host = std::string(text(e->element[2]->element[0]));
    if (s.master.host.empty()) s.master.host = asked_host;
    s.master.port = int(e->element[2]->element[1]->integer);
    ranges.push_back(std::move(s));
  }
  return ranges;
}

struct Redirect {
  enum Kind { kNone, kMoved, kAsk, kRetry } kind = kNone;
  Endpoint target;
  std::string message;
};

// The first redirection or transient error among the replies.
Redirect find_redirect(const std::vector<Reply>& replies, const std::string& asked_host) {
  for (const Reply& r : replies) {
    if (r->type != REDIS_REPLY_ERROR) continue;
    const std::string_view t = text(r.get());
    Redirect d;
    d.message = std::string(t);
    if (t.rfind("MOVED ", 0) == 0 || t.rfind("ASK ", 0) == 0) {
      d.kind = t[0] == 'M' ? Redirect::kMoved : Redirect::kAsk;
      const std::string_view where = t.substr(t.rfind(' ') + 1);
      const auto colon = where.rfind(':');
      d.target.host = std::string(where.substr(0, colon == std::string_view::npos ? 0 : colon));
      if (d.target.host.empty()) d.target.host = asked_host;
      d.target.port = colon == std::string_view::npos ? 0 : std::atoi(std::string(where.substr(colon + 1)).c_str());
      if (d.target.port <= 0 || d.target.port > 65535) d.kind = Redirect::kRetry;  // malformed: refresh
      return d;
    }
    for (std::string_view transient : {"TRYAGAIN", "CLUSTERDOWN", "LOADING", "READONLY", "MASTERDOWN"})
      if (t.rfind(transient, 0) == 0) {
        d.kind = Redirect::kRetry;
        return d;
      }
  }
  return {};
}

bool transient(const Status& s) { return s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kTimeout; }

class ClusterStore final : public StoreBase {
 public:
  ClusterStore(std::string uri, Uri u, const StoreOptions& o) : uri_(std::move(uri)), u_(std::move(u)), options_(o) {}

  const std::string& uri() const noexcept override { return uri_; }

  // Reads the slot table from the first node that answers: the known masters, then the seeds,
  // then every other node seen. Unless `force`, at most once per 100 ms (a burst of MOVED
  // replies after a failover triggers one refresh).
  Status refresh(bool force) {
    std::lock_guard lock(refresh_mu_);
    if (!force && Clock::now() - last_refresh_ < milliseconds(100)) return Status::Ok();
    last_refresh_ = Clock::now();
    Status last = Unavailable("redis cluster: no node to ask for the slot map");
    for (Node* n : refresh_candidates()) {
      auto r = exchange(n, {{"CLUSTER", "SLOTS"}});
      if (!r.ok()) {
        last = r.status();
        continue;
      }
      auto ranges = parse_slots((*r)[0].get(), n->pool.endpoint().host);
      if (!ranges.ok()) {
        last = ranges.status().with_context("redis " + n->pool.endpoint().name());
        continue;
      }
      std::vector<Node*> owners(kSlots, nullptr);
      for (const SlotRange& s : *ranges) std::fill(owners.begin() + s.first, owners.begin() + s.last + 1, node(s.master));
      std::unique_lock slots_lock(slots_mu_);
      slots_.swap(owners);
      return Status::Ok();
    }
    return last.with_context("redis cluster: reading the slot map");
  }

 protected:
  StatusOr<std::vector<Reply>> run(uint16_t slot, const std::vector<Args>& commands) override {
    const auto deadline = Clock::now() + milliseconds(options_.failover_timeout_ms);
    auto backoff = milliseconds(20);
    Status last = Unavailable("redis cluster: no master serves slot " + std::to_string(slot));
    for (int redirects = 0;;) {
      Node* n = owner(slot);
      if (!n) {
        (void)refresh(false);
        n = owner(slot);
      }
      if (n) {
        auto r = exchange(n, commands);
        if (!r.ok() && !transient(r.status())) return r.status();  // e.g. AUTH rejected
        const Redirect d = r.ok() ? find_redirect(*r, n->pool.endpoint().host) : Redirect{};
        if (r.ok() && d.kind == Redirect::kNone) return r;
        if (d.kind == Redirect::kMoved || d.kind == Redirect::kAsk) {
          if (++redirects > 16) return IoError("redis cluster: slot " + std::to_string(slot) + ": redirected too often");
          Node* target = node(d.target);
          if (d.kind == Redirect::kAsk) return follow_ask(target, commands, std::move(*r));
          set_owner(slot, target);
          (void)refresh(false);
          continue;  // no backoff: the new owner is known
        }
        last = r.ok() ? IoError("redis " + n->pool.endpoint().name() + ": " + d.message) : r.status();
        (void)refresh(false);
      }
      if (Clock::now() + backoff > deadline)
        return last.with_context("redis cluster: slot " + std::to_string(slot) + ", retried for " +
                                 std::to_string(options_.failover_timeout_ms) + " ms");
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, milliseconds(500));
    }
  }

  Status for_each_master(const std::function<Status(Connection&)>& fn) override {
    std::set<Node*> masters;
    {
      std::shared_lock lock(slots_mu_);
      for (int s = 0; s < kSlots; ++s) {
        if (!slots_[s]) return Unavailable("redis cluster: slot " + std::to_string(s) + " has no master");
        masters.insert(slots_[s]);
      }
    }
    for (Node* n : masters) {
      KVCODEC_RETURN_IF_ERROR(n->pool.with_connection(fn));
    }
    return Status::Ok();
  }

 private:
  struct Node {
    Node(const Endpoint& e, const Uri& u, const StoreOptions& o) : pool(e, o, u.user, u.password, 0) {}
    ConnectionPool pool;
  };

  // The node at `e`, created (not yet connected) on first use. Nodes live as long as the store.
  Node* node(const Endpoint& e) {
    std::lock_guard lock(nodes_mu_);
    auto& n = nodes_[e.name()];
    if (!n) n = std::make_unique<Node>(e, u_, options_);
    return n.get();
  }
  Node* owner(uint16_t slot) {
    std::shared_lock lock(slots_mu_);
    return slots_[slot];
  }
  void set_owner(uint16_t slot, Node* n) {
    std::unique_lock lock(slots_mu_);
    slots_[slot] = n;
  }
  StatusOr<std::vector<Reply>> exchange(Node* n, const std::vector<Args>& commands) {
    return n->pool.exchange(commands);
  }

  std::vector<Node*> refresh_candidates() {
    std::vector<Node*> order;
    {
      std::shared_lock lock(slots_mu_);
      for (Node* n : slots_)
        if (n && std::find(order.begin(), order.end(), n) == order.end()) order.push_back(n);
    }
    for (const Endpoint& e : u_.nodes) order.push_back(node(e));
    std::lock_guard lock(nodes_mu_);
    for (auto& [name, n] : nodes_) order.push_back(n.get());
    std::vector<Node*> unique;
    for (Node* n : order)
      if (std::find(unique.begin(), unique.end(), n) == unique.end()) unique.push_back(n);
    return unique;
  }

  // Resends the commands answered by ASK to `target`, each preceded by ASKING (which admits
  // the next command to a slot being imported), and splices the new replies in.
  StatusOr<std::vector<Reply>> follow_ask(Node* target, const std::vector<Args>& commands, std::vector<Reply> replies) {
    std::vector<size_t> asked;
    std::vector<Args> resend;
    for (size_t i = 0; i < replies.size(); ++i)
      if (replies[i]->type == REDIS_REPLY_ERROR && text(replies[i].get()).rfind("ASK ", 0) == 0) {
        asked.push_back(i);
        resend.push_back({"ASKING"});
        resend.push_back(commands[i]);
      }
    KVCODEC_ASSIGN_OR_RETURN(auto again, exchange(target, resend));
    for (size_t j = 0; j < asked.size(); ++j) replies[asked[j]] = std::move(again[2 * j + 1]);
    return replies;
  }

  const std::string uri_;
  const Uri u_;
  const StoreOptions options_;
  std::mutex nodes_mu_;
  std::map<std::string, std::unique_ptr<Node>> nodes_;
  std::shared_mutex slots_mu_;
  std::vector<Node*> slots_ = std::vector<Node*>(kSlots, nullptr);
  std::mutex refresh_mu_;
  Clock::time_point last_refresh_{};
};

}  // namespace

StatusOr<std::unique_ptr<Store>> open_redis_cluster_store(std::string_view uri, const StoreOptions& options) {
  KVCODEC_ASSIGN_OR_RETURN(Uri u, parse_uri(uri));
  if (!u.cluster) return InvalidArgument("open_redis_cluster_store: not a cluster URI");
  if (options.connect_timeout_ms <= 0 || options.command_timeout_ms <= 0 || options.failover_timeout_ms < 0)
    return InvalidArgument("redis cluster: timeouts must be positive");
  if (u.password.empty()) u.user = options.user, u.password = options.password;
  auto store = std::make_unique<ClusterStore>(std::string(uri), std::move(u), options);
  KVCODEC_RETURN_IF_ERROR(store->refresh(true));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace kvcodec
