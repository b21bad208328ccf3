// kvcodec itself as a scheme: the fp16 cache through encode_into and decode_into; the size is
// that of the frames (header, model section, chunk index and bodies).
#include <algorithm>
#include <string>

#include "bytes.hpp"
#include "kvcodec/codec.hpp"
#include "schemes.hpp"

namespace kvcodec::eval::internal {
namespace {

// Encodes and decodes one fp16 cache in place (`half` receives the decoded values); returns
// the frame size.
StatusOr<uint64_t> round_trip(std::span<uint16_t> half, const KVShape& shape, const EncodeOptions& options) {
  const size_t bound = max_encoded_size(shape, DType::kF16, options);
  if (bound == 0) return InvalidArgument("kvcodec: invalid shape or options");
  std::vector<uint8_t> frame(bound);
  KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(contiguous_view(half.data(), DType::kF16, shape), options, frame));
  frame.resize(n);
  KVCODEC_RETURN_IF_ERROR(decode_into(frame, contiguous_view(half.data(), DType::kF16, shape)));
  return uint64_t(n);
}

class KvcodecScheme final : public Scheme {
 public:
  KvcodecScheme(std::string name, const KvcodecParams& params)
      : Scheme(std::move(name), params.options.level, level_label(params.options.level)), params_(params) {}

  bool lossless() const noexcept override { return params_.options.level == 0; }

  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    const KVShape& sh = in.shape;
    std::vector<uint16_t> half(in.values.size());
    for (size_t i = 0; i < half.size(); ++i) half[i] = detail::f32_to_f16(in.values[i]);
    uint64_t bytes = 0;
    if (!params_.layer_levels || params_.options.level == 0) {
      KVCODEC_ASSIGN_OR_RETURN(bytes, round_trip(half, sh, params_.options));
    } else {
      // [layers][2][tokens][channels]: layer l is a contiguous one-layer cache.
      const KVShape one{1, sh.tokens, sh.kv_heads, sh.head_dim};
      const size_t per_layer = size_t(one.elements());
      for (uint32_t l = 0; l < sh.layers; ++l) {
        EncodeOptions o = params_.options;
        const uint32_t third = uint32_t(uint64_t(l) * 3 / sh.layers);
        o.level = std::clamp(o.level + (*params_.layer_levels)[third], 1, kMaxLevel);
        KVCODEC_ASSIGN_OR_RETURN(uint64_t n, round_trip(std::span(half).subspan(l * per_layer, per_layer), one, o));
        bytes += n;
      }
    }
    out = FloatKV::zeros(sh);
    for (size_t i = 0; i < half.size(); ++i) out.values[i] = detail::f16_to_f32(half[i]);
    return bytes;
  }

 private:
  KvcodecParams params_;
};

}  // namespace

std::unique_ptr<Scheme> make_kvcodec(std::string name, const KvcodecParams& params) {
  return std::make_unique<KvcodecScheme>(std::move(name), params);
}

}  // namespace kvcodec::eval::internal
