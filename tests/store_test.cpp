// Manifests, keys, the three stores and put/get of multi-level contexts (src/stream/include/kvcodec/store.hpp).
#include "kvcodec/store.hpp"

#include <algorithm>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "kvcodec/codec.hpp"
#include "stream_test_util.hpp"

namespace kvcodec {
namespace {

using test::make_kv;

std::vector<uint8_t> bytes_of(std::string_view s) { return {s.begin(), s.end()}; }

Manifest sample_manifest() {
  Manifest m;
  m.dtype = DType::kBF16;
  m.shape = {3, 700, 2, 16};
  m.chunk_tokens = 256;
  for (int level : {0, 3, 7}) {
    ManifestLevel l;
    l.level = level;
    l.head_bytes = 1000 + level;
    l.head_checksum = 0x1234567890abcdefull ^ uint64_t(level);
    l.rel_error = 0.01 * level;
    l.decode_gbps = 1.5;
    for (uint32_t c = 0; c < 3; ++c) l.chunks.push_back({5000u - level * 100 + c, 77u * c + level});
    if (level == 7) l.profile_digest = 0xfedcba9876543210ull;  // transform-coded (format version 4)
    m.levels.push_back(l);
  }
  for (uint32_t t = 0; t < 700; ++t) m.text_tokens.push_back(int32_t(t * 13 % 512));
  return m;
}

TEST(Manifest, RoundTrip) {
  const Manifest m = sample_manifest();
  auto bytes = serialize_manifest(m);
  auto back = parse_manifest(bytes);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->dtype, m.dtype);
  EXPECT_EQ(back->shape, m.shape);
  EXPECT_EQ(back->chunk_tokens, 256u);
  EXPECT_EQ(back->num_chunks(), 3u);
  EXPECT_EQ(back->chunk_token_count(2), 700u - 512u);
  EXPECT_EQ(back->text_tokens, m.text_tokens);
  ASSERT_EQ(back->levels.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back->levels[i].level, m.levels[i].level);
    EXPECT_EQ(back->levels[i].head_bytes, m.levels[i].head_bytes);
    EXPECT_EQ(back->levels[i].head_checksum, m.levels[i].head_checksum);
    EXPECT_EQ(back->levels[i].rel_error, m.levels[i].rel_error);
    EXPECT_EQ(back->levels[i].decode_gbps, m.levels[i].decode_gbps);
    EXPECT_EQ(back->levels[i].profile_digest, m.levels[i].profile_digest);
    for (size_t c = 0; c < 3; ++c) {
      EXPECT_EQ(back->levels[i].chunks[c].size, m.levels[i].chunks[c].size);
      EXPECT_EQ(back->levels[i].chunks[c].checksum, m.levels[i].chunks[c].checksum);
    }
  }
  EXPECT_NE(back->find_level(3), nullptr);
  EXPECT_EQ(back->find_level(4), nullptr);
  EXPECT_TRUE(back->profiles_known);
  EXPECT_EQ(bytes[4], kManifestVersion);
  EXPECT_EQ(serialize_manifest(*back), bytes);
}

TEST(Manifest, Version1IsStillReadAndWrittenBackAsItWas) {
  const Manifest m = sample_manifest();
  const std::vector<uint8_t> v1 = test::manifest_as_version1(serialize_manifest(m), 3, 3);
  auto back = parse_manifest(v1);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_FALSE(back->profiles_known);  // a version 1 manifest does not say which levels need a profile
  ASSERT_EQ(back->levels.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back->levels[i].level, m.levels[i].level);
    EXPECT_EQ(back->levels[i].head_checksum, m.levels[i].head_checksum);
    EXPECT_EQ(back->levels[i].decode_gbps, m.levels[i].decode_gbps);
    EXPECT_FALSE(back->levels[i].profile_digest.has_value());
    EXPECT_EQ(back->levels[i].chunks[2].checksum, m.levels[i].chunks[2].checksum);
  }
  EXPECT_EQ(back->text_tokens, m.text_tokens);
  EXPECT_EQ(serialize_manifest(*back), v1);
  // Without the digest a level's profile is not checked up front (its head says, when it comes).
  EXPECT_TRUE(check_level_profile(*back, back->levels[2], nullptr).ok());
}

