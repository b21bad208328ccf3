// Private helpers of transform coding (include/kvcodec/profile.hpp): the per-row transforms
// both directions apply, exactly as docs/format.md 2.1 specifies them, and the re-framing that
// turns a version 4 frame into the version 3 frame of its coefficients and back.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "kvcodec/format.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/status.hpp"

namespace kvcodec::detail {

// Index of head (l, kv, h) in the profile's per-head arrays.
inline size_t profile_head(const Profile& p, uint32_t l, uint32_t kv, uint32_t h) {
  return (size_t(l) * 2 + kv) * p.kv_heads + h;
}
// Checks that the profile fits a frame or tensor of this shape (kInvalidArgument otherwise).
Status check_profile_shape(const Profile& p, const KVShape& shape);

// The axes of one head transposed to double, at[i * d + k] = axes[k][i]: what forward_row reads.
void transposed_axes(const Profile& p, size_t head, std::vector<double>& at);
// The row-by-row transforms, as the spec reads (the reference the tests hold the batched forms
// below to). y = A (x - mean) of one row; keys (kv == 0) rotated by -pos first when keys_before_rope. `at`
// from transposed_axes (each y[k] still sums over i in ascending order: the order of the spec).
void forward_row(const Profile& p, size_t head, const double* at, uint32_t kv, uint32_t pos, const float* x, float* y);
// x = mean + A^T y of one row, accumulated in component order, RoPE re-applied at pos for keys
// when keys_before_rope; rounded to fp32.
void inverse_row(const Profile& p, size_t head, uint32_t kv, uint32_t pos, const float* y, float* x);

// Batched forms of the two row transforms, row for row the same bits as forward_row /
// inverse_row (each output keeps its additions in the specified order; rows and blocks of
// outputs are what run side by side, in AVX-512 registers when the CPU has it and d % 8 == 0).
//
// out[r][j] = init[j] (0.0 when init is null) + m[k * d + j] * v[r * d + k] for k ascending, each
// product rounded, then added. exact_products: the caller guarantees every product is exact in
// double (both factors are floats widened: 24 + 24 significant bits, exponents far from the
// limits), so fused multiply-adds give the same bits and are used where the CPU has them.
void rows_product(const double* init, const double* m, const double* v, size_t n, size_t d, double* out,
                  bool exact_products);
// RoPE (cos, sin) of positions pos0 .. pos0 + n - 1, composed as rotate() does: cs[(t * d/2 + i) * 2
// + {0, 1}] for pair i of token t (the same for every head and layer: computed once per call).
void rope_table(const Profile& p, uint32_t pos0, uint32_t n, std::vector<double>& cs);
// Scratch of one task: n rows of head_dim doubles in and out (sized by the caller).
struct RowScratch {
  std::vector<double> in, out, mean;
  void size_for(size_t rows, size_t d) {
    in.resize(rows * d);
    out.resize(rows * d);
    mean.resize(d);
  }
};
// forward_row of n rows already loaded as doubles into w.in (overwritten); cs: rope_table rows
// of their positions (keys with keys_before_rope); y row r at y + r * y_stride.
void forward_rows(const Profile& p, size_t head, const double* at, uint32_t kv, const double* cs, size_t n,
                  RowScratch& w, float* y, size_t y_stride);
// The head's axes as doubles, a[k * d + i] = axes[k][i]: what inverse_rows reads.
void head_axes(const Profile& p, size_t head, std::vector<double>& a);
// inverse_row of n coefficient rows (row r at y + r * y_stride) into x[r * head_dim + i].
void inverse_rows(const Profile& p, size_t head, const double* axes, uint32_t kv, const double* cs, const float* y,
                  size_t y_stride, size_t n, RowScratch& w, float* x);

// profile_forward on `threads` threads (tasks of one (layer, K/V, head)); same coefficients.
// coef: src.shape.elements() floats.
Status profile_forward(const Profile& p, const KVView& src, uint32_t first_position, float* coef, int threads);

// Copies a frame `in` (head already validated) into `out`, replacing the first `remove` bytes
// of its model section by `insert`, writing version, flags and dtype code into the header,
// shifting the chunk index and recomputing the head checksum. out.size() must be
// in.size() - remove + insert.size(); with remove == 0, out may start insert.size() bytes before in.
void reframe(std::span<const uint8_t> in, uint32_t remove, std::span<const uint8_t> insert, uint16_t version,
             uint16_t flags, uint8_t dtype, std::span<uint8_t> out);

// kInvalidArgument, naming the digest the frame needs, when a transform-coded frame `f` has no
// profile (nullptr) or another one, or the profile does not fit its shape; OK for other frames.
// `option`: how the caller's user passes a profile (the CLI's "--profile"), named in the message.
Status check_frame_profile(const FrameInfo& f, const Profile* p, std::string_view option = {});

struct Decoder;  // decode/decode.cpp
// Decodes the layers [lb, le) of chunk k of a plain frame from its body into dst (the decoder's
// own chunk decode; decode.cpp).
Status decode_plain_chunk(const Decoder& d, uint32_t k, std::span<const uint8_t> body, const KVView& dst,
                          uint32_t lb, uint32_t le, bool verify, int threads);
// The same for chunk k of the transform-coded frame `f` (chunk and layers in range, dst checked
// against f): `coded` decodes its coefficients into fp32 scratch of the chunk, which are then
// transformed back into dst (decode/decode_transform.cpp).
Status decode_transformed_chunk(const Profile& p, const FrameInfo& f, const Decoder& coded, uint32_t k,
                                std::span<const uint8_t> body, const KVView& dst, uint32_t lb, uint32_t le,
                                bool verify, int threads);

// The version 3 frame of a version 4 frame's fp32 coefficients (transform block removed); `frame`
// must be exactly frame_bytes long (kBufferTooSmall / kCorruptData otherwise). A frame with
// profile models (kFrameFlagProfileModels) needs its profile (kInvalidArgument without it): the
// referenced layer models are written out in full.
StatusOr<std::vector<uint8_t>> coefficient_frame(std::span<const uint8_t> frame, const Profile* profile = nullptr);
// The head of that coefficient frame, from a version 4 frame's head (or whole frame): what a
// FrameDecoder opened with the profile decodes chunks with.
StatusOr<std::vector<uint8_t>> coefficient_head(std::span<const uint8_t> head, const Profile* profile);

}  // namespace kvcodec::detail
