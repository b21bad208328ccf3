/* Tests of the C API (include/kvcodec/kvcodec.h), compiled as C11 with -Wall -Werror and linked
 * against the shared library: round trips in every layout, the lossy error bound, and every
 * error path's status code and message. Exit 0 = pass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef __STDC_NO_THREADS__
#include <threads.h>
#endif

#include "kvcodec/kvcodec.h"

static int g_failures = 0;

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                   \
    }                                                                 \
  } while (0)

/* The call returned `code` and the thread's last error contains `needle`. */
#define CHECK_ERR(call, code, needle)                                                        \
  do {                                                                                       \
    int32_t rc_ = (call);                                                                    \
    if (rc_ != (code) || strstr(kvcodec_last_error(), (needle)) == NULL) {                   \
      fprintf(stderr, "%s:%d: %s returned %d (%s) \"%s\", want %d (%s) containing \"%s\"\n", \
              __FILE__, __LINE__, #call, rc_, kvcodec_status_name(rc_), kvcodec_last_error(), \
              (code), kvcodec_status_name(code), (needle));                                  \
      ++g_failures;                                                                          \
    }                                                                                        \
  } while (0)

enum { L = 3, T = 40, H = 2, D = 16, C = H * D };
static const size_t kElems = (size_t)2 * L * T * C;

/* Deterministic values with per-channel offsets (xorshift). */
static void fill_f32(float* x, size_t n, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 1u;
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    x[i] = (float)((int32_t)(s % 2001u) - 1000) / 250.0f + (float)(i % C) * 0.125f;
  }
}

static kvcodec_shape shape_of(uint32_t layers, uint32_t tokens) {
  kvcodec_shape s = {layers, tokens, H, D};
  return s;
}

static kvcodec_view contiguous(void* data, int32_t dtype, kvcodec_shape s) {
  kvcodec_view v;
  memset(&v, 0, sizeof v);
  v.layout = KVCODEC_LAYOUT_CONTIGUOUS;
  v.dtype = dtype;
  v.shape = s;
  v.data = data;
  return v;
}

/* Encodes `src` at `level` into a fresh buffer; returns it (size in *n). */
static unsigned char* encode(const kvcodec_view* src, int32_t level, uint32_t chunk_tokens, size_t* n) {
  kvcodec_encode_options o;
  kvcodec_encode_options_init(&o);
  o.level = level;
  o.chunk_tokens = chunk_tokens;
  size_t cap = kvcodec_max_encoded_size(&src->shape, src->dtype, &o);
  CHECK(cap > 0);
  unsigned char* buf = malloc(cap);
  *n = 0;
  int32_t rc = kvcodec_encode_into(src, &o, buf, cap, n);
  CHECK(rc == KVCODEC_OK);
  CHECK(*n > 0 && *n <= cap);
  CHECK(strcmp(kvcodec_last_error(), "") == 0);
  return buf;
}

static void test_version(void) {
  CHECK(strcmp(kvcodec_version(), "") != 0);
  CHECK(kvcodec_version_number() > 0 || strcmp(kvcodec_version(), "0.0.0") == 0);
  CHECK(kvcodec_format_version() >= 2);
  CHECK(strcmp(kvcodec_status_name(KVCODEC_CORRUPT_DATA), "corrupt_data") == 0);
  CHECK(strcmp(kvcodec_status_name(99), "unknown") == 0);
  CHECK(kvcodec_dtype_size(KVCODEC_DTYPE_BF16) == 2);
  CHECK(kvcodec_dtype_size(9) == 0);
}

/* Lossless: every layout decodes bit-exactly; the LMCache and per-layer layouts see the same
 * elements as the contiguous one. */
