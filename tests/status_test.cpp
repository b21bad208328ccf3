#include <gtest/gtest.h>

#include <string>

#include "kvcodec/config.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {
namespace {

TEST(Status, CodesArePinned) {
  // These values are part of the API (docs/format.md): never renumber.
  EXPECT_EQ(int(StatusCode::kOk), 0);
  EXPECT_EQ(int(StatusCode::kInvalidArgument), 1);
  EXPECT_EQ(int(StatusCode::kCorruptData), 2);
  EXPECT_EQ(int(StatusCode::kUnsupportedVersion), 3);
  EXPECT_EQ(int(StatusCode::kBufferTooSmall), 4);
  EXPECT_EQ(int(StatusCode::kChecksumMismatch), 5);
  EXPECT_EQ(int(StatusCode::kOutOfRange), 6);
  EXPECT_EQ(int(StatusCode::kUnavailable), 7);
  EXPECT_EQ(int(StatusCode::kIoError), 8);
  EXPECT_EQ(int(StatusCode::kNotFound), 9);
  EXPECT_EQ(int(StatusCode::kTimeout), 10);
  EXPECT_EQ(int(StatusCode::kResourceExhausted), 11);
  EXPECT_EQ(int(StatusCode::kInternal), 12);
}

TEST(Status, MessagesAndContext) {
  Status s = CorruptData("bad magic");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.to_string(), "corrupt_data: bad magic");
  EXPECT_EQ(s.with_context("chunk 3").to_string(), "corrupt_data: chunk 3: bad magic");
  EXPECT_EQ(Status().to_string(), "ok");
  // Long messages are truncated, not overflowed.
  Status l = InvalidArgument(std::string(1000, 'x'));
  EXPECT_EQ(std::string(l.message()).size(), Status::kMaxMessage);
}

TEST(StatusOr, ValueOrError) {
  StatusOr<std::string> v = std::string("hello");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, "hello");
  StatusOr<std::string> e = NotFound("nope");
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kNotFound);
  StatusOr<int> bad = Status();  // OK without a value is itself an error
  EXPECT_EQ(bad.status().code(), StatusCode::kInternal);
  auto f = [](bool ok) -> StatusOr<int> {
    if (!ok) return OutOfRange("x");
    return 7;
  };
  auto g = [&](bool ok) -> StatusOr<int> {
    KVCODEC_ASSIGN_OR_RETURN(int v, f(ok));
    return v + 1;
  };
  EXPECT_EQ(*g(true), 8);
  EXPECT_EQ(g(false).status().code(), StatusCode::kOutOfRange);
}

TEST(Tensor, ShapesAndViewsAreValidated) {
  EXPECT_TRUE(validate_shape({32, 8192, 8, 128}).ok());
  EXPECT_EQ(validate_shape({0, 1, 1, 1}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(validate_shape({kMaxLayers + 1, 1, 1, 1}).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(validate_shape({1, 1, 1024, 1024}).code(), StatusCode::kResourceExhausted);
  std::vector<uint16_t> mem(2 * 16 * 2 * 4);
  void* layer[1] = {mem.data()};
  int32_t table[2] = {0, 5};  // block 5 does not exist
  KVView p = vllm_paged_view(layer, DType::kF16, {1, 20, 2, 4}, table, 2, 16);
  EXPECT_EQ(validate_view(p).code(), StatusCode::kInvalidArgument);
  table[1] = 1;
  EXPECT_TRUE(validate_view(p).ok());
  KVView too_many = vllm_paged_view(layer, DType::kF16, {1, 40, 2, 4}, table, 2, 16);
  EXPECT_EQ(validate_view(too_many).code(), StatusCode::kInvalidArgument);
}

TEST(Tensor, DTypeNames) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    auto p = parse_dtype(dtype_name(t));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, t);
  }
  EXPECT_EQ(*parse_dtype("BF16"), DType::kBF16);
  EXPECT_FALSE(parse_dtype("int8").ok());
}

TEST(Config, OptionsAndLayerFactors) {
  EncodeOptions o;
  EXPECT_TRUE(validate_options(o).ok());
  o.table_groups = 17;
  EXPECT_FALSE(validate_options(o).ok());
  EXPECT_EQ(layer_factor(0, 32), kLayerFactor[0]);
  EXPECT_EQ(layer_factor(15, 32), kLayerFactor[1]);
  EXPECT_EQ(layer_factor(31, 32), kLayerFactor[2]);
  EXPECT_EQ(layer_factor(0, 1), kLayerFactor[0]);
  for (int l = 1; l < kMaxLevel; ++l) EXPECT_LT(kLevelStep[l], kLevelStep[l + 1]);
}

}  // namespace
}  // namespace kvcodec

// Issue 11 item 10: an exception in a worker of the one parallel loop comes back as a Status
// (bad_alloc -> resource_exhausted, anything else -> internal) instead of ending the process.
#include <atomic>
#include <stdexcept>

#include "common/parallel.hpp"

namespace kvcodec {
namespace {

TEST(ParallelFor, ExceptionsInWorkersBecomeStatuses) {
  std::atomic<int> visited{0};
  EXPECT_TRUE(detail::parallel_for(100, 4, [&](size_t) { ++visited; }).ok());
  EXPECT_EQ(visited.load(), 100);
  const Status oom = detail::parallel_for(100, 4, [](size_t i) {
    if (i == 37) throw std::bad_alloc();
  });
  EXPECT_EQ(oom.code(), StatusCode::kResourceExhausted);
  const Status other = detail::parallel_for(100, 4, [](size_t i) {
    if (i % 10 == 3) throw std::runtime_error("boom");
  });
  EXPECT_EQ(other.code(), StatusCode::kInternal);
  EXPECT_NE(std::string(other.message()).find("boom"), std::string::npos);
}

}  // namespace
}  // namespace kvcodec
