// %XX escapes, shared by the file store's names and the Redis URIs' credentials (private).
#pragma once

#include <charconv>
#include <optional>
#include <string>
#include <string_view>

namespace kvcodec {

// "a%40b" -> "a@b"; nothing when a '%' is not followed by two hex digits.
inline std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    unsigned value = 0;
    if (i + 3 > s.size()) return std::nullopt;
    auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, value, 16);
    if (ec != std::errc() || p != s.data() + i + 3) return std::nullopt;
    out += char(value);
    i += 2;
  }
  return out;
}

}  // namespace kvcodec