static void test_lossless_layouts(void) {
  float* x = malloc(kElems * sizeof(float));
  fill_f32(x, kElems, 1);
  kvcodec_view src = contiguous(x, KVCODEC_DTYPE_F32, shape_of(L, T));
  size_t n = 0;
  unsigned char* frame = encode(&src, 0, 16, &n);

  kvcodec_frame_info info;
  CHECK(kvcodec_frame_info_get(frame, n, &info) == KVCODEC_OK);
  CHECK(info.frame_bytes == n && info.level == 0 && info.num_chunks == 3);
  CHECK(info.shape.layers == L && info.shape.tokens == T && info.dtype == KVCODEC_DTYPE_F32);
  uint64_t head = 0;
  CHECK(kvcodec_frame_head_size(frame, 64, &head) == KVCODEC_OK && head == info.head_bytes);
  CHECK(kvcodec_verify_frame(frame, n) == KVCODEC_OK);

  float* y = calloc(kElems, sizeof(float));
  kvcodec_view dst = contiguous(y, KVCODEC_DTYPE_F32, shape_of(L, T));
  CHECK(kvcodec_decode_into(frame, n, &dst, NULL) == KVCODEC_OK);
  CHECK(memcmp(x, y, kElems * sizeof(float)) == 0);

  /* LMCache [2, L, T, C]: element (l, kv, t, c) at ((kv * L + l) * T + t) * C + c. */
  memset(y, 0, kElems * sizeof(float));
  dst.layout = KVCODEC_LAYOUT_LMCACHE;
  CHECK(kvcodec_decode_into(frame, n, &dst, NULL) == KVCODEC_OK);
  int same = 1;
  for (int l = 0; l < L; ++l)
    for (int kv = 0; kv < 2; ++kv)
      same &= memcmp(&y[((size_t)(kv * L + l) * T) * C], &x[((size_t)(l * 2 + kv) * T) * C], (size_t)T * C * 4) == 0;
  CHECK(same);

  /* Per layer [T, H, D] and HF [1, H, T, D]. */
  float* k[L];
  float* v[L];
  void* kp[L];
  void* vp[L];
  for (int l = 0; l < L; ++l) {
    kp[l] = k[l] = calloc((size_t)T * C, sizeof(float));
    vp[l] = v[l] = calloc((size_t)T * C, sizeof(float));
  }
  kvcodec_view per = contiguous(NULL, KVCODEC_DTYPE_F32, shape_of(L, T));
  per.layout = KVCODEC_LAYOUT_HF;
  per.layer_k = kp;
  per.layer_v = vp;
  CHECK(kvcodec_decode_into(frame, n, &per, NULL) == KVCODEC_OK);
  same = 1;
  for (int l = 0; l < L; ++l)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h)
        for (int d = 0; d < D; ++d) {
          const size_t want = ((size_t)(l * 2) * T + t) * C + h * D + d;
          same &= v[l][((size_t)h * T + t) * D + d] == x[want + (size_t)T * C];
          same &= k[l][((size_t)h * T + t) * D + d] == x[want];
        }
  CHECK(same);

  /* Re-encoding from the per-layer layout gives the same frame. */
  size_t n2 = 0;
  unsigned char* frame2 = encode(&per, 0, 16, &n2);
  CHECK(n2 == n && memcmp(frame, frame2, n) == 0);

  /* vLLM paged (NHD), block size 8, blocks in reverse order. */
  enum { B = 8, NB = 7 };
  int32_t table[5] = {6, 4, 2, 1, 0};
  void* pages[L];
  for (int l = 0; l < L; ++l) pages[l] = calloc((size_t)2 * NB * B * C, sizeof(float));
  kvcodec_view paged = contiguous(NULL, KVCODEC_DTYPE_F32, shape_of(L, T));
  paged.layout = KVCODEC_LAYOUT_VLLM_PAGED;
  paged.layer_k = pages;
  paged.block_table = table;
  paged.num_blocks = NB;
  paged.block_size = B;
  CHECK(kvcodec_view_validate(&paged) == KVCODEC_OK);
  CHECK(kvcodec_decode_into(frame, n, &paged, NULL) == KVCODEC_OK);
  size_t n3 = 0;
  unsigned char* frame3 = encode(&paged, 0, 16, &n3);
  CHECK(n3 == n && memcmp(frame, frame3, n) == 0);

  /* Chunk by chunk through a decoder handle. */
  kvcodec_decoder* dec = NULL;
  CHECK(kvcodec_decoder_open(frame, (size_t)info.head_bytes, &dec) == KVCODEC_OK && dec != NULL);
  kvcodec_frame_info dinfo;
  CHECK(kvcodec_decoder_info(dec, &dinfo) == KVCODEC_OK && dinfo.num_chunks == info.num_chunks);
  memset(y, 0, kElems * sizeof(float));
  dst.layout = KVCODEC_LAYOUT_CONTIGUOUS;
  for (uint32_t c = 0; c < dinfo.num_chunks; ++c) {
    kvcodec_chunk_info ci;
    CHECK(kvcodec_decoder_chunk_info(dec, c, &ci) == KVCODEC_OK);
    CHECK(kvcodec_decoder_decode_chunk(dec, c, frame + ci.offset, ci.size, &dst, NULL) == KVCODEC_OK);
  }
  CHECK(memcmp(x, y, kElems * sizeof(float)) == 0);
  kvcodec_chunk_info ci;
  CHECK_ERR(kvcodec_decoder_chunk_info(dec, 3, &ci), KVCODEC_OUT_OF_RANGE, "chunk 3");
  CHECK_ERR(kvcodec_decoder_decode_chunk(dec, 0, frame + info.head_bytes, 10, &dst, NULL), KVCODEC_CORRUPT_DATA, "");
  kvcodec_decoder_free(dec);
  kvcodec_decoder_free(NULL);

  for (int l = 0; l < L; ++l) {
    free(k[l]);
    free(v[l]);
    free(pages[l]);
  }
  free(frame3);
  free(frame2);
  free(frame);
  free(y);
  free(x);
}

