// The Redis stores' shared pieces (URI, slots, connection, commands) and the single-node store.
//
// Single node: a pool of connections (ConnectionPool; a hiredis context is not thread-safe, so
// each is held by one call at a time). Every command runs under the configured command timeout; after any I/O error or
// timeout the connection is dropped and the next command reconnects (under the connect
// timeout), so a Redis that restarts is picked up again and one that is down costs at most the
// connect timeout per call. Failures map to kUnavailable (cannot connect / connection lost),
// kTimeout (no reply in time) or kIoError (Redis answered with an error, e.g. OOM).
#include "store_redis.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "percent.hpp"

namespace kvcodec {
namespace redis {

namespace {

timeval to_timeval(int ms) { return timeval{ms / 1000, (ms % 1000) * 1000}; }

// "%40" -> "@"; kInvalidArgument on a malformed escape.
StatusOr<std::string> decode_userinfo(std::string_view s) {
  auto decoded = percent_decode(s);
  if (!decoded) return InvalidArgument("redis URI: bad %XX escape");
  return *decoded;
}

StatusOr<Endpoint> parse_endpoint(std::string_view s) {
  Endpoint e;
  auto colon = s.rfind(':');
  e.host = std::string(colon == std::string_view::npos ? s : s.substr(0, colon));
  if (colon != std::string_view::npos) {
    std::string_view p = s.substr(colon + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), e.port);
    if (ec != std::errc() || end != p.data() + p.size() || e.port <= 0 || e.port > 65535)
      return InvalidArgument("redis URI: bad port in '" + std::string(s) + "'");
  }
  if (e.host.empty()) return InvalidArgument("redis URI: empty host");
  return e;
}

}  // namespace

StatusOr<Uri> parse_uri(std::string_view uri) {
  Uri u;
  std::string_view rest;
  for (auto [scheme, cluster] : {std::pair{"redis://", false}, {"valkey://", false},
                                 {"redis-cluster://", true}, {"valkey-cluster://", true}}) {
    if (uri.rfind(scheme, 0) == 0) {
      rest = uri.substr(std::string_view(scheme).size());
      u.cluster = cluster;
      break;
    }
    if (std::string_view(scheme) == "valkey-cluster://")
      return InvalidArgument("redis URI: expected redis://, valkey://, redis-cluster:// or valkey-cluster://");
  }
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {  // a password may hold '@'
    std::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    auto colon = userinfo.find(':');
    if (colon == std::string_view::npos)
      return InvalidArgument("redis URI: credentials must be USER:PASSWORD@ or :PASSWORD@");
    KVCODEC_ASSIGN_OR_RETURN(u.user, decode_userinfo(userinfo.substr(0, colon)));
    KVCODEC_ASSIGN_OR_RETURN(u.password, decode_userinfo(userinfo.substr(colon + 1)));
    if (u.password.empty()) return InvalidArgument("redis URI: empty password");
  }
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    if (u.cluster) return InvalidArgument("redis cluster URI: a cluster has only database 0 (no /DB)");
    std::string_view d = rest.substr(slash + 1);
    auto [p, ec] = std::from_chars(d.data(), d.data() + d.size(), u.db);
    if (ec != std::errc() || p != d.data() + d.size() || u.db < 0)
      return InvalidArgument("redis URI: bad database number in '" + std::string(uri) + "'");
    rest = rest.substr(0, slash);
  }
  while (true) {
    auto comma = rest.find(',');
    KVCODEC_ASSIGN_OR_RETURN(Endpoint e, parse_endpoint(rest.substr(0, comma)));
    u.nodes.push_back(std::move(e));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  if (!u.cluster && u.nodes.size() != 1)
    return InvalidArgument("redis URI: one HOST:PORT (several seeds need redis-cluster://)");
  return u;
}

uint16_t crc16(std::string_view bytes) noexcept {
  uint16_t crc = 0;
  for (unsigned char b : bytes) {
    crc ^= uint16_t(b << 8);
    for (int i = 0; i < 8; ++i) crc = (crc & 0x8000) ? uint16_t((crc << 1) ^ 0x1021) : uint16_t(crc << 1);
  }
  return crc;
}

uint16_t key_slot(std::string_view key) noexcept {
  if (auto open = key.find('{'); open != std::string_view::npos) {
    auto close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return uint16_t(crc16(key) % kSlots);
}

// ---- Connection ----------------------------------------------------------------------------

Connection::Connection(Endpoint endpoint, const StoreOptions& options, std::string user,
                       std::string password, int db)
    : endpoint_(std::move(endpoint)), options_(options), user_(std::move(user)), password_(std::move(password)),
      db_(db) {}

Connection::~Connection() { drop(); }

void Connection::drop() noexcept {
  if (ctx_) redisFree(ctx_);
  ctx_ = nullptr;
}

Status Connection::connect() {
  drop();
  ctx_ = redisConnectWithTimeout(endpoint_.host.c_str(), endpoint_.port, to_timeval(options_.connect_timeout_ms));
  if (!ctx_) return ResourceExhausted("redis: cannot allocate a connection");
  if (ctx_->err) {
    Status s = Unavailable("redis " + endpoint_.name() + ": " + ctx_->errstr);
    drop();
    return s;
  }
  if (redisSetTimeout(ctx_, to_timeval(options_.command_timeout_ms)) != REDIS_OK) {
    drop();
    return Unavailable("redis: cannot set the command timeout");
  }
  std::vector<Args> setup;
  if (!password_.empty()) setup.push_back(user_.empty() ? Args{"AUTH", password_} : Args{"AUTH", user_, password_});
  const std::string db = std::to_string(db_);
  if (db_ != 0) setup.push_back({"SELECT", db});
  if (setup.empty()) return Status::Ok();
  // Any failure leaves no connection behind: never keep one that is unauthenticated or on the
  // wrong database.
  KVCODEC_ASSIGN_OR_RETURN(auto replies, send(setup));
  for (size_t i = 0; i < setup.size(); ++i) {
    if (replies[i]->type == REDIS_REPLY_ERROR) {
      std::string what = std::string(setup[i][0]) + " failed: " + std::string(text(replies[i].get()));
      drop();
      return InvalidArgument("redis " + endpoint_.name() + ": " + what);
    }
  }
  return Status::Ok();
}

StatusOr<std::vector<Reply>> Connection::exchange(const std::vector<Args>& commands) {
  if (!ctx_ || ctx_->err) KVCODEC_RETURN_IF_ERROR(connect());
  return send(commands);
}

StatusOr<std::vector<Reply>> Connection::send(const std::vector<Args>& commands) {
  std::vector<const char*> argv;
  std::vector<size_t> argl;
  for (const Args& args : commands) {
    argv.clear();
    argl.clear();
    for (auto a : args) {
      argv.push_back(a.data());
      argl.push_back(a.size());
    }
    if (redisAppendCommandArgv(ctx_, int(argv.size()), argv.data(), argl.data()) != REDIS_OK)
      return transport_error();
  }
  std::vector<Reply> replies;
  replies.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    errno = 0;
    if (redisGetReply(ctx_, &raw) != REDIS_OK || !raw) return transport_error();
    replies.emplace_back(static_cast<redisReply*>(raw));
  }
  return replies;
}

Status Connection::transport_error() {
  const bool timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
  std::string what = ctx_ && ctx_->errstr[0] ? ctx_->errstr : "connection lost";
  drop();
  if (timed_out)
    return Timeout("redis " + endpoint_.name() + ": no reply within " + std::to_string(options_.command_timeout_ms) +
                   " ms");
  return Unavailable("redis " + endpoint_.name() + ": " + what);
}

// ---- ConnectionPool ---------------------------------------------------------------------------

ConnectionPool::ConnectionPool(const Endpoint& endpoint, const StoreOptions& options, const std::string& user,
                               const std::string& password, int db)
    : busy_(size_t(std::max(1, options.connections_per_node)), false) {
  for (size_t i = 0; i < busy_.size(); ++i)
    conns_.push_back(std::make_unique<Connection>(endpoint, options, user, password, db));
}

Status ConnectionPool::with_connection(const std::function<Status(Connection&)>& fn) {
  size_t i = 0;
  {
    std::unique_lock lock(mu_);
    free_.wait(lock, [&] {
      for (i = 0; i < busy_.size(); ++i)
        if (!busy_[i]) return true;
      return false;
    });
    busy_[i] = true;
  }
  Status s = fn(*conns_[i]);
  {
    std::lock_guard lock(mu_);
    busy_[i] = false;
  }
  free_.notify_one();
  return s;
}

StatusOr<std::vector<Reply>> ConnectionPool::exchange(const std::vector<Args>& commands) {
  StatusOr<std::vector<Reply>> out = Internal("redis: no exchange");
  if (Status s = with_connection([&](Connection& c) {
        out = c.exchange(commands);
        return out.ok() ? Status::Ok() : out.status();
      });
      !s.ok())
    return s;
  return out;
}

// ---- StoreBase -------------------------------------------------------------------------------

namespace {

Status error_reply(std::string_view command, std::string_view key, const redisReply* r) {
  std::string msg = "redis " + std::string(command) + " " + std::string(key) + ": " + std::string(text(r));
  if (text(r).rfind("MOVED", 0) == 0) msg += " (a cluster node: open it as redis-cluster://)";
  return IoError(msg);
}

// Indices of `keys` grouped by hash slot (one group per slot, in slot order).
template <typename KeyOf>
std::map<uint16_t, std::vector<size_t>> by_slot(size_t n, KeyOf key_of) {
  std::map<uint16_t, std::vector<size_t>> groups;
  for (size_t i = 0; i < n; ++i) groups[key_slot(key_of(i))].push_back(i);
  return groups;
}

// "kvc:{" -> "kvc:\{" : SCAN MATCH is a glob; escape its special characters.
std::string glob_prefix(std::string_view prefix) {
  std::string p;
  for (char c : prefix) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') p += '\\';
    p += c;
  }
  return p + "*";
}

}  // namespace

