// The layouts inference engines use (tensor.hpp): separate K and V pools, FlashInfer, vLLM's
// slot mapping, MLA latent caches. Each is checked against its definition written out here as
// index arithmetic (not through KVView::element): encoding from it gives the contiguous path's
// frame, decoding into it puts every element where the engine expects it, and bad geometry is
// rejected.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "kvcodec/codec.hpp"
#include "kvcodec/synthetic.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {
namespace {

constexpr DType kDt = DType::kBF16;
constexpr size_t kEs = 2;

// Where element (l, kv, t, h, d) lives: buffer index and element offset in it.
using Locate = std::function<std::pair<size_t, size_t>(uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d)>;

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; i += 2) {  // finite bf16 values of moderate range
    const uint16_t v = uint16_t(0x3C00 + rng() % 0x0700) | uint16_t(rng() % 2 ? 0x8000 : 0);
    std::memcpy(&out[i], &v, 2);
  }
  return out;
}

// Buffers of a layout, filled from / compared with a contiguous [L, 2, T, H, D] tensor.
struct Buffers {
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<void*> ptrs;
  Buffers(size_t count, size_t bytes) : bufs(count, std::vector<uint8_t>(bytes, 0)) {
    for (auto& b : bufs) ptrs.push_back(b.data());
  }
  void for_each(const KVShape& s, const std::function<void(size_t, uint8_t*)>& f, const Locate& at) {
    size_t i = 0;
    for (uint32_t l = 0; l < s.layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv)
        for (uint32_t t = 0; t < s.tokens; ++t)
          for (uint32_t h = 0; h < s.kv_heads; ++h)
            for (uint32_t d = 0; d < s.head_dim; ++d, ++i) {
              const auto [b, off] = at(l, kv, t, h, d);
              f(i, &bufs[b][off * kEs]);
            }
  }
  void fill(const KVShape& s, const std::vector<uint8_t>& ref, const Locate& at) {
    for_each(s, [&](size_t i, uint8_t* p) { std::memcpy(p, &ref[i * kEs], kEs); }, at);
  }
  bool equals(const KVShape& s, const std::vector<uint8_t>& ref, const Locate& at) {
    bool same = true;
    for_each(s, [&](size_t i, uint8_t* p) { same &= std::memcmp(p, &ref[i * kEs], kEs) == 0; }, at);
    return same;
  }
};

std::vector<uint8_t> encode(const KVView& v, int level) {
  EncodeOptions o;
  o.level = level;
  o.chunk_tokens = 32;
  std::vector<uint8_t> out(max_encoded_size(v.shape, v.dtype, o));
  auto n = encode_into(v, o, out);
  EXPECT_TRUE(n.ok()) << n.status().to_string();
  out.resize(n.ok() ? *n : 0);
  return out;
}

// The layout round trip: encoding from `view` (over `b`, filled per `at`) gives the contiguous
// frame, and decoding the frame into zeroed buffers restores every element at its place.
void check_layout(const KVShape& s, Buffers& b, const KVView& view, const Locate& at) {
  ASSERT_TRUE(validate_view(view).ok()) << validate_view(view).to_string();
  std::vector<uint8_t> ref = random_bytes(s.elements() * kEs, 11);
  for (int level : {0, 5}) {
    SCOPED_TRACE(level);
    const auto frame = encode(contiguous_view(ref.data(), kDt, s), level);
    std::vector<uint8_t> want(ref.size());
    ASSERT_TRUE(decode_into(frame, contiguous_view(want.data(), kDt, s)).ok());
    b.fill(s, ref, at);
    EXPECT_EQ(encode(view, level), frame);
    for (auto& buf : b.bufs) std::fill(buf.begin(), buf.end(), 0);
    ASSERT_TRUE(decode_into(frame, view).ok());
    EXPECT_TRUE(b.equals(s, want, at));
  }
}

constexpr KVShape kShape{3, 45, 2, 8};
constexpr uint32_t kBS = 16, kNB = 6;
const std::vector<int32_t> kTable = {4, 0, 5};  // ceil(45 / 16) = 3 blocks, scattered

