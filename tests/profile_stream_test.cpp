// Contexts put with a transform-coding profile (PutOptions::profile) and fetched over loopback
// TCP with it (FetchOptions::profile): the same tensor as the local decode of each level. The
// manifest names each level's profile: with a missing or wrong profile the client plans with the
// levels it can decode, and ends the fetch before requesting anything, with kInvalidArgument
// naming the digest it needs, when there are none; a version 1 manifest (no digests) ends it at
// the first head. The controller's decode seed of a transform-coded level is calibrated with the
// profile.
#include <gtest/gtest.h>

#include <cmath>
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
#include "stream_test_util.hpp"

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
    for (const ManifestLevel& l : m->levels) {
      EXPECT_GT(l.rel_error, l.level == 0 ? -1.0 : 0.0);
      EXPECT_GT(l.decode_gbps, 0.0);
      // The manifest names the profile of every transform-coded level (all but level 0).
      EXPECT_EQ(l.profile_digest, l.level == 0 ? std::nullopt : std::optional<uint64_t>(profile_->digest));
    }
    po.levels = {3, 6};  // only levels that need the profile
    ASSERT_TRUE(put_context(*store_, "lossy", view(kv_), po).ok());
  }
  std::string need() const {
    char b[17];
    std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(profile_->digest));
    return b;
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

  Status fetch(std::shared_ptr<const Profile> profile, int option, KVCache* out, FetchReport* report,
               const std::string& id = "ctx", bool calibrate = false) {
    ServerOptions so;
    auto server = Server::start(store_, so);
    EXPECT_TRUE(server.ok());
    FetchOptions fo;
    fo.port = (*server)->port();
    fo.id = id;
    fo.controller.slo_s = 10;
    fo.controller.policy = Policy::kFixed;
    fo.controller.plan = {option};
    fo.calibrate_decoder = calibrate;
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

TEST_F(ProfileStreamTest, MissingOrWrongProfileEndsTheFetchUpFrontNamingTheDigest) {
  const auto other = std::make_shared<const Profile>(test::make_test_profile(shape_, true, 33));
  auto manifest = get_manifest(*store_, "lossy");
  ASSERT_TRUE(manifest.ok());
  const size_t manifest_bytes = serialize_manifest(*manifest).size();
  for (const auto& p : {std::shared_ptr<const Profile>(), other}) {
    KVCache out;
    FetchReport report;
    Status s = fetch(p, 0, &out, &report, "lossy");
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.to_string().find(need()), std::string::npos) << s.to_string();
    EXPECT_FALSE(report.complete);
    ASSERT_FALSE(report.failures.empty());
    EXPECT_EQ(report.failures.back().action, "abort");
    // Up front: from the manifest, before any chunk (or head) was requested.
    EXPECT_EQ(report.failures.back().chunk, -1);
    EXPECT_TRUE(report.chunks.empty());
    EXPECT_LE(report.bytes, manifest_bytes + 64) << "more than the manifest was received";
  }
}

TEST_F(ProfileStreamTest, WithoutTheProfileOnlyTheLevelsThatNeedNoneArePlanned) {
  const auto other = std::make_shared<const Profile>(test::make_test_profile(shape_, true, 33));
  for (const auto& p : {std::shared_ptr<const Profile>(), other}) {
    KVCache out;
    FetchReport report;
    // Option 0 is level 0: the only level this client can decode, so the only option planned.
    Status s = fetch(p, 0, &out, &report);
    ASSERT_TRUE(s.ok()) << s.to_string() << " " << report.error;
    ASSERT_EQ(report.decode.size(), 1u);
    EXPECT_EQ(report.decode[0].level, 0);
    for (const ChunkReport& c : report.chunks) EXPECT_EQ(c.level, 0);
    ASSERT_EQ(out.data.size(), kv_.size() * 2);
    EXPECT_EQ(std::memcmp(out.data.data(), kv_.data(), out.data.size()), 0);
    // Each level skipped is reported, naming the digest it needs.
    size_t skipped = 0;
    for (const FetchFailure& f : report.failures)
      if (f.action == "skip") {
        ++skipped;
        EXPECT_NE(f.status.to_string().find(need()), std::string::npos) << f.status.to_string();
      }
    EXPECT_EQ(skipped, 2u);
  }
}

