// Helpers shared by the tests: locating ../shared/data and deterministic random KV caches.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

namespace kvcodec::test {

// KVCODEC_DATA_DIR, or ../shared/data beside the source tree.
inline std::string data_dir() {
  if (const char* e = std::getenv("KVCODEC_DATA_DIR"); e && *e) return e;
  return KVCODEC_DATA_DIR_DEFAULT;
}

inline bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// Skips the current test with `why`, or fails it under CI=true, where nothing the suite needs
// may be missing (ctest reports a binary whose cases all skipped as Skipped: test_main.cpp).
#define KVCODEC_SKIP_OR_FAIL_IN_CI(why)                                                        \
  do {                                                                                         \
    if (::kvcodec::test::running_in_ci()) FAIL() << "required under CI=true: " << (why);      \
    GTEST_SKIP() << (why);                                                                     \
  } while (0)

// Path of a shared data file, e.g. data_path("models/stories260K.bin").
inline std::string data_path(const std::string& rel) { return data_dir() + "/" + rel; }

}  // namespace kvcodec::test

// Skips the test (fails it under CI=true) when a shared data file is missing.
#define KVCODEC_REQUIRE_DATA(rel)                                                              \
  do {                                                                                         \
    if (!std::filesystem::exists(::kvcodec::test::data_path(rel))) {                           \
      if (::kvcodec::test::running_in_ci())                                                    \
        FAIL() << "shared data file missing under CI=true: " << ::kvcodec::test::data_path(rel); \
      GTEST_SKIP() << "shared data not found: " << ::kvcodec::test::data_path(rel)             \
                   << " (set KVCODEC_DATA_DIR)";                                               \
    }                                                                                          \
  } while (0)