/* The engines' layouts: separate K/V pools indexed by a slot mapping (SGLang), FlashInfer, MLA. */
static void test_engine_layouts(void) {
  float* x = malloc(kElems * sizeof(float));
  fill_f32(x, kElems, 4);
  kvcodec_view src = contiguous(x, KVCODEC_DTYPE_F32, shape_of(L, T));
  size_t n = 0;
  unsigned char* frame = encode(&src, 0, 16, &n);

  /* K and V pools of 80 one-token slots; token t at slot (t * 37 + 5) % 80. */
  enum { SLOTS = 80 };
  int64_t slots[T];
  for (int t = 0; t < T; ++t) slots[t] = (t * 37 + 5) % SLOTS;
  void* kp[L];
  void* vp[L];
  for (int l = 0; l < L; ++l) {
    kp[l] = calloc((size_t)SLOTS * C, sizeof(float));
    vp[l] = calloc((size_t)SLOTS * C, sizeof(float));
  }
  kvcodec_view split = contiguous(NULL, KVCODEC_DTYPE_F32, shape_of(L, T));
  split.layout = KVCODEC_LAYOUT_PAGED_KV_SPLIT;
  split.layer_k = kp;
  split.num_blocks = SLOTS;
  split.block_size = 1;
  split.slot_mapping = slots;
  CHECK_ERR(kvcodec_view_validate(&split), KVCODEC_INVALID_ARGUMENT, "layer_v is NULL");
  split.layer_v = vp;
  CHECK(kvcodec_decode_into(frame, n, &split, NULL) == KVCODEC_OK);
  int same = 1;
  for (int l = 0; l < L; ++l)
    for (int t = 0; t < T; ++t) {
      same &= memcmp((float*)kp[l] + slots[t] * C, &x[((size_t)(2 * l) * T + t) * C], C * 4) == 0;
      same &= memcmp((float*)vp[l] + slots[t] * C, &x[((size_t)(2 * l + 1) * T + t) * C], C * 4) == 0;
    }
  CHECK(same);
  size_t n2 = 0;
  unsigned char* again = encode(&split, 0, 16, &n2);
  CHECK(n2 == n && memcmp(again, frame, n) == 0);
  free(again);
  slots[7] = SLOTS;
  CHECK_ERR(kvcodec_view_validate(&split), KVCODEC_INVALID_ARGUMENT, "slot mapping entry 7");

  /* FlashInfer (num_blocks, 2, block_size, H, D), NHD, block size 8. */
  int32_t table[5] = {4, 3, 2, 1, 0};
  split.layout = KVCODEC_LAYOUT_FLASHINFER;
  split.layer_v = NULL;
  split.slot_mapping = NULL;
  split.block_table = table;
  split.num_blocks = 5;
  split.block_size = 8;
  CHECK(kvcodec_decode_into(frame, n, &split, NULL) == KVCODEC_OK); /* 5 * 2 * 8 * C == SLOTS * C */
  same = 1;
  for (int l = 0; l < L; ++l)
    for (int kv = 0; kv < 2; ++kv)
      for (int t = 0; t < T; ++t)
        same &= memcmp((float*)kp[l] + ((size_t)(table[t / 8] * 2 + kv) * 8 + t % 8) * C,
                       &x[((size_t)(2 * l + kv) * T + t) * C], C * 4) == 0;
  CHECK(same);

  /* MLA: [L, T, 64] latents, coded as two 32-value halves. */
  kvcodec_shape mla;
  CHECK(kvcodec_mla_shape(L, T, 64, &mla) == KVCODEC_OK);
  kvcodec_view m = contiguous(x, KVCODEC_DTYPE_F32, mla);
  m.layout = KVCODEC_LAYOUT_MLA;
  size_t nm = 0;
  unsigned char* mframe = encode(&m, 0, 16, &nm);
  float* y = calloc(kElems, sizeof(float));
  m.data = y;
  CHECK(kvcodec_decode_into(mframe, nm, &m, NULL) == KVCODEC_OK);
  CHECK(memcmp(x, y, (size_t)L * T * 64 * sizeof(float)) == 0);
  m.shape = shape_of(L, T);
  CHECK_ERR(kvcodec_view_validate(&m), KVCODEC_INVALID_ARGUMENT, "kvcodec_mla_shape");

  free(y);
  free(mframe);
  for (int l = 0; l < L; ++l) {
    free(kp[l]);
    free(vp[l]);
  }
  free(frame);
  free(x);
}