Status StoreBase::put(std::string_view key, std::span<const uint8_t> value) {
  KeyValue kv{key, value};
  return put_many({&kv, 1}, {});
}

StatusOr<std::vector<uint8_t>> StoreBase::get(std::string_view key) {
  std::string k(key);
  return std::move(get_many({&k, 1})[0]);
}

Status StoreBase::remove(std::string_view key) {
  std::string k(key);
  return remove_many({&k, 1});
}

StatusOr<bool> StoreBase::exists(std::string_view key) {
  auto r = run(key_slot(key), {{"EXISTS", key}});
  if (!r.ok()) return r.status().with_context("redis EXISTS " + std::string(key));
  const redisReply* reply = (*r)[0].get();
  if (reply->type == REDIS_REPLY_ERROR) return error_reply("EXISTS", key, reply);
  if (reply->type != REDIS_REPLY_INTEGER) return CorruptData("redis EXISTS: reply is not an integer");
  return reply->integer > 0;
}

// SET [EX] and STRLEN per key, pipelined per slot: a put is confirmed only when Redis reports
// the stored value's length.
Status StoreBase::put_many(std::span<const KeyValue> items, const WriteOptions& options) {
  const std::string ttl = std::to_string(options.ttl_seconds);
  for (const auto& [slot, idx] : by_slot(items.size(), [&](size_t i) { return items[i].key; })) {
    std::vector<Args> commands;
    for (size_t i : idx) {
      std::string_view v(reinterpret_cast<const char*>(items[i].value.data()), items[i].value.size());
      commands.push_back(options.ttl_seconds ? Args{"SET", items[i].key, v, "EX", ttl} : Args{"SET", items[i].key, v});
      commands.push_back({"STRLEN", items[i].key});
    }
    auto r = run(slot, commands);
    if (!r.ok()) return r.status().with_context("redis SET " + std::string(items[idx[0]].key));
    for (size_t j = 0; j < idx.size(); ++j) {
      const KeyValue& kv = items[idx[j]];
      const redisReply* set = (*r)[2 * j].get();
      const redisReply* len = (*r)[2 * j + 1].get();
      if (set->type == REDIS_REPLY_ERROR) return error_reply("SET", kv.key, set);
      if (set->type != REDIS_REPLY_STATUS || text(set) != "OK")
        return IoError("redis SET " + std::string(kv.key) + ": unexpected reply");
      if (len->type != REDIS_REPLY_INTEGER || uint64_t(len->integer) != kv.value.size())
        return IoError("redis SET " + std::string(kv.key) + ": stored length differs from the value's");
    }
  }
  return Status::Ok();
}

