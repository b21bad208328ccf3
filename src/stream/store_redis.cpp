// The Redis store, on hiredis's blocking API.
//
// One connection per store, guarded by a mutex (a hiredis context is not thread-safe). Every
// command runs under the configured command timeout; after any I/O error or timeout the
// connection is dropped and the next command reconnects (under the connect timeout), so a Redis
// that restarts is picked up again and one that is down costs at most the connect timeout per
// call. Failures map to kUnavailable (cannot connect / connection lost), kTimeout (no reply in
// time) or kIoError (Redis answered with an error, e.g. OOM).
#include "store_redis.hpp"

#include <hiredis/hiredis.h>

#include <cerrno>
#include <charconv>
#include <mutex>
#include <string>

namespace kvcodec {

namespace {

struct ReplyDeleter {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

timeval to_timeval(int ms) { return timeval{ms / 1000, (ms % 1000) * 1000}; }

class RedisStore final : public Store {
 public:
  RedisStore(std::string uri, std::string host, int port, int db, const StoreOptions& o)
      : uri_(std::move(uri)), host_(std::move(host)), port_(port), db_(db), options_(o) {}
  ~RedisStore() override {
    if (ctx_) redisFree(ctx_);
  }

  Status connect_and_ping() {
    std::lock_guard lock(mu_);
    KVCODEC_RETURN_IF_ERROR(ensure_connected());
    auto r = command({"PING"});
    return r.ok() ? Status::Ok() : r.status();
  }

  Status put(std::string_view key, std::span<const uint8_t> value) override {
    std::lock_guard lock(mu_);
    // SET and STRLEN pipelined in one round trip: the put is confirmed only when Redis reports
    // the stored value's length.
    std::string_view v(reinterpret_cast<const char*>(value.data()), value.size());
    auto replies = pipeline({{"SET", key, v}, {"STRLEN", key}});
    if (!replies.ok()) return replies.status().with_context("redis SET " + std::string(key));
    const Reply& set = (*replies)[0];
    const Reply& len = (*replies)[1];
    if (set->type != REDIS_REPLY_STATUS || std::string_view(set->str, set->len) != "OK")
      return IoError("redis SET " + std::string(key) + ": unexpected reply");
    if (len->type != REDIS_REPLY_INTEGER || uint64_t(len->integer) != value.size())
      return IoError("redis SET " + std::string(key) + ": stored length differs from the value's");
    return Status::Ok();
  }

  StatusOr<std::vector<uint8_t>> get(std::string_view key) override {
    std::lock_guard lock(mu_);
    auto r = command({"GET", key});
    if (!r.ok()) return r.status().with_context("redis GET " + std::string(key));
    if ((*r)->type == REDIS_REPLY_NIL) return NotFound("redis: no key " + std::string(key));
    if ((*r)->type != REDIS_REPLY_STRING) return CorruptData("redis GET: reply is not a string");
    const auto* p = reinterpret_cast<const uint8_t*>((*r)->str);
    return std::vector<uint8_t>(p, p + (*r)->len);
  }

  StatusOr<bool> exists(std::string_view key) override {
    std::lock_guard lock(mu_);
    auto r = command({"EXISTS", key});
    if (!r.ok()) return r.status().with_context("redis EXISTS " + std::string(key));
    if ((*r)->type != REDIS_REPLY_INTEGER) return CorruptData("redis EXISTS: reply is not an integer");
    return (*r)->integer > 0;
  }

  Status remove(std::string_view key) override {
    std::lock_guard lock(mu_);
    auto r = command({"DEL", key});
    if (!r.ok()) return r.status().with_context("redis DEL " + std::string(key));
    return Status::Ok();
  }

  const std::string& uri() const noexcept override { return uri_; }

 private:
  using Args = std::vector<std::string_view>;

