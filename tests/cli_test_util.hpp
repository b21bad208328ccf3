// The fixture of the tests that run the built `kvcodec` program (KVCODEC_CLI_PATH): a scratch
// directory per test, running the program in the foreground (captured output and exit code) or
// in the background (`serve`), and small deterministic caches.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "kvcodec/io.hpp"

namespace kvcodec::test {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

inline std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline size_t count_lines(const std::string& s) { return size_t(std::count(s.begin(), s.end(), '\n')); }

class CliTest : public ::testing::Test {
 public:
  void SetUp() override {
    if (std::string(KVCODEC_CLI_PATH).empty()) GTEST_SKIP() << "the kvcodec program is not built";
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("kvcodec_cli_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Runs `kvcodec args...` (arguments are single-quoted for the shell) and captures its output.
  RunResult run(const std::vector<std::string>& args) const {
    std::string cmd = std::string("'") + KVCODEC_CLI_PATH + "'";
    for (const std::string& a : args) cmd += " '" + a + "'";
    cmd += " >'" + path("stdout") + "' 2>'" + path("stderr") + "'";
    const int status = std::system(cmd.c_str());
    RunResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = slurp(path("stdout"));
    r.err = slurp(path("stderr"));
    return r;
  }

  // A smooth, deterministic cache (like real K/V: per-channel offsets plus small variation).
  std::string make_cache(const std::string& name, DType dtype, KVShape shape) const {
    auto kv = KVCache::allocate(dtype, shape);
    EXPECT_TRUE(kv.ok());
    const KVView v = kv->view();
    for (uint32_t l = 0; l < shape.layers; ++l)
      for (uint32_t k = 0; k < 2; ++k)
        for (uint32_t t = 0; t < shape.tokens; ++t)
          for (uint32_t h = 0; h < shape.kv_heads; ++h)
            for (uint32_t d = 0; d < shape.head_dim; ++d) {
              const float x = 0.3f * float(d % 5) - 0.5f * float(k) + 0.2f * std::sin(0.37f * float(t * 7 + h * 3 + d + l));
              detail::store_from_f32(v.element(l, k, t, h, d), uint8_t(dtype), x);
            }
    EXPECT_TRUE(save_kv(path(name), *kv).ok());
    return path(name);
  }

  // Expects the error contract: non-zero exit, one line on stderr naming the command.
  static void expect_error(const RunResult& r, const std::string& command, int code = -1) {
    EXPECT_NE(r.exit_code, 0);
    if (code >= 0) EXPECT_EQ(r.exit_code, code);
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_EQ(r.err.rfind("kvcodec " + command + ": error: ", 0), 0u) << r.err;
  }

  // Starts `kvcodec args...` in the background with stdout and stderr to files; returns its pid.
  pid_t start(const std::vector<std::string>& args, const std::string& log) const {
    const pid_t pid = ::fork();
    if (pid == 0) {
      const std::string out = path(log + ".out"), err = path(log + ".err");
      if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(err.c_str(), "w", stderr)) std::_Exit(127);
      std::vector<char*> argv{const_cast<char*>(KVCODEC_CLI_PATH)};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(KVCODEC_CLI_PATH, argv.data());
      std::_Exit(127);
    }
    return pid;
  }

  // Waits up to `seconds` for `text` to appear in a background program's stdout; returns that
  // output ("" on timeout).
  std::string wait_for_output(const std::string& log, const std::string& text, double seconds = 30) const {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
      const std::string out = slurp(path(log + ".out"));
      if (out.find(text) != std::string::npos) return out;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "";
  }

  // Stops a background program with SIGTERM; its exit code.
  static int stop(pid_t pid) {
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  fs::path dir_;
};

}  // namespace kvcodec::test