/* Lossy levels: |x - x_hat| <= step / 2 (+ fp32 rounding), step <= level step * 1.5 * RMS
 * deviation of the (layer, K/V) from its per-channel means (include/kvcodec/config.hpp). */
static void test_lossy_bound(void) {
  static const float kStep[10] = {0.0f, 0.03f, 0.06f, 0.12f, 0.20f, 0.30f, 0.45f, 0.65f, 0.90f, 1.30f};
  float* x = malloc(kElems * sizeof(float));
  float* y = malloc(kElems * sizeof(float));
  fill_f32(x, kElems, 2);
  kvcodec_view src = contiguous(x, KVCODEC_DTYPE_F32, shape_of(L, T));
  const int levels[3] = {1, 4, 9};
  for (int li = 0; li < 3; ++li) {
    size_t n = 0;
    unsigned char* frame = encode(&src, levels[li], 256, &n);
    CHECK(n < kElems * sizeof(float));
    kvcodec_view dst = contiguous(y, KVCODEC_DTYPE_F32, shape_of(L, T));
    CHECK(kvcodec_decode_into(frame, n, &dst, NULL) == KVCODEC_OK);
    int within = 1, changed = 0;
    for (int p = 0; p < 2 * L; ++p) {
      const float* a = x + (size_t)p * T * C;
      const float* b = y + (size_t)p * T * C;
      double ss = 0;
      for (int c = 0; c < C; ++c) {
        double mean = 0;
        for (int t = 0; t < T; ++t) mean += a[t * C + c];
        mean /= T;
        for (int t = 0; t < T; ++t) ss += (a[t * C + c] - mean) * (a[t * C + c] - mean);
      }
      const double bound = 0.5 * kStep[levels[li]] * 1.5 * sqrt(ss / ((double)T * C)) * 1.0001 + 1e-5;
      for (int i = 0; i < T * C; ++i) {
        within &= fabs((double)a[i] - (double)b[i]) <= bound + fabs(a[i]) * 1e-6;
        changed |= a[i] != b[i];
      }
    }
    CHECK(within);
    CHECK(changed); /* lossy really is lossy: the test could fail */
    free(frame);
  }
  free(y);
  free(x);
}

