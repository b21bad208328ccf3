// The encoder's per-task unit store (encode/unit_store.hpp): units keep their bytes until the
// frame has copied them, handing back the pages below unit k never touches unit k or later
// ones (units straddle pages), and a unit past the reservation is refused, not written. The
// pool keeps stores between encodings only from the second on, and within its page budget.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "encode/unit_store.hpp"

namespace {

using kvcodec::detail::UnitStore;
using kvcodec::detail::UnitStorePool;

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + i * 7 + (i >> 9));
  return v;
}

void add(UnitStore& s, const std::vector<uint8_t>& u, bool stored) {
  uint8_t* p = s.extend(u.size());
  ASSERT_NE(p, nullptr);
  std::copy(u.begin(), u.end(), p);
  s.commit(u.size(), stored);
}

TEST(UnitStore, ReleasingCopiedUnitsKeepsTheRest) {
  // Sizes that are not page multiples: every unit boundary falls inside a page.
  const std::vector<std::vector<uint8_t>> units = {pattern(5001, 1), pattern(12289, 2), pattern(3, 3),
                                                   pattern(70000, 4), pattern(4093, 5)};
  size_t total = 0;
  for (const auto& u : units) total += u.size();
  UnitStore s;
  ASSERT_TRUE(s.reserve(total).ok());
  for (size_t k = 0; k < units.size(); ++k) add(s, units[k], k == 2);
  ASSERT_EQ(s.units(), units.size());
  EXPECT_TRUE(s.any_stored());
  EXPECT_TRUE(s.stored(2));
  EXPECT_FALSE(s.stored(3));
  EXPECT_EQ(s.extend(1), nullptr) << "the reservation is full";
  for (size_t k = 0; k < units.size(); ++k) {
    s.release_below(k);
    for (size_t j = k; j < units.size(); ++j) {
      ASSERT_EQ(s.size(j), units[j].size());
      ASSERT_EQ(std::vector<uint8_t>(s.data(j), s.data(j) + s.size(j)), units[j])
          << "unit " << j << " changed after releasing the units below " << k;
    }
  }
  s.release_below(units.size());  // all copied: nothing left to read
}

TEST(UnitStore, MovedStoreOwnsTheUnits) {
  UnitStore a;
  ASSERT_TRUE(a.reserve(100).ok());
  add(a, pattern(60, 9), false);
  UnitStore b = std::move(a);
  ASSERT_EQ(b.units(), 1u);
  EXPECT_EQ(std::vector<uint8_t>(b.data(0), b.data(0) + 60), pattern(60, 9));
  EXPECT_NE(b.extend(40), nullptr);
  EXPECT_EQ(b.extend(41), nullptr);
}

TEST(UnitStorePool, KeepsStoresWithinItsBudget) {
  UnitStorePool pool(size_t(1) << 20, 2);
  EXPECT_FALSE(pool.keep_pages()) << "a process's first encoding hands its pages back";
  pool.encoding_finished();
  EXPECT_TRUE(pool.keep_pages());

  UnitStore a;
  ASSERT_TRUE(pool.take(300000, a).ok());
  add(a, pattern(70000, 1), false);
  add(a, pattern(5000, 2), true);
  const uint8_t* base = a.data(0);
  pool.give(std::move(a));
  EXPECT_EQ(pool.kept_bytes(), 75000u);

  UnitStore b;  // a smaller request reuses the kept mapping, emptied
  ASSERT_TRUE(pool.take(200000, b).ok());
  EXPECT_EQ(pool.kept_bytes(), 0u);
  EXPECT_EQ(b.units(), 0u);
  EXPECT_EQ(b.extend(0), base);
  EXPECT_EQ(b.extend(300000), base) << "the whole reservation is still there";
  EXPECT_EQ(b.extend(300001), nullptr);
  add(b, pattern(3, 3), false);
  EXPECT_FALSE(b.any_stored());
  EXPECT_EQ(std::vector<uint8_t>(b.data(0), b.data(0) + 3), pattern(3, 3));

  UnitStore big;  // over the budget: not kept
  ASSERT_TRUE(pool.take(size_t(2) << 20, big).ok());
  add(big, pattern(size_t(1) << 20, 4), false);
  add(big, pattern(1, 5), false);
  pool.give(std::move(big));
  EXPECT_EQ(pool.kept_bytes(), 0u);

  pool.give(std::move(b));  // touched 75000 (the earlier units' bytes count until unmapped)
  EXPECT_EQ(pool.kept_bytes(), 75000u);
  UnitStore c;  // too large for the kept store: that one is unmapped, a new one reserved
  ASSERT_TRUE(pool.take(400000, c).ok());
  EXPECT_EQ(pool.kept_bytes(), 0u);
  EXPECT_NE(c.extend(400000), nullptr);
}

}  // namespace
