#include "cli.hpp"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace kvcodec::cli {

// ---- Value conversions ---------------------------------------------------------------------------

namespace parse_detail {

void convert(const std::string&, const std::string& text, std::string& out) { out = text; }

void convert(const std::string& name, const std::string& text, int64_t& out) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno || end == text.c_str() || *end) throw CLI::ValidationError(name + " expects an integer, got '" + text + "'");
  out = v;
}

void convert(const std::string& name, const std::string& text, double& out) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (errno || end == text.c_str() || *end) throw CLI::ValidationError(name + " expects a number, got '" + text + "'");
  out = v;
}

void convert(const std::string& name, const std::string& text, std::vector<double>& out) {
  out.clear();
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    errno = 0;
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (item.empty() || errno || end == item.c_str() || *end)
      throw CLI::ValidationError(name + " expects a comma-separated list of numbers, got '" + text + "'");
    out.push_back(v);
  }
}

void convert(const std::string& name, const std::string& text, std::vector<int64_t>& out) {
  std::vector<double> values;
  convert(name, text, values);
  out.clear();
  for (double v : values) {
    // Whole numbers only ("4", also "4.0" or "1e1"), within int64_t.
    if (!(v >= -9.2e18 && v <= 9.2e18) || v != std::trunc(v)) throw CLI::ValidationError(name + " expects integers, got '" + text + "'");
    out.push_back(int64_t(v));
  }
}

void check_range(const std::string& name, int64_t value, const Range& range) {
  if (value >= range.lo && value <= range.hi) return;
  const Range any;
  const std::string bounds = range.hi == any.hi   ? ">= " + std::to_string(range.lo)
                             : range.lo == any.lo ? "<= " + std::to_string(range.hi)
                                                  : "in " + std::to_string(range.lo) + ".." + std::to_string(range.hi);
  throw CLI::ValidationError(name + " must be " + bounds + ", got " + std::to_string(value));
}

}  // namespace parse_detail

// ---- Command -------------------------------------------------------------------------------------

namespace {

// Help: the command's usage line, then its arguments and options as CLI11 lists them.
class UsageFormatter : public CLI::Formatter {
 public:
  explicit UsageFormatter(std::string usage) : usage_(std::move(usage)) {}
  std::string make_usage(const CLI::App*, std::string) const override { return "usage: " + usage_ + "\n"; }

 private:
  std::string usage_;
};

// A CLI11 message on one line.
std::string one_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  for (char& c : s)
    if (c == '\n') c = ' ';
  return s;
}

}  // namespace

Command::Command(std::string command, std::string usage)
    : command_(std::move(command)), usage_(std::move(usage)), app_("", "kvcodec " + command_) {
  app_.formatter(std::make_shared<UsageFormatter>(usage_));
  app_.allow_extras();  // reported by parse() as one line, in kvcodec's words
  app_.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

CLI::Option* Command::flag(const std::string& names, bool& dest, const std::string& help) {
  return app_.add_flag(names, dest, help);
}

CLI::Option* Command::positional(const std::string& name, std::string& dest, const std::string& help) {
  CLI::Option* o = app_.add_option(name, dest, help);
  positionals_.emplace_back(name, o);
  return o;
}

std::string Command::display_name(const std::string& names) {
  // "-o,--output" -> "--output": the long name, as the messages and --help show it.
  std::string best;
  std::stringstream ss(names);
  for (std::string n; std::getline(ss, n, ',');)
    if (best.empty() || (n.rfind("--", 0) == 0 && best.rfind("--", 0) != 0)) best = n;
  return best;
}

std::optional<int> Command::parse(int argc, char** argv) {
  try {
    app_.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app_.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ArgumentMismatch& e) {
    // "--level: 1 required INT missing": the option ended the command line.
    const std::string what = e.what();
    if (what.find(" missing") != std::string::npos && what.find(':') != std::string::npos)
      return usage_error("option " + what.substr(0, what.find(':')) + " needs a value");
    return usage_error(one_line(what));
  } catch (const CLI::ParseError& e) {
    return usage_error(one_line(e.what()));
  }
  for (const std::string& extra : app_.remaining()) {
    if (extra.size() > 1 && extra[0] == '-')
      return usage_error("unknown option '" + extra.substr(0, extra.find('=')) + "' (see --help)");
    return usage_error("unexpected argument '" + extra + "'");
  }
  for (const auto& [name, o] : positionals_)
    if (o->count() == 0) return usage_error("missing " + name + " (usage: " + usage_ + ")");
  return std::nullopt;
}

int Command::usage_error(const std::string& message) const {
  std::fprintf(stderr, "kvcodec %s: error: %s\n", command_.c_str(), message.c_str());
  return 2;
}

int Command::fail(const Status& status) const { return report(command_, status); }

int report(const std::string& command, const Status& status) {
  std::fprintf(stderr, "kvcodec %s: error: %s\n", command.c_str(), status.to_string().c_str());
  return 1;
}

}  // namespace kvcodec::cli
