/* kvcodec C API (C11; also usable from C++). Link with -lkvcodec (pkg-config kvcodec).
 *
 * Conventions
 * - Every fallible function returns an int32_t status: 0 (KVCODEC_OK) or one of the pinned
 *   codes below, equal to kvcodec::StatusCode (include/kvcodec/status.hpp, docs/format.md).
 * - The message of the last failed call of the calling thread is kvcodec_last_error() (a
 *   thread-local string: calls on other threads never overwrite it; a successful call leaves
 *   it ""). kvcodec_last_error_copy() copies it into a caller buffer.
 * - The caller owns every buffer: frames are written into caller memory of a capacity given
 *   by kvcodec_max_encoded_size(); decoding writes into the caller's tensors through a view.
 *   Nothing returned by the library needs freeing except kvcodec_decoder and kvcodec_profile
 *   handles.
 * - Functions are thread-safe for distinct destinations. A kvcodec_decoder is immutable after
 *   kvcodec_decoder_open: any number of threads may decode chunks through it concurrently.
 */
#ifndef KVCODEC_KVCODEC_H_
#define KVCODEC_KVCODEC_H_

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define KVCODEC_C_API __attribute__((visibility("default")))
#else
#define KVCODEC_C_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes (equal to kvcodec::StatusCode; values never change meaning) -------------- */
enum {
  KVCODEC_OK = 0,
  KVCODEC_INVALID_ARGUMENT = 1,     /* a parameter, shape, layout or option out of range */
  KVCODEC_CORRUPT_DATA = 2,         /* a malformed frame */
  KVCODEC_UNSUPPORTED_VERSION = 3,  /* a frame format version this library does not read */
  KVCODEC_BUFFER_TOO_SMALL = 4,     /* a caller buffer is too small (see max_encoded_size) */
  KVCODEC_CHECKSUM_MISMATCH = 5,    /* a chunk or head checksum does not match */
  KVCODEC_OUT_OF_RANGE = 6,         /* a chunk / layer index beyond the frame */
  KVCODEC_UNAVAILABLE = 7,
  KVCODEC_IO_ERROR = 8,
  KVCODEC_NOT_FOUND = 9,
  KVCODEC_TIMEOUT = 10,
  KVCODEC_RESOURCE_EXHAUSTED = 11,  /* a size beyond the library's limits, or out of memory */
  KVCODEC_INTERNAL = 12
};

/* ---- element types (equal to kvcodec::DType, stored in frames) ----------------------------- */
enum {
  KVCODEC_DTYPE_F32 = 1,
  KVCODEC_DTYPE_F16 = 2,
  KVCODEC_DTYPE_BF16 = 3,
  KVCODEC_DTYPE_F8E4M3 = 4 /* OCP FP8 E4M3 ("e4m3fn") */
};

