// Frame head: header, model section, chunk index (docs/format.md is the normative spec).
#include <cstring>
#include <string>

#include "common/frame.hpp"
#include "common/rans_lanes.hpp"
#include "common/model_values.hpp"
#include "common/quant.hpp"

namespace kvcodec {
namespace detail {

namespace {

// Header field offsets (docs/format.md, "Header").
enum : size_t {
  kOffMagic = 0,
  kOffVersion = 4,
  kOffFlags = 6,
  kOffDType = 8,
  kOffLevel = 9,
  kOffLanes = 10,
  kOffProbBits = 11,
  kOffLayers = 12,
  kOffTokens = 16,
  kOffKVHeads = 20,
  kOffHeadDim = 24,
  kOffChunkTokens = 28,
  kOffGroupTokens = 32,
  kOffTableGroups = 34,
  kOffStepMode = 35,
  kOffNumChunks = 36,
  kOffModelBytes = 40,
  kOffReserved = 44,
  kOffFrameBytes = 48,
  kOffHeadChecksum = 56,
};

template <typename T>
void put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

void put_varint(std::vector<uint8_t>& out, uint32_t v) {
  uint8_t b[5];
  out.insert(out.end(), b, b + detail::put_varint(b, v));
}
int32_t unzigzag(uint32_t v) { return int32_t(v >> 1) ^ -int32_t(v & 1); }

// Bounds-checked reader over the model section.
struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  bool ok = true;
  uint8_t u8() {
    if (p >= end) return ok = false, 0;
    return *p++;
  }
  int16_t i16() {
    if (end - p < 2) return ok = false, 0;
    int16_t v = get<int16_t>(p);
    p += 2;
    return v;
  }
  uint32_t varint() {
    uint32_t v = 0;
    for (int shift = 0; shift < 35; shift += 7) {
      if (p >= end) return ok = false, 0;
      uint8_t b = *p++;
      if (shift == 28 && (b & 0xf0)) return ok = false, 0;  // more than 32 bits
      v |= uint32_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    return ok = false, 0;
  }
};

uint64_t head_checksum(uint16_t version, const uint8_t* head, size_t head_bytes) {
  return frame_checksum(version, ChecksumInput{head, kOffHeadChecksum, head + kHeaderBytes, head_bytes - kHeaderBytes});
}

Status parse_header(std::span<const uint8_t> b, FrameInfo& f, uint32_t& num_chunks) {
  if (b.size() < kHeaderBytes)
    return BufferTooSmall("frame shorter than its " + std::to_string(kHeaderBytes) + "-byte header");
  const uint8_t* p = b.data();
  if (std::memcmp(p + kOffMagic, kFrameMagic, 4) != 0) return CorruptData("not a kvcodec frame (bad magic)");
  f.format_version = get<uint16_t>(p + kOffVersion);
  if (f.format_version < kMinFormatVersion || f.format_version > kMaxFormatVersion)
    return UnsupportedVersion("frame format version " + std::to_string(f.format_version) + " (this library reads versions " +
                              std::to_string(kMinFormatVersion) + " to " + std::to_string(kMaxFormatVersion) + ")");
  if (get<uint16_t>(p + kOffFlags) != 0 || get<uint32_t>(p + kOffReserved) != 0)
    return CorruptData("reserved header fields are not zero");
  if (!is_valid_dtype(p[kOffDType])) return CorruptData("unknown dtype code " + std::to_string(p[kOffDType]));
  f.dtype = DType(p[kOffDType]);
  f.level = p[kOffLevel];
  if (f.level > kMaxLevel) return CorruptData("level " + std::to_string(f.level) + " out of range");
  if (p[kOffLanes] != kRansLanes || p[kOffProbBits] != kProbBits)
    return CorruptData("rANS lanes/probability bits differ from the format's");
  f.shape.layers = get<uint32_t>(p + kOffLayers);
  f.shape.tokens = get<uint32_t>(p + kOffTokens);
  f.shape.kv_heads = get<uint32_t>(p + kOffKVHeads);
  f.shape.head_dim = get<uint32_t>(p + kOffHeadDim);
  if (Status s = validate_shape(f.shape); !s.ok()) return CorruptData(std::string("frame shape: ") + s.message());
  f.chunk_tokens = get<uint32_t>(p + kOffChunkTokens);
  f.group_tokens = get<uint16_t>(p + kOffGroupTokens);
  f.table_groups = p[kOffTableGroups];
  const uint8_t mode = p[kOffStepMode];
  if (f.chunk_tokens < 1 || f.chunk_tokens > kMaxChunkTokens || f.group_tokens < 1 ||
      f.group_tokens > kMaxGroupTokens || f.table_groups < 1 || f.table_groups > kMaxTableGroups || mode > 1)
    return CorruptData("frame parameters out of range");
  f.step_mode = StepMode(mode);
  num_chunks = get<uint32_t>(p + kOffNumChunks);
  if (num_chunks != num_chunks_for(f.shape.tokens, f.chunk_tokens))
    return CorruptData("chunk count does not match tokens / chunk_tokens");
  f.model_bytes = get<uint32_t>(p + kOffModelBytes);
  f.frame_bytes = get<uint64_t>(p + kOffFrameBytes);
  f.head_bytes = kHeaderBytes + f.model_bytes + uint64_t(num_chunks) * kIndexEntryBytes;
  if (f.frame_bytes < f.head_bytes) return CorruptData("frame size smaller than its head");
  return Status::Ok();
}

Status parse_layer_model(Reader& r, const FrameInfo& f, LayerModel& m, uint64_t& table_bytes) {
  const size_t es = dtype_size(f.dtype);
  const uint32_t C = uint32_t(f.shape.channels());
  m.groups = r.u8();
  if (!r.ok || m.groups < 1 || m.groups > f.table_groups) return CorruptData("bad channel group count");
  m.slots = table_slots(f, es);
  m.tables.resize(size_t(m.groups) * m.slots);
  const uint8_t* tables_begin = r.p;
  std::vector<uint16_t> freqs;
  for (auto& t : m.tables) {
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
    if (!r.ok) return CorruptData("model section truncated in a table");
    auto table = FreqTable::from_freqs(freqs);
    if (!table.ok()) return table.status();
    t.table = std::move(*table);
  }
  table_bytes += uint64_t(r.p - tables_begin);
  m.channel_group.resize(C);
  for (uint32_t c = 0; c < C; c += 2) {
    const uint8_t b = r.u8();
    m.channel_group[c] = b & 15;
    if (c + 1 < C) m.channel_group[c + 1] = b >> 4;
    else if (b >> 4) return CorruptData("padding nibble not zero");
  }
  if (!r.ok) return CorruptData("model section truncated in channel groups");
  for (uint8_t g : m.channel_group)
    if (g >= m.groups) return CorruptData("channel assigned to a missing group");
  if (!is_lossless(f)) {
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
    if (!r.ok) return CorruptData("model section truncated in channel grids");
  }
  return Status::Ok();
}

}  // namespace

size_t write_layer_model(const FrameInfo& f, const LayerModel& m, std::vector<uint8_t>& out) {
  out.push_back(uint8_t(m.groups));
  const size_t tables_begin = out.size();
  for (const auto& t : m.tables) {
    out.push_back(uint8_t(t.table.size() - 1));
    if (!is_lossless(f)) {
      out.resize(out.size() + 2);
      put<int16_t>(out.data() + out.size() - 2, t.qmin);
    }
    for (uint16_t q : t.table.freq) put_varint(out, q);
  }
  const size_t table_bytes = out.size() - tables_begin;
  const size_t C = m.channel_group.size();
  for (size_t c = 0; c < C; c += 2)
    out.push_back(uint8_t(m.channel_group[c] | (c + 1 < C ? m.channel_group[c + 1] << 4 : 0)));
  if (!is_lossless(f)) {
    int32_t prev = 0;
    for (int32_t code : m.step_code) {
      put_varint(out, zigzag32(code - prev));
      prev = code;
    }
    for (int32_t c : m.center) put_varint(out, zigzag32(c));
  }
  return table_bytes;
}

void write_head(FrameInfo& f, std::span<const uint8_t> model, std::vector<uint8_t>& out) {
  const uint32_t n = uint32_t(f.chunks.size());
  // Version 2, or 3 when the encoder put a stored unit in the frame (docs/format.md 4.4).
  if (f.format_version != kStoredUnitsFormatVersion) f.format_version = kFormatVersion;
  f.model_bytes = model.size();
  f.head_bytes = kHeaderBytes + model.size() + uint64_t(n) * kIndexEntryBytes;
  uint64_t offset = f.head_bytes;
  for (uint32_t i = 0; i < n; ++i) {
    f.chunks[i].offset = offset;
    f.chunks[i].token_begin = i * f.chunk_tokens;
    offset += f.chunks[i].size;
  }
  f.frame_bytes = offset;

  out.assign(f.head_bytes, 0);
  uint8_t* p = out.data();
  std::memcpy(p + kOffMagic, kFrameMagic, 4);
  put<uint16_t>(p + kOffVersion, f.format_version);
  p[kOffDType] = uint8_t(f.dtype);
  p[kOffLevel] = uint8_t(f.level);
  p[kOffLanes] = uint8_t(kRansLanes);
  p[kOffProbBits] = uint8_t(kProbBits);
  put<uint32_t>(p + kOffLayers, f.shape.layers);
  put<uint32_t>(p + kOffTokens, f.shape.tokens);
  put<uint32_t>(p + kOffKVHeads, f.shape.kv_heads);
  put<uint32_t>(p + kOffHeadDim, f.shape.head_dim);
  put<uint32_t>(p + kOffChunkTokens, f.chunk_tokens);
  put<uint16_t>(p + kOffGroupTokens, uint16_t(f.group_tokens));
  p[kOffTableGroups] = uint8_t(f.table_groups);
  p[kOffStepMode] = uint8_t(f.step_mode);
  put<uint32_t>(p + kOffNumChunks, n);
  put<uint32_t>(p + kOffModelBytes, uint32_t(model.size()));
  put<uint64_t>(p + kOffFrameBytes, f.frame_bytes);
  std::memcpy(p + kHeaderBytes, model.data(), model.size());
  uint8_t* idx = p + kHeaderBytes + model.size();
  for (uint32_t i = 0; i < n; ++i, idx += kIndexEntryBytes) {
    put<uint64_t>(idx, f.chunks[i].offset);
    put<uint32_t>(idx + 8, f.chunks[i].size);
    put<uint32_t>(idx + 12, 0);
    put<uint64_t>(idx + 16, f.chunks[i].checksum);
  }
  put<uint64_t>(p + kOffHeadChecksum, head_checksum(f.format_version, p, f.head_bytes));
}

StatusOr<FrameHead> parse_head(std::span<const uint8_t> b) {
  FrameHead h;
  FrameInfo& f = h.info;
  uint32_t n = 0;
  KVCODEC_RETURN_IF_ERROR(parse_header(b, f, n));
  if (b.size() < f.head_bytes)
    return BufferTooSmall("frame head needs " + std::to_string(f.head_bytes) + " bytes, got " +
                          std::to_string(b.size()));
  if (head_checksum(f.format_version, b.data(), f.head_bytes) != get<uint64_t>(b.data() + kOffHeadChecksum))
    return ChecksumMismatch("frame head checksum mismatch");
  // Chunk index: contiguous, in order, ending at frame_bytes.
  const uint8_t* idx = b.data() + kHeaderBytes + f.model_bytes;
  f.chunks.resize(n);
  uint64_t expect = f.head_bytes;
  for (uint32_t i = 0; i < n; ++i, idx += kIndexEntryBytes) {
    ChunkInfo& c = f.chunks[i];
    c.offset = get<uint64_t>(idx);
    c.size = get<uint32_t>(idx + 8);
    c.checksum = get<uint64_t>(idx + 16);
    c.token_begin = i * f.chunk_tokens;
    c.tokens = std::min(f.chunk_tokens, f.shape.tokens - c.token_begin);
    if (c.offset != expect || get<uint32_t>(idx + 12) != 0) return CorruptData("chunk index is not contiguous");
    expect += c.size;
  }
  if (expect != f.frame_bytes) return CorruptData("chunk sizes do not add up to the frame size");
  // Model section. Its smallest possible size bounds what parsing may allocate, so a forged
  // header with a huge shape cannot make us allocate more than a small multiple of the input.
  const uint64_t C = f.shape.channels();
  const uint64_t min_layer_model = (C + 1) / 2 + (is_lossless(f) ? 0 : 2 * C);
  if (f.model_bytes < 2ull * f.shape.layers * min_layer_model)
    return CorruptData("model section too small for the frame's shape");
  Reader r{b.data() + kHeaderBytes, b.data() + kHeaderBytes + f.model_bytes};
  h.layers.resize(size_t(f.shape.layers) * 2);
  for (auto& m : h.layers) KVCODEC_RETURN_IF_ERROR(parse_layer_model(r, f, m, f.table_bytes));
  if (r.p != r.end) return CorruptData("model section has trailing bytes");
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
  for (size_t i = 0; i < f.chunks.size(); ++i) {
    const auto& c = f.chunks[i];
    if (detail::frame_checksum(f.format_version, frame.data() + c.offset, c.size) != c.checksum)
      return ChecksumMismatch("chunk " + std::to_string(i) + " checksum mismatch");
  }
  return Status::Ok();
}

}  // namespace kvcodec
