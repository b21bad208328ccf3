// ZFP fixed-accuracy baseline (libzfp): each (layer, K/V) array [tokens, channels] is widened
// to fp32 and compressed as a 2-D field (channels the fast dimension) with tolerance
// t * RMS(array). ZFP guarantees |x - x_hat| <= tolerance.
//
// Stream layout: shape header, then per (layer, K/V): u32 length, and that many bytes of one ZFP
// stream carrying its full header (magic, field dimensions, mode: the decoder needs nothing
// else) followed by the compressed blocks.
#include <zfp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "bytes.hpp"
#include "schemes.hpp"

namespace kvcodec::eval::internal {
namespace {

struct ZfpStreamDeleter {
  void operator()(zfp_stream* z) const { zfp_stream_close(z); }
};
struct ZfpFieldDeleter {
  void operator()(zfp_field* f) const { zfp_field_free(f); }
};
struct BitstreamDeleter {
  void operator()(bitstream* s) const { stream_close(s); }
};
using ZfpStream = std::unique_ptr<zfp_stream, ZfpStreamDeleter>;
using ZfpField = std::unique_ptr<zfp_field, ZfpFieldDeleter>;
using Bitstream = std::unique_ptr<bitstream, BitstreamDeleter>;

std::string tolerance_label(double fraction) {
  char buf[48];
  if (fraction < 1.0 && std::fabs(1.0 / fraction - std::round(1.0 / fraction)) < 1e-9)
    std::snprintf(buf, sizeof buf, "tol=rms/%g", 1.0 / fraction);
  else
    std::snprintf(buf, sizeof buf, "tol=%g*rms", fraction);
  return buf;
}

class ZfpScheme final : public Scheme {
 public:
  ZfpScheme(std::string name, int level, double rms_fraction)
      : Scheme(std::move(name), level, tolerance_label(rms_fraction)), fraction_(rms_fraction) {}

  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    const KVShape& sh = in.shape;
    std::vector<uint8_t> bytes;
    ByteWriter w(bytes);
    write_shape(w, sh);
    std::vector<float> slice(in.slice_size());
    for (uint32_t l = 0; l < sh.layers; ++l) {
      for (uint32_t kv = 0; kv < 2; ++kv) {
        std::copy_n(in.slice(l, kv), slice.size(), slice.data());
        double sum2 = 0.0;
        for (float v : slice) sum2 += double(v) * v;
        const double rms = std::sqrt(sum2 / double(slice.size()));
        KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> s, compress(slice, sh, rms > 0.0 ? fraction_ * rms : 1.0));
        w.u32(uint32_t(s.size()));
        w.bytes(s);
      }
    }

    ByteReader r(bytes);
    KVCODEC_ASSIGN_OR_RETURN(KVShape shape, read_shape(r));
    out = FloatKV::zeros(shape);
    for (uint32_t l = 0; l < shape.layers; ++l) {
      for (uint32_t kv = 0; kv < 2; ++kv) {
        std::span<const uint8_t> s = r.bytes(r.u32());
        if (!r.ok()) return CorruptData("zfp: truncated stream");
        KVCODEC_RETURN_IF_ERROR(decompress(s, shape, out.slice(l, kv)));
      }
    }
    KVCODEC_RETURN_IF_ERROR(r.finish("zfp"));
    return uint64_t(bytes.size());
  }

 private:
  static StatusOr<std::vector<uint8_t>> compress(std::vector<float>& slice, const KVShape& sh,
                                                 double tolerance) {
    ZfpField field(zfp_field_2d(slice.data(), zfp_type_float, sh.channels(), sh.tokens));
    ZfpStream zfp(zfp_stream_open(nullptr));
    if (!field || !zfp) return ResourceExhausted("zfp: out of memory");
    zfp_stream_set_accuracy(zfp.get(), tolerance);
    std::vector<uint8_t> buffer(zfp_stream_maximum_size(zfp.get(), field.get()));
    Bitstream bits(stream_open(buffer.data(), buffer.size()));
    zfp_stream_set_bit_stream(zfp.get(), bits.get());
    zfp_stream_rewind(zfp.get());
    if (!zfp_write_header(zfp.get(), field.get(), ZFP_HEADER_FULL)) return Internal("zfp: header");
    const size_t n = zfp_compress(zfp.get(), field.get());
    if (n == 0) return Internal("zfp_compress failed");
    buffer.resize(n);
    return buffer;
  }

  static Status decompress(std::span<const uint8_t> s, const KVShape& sh, float* dst) {
    // zfp reads whole 64-bit words: give it an aligned copy padded to a word boundary.
    std::vector<uint64_t> words((s.size() + 7) / 8, 0);
    std::memcpy(words.data(), s.data(), s.size());
    Bitstream bits(stream_open(words.data(), words.size() * 8));
    ZfpStream zfp(zfp_stream_open(bits.get()));
    ZfpField field(zfp_field_alloc());
    if (!bits || !zfp || !field) return ResourceExhausted("zfp: out of memory");
    if (!zfp_read_header(zfp.get(), field.get(), ZFP_HEADER_FULL)) return CorruptData("zfp: bad header");
    if (field->type != zfp_type_float || field->nx != sh.channels() || field->ny != sh.tokens || field->nz != 0)
      return CorruptData("zfp: field does not match the cache shape");
    zfp_field_set_pointer(field.get(), dst);
    if (zfp_decompress(zfp.get(), field.get()) == 0) return CorruptData("zfp_decompress failed");
    return Status::Ok();
  }

  double fraction_;
};

}  // namespace

std::unique_ptr<Scheme> make_zfp(std::string name, int level, double rms_fraction) {
  return std::make_unique<ZfpScheme>(std::move(name), level, rms_fraction);
}

}  // namespace kvcodec::eval::internal
