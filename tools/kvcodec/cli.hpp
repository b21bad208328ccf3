// Command-line parsing shared by the subcommands: CLI11 with kvcodec's error contract.
//
// Each command keeps its settings in a typed struct, near the top of its file, and binds every
// field to an option once:
//
//   struct EncodeArgs { std::string in, output; int level = 4; bool json = false; };
//   EncodeArgs o;
//   Command cmd("encode", "kvcodec encode IN -o OUT.kvc [--level N] ...");
//   cmd.positional("IN", o.in, "KV cache");
//   cmd.option("-o,--output", o.output, "output frame")->required();
//   cmd.option("--level", o.level, "0 lossless, 1..9 lossy (default 4)", Range{0, kMaxLevel});
//   cmd.flag("--json", o.json, "print JSON");
//   if (auto exit = cmd.parse(argc, argv)) return *exit;   // --help printed, or a usage error
//
// Presence is a std::optional<T> field (or a flag), never a lookup by name. Numbers are decimal
// and must be whole ("12", "1.5e3"; not "12x", "0x10" or a value that overflows); lists are
// comma-separated; an option given twice keeps its last value; a value may start with '-'.
//
// Exit codes: --help / -h prints the options and exits 0. Unknown options, unexpected or
// missing arguments, missing values, malformed numbers and values out of range are usage
// errors: one line "kvcodec <command>: error: <what>" on stderr and exit code 2 (usage_error()
// for the checks a command makes after parsing). Runtime failures (a file that cannot be read,
// a corrupt frame, a store that is down) are one line and exit code 1 (fail(Status)).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>

#include "kvcodec/status.hpp"

namespace kvcodec::cli {

// Inclusive bounds of an integer option (of each item of a list).
struct Range {
  int64_t lo = std::numeric_limits<int64_t>::min();
  int64_t hi = std::numeric_limits<int64_t>::max();
};

namespace parse_detail {

// Strict conversions of one option value; throw CLI::ValidationError with the whole message
// ("--level expects an integer, got 'four'").
void convert(const std::string& name, const std::string& text, std::string& out);
void convert(const std::string& name, const std::string& text, int64_t& out);
void convert(const std::string& name, const std::string& text, double& out);
void convert(const std::string& name, const std::string& text, std::vector<int64_t>& out);
void convert(const std::string& name, const std::string& text, std::vector<double>& out);
void check_range(const std::string& name, int64_t value, const Range& range);

template <typename T>
void convert(const std::string& name, const std::string& text, T& out, const Range& range) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    int64_t v = 0;
    convert(name, text, v);
    check_range(name, v, range);
    if (std::is_unsigned_v<T> ? v < 0 || uint64_t(v) > uint64_t(std::numeric_limits<T>::max())
                              : v < int64_t(std::numeric_limits<T>::min()) || v > int64_t(std::numeric_limits<T>::max()))
      throw CLI::ValidationError(name + " is out of range, got '" + text + "'");
    out = T(v);
  } else if constexpr (std::is_same_v<T, std::vector<int>>) {
    std::vector<int64_t> items;
    convert(name, text, items, range);
    out.clear();
    for (int64_t v : items) {
      check_range(name, v, Range{std::numeric_limits<int>::min(), std::numeric_limits<int>::max()});
      out.push_back(int(v));
    }
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    convert(name, text, out);
    for (int64_t v : out) check_range(name, v, range);
  } else {
    convert(name, text, out);
  }
}

template <typename T>
void convert(const std::string& name, const std::string& text, std::optional<T>& out, const Range& range) {
  T v{};
  convert(name, text, v, range);
  out = std::move(v);
}

template <typename T> struct TypeName { static constexpr const char* value = "X"; };
template <> struct TypeName<std::string> { static constexpr const char* value = "TEXT"; };
template <> struct TypeName<double> { static constexpr const char* value = "NUM"; };
template <> struct TypeName<std::vector<double>> { static constexpr const char* value = "LIST"; };
template <> struct TypeName<std::vector<int>> { static constexpr const char* value = "LIST"; };
template <> struct TypeName<std::vector<int64_t>> { static constexpr const char* value = "LIST"; };
template <typename T> struct IsOptional : std::false_type {};
template <typename T> struct IsOptional<std::optional<T>> : std::true_type {};
template <typename T>
const char* type_name() {
  if constexpr (IsOptional<T>::value) return type_name<typename T::value_type>();
  else if constexpr (std::is_integral_v<T>) return "INT";
  else return TypeName<T>::value;
}

}  // namespace parse_detail

// One command's parser (see the top of this file).
class Command {
 public:
  Command(std::string command, std::string usage);

  // A value option ("--level", or "-o,--output" with its short alias) bound to `dest`: a
  // std::string, an integer, double, std::vector<int|int64_t|double> (comma-separated) or a
  // std::optional of one of them (set only when given). `range` bounds integers and the items
  // of integer lists. The returned CLI11 option can be refined (->required(), ->excludes()).
  template <typename T>
  CLI::Option* option(const std::string& names, T& dest, const std::string& help, Range range = {}) {
    const std::string name = display_name(names);
    CLI::Option* o = app_.add_option_function<std::string>(
        names, [&dest, name, range](const std::string& text) { parse_detail::convert(name, text, dest, range); }, help);
    o->type_name(parse_detail::type_name<T>());
    return o;
  }
  // A boolean flag (true when given).
  CLI::Option* flag(const std::string& names, bool& dest, const std::string& help);
  // A required positional argument; positionals are matched in the order declared.
  CLI::Option* positional(const std::string& name, std::string& dest, const std::string& help);

  // Parses argv (argv[0] is the command's name). std::nullopt: run the command. Otherwise the
  // process exit code: 0 after printing --help, 2 after reporting a usage error.
  std::optional<int> parse(int argc, char** argv);

  // Prints "kvcodec <command>: error: <message>" to stderr; returns 2 (a usage error).
  int usage_error(const std::string& message) const;
  // Prints "kvcodec <command>: error: <status>" to stderr; returns 1 (a runtime failure).
  int fail(const Status& status) const;
  const std::string& command() const { return command_; }
  CLI::App& app() { return app_; }

 private:
  static std::string display_name(const std::string& names);
  std::string command_, usage_;
  CLI::App app_;
  std::vector<std::pair<std::string, CLI::Option*>> positionals_;
};

// Prints "kvcodec <command>: error: <status>" to stderr and returns 1.
int report(const std::string& command, const Status& status);

}  // namespace kvcodec::cli