TEST(Manifest, LevelProfileDigestIsCheckedUpFront) {
  const Manifest m = sample_manifest();
  const ManifestLevel& plain = m.levels[1];
  const ManifestLevel& coded = m.levels[2];
  EXPECT_TRUE(check_level_profile(m, plain, nullptr).ok());
  const Status missing = check_level_profile(m, coded, nullptr);
  EXPECT_EQ(missing.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.to_string().find("fedcba9876543210"), std::string::npos) << missing.to_string();
  EXPECT_NE(missing.to_string().find("level 7"), std::string::npos) << missing.to_string();
  // Bad level records: flags other than bit 0, a digest without the flag, a transform-coded level 0.
  auto bytes = serialize_manifest(m);
  auto with = [&](size_t at, uint8_t v) {
    auto b = bytes;
    b[at] = v;
    const uint64_t sum = detail::xxh64(b.data(), b.size() - 8);
    for (int i = 0; i < 8; ++i) b[b.size() - 8 + i] = uint8_t(sum >> (8 * i));
    return parse_manifest(b).status().code();
  };
  const size_t level0 = 40, level1 = level0 + 48 + 3 * 12;
  EXPECT_EQ(with(level1 + 1, 2), StatusCode::kCorruptData);   // unknown flag
  EXPECT_EQ(with(level1 + 40, 1), StatusCode::kCorruptData);  // digest without the flag
  EXPECT_EQ(with(level0 + 1, 1), StatusCode::kCorruptData);   // level 0 transform-coded
  EXPECT_EQ(with(level1 + 2, 1), StatusCode::kCorruptData);   // reserved byte
}

TEST(Manifest, EveryBitFlipAndTruncationIsRejected) {
  auto bytes = serialize_manifest(sample_manifest());
  for (size_t i = 0; i < bytes.size(); i += 7) {
    auto bad = bytes;
    bad[i] ^= uint8_t(1u << (i % 8));
    EXPECT_FALSE(parse_manifest(bad).ok()) << "flip at byte " << i;
  }
  for (size_t n : {size_t(0), size_t(10), size_t(47), bytes.size() - 1}) {
    EXPECT_FALSE(parse_manifest(std::span(bytes).first(n)).ok()) << "truncated to " << n;
  }
}

TEST(Manifest, UnknownVersionIsReported) {
  auto bytes = serialize_manifest(sample_manifest());
  bytes[4] = 99;
  auto r = parse_manifest(bytes);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnsupportedVersion);
}

TEST(Keys, ShareOneHashTagPerContext) {
  EXPECT_EQ(manifest_key("ctx-1"), "kvc:{ctx-1}:manifest");
  EXPECT_EQ(head_key("ctx-1", 4), "kvc:{ctx-1}:L4:head");
  EXPECT_EQ(chunk_key("ctx-1", 4, 17), "kvc:{ctx-1}:L4:C17");
  EXPECT_TRUE(validate_context_id("a.b_C-9").ok());
  for (const char* bad : {"", "a b", "x{y}", "k:v", "a/b"}) EXPECT_FALSE(validate_context_id(bad).ok()) << bad;
}

TEST(OpenStore, RejectsUnknownAndMalformedUris) {
  for (const char* uri : {"", "s3://bucket", "file:", "redis://", "redis://host:0", "redis://h:99999",
                          "redis://h:1/x"}) {
    auto s = open_store(uri);
    EXPECT_FALSE(s.ok()) << uri;
  }
}

// ---- behaviour shared by every store -----------------------------------------------------------

