// The fleet side of the stores (store.hpp): Redis Cluster routing (slots, URIs, MOVED / ASK),
// AUTH, TTL, listing and removing contexts, and eviction under maxmemory.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "kvcodec/codec.hpp"
#include "kvcodec/stream.hpp"
#include "stream/store_redis.hpp"
#include "stream_test_util.hpp"

namespace kvcodec {
namespace {

using test::make_kv;

std::vector<uint8_t> bytes_of(std::string_view s) { return {s.begin(), s.end()}; }

// KVCODEC_REDIS_CLUSTER_URL (scripts/test.sh starts a 3+3 cluster and exports it), or skip
// (fail under CI=true).
#define KVCODEC_REQUIRE_CLUSTER(url_var)                                                              \
  const char* url_var##_env = std::getenv("KVCODEC_REDIS_CLUSTER_URL");                              \
  if (!url_var##_env || !*url_var##_env) {                                                           \
    if (::kvcodec::test::running_in_ci()) FAIL() << "KVCODEC_REDIS_CLUSTER_URL must be set under CI=true"; \
    GTEST_SKIP() << "KVCODEC_REDIS_CLUSTER_URL not set (scripts/test.sh starts a Redis Cluster)";    \
  }                                                                                                  \
  const std::string url_var = url_var##_env

// ---- slots and URIs (no server) ------------------------------------------------------------

TEST(ClusterSlots, Crc16IsXmodem) {
  EXPECT_EQ(redis::crc16("123456789"), 0x31C3);  // the CRC's published check value
  EXPECT_EQ(redis::crc16(""), 0);
}

TEST(ClusterSlots, KeySlotsMatchRedis) {
  // Reference values: CLUSTER KEYSLOT on redis-server 7.0.
  EXPECT_EQ(redis::key_slot("foo"), 12182);
  EXPECT_EQ(redis::key_slot("bar"), 5061);
  EXPECT_EQ(redis::key_slot("hello"), 866);
  EXPECT_EQ(redis::key_slot("somekey"), 11058);
  EXPECT_EQ(redis::key_slot("{user1000}.following"), 3443);
  EXPECT_EQ(redis::key_slot("{user1000}.followers"), 3443);
  EXPECT_EQ(redis::key_slot("foo{}{bar}"), 8363);     // empty tag: the whole key
  EXPECT_EQ(redis::key_slot("foo{{bar}}zap"), 4015);  // tag "{bar"
  EXPECT_EQ(redis::key_slot("foo{bar}{zap}"), 5061);  // first tag only: "bar"
  EXPECT_EQ(redis::key_slot("ctx-1"), 6379);
  // Every key of a context hashes like its id.
  for (const std::string& k : {manifest_key("ctx-1"), head_key("ctx-1", 3), chunk_key("ctx-1", 9, 1234)})
    EXPECT_EQ(redis::key_slot(k), 6379) << k;
}

TEST(ClusterUri, Parses) {
  auto u = redis::parse_uri("redis-cluster://10.0.0.1:7000,10.0.0.2:7001,node3");
  ASSERT_TRUE(u.ok()) << u.status().to_string();
  EXPECT_TRUE(u->cluster);
  ASSERT_EQ(u->nodes.size(), 3u);
  EXPECT_EQ(u->nodes[0].name(), "10.0.0.1:7000");
  EXPECT_EQ(u->nodes[1].name(), "10.0.0.2:7001");
  EXPECT_EQ(u->nodes[2].name(), "node3:6379");
  EXPECT_TRUE(u->password.empty());

  u = redis::parse_uri("valkey-cluster://alice:p%40ss@h:1");
  ASSERT_TRUE(u.ok()) << u.status().to_string();
  EXPECT_TRUE(u->cluster);
  EXPECT_EQ(u->user, "alice");
  EXPECT_EQ(u->password, "p@ss");

  u = redis::parse_uri("redis://:secret@h:2/3");
  ASSERT_TRUE(u.ok()) << u.status().to_string();
  EXPECT_FALSE(u->cluster);
  EXPECT_EQ(u->user, "");
  EXPECT_EQ(u->password, "secret");
  EXPECT_EQ(u->db, 3);
  EXPECT_EQ(u->nodes[0].name(), "h:2");

  u = redis::parse_uri("valkey://h");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->nodes[0].port, 6379);
}

TEST(ClusterUri, RejectsMalformed) {
  for (const char* bad : {"redis-cluster://", "redis-cluster://h:1,", "redis-cluster://h:1,:2",
                          "redis-cluster://h:70000", "redis-cluster://h:1/0", "redis://a:1,b:2",
                          "redis://user@h:1", "redis://u:@h:1", "redis://:p%4@h:1", "rediss://h:1",
                          "redis-cluster://h:x"}) {
    auto u = redis::parse_uri(bad);
    EXPECT_FALSE(u.ok()) << bad;
    if (!u.ok()) EXPECT_EQ(u.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_FALSE(open_store(bad).ok()) << bad;
  }
}

// ---- TTL, listing and removal on every store ------------------------------------------------

void exercise_fleet_calls(Store& s, bool expires) {
  KVCache kv = make_kv({1, 40, 1, 8}, DType::kF16, 3);
  PutOptions po;
  po.levels = {1, 4};
  po.chunk_tokens = 16;
  po.measure = false;
  for (const char* id : {"fleet-b", "fleet-a", "fleet-c"}) ASSERT_TRUE(put_context(s, id, kv.view(), po).ok()) << id;
  auto ids = list_contexts(s);
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  std::vector<std::string> fleet;
  for (const auto& id : *ids)
    if (id.rfind("fleet-", 0) == 0) fleet.push_back(id);
  EXPECT_EQ(fleet, (std::vector<std::string>{"fleet-a", "fleet-b", "fleet-c"}));

  ASSERT_TRUE(remove_context(s, "fleet-b").ok());
  EXPECT_EQ(remove_context(s, "fleet-b").code(), StatusCode::kNotFound);
  EXPECT_FALSE(*s.exists(chunk_key("fleet-b", 4, 2)));  // every piece went, not only the manifest
  ids = list_contexts(s);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(std::count(ids->begin(), ids->end(), "fleet-b"), 0);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), "fleet-a"), 1);

  // get_many keeps the order and reports each key on its own.
  std::vector<std::string> keys = {manifest_key("fleet-a"), manifest_key("fleet-b"), chunk_key("fleet-c", 1, 0)};
  auto got = s.get_many(keys);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_TRUE(got[0].ok());
  EXPECT_EQ(got[1].status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(got[2].ok());
  EXPECT_EQ(*got[2], *s.get(chunk_key("fleet-c", 1, 0)));

  po.ttl_seconds = 1;
  Manifest m;
  if (!expires) {
    EXPECT_EQ(put_context(s, "fleet-ttl", kv.view(), po).status().code(), StatusCode::kInvalidArgument);
  } else {
    ASSERT_TRUE(put_context(s, "fleet-ttl", kv.view(), po).ok());
    EXPECT_TRUE(get_manifest(s, "fleet-ttl").ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));
    EXPECT_EQ(get_manifest(s, "fleet-ttl").status().code(), StatusCode::kNotFound);
    EXPECT_FALSE(*s.exists(chunk_key("fleet-ttl", 1, 0)));
  }
  for (const char* id : {"fleet-a", "fleet-c"}) EXPECT_TRUE(remove_context(s, id).ok());
}