TEST_F(ProfileStreamTest, Version1ManifestEndsTheFetchAtTheHeadAndDecodesWithTheProfile) {
  // The context as an older library stored it: a version 1 manifest, without profile digests.
  auto manifest = get_manifest(*store_, "lossy");
  ASSERT_TRUE(manifest.ok());
  const std::vector<uint8_t> v1 =
      test::manifest_as_version1(serialize_manifest(*manifest), uint32_t(manifest->levels.size()), manifest->num_chunks());
  ASSERT_TRUE(store_->put(manifest_key("lossy"), v1).ok());
  ASSERT_FALSE(get_manifest(*store_, "lossy")->profiles_known);
  KVCache out;
  FetchReport report;
  Status s = fetch(nullptr, 0, &out, &report, "lossy");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.to_string().find(need()), std::string::npos) << s.to_string();
  ASSERT_FALSE(report.failures.empty());
  EXPECT_EQ(report.failures.back().action, "abort");
  EXPECT_GE(report.failures.back().chunk, 0);  // the head told, not the manifest
  // With the profile it decodes, and its lossy levels are calibrated with it.
  KVCache good;
  FetchReport ok_report;
  ASSERT_TRUE(fetch(profile_, 0, &good, &ok_report, "lossy", true).ok()) << ok_report.error;
  ASSERT_EQ(good.data.size(), kv_.size() * 2);
  const std::vector<uint16_t> ref = local_decode(3);
  EXPECT_EQ(std::memcmp(good.data.data(), ref.data(), good.data.size()), 0);
  auto seed = calibrate_decode_gbps(DType::kF16, shape_, 3, 1, profile_);
  ASSERT_TRUE(seed.ok());
  EXPECT_EQ(ok_report.decode[0].seed_gbps, *seed);
}

TEST_F(ProfileStreamTest, Version1ManifestOfAPlainContextIgnoresAProfileOfAnotherShape) {
  PutOptions po;
  po.levels = {0, 3};
  po.chunk_tokens = 64;
  auto m = put_context(*store_, "plain", view(kv_), po);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(store_->put(manifest_key("plain"), test::manifest_as_version1(serialize_manifest(*m), 2, m->num_chunks())).ok());
  const auto other = std::make_shared<const Profile>(test::make_test_profile(KVShape{1, 8, 2, 16}, true, 3));
  KVCache out;
  FetchReport report;
  EXPECT_TRUE(fetch(other, 1, &out, &report, "plain", true).ok()) << report.error;
  EXPECT_TRUE(report.complete);
}

// The decode seed the controller plans a level with: this machine's calibration with the
// level's profile for a transform-coded level, the plain one for level 0 (exact: memoized), and
// with calibration off the manifest's figure, which put_context measured on the stored chunk.
TEST_F(ProfileStreamTest, TransformCodedLevelsAreSeededWithTheirProfilesDecodeSpeed) {
  KVCache out;
  FetchReport report;
  ASSERT_TRUE(fetch(profile_, 1, &out, &report, "ctx", true).ok()) << report.error;
  ASSERT_EQ(report.decode.size(), levels_.size());
  for (size_t i = 0; i < levels_.size(); ++i) {
    const int level = levels_[i];
    auto with = calibrate_decode_gbps(DType::kF16, shape_, level, 1, profile_);
    auto plain = calibrate_decode_gbps(DType::kF16, shape_, level, 1);
    ASSERT_TRUE(with.ok() && plain.ok());
    EXPECT_EQ(report.decode[i].level, level);
    EXPECT_EQ(report.decode[i].seed_gbps, level == 0 ? *plain : *with) << "level " << level;
  }
  auto m = get_manifest(*store_, "ctx");
  ASSERT_TRUE(m.ok());
  FetchReport manifest_seeded;
  ASSERT_TRUE(fetch(profile_, 1, &out, &manifest_seeded).ok()) << manifest_seeded.error;
  for (size_t i = 0; i < levels_.size(); ++i) EXPECT_EQ(manifest_seeded.decode[i].seed_gbps, m->levels[i].decode_gbps);
  // A profile that does not fit the shape cannot calibrate.
  const auto small = std::make_shared<const Profile>(test::make_test_profile(KVShape{1, 8, 2, 16}, true, 3));
  EXPECT_EQ(calibrate_decode_gbps(DType::kF16, shape_, 3, 1, small).status().code(), StatusCode::kInvalidArgument);
}

