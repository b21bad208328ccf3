// Putting a context into a store as multi-level chunks, and reading its pieces back verified.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "common/metrics.hpp"
#include "common/xxh64.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/store.hpp"

namespace kvcodec {

namespace {

// ||a - b|| / ||a|| over tokens [0, tokens) of two views of the same shape and dtype.
double relative_error(const KVView& a, const KVView& b, uint32_t tokens) {
  const uint8_t dt = uint8_t(a.dtype);
  const size_t es = dtype_size(a.dtype);
  double err = 0, ref = 0;
  for (uint32_t l = 0; l < a.shape.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < tokens; ++t)
        for (uint32_t h = 0; h < a.shape.kv_heads; ++h) {
          const auto* pa = static_cast<const uint8_t*>(a.element(l, kv, t, h, 0));
          const auto* pb = static_cast<const uint8_t*>(b.element(l, kv, t, h, 0));
          for (uint32_t d = 0; d < a.shape.head_dim; ++d) {
            const double x = detail::load_as_f32(pa + d * a.stride[4] * int64_t(es), dt);
            const double y = detail::load_as_f32(pb + d * b.stride[4] * int64_t(es), dt);
            err += (x - y) * (x - y);
            ref += x * x;
          }
        }
  return ref > 0 ? std::sqrt(err / ref) : std::sqrt(err);
}

// A failed store write, recorded (kStoreError) before it is returned.
Status recorded(MetricsSink* sink, Status s) {
  if (!s.ok()) {
    MetricEvent e;
    e.kind = MetricKind::kStoreError;
    e.code = s.code();
    e.what = "put";
    detail::record(sink, e);
  }
  return s;
}

// Decodes chunks [0, chunks) of the level's frame `bytes` into `dst` with the client's decoder
// (FrameDecoder, with the level's profile) and returns the warm decode speed of its chunk 0, GB/s
// of decoded KV: the median of three decodes after the first pass (the stored chunk as a fetch
// decodes it; for a transform-coded level that includes the inverse transform).
StatusOr<double> decode_and_time(std::span<const uint8_t> bytes, const FrameInfo& info, const Manifest& m,
                                 std::shared_ptr<const Profile> profile, uint32_t chunks, const KVView& dst,
                                 int threads) {
  KVCODEC_ASSIGN_OR_RETURN(FrameDecoder decoder, FrameDecoder::open(bytes.first(info.head_bytes), std::move(profile)));
  DecodeOptions dopt;
  dopt.threads = threads;
  auto body = [&](uint32_t c) { return bytes.subspan(info.chunks[c].offset, info.chunks[c].size); };
  for (uint32_t c = 0; c < chunks; ++c) KVCODEC_RETURN_IF_ERROR(decoder.decode_chunk(c, body(c), dst, dopt));
  std::vector<double> seconds;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    KVCODEC_RETURN_IF_ERROR(decoder.decode_chunk(0, body(0), dst, dopt));
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[1] > 0 ? double(m.raw_chunk_bytes(0)) / seconds[1] / 1e9 : 0.0;
}

}  // namespace

StatusOr<Manifest> put_context(Store& store, std::string_view id, const KVView& kv,
                               const PutOptions& options) {
  KVCODEC_RETURN_IF_ERROR(validate_context_id(id));
  KVCODEC_RETURN_IF_ERROR(validate_view(kv));
  std::vector<int> levels = options.levels;
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  if (levels.empty()) return InvalidArgument("put: no levels given");
  if (levels.front() < 0 || levels.back() > kMaxLevel)
    return InvalidArgument("put: levels must be in 0.." + std::to_string(kMaxLevel));
  if (!options.text_tokens.empty() && options.text_tokens.size() != kv.shape.tokens)
    return InvalidArgument("put: " + std::to_string(options.text_tokens.size()) +
                           " text tokens for a context of " + std::to_string(kv.shape.tokens) +
                           " tokens (need one per token)");

  Manifest m;
  m.dtype = kv.dtype;
  m.shape = kv.shape;
  m.chunk_tokens = options.chunk_tokens;
  m.text_tokens = options.text_tokens;

  const WriteOptions write{options.ttl_seconds};
  std::vector<uint8_t> frame;
  KVCache scratch;  // decoded level, when measuring
  for (int level : levels) {
    EncodeOptions eo;
    eo.level = level;
    eo.chunk_tokens = options.chunk_tokens;
    eo.threads = options.threads;
    eo.metrics = options.metrics;
    KVCODEC_RETURN_IF_ERROR(validate_options(eo).with_context("put"));
    const Profile* profile = level > 0 ? options.profile.get() : nullptr;  // level 0: lossless, no transform
    const size_t bound = profile ? max_encoded_size(kv.shape, kv.dtype, eo, *profile)
                                 : max_encoded_size(kv.shape, kv.dtype, eo);
    if (bound == 0) return InvalidArgument("put: shape or options rejected by the encoder");
    if (frame.size() < bound) frame.resize(bound);
    const std::string where = "put level " + std::to_string(level);
    KVCODEC_ASSIGN_OR_RETURN(size_t n, profile ? encode_into(kv, eo, *profile, frame, options.first_position)
                                               : encode_into(kv, eo, frame));
    std::span<const uint8_t> bytes(frame.data(), n);
    KVCODEC_ASSIGN_OR_RETURN(FrameInfo info, read_frame_info(bytes));
    if (info.chunks.size() != m.num_chunks())
      return Internal(where + ": frame has an unexpected chunk count");

    ManifestLevel ml;
    ml.level = level;
    ml.head_bytes = info.head_bytes;
    auto head = bytes.first(info.head_bytes);
    ml.head_checksum = detail::xxh64(head.data(), head.size());
    if (info.transformed) ml.profile_digest = info.profile_digest;
    // The level's head and bodies in one batch (one pipelined round trip on Redis).
    std::vector<std::string> keys;
    keys.reserve(info.chunks.size() + 1);  // items point into keys: no reallocation below
    keys.push_back(head_key(id, level));
    std::vector<KeyValue> items = {{keys[0], head}};
    for (uint32_t c = 0; c < info.chunks.size(); ++c) {
      const ChunkInfo& ci = info.chunks[c];
      if (ci.offset + ci.size > n) return Internal(where + ": chunk outside the frame");
      auto body = bytes.subspan(ci.offset, ci.size);
      ml.chunks.push_back({ci.size, detail::xxh64(body.data(), body.size())});
      keys.push_back(chunk_key(id, level, c));
      items.push_back({keys.back(), body});
    }
    KVCODEC_RETURN_IF_ERROR(recorded(options.metrics, store.put_many(items, write)).with_context(where));
    if (options.measure) {
      if (!scratch.data.size()) {
        KVCODEC_ASSIGN_OR_RETURN(scratch, KVCache::allocate(kv.dtype, kv.shape));
      }
      const uint32_t chunks = options.measure_chunks ? std::min(options.measure_chunks, m.num_chunks()) : m.num_chunks();
      const uint32_t tokens = std::min(kv.shape.tokens, chunks * m.chunk_tokens);
      StatusOr<double> gbps = decode_and_time(bytes, info, m, profile ? options.profile : nullptr, chunks,
                                              scratch.view(), options.threads);
      if (!gbps.ok()) return gbps.status().with_context(where);
      ml.decode_gbps = *gbps;
      ml.rel_error = level == 0 ? 0.0 : relative_error(kv, scratch.view(), tokens);
    }
    m.levels.push_back(std::move(ml));
  }
  // Last: a manifest that can be read always describes pieces that are all in the store.
  const std::string key = manifest_key(id);
  const std::vector<uint8_t> manifest = serialize_manifest(m);
  const KeyValue item{key, manifest};
  KVCODEC_RETURN_IF_ERROR(recorded(options.metrics, store.put_many({&item, 1}, write)).with_context("put manifest"));
  return m;
}

StatusOr<Manifest> get_manifest(Store& store, std::string_view id) {
  KVCODEC_RETURN_IF_ERROR(validate_context_id(id));
  KVCODEC_ASSIGN_OR_RETURN(auto bytes, store.get(manifest_key(id)));
  return parse_manifest(bytes);
}

Status append_head(Store& store, std::string_view id, const Manifest& m, int level, std::vector<uint8_t>& out) {
  const ManifestLevel* l = m.find_level(level);
  if (!l) return NotFound("level " + std::to_string(level) + " is not stored");
  const size_t at = out.size();
  KVCODEC_RETURN_IF_ERROR(store.get_append(head_key(id, level), out, l->head_bytes));
  const Status s = verify_head(m, level, std::span(out).subspan(at));
  if (!s.ok()) out.resize(at);
  return s;
}

Status append_chunk(Store& store, std::string_view id, const Manifest& m, int level, uint32_t chunk,
                    std::vector<uint8_t>& out) {
  const ManifestLevel* l = m.find_level(level);
  if (!l) return NotFound("level " + std::to_string(level) + " is not stored");
  if (chunk >= l->chunks.size()) return OutOfRange("chunk " + std::to_string(chunk) + " out of range");
  const size_t at = out.size();
  KVCODEC_RETURN_IF_ERROR(store.get_append(chunk_key(id, level, chunk), out, l->chunks[chunk].size));
  const Status s = verify_chunk(m, level, chunk, std::span(out).subspan(at));
  if (!s.ok()) out.resize(at);
  return s;
}

StatusOr<std::vector<uint8_t>> get_head(Store& store, std::string_view id, const Manifest& m, int level) {
  std::vector<uint8_t> out;
  KVCODEC_RETURN_IF_ERROR(append_head(store, id, m, level, out));
  return out;
}

StatusOr<std::vector<uint8_t>> get_chunk(Store& store, std::string_view id, const Manifest& m, int level,
                                         uint32_t chunk) {
  std::vector<uint8_t> out;
  KVCODEC_RETURN_IF_ERROR(append_chunk(store, id, m, level, chunk, out));
  return out;
}

Status remove_context(Store& store, std::string_view id) {
  KVCODEC_ASSIGN_OR_RETURN(Manifest m, get_manifest(store, id));
  std::vector<std::string> keys = {manifest_key(id)};  // first: the context disappears at once
  for (const auto& l : m.levels) {
    keys.push_back(head_key(id, l.level));
    for (uint32_t c = 0; c < l.chunks.size(); ++c) keys.push_back(chunk_key(id, l.level, c));
  }
  return store.remove_many(keys);
}

StatusOr<std::vector<std::string>> list_contexts(Store& store) {
  constexpr std::string_view kPrefix = "kvc:{", kSuffix = "}:manifest";
  KVCODEC_ASSIGN_OR_RETURN(auto keys, store.list_keys(kPrefix));
  std::vector<std::string> ids;
  for (const std::string& k : keys) {
    if (k.size() <= kPrefix.size() + kSuffix.size() || k.compare(k.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0)
      continue;
    std::string id = k.substr(kPrefix.size(), k.size() - kPrefix.size() - kSuffix.size());
    if (validate_context_id(id).ok() && manifest_key(id) == k) ids.push_back(std::move(id));
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace kvcodec