TEST(FleetCalls, Mem) {
  auto s = open_store("mem:");
  exercise_fleet_calls(**s, true);
}

TEST(FleetCalls, File) {
  const auto dir = std::filesystem::temp_directory_path() / ("kvc_fleet_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto s = open_store("file:" + dir.string());
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->put("kvc:{weird%}:manifest", bytes_of("x")).ok());  // escaped name, not a valid id
  exercise_fleet_calls(**s, false);
  auto keys = (*s)->list_keys("kvc:{weird");
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(*keys, std::vector<std::string>{"kvc:{weird%}:manifest"});
  std::filesystem::remove_all(dir);
}

TEST(FleetCalls, Redis) {
  KVCODEC_REQUIRE_REDIS(url);
  auto s = open_store(url);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  exercise_fleet_calls(**s, true);
}

TEST(FleetCalls, RedisCluster) {
  KVCODEC_REQUIRE_CLUSTER(url);
  auto s = open_store(url);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  exercise_fleet_calls(**s, true);
}

// ---- the cluster store -----------------------------------------------------------------------

TEST(ClusterStore, ContextsSpreadOverShardsAndReadBack) {
  KVCODEC_REQUIRE_CLUSTER(url);
  auto s = open_store(url);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  KVCache kv = make_kv({2, 60, 2, 16}, DType::kF16, 9);
  PutOptions po;
  po.levels = {2, 6};
  po.chunk_tokens = 16;
  po.measure = false;
  std::set<int> shards;  // which third of the slot space each context landed in
  for (int i = 0; i < 12; ++i) {
    const std::string id = "spread-" + std::to_string(i);
    auto m = put_context(**s, id, kv.view(), po);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    shards.insert(redis::key_slot(id) * 3 / redis::kSlots);
    for (uint32_t c = 0; c < m->num_chunks(); ++c) {
      auto body = get_chunk(**s, id, *m, 6, c);
      ASSERT_TRUE(body.ok()) << body.status().to_string();
    }
  }
  EXPECT_EQ(shards.size(), 3u);
  // A single-node store pointed at one cluster node sees MOVED for other slots: a clear error.
  const std::string first = url.substr(std::strlen("redis-cluster://"), url.find(',') - std::strlen("redis-cluster://"));
  auto single = open_store("redis://" + first);
  ASSERT_TRUE(single.ok());
  int moved = 0;
  for (int i = 0; i < 12; ++i) {
    auto g = (*single)->get(manifest_key("spread-" + std::to_string(i)));
    if (!g.ok() && std::string(g.status().message()).find("redis-cluster://") != std::string::npos) ++moved;
    else EXPECT_TRUE(g.ok()) << g.status().to_string();
  }
  EXPECT_GT(moved, 0);
  for (int i = 0; i < 12; ++i) EXPECT_TRUE(remove_context(**s, "spread-" + std::to_string(i)).ok());
}