std::vector<StatusOr<std::vector<uint8_t>>> StoreBase::get_many(std::span<const std::string> keys) {
  std::vector<StatusOr<std::vector<uint8_t>>> out(keys.size(), Internal("redis GET: not run"));
  for (const auto& [slot, idx] : by_slot(keys.size(), [&](size_t i) { return keys[i]; })) {
    std::vector<Args> commands;
    for (size_t i : idx) commands.push_back({"GET", keys[i]});
    auto r = run(slot, commands);
    for (size_t j = 0; j < idx.size(); ++j) {
      const std::string& key = keys[idx[j]];
      if (!r.ok()) {
        out[idx[j]] = r.status().with_context("redis GET " + key);
        continue;
      }
      const redisReply* reply = (*r)[j].get();
      if (reply->type == REDIS_REPLY_NIL) {
        out[idx[j]] = NotFound("redis: no key " + key);
      } else if (reply->type == REDIS_REPLY_ERROR) {
        out[idx[j]] = error_reply("GET", key, reply);
      } else if (reply->type != REDIS_REPLY_STRING) {
        out[idx[j]] = CorruptData("redis GET: reply is not a string");
      } else {
        const auto* p = reinterpret_cast<const uint8_t*>(reply->str);
        out[idx[j]] = std::vector<uint8_t>(p, p + reply->len);
      }
    }
  }
  return out;
}

