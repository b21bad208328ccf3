// Manifest encoding, key naming and verification of heads and chunk bodies against a manifest.
//
// Manifest byte layout (version 2, all integers little-endian; docs/streaming.md):
//   0   magic "KVCM"               4
//   4   version (2; 1 is read)     u16
//   6   dtype code                 u8
//   7   reserved (0)               u8
//   8   layers, tokens, kv_heads, head_dim, chunk_tokens, chunks, levels, text_tokens   8 x u32
//   40  per level:  level u8, flags u8 (bit 0: transform-coded with a profile), reserved 6 bytes,
//                   head_bytes u64, head_checksum u64, rel_error f64, decode_gbps f64 (IEEE-754
//                   bits as u64), profile_digest u64 (0 without flag bit 0)
//                   [version 1: 40 bytes, flags and profile_digest absent]
//                   then per chunk: size u32, checksum u64
//   ..  text_tokens x i32 (0 or `tokens` entries)
//   end XXH64 (seed 0) of every byte before it, u64
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <string>

#include "byte_io.hpp"
#include "common/hex.hpp"
#include "common/profile_rows.hpp"
#include "common/xxh64.hpp"
#include "kvcodec/store.hpp"

namespace kvcodec {

using stream_detail::ByteReader;
using stream_detail::ByteWriter;

namespace {
constexpr size_t kFixedBytes = 40;
constexpr size_t kLevelBytesV1 = 40;
constexpr size_t kLevelBytes = 48;  // version 2: the profile digest
constexpr uint8_t kLevelProfile = 1;  // level flag bit 0
constexpr size_t kChunkBytes = 12;
constexpr size_t kMaxIdLength = 200;
}  // namespace

uint64_t ManifestLevel::frame_bytes() const noexcept {
  uint64_t total = head_bytes;
  for (const auto& c : chunks) total += c.size;
  return total;
}

uint32_t Manifest::num_chunks() const noexcept {
  return chunk_tokens ? (shape.tokens + chunk_tokens - 1) / chunk_tokens : 0;
}

uint32_t Manifest::chunk_token_count(uint32_t c) const noexcept {
  uint32_t begin = chunk_token_begin(c);
  return begin >= shape.tokens ? 0 : std::min(chunk_tokens, shape.tokens - begin);
}

const ManifestLevel* Manifest::find_level(int level) const noexcept {
  for (const auto& l : levels)
    if (l.level == level) return &l;
  return nullptr;
}

uint64_t Manifest::raw_chunk_bytes(uint32_t c) const noexcept {
  return 2ull * shape.layers * chunk_token_count(c) * shape.channels() * dtype_size(dtype);
}

std::vector<uint8_t> serialize_manifest(const Manifest& m) {
  const bool v1 = !m.profiles_known;  // read from version 1: written back as it was
  std::vector<uint8_t> out;
  out.reserve(kFixedBytes + m.levels.size() * ((v1 ? kLevelBytesV1 : kLevelBytes) + m.num_chunks() * kChunkBytes) +
              m.text_tokens.size() * 4 + 8);
  ByteWriter w(out);
  for (uint8_t b : kManifestMagic) w.u8(b);
  w.u16(v1 ? 1 : kManifestVersion);
  w.u8(uint8_t(m.dtype));
  w.u8(0);
  for (uint32_t v : {m.shape.layers, m.shape.tokens, m.shape.kv_heads, m.shape.head_dim,
                     m.chunk_tokens, m.num_chunks(), uint32_t(m.levels.size()),
                     uint32_t(m.text_tokens.size())})
    w.u32(v);
  for (const auto& l : m.levels) {
    w.u8(uint8_t(l.level));
    w.u8(!v1 && l.profile_digest ? kLevelProfile : 0);
    for (int i = 0; i < 6; ++i) w.u8(0);
    w.u64(l.head_bytes);
    w.u64(l.head_checksum);
    w.u64(std::bit_cast<uint64_t>(l.rel_error));
    w.u64(std::bit_cast<uint64_t>(l.decode_gbps));
    if (!v1) w.u64(l.profile_digest.value_or(0));
    for (const auto& c : l.chunks) {
      w.u32(c.size);
      w.u64(c.checksum);
    }
  }
  for (int32_t t : m.text_tokens) w.u32(uint32_t(t));
  w.u64(detail::xxh64(out.data(), out.size()));
  return out;
}

StatusOr<Manifest> parse_manifest(std::span<const uint8_t> bytes) {
  if (bytes.size() < kFixedBytes + 8) return CorruptData("manifest: truncated");
  if (!std::equal(kManifestMagic, kManifestMagic + 4, bytes.begin()))
    return CorruptData("manifest: bad magic");
  ByteReader r(bytes);
  r.bytes(4);
  uint16_t version = r.u16();
  if (version != 1 && version != kManifestVersion)
    return UnsupportedVersion("manifest: version " + std::to_string(version) + ", this library reads 1.." +
                              std::to_string(kManifestVersion));
  const size_t body = bytes.size() - 8;
  uint64_t stored = ByteReader(bytes.subspan(body)).u64();
  if (detail::xxh64(bytes.data(), body) != stored) return ChecksumMismatch("manifest: checksum mismatch");

  Manifest m;
  m.profiles_known = version >= 2;
  const size_t level_bytes = version >= 2 ? kLevelBytes : kLevelBytesV1;
  uint8_t dtype = r.u8();
  r.u8();
  if (!is_valid_dtype(dtype)) return CorruptData("manifest: unknown dtype");
  m.dtype = DType(dtype);
  m.shape.layers = r.u32();
  m.shape.tokens = r.u32();
  m.shape.kv_heads = r.u32();
  m.shape.head_dim = r.u32();
  m.chunk_tokens = r.u32();
  uint32_t chunks = r.u32();
  uint32_t levels = r.u32();
  uint32_t text = r.u32();
  KVCODEC_RETURN_IF_ERROR(validate_shape(m.shape).with_context("manifest"));
  if (m.chunk_tokens == 0 || m.chunk_tokens > kMaxChunkTokens)
    return CorruptData("manifest: chunk_tokens out of range");
  if (chunks != m.num_chunks()) return CorruptData("manifest: chunk count does not match the shape");
  if (levels == 0 || levels > uint32_t(kMaxLevel + 1)) return CorruptData("manifest: bad level count");
  if (text != 0 && text != m.shape.tokens)
    return CorruptData("manifest: text token count differs from the context length");
  // Exact size check before allocating anything from the counts.
  uint64_t expect = kFixedBytes + uint64_t(levels) * (level_bytes + uint64_t(chunks) * kChunkBytes) +
                    uint64_t(text) * 4 + 8;
  if (expect != bytes.size()) return CorruptData("manifest: size does not match its counts");

  m.levels.resize(levels);
  for (uint32_t i = 0; i < levels; ++i) {
    ManifestLevel& l = m.levels[i];
    l.level = r.u8();
    const uint8_t flags = r.u8();
    const auto reserved = r.bytes(6);
    l.head_bytes = r.u64();
    l.head_checksum = r.u64();
    l.rel_error = std::bit_cast<double>(r.u64());
    l.decode_gbps = std::bit_cast<double>(r.u64());
    if (m.profiles_known) {
      const uint64_t digest = r.u64();
      const bool zeros = std::all_of(reserved.begin(), reserved.end(), [](uint8_t b) { return b == 0; });
      if ((flags & ~kLevelProfile) || (!(flags & kLevelProfile) && digest != 0) || !zeros)
        return CorruptData("manifest: bad level flags, reserved bytes or profile digest");
      if (flags & kLevelProfile) {
        if (l.level == 0) return CorruptData("manifest: level 0 cannot be transform-coded");
        l.profile_digest = digest;
      }
    }
    if (!(l.rel_error >= 0 && l.rel_error < 1e30) || !(l.decode_gbps >= 0 && l.decode_gbps < 1e30))
      return CorruptData("manifest: measured figures out of range");
    if (l.level > kMaxLevel || (i > 0 && l.level <= m.levels[i - 1].level))
      return CorruptData("manifest: levels must be distinct, ascending and <= kMaxLevel");
    l.chunks.resize(chunks);
    for (auto& c : l.chunks) {
      c.size = r.u32();
      c.checksum = r.u64();
    }
  }
  m.text_tokens.resize(text);
  for (auto& t : m.text_tokens) t = int32_t(r.u32());
  if (!r.ok() || r.remaining() != 8) return Internal("manifest: parser out of step");
  return m;
}

std::string manifest_json(const Manifest& m, std::string_view id) {
  nlohmann::json j;
  j["id"] = std::string(id);
  j["dtype"] = dtype_name(m.dtype);
  j["layers"] = m.shape.layers;
  j["tokens"] = m.shape.tokens;
  j["kv_heads"] = m.shape.kv_heads;
  j["head_dim"] = m.shape.head_dim;
  j["chunk_tokens"] = m.chunk_tokens;
  j["chunks"] = m.num_chunks();
  j["has_text"] = m.has_text();
  const double elements = double(m.shape.elements());
  for (const auto& l : m.levels) {
    nlohmann::json level = {{"level", l.level},
                            {"head_bytes", l.head_bytes},
                            {"frame_bytes", l.frame_bytes()},
                            {"rel_error", l.rel_error},
                            {"decode_gbps", l.decode_gbps},
                            {"bits_per_element", 8.0 * double(l.frame_bytes()) / elements}};
    if (l.profile_digest) level["profile_digest"] = detail::hex64(*l.profile_digest);
    j["levels"].push_back(std::move(level));
  }
  return j.dump(2);
}

Status validate_context_id(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdLength)
    return InvalidArgument("context id must have 1.." + std::to_string(kMaxIdLength) + " characters");
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return InvalidArgument("context id may only contain [A-Za-z0-9._-]");
  }
  return Status::Ok();
}