// Runs one command on a node (hiredis, through the store's own connection class).
std::string node_command(const redis::Endpoint& e, const redis::Args& args) {
  redis::Connection c(e, StoreOptions{}, "", "", 0);
  auto r = c.exchange({args});
  if (!r.ok()) return "transport: " + r.status().to_string();
  const redisReply* x = (*r)[0].get();
  if (x->type == REDIS_REPLY_STRING || x->type == REDIS_REPLY_STATUS || x->type == REDIS_REPLY_ERROR)
    return std::string(redis::text(x));
  if (x->type == REDIS_REPLY_INTEGER) return std::to_string(x->integer);
  return "";
}

// The master serving `slot` and another master, with their node ids, from CLUSTER NODES.
struct Masters {
  redis::Endpoint owner, other;
  std::string owner_id, other_id;
};
bool find_masters(const redis::Endpoint& any, int slot, Masters* out) {
  std::istringstream lines(node_command(any, {"CLUSTER", "NODES"}));
  std::string line;
  bool have_owner = false, have_other = false;
  while (std::getline(lines, line)) {
    std::istringstream f(line);
    std::string id, addr, flags, master, ping, pong, epoch, link, range;
    f >> id >> addr >> flags >> master >> ping >> pong >> epoch >> link;
    if (flags.find("master") == std::string::npos || flags.find("fail") != std::string::npos) continue;
    redis::Endpoint e{addr.substr(0, addr.find(':')), std::atoi(addr.substr(addr.find(':') + 1).c_str())};
    bool owns = false;
    while (f >> range) {
      const auto dash = range.find('-');
      const int lo = std::atoi(range.c_str()), hi = dash == std::string::npos ? lo : std::atoi(range.c_str() + dash + 1);
      if (range[0] != '[' && lo <= slot && slot <= hi) owns = true;
    }
    if (owns) out->owner = e, out->owner_id = id, have_owner = true;
    else if (!have_other) out->other = e, out->other_id = id, have_other = true;
  }
  return have_owner && have_other;
}

