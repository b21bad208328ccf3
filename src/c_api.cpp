// The C API (include/kvcodec/kvcodec.h) over the C++ API: argument checks, view conversion,
// thread-local last-error message.
#include "kvcodec/kvcodec.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>

#include "kvcodec/codec.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"
#include "kvcodec/version.hpp"

namespace kvcodec {
namespace {

#define KVCODEC_PIN(c_name, cpp_name) static_assert(int32_t(c_name) == int32_t(cpp_name), #c_name)
KVCODEC_PIN(KVCODEC_OK, StatusCode::kOk);
KVCODEC_PIN(KVCODEC_INVALID_ARGUMENT, StatusCode::kInvalidArgument);
KVCODEC_PIN(KVCODEC_CORRUPT_DATA, StatusCode::kCorruptData);
KVCODEC_PIN(KVCODEC_UNSUPPORTED_VERSION, StatusCode::kUnsupportedVersion);
KVCODEC_PIN(KVCODEC_BUFFER_TOO_SMALL, StatusCode::kBufferTooSmall);
KVCODEC_PIN(KVCODEC_CHECKSUM_MISMATCH, StatusCode::kChecksumMismatch);
KVCODEC_PIN(KVCODEC_OUT_OF_RANGE, StatusCode::kOutOfRange);
KVCODEC_PIN(KVCODEC_UNAVAILABLE, StatusCode::kUnavailable);
KVCODEC_PIN(KVCODEC_IO_ERROR, StatusCode::kIoError);
KVCODEC_PIN(KVCODEC_NOT_FOUND, StatusCode::kNotFound);
KVCODEC_PIN(KVCODEC_TIMEOUT, StatusCode::kTimeout);
KVCODEC_PIN(KVCODEC_RESOURCE_EXHAUSTED, StatusCode::kResourceExhausted);
KVCODEC_PIN(KVCODEC_INTERNAL, StatusCode::kInternal);
KVCODEC_PIN(KVCODEC_DTYPE_F32, DType::kF32);
KVCODEC_PIN(KVCODEC_DTYPE_F16, DType::kF16);
KVCODEC_PIN(KVCODEC_DTYPE_BF16, DType::kBF16);
KVCODEC_PIN(KVCODEC_DTYPE_F8E4M3, DType::kF8E4M3);
KVCODEC_PIN(KVCODEC_PAGED_NHD, PagedOrder::kNHD);
KVCODEC_PIN(KVCODEC_PAGED_HND, PagedOrder::kHND);
#undef KVCODEC_PIN

thread_local char g_last_error[Status::kMaxMessage + 1] = {0};

int32_t record(const Status& s) noexcept {
  std::strncpy(g_last_error, s.message(), sizeof(g_last_error) - 1);
  g_last_error[sizeof(g_last_error) - 1] = '\0';
  return int32_t(s.code());
}
int32_t ok() noexcept {
  g_last_error[0] = '\0';
  return KVCODEC_OK;
}
int32_t invalid(const char* message) noexcept { return record(InvalidArgument(message)); }
// For functions returning a size: records the error, returns 0.
size_t no_size(const Status& s) noexcept {
  record(s);
  return 0;
}

KVShape to_shape(const kvcodec_shape& s) noexcept { return {s.layers, s.tokens, s.kv_heads, s.head_dim}; }
kvcodec_shape from_shape(const KVShape& s) noexcept { return {s.layers, s.tokens, s.kv_heads, s.head_dim}; }

StatusOr<PagedOrder> paged_order(int32_t order) {
  if (order == KVCODEC_PAGED_NHD) return PagedOrder::kNHD;
  if (order == KVCODEC_PAGED_HND) return PagedOrder::kHND;
  return InvalidArgument("view: paged_order must be KVCODEC_PAGED_NHD (0) or KVCODEC_PAGED_HND (1)");
}

// A paged C view's C++ view: `base` built with its block table, then switched to the slot
// mapping when that is the one given (exactly one of the two).
StatusOr<KVView> paged(const kvcodec_view& v, const KVView& base) {
  if (!v.block_table == !v.slot_mapping)
    return InvalidArgument("paged view: set exactly one of block_table and slot_mapping");
  return v.slot_mapping ? with_slot_mapping(base, v.slot_mapping) : base;
}

Status check_mla(const KVShape& s) {
  if (s.kv_heads != 1)
    return InvalidArgument("MLA view: the shape must come from kvcodec_mla_shape (kv_heads 1, head_dim latent / 2)");
  return Status::Ok();
}

// The C++ view of a C view (geometry not yet validated beyond what the conversion needs).
StatusOr<KVView> to_view(const kvcodec_view* cv) {
  if (!cv) return InvalidArgument("view is NULL");
  const kvcodec_view& v = *cv;
  if (v.dtype < 1 || v.dtype > 255 || !is_valid_dtype(uint8_t(v.dtype)))
    return InvalidArgument("view: unknown dtype " + std::to_string(v.dtype));
  const auto dt = DType(v.dtype);
  const KVShape s = to_shape(v.shape);
  switch (v.layout) {
    case KVCODEC_LAYOUT_CONTIGUOUS: return contiguous_view(v.data, dt, s);
    case KVCODEC_LAYOUT_LMCACHE: return lmcache_view(v.data, dt, s);
    case KVCODEC_LAYOUT_STRIDED: {
      KVView out = contiguous_view(v.data, dt, s);
      std::copy(v.strides, v.strides + 5, out.stride);
      return out;
    }
    case KVCODEC_LAYOUT_PER_LAYER:
    case KVCODEC_LAYOUT_HF:
      return per_layer_view(v.layer_k, v.layer_v, dt, s, v.layout == KVCODEC_LAYOUT_HF);
    case KVCODEC_LAYOUT_MLA:
      KVCODEC_RETURN_IF_ERROR(check_mla(s));
      return mla_view(v.data, dt, s);
    case KVCODEC_LAYOUT_MLA_PAGED:
      KVCODEC_RETURN_IF_ERROR(check_mla(s));
      return paged(v, mla_paged_view(v.layer_k, dt, s, v.block_table, v.num_blocks, v.block_size));
    default: break;
  }
  if (v.layout == KVCODEC_LAYOUT_VLLM_PAGED || v.layout == KVCODEC_LAYOUT_PAGED_KV_SPLIT ||
      v.layout == KVCODEC_LAYOUT_FLASHINFER) {
    KVCODEC_ASSIGN_OR_RETURN(const PagedOrder order, paged_order(v.paged_order));
    const int32_t* bt = v.block_table;
    const uint32_t nb = v.num_blocks, bs = v.block_size;
    if (v.layout == KVCODEC_LAYOUT_VLLM_PAGED) return paged(v, vllm_paged_view(v.layer_k, dt, s, bt, nb, bs, order));
    if (v.layout == KVCODEC_LAYOUT_FLASHINFER)
      return paged(v, flashinfer_paged_view(v.layer_k, dt, s, bt, nb, bs, order));
    if (!v.layer_v) return InvalidArgument("paged K/V split view: layer_v is NULL");
    return paged(v, paged_kv_split_view(v.layer_k, v.layer_v, dt, s, bt, nb, bs, order));
  }
  return InvalidArgument("view: unknown layout " + std::to_string(v.layout));
}

StatusOr<KVView> checked_view(const kvcodec_view* cv) {
  KVCODEC_ASSIGN_OR_RETURN(KVView v, to_view(cv));
  KVCODEC_RETURN_IF_ERROR(validate_view(v));
  return v;
}

EncodeOptions to_options(const kvcodec_encode_options* o) {
  EncodeOptions e;
  if (!o) return e;
  e.level = o->level;
  e.chunk_tokens = o->chunk_tokens;
  e.group_tokens = o->group_tokens;
  e.table_groups = o->table_groups;
  e.step_mode = (o->step_mode == 0) ? StepMode::kChannel : o->step_mode == 1 ? StepMode::kLayer : StepMode(0xFF);
  e.threads = o->threads;
  return e;
}

StatusOr<DecodeOptions> to_options(const kvcodec_decode_options* o) {
  DecodeOptions d;
  if (!o) return d;
  if (o->threads < 0) return InvalidArgument("decode options: threads must be >= 0");
  d.chunk_begin = o->chunk_begin;
  d.chunk_end = o->chunk_end;
  d.layer_begin = o->layer_begin;
  d.layer_end = o->layer_end;
  d.verify_checksums = o->verify_checksums != 0;
  d.threads = o->threads;
  return d;
}

kvcodec_frame_info from_info(const FrameInfo& f) noexcept {
  kvcodec_frame_info out{};
  out.format_version = f.format_version;
  out.dtype = int32_t(f.dtype);
  out.shape = from_shape(f.shape);
  out.level = f.level;
  out.chunk_tokens = f.chunk_tokens;
  out.group_tokens = f.group_tokens;
  out.table_groups = f.table_groups;
  out.step_mode = int32_t(f.step_mode);
  out.num_chunks = uint32_t(f.chunks.size());
  out.head_bytes = f.head_bytes;
  out.model_bytes = f.model_bytes;
  out.table_bytes = f.table_bytes;
  out.frame_bytes = f.frame_bytes;
  return out;
}

std::span<const uint8_t> bytes_of(const void* p, size_t n) noexcept {
  return {static_cast<const uint8_t*>(p), p ? n : 0};
}

}  // namespace
}  // namespace kvcodec