/* ---- layouts: where element (layer l, K/V kv, token t, head h, dim d) lives ----------------- */
enum {
  KVCODEC_LAYOUT_CONTIGUOUS = 0, /* data: [layers, 2, tokens, kv_heads, head_dim] */
  KVCODEC_LAYOUT_LMCACHE = 1,    /* data: [2, layers, tokens, kv_heads * head_dim] (KV_2LTD) */
  KVCODEC_LAYOUT_STRIDED = 2,    /* data + strides[0..4] (elements, per l, kv, t, h, d) */
  KVCODEC_LAYOUT_PER_LAYER = 3,  /* layer_k[l], layer_v[l]: [tokens, kv_heads, head_dim] */
  KVCODEC_LAYOUT_HF = 4,         /* layer_k[l], layer_v[l]: [1, kv_heads, tokens, head_dim] */
  /* Paged layouts: token t of the context lives in block block_table[t / block_size], slot
   * t % block_size, or (slot_mapping instead of block_table) in block slot_mapping[t] /
   * block_size, slot slot_mapping[t] % block_size. Exactly one of the two is set. */
  KVCODEC_LAYOUT_VLLM_PAGED = 5, /* layer_k[l]: (2, num_blocks, block_size, kv_heads, head_dim) */
  KVCODEC_LAYOUT_PAGED_KV_SPLIT = 6, /* separate K and V pools (vLLM split K/V, SGLang):
                                        layer_k[l], layer_v[l]: (num_blocks, block_size, kv_heads, head_dim) */
  KVCODEC_LAYOUT_FLASHINFER = 7, /* layer_k[l]: (num_blocks, 2, block_size, kv_heads, head_dim) */
  /* MLA latent caches (DeepSeek): one plane of latent_dim values per layer and token. The
   * shape must be kvcodec_mla_shape(layers, tokens, latent_dim): kv_heads 1, head_dim
   * latent_dim / 2 (the frame codes the first and second half of the latent as its K and V). */
  KVCODEC_LAYOUT_MLA = 8,        /* data: [layers, tokens, latent_dim] */
  KVCODEC_LAYOUT_MLA_PAGED = 9   /* layer_k[l]: (num_blocks, block_size, latent_dim) */
};
/* Paged layouts' head order (`paged_order`): NHD (block_size before kv_heads) or HND. */
enum { KVCODEC_PAGED_NHD = 0, KVCODEC_PAGED_HND = 1 };

typedef struct kvcodec_shape {
  uint32_t layers;
  uint32_t tokens;
  uint32_t kv_heads;
  uint32_t head_dim;
} kvcodec_shape;

/* Describes caller memory; never owns it. Zero-initialise, then set what the layout uses.
 * For encoding the memory is only read. */
typedef struct kvcodec_view {
  int32_t layout; /* KVCODEC_LAYOUT_* */
  int32_t dtype;  /* KVCODEC_DTYPE_* */
  kvcodec_shape shape;
  void* data;                 /* CONTIGUOUS, LMCACHE, STRIDED, MLA */
  int64_t strides[5];         /* STRIDED only */
  void* const* layer_k;       /* PER_LAYER, HF, paged layouts: shape.layers pointers */
  void* const* layer_v;       /* PER_LAYER, HF, PAGED_KV_SPLIT */
  const int32_t* block_table; /* paged: ceil(tokens / block_size) block indices, or NULL */
  const int64_t* slot_mapping; /* paged: tokens slot indices, or NULL */
  uint32_t num_blocks;        /* paged: blocks in each layer's cache */
  uint32_t block_size;        /* paged: tokens per block */
  int32_t paged_order;        /* VLLM_PAGED, PAGED_KV_SPLIT, FLASHINFER: KVCODEC_PAGED_NHD / _HND */
} kvcodec_view;

/* Encoder options; kvcodec_encode_options_init sets the library defaults. NULL = defaults. */
typedef struct kvcodec_encode_options {
  int32_t level;         /* 0 = lossless, 1..9 lossy (default 4) */
  uint32_t chunk_tokens; /* tokens per independently decodable chunk (default 256) */
  uint32_t group_tokens; /* anchor group size (default 1) */
  uint32_t table_groups; /* probability tables per (layer, K/V) (default 8) */
  int32_t step_mode;     /* 0 = per-channel, 1 = per-layer scale (default 1) */
  int32_t threads;       /* worker threads, 0 = all hardware threads (default 1) */
} kvcodec_encode_options;

/* Decoder options; kvcodec_decode_options_init sets the defaults (everything). NULL = defaults. */
typedef struct kvcodec_decode_options {
  uint32_t chunk_begin, chunk_end; /* chunks [begin, end), ends clamped (default all) */
  uint32_t layer_begin, layer_end; /* layers [begin, end), ends clamped (default all) */
  int32_t verify_checksums;        /* default 1 */
  int32_t threads;                 /* default 1, 0 = all hardware threads */
} kvcodec_decode_options;