// A slot migrated under the store (as redis-cli --cluster reshard does it): during the
// migration a key already moved answers ASK (followed with ASKING); once the slot belongs to
// the other master, the store's stale map gets MOVED and follows it. No call fails, no value
// is lost; the slot is moved back at the end.
TEST(ClusterStore, FollowsAskAndMovedDuringAMigration) {
  KVCODEC_REQUIRE_CLUSTER(url);
  auto s = open_store(url);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  auto u = redis::parse_uri(url);
  const std::string id = "migrating";
  const int slot = redis::key_slot(id);
  Masters m;
  ASSERT_TRUE(find_masters(u->nodes[0], slot, &m));
  const std::string a = manifest_key(id), b = head_key(id, 1);
  ASSERT_TRUE((*s)->put(a, bytes_of("stays until migrated")).ok());
  ASSERT_TRUE((*s)->put(b, bytes_of("moves first")).ok());

  const std::string sl = std::to_string(slot);
  auto move_slot = [&](const Masters& x) {
    ASSERT_EQ(node_command(x.other, {"CLUSTER", "SETSLOT", sl, "IMPORTING", x.owner_id}), "OK");
    ASSERT_EQ(node_command(x.owner, {"CLUSTER", "SETSLOT", sl, "MIGRATING", x.other_id}), "OK");
  };
  auto migrate_key = [&](const Masters& x, const std::string& key) {
    ASSERT_EQ(node_command(x.owner, {"MIGRATE", x.other.host, std::to_string(x.other.port), key, "0", "5000"}), "OK");
  };
  auto finish = [&](const Masters& x) {
    for (const auto& e : {x.other, x.owner})
      ASSERT_EQ(node_command(e, {"CLUSTER", "SETSLOT", sl, "NODE", x.other_id}), "OK");
  };
  move_slot(m);
  migrate_key(m, b);
  auto got = (*s)->get(b);  // the owner no longer has it: ASK
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_EQ(*got, bytes_of("moves first"));
  got = (*s)->get(a);  // still at the owner
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_EQ(*got, bytes_of("stays until migrated"));
  ASSERT_TRUE((*s)->put(chunk_key(id, 1, 0), bytes_of("new during migration")).ok());  // ASK on write
  migrate_key(m, a);
  finish(m);
  for (const auto& [key, value] : {std::pair{a, "stays until migrated"}, {b, "moves first"},
                                   {chunk_key(id, 1, 0), "new during migration"}}) {
    got = (*s)->get(key);  // the map still says the old owner: MOVED
    ASSERT_TRUE(got.ok()) << key << ": " << got.status().to_string();
    EXPECT_EQ(*got, bytes_of(value));
  }
  // Back where it was, the keys with it.
  Masters back{m.other, m.owner, m.other_id, m.owner_id};
  move_slot(back);
  for (const std::string& key : {a, b, chunk_key(id, 1, 0)}) migrate_key(back, key);
  finish(back);
  ASSERT_TRUE((*s)->remove_many(std::vector<std::string>{a, b, chunk_key(id, 1, 0)}).ok());
}

TEST(ClusterStore, NoNodeIsUnavailableQuickly) {
  StoreOptions o;
  o.connect_timeout_ms = 300;
  const auto t0 = std::chrono::steady_clock::now();
  auto s = open_store("redis-cluster://127.0.0.1:" + std::to_string(test::free_port()) + ",127.0.0.1:" +
                          std::to_string(test::free_port()),
                      o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable) << s.status().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST(ClusterStore, ANonClusterServerIsAClearError) {
  test::RedisProcess redis;
  ASSERT_TRUE(redis.wait_ready());
  auto s = open_store("redis-cluster://127.0.0.1:" + std::to_string(redis.port()));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("cluster"), std::string::npos) << s.status().to_string();
}

// ---- AUTH -------------------------------------------------------------------------------------