// The {id} hash tag makes Redis Cluster place every key of a context in the same slot, so a
// context lives on one shard and its keys can be pipelined together.
std::string manifest_key(std::string_view id) { return "kvc:{" + std::string(id) + "}:manifest"; }
std::string head_key(std::string_view id, int level) {
  return "kvc:{" + std::string(id) + "}:L" + std::to_string(level) + ":head";
}
std::string chunk_key(std::string_view id, int level, uint32_t chunk) {
  return "kvc:{" + std::string(id) + "}:L" + std::to_string(level) + ":C" + std::to_string(chunk);
}

Status check_level_profile(const Manifest& m, const ManifestLevel& l, const Profile* p) {
  if (!m.profiles_known || !l.profile_digest) return Status::Ok();
  // The head's check (the same message): a transform-coded frame of the manifest's shape.
  FrameInfo f;
  f.transformed = true;
  f.profile_digest = *l.profile_digest;
  f.shape = m.shape;
  f.dtype = m.dtype;
  return detail::check_frame_profile(f, p).with_context("level " + std::to_string(l.level));
}

Status verify_head(const Manifest& m, int level, std::span<const uint8_t> head) {
  const ManifestLevel* l = m.find_level(level);
  if (!l) return NotFound("level " + std::to_string(level) + " is not stored");
  if (head.size() != l->head_bytes)
    return CorruptData("level " + std::to_string(level) + " head: " + std::to_string(head.size()) +
                       " bytes, manifest says " + std::to_string(l->head_bytes));
  if (detail::xxh64(head.data(), head.size()) != l->head_checksum)
    return ChecksumMismatch("level " + std::to_string(level) + " head: checksum mismatch");
  return Status::Ok();
}

Status verify_chunk(const Manifest& m, int level, uint32_t chunk, std::span<const uint8_t> body) {
  const ManifestLevel* l = m.find_level(level);
  if (!l) return NotFound("level " + std::to_string(level) + " is not stored");
  if (chunk >= l->chunks.size()) return OutOfRange("chunk " + std::to_string(chunk) + " out of range");
  const std::string what = "level " + std::to_string(level) + " chunk " + std::to_string(chunk);
  if (body.size() != l->chunks[chunk].size)
    return CorruptData(what + ": " + std::to_string(body.size()) + " bytes, manifest says " +
                       std::to_string(l->chunks[chunk].size));
  if (detail::xxh64(body.data(), body.size()) != l->chunks[chunk].checksum)
    return ChecksumMismatch(what + ": checksum mismatch");
  return Status::Ok();
}

}  // namespace kvcodec
