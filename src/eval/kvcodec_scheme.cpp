// kvcodec itself as a scheme: the fp16 cache through encode_into and decode_into; the size is
// the frame's (header, model section, chunk index and bodies).
#include <string>

#include "bytes.hpp"
#include "kvcodec/codec.hpp"
#include "schemes.hpp"

namespace kvcodec::eval::internal {
namespace {

class KvcodecScheme final : public Scheme {
 public:
  KvcodecScheme(std::string name, const EncodeOptions& options)
      : Scheme(std::move(name), options.level, level_label(options.level)), options_(options) {}

  bool lossless() const noexcept override { return options_.level == 0; }

  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    const KVShape& sh = in.shape;
    std::vector<uint16_t> half(in.values.size());
    for (size_t i = 0; i < half.size(); ++i) half[i] = detail::f32_to_f16(in.values[i]);
    const size_t bound = max_encoded_size(sh, DType::kF16, options_);
    if (bound == 0) return InvalidArgument("kvcodec: invalid shape or options");
    std::vector<uint8_t> frame(bound);
    KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(contiguous_view(half.data(), DType::kF16, sh), options_, frame));
    frame.resize(n);

    std::vector<uint16_t> decoded(half.size());
    KVCODEC_RETURN_IF_ERROR(decode_into(frame, contiguous_view(decoded.data(), DType::kF16, sh)));
    out = FloatKV::zeros(sh);
    for (size_t i = 0; i < decoded.size(); ++i) out.values[i] = detail::f16_to_f32(decoded[i]);
    return uint64_t(n);
  }

 private:
  EncodeOptions options_;
};

}  // namespace

std::unique_ptr<const Scheme> make_kvcodec(std::string name, const EncodeOptions& options) {
  return std::make_unique<KvcodecScheme>(std::move(name), options);
}

}  // namespace kvcodec::eval::internal