TEST(RedisAuth, PasswordFromTheUriOrTheOptions) {
  test::RedisProcess redis({"--requirepass", "s3cret"});
  StoreOptions good;
  good.password = "s3cret";
  ASSERT_TRUE(redis.wait_ready(good));
  const std::string hostport = "127.0.0.1:" + std::to_string(redis.port());
  auto s = open_store("redis://:s3cret@" + hostport);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  ASSERT_TRUE((*s)->put("k", bytes_of("v")).ok());
  s = open_store("redis://" + hostport, good);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(*(*s)->get("k"), bytes_of("v"));

  auto wrong = open_store("redis://:nope@" + hostport);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument) << wrong.status().to_string();
  auto none = open_store("redis://" + hostport);
  ASSERT_FALSE(none.ok());  // NOAUTH: never a store that fails later
  // An ACL user.
  redis::Connection conn({"127.0.0.1", redis.port()}, good, "", "s3cret", 0);
  ASSERT_TRUE(conn.exchange({{"ACL", "SETUSER", "fleet", "on", ">pw2", "~kvc:*", "+@all"}}).ok());
  auto user = open_store("redis://fleet:pw2@" + hostport);
  ASSERT_TRUE(user.ok()) << user.status().to_string();
  EXPECT_TRUE((*user)->put("kvc:{u}:manifest", bytes_of("x")).ok());
  EXPECT_FALSE((*user)->put("other", bytes_of("x")).ok());  // outside the user's key pattern
}

// ---- eviction ---------------------------------------------------------------------------------

// A redis-server with maxmemory and allkeys-lru holds far less than what is put into it: chunks
// (and manifests) are evicted. Every fetch through a server is then complete and exact for what
// it delivered (evicted chunks become another level or text), or a reported error for a context
// whose manifest went; never a hole.
TEST(Eviction, EvictedChunksBecomeFallbacksNeverHoles) {
  test::RedisProcess redis({"--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"});
  ASSERT_TRUE(redis.wait_ready());
  auto opened = open_store(redis.url());
  ASSERT_TRUE(opened.ok());
  std::shared_ptr<Store> store(std::move(*opened));
  const KVShape shape{2, 256, 2, 64};
  constexpr uint32_t kChunkTokens = 32;
  std::vector<KVCache> originals;
  PutOptions po;
  po.levels = {1, 5};
  po.chunk_tokens = kChunkTokens;
  po.measure = false;
  for (uint32_t t = 0; t < shape.tokens; ++t) po.text_tokens.push_back(int32_t(t));
  constexpr int kContexts = 12;  // about 0.4 MB each at two levels: 4.8 MB into 3 MB
  for (int i = 0; i < kContexts; ++i) {
    originals.push_back(make_kv(shape, DType::kF16, 100 + i));
    Status st = put_context(*store, "ev" + std::to_string(i), originals.back().view(), po).status();
    ASSERT_TRUE(st.ok() || st.code() == StatusCode::kIoError) << st.to_string();  // OOM is allowed
  }
  auto server = Server::start(store, ServerOptions{});
  ASSERT_TRUE(server.ok());
  int complete = 0, fell_back = 0, absent = 0;
  for (int i = 0; i < kContexts; ++i) {
    const std::string id = "ev" + std::to_string(i);
    FetchOptions fo;
    fo.port = (*server)->port();
    fo.id = id;
    fo.controller.policy = Policy::kFixed;
    fo.controller.plan = {1};  // level 5; an evicted chunk falls back to level 1, then text
    fo.controller.slo_s = 10;
    fo.controller.cost.prefill_tokens_per_s = 1e6;
    const KVCache& orig = originals[size_t(i)];
    fo.recompute = test::copy_recompute(orig);
    KVCache out;
    FetchReport r;
    Status st = fetch_context(fo, &out, &r);
    if (!st.ok()) {
      EXPECT_EQ(st.code(), StatusCode::kNotFound) << st.to_string();  // the manifest was evicted
      EXPECT_FALSE(r.complete);
      ++absent;
      continue;
    }
    ASSERT_TRUE(r.complete);
    ++complete;
    if (!r.failures.empty()) ++fell_back;
    ASSERT_EQ(r.chunks.size(), shape.tokens / kChunkTokens);
    test::expect_chunks_exact(orig, kChunkTokens, out, r);
  }
  std::printf("eviction: %d contexts complete (%d with fallbacks), %d evicted whole\n", complete, fell_back, absent);
  EXPECT_GT(fell_back + absent, 0) << "nothing was evicted: the test did not test eviction";
  EXPECT_GT(complete, 0);
}

}  // namespace
}  // namespace kvcodec