static void test_errors(void) {
  float* x = malloc(kElems * sizeof(float));
  fill_f32(x, kElems, 3);
  kvcodec_view src = contiguous(x, KVCODEC_DTYPE_F32, shape_of(L, T));
  kvcodec_encode_options o;
  kvcodec_encode_options_init(&o);
  unsigned char small[16];
  size_t written = 1;

  /* Arguments and views. */
  CHECK_ERR(kvcodec_encode_into(NULL, &o, small, sizeof small, &written), KVCODEC_INVALID_ARGUMENT, "view is NULL");
  CHECK(written == 0);
  CHECK_ERR(kvcodec_encode_into(&src, &o, small, sizeof small, NULL), KVCODEC_INVALID_ARGUMENT, "written is NULL");
  kvcodec_view bad = src;
  bad.dtype = 7;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "unknown dtype 7");
  bad = src;
  bad.layout = 42;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "unknown layout 42");
  bad = src;
  bad.shape.layers = 0;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "empty KV shape");
  bad = src;
  bad.shape.kv_heads = 5000;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_RESOURCE_EXHAUSTED, "limits");
  bad = src;
  bad.data = NULL;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "null data pointer");
  bad = src;
  bad.layout = KVCODEC_LAYOUT_PER_LAYER;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "null pointer arrays");
  void* pages[L] = {x, x, x};
  int32_t table[5] = {0, 1, 2, 3, 9};
  bad = src;
  bad.layout = KVCODEC_LAYOUT_VLLM_PAGED;
  bad.layer_k = pages;
  bad.num_blocks = 5;
  bad.block_size = 8;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "exactly one of block_table and slot_mapping");
  bad.block_table = table;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "block table entry 4 = 9");
  bad.paged_order = 3;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "paged_order");
  bad.paged_order = KVCODEC_PAGED_NHD;
  bad.block_size = 4;
  CHECK_ERR(kvcodec_view_validate(&bad), KVCODEC_INVALID_ARGUMENT, "need 10 blocks");

  /* Options and sizes. */
  o.level = 10;
  CHECK_ERR(kvcodec_encode_into(&src, &o, small, sizeof small, &written), KVCODEC_INVALID_ARGUMENT, "level 10");
  CHECK(kvcodec_max_encoded_size(&src.shape, KVCODEC_DTYPE_F32, &o) == 0);
  CHECK(strstr(kvcodec_last_error(), "level 10") != NULL);
  kvcodec_encode_options_init(&o);
  o.chunk_tokens = 0;
  CHECK(kvcodec_max_encoded_size(&src.shape, KVCODEC_DTYPE_F32, &o) == 0);
  CHECK(strstr(kvcodec_last_error(), "chunk_tokens 0") != NULL);
  CHECK(kvcodec_max_encoded_size(&src.shape, 0, NULL) == 0);
  CHECK(strstr(kvcodec_last_error(), "unknown dtype 0") != NULL);
  CHECK(kvcodec_max_encoded_size(NULL, KVCODEC_DTYPE_F32, NULL) == 0);
  CHECK(kvcodec_max_encoded_size(&src.shape, KVCODEC_DTYPE_F32, NULL) > 0);
  CHECK(strcmp(kvcodec_last_error(), "") == 0); /* success clears the message */
  CHECK_ERR(kvcodec_encode_into(&src, NULL, small, sizeof small, &written), KVCODEC_BUFFER_TOO_SMALL, "");
  CHECK(written == 0);
  CHECK_ERR(kvcodec_mla_shape(2, 4, 575, NULL), KVCODEC_INVALID_ARGUMENT, "NULL");
  kvcodec_shape mla;
  CHECK_ERR(kvcodec_mla_shape(2, 4, 575, &mla), KVCODEC_INVALID_ARGUMENT, "even");
  CHECK(kvcodec_mla_shape(2, 4, 576, &mla) == KVCODEC_OK && mla.kv_heads == 1 && mla.head_dim == 288);

  /* Frames. */
  size_t n = 0;
  unsigned char* frame = encode(&src, 4, 16, &n);
  float* y = calloc(kElems, sizeof(float));
  kvcodec_view dst = contiguous(y, KVCODEC_DTYPE_F32, shape_of(L, T));
  kvcodec_view other = contiguous(y, KVCODEC_DTYPE_F32, shape_of(L, T - 1));
  CHECK_ERR(kvcodec_decode_into(frame, n, &other, NULL), KVCODEC_INVALID_ARGUMENT, "shape");
  other = contiguous(y, KVCODEC_DTYPE_F16, shape_of(L, T));
  CHECK_ERR(kvcodec_decode_into(frame, n, &other, NULL), KVCODEC_INVALID_ARGUMENT, "dtype");
  CHECK_ERR(kvcodec_decode_into(NULL, n, &dst, NULL), KVCODEC_INVALID_ARGUMENT, "frame is NULL");
  kvcodec_frame_info info;
  CHECK_ERR(kvcodec_frame_info_get(frame, 20, &info), KVCODEC_BUFFER_TOO_SMALL, "");
  CHECK_ERR(kvcodec_frame_info_get(frame, 100, &info), KVCODEC_BUFFER_TOO_SMALL, "");
  CHECK_ERR(kvcodec_decode_into(frame, n - 1, &dst, NULL), KVCODEC_BUFFER_TOO_SMALL, "truncated");

  unsigned char* copy = malloc(n);
  memcpy(copy, frame, n);
  copy[0] ^= 0xFF;
  CHECK_ERR(kvcodec_decode_into(copy, n, &dst, NULL), KVCODEC_CORRUPT_DATA, "magic");
  memcpy(copy, frame, n);
  copy[4] = 0x63;
  CHECK_ERR(kvcodec_decode_into(copy, n, &dst, NULL), KVCODEC_UNSUPPORTED_VERSION, "version");
  CHECK_ERR(kvcodec_decoder_open(copy, n, NULL), KVCODEC_INVALID_ARGUMENT, "out is NULL");
  kvcodec_decoder* dec = (kvcodec_decoder*)&n;
  CHECK_ERR(kvcodec_decoder_open(copy, n, &dec), KVCODEC_UNSUPPORTED_VERSION, "version");
  CHECK(dec == NULL);
  memcpy(copy, frame, n);
  copy[n - 3] ^= 0x10;
  CHECK_ERR(kvcodec_verify_frame(copy, n), KVCODEC_CHECKSUM_MISMATCH, "");
  CHECK_ERR(kvcodec_decode_into(copy, n, &dst, NULL), KVCODEC_CHECKSUM_MISMATCH, "");
  kvcodec_decode_options d;
  kvcodec_decode_options_init(&d);
  d.threads = -1;
  CHECK_ERR(kvcodec_decode_into(frame, n, &dst, &d), KVCODEC_INVALID_ARGUMENT, "threads");
  kvcodec_decode_options_init(&d);
  d.chunk_begin = 1;
  CHECK(kvcodec_decode_into(frame, n, &dst, &d) == KVCODEC_OK);

  char buf[8];
  CHECK_ERR(kvcodec_decoder_info(NULL, &info), KVCODEC_INVALID_ARGUMENT, "decoder");
  const size_t full = kvcodec_last_error_copy(buf, sizeof buf);
  CHECK(full == strlen(kvcodec_last_error()) && full > 7 && strlen(buf) == 7);
  CHECK(strncmp(buf, kvcodec_last_error(), 7) == 0);

  free(copy);
  free(y);
  free(frame);
  free(x);
}

