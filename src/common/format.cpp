// Frame head: header, model section, chunk index (docs/format.md is the normative spec) -- the
// reading side, with every check; the encoder writes heads with encode/frame_writer.cpp.
#include <cstdio>
#include <cstring>
#include <string>

#include "common/bytes.hpp"
#include "common/frame.hpp"
#include "common/hex.hpp"
#include "common/quant.hpp"
#include "common/rans.hpp"

namespace kvcodec {
namespace detail {

namespace {



int32_t unzigzag(uint32_t v) { return int32_t(v >> 1) ^ -int32_t(v & 1); }


Status parse_header(std::span<const uint8_t> b, FrameInfo& f, uint32_t& num_chunks) {
  if (b.size() < kHeaderBytes)
    return BufferTooSmall("frame shorter than its " + std::to_string(kHeaderBytes) + "-byte header");
  const uint8_t* p = b.data();
  if (std::memcmp(p + kOffMagic, kFrameMagic, 4) != 0) return CorruptData("not a kvcodec frame (bad magic)");
  f.format_version = load_le16(p + kOffVersion);
  if (f.format_version < kMinFormatVersion || f.format_version > kMaxFormatVersion)
    return UnsupportedVersion("frame format version " + std::to_string(f.format_version) + " (this library reads versions " +
                              std::to_string(kMinFormatVersion) + " to " + std::to_string(kMaxFormatVersion) + ")");
  const uint16_t flags = load_le16(p + kOffFlags);
  f.transformed = f.format_version == kTransformFormatVersion;
  f.profile_models = f.transformed && flags == (kFrameFlagTransform | kFrameFlagProfileModels);
  if ((flags != (f.transformed ? kFrameFlagTransform : 0) && !f.profile_models) || load_le32(p + kOffReserved) != 0)
    return CorruptData("reserved header fields are not zero");
  if (!is_valid_dtype(p[kOffDType])) return CorruptData("unknown dtype code " + std::to_string(p[kOffDType]));
  f.dtype = DType(p[kOffDType]);
  f.level = p[kOffLevel];
  if (f.level > kMaxLevel) return CorruptData("level " + std::to_string(f.level) + " out of range");
  if (p[kOffLanes] != kRansLanes || p[kOffProbBits] != kProbBits)
    return CorruptData("rANS lanes/probability bits differ from the format's");
  f.shape.layers = load_le32(p + kOffLayers);
  f.shape.tokens = load_le32(p + kOffTokens);
  f.shape.kv_heads = load_le32(p + kOffKVHeads);
  f.shape.head_dim = load_le32(p + kOffHeadDim);
  if (Status s = validate_shape(f.shape); !s.ok()) return CorruptData(std::string("frame shape: ") + s.message());
  f.chunk_tokens = load_le32(p + kOffChunkTokens);
  f.group_tokens = load_le16(p + kOffGroupTokens);
  f.table_groups = p[kOffTableGroups];
  const uint8_t mode = p[kOffStepMode];
  if (f.chunk_tokens < 1 || f.chunk_tokens > kMaxChunkTokens || f.group_tokens < 1 ||
      f.group_tokens > kMaxGroupTokens || f.table_groups < 1 || f.table_groups > kMaxTableGroups || mode > 1)
    return CorruptData("frame parameters out of range");
  f.step_mode = StepMode(mode);
  if (f.transformed && f.level == 0) return CorruptData("a transform-coded frame at level 0");
  if (f.format_version == kRawPlanesFormatVersion && f.level != 0) return CorruptData("raw byte planes in a lossy frame");
  if (f.profile_models && f.group_tokens != 1) return CorruptData("profile models in a frame with anchor groups");
  num_chunks = load_le32(p + kOffNumChunks);
  if (num_chunks != num_chunks_for(f.shape.tokens, f.chunk_tokens))
    return CorruptData("chunk count does not match tokens / chunk_tokens");
  f.model_bytes = load_le32(p + kOffModelBytes);
  f.frame_bytes = load_le64(p + kOffFrameBytes);
  f.head_bytes = kHeaderBytes + f.model_bytes + uint64_t(num_chunks) * kIndexEntryBytes;
  if (f.frame_bytes < f.head_bytes) return CorruptData("frame size smaller than its head");
  return Status::Ok();
}

// grids = false: a layer model of a frame with profile models (docs/format.md 2.2), whose step
// codes and centres are the profile's and not in the frame.
Status parse_layer_model(ByteReader& r, const FrameInfo& f, LayerModel& m, uint64_t& table_bytes, bool grids = true) {
  const size_t es = dtype_size(f.dtype);
  const uint32_t C = uint32_t(f.shape.channels());
  m.groups = r.u8();
  if (!r.ok() || m.groups < 1 || m.groups > f.table_groups) return CorruptData("bad channel group count");
  m.slots = table_slots(f, es);
  m.tables.resize(size_t(m.groups) * m.slots);
  const size_t tables_begin = r.position();
  std::vector<uint16_t> freqs;
  // Version 5 (docs/format.md 4.5): a marker table (one symbol of frequency 0) makes its plane raw.
  const bool markers = is_lossless(f) && f.format_version == kRawPlanesFormatVersion;
  uint32_t raw = 0, coded = 0;
  for (size_t i = 0; i < m.tables.size(); ++i) {
    TableSpec& t = m.tables[i];
    const uint32_t n = uint32_t(r.u8()) + 1;
    if (!is_lossless(f)) {
      t.qmin = r.i16();
      if (n < 2) return CorruptData("lossy table without an escape symbol");
      if (t.qmin < -255 || int32_t(t.qmin) + int32_t(n) - 2 > 255) return CorruptData("table range out of bounds");
    }
    freqs.resize(n);
    for (auto& q : freqs) {
      const uint32_t v = r.varint();
      if (v > detail::kRansM) return CorruptData("table frequency out of range");
      q = uint16_t(v);
    }
    if (!r.ok()) return CorruptData("model section truncated or malformed in a table");
    const uint32_t plane = uint32_t(1) << (i % m.slots);
    if (markers && n == 1 && freqs[0] == 0) {
      raw |= plane;
      continue;
    }
    coded |= plane;
    auto table = FreqTable::from_freqs(freqs);
    if (!table.ok()) return table.status();
    t.table = std::move(*table);
  }
  if (raw & coded) return CorruptData("a byte plane raw in one channel group and coded in another");
  m.raw_planes = raw;
  table_bytes += uint64_t(r.position() - tables_begin);
  m.channel_group.resize(C);
  for (uint32_t c = 0; c < C; c += 2) {
    const uint8_t b = r.u8();
    m.channel_group[c] = b & 15;
    if (c + 1 < C) m.channel_group[c + 1] = b >> 4;
    else if (b >> 4) return CorruptData("padding nibble not zero");
  }
  if (!r.ok()) return CorruptData("model section truncated or malformed in channel groups");
  for (uint8_t g : m.channel_group)
    if (g >= m.groups) return CorruptData("channel assigned to a missing group");
  if (!is_lossless(f) && grids) {
    m.step_code.resize(C);
    m.center.resize(C);
    int32_t prev = 0;
    for (uint32_t c = 0; c < C; ++c) {
      const int64_t code = int64_t(prev) + unzigzag(r.varint());
      if (code < kMinStepCode || code > kMaxStepCode) return CorruptData("step code out of range");
      m.step_code[c] = prev = int32_t(code);
    }
    for (uint32_t c = 0; c < C; ++c) {
      m.center[c] = unzigzag(r.varint());
      if (m.center[c] < -kMaxCenter || m.center[c] > kMaxCenter) return CorruptData("grid centre out of range");
    }
    if (!r.ok()) return CorruptData("model section truncated or malformed in channel grids");
  }
  return Status::Ok();
}

// The transform block of a version 4 model section: u64 profile digest, u32 first position,
// u8 coefficient dtype (1 = f32), three zero bytes.
Status parse_transform_block(ByteReader& r, FrameInfo& f, FrameInfo& coded) {
  f.profile_digest = r.u64();
  f.first_position = r.u32();
  const uint8_t coef_dtype = r.u8();
  const uint8_t z0 = r.u8(), z1 = r.u8(), z2 = r.u8();
  if (!r.ok()) return CorruptData("transform block truncated");
  if (coef_dtype != uint8_t(DType::kF32) || z0 || z1 || z2) return CorruptData("bad transform block");
  if (uint64_t(f.first_position) + f.shape.tokens > (uint64_t(1) << kRopePositionBits))
    return CorruptData("transform block: positions beyond 2^24");
  coded.dtype = DType::kF32;
  return Status::Ok();
}

}  // namespace

size_t layer_model_prefix_bytes(const LayerModel& m, bool lossless) {
  size_t n = 1 + (m.channel_group.size() + 1) / 2;
  for (size_t i = 0; i < m.tables.size(); ++i) {
    if (m.raw_planes >> (i % m.slots) & 1) {  // a raw plane's marker: n - 1 = 0, frequency 0
      n += 2;
      continue;
    }
    n += lossless ? 1 : 3;
    for (uint16_t f : m.tables[i].table.freq) n += f < 128 ? 1 : 2;  // varints of values <= 4096
  }
  return n;
}

FrameInfo profile_model_info(uint32_t channels) {
  FrameInfo f;
  f.dtype = DType::kF32;
  f.level = 1;
  f.group_tokens = 1;
  f.table_groups = kMaxTableGroups;
  f.shape = KVShape{1, 1, 1, channels};
  return f;
}

Status parse_profile_model(std::span<const uint8_t> bytes, uint32_t channels, LayerModel& m) {
  ByteReader r(bytes);
  uint64_t table_bytes = 0;
  KVCODEC_RETURN_IF_ERROR(parse_layer_model(r, profile_model_info(channels), m, table_bytes));
  if (!r.at_end()) return CorruptData("profile layer model has trailing bytes");
  return Status::Ok();
}

Status require_plain_frame(const FrameInfo& f) {
  if (!f.transformed) return Status::Ok();
  return InvalidArgument("transform-coded frame (format version 4): decode it with its profile, digest " +
                         hex64(f.profile_digest));
}

uint64_t head_checksum(uint16_t version, const uint8_t* head, size_t head_bytes) {
  return frame_checksum(version, ChecksumInput{head, kOffHeadChecksum, head + kHeaderBytes, head_bytes - kHeaderBytes});
}

StatusOr<FrameHead> parse_head(std::span<const uint8_t> b) {
  FrameHead h;
  FrameInfo& f = h.info;
  uint32_t n = 0;
  KVCODEC_RETURN_IF_ERROR(parse_header(b, f, n));
  if (b.size() < f.head_bytes)
    return BufferTooSmall("frame head needs " + std::to_string(f.head_bytes) + " bytes, got " +
                          std::to_string(b.size()));
  if (head_checksum(f.format_version, b.data(), f.head_bytes) != load_le64(b.data() + kOffHeadChecksum))
    return ChecksumMismatch("frame head checksum mismatch");
  // Chunk index: contiguous, in order, ending at frame_bytes.
  const uint8_t* idx = b.data() + kHeaderBytes + f.model_bytes;
  f.chunks.resize(n);
  uint64_t expect = f.head_bytes;
  for (uint32_t i = 0; i < n; ++i, idx += kIndexEntryBytes) {
    ChunkInfo& c = f.chunks[i];
    c.offset = load_le64(idx);
    c.size = load_le32(idx + 8);
    c.checksum = load_le64(idx + 16);
    c.token_begin = i * f.chunk_tokens;
    c.tokens = std::min(f.chunk_tokens, f.shape.tokens - c.token_begin);
    if (c.offset != expect || load_le32(idx + 12) != 0) return CorruptData("chunk index is not contiguous");
    expect += c.size;
  }
  if (expect != f.frame_bytes) return CorruptData("chunk sizes do not add up to the frame size");
  // Model section. Its smallest possible size bounds what parsing may allocate, so a forged
  // header with a huge shape cannot make us allocate more than a small multiple of the input.
  const uint64_t C = f.shape.channels();
  const uint64_t min_layer_model = f.profile_models ? 1 : (C + 1) / 2 + (is_lossless(f) ? 0 : 2 * C);  // 2.2: a source byte
  const uint32_t block = f.transformed ? kTransformBlockBytes : 0;
  if (f.model_bytes < block + 2ull * f.shape.layers * min_layer_model)
    return CorruptData("model section too small for the frame's shape");
  ByteReader r(b.subspan(kHeaderBytes, f.model_bytes));
  FrameInfo coded = f;  // a transform-coded frame codes fp32 coefficients (docs/format.md 2.1)
  if (f.transformed) KVCODEC_RETURN_IF_ERROR(parse_transform_block(r, f, coded));
  h.layers.resize(size_t(f.shape.layers) * 2);
  for (auto& m : h.layers) {
    if (f.profile_models) {  // the source byte (docs/format.md 2.2)
      const uint8_t source = r.u8();
      if (!r.ok() || source > 1) return CorruptData("bad layer model source");
      if (source == 1) {
        m.from_profile = true;
        ++f.profile_model_refs;
        continue;
      }
    }
    KVCODEC_RETURN_IF_ERROR(parse_layer_model(r, coded, m, f.table_bytes, !f.profile_models));
  }
  if (!r.at_end()) return CorruptData("model section has trailing bytes");
  return h;
}

}  // namespace detail

StatusOr<uint64_t> frame_head_size(std::span<const uint8_t> header) {
  FrameInfo f;
  uint32_t n;
  KVCODEC_RETURN_IF_ERROR(detail::parse_header(header, f, n));
  return f.head_bytes;
}

StatusOr<FrameInfo> read_frame_info(std::span<const uint8_t> bytes) {
  KVCODEC_ASSIGN_OR_RETURN(detail::FrameHead h, detail::parse_head(bytes));
  return std::move(h.info);
}

Status verify_frame(std::span<const uint8_t> frame) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo f, read_frame_info(frame));
  if (frame.size() < f.frame_bytes)
    return BufferTooSmall("frame truncated: " + std::to_string(frame.size()) + " of " + std::to_string(f.frame_bytes) + " bytes");
  if (frame.size() > f.frame_bytes)
    return CorruptData(std::to_string(frame.size() - f.frame_bytes) + " bytes after the frame's " +
                       std::to_string(f.frame_bytes));
  for (size_t i = 0; i < f.chunks.size(); ++i) {
    const auto& c = f.chunks[i];
    if (detail::frame_checksum_host(f.format_version, frame.data() + c.offset, c.size) != c.checksum)
      return ChecksumMismatch("chunk " + std::to_string(i) + " checksum mismatch");
  }
  return Status::Ok();
}

}  // namespace kvcodec
