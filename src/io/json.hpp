// A small, strict JSON (RFC 8259) reader and string writer for the documents kvcodec reads and
// writes itself: safetensors headers. Internal to the library.
//
// The reader pulls values in document order as the caller asks for them; nothing is built in
// memory beyond the strings the caller reads, so a hostile document of any size costs no more
// than its own bytes. It is strict where parsers commonly are lenient: the whole grammar is
// checked (also in values the caller skips), text must be valid UTF-8 (escaped surrogates must
// pair up), keys are unique within each object, nesting is bounded by kJsonMaxDepth, and only
// whitespace may follow the document. Every violation is a kCorruptData status naming the byte
// offset; after any error the reader's position is unspecified and it must not be used further.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "kvcodec/status.hpp"

namespace kvcodec::detail {

// Arrays and objects nested deeper than this are refused (safetensors headers need 3 levels).
inline constexpr int kJsonMaxDepth = 64;

enum class JsonType { kNull, kBool, kNumber, kString, kArray, kObject };

class JsonReader {
 public:
  explicit JsonReader(std::string_view text) : s_(text) {}

  // The type of the next value, from its first character; consumes nothing.
  StatusOr<JsonType> peek();

  // Reads an object, calling member(key) for each member in document order; member must read
  // (or skip()) exactly that member's value. A repeated key is an error.
  Status read_object(const std::function<Status(std::string_view key)>& member);
  // Reads an array, calling element() once per element, which must read exactly one value.
  Status read_array(const std::function<Status()>& element);
  // A string's decoded (UTF-8) text.
  StatusOr<std::string> read_string();
  // A number written as a non-negative integer (no sign, fraction or exponent) below 2^64.
  StatusOr<uint64_t> read_uint();
  // Consumes and validates one value of any type.
  Status skip();
  // Succeeds when only whitespace remains after the document.
  Status finish();

 private:
  Status error(std::string_view what) const;
  void skip_space();
  bool eat(char c);
  Status enter();  // one nesting level deeper, bounded
  Status skip_number();
  Status read_escape(std::string& out);
  StatusOr<uint32_t> read_hex4();

  std::string_view s_;
  size_t pos_ = 0;
  int depth_ = 0;
};

// Appends `s` as a JSON string literal: quoted, with '"', '\\' and control characters escaped
// and other characters as they are. Returns false, appending nothing, when `s` is not valid UTF-8.
bool append_json_string(std::string& out, std::string_view s);

}  // namespace kvcodec::detail
