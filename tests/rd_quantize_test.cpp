// Rate-distortion optimised quantization of version 4 coefficients (src/encode/rd_quantize.hpp,
// EncodeOptions::rd_quantize): it never raises squared error + lambda * bits, keeps each block's
// error within the row bound, moves values only to the other neighbouring grid point, the frames
// decode to exactly the grid points chosen, it saves bytes, and frames without a profile ignore it.
// (Off by default: measured not to pay at equal next-token KL, docs/results/quality.md.)
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/frame.hpp"
#include "common/quant.hpp"
#include "encode/encode_model.hpp"
#include "encode/encode_values.hpp"
#include "encode/rd_quantize.hpp"
#include "kvcodec/codec.hpp"
#include "profile_test_util.hpp"

namespace kvcodec {
namespace {

using test::make_cache;
using test::to_f16;
using test::uniform;

// Two tables (groups), peaked at 0 and at 2, over the window [-20, 20]; codes as the encoder
// gives them (lossy_model_codes).
std::vector<uint32_t> test_codes() {
  detail::LayerModel m;
  m.groups = 2;
  for (int g = 0; g < 2; ++g) {
    std::vector<uint64_t> counts(42);  // 41 values + escape
    for (int v = -20; v <= 20; ++v) counts[size_t(v + 20)] = uint64_t(4000.0 * std::exp(-std::abs(v - 2 * g) / 1.5)) + 1;
    counts.back() = 3;
    detail::TableSpec t;
    t.qmin = -20;
    t.table = *FreqTable::from_counts(counts);
    m.tables.push_back(t);
  }
  std::vector<uint32_t> codes;
  detail::lossy_model_codes(m, codes);
  return codes;
}

double cost(const std::vector<float>& x, const std::vector<int16_t>& q, const detail::RdQuantizeInput& in, uint32_t c,
            uint32_t t) {
  const int16_t v = q[size_t(t) * in.channels + c];
  const size_t at = size_t(in.group[c]) * detail::kLossyBins + detail::lossy_bin(v);
  const double xh = double(detail::dequantize(v + in.center[c], in.step[c]));
  const double e = in.tables->escape[at] ? 0.0 : double(x[size_t(t) * in.channels + c]) - xh;
  return e * e + detail::kRdLambda * double(in.step[c]) * double(in.step[c]) * in.tables->bits[at];
}

TEST(RdQuantize, NeverRaisesTheCostAndKeepsTheBlockBound) {
  const uint32_t T = 200, C = 24, d = 8;
  std::vector<float> x(size_t(T) * C), step(C);
  std::vector<double> inv(C);
  std::vector<int32_t> center(C);
  std::vector<uint8_t> group(C);
  for (uint32_t c = 0; c < C; ++c) {
    step[c] = detail::step_from_code(-40 + int32_t(c % 5) * 3);
    inv[c] = 1.0 / double(step[c]);
    center[c] = int32_t(c % 3) - 1;
    group[c] = uint8_t(c % 2);
  }
  // Plain quantization: the nearest grid point (a few values far out: escaped by the table).
  std::vector<int16_t> q(x.size()), plain;
  for (uint32_t t = 0; t < T; ++t)
    for (uint32_t c = 0; c < C; ++c) {
      const size_t i = size_t(t) * C + c;
      const double spread = t % 37 == 0 ? 40.0 : 3.0;
      x[i] = float(step[c] * (center[c] + spread * uniform(i * 7 + 3)));
      q[i] = int16_t(std::nearbyint(double(x[i]) / double(step[c])) - center[c]);
    }
  plain = q;
  detail::RdTables tables;
  detail::rd_tables(test_codes(), tables);
  const std::vector<uint8_t>& esc = tables.escape;
  const detail::RdQuantizeInput in{x.data(), C, T, C, d, step.data(), inv.data(), center.data(), &tables, group.data()};
  const size_t moved = detail::rd_quantize(in, q.data(), C);
  EXPECT_GT(moved, size_t(T) * C / 50) << "the pass should move some values at this rate";
  size_t changed = 0;
  double before = 0, after = 0;
  for (uint32_t t = 0; t < T; ++t)
    for (uint32_t c0 = 0; c0 < C; c0 += d) {
      double e2 = 0, budget = 0;
      for (uint32_t c = c0; c < c0 + d; ++c) {
        const size_t i = size_t(t) * C + c;
        ASSERT_LE(std::abs(q[i] - plain[i]), 1) << "token " << t << " channel " << c;
        if (q[i] != plain[i]) {
          ++changed;
          // The other neighbour: on the far side of x from the plain choice.
          const double y = double(x[i]) / double(step[c]) - center[c];
          EXPECT_LT(std::abs(y - q[i]), 1.0);
          EXPECT_LE(cost(x, q, in, c, t), cost(x, plain, in, c, t)) << "token " << t << " channel " << c;
        }
        before += cost(x, plain, in, c, t);
        after += cost(x, q, in, c, t);
        const size_t at = size_t(group[c]) * detail::kLossyBins + detail::lossy_bin(q[i]);
        const double e = esc[at] ? 0.0 : double(x[i]) - double(detail::dequantize(q[i] + center[c], step[c]));
        e2 += e * e;
        budget += 0.25 * double(step[c]) * double(step[c]);
      }
      ASSERT_LE(e2, budget) << "token " << t << " block " << c0;
    }
  EXPECT_EQ(changed, moved);
  EXPECT_LT(after, before);
  // Deterministic: the same input gives the same choices.
  std::vector<int16_t> again = plain;
  detail::rd_quantize(in, again.data(), C);
  EXPECT_EQ(again, q);
}

// Version 4 coefficients' frames (f32, error blocks of a head): every decoded value is a grid
// point of its channel within one step of the input, each (token, head) block within the row
// bound, and the frame smaller than the plain quantizer's.
TEST(RdQuantize, CoefficientFramesDecodeToTheChosenGridPoints) {
  const KVShape s{2, 300, 2, 16};
  const std::vector<float> x = make_cache(s, 5);
  const KVView v = contiguous_view(const_cast<float*>(x.data()), DType::kF32, s);
  const uint32_t C = uint32_t(s.channels()), d = s.head_dim;
  for (int level : {3, 6, 8}) {
    EncodeOptions o;
    o.level = level;
    std::vector<uint8_t> plain(max_encoded_size(s, DType::kF32, o)), rd(plain.size());
    auto np = detail::encode_coefficients_rd(v, o, plain, 0);
    auto nr = detail::encode_coefficients_rd(v, o, rd, d);
    ASSERT_TRUE(np.ok() && nr.ok());
    plain.resize(*np);
    rd.resize(*nr);
    EXPECT_LT(rd.size(), plain.size()) << "level " << level;
    std::vector<uint8_t> direct(plain.size() + 64);
    auto nd = encode_into(v, o, direct);
    ASSERT_TRUE(nd.ok());
    direct.resize(*nd);
    EXPECT_EQ(direct, plain) << "encode_into is the plain quantizer";
    auto head = detail::parse_head(rd);
    ASSERT_TRUE(head.ok()) << head.status().to_string();
    std::vector<float> out(x.size());
    ASSERT_TRUE(decode_into(rd, contiguous_view(out.data(), DType::kF32, s)).ok());
    size_t moved = 0;
    for (uint32_t l = 0; l < s.layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const detail::LayerModel& m = head->layers[size_t(l) * 2 + kv];
        for (uint32_t t = 0; t < s.tokens; ++t)
          for (uint32_t c0 = 0; c0 < C; c0 += d) {
            double e2 = 0, budget = 0;
            for (uint32_t c = c0; c < c0 + d; ++c) {
              const size_t i = ((size_t(l) * 2 + kv) * s.tokens + t) * C + c;
              const float st = detail::step_from_code(m.step_code[c]);
              const double e = double(x[i]) - double(out[i]);
              e2 += e * e;
              budget += 0.25 * double(st) * double(st);
              if (out[i] == x[i]) continue;  // escaped (exact)
              const double n = std::nearbyint(double(out[i]) / double(st));
              ASSERT_EQ(out[i], detail::dequantize(int32_t(n), st)) << "not a grid point: level " << level;
              ASSERT_LT(std::abs(e), double(st)) << "level " << level;
              moved += std::abs(e) > 0.5 * double(st) ? 1 : 0;
            }
            ASSERT_LE(e2, budget * (1 + 1e-9)) << "level " << level << " token " << t;
          }
      }
    EXPECT_GT(moved, 0u) << "level " << level;
  }
}

// Frames without a profile never use it: the option changes no byte.
TEST(RdQuantize, PlainFramesIgnoreTheOption) {
  const KVShape s{2, 64, 2, 16};
  const std::vector<uint16_t> h = to_f16(make_cache(s, 9));
  const KVView v = contiguous_view(const_cast<uint16_t*>(h.data()), DType::kF16, s);
  for (int level : {0, 4, 8}) {
    EncodeOptions on, off;
    on.level = off.level = level;
    on.rd_quantize = true;
    std::vector<uint8_t> a(max_encoded_size(s, DType::kF16, on)), b(a.size());
    auto na = encode_into(v, on, a);
    auto nb = encode_into(v, off, b);
    ASSERT_TRUE(na.ok() && nb.ok());
    a.resize(*na);
    b.resize(*nb);
    EXPECT_EQ(a, b) << "level " << level;
  }
}

// With a profile: rd_quantize on gives smaller frames than off (the default) over the lossy
// levels (the row bound: CoefficientFramesDecodeToTheChosenGridPoints and profile_test's
// golden frames of the option).
TEST(RdQuantize, ProfileFramesShrink) {
  const KVShape s{2, 200, 2, 16};
  const Profile p = test::make_test_profile(s, true, 3);
  const std::vector<uint16_t> in = to_f16(make_cache(s, 4));
  size_t on_bytes = 0, off_bytes = 0;
  for (int level = 2; level <= kMaxLevel; ++level) {
    EncodeOptions on, off;
    on.level = off.level = level;
    on.rd_quantize = true;
    auto a = test::encode_with(in, s, on, p, 0);
    auto b = test::encode_with(in, s, off, p, 0);
    ASSERT_TRUE(a.ok() && b.ok());
    on_bytes += a->size();
    off_bytes += b->size();
  }
  EXPECT_LT(on_bytes, off_bytes);
}

}  // namespace
}  // namespace kvcodec