#ifndef __STDC_NO_THREADS__
static int fail_on_thread(void* arg) {
  (void)arg;
  return kvcodec_view_validate(NULL);
}
/* The last error is per thread: an error on another thread leaves this thread's message. */
static void test_thread_local_error(void) {
  CHECK_ERR(kvcodec_mla_shape(1, 1, 3, NULL), KVCODEC_INVALID_ARGUMENT, "shape is NULL");
  thrd_t th;
  int rc = -1;
  CHECK(thrd_create(&th, fail_on_thread, NULL) == thrd_success);
  CHECK(thrd_join(th, &rc) == thrd_success);
  CHECK(rc == KVCODEC_INVALID_ARGUMENT);
  CHECK(strstr(kvcodec_last_error(), "shape is NULL") != NULL);
}
#endif

/* Reads a whole file into a malloc'd buffer (NULL on failure). */
static unsigned char* read_whole(const char* path, size_t* n) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  const long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char* b = len > 0 ? (unsigned char*)malloc((size_t)len) : NULL;
  if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
    free(b);
    b = NULL;
  }
  fclose(f);
  *n = b ? (size_t)len : 0;
  return b;
}

/* Profiles: load / parse / free, digest and size, the golden version 4 frame decoded whole and
 * chunk by chunk with it (a decoder outlives the freed profile handle), encode with it, and the
 * errors of a missing or corrupt profile. */
