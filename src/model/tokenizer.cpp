// Tokenizers (see src/model/include/kvcodec/tokenizer.hpp).
//
// run.c merges by rescanning every adjacent pair after each merge, which is quadratic in the
// text length. This file produces the same ids with a priority queue of candidate pairs over a
// linked list of symbols: the queue orders by (score descending, left symbol position
// ascending), which is exactly run.c's choice (strictly greater score wins, so the leftmost
// pair wins ties), and entries whose symbols changed since they were queued are skipped.
#include "kvcodec/tokenizer.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <queue>

namespace kvcodec {
namespace {

// A tokenizer file larger than this is not a tokenizer (tok512.bin is 6 KB; Llama's 32000-piece
// vocabulary is under 500 KB).
constexpr uint64_t kMaxTokenizerBytes = 64ull << 20;
// Longest piece (bytes) and max_token_length a tokenizer may declare (Llama's longest is 16).
constexpr int32_t kMaxPieceBytes = 1024;
// run.c starts its best-score search at this value, so pieces scoring at or below it never merge.
constexpr float kNoMergeScore = -1e10f;

bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// "<0xXX>" for byte b, as SentencePiece names its byte pieces.
std::string byte_piece(unsigned b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
  return buf;
}

// The byte of a byte piece "<0xXX>", or -1.
int parse_byte_piece(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
  int v = 0;
  for (char ch : p.substr(3, 2)) {
    v <<= 4;
    if (ch >= '0' && ch <= '9') v |= ch - '0';
    else if (ch >= 'A' && ch <= 'F') v |= ch - 'A' + 10;
    else if (ch >= 'a' && ch <= 'f') v |= ch - 'a' + 10;
    else return -1;
  }
  return v;
}

}  // namespace

Tokenizer Tokenizer::bytes() {
  Tokenizer t;
  t.bytes_ = true;
  return t;
}

StatusOr<Tokenizer> Tokenizer::open(const std::string& spec) {
  if (spec == "bytes") return bytes();
  return load(spec);
}

StatusOr<Tokenizer> Tokenizer::load(const std::string& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return IoError("cannot open tokenizer " + path);
  if (size > kMaxTokenizerBytes) return CorruptData("tokenizer file too large: " + path);
  std::ifstream f(path, std::ios::binary);
  std::string buf(size, '\0');
  if (!f || !f.read(buf.data(), std::streamsize(size))) return IoError("cannot read tokenizer " + path);
  return parse(buf, path);
}

StatusOr<Tokenizer> Tokenizer::parse(std::string_view buf, const std::string& path) {
  if (buf.size() > kMaxTokenizerBytes) return CorruptData("tokenizer file too large: " + path);
  size_t pos = 0;
  auto read_i32 = [&](int32_t& v) {
    if (buf.size() - pos < 4) return false;
    std::memcpy(&v, buf.data() + pos, 4);
    pos += 4;
    return true;
  };
  // max_token_length sizes run.c's merge buffer: it must cover the longest piece and stay small.
  int32_t max_len = 0;
  if (!read_i32(max_len) || max_len < 0 || max_len > kMaxPieceBytes)
    return CorruptData("tokenizer header is malformed (max_token_length " + std::to_string(max_len) + "): " + path);

  Tokenizer t;
  while (pos < buf.size()) {
    float score = 0.0f;
    int32_t len = 0;
    if (buf.size() - pos < 8) return CorruptData("tokenizer truncated inside a piece: " + path);
    std::memcpy(&score, buf.data() + pos, 4);
    pos += 4;
    read_i32(len);
    if (len < 0 || uint64_t(len) > buf.size() - pos || len > max_len)
      return CorruptData("tokenizer piece length out of range: " + path);
    // Scores order the merges (a strict weak order: NaN would break it) and are compared with
    // kNoMergeScore: they must be finite.
    if (!std::isfinite(score)) return CorruptData("tokenizer piece score is not finite: " + path);
    t.pieces_.emplace_back(buf.data() + pos, size_t(len));
    t.scores_.push_back(score);
    pos += size_t(len);
  }
  if (t.pieces_.size() <= size_t(kEos)) return CorruptData("tokenizer has fewer than 3 pieces: " + path);
  for (size_t id = 0; id < t.pieces_.size(); ++id) t.lookup_.emplace(t.pieces_[id], int32_t(id));
  t.byte_fallback_ = t.pieces_.size() >= 3 + 256;
  for (unsigned b = 0; b < 256 && t.byte_fallback_; ++b)
    t.byte_fallback_ = t.pieces_[3 + b] == byte_piece(b);
  return t;
}

std::vector<int32_t> Tokenizer::encode_pieces(std::string_view text) const {
  // Symbols of the linked list; a merged pair keeps the left symbol's slot.
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // slot indices, -1 at the ends
  };
  std::vector<Symbol> sym;
  sym.reserve(text.size());
  auto push = [&sym](int32_t id) {
    int32_t slot = int32_t(sym.size());
    sym.push_back({id, slot - 1, -1});
    if (slot > 0) sym[slot - 1].next = slot;
  };
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    while (len < 4 && i + len < text.size() && is_continuation(static_cast<unsigned char>(text[i + len])))
      ++len;
    auto it = lookup_.find(std::string(text.substr(i, len)));
    if (it != lookup_.end()) {
      push(it->second);
    } else {
      for (size_t j = 0; j < len; ++j)
        push(byte_fallback_ ? 3 + static_cast<unsigned char>(text[i + j]) : kUnk);
    }
    i += len;
  }

  struct Candidate {
    float score;
    int32_t left, right;        // slots
    int32_t left_id, right_id;  // ids when queued: a changed symbol makes the entry stale
    int32_t merged;
    bool operator<(const Candidate& o) const {  // max-heap: higher score, then leftmost
      return score != o.score ? score < o.score : left > o.left;
    }
  };
  std::priority_queue<Candidate> queue;
  auto offer = [&](int32_t left) {
    if (left < 0 || sym[left].next < 0) return;
    const int32_t right = sym[left].next;
    auto it = lookup_.find(pieces_[sym[left].id] + pieces_[sym[right].id]);
    if (it == lookup_.end() || !(scores_[it->second] > kNoMergeScore)) return;
    queue.push({scores_[it->second], left, right, sym[left].id, sym[right].id, it->second});
  };
  for (int32_t s = 0; s < int32_t(sym.size()); ++s) offer(s);

  std::vector<bool> alive(sym.size(), true);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    if (!alive[c.left] || !alive[c.right] || sym[c.left].next != c.right ||
        sym[c.left].id != c.left_id || sym[c.right].id != c.right_id)
      continue;
    sym[c.left].id = c.merged;
    sym[c.left].next = sym[c.right].next;
    if (sym[c.right].next >= 0) sym[sym[c.right].next].prev = c.left;
    alive[c.right] = false;
    offer(sym[c.left].prev);
    offer(c.left);
  }

  std::vector<int32_t> out;
  for (int32_t s = sym.empty() ? -1 : 0; s >= 0; s = sym[s].next) out.push_back(sym[s].id);
  return out;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool bos) const {
  std::vector<int32_t> out;
  if (bytes_) {
    out.reserve(text.size());
    for (char ch : text) out.push_back(static_cast<unsigned char>(ch));
    return out;
  }
  if (bos) out.push_back(kBos);
  if (text.empty()) return out;
  // run.c adds the dummy prefix as the piece " "; encoding " " + text is the same thing.
  std::string with_prefix;
  with_prefix.reserve(text.size() + 1);
  with_prefix.push_back(' ');
  with_prefix.append(text);
  std::vector<int32_t> ids = encode_pieces(with_prefix);
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::string Tokenizer::decode(int32_t previous, int32_t token) const {
  if (token < 0 || uint32_t(token) >= vocab_size()) return {};
  if (bytes_) return std::string(1, char(token));
  const std::string& piece = pieces_[size_t(token)];
  if (int b = parse_byte_piece(piece); b >= 0) return std::string(1, char(b));
  if (previous == kBos && !piece.empty() && piece[0] == ' ') return piece.substr(1);
  return piece;
}

std::string Tokenizer::decode(std::span<const int32_t> tokens) const {
  std::string out;
  int32_t previous = -1;
  for (int32_t t : tokens) {
    if (bytes_ || (t != kBos && t != kEos)) out += decode(previous, t);
    previous = t;
  }
  return out;
}

StatusOr<std::vector<int32_t>> context_tokens(const Tokenizer& tokenizer, std::string_view text,
                                              uint64_t offset, uint32_t tokens) {
  if (tokens == 0) return InvalidArgument("context_tokens: zero tokens");
  if (offset >= text.size()) return OutOfRange("context offset is at or beyond the end of the text");
  size_t start = size_t(offset);
  while (start < text.size() && is_continuation(static_cast<unsigned char>(text[start]))) ++start;
  // A merge can reach across any cut, so a llama2.c tokenizer sees the whole rest of the text;
  // the bytes tokenizer needs only `tokens` bytes.
  std::string_view rest = text.substr(start);
  if (tokenizer.is_bytes()) rest = rest.substr(0, tokens);
  std::vector<int32_t> ids = tokenizer.encode(rest, tokenizer.uses_bos());
  if (ids.size() < tokens)
    return OutOfRange("text from offset " + std::to_string(offset) + " yields " + std::to_string(ids.size()) +
                      " tokens, fewer than the " + std::to_string(tokens) + " requested");
  ids.resize(tokens);
  return ids;
}

}  // namespace kvcodec