void exercise_store(Store& s) {
  const std::string key = "kvc:{t}:L1:C0";
  ASSERT_TRUE(s.remove(key).ok());
  auto missing = s.get(key);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(*s.exists(key));

  ASSERT_TRUE(s.put(key, bytes_of("hello")).ok());
  EXPECT_TRUE(*s.exists(key));
  EXPECT_EQ(*s.get(key), bytes_of("hello"));
  ASSERT_TRUE(s.put(key, bytes_of("")).ok());  // empty values and overwrites are fine
  EXPECT_TRUE(s.get(key)->empty());

  std::vector<uint8_t> big(3u << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t(i * 2654435761u >> 24);
  ASSERT_TRUE(s.put(key, big).ok());
  EXPECT_EQ(*s.get(key), big);
  // get_append appends after what the buffer holds, and leaves it as it was when it fails.
  std::vector<uint8_t> buf = bytes_of("prefix");
  EXPECT_EQ(s.get_append(key, buf, big.size() - 1).code(), StatusCode::kCorruptData);  // longer than expected
  EXPECT_EQ(buf, bytes_of("prefix"));
  ASSERT_TRUE(s.get_append(key, buf, big.size()).ok());
  ASSERT_EQ(buf.size(), 6 + big.size());
  EXPECT_TRUE(std::equal(big.begin(), big.end(), buf.begin() + 6));
  EXPECT_EQ(std::vector<uint8_t>(buf.begin(), buf.begin() + 6), bytes_of("prefix"));
  EXPECT_EQ(s.get_append("kvc:{none}:absent", buf, UINT64_MAX).code(), StatusCode::kNotFound);
  EXPECT_EQ(buf.size(), 6 + big.size());
  ASSERT_TRUE(s.remove(key).ok());
  EXPECT_FALSE(*s.exists(key));
}

// put_context then every piece back, verified, and a whole-level decode from the pieces equal
// to decoding a frame encoded directly. Then a corrupted and a missing piece are reported.
void exercise_context(Store& s) {
  const KVShape shape{2, 300, 2, 8};
  KVCache kv = make_kv(shape, DType::kF16, 7);
  PutOptions po;
  po.levels = {6, 0, 3};  // stored sorted
  po.chunk_tokens = 128;
  for (uint32_t t = 0; t < shape.tokens; ++t) po.text_tokens.push_back(int32_t(t % 97));
  auto put = put_context(s, "ctx", kv.view(), po);
  ASSERT_TRUE(put.ok()) << put.status().to_string();
  auto m = get_manifest(s, "ctx");
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  ASSERT_EQ(m->levels.size(), 3u);
  EXPECT_EQ(m->levels[0].level, 0);
  EXPECT_EQ(m->levels[2].level, 6);
  EXPECT_EQ(m->num_chunks(), 3u);
  EXPECT_EQ(m->text_tokens, po.text_tokens);
  EXPECT_GT(m->levels[0].frame_bytes(), m->levels[2].frame_bytes());
  EXPECT_EQ(m->levels[0].rel_error, 0.0);
  EXPECT_GT(m->levels[1].rel_error, 0.0);
  EXPECT_GT(m->levels[2].rel_error, m->levels[1].rel_error);
  EXPECT_LT(m->levels[2].rel_error, 0.5);

  for (const auto& l : m->levels) {
    // Reassemble the frame from head + bodies: it must equal a direct encode byte for byte.
    auto head = get_head(s, "ctx", *m, l.level);
    ASSERT_TRUE(head.ok()) << head.status().to_string();
    std::vector<uint8_t> frame = *head;
    for (uint32_t c = 0; c < m->num_chunks(); ++c) {
      auto body = get_chunk(s, "ctx", *m, l.level, c);
      ASSERT_TRUE(body.ok()) << body.status().to_string();
      frame.insert(frame.end(), body->begin(), body->end());
    }
    EncodeOptions eo;
    eo.level = l.level;
    eo.chunk_tokens = 128;
    std::vector<uint8_t> direct(max_encoded_size(shape, DType::kF16, eo));
    auto n = encode_into(kv.view(), eo, direct);
    ASSERT_TRUE(n.ok());
    direct.resize(*n);
    EXPECT_EQ(frame, direct) << "level " << l.level;
  }

  // A value corrupted in the store is caught by the manifest's checksum...
  auto body = *s.get(chunk_key("ctx", 3, 1));
  body[body.size() / 2] ^= 0x10;
  ASSERT_TRUE(s.put(chunk_key("ctx", 3, 1), body).ok());
  auto corrupt = get_chunk(s, "ctx", *m, 3, 1);
  ASSERT_FALSE(corrupt.ok());
  EXPECT_EQ(corrupt.status().code(), StatusCode::kChecksumMismatch);
  std::vector<uint8_t> response = bytes_of("head");  // what a server appends to: kept on failure
  EXPECT_EQ(append_chunk(s, "ctx", *m, 3, 1, response).code(), StatusCode::kChecksumMismatch);
  EXPECT_EQ(response, bytes_of("head"));
  ASSERT_TRUE(append_chunk(s, "ctx", *m, 3, 0, response).ok());
  EXPECT_EQ(std::vector<uint8_t>(response.begin() + 4, response.end()), *get_chunk(s, "ctx", *m, 3, 0));
  // ...a truncated one by its size, a corrupt head likewise...
  body.pop_back();
  ASSERT_TRUE(s.put(chunk_key("ctx", 3, 1), body).ok());
  EXPECT_EQ(get_chunk(s, "ctx", *m, 3, 1).status().code(), StatusCode::kCorruptData);
  auto head = *s.get(head_key("ctx", 6));
  head[3] ^= 1;
  ASSERT_TRUE(s.put(head_key("ctx", 6), head).ok());
  EXPECT_EQ(get_head(s, "ctx", *m, 6).status().code(), StatusCode::kChecksumMismatch);
  // ...and a missing one is NotFound, not an empty value.
  ASSERT_TRUE(s.remove(chunk_key("ctx", 0, 2)).ok());
  EXPECT_EQ(get_chunk(s, "ctx", *m, 0, 2).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(get_chunk(s, "ctx", *m, 5, 0).status().code(), StatusCode::kNotFound);  // not stored

  ASSERT_TRUE(remove_context(s, "ctx").ok());
  EXPECT_EQ(get_manifest(s, "ctx").status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(*s.exists(chunk_key("ctx", 6, 0)));
}

TEST(PutContext, RejectsBadOptions) {
  auto s = open_store("mem:");
  ASSERT_TRUE(s.ok());
  KVCache kv = make_kv({1, 10, 1, 4}, DType::kF32, 1);
  PutOptions po;
  po.levels = {};
  EXPECT_EQ(put_context(**s, "x", kv.view(), po).status().code(), StatusCode::kInvalidArgument);
  po.levels = {10};
  EXPECT_EQ(put_context(**s, "x", kv.view(), po).status().code(), StatusCode::kInvalidArgument);
  po.levels = {1};
  po.text_tokens = {1, 2, 3};  // not one per token
  EXPECT_EQ(put_context(**s, "x", kv.view(), po).status().code(), StatusCode::kInvalidArgument);
  po.text_tokens.clear();
  EXPECT_EQ(put_context(**s, "bad id", kv.view(), po).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(*(*s)->exists(manifest_key("x")));  // nothing half-written is visible
}

TEST(MemStore, Basics) {
  auto s = open_store("mem:");
  ASSERT_TRUE(s.ok());
  exercise_store(**s);
  exercise_context(**s);
}

class FileStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The store's directory sits in a private parent, so an escape to ../x is seen there (and a
    // /tmp/x of someone else's cannot fail the test).
    parent_ = std::filesystem::temp_directory_path() /
              ("kvcodec-store-test-" + std::to_string(::getpid()));
    std::filesystem::remove_all(parent_);
    dir_ = parent_ / "store";
  }
  void TearDown() override { std::filesystem::remove_all(parent_); }
  std::filesystem::path parent_, dir_;
};

TEST_F(FileStoreTest, BasicsAndNoTemporaryFilesLeft) {
  auto s = open_store("file:" + dir_.string());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  exercise_store(**s);
  exercise_context(**s);
  for (const auto& e : std::filesystem::directory_iterator(dir_))
    EXPECT_NE(e.path().filename().string().rfind(".tmp.", 0), 0u) << e.path();
}

TEST_F(FileStoreTest, AValueLargerThanMemoryIsAnErrorNotACrash) {
  auto s = open_store("file:" + dir_.string());
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->put("kvc:{big}:L1:C0", bytes_of("v")).ok());
  // A sparse file of 8 TiB planted in the store's directory (no disk space is used).
  std::filesystem::path file;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) file = e.path();
  std::filesystem::resize_file(file, uint64_t(1) << 43);
  // With a size to expect (as a server reads a chunk), it is refused before anything is allocated.
  std::vector<uint8_t> buf;
  EXPECT_EQ((*s)->get_append("kvc:{big}:L1:C0", buf, 100).code(), StatusCode::kCorruptData);
  EXPECT_TRUE(buf.empty());
  // Without, it is refused as larger than the machine's memory, before any allocation.
  EXPECT_EQ((*s)->get("kvc:{big}:L1:C0").status().code(), StatusCode::kResourceExhausted);
}

