// Tokenizers for the reference models: llama2.c's tokenizer .bin format, and raw bytes.
//
// llama2.c format (little-endian): int32 max_token_length, then per token: float32 score,
// int32 byte length, the bytes. Ids 0 <unk>, 1 BOS, 2 EOS; SentencePiece's U+2581 is stored as
// a space.
//
// Encoding is llama2.c's (run.c `encode`), reproduced exactly:
//   1. a dummy space is prepended to non-empty text;
//   2. the text is split into UTF-8 characters (a lead byte plus up to 3 continuation bytes);
//      each character that is a vocabulary piece becomes that piece, otherwise each of its bytes
//      becomes the byte-fallback piece "<0xXX>" (ids 3..258 in vocabularies that have them,
//      e.g. tok512) or <unk> (0) in vocabularies without byte pieces (e.g. tok105);
//   3. the adjacent pair whose concatenation is a piece with the highest score is merged,
//      leftmost first on ties, until no pair merges.
// Decoding maps byte-fallback pieces back to their byte and drops the leading space of a piece
// that follows BOS, as run.c's `decode` does.
//
// The bytes tokenizer (for kvc-bytes-a) maps each byte to the id of its value (vocab 256) and
// has no BOS.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvcodec/status.hpp"

namespace kvcodec {

class Tokenizer {
 public:
  static constexpr int32_t kUnk = 0;
  static constexpr int32_t kBos = 1;
  static constexpr int32_t kEos = 2;

  // Loads a llama2.c tokenizer .bin. kCorruptData for a malformed or truncated file, kIoError
  // when it cannot be read.
  static StatusOr<Tokenizer> load(const std::string& path);
  // load() of a file's contents already in memory (`name` for messages). The header's
  // max_token_length must be at most 1024 and cover every piece; scores must be finite.
  static StatusOr<Tokenizer> parse(std::string_view bytes, const std::string& name);
  // The byte-level tokenizer: id = byte value, vocab 256, no BOS.
  static Tokenizer bytes();
  // "bytes" for bytes(), anything else is a path for load().
  static StatusOr<Tokenizer> open(const std::string& spec);

  bool is_bytes() const noexcept { return bytes_; }
  uint32_t vocab_size() const noexcept { return bytes_ ? 256u : uint32_t(pieces_.size()); }
  // Whether a sequence starts with BOS (id 1): true for llama2.c tokenizers, false for bytes.
  bool uses_bos() const noexcept { return !bytes_; }

  // Token ids of `text`, preceded by BOS when `bos` (ignored by the bytes tokenizer).
  std::vector<int32_t> encode(std::string_view text, bool bos) const;
  // Bytes of `token` when it follows `previous` (llama2.c decode rules); empty for an id out of
  // range.
  std::string decode(int32_t previous, int32_t token) const;
  // Concatenated decode of a sequence; BOS and EOS themselves produce no text.
  std::string decode(std::span<const int32_t> tokens) const;

 private:
  std::vector<int32_t> encode_pieces(std::string_view text) const;

  bool bytes_ = false;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> lookup_;  // piece -> id (first id on duplicates)
  bool byte_fallback_ = false;                        // ids 3..258 are <0x00>..<0xFF>
};

// The context of a text as the project defines it (docs/model.md): the text from byte `offset`
// on, after skipping UTF-8 continuation bytes at that offset (a partially cut character),
// tokenized with BOS in front (llama2.c tokenizers; none for bytes); the first `tokens` ids,
// BOS included, form the context.
// Errors: kOutOfRange when offset is beyond the text or the text yields fewer than `tokens`
// tokens; kInvalidArgument for tokens == 0.
StatusOr<std::vector<int32_t>> context_tokens(const Tokenizer& tokenizer, std::string_view text,
                                              uint64_t offset, uint32_t tokens);

}  // namespace kvcodec