using namespace kvcodec;  // NOLINT: this file only implements the C functions below

struct kvcodec_decoder {
  FrameDecoder decoder;
};

struct kvcodec_profile {
  std::shared_ptr<const Profile> profile;
};

namespace {

int32_t new_profile(StatusOr<Profile> p, kvcodec_profile** out) {
  if (!p.ok()) return record(p.status());
  auto* h = new (std::nothrow) kvcodec_profile{std::make_shared<const Profile>(std::move(*p))};
  if (!h) return record(ResourceExhausted("kvcodec_profile: out of memory"));
  *out = h;
  return ok();
}

}  // namespace

extern "C" {

const char* kvcodec_version(void) { return kLibraryVersion; }
uint32_t kvcodec_version_number(void) {
  return KVCODEC_VERSION_MAJOR * 10000u + KVCODEC_VERSION_MINOR * 100u + KVCODEC_VERSION_PATCH;
}
uint32_t kvcodec_format_version(void) { return kMaxFormatVersion; }

const char* kvcodec_status_name(int32_t code) {
  if (code < 0 || code > int32_t(StatusCode::kInternal)) return "unknown";
  return status_code_name(StatusCode(code));
}

const char* kvcodec_last_error(void) { return g_last_error; }

size_t kvcodec_last_error_copy(char* buf, size_t cap) {
  const size_t n = std::strlen(g_last_error);
  if (buf && cap) {
    const size_t k = std::min(n, cap - 1);
    std::memcpy(buf, g_last_error, k);
    buf[k] = '\0';
  }
  return n;
}

size_t kvcodec_dtype_size(int32_t dtype) {
  return dtype >= 1 && dtype <= 255 && is_valid_dtype(uint8_t(dtype)) ? dtype_size(DType(dtype)) : 0;
}

void kvcodec_encode_options_init(kvcodec_encode_options* o) {
  if (!o) return;
  const EncodeOptions e;
  *o = {e.level, e.chunk_tokens, e.group_tokens, e.table_groups, int32_t(e.step_mode), e.threads};
}

void kvcodec_decode_options_init(kvcodec_decode_options* o) {
  if (!o) return;
  const DecodeOptions d;
  *o = {d.chunk_begin, d.chunk_end, d.layer_begin, d.layer_end, d.verify_checksums ? 1 : 0, d.threads};
}

int32_t kvcodec_mla_shape(uint32_t layers, uint32_t tokens, uint32_t latent_dim, kvcodec_shape* shape) {
  if (!shape) return invalid("kvcodec_mla_shape: shape is NULL");
  if (latent_dim == 0 || latent_dim % 2) return invalid("MLA latent_dim must be even and non-zero");
  const KVShape s{layers, tokens, 1, latent_dim / 2};
  if (Status st = validate_shape(s); !st.ok()) return record(st);
  *shape = from_shape(s);
  return ok();
}

int32_t kvcodec_view_validate(const kvcodec_view* view) {
  auto v = checked_view(view);
  return v.ok() ? ok() : record(v.status());
}

size_t kvcodec_max_encoded_size(const kvcodec_shape* shape, int32_t dtype, const kvcodec_encode_options* options) {
  if (!shape) return no_size(InvalidArgument("kvcodec_max_encoded_size: shape is NULL"));
  if (dtype < 1 || dtype > 255 || !is_valid_dtype(uint8_t(dtype)))
    return no_size(InvalidArgument("kvcodec_max_encoded_size: unknown dtype " + std::to_string(dtype)));
  const KVShape s = to_shape(*shape);
  const EncodeOptions o = to_options(options);
  if (Status st = validate_shape(s); !st.ok()) return no_size(st);
  if (Status st = validate_options(o); !st.ok()) return no_size(st);
  const size_t n = max_encoded_size(s, DType(dtype), o);
  if (!n) return no_size(ResourceExhausted("kvcodec_max_encoded_size: the bound exceeds SIZE_MAX"));
  ok();
  return n;
}

int32_t kvcodec_encode_into(const kvcodec_view* src, const kvcodec_encode_options* options, void* dst,
                            size_t capacity, size_t* written) {
  if (!written) return invalid("kvcodec_encode_into: written is NULL");
  *written = 0;
  if (!dst && capacity) return invalid("kvcodec_encode_into: dst is NULL");
  auto v = checked_view(src);
  if (!v.ok()) return record(v.status());
  auto n = encode_into(*v, to_options(options), {static_cast<uint8_t*>(dst), dst ? capacity : 0});
  if (!n.ok()) return record(n.status());
  *written = *n;
  return ok();
}

int32_t kvcodec_decode_into(const void* frame, size_t size, const kvcodec_view* dst,
                            const kvcodec_decode_options* options) {
  if (!frame) return invalid("kvcodec_decode_into: frame is NULL");
  auto v = checked_view(dst);
  if (!v.ok()) return record(v.status());
  auto o = to_options(options);
  if (!o.ok()) return record(o.status());
  const Status s = decode_into(bytes_of(frame, size), *v, *o);
  return s.ok() ? ok() : record(s);
}

int32_t kvcodec_frame_info_get(const void* bytes, size_t size, kvcodec_frame_info* info) {
  if (!bytes || !info) return invalid("kvcodec_frame_info_get: bytes or info is NULL");
  auto f = read_frame_info(bytes_of(bytes, size));
  if (!f.ok()) return record(f.status());
  *info = from_info(*f);
  return ok();
}

int32_t kvcodec_frame_head_size(const void* header, size_t size, uint64_t* head_bytes) {
  if (!header || !head_bytes) return invalid("kvcodec_frame_head_size: header or head_bytes is NULL");
  auto n = frame_head_size(bytes_of(header, size));
  if (!n.ok()) return record(n.status());
  *head_bytes = *n;
  return ok();
}

int32_t kvcodec_verify_frame(const void* frame, size_t size) {
  if (!frame) return invalid("kvcodec_verify_frame: frame is NULL");
  const Status s = verify_frame(bytes_of(frame, size));
  return s.ok() ? ok() : record(s);
}

int32_t kvcodec_decoder_open(const void* head, size_t size, kvcodec_decoder** out) {
  if (!out) return invalid("kvcodec_decoder_open: out is NULL");
  *out = nullptr;
  if (!head) return invalid("kvcodec_decoder_open: head is NULL");
  auto d = FrameDecoder::open(bytes_of(head, size));
  if (!d.ok()) return record(d.status());
  auto* h = new (std::nothrow) kvcodec_decoder{std::move(*d)};
  if (!h) return record(ResourceExhausted("kvcodec_decoder_open: out of memory"));
  *out = h;
  return ok();
}

void kvcodec_decoder_free(kvcodec_decoder* decoder) { delete decoder; }

int32_t kvcodec_decoder_info(const kvcodec_decoder* decoder, kvcodec_frame_info* info) {
  if (!decoder || !info) return invalid("kvcodec_decoder_info: decoder or info is NULL");
  *info = from_info(decoder->decoder.info());
  return ok();
}

int32_t kvcodec_decoder_chunk_info(const kvcodec_decoder* decoder, uint32_t chunk, kvcodec_chunk_info* info) {
  if (!decoder || !info) return invalid("kvcodec_decoder_chunk_info: decoder or info is NULL");
  const auto& chunks = decoder->decoder.info().chunks;
  if (chunk >= chunks.size())
    return record(OutOfRange("chunk " + std::to_string(chunk) + " of a frame of " + std::to_string(chunks.size())));
  const ChunkInfo& c = chunks[chunk];
  *info = {c.offset, c.size, c.token_begin, c.tokens, c.checksum};
  return ok();
}

int32_t kvcodec_decoder_decode_chunk(const kvcodec_decoder* decoder, uint32_t chunk, const void* body, size_t size,
                                     const kvcodec_view* dst, const kvcodec_decode_options* options) {
  if (!decoder || !body) return invalid("kvcodec_decoder_decode_chunk: decoder or body is NULL");
  auto v = checked_view(dst);
  if (!v.ok()) return record(v.status());
  auto o = to_options(options);
  if (!o.ok()) return record(o.status());
  const Status s = decoder->decoder.decode_chunk(chunk, bytes_of(body, size), *v, *o);
  return s.ok() ? ok() : record(s);
}

int32_t kvcodec_profile_parse(const void* bytes, size_t size, kvcodec_profile** out) {
  if (!out) return invalid("kvcodec_profile_parse: out is NULL");
  *out = nullptr;
  if (!bytes) return invalid("kvcodec_profile_parse: bytes is NULL");
  return new_profile(parse_profile(bytes_of(bytes, size)), out);
}

int32_t kvcodec_profile_load(const char* path, kvcodec_profile** out) {
  if (!out) return invalid("kvcodec_profile_load: out is NULL");
  *out = nullptr;
  if (!path) return invalid("kvcodec_profile_load: path is NULL");
  return new_profile(load_profile(path), out);
}

void kvcodec_profile_free(kvcodec_profile* profile) { delete profile; }
uint64_t kvcodec_profile_digest(const kvcodec_profile* profile) { return profile ? profile->profile->digest : 0; }
size_t kvcodec_profile_size(const kvcodec_profile* profile) {
  return profile ? size_t(serialized_profile_size(*profile->profile)) : 0;
}

int32_t kvcodec_frame_profile_digest(const void* bytes, size_t size, uint64_t* digest) {
  if (!bytes || !digest) return invalid("kvcodec_frame_profile_digest: bytes or digest is NULL");
  auto f = read_frame_info(bytes_of(bytes, size));
  if (!f.ok()) return record(f.status());
  *digest = f->transformed ? f->profile_digest : 0;
  return ok();
}

size_t kvcodec_max_encoded_size_profile(const kvcodec_shape* shape, int32_t dtype, const kvcodec_encode_options* options,
                                        const kvcodec_profile* profile) {
  if (!profile) return no_size(InvalidArgument("kvcodec_max_encoded_size_profile: profile is NULL"));
  const size_t n = kvcodec_max_encoded_size(shape, dtype, options);
  if (!n) return 0;
  return max_encoded_size(to_shape(*shape), DType(dtype), to_options(options), *profile->profile);
}

int32_t kvcodec_encode_into_profile(const kvcodec_view* src, const kvcodec_encode_options* options,
                                    const kvcodec_profile* profile, uint32_t first_position, void* dst, size_t capacity,
                                    size_t* written) {
  if (!written) return invalid("kvcodec_encode_into_profile: written is NULL");
  *written = 0;
  if (!profile) return invalid("kvcodec_encode_into_profile: profile is NULL");
  if (!dst && capacity) return invalid("kvcodec_encode_into_profile: dst is NULL");
  auto v = checked_view(src);
  if (!v.ok()) return record(v.status());
  auto n = encode_into(*v, to_options(options), *profile->profile, {static_cast<uint8_t*>(dst), dst ? capacity : 0},
                       first_position);
  if (!n.ok()) return record(n.status());
  *written = *n;
  return ok();
}

int32_t kvcodec_decode_into_profile(const void* frame, size_t size, const kvcodec_profile* profile,
                                    const kvcodec_view* dst, const kvcodec_decode_options* options) {
  if (!frame || !profile) return invalid("kvcodec_decode_into_profile: frame or profile is NULL");
  auto v = checked_view(dst);
  if (!v.ok()) return record(v.status());
  auto o = to_options(options);
  if (!o.ok()) return record(o.status());
  const Status s = decode_into(bytes_of(frame, size), *profile->profile, *v, *o);
  return s.ok() ? ok() : record(s);
}

int32_t kvcodec_decoder_open_profile(const void* head, size_t size, const kvcodec_profile* profile,
                                     kvcodec_decoder** out) {
  if (!out) return invalid("kvcodec_decoder_open_profile: out is NULL");
  *out = nullptr;
  if (!head) return invalid("kvcodec_decoder_open_profile: head is NULL");
  auto d = FrameDecoder::open(bytes_of(head, size), profile ? profile->profile : nullptr);
  if (!d.ok()) return record(d.status());
  auto* h = new (std::nothrow) kvcodec_decoder{std::move(*d)};
  if (!h) return record(ResourceExhausted("kvcodec_decoder_open_profile: out of memory"));
  *out = h;
  return ok();
}

}  // extern "C"