Status StoreBase::remove_many(std::span<const std::string> keys) {
  // One DEL per key: a multi-key DEL is refused by a cluster across slots; per slot, the
  // pipeline keeps the caller's order (a context's manifest goes first).
  for (const auto& [slot, idx] : by_slot(keys.size(), [&](size_t i) { return keys[i]; })) {
    std::vector<Args> commands;
    for (size_t i : idx) commands.push_back({"DEL", keys[i]});
    auto r = run(slot, commands);
    if (!r.ok()) return r.status().with_context("redis DEL " + keys[idx[0]]);
    for (size_t j = 0; j < idx.size(); ++j)
      if ((*r)[j]->type == REDIS_REPLY_ERROR) return error_reply("DEL", keys[idx[j]], (*r)[j].get());
  }
  return Status::Ok();
}

StatusOr<std::vector<std::string>> StoreBase::list_keys(std::string_view prefix) {
  const std::string match = glob_prefix(prefix);
  std::set<std::string> keys;  // SCAN may return a key more than once
  KVCODEC_RETURN_IF_ERROR(for_each_master([&](Connection& c) -> Status {
    std::string cursor = "0";
    do {
      KVCODEC_ASSIGN_OR_RETURN(auto r, c.exchange({{"SCAN", cursor, "MATCH", match, "COUNT", "1000"}}));
      const redisReply* reply = r[0].get();
      if (reply->type == REDIS_REPLY_ERROR) return error_reply("SCAN", match, reply);
      if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
          reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_ARRAY)
        return CorruptData("redis SCAN: unexpected reply");
      cursor = std::string(text(reply->element[0]));
      for (size_t i = 0; i < reply->element[1]->elements; ++i) {
        const redisReply* k = reply->element[1]->element[i];
        if (k->type == REDIS_REPLY_STRING) keys.emplace(text(k));
      }
    } while (cursor != "0");
    return Status::Ok();
  }));
  return std::vector<std::string>(keys.begin(), keys.end());
}

}  // namespace redis

namespace {

class RedisStore final : public redis::StoreBase {
 public:
  RedisStore(std::string uri, const redis::Uri& u, const StoreOptions& o)
      : uri_(std::move(uri)), pool_(u.nodes[0], o, u.user, u.password, u.db) {}

  Status ping() {
    auto r = run(0, {{"PING"}});
    if (!r.ok()) return r.status();
    if ((*r)[0]->type == REDIS_REPLY_ERROR)
      return Unavailable("redis " + pool_.endpoint().name() + ": PING: " + std::string(redis::text((*r)[0].get())));
    return Status::Ok();
  }
  const std::string& uri() const noexcept override { return uri_; }

 protected:
  StatusOr<std::vector<redis::Reply>> run(uint16_t, const std::vector<redis::Args>& commands) override {
    return pool_.exchange(commands);
  }
  Status for_each_master(const std::function<Status(redis::Connection&)>& fn) override {
    return pool_.with_connection(fn);
  }

 private:
  const std::string uri_;
  redis::ConnectionPool pool_;
};

}  // namespace

StatusOr<std::unique_ptr<Store>> open_redis_store(std::string_view uri, const StoreOptions& options) {
  KVCODEC_ASSIGN_OR_RETURN(redis::Uri u, redis::parse_uri(uri));
  if (u.cluster) return InvalidArgument("open_redis_store: a cluster URI");
  if (options.connect_timeout_ms <= 0 || options.command_timeout_ms <= 0)
    return InvalidArgument("redis: timeouts must be positive");
  if (u.password.empty()) u.user = options.user, u.password = options.password;
  auto store = std::make_unique<RedisStore>(std::string(uri), u, options);
  KVCODEC_RETURN_IF_ERROR(store->ping());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace kvcodec
