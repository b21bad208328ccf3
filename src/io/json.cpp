// JSON reader and string writer (io/json.hpp).
#include "json.hpp"

#include <unordered_set>

namespace kvcodec::detail {
namespace {

// Length of the well-formed UTF-8 sequence that starts `s` (non-empty), or 0 when there is
// none: overlong forms, UTF-16 surrogates and code points above U+10FFFF are ill-formed
// (RFC 3629, section 4).
size_t utf8_sequence_length(std::string_view s) {
  const auto byte = [&](size_t i) { return i < s.size() ? uint8_t(s[i]) : uint8_t(0); };
  const uint8_t lead = byte(0);
  if (lead < 0x80) return 1;
  size_t n = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    n = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    n = 3;
    if (lead == 0xE0) lo = 0xA0;  // overlong below U+0800
    if (lead == 0xED) hi = 0x9F;  // surrogates U+D800..U+DFFF
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    n = 4;
    if (lead == 0xF0) lo = 0x90;  // overlong below U+10000
    if (lead == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;  // a continuation byte, or a lead byte of overlong or out-of-range forms
  }
  if (byte(1) < lo || byte(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i)
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  return n;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | cp >> 6);
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | cp >> 12);
    out += char(0x80 | (cp >> 6 & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | cp >> 18);
    out += char(0x80 | (cp >> 12 & 0x3F));
    out += char(0x80 | (cp >> 6 & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Leaves one nesting level on every path out of a container.
struct DepthGuard {
  int& depth;
  ~DepthGuard() { --depth; }
};

}  // namespace

Status JsonReader::error(std::string_view what) const {
  return CorruptData("JSON: " + std::string(what) + " at byte " + std::to_string(pos_));
}

void JsonReader::skip_space() {
  while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
}

bool JsonReader::eat(char c) {
  skip_space();
  if (pos_ < s_.size() && s_[pos_] == c) {
    ++pos_;
    return true;
  }
  return false;
}

Status JsonReader::enter() {
  if (++depth_ > kJsonMaxDepth) return error("nesting deeper than " + std::to_string(kJsonMaxDepth) + " levels");
  return Status::Ok();
}

StatusOr<JsonType> JsonReader::peek() {
  skip_space();
  if (pos_ >= s_.size()) return error("unexpected end of input");
  switch (s_[pos_]) {
    case '{': return JsonType::kObject;
    case '[': return JsonType::kArray;
    case '"': return JsonType::kString;
    case 't':
    case 'f': return JsonType::kBool;
    case 'n': return JsonType::kNull;
    default:
      if (s_[pos_] == '-' || is_digit(s_[pos_])) return JsonType::kNumber;
      return error("expected a value");
  }
}

Status JsonReader::read_object(const std::function<Status(std::string_view key)>& member) {
  if (!eat('{')) return error("expected an object");
  const Status entered = enter();
  DepthGuard leave{depth_};
  KVCODEC_RETURN_IF_ERROR(entered);
  if (eat('}')) return Status::Ok();
  std::unordered_set<std::string> keys;
  do {
    skip_space();
    if (pos_ >= s_.size() || s_[pos_] != '"') return error("expected a string key");
    const size_t key_pos = pos_;
    KVCODEC_ASSIGN_OR_RETURN(std::string key, read_string());
    if (!keys.insert(key).second) {
      pos_ = key_pos;
      return error("repeated key '" + key + "'");
    }
    if (!eat(':')) return error("expected ':'");
    KVCODEC_RETURN_IF_ERROR(member(key));
  } while (eat(','));
  if (!eat('}')) return error("expected ',' or '}'");
  return Status::Ok();
}

Status JsonReader::read_array(const std::function<Status()>& element) {
  if (!eat('[')) return error("expected an array");
  const Status entered = enter();
  DepthGuard leave{depth_};
  KVCODEC_RETURN_IF_ERROR(entered);
  if (eat(']')) return Status::Ok();
  do {
    KVCODEC_RETURN_IF_ERROR(element());
  } while (eat(','));
  if (!eat(']')) return error("expected ',' or ']'");
  return Status::Ok();
}

StatusOr<uint32_t> JsonReader::read_hex4() {
  if (s_.size() - pos_ < 4) return error("truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i, ++pos_) {
    const char c = s_[pos_];
    const int d = is_digit(c) ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return error("invalid \\u escape");
    v = v << 4 | uint32_t(d);
  }
  return v;
}

// After the backslash of an escape sequence.
Status JsonReader::read_escape(std::string& out) {
  if (pos_ >= s_.size()) return error("unterminated string");
  switch (s_[pos_++]) {
    case '"': out += '"'; return Status::Ok();
    case '\\': out += '\\'; return Status::Ok();
    case '/': out += '/'; return Status::Ok();
    case 'b': out += '\b'; return Status::Ok();
    case 'f': out += '\f'; return Status::Ok();
    case 'n': out += '\n'; return Status::Ok();
    case 'r': out += '\r'; return Status::Ok();
    case 't': out += '\t'; return Status::Ok();
    case 'u': break;
    default: --pos_; return error("invalid escape");
  }
  KVCODEC_ASSIGN_OR_RETURN(uint32_t cp, read_hex4());
  // Code points above U+FFFF are escaped as a UTF-16 surrogate pair; a lone half is no text.
  if (cp >= 0xDC00 && cp <= 0xDFFF) return error("unpaired surrogate in \\u escape");
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    if (s_.substr(pos_, 2) != "\\u") return error("unpaired surrogate in \\u escape");
    pos_ += 2;
    KVCODEC_ASSIGN_OR_RETURN(uint32_t low, read_hex4());
    if (low < 0xDC00 || low > 0xDFFF) return error("unpaired surrogate in \\u escape");
    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
  }
  append_utf8(out, cp);
  return Status::Ok();
}

StatusOr<std::string> JsonReader::read_string() {
  if (!eat('"')) return error("expected a string");
  std::string out;
  for (;;) {
    if (pos_ >= s_.size()) return error("unterminated string");
    const uint8_t c = uint8_t(s_[pos_]);
    if (c == '"') {
      ++pos_;
      return out;
    }
    if (c == '\\') {
      ++pos_;
      KVCODEC_RETURN_IF_ERROR(read_escape(out));
      continue;
    }
    if (c < 0x20) return error("unescaped control character in a string");
    const size_t n = utf8_sequence_length(s_.substr(pos_));
    if (n == 0) return error("invalid UTF-8");
    out.append(s_.substr(pos_, n));
    pos_ += n;
  }
}

StatusOr<uint64_t> JsonReader::read_uint() {
  skip_space();
  const size_t start = pos_;
  uint64_t v = 0;
  for (; pos_ < s_.size() && is_digit(s_[pos_]); ++pos_) {
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, uint64_t(s_[pos_] - '0'), &v)) {
      pos_ = start;
      return error("integer does not fit in 64 bits");
    }
  }
  if (pos_ == start) return error("expected a non-negative integer");
  if (pos_ - start > 1 && s_[start] == '0') return error("number with a leading zero");
  if (pos_ < s_.size() && (s_[pos_] == '.' || s_[pos_] == 'e' || s_[pos_] == 'E'))
    return error("expected an integer, found a fraction or exponent");
  return v;
}

Status JsonReader::skip_number() {
  eat('-');
  if (pos_ >= s_.size() || !is_digit(s_[pos_])) return error("expected a digit");
  if (s_[pos_] == '0') {
    ++pos_;
  } else {
    while (pos_ < s_.size() && is_digit(s_[pos_])) ++pos_;
  }
  const auto digits = [&] {
    const size_t start = pos_;
    while (pos_ < s_.size() && is_digit(s_[pos_])) ++pos_;
    return pos_ > start;
  };
  if (pos_ < s_.size() && s_[pos_] == '.') {
    ++pos_;
    if (!digits()) return error("expected a digit after '.'");
  }
  if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
    ++pos_;
    if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
    if (!digits()) return error("expected a digit in the exponent");
  }
  return Status::Ok();
}

Status JsonReader::skip() {
  KVCODEC_ASSIGN_OR_RETURN(JsonType type, peek());
  switch (type) {
    case JsonType::kObject: return read_object([this](std::string_view) { return skip(); });
    case JsonType::kArray: return read_array([this] { return skip(); });
    case JsonType::kString: return read_string().status();
    case JsonType::kNumber: return skip_number();
    case JsonType::kBool:
    case JsonType::kNull:
      for (std::string_view word : {"true", "false", "null"}) {
        if (s_.substr(pos_, word.size()) == word) {
          pos_ += word.size();
          return Status::Ok();
        }
      }
      return error("expected a value");
  }
  return error("expected a value");
}

Status JsonReader::finish() {
  skip_space();
  if (pos_ != s_.size()) return error("trailing characters after the document");
  return Status::Ok();
}

bool append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  const size_t mark = out.size();
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const uint8_t c = uint8_t(s[i]);
    if (c >= 0x80) {
      const size_t n = utf8_sequence_length(s.substr(i));
      if (n == 0) {
        out.resize(mark);
        return false;
      }
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += char(c);
        }
    }
    ++i;
  }
  out += '"';
  return true;
}

}  // namespace kvcodec::detail
