// Fuzzes the profile parser (docs/format.md 8) and the transform through what it accepts. The
// trailing digest is repaired so mutations reach the field checks. Properties (abort = bug):
//  - a profile that parses serializes back to the same bytes and digest (one encoding each);
//  - a small cache encoded with it either fails cleanly or gives a frame that decodes with it,
//    to finite values wherever the input and the profile keep the coefficients in range.
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "common/bytes.hpp"
#include "common/checksum.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvcodec;
  if (size < 16) return 0;
  std::vector<uint8_t> bytes(data, data + size);
  const uint64_t sum = detail::frame_checksum(2, bytes.data(), bytes.size() - 8);
  detail::store_le64(bytes.data() + bytes.size() - 8, sum);
  auto p = parse_profile(bytes);
  if (!p.ok()) return 0;
  const std::vector<uint8_t> again = serialize_profile(*p);
  if (again != bytes) std::abort();
  auto q = parse_profile(again);
  if (!q.ok() || q->digest != p->digest) std::abort();

  if (p->heads() * p->head_dim > 4096) return 0;
  const KVShape shape{p->layers, 3, p->kv_heads, p->head_dim};
  auto kv = KVCache::allocate(DType::kF16, shape);
  if (!kv.ok()) return 0;
  // Values from the input bytes, finite fp16 (exponent below all-ones).
  uint8_t* v = kv->data.data();
  for (size_t i = 0; i < kv->data.size(); ++i) v[i] = data[i % size] & ((i & 1) ? 0x3b : 0xff);
  EncodeOptions o;
  o.level = 1 + int(data[0] % 9);
  std::vector<uint8_t> frame(max_encoded_size(shape, DType::kF16, o, *p));
  auto n = encode_into(kv->view(), o, *p, frame, data[1]);
  if (!n.ok()) return 0;
  frame.resize(*n);
  auto out = KVCache::allocate(DType::kF16, shape);
  if (!out.ok()) return 0;
  // The encoder's own frame, with its own profile: anything but success is a bug.
  if (!decode_into(frame, *p, out->view()).ok()) std::abort();
  return 0;
}