  Status ensure_connected() {
    if (ctx_ && ctx_->err == 0) return Status::Ok();
    if (ctx_) redisFree(ctx_);
    ctx_ = redisConnectWithTimeout(host_.c_str(), port_, to_timeval(options_.connect_timeout_ms));
    if (!ctx_) return ResourceExhausted("redis: cannot allocate a connection");
    if (ctx_->err) {
      Status s = Unavailable("redis " + host_ + ":" + std::to_string(port_) + ": " + ctx_->errstr);
      drop();
      return s;
    }
    if (redisSetTimeout(ctx_, to_timeval(options_.command_timeout_ms)) != REDIS_OK) {
      drop();
      return Unavailable("redis: cannot set the command timeout");
    }
    if (db_ != 0) {
      const std::string db = std::to_string(db_);
      auto r = send({{"SELECT", db}});
      if (!r.ok()) {
        drop();  // never keep a connection to the wrong database
        return r.status();
      }
    }
    return Status::Ok();
  }

  void drop() {
    if (ctx_) redisFree(ctx_);
    ctx_ = nullptr;
  }

  // Appends every command, then reads one reply per command (a pipeline: one round trip). Any
  // transport failure drops the connection; a Redis error reply becomes kIoError.
  StatusOr<std::vector<Reply>> send(const std::vector<Args>& commands) {
    std::vector<Reply> replies;
    for (const Args& args : commands) {
      std::vector<const char*> argv;
      std::vector<size_t> argl;
      for (auto a : args) {
        argv.push_back(a.data());
        argl.push_back(a.size());
      }
      if (redisAppendCommandArgv(ctx_, int(argv.size()), argv.data(), argl.data()) != REDIS_OK)
        return transport_error();
    }
    for (size_t i = 0; i < commands.size(); ++i) {
      void* raw = nullptr;
      errno = 0;
      if (redisGetReply(ctx_, &raw) != REDIS_OK || !raw) return transport_error();
      Reply r(static_cast<redisReply*>(raw));
      replies.push_back(std::move(r));
    }
    for (const Reply& r : replies)
      if (r->type == REDIS_REPLY_ERROR) return IoError("redis: " + std::string(r->str, r->len));
    return replies;
  }
  Status transport_error() {
    const bool timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
    std::string what = ctx_ && ctx_->errstr[0] ? ctx_->errstr : "connection lost";
    drop();
    if (timed_out)
      return Timeout("redis " + host_ + ":" + std::to_string(port_) + ": no reply within " +
                     std::to_string(options_.command_timeout_ms) + " ms");
    return Unavailable("redis " + host_ + ":" + std::to_string(port_) + ": " + what);
  }

  StatusOr<Reply> command(Args args) {
    KVCODEC_ASSIGN_OR_RETURN(auto replies, pipeline({std::move(args)}));
    return std::move(replies[0]);
  }
  StatusOr<std::vector<Reply>> pipeline(const std::vector<Args>& commands) {
    KVCODEC_RETURN_IF_ERROR(ensure_connected());
    return send(commands);
  }

  const std::string uri_, host_;
  const int port_, db_;
  const StoreOptions options_;
  std::mutex mu_;
  redisContext* ctx_ = nullptr;
};

}  // namespace

StatusOr<std::unique_ptr<Store>> open_redis_store(std::string_view uri, const StoreOptions& options) {
  std::string_view rest = uri.substr(std::string_view("redis://").size());
  int db = 0;
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    std::string_view d = rest.substr(slash + 1);
    auto [p, ec] = std::from_chars(d.data(), d.data() + d.size(), db);
    if (ec != std::errc() || p != d.data() + d.size() || db < 0)
      return InvalidArgument("redis URI: bad database number in '" + std::string(uri) + "'");
    rest = rest.substr(0, slash);
  }
  auto colon = rest.rfind(':');
  std::string host = std::string(colon == std::string_view::npos ? rest : rest.substr(0, colon));
  int port = 6379;
  if (colon != std::string_view::npos) {
    std::string_view p = rest.substr(colon + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
    if (ec != std::errc() || end != p.data() + p.size() || port <= 0 || port > 65535)
      return InvalidArgument("redis URI: bad port in '" + std::string(uri) + "'");
  }
  if (host.empty()) return InvalidArgument("redis URI: expected redis://HOST:PORT[/DB]");
  if (options.connect_timeout_ms <= 0 || options.command_timeout_ms <= 0)
    return InvalidArgument("redis: timeouts must be positive");
  auto store = std::make_unique<RedisStore>(std::string(uri), host, port, db, options);
  KVCODEC_RETURN_IF_ERROR(store->connect_and_ping());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace kvcodec
