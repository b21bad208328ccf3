// Private helpers of transform coding (include/kvcodec/profile.hpp): the per-row transforms
// both directions apply, exactly as docs/format.md 2.1 specifies them, and the re-framing that
// turns a version 4 frame into the version 3 frame of its coefficients and back.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

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
// y = A (x - mean) of one row; keys (kv == 0) rotated by -pos first when keys_before_rope. `at`
// from transposed_axes (each y[k] still sums over i in ascending order: the order of the spec).
void forward_row(const Profile& p, size_t head, const double* at, uint32_t kv, uint32_t pos, const float* x, float* y);
// x = mean + A^T y of one row, accumulated in component order, RoPE re-applied at pos for keys
// when keys_before_rope; rounded to fp32.
void inverse_row(const Profile& p, size_t head, uint32_t kv, uint32_t pos, const float* y, float* x);

// Copies a frame `in` (head already validated) into `out`, replacing the first `remove` bytes
// of its model section by `insert`, writing version, flags and dtype code into the header,
// shifting the chunk index and recomputing the head checksum. out.size() must be
// in.size() - remove + insert.size().
void reframe(std::span<const uint8_t> in, uint32_t remove, std::span<const uint8_t> insert, uint16_t version,
             uint16_t flags, uint8_t dtype, std::span<uint8_t> out);

// The version 3 frame of a version 4 frame's fp32 coefficients (transform block removed); `frame`
// must be exactly frame_bytes long (kBufferTooSmall / kCorruptData otherwise).
StatusOr<std::vector<uint8_t>> coefficient_frame(std::span<const uint8_t> frame);

}  // namespace kvcodec::detail
