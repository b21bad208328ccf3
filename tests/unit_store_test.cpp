// The encoder's per-task unit store (encode/unit_store.hpp): units keep their bytes until the
// frame has copied them, handing back the pages below unit k never touches unit k or later
// ones (units straddle pages), and a unit past the reservation is refused, not written.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "encode/unit_store.hpp"

namespace {

using kvcodec::detail::UnitStore;

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

}  // namespace
