// Contexts put with a transform-coding profile (PutOptions::profile) and fetched over loopback
// TCP with it (FetchOptions::profile): the same tensor as the local decode of each level, and a
// missing or wrong profile ends the fetch with kInvalidArgument naming the digest it needs.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/codec.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/store.hpp"
#include "kvcodec/stream.hpp"
#include "profile_test_util.hpp"

namespace kvcodec {
namespace {

class ProfileStreamTest : public ::testing::Test {
 protected:
  const KVShape shape_{2, 200, 2, 16};
  const std::vector<int> levels_ = {0, 3, 6};
  std::vector<uint16_t> kv_;
  std::shared_ptr<const Profile> profile_;
  std::shared_ptr<Store> store_;

  void SetUp() override {
    kv_ = test::to_f16(test::make_cache(shape_, 31));
    profile_ = std::make_shared<const Profile>(test::make_test_profile(shape_, true, 32));
    auto s = open_store("mem:");
    ASSERT_TRUE(s.ok());
    store_ = std::shared_ptr<Store>(std::move(*s));
    PutOptions po;
    po.levels = levels_;
    po.chunk_tokens = 64;
    po.profile = profile_;
    po.first_position = 500;
    auto m = put_context(*store_, "ctx", view(kv_), po);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    for (const ManifestLevel& l : m->levels) EXPECT_GT(l.rel_error, l.level == 0 ? -1.0 : 0.0);
  }
  KVView view(std::vector<uint16_t>& x) const { return contiguous_view(x.data(), DType::kF16, shape_); }

  // The level's frame reassembled from the store, decoded locally with the profile.
  std::vector<uint16_t> local_decode(int level) {
    auto m = get_manifest(*store_, "ctx");
    EXPECT_TRUE(m.ok());
    auto frame = get_head(*store_, "ctx", *m, level);
    EXPECT_TRUE(frame.ok());
    EXPECT_EQ(read_frame_info(*frame)->transformed, level > 0);
    for (uint32_t c = 0; c < m->num_chunks(); ++c) {
      auto body = get_chunk(*store_, "ctx", *m, level, c);
      EXPECT_TRUE(body.ok());
      frame->insert(frame->end(), body->begin(), body->end());
    }
    std::vector<uint16_t> out(kv_.size());
    EXPECT_TRUE(decode_into(*frame, *profile_, view(out)).ok());
    return out;
  }

  Status fetch(std::shared_ptr<const Profile> profile, int option, KVCache* out, FetchReport* report) {
    ServerOptions so;
    auto server = Server::start(store_, so);
    EXPECT_TRUE(server.ok());
    FetchOptions fo;
    fo.port = (*server)->port();
    fo.id = "ctx";
    fo.controller.slo_s = 10;
    fo.controller.policy = Policy::kFixed;
    fo.controller.plan = {option};
    fo.calibrate_decoder = false;
    fo.profile = std::move(profile);
    return fetch_context(fo, out, report);
  }
};

TEST_F(ProfileStreamTest, FetchWithTheProfileEqualsTheLocalDecodeAtEveryLevel) {
  for (size_t option = 0; option < levels_.size(); ++option) {
    SCOPED_TRACE("level " + std::to_string(levels_[option]));
    KVCache out;
    FetchReport report;
    Status s = fetch(profile_, int(option), &out, &report);
    ASSERT_TRUE(s.ok()) << s.to_string() << " " << report.error;
    ASSERT_TRUE(report.complete);
    for (const ChunkReport& c : report.chunks) EXPECT_EQ(c.level, levels_[option]);
    const std::vector<uint16_t> ref = levels_[option] == 0 ? kv_ : local_decode(levels_[option]);
    ASSERT_EQ(out.data.size(), ref.size() * 2);
    EXPECT_EQ(std::memcmp(out.data.data(), ref.data(), out.data.size()), 0);
  }
}

TEST_F(ProfileStreamTest, MissingOrWrongProfileEndsTheFetchNamingTheDigest) {
  char need[17];
  std::snprintf(need, sizeof need, "%016llx", static_cast<unsigned long long>(profile_->digest));
  const auto other = std::make_shared<const Profile>(test::make_test_profile(shape_, true, 33));
  for (const auto& p : {std::shared_ptr<const Profile>(), other}) {
    KVCache out;
    FetchReport report;
    Status s = fetch(p, 1, &out, &report);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.to_string().find(need), std::string::npos) << s.to_string();
    EXPECT_FALSE(report.complete);
    ASSERT_FALSE(report.failures.empty());
    EXPECT_EQ(report.failures.back().action, "abort");
  }
  // Level 0 (lossless, untransformed) needs no profile.
  KVCache out;
  FetchReport report;
  EXPECT_TRUE(fetch(nullptr, 0, &out, &report).ok()) << report.error;
}

}  // namespace
}  // namespace kvcodec