typedef struct kvcodec_frame_info {
  uint32_t format_version;
  int32_t dtype;
  kvcodec_shape shape;
  int32_t level;
  uint32_t chunk_tokens;
  uint32_t group_tokens;
  uint32_t table_groups;
  int32_t step_mode;
  uint32_t num_chunks;
  uint64_t head_bytes;  /* header + model section + chunk index */
  uint64_t model_bytes;
  uint64_t table_bytes;
  uint64_t frame_bytes;
} kvcodec_frame_info;

typedef struct kvcodec_chunk_info {
  uint64_t offset; /* of the chunk body, from the frame start */
  uint32_t size;
  uint32_t token_begin;
  uint32_t tokens;
  uint64_t checksum;
} kvcodec_chunk_info;

/* ---- library ------------------------------------------------------------------------------- */
KVCODEC_C_API const char* kvcodec_version(void);           /* "MAJOR.MINOR.PATCH" */
KVCODEC_C_API uint32_t kvcodec_version_number(void);       /* MAJOR * 10000 + MINOR * 100 + PATCH */
KVCODEC_C_API uint32_t kvcodec_format_version(void);       /* newest frame format version read and written */
KVCODEC_C_API const char* kvcodec_status_name(int32_t code); /* "corrupt_data"; "unknown" if not a code */
KVCODEC_C_API const char* kvcodec_last_error(void);        /* this thread's last error, "" if none */
/* Copies kvcodec_last_error() into buf (NUL-terminated, truncated to cap - 1 bytes); returns its
 * full length. */
KVCODEC_C_API size_t kvcodec_last_error_copy(char* buf, size_t cap);
KVCODEC_C_API size_t kvcodec_dtype_size(int32_t dtype);    /* 0 for an unknown dtype */

KVCODEC_C_API void kvcodec_encode_options_init(kvcodec_encode_options* options);
KVCODEC_C_API void kvcodec_decode_options_init(kvcodec_decode_options* options);
/* The frame shape of an MLA latent cache (latent_dim even, e.g. 576 = 512 + 64). */
KVCODEC_C_API int32_t kvcodec_mla_shape(uint32_t layers, uint32_t tokens, uint32_t latent_dim,
                                        kvcodec_shape* shape);
/* Checks a view: dtype, shape, pointers, strides, block table or slot mapping entries. */
KVCODEC_C_API int32_t kvcodec_view_validate(const kvcodec_view* view);

/* ---- encoding ------------------------------------------------------------------------------ */
/* Upper bound on the frame size for this shape, dtype and options; 0 if they are invalid. */
KVCODEC_C_API size_t kvcodec_max_encoded_size(const kvcodec_shape* shape, int32_t dtype,
                                              const kvcodec_encode_options* options);
/* Encodes the whole context of `src` into dst[0..capacity). On success *written = frame size.
 * KVCODEC_BUFFER_TOO_SMALL if capacity is short (max_encoded_size always suffices). */
KVCODEC_C_API int32_t kvcodec_encode_into(const kvcodec_view* src, const kvcodec_encode_options* options,
                                          void* dst, size_t capacity, size_t* written);

/* ---- decoding ------------------------------------------------------------------------------ */
/* Decodes a whole frame (or the chunk / layer range of options) into dst, whose dtype and shape
 * must equal the frame's. On error dst may be partially written. */
KVCODEC_C_API int32_t kvcodec_decode_into(const void* frame, size_t size, const kvcodec_view* dst,
                                          const kvcodec_decode_options* options);
/* Parses a frame's head (`bytes` = the whole frame or at least its head). */
KVCODEC_C_API int32_t kvcodec_frame_info_get(const void* bytes, size_t size, kvcodec_frame_info* info);
/* Head size from the first 64 bytes of a frame. */
KVCODEC_C_API int32_t kvcodec_frame_head_size(const void* header, size_t size, uint64_t* head_bytes);
/* Verifies every chunk checksum of a whole frame. */
KVCODEC_C_API int32_t kvcodec_verify_frame(const void* frame, size_t size);