// A transform-coded level's planned decode time (raw bytes / its seed) against the time its
// chunks took in a real fetch: the profile's calibration is the right seed (plain frames decode
// 2.6-5x faster). Like the stream timing tests, a shared machine may stall a run, so the check
// passes when one of three fetches agrees: the measured speed is nearer (in ratio) to the
// profile's seed than to the plain one's. Every run is printed (docs/results/streaming.md).
TEST(ProfileStreamTiming, PlannedDecodeTimeOfATransformCodedLevelMatchesTheMeasuredOne) {
  const KVShape shape{4, 1024, 2, 64};
  std::vector<uint16_t> kv = test::to_f16(test::make_cache(shape, 41));
  const auto profile = std::make_shared<const Profile>(test::make_test_profile(shape, true, 42));
  auto opened = open_store("mem:");
  ASSERT_TRUE(opened.ok());
  std::shared_ptr<Store> store(std::move(*opened));
  PutOptions po;
  po.levels = {4};
  po.chunk_tokens = 256;
  po.profile = profile;
  auto m = put_context(*store, "t", contiguous_view(kv.data(), DType::kF16, shape), po);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  auto plain = calibrate_decode_gbps(DType::kF16, shape, 4, 1);
  ASSERT_TRUE(plain.ok());
  bool agreed = false;
  for (int run = 0; run < 3 && !agreed; ++run) {
    auto server = Server::start(store, ServerOptions{});
    ASSERT_TRUE(server.ok());
    FetchOptions fo;
    fo.port = (*server)->port();
    fo.id = "t";
    fo.controller.slo_s = 10;
    fo.controller.policy = Policy::kFixed;
    fo.controller.plan = {0};
    fo.profile = profile;
    KVCache out;
    FetchReport report;
    ASSERT_TRUE(fetch_context(fo, &out, &report).ok()) << report.error;
    const DecodeSpeed& d = report.decode.at(0);
    ASSERT_GT(d.measured_gbps, 0.0);
    const double chunk_mb = double(m->raw_chunk_bytes(0)) / 1e6;
    std::printf("run %d: level 4 with the profile: planned %.2f ms per chunk (seed %.3f GB/s), measured %.2f ms "
                "(%.3f GB/s, %+.0f%%); plain seed %.3f GB/s (%.2f ms, manifest %.3f GB/s)\n",
                run + 1, chunk_mb / d.seed_gbps, d.seed_gbps, chunk_mb / d.measured_gbps, d.measured_gbps,
                100 * (d.seed_gbps / d.measured_gbps - 1), *plain, chunk_mb / *plain, m->levels[0].decode_gbps);
    agreed = std::abs(std::log(d.seed_gbps / d.measured_gbps)) < std::abs(std::log(*plain / d.measured_gbps));
  }
  EXPECT_TRUE(agreed) << "the plain calibration predicted the transform-coded level's decode better in all three runs";
}

}  // namespace
}  // namespace kvcodec