TEST(Layouts, SeparateKAndVPools) {
  const KVShape s = kShape;
  const size_t H = s.kv_heads, D = s.head_dim;
  for (PagedOrder order : {PagedOrder::kNHD, PagedOrder::kHND}) {
    SCOPED_TRACE(int(order));
    Buffers b(2 * s.layers, kNB * kBS * H * D * kEs);
    std::vector<void*> k, v;
    for (uint32_t l = 0; l < s.layers; ++l) {
      k.push_back(b.ptrs[2 * l]);
      v.push_back(b.ptrs[2 * l + 1]);
    }
    const Locate at = [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d) {
      const size_t blk = size_t(kTable[t / kBS]), slot = t % kBS;
      const size_t off = order == PagedOrder::kNHD ? ((blk * kBS + slot) * H + h) * D + d
                                                   : ((blk * H + h) * kBS + slot) * D + d;
      return std::pair<size_t, size_t>(2 * l + kv, off);
    };
    check_layout(s, b, paged_kv_split_view(k.data(), v.data(), kDt, s, kTable.data(), kNB, kBS, order), at);
  }
}

TEST(Layouts, FlashInfer) {
  const KVShape s = kShape;
  const size_t H = s.kv_heads, D = s.head_dim;
  for (PagedOrder order : {PagedOrder::kNHD, PagedOrder::kHND}) {
    SCOPED_TRACE(int(order));
    Buffers b(s.layers, kNB * 2 * kBS * H * D * kEs);
    const Locate at = [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d) {
      const size_t blk = size_t(kTable[t / kBS]), slot = t % kBS;
      const size_t page = (blk * 2 + kv) * kBS * H * D;  // [num_blocks, 2, ...]
      const size_t off = order == PagedOrder::kNHD ? page + (slot * H + h) * D + d : page + (h * kBS + slot) * D + d;
      return std::pair<size_t, size_t>(l, off);
    };
    check_layout(s, b, flashinfer_paged_view(b.ptrs.data(), kDt, s, kTable.data(), kNB, kBS, order), at);
  }
}

// Slot mapping: token t at slot slots[t] of the pool (any permutation, not block-aligned).
std::vector<int64_t> scattered_slots(uint32_t tokens, uint32_t capacity) {
  std::vector<int64_t> slots(capacity);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), std::mt19937(3));
  slots.resize(tokens);
  return slots;
}

TEST(Layouts, VllmSlotMapping) {
  const KVShape s = kShape;
  const size_t H = s.kv_heads, D = s.head_dim;
  const std::vector<int64_t> slots = scattered_slots(s.tokens, kNB * kBS);
  Buffers b(s.layers, 2 * kNB * kBS * H * D * kEs);
  const Locate at = [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d) {
    return std::pair<size_t, size_t>(l, ((kv * kNB * kBS + size_t(slots[t])) * H + h) * D + d);
  };
  const KVView paged = vllm_paged_view(b.ptrs.data(), kDt, s, kTable.data(), kNB, kBS);
  check_layout(s, b, with_slot_mapping(paged, slots.data()), at);

  // SGLang's token pools: separate K and V, one token per "block", indexed by slot.
  Buffers pools(2 * s.layers, kNB * kBS * H * D * kEs);
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < s.layers; ++l) {
    k.push_back(pools.ptrs[2 * l]);
    v.push_back(pools.ptrs[2 * l + 1]);
  }
  const Locate pool_at = [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d) {
    return std::pair<size_t, size_t>(2 * l + kv, (size_t(slots[t]) * H + h) * D + d);
  };
  const KVView sglang = paged_kv_split_view(k.data(), v.data(), kDt, s, kTable.data(), kNB * kBS, 1);
  check_layout(s, pools, with_slot_mapping(sglang, slots.data()), pool_at);
}