/* A parsed frame head with its tables, for decoding chunks one at a time (streaming). */
typedef struct kvcodec_decoder kvcodec_decoder;
/* `head`: the frame's first head_bytes (or the whole frame); copied. *out = NULL on error. */
KVCODEC_C_API int32_t kvcodec_decoder_open(const void* head, size_t size, kvcodec_decoder** out);
KVCODEC_C_API void kvcodec_decoder_free(kvcodec_decoder* decoder); /* NULL is a no-op */
KVCODEC_C_API int32_t kvcodec_decoder_info(const kvcodec_decoder* decoder, kvcodec_frame_info* info);
KVCODEC_C_API int32_t kvcodec_decoder_chunk_info(const kvcodec_decoder* decoder, uint32_t chunk,
                                                 kvcodec_chunk_info* info);
/* Decodes chunk `chunk` from its body bytes into dst (a view of the whole context); layers
 * limited by options' layer range. */
KVCODEC_C_API int32_t kvcodec_decoder_decode_chunk(const kvcodec_decoder* decoder, uint32_t chunk,
                                                   const void* body, size_t size, const kvcodec_view* dst,
                                                   const kvcodec_decode_options* options);

/* ---- transform-coding profiles (kvcodec calibrate; include/kvcodec/profile.hpp) ------------- */
/* A per-model profile, immutable once loaded. Frames encoded with it (format version 4) name it
 * by digest and decode only with it: without it or with another, decoding fails with
 * KVCODEC_INVALID_ARGUMENT and a message naming the digest needed, and writes nothing.
 * Decoders opened with a profile share it: it may be freed before them. */
typedef struct kvcodec_profile kvcodec_profile;
/* From a profile file / its bytes (KVCODEC_CORRUPT_DATA, _UNSUPPORTED_VERSION, _NOT_FOUND,
 * _IO_ERROR). *out = NULL on error. */
KVCODEC_C_API int32_t kvcodec_profile_load(const char* path, kvcodec_profile** out);
KVCODEC_C_API int32_t kvcodec_profile_parse(const void* bytes, size_t size, kvcodec_profile** out);
KVCODEC_C_API void kvcodec_profile_free(kvcodec_profile* profile); /* NULL is a no-op */
/* Its digest (what frames name) and its size in bytes as a file; 0 for NULL. */
KVCODEC_C_API uint64_t kvcodec_profile_digest(const kvcodec_profile* profile);
KVCODEC_C_API size_t kvcodec_profile_size(const kvcodec_profile* profile);
/* The profile digest a frame needs (0: a frame coded without a profile). */
KVCODEC_C_API int32_t kvcodec_frame_profile_digest(const void* bytes, size_t size, uint64_t* digest);
/* kvcodec_max_encoded_size / kvcodec_encode_into with a profile (levels 1..9). first_position:
 * RoPE position of token 0 (profiles with keys before RoPE). */
KVCODEC_C_API size_t kvcodec_max_encoded_size_profile(const kvcodec_shape* shape, int32_t dtype,
                                                      const kvcodec_encode_options* options,
                                                      const kvcodec_profile* profile);
KVCODEC_C_API int32_t kvcodec_encode_into_profile(const kvcodec_view* src, const kvcodec_encode_options* options,
                                                  const kvcodec_profile* profile, uint32_t first_position,
                                                  void* dst, size_t capacity, size_t* written);
/* kvcodec_decode_into / kvcodec_decoder_open with a profile (frames of versions 1-3 decode as
 * without it). */
KVCODEC_C_API int32_t kvcodec_decode_into_profile(const void* frame, size_t size, const kvcodec_profile* profile,
                                                  const kvcodec_view* dst, const kvcodec_decode_options* options);
KVCODEC_C_API int32_t kvcodec_decoder_open_profile(const void* head, size_t size, const kvcodec_profile* profile,
                                                   kvcodec_decoder** out);

#ifdef __cplusplus
}
#endif

#endif /* KVCODEC_KVCODEC_H_ */