static void test_profile(void) {
  size_t pn = 0, fn = 0;
  unsigned char* pbytes = read_whole(KVCODEC_TEST_DIR "/golden/v4/f16_level4_rope.kvprofile", &pn);
  unsigned char* frame = read_whole(KVCODEC_TEST_DIR "/golden/v4/f16_level4_rope.kvc", &fn);
  CHECK(pbytes && frame);
  if (!pbytes || !frame) return;
  kvcodec_profile *p = NULL, *q = NULL;
  CHECK(kvcodec_profile_load(KVCODEC_TEST_DIR "/golden/v4/f16_level4_rope.kvprofile", &p) == KVCODEC_OK && p);
  CHECK(kvcodec_profile_parse(pbytes, pn, &q) == KVCODEC_OK && q);
  CHECK(kvcodec_profile_digest(p) != 0 && kvcodec_profile_digest(p) == kvcodec_profile_digest(q));
  CHECK(kvcodec_profile_size(p) == pn && kvcodec_profile_size(NULL) == 0);
  uint64_t digest = 0;
  CHECK(kvcodec_frame_profile_digest(frame, fn, &digest) == KVCODEC_OK && digest == kvcodec_profile_digest(p));
  char hex[17];
  snprintf(hex, sizeof hex, "%016llx", (unsigned long long)digest);
  kvcodec_frame_info info;
  CHECK(kvcodec_frame_info_get(frame, fn, &info) == KVCODEC_OK && info.format_version == 4);
  const size_t n = (size_t)2 * info.shape.layers * info.shape.tokens * info.shape.kv_heads * info.shape.head_dim;
  uint16_t* whole = (uint16_t*)calloc(n, 2);
  uint16_t* chunked = (uint16_t*)calloc(n, 2);
  kvcodec_view v;
  memset(&v, 0, sizeof v);
  v.layout = KVCODEC_LAYOUT_CONTIGUOUS;
  v.dtype = KVCODEC_DTYPE_F16;
  v.shape = info.shape;
  v.data = whole;
  CHECK(kvcodec_decode_into_profile(frame, fn, p, &v, NULL) == KVCODEC_OK);
  /* Missing profile: an error naming the digest the frame needs. */
  CHECK_ERR(kvcodec_decode_into(frame, fn, &v, NULL), KVCODEC_INVALID_ARGUMENT, hex);
  kvcodec_decoder* d = NULL;
  CHECK_ERR(kvcodec_decoder_open(frame, info.head_bytes, &d), KVCODEC_INVALID_ARGUMENT, hex);
  CHECK_ERR(kvcodec_decoder_open_profile(frame, info.head_bytes, NULL, &d), KVCODEC_INVALID_ARGUMENT, hex);
  CHECK(d == NULL);
  CHECK_ERR(kvcodec_decode_into_profile(frame, fn, NULL, &v, NULL), KVCODEC_INVALID_ARGUMENT, "profile");
  CHECK(kvcodec_decoder_open_profile(frame, info.head_bytes, q, &d) == KVCODEC_OK && d);
  kvcodec_profile_free(q); /* the decoder shares it */
  v.data = chunked;
  for (uint32_t c = 0; d && c < info.num_chunks; ++c) {
    kvcodec_chunk_info ci;
    CHECK(kvcodec_decoder_chunk_info(d, c, &ci) == KVCODEC_OK);
    CHECK(kvcodec_decoder_decode_chunk(d, c, frame + ci.offset, ci.size, &v, NULL) == KVCODEC_OK);
  }
  kvcodec_decoder_free(d);
  CHECK(memcmp(whole, chunked, n * 2) == 0);
  /* Encode the decoded tensor with the profile: a version 4 frame naming it, which round-trips. */
  kvcodec_encode_options eo;
  kvcodec_encode_options_init(&eo);
  eo.chunk_tokens = info.chunk_tokens;
  const size_t cap = kvcodec_max_encoded_size_profile(&info.shape, KVCODEC_DTYPE_F16, &eo, p);
  CHECK(cap > 0 && kvcodec_max_encoded_size_profile(&info.shape, KVCODEC_DTYPE_F16, &eo, NULL) == 0);
  unsigned char* out = (unsigned char*)malloc(cap ? cap : 1);
  size_t written = 0;
  v.data = whole;
  CHECK(kvcodec_encode_into_profile(&v, &eo, p, 0, out, cap, &written) == KVCODEC_OK && written > 0);
  CHECK(kvcodec_frame_profile_digest(out, written, &digest) == KVCODEC_OK && digest == kvcodec_profile_digest(p));
  v.data = chunked;
  CHECK(kvcodec_decode_into_profile(out, written, p, &v, NULL) == KVCODEC_OK);
  eo.level = 0;
  CHECK_ERR(kvcodec_encode_into_profile(&v, &eo, p, 0, out, cap, &written), KVCODEC_INVALID_ARGUMENT, "level 0");
  /* A plain frame: digest 0, and it decodes with a profile as without one. */
  eo.level = 4;
  CHECK(kvcodec_encode_into(&v, &eo, out, cap, &written) == KVCODEC_OK);
  CHECK(kvcodec_frame_profile_digest(out, written, &digest) == KVCODEC_OK && digest == 0);
  CHECK(kvcodec_decode_into_profile(out, written, p, &v, NULL) == KVCODEC_OK);
  /* Corrupt or missing profiles. */
  pbytes[pn / 2] ^= 1;
  CHECK_ERR(kvcodec_profile_parse(pbytes, pn, &q), KVCODEC_CORRUPT_DATA, "");
  CHECK(q == NULL);
  CHECK_ERR(kvcodec_profile_load("/nonexistent/x.kvprofile", &q), KVCODEC_NOT_FOUND, "x.kvprofile");
  kvcodec_profile_free(p);
  kvcodec_profile_free(NULL);
  free(out);
  free(whole);
  free(chunked);
  free(pbytes);
  free(frame);
}

int main(void) {
  test_version();
  test_lossless_layouts();
  test_engine_layouts();
  test_lossy_bound();
  test_errors();
  test_profile();
#ifndef __STDC_NO_THREADS__
  test_thread_local_error();
#endif
  if (g_failures) {
    fprintf(stderr, "c_api_test: %d check(s) failed\n", g_failures);
    return 1;
  }
  printf("c_api_test: all checks passed\n");
  return 0;
}
