// The Redis stores (private to src/stream; open them through open_store): the URI syntax, the
// cluster's key-to-slot rule, one hiredis connection, and the command logic shared by the
// single-node store (store_redis.cpp) and the cluster store (store_redis_cluster.cpp).
#pragma once

#include <hiredis/hiredis.h>

#include <cstdint>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/store.hpp"

namespace kvcodec {

// "redis://[[USER]:PASSWORD@]HOST:PORT[/DB]" (or valkey://). Connects and PINGs; kUnavailable
// when the server cannot be reached.
StatusOr<std::unique_ptr<Store>> open_redis_store(std::string_view uri, const StoreOptions& options);
// "redis-cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]" (or valkey-cluster://). Reads
// the slot map from the first seed node that answers; kUnavailable when none does.
StatusOr<std::unique_ptr<Store>> open_redis_cluster_store(std::string_view uri, const StoreOptions& options);

namespace redis {

struct Endpoint {
  std::string host;
  int port = 6379;
  std::string name() const { return host + ":" + std::to_string(port); }
};

struct Uri {
  bool cluster = false;
  std::string user, password;  // from USER:PASSWORD@ (percent-decoded); empty when absent
  std::vector<Endpoint> nodes;  // one for redis://, the seeds for redis-cluster://
  int db = 0;
};
// Parses the four schemes above. kInvalidArgument names what is wrong.
StatusOr<Uri> parse_uri(std::string_view uri);

inline constexpr int kSlots = 16384;
// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection): Redis Cluster's key hash.
uint16_t crc16(std::string_view bytes) noexcept;
// The hash slot of `key`: CRC16 of its hash tag -- the bytes between the first '{' and the first
// '}' after it, when there are any -- or of the whole key, modulo 16384.
uint16_t key_slot(std::string_view key) noexcept;

struct ReplyDeleter {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;
using Args = std::vector<std::string_view>;
inline std::string_view text(const redisReply* r) { return {r->str, r->len}; }

// One blocking hiredis connection to one node. Not thread-safe: its owner serializes calls.
// Connects lazily (under the connect timeout, then AUTH and SELECT); after any I/O error or
// timeout the connection is dropped and the next exchange reconnects.
class Connection {
 public:
  Connection(Endpoint endpoint, const StoreOptions& options, std::string user, std::string password,
             int db);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends every command, then reads one reply per command (a pipeline: one round trip). Error
  // replies are returned as replies (REDIS_REPLY_ERROR); a transport failure drops the
  // connection and is kUnavailable (cannot connect, connection lost) or kTimeout (no reply
  // within the command timeout). A rejected AUTH is kInvalidArgument.
  StatusOr<std::vector<Reply>> exchange(const std::vector<Args>& commands);
  void drop() noexcept;
  const Endpoint& endpoint() const noexcept { return endpoint_; }

 private:
  Status connect();
  StatusOr<std::vector<Reply>> send(const std::vector<Args>& commands);
  Status transport_error();

  const Endpoint endpoint_;
  const StoreOptions options_;
  const std::string user_, password_;
  const int db_;
  redisContext* ctx_ = nullptr;
};

// Up to StoreOptions::connections_per_node connections to one node, opened on demand and reused:
// a call takes a connection no other thread holds, waiting while all are busy. Several
// connections let one node serve concurrent readers (one would serialize a server's connections
// behind each other's chunk transfers).
class ConnectionPool {
 public:
  ConnectionPool(const Endpoint& endpoint, const StoreOptions& options, const std::string& user,
                 const std::string& password, int db);
  StatusOr<std::vector<Reply>> exchange(const std::vector<Args>& commands);
  Status with_connection(const std::function<Status(Connection&)>& fn);
  const Endpoint& endpoint() const noexcept { return conns_[0]->endpoint(); }

 private:
  std::mutex mu_;
  std::condition_variable free_;
  std::vector<std::unique_ptr<Connection>> conns_;
  std::vector<bool> busy_;
};

// The Store calls in Redis commands, over whatever routes them: run() sends commands whose keys
// all hash to one slot to the node serving it; for_each_master() visits every node that holds
// keys. Error replies (OOM, WRONGTYPE...) become kIoError; a missing key kNotFound.
class StoreBase : public Store {
 public:
  Status put(std::string_view key, std::span<const uint8_t> value) override;
  StatusOr<std::vector<uint8_t>> get(std::string_view key) override;
  StatusOr<bool> exists(std::string_view key) override;
  Status remove(std::string_view key) override;
  Status put_many(std::span<const KeyValue> items, const WriteOptions& options) override;
  std::vector<StatusOr<std::vector<uint8_t>>> get_many(std::span<const std::string> keys) override;
  Status remove_many(std::span<const std::string> keys) override;
  StatusOr<std::vector<std::string>> list_keys(std::string_view prefix) override;

 protected:
  virtual StatusOr<std::vector<Reply>> run(uint16_t slot, const std::vector<Args>& commands) = 0;
  virtual Status for_each_master(const std::function<Status(Connection&)>& fn) = 0;
};

}  // namespace redis
}  // namespace kvcodec
