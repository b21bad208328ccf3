// Small shared helpers for the subcommands: a strict option parser and uniform error output.
//
//   cli::Args a("encode", "kvcodec encode IN -o OUT.kvc [--level N] ...");
//   a.option("-o", "output frame").option("--level", "0..9").flag("--json", "...");
//   if (!a.parse(argc, argv)) return a.exit_code();   // printed usage or an error already
//   std::string out = a.get("-o");  int level = a.get_int("--level", 4);
//
// Unknown options, missing values and malformed numbers are reported as one line on stderr
// ("kvcodec encode: error: ...") and exit code 2.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kvcodec/status.hpp"

namespace kvcodec::cli {

class Args {
 public:
  Args(std::string command, std::string usage);
  // Declares an option taking a value (e.g. "-o", "--level").
  Args& option(const std::string& name, const std::string& help, const std::string& alias = "");
  // Declares a boolean flag.
  Args& flag(const std::string& name, const std::string& help);
  // Declares that `count` positional arguments are required (extra ones are an error).
  Args& positional(const std::string& name, const std::string& help);

  // Parses argv (argv[0] is the command name). False when the caller should exit with
  // exit_code(): --help was printed (0) or an error was reported (2).
  bool parse(int argc, char** argv);
  int exit_code() const { return exit_code_; }

  bool has(const std::string& name) const;
  std::string get(const std::string& name, const std::string& fallback = "") const;
  const std::vector<std::string>& positionals() const { return positional_values_; }
  // Numeric getters report a malformed value through fail() and return the fallback; check
  // failed() after reading all options.
  int64_t get_int(const std::string& name, int64_t fallback);
  double get_double(const std::string& name, double fallback);
  std::vector<double> get_double_list(const std::string& name);  // comma-separated
  std::vector<int64_t> get_int_list(const std::string& name);   // comma-separated
  bool failed() const { return failed_; }

  // Prints "kvcodec <command>: error: <msg>" to stderr; returns 2 (usage error).
  int fail(const std::string& message);
  // Prints "kvcodec <command>: error: <status>" to stderr; returns 1.
  int fail(const Status& status);
  const std::string& command() const { return command_; }

 private:
  struct Spec {
    std::string help;
    bool takes_value = true;
    std::string alias;
  };
  std::string command_, usage_;
  std::map<std::string, Spec> specs_;
  std::vector<std::pair<std::string, std::string>> positional_specs_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_values_;
  int exit_code_ = 0;
  bool failed_ = false;
};

// Prints "kvcodec <command>: error: <status>" to stderr and returns 1.
int report(const std::string& command, const Status& status);

}  // namespace kvcodec::cli