TEST(Layouts, MlaLatentCache) {
  constexpr uint32_t kLatent = 576;
  auto s = mla_shape(2, 45, kLatent);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(*s, (KVShape{2, 45, 1, 288}));
  // [layers, tokens, 576]: "K" is the first half of a latent row, "V" the second.
  Buffers b(1, size_t(2) * 45 * kLatent * kEs);
  const Locate at = [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t, uint32_t d) {
    return std::pair<size_t, size_t>(0, (size_t(l) * 45 + t) * kLatent + kv * 288 + d);
  };
  check_layout(*s, b, mla_view(b.ptrs[0], kDt, *s), at);

  // vLLM's paged MLA cache: per layer (num_blocks, block_size, 576).
  Buffers paged(2, kNB * kBS * kLatent * kEs);
  const Locate paged_at = [&](uint32_t l, uint32_t kv, uint32_t t, uint32_t, uint32_t d) {
    return std::pair<size_t, size_t>(l, (size_t(kTable[t / kBS]) * kBS + t % kBS) * kLatent + kv * 288 + d);
  };
  check_layout(*s, paged, mla_paged_view(paged.ptrs.data(), kDt, *s, kTable.data(), kNB, kBS), paged_at);

  EXPECT_EQ(mla_shape(2, 45, 575).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(mla_shape(2, 45, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(mla_shape(2, 0, 576).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(mla_shape(2, 45, 200000).status().code(), StatusCode::kResourceExhausted);
}

TEST(Layouts, SyntheticMlaCacheRoundTrips) {
  auto kv = make_synthetic("deepseek-v3-mla", 40, DType::kBF16, 3);
  ASSERT_TRUE(kv.ok()) << kv.status().to_string();
  const auto frame = encode(kv->view(), 0);
  std::vector<uint8_t> back(kv->data.size());
  ASSERT_TRUE(decode_into(frame, contiguous_view(back.data(), DType::kBF16, kv->shape)).ok());
  EXPECT_EQ(back, kv->data);
  EXPECT_LT(frame.size(), kv->data.size());
}

TEST(Layouts, BadGeometryIsRejected) {
  const KVShape s = kShape;
  Buffers b(2 * s.layers, kNB * kBS * s.channels() * kEs);
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < s.layers; ++l) {
    k.push_back(b.ptrs[2 * l]);
    v.push_back(b.ptrs[2 * l + 1]);
  }
  auto code = [](const KVView& view) { return validate_view(view).code(); };
  const KVView split = paged_kv_split_view(k.data(), v.data(), kDt, s, kTable.data(), kNB, kBS);
  ASSERT_EQ(code(split), StatusCode::kOk);
  v[1] = nullptr;
  EXPECT_EQ(code(split), StatusCode::kInvalidArgument);  // a null V pool
  v[1] = b.ptrs[3];
  KVView neither = split;
  neither.block_table = nullptr;
  EXPECT_EQ(code(neither), StatusCode::kInvalidArgument);
  std::vector<int64_t> slots = scattered_slots(s.tokens, kNB * kBS);
  KVView both = with_slot_mapping(split, slots.data());
  both.block_table = kTable.data();
  EXPECT_EQ(code(both), StatusCode::kInvalidArgument);
  const KVView mapped = with_slot_mapping(split, slots.data());
  ASSERT_EQ(code(mapped), StatusCode::kOk);
  slots[44] = kNB * kBS;  // one past the pool
  EXPECT_EQ(code(mapped), StatusCode::kInvalidArgument);
  slots[44] = -1;
  EXPECT_EQ(code(mapped), StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(validate_view(mapped).message()).find("slot mapping entry 44"), std::string::npos);
  // Too few blocks for the tokens behind a block table; a table entry beyond the pool.
  EXPECT_EQ(code(flashinfer_paged_view(k.data(), kDt, s, kTable.data(), 2, kBS)), StatusCode::kInvalidArgument);
  const std::vector<int32_t> beyond = {0, 1, int32_t(kNB)};
  EXPECT_EQ(code(flashinfer_paged_view(k.data(), kDt, s, beyond.data(), kNB, kBS)), StatusCode::kInvalidArgument);
  // Encoding from or decoding into a rejected view is the same error, nothing written.
  std::vector<uint8_t> out(max_encoded_size(s, kDt, {}));
  EXPECT_EQ(encode_into(mapped, {}, out).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvcodec
