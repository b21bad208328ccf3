#include "cli.hpp"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace kvcodec::cli {

Args::Args(std::string command, std::string usage)
    : command_(std::move(command)), usage_(std::move(usage)) {}

Args& Args::option(const std::string& name, const std::string& help, const std::string& alias) {
  specs_[name] = Spec{help, true, alias};
  if (!alias.empty()) specs_[alias] = Spec{help, true, name};
  return *this;
}

Args& Args::flag(const std::string& name, const std::string& help) {
  specs_[name] = Spec{help, false, ""};
  return *this;
}

Args& Args::positional(const std::string& name, const std::string& help) {
  positional_specs_.emplace_back(name, help);
  return *this;
}

bool Args::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: %s\n", usage_.c_str());
      for (const auto& [n, h] : positional_specs_) std::printf("  %-20s %s\n", n.c_str(), h.c_str());
      for (const auto& [n, s] : specs_) {
        if (!s.alias.empty() && s.alias < n && specs_.count(s.alias)) continue;
        std::printf("  %-20s %s\n", (n + (s.takes_value ? " X" : "")).c_str(), s.help.c_str());
      }
      exit_code_ = 0;
      return false;
    }
    if (a.size() > 1 && a[0] == '-' && !(a.size() > 1 && (std::isdigit((unsigned char)a[1]) || a[1] == '.'))) {
      std::string value;
      bool inline_value = false;
      if (auto eq = a.find('='); eq != std::string::npos && a.rfind("--", 0) == 0) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        inline_value = true;
      }
      auto it = specs_.find(a);
      if (it == specs_.end()) {
        exit_code_ = fail("unknown option '" + a + "' (see --help)");
        return false;
      }
      std::string key = (!it->second.alias.empty() && a.rfind("--", 0) != 0) ? it->second.alias : a;
      if (it->second.takes_value) {
        if (!inline_value) {
          if (i + 1 >= argc) {
            exit_code_ = fail("option " + a + " needs a value");
            return false;
          }
          value = argv[++i];
        }
        values_[key] = value;
      } else {
        values_[key] = "1";
      }
    } else {
      positional_values_.push_back(a);
    }
  }
  if (positional_values_.size() < positional_specs_.size()) {
    exit_code_ = fail("missing " + positional_specs_[positional_values_.size()].first + " (usage: " + usage_ + ")");
    return false;
  }
  if (positional_values_.size() > positional_specs_.size()) {
    exit_code_ = fail("unexpected argument '" + positional_values_[positional_specs_.size()] + "'");
    return false;
  }
  return true;
}

bool Args::has(const std::string& name) const { return values_.count(name) > 0; }

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

int64_t Args::get_int(const std::string& name, int64_t fallback) {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (errno || end == it->second.c_str() || *end) {
    fail(name + " expects an integer, got '" + it->second + "'");
    return fallback;
  }
  return v;
}

double Args::get_double(const std::string& name, double fallback) {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  if (errno || end == it->second.c_str() || *end) {
    fail(name + " expects a number, got '" + it->second + "'");
    return fallback;
  }
  return v;
}

std::vector<double> Args::get_double_list(const std::string& name) {
  std::vector<double> out;
  auto it = values_.find(name);
  if (it == values_.end()) return out;
  std::stringstream ss(it->second);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    double v = std::strtod(item.c_str(), &end);
    if (item.empty() || *end) {
      fail(name + " expects a comma-separated list of numbers, got '" + it->second + "'");
      return {};
    }
    out.push_back(v);
  }
  return out;
}

std::vector<int64_t> Args::get_int_list(const std::string& name) {
  std::vector<int64_t> out;
  for (double v : get_double_list(name)) {
    if (v != double(int64_t(v))) {
      fail(name + " expects integers");
      return {};
    }
    out.push_back(int64_t(v));
  }
  return out;
}

int Args::fail(const std::string& message) {
  if (!failed_) std::fprintf(stderr, "kvcodec %s: error: %s\n", command_.c_str(), message.c_str());
  failed_ = true;
  return 2;
}

int Args::fail(const Status& status) {
  if (!failed_) report(command_, status);
  failed_ = true;
  return 1;
}

int report(const std::string& command, const Status& status) {
  std::fprintf(stderr, "kvcodec %s: error: %s\n", command.c_str(), status.to_string().c_str());
  return 1;
}

}  // namespace kvcodec::cli