TEST_F(FileStoreTest, KeysBecomeSafeFileNames) {
  auto s = open_store("file:" + dir_.string());
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->put("kvc:{../x}:L1:C0", bytes_of("v")).ok());
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    ++files;
    EXPECT_EQ(e.path().parent_path(), dir_);
    EXPECT_EQ(e.path().filename().string().find('/'), std::string::npos);
  }
  EXPECT_EQ(files, 1u);
  EXPECT_FALSE(std::filesystem::exists(dir_.parent_path() / "x"));
}

// ---- Redis ---------------------------------------------------------------------------------------

TEST(RedisStore, Basics) {
  KVCODEC_REQUIRE_REDIS(url);
  auto s = open_store(url);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  exercise_store(**s);
  exercise_context(**s);
}

TEST(RedisStore, ClosedPortIsUnavailableQuickly) {
  StoreOptions o;
  o.connect_timeout_ms = 500;
  const auto t0 = std::chrono::steady_clock::now();
  auto s = open_store("redis://127.0.0.1:" + std::to_string(test::free_port()), o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable) << s.status().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));  // bounded, not a timing assert on speed
}

// A redis-server this test starts: frozen (SIGSTOP) it times out, killed it is unavailable,
// restarted on the same port the store reconnects. Every call returns within its timeouts.
TEST(RedisStore, OutageTimeoutAndRecovery) {
  test::RedisProcess redis;
  ASSERT_TRUE(redis.wait_ready()) << "redis-server did not start";
  StoreOptions o;
  o.connect_timeout_ms = 300;
  o.command_timeout_ms = 300;
  auto s = open_store(redis.url(), o);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  ASSERT_TRUE((*s)->put("k", bytes_of("v1")).ok());

  redis.pause();
  auto slow = (*s)->get("k");
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.status().code(), StatusCode::kTimeout) << slow.status().to_string();
  redis.resume();
  // The timed-out connection was dropped; the next call reconnects.
  auto again = (*s)->get("k");
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(*again, bytes_of("v1"));

  redis.kill();
  auto down = (*s)->get("k");
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.status().code(), StatusCode::kUnavailable) << down.status().to_string();
  Status put = (*s)->put("k", bytes_of("v2"));
  EXPECT_FALSE(put.ok());  // a put to a dead server is never reported as done
}

}  // namespace
}  // namespace kvcodec
