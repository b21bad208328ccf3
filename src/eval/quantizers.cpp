// Scalar baselines: raw fp16, zstd on fp16, 8-bit per-token quantization, KIVI.
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "bytes.hpp"
#include "schemes.hpp"

namespace kvcodec::eval::internal {
namespace {

// ---- fp16 ------------------------------------------------------------------------------------
// Layout: shape header, then every value as fp16 in [layers][2][tokens][channels] order.

void write_fp16(const FloatKV& in, std::vector<uint8_t>& out) {
  out.reserve(out.size() + kShapeHeaderBytes + 2 * in.values.size());
  ByteWriter w(out);
  write_shape(w, in.shape);
  for (float v : in.values) w.f16(v);
}

Status read_fp16(std::span<const uint8_t> bytes, FloatKV& out) {
  ByteReader r(bytes);
  KVCODEC_ASSIGN_OR_RETURN(KVShape shape, read_shape(r));
  out = FloatKV::zeros(shape);
  for (float& v : out.values) v = r.f16();
  return r.finish("fp16");
}

class Fp16Scheme final : public Scheme {
 public:
  explicit Fp16Scheme(std::string name) : Scheme(std::move(name), 0, "fp16") {}
  bool lossless() const noexcept override { return true; }
  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    std::vector<uint8_t> bytes;
    write_fp16(in, bytes);
    KVCODEC_RETURN_IF_ERROR(read_fp16(bytes, out));
    return uint64_t(bytes.size());
  }
};

// ---- zstd ------------------------------------------------------------------------------------
// One zstd frame holding the fp16 serialization above; zstd records the content size.

class ZstdScheme final : public Scheme {
 public:
  ZstdScheme(std::string name, int zstd_level)
      : Scheme(std::move(name), zstd_level, "zstd -" + std::to_string(zstd_level)),
        zstd_level_(zstd_level) {}
  bool lossless() const noexcept override { return true; }
  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    std::vector<uint8_t> raw;
    write_fp16(in, raw);
    std::vector<uint8_t> packed(ZSTD_compressBound(raw.size()));
    size_t n = ZSTD_compress(packed.data(), packed.size(), raw.data(), raw.size(), zstd_level_);
    if (ZSTD_isError(n)) return Internal(std::string("ZSTD_compress: ") + ZSTD_getErrorName(n));
    packed.resize(n);

    unsigned long long content = ZSTD_getFrameContentSize(packed.data(), packed.size());
    if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN)
      return CorruptData("zstd frame without a content size");
    std::vector<uint8_t> unpacked(content);
    size_t m = ZSTD_decompress(unpacked.data(), unpacked.size(), packed.data(), packed.size());
    if (ZSTD_isError(m) || m != content) return CorruptData("zstd round trip failed");
    KVCODEC_RETURN_IF_ERROR(read_fp16(unpacked, out));
    return uint64_t(packed.size());
  }

 private:
  int zstd_level_;
};

// ---- int8 per token --------------------------------------------------------------------------
// Layout: shape header, then per (layer, K/V, token): fp16 scale s, channels x int8 codes.
// s = max|x| / 127 rounded UP to fp16, so |x| / s <= 127 and no code is clipped:
// |x - q s| <= s / 2.

class Int8Scheme final : public Scheme {
 public:
  explicit Int8Scheme(std::string name) : Scheme(std::move(name), 8, "8-bit/token") {}
  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    const KVShape& sh = in.shape;
    const size_t c_count = sh.channels();
    const size_t rows = size_t(sh.layers) * 2 * sh.tokens;
    std::vector<uint8_t> bytes;
    bytes.reserve(kShapeHeaderBytes + rows * (2 + c_count));
    ByteWriter w(bytes);
    write_shape(w, sh);
    for (size_t row = 0; row < rows; ++row) {
      const float* x = in.values.data() + row * c_count;
      float amax = 0.0f;
      for (size_t c = 0; c < c_count; ++c) amax = std::max(amax, std::fabs(x[c]));
      const float s = f16_ceil(amax / 127.0f);
      w.f16(s);
      for (size_t c = 0; c < c_count; ++c) {
        float q = s > 0.0f ? std::nearbyint(x[c] / s) : 0.0f;
        w.u8(uint8_t(int8_t(std::clamp(q, -127.0f, 127.0f))));
      }
    }

    ByteReader r(bytes);
    KVCODEC_ASSIGN_OR_RETURN(KVShape shape, read_shape(r));
    out = FloatKV::zeros(shape);
    for (size_t row = 0; row < rows; ++row) {
      const float s = r.f16();
      float* y = out.values.data() + row * c_count;
      for (size_t c = 0; c < c_count; ++c) y[c] = float(int8_t(r.u8())) * s;
    }
    KVCODEC_RETURN_IF_ERROR(r.finish("int8"));
    return uint64_t(bytes.size());
  }
};

// ---- KIVI ------------------------------------------------------------------------------------
// Asymmetric b-bit quantization in groups: for each group, zero z = min (rounded down to fp16)
// and scale s = (max - z) / (2^b - 1) rounded UP to fp16, q = round((x - z) / s) in
// [0, 2^b - 1], x_hat = z + q s, so |x - x_hat| <= s / 2.
// Keys: per channel, groups of `group` consecutive tokens. Values: per token, groups of `group`
// consecutive channels. The last `residual` tokens stay fp16.
// Layout: shape header | per group (keys then values, layer by layer): fp16 zero, fp16 scale |
// all codes bit-packed LSB first in the same group order | residual tokens as fp16
// ([layers][2][residual tokens][channels]).

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>& out) : out_(out) {}
  void put(uint32_t v, int bits) {
    acc_ |= uint64_t(v) << fill_;
    fill_ += bits;
    while (fill_ >= 8) {
      out_.push_back(uint8_t(acc_));
      acc_ >>= 8;
      fill_ -= 8;
    }
  }
  void flush() {
    if (fill_ > 0) out_.push_back(uint8_t(acc_));
    acc_ = 0;
    fill_ = 0;
  }

 private:
  std::vector<uint8_t>& out_;
  uint64_t acc_ = 0;
  int fill_ = 0;
};

class BitReader {
 public:
  explicit BitReader(std::span<const uint8_t> in) : in_(in) {}
  uint32_t get(int bits) {
    while (fill_ < bits) {
      acc_ |= uint64_t(pos_ < in_.size() ? in_[pos_] : 0) << fill_;
      ++pos_;
      fill_ += 8;
    }
    uint32_t v = uint32_t(acc_ & ((uint64_t(1) << bits) - 1));
    acc_ >>= bits;
    fill_ -= bits;
    return v;
  }
  bool overran() const noexcept { return pos_ > in_.size(); }

 private:
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  uint64_t acc_ = 0;
  int fill_ = 0;
};

// Visits every quantized group of the cache in stream order: fn(indices), where indices lists
// the offsets (into FloatKV::values) of the group's members.
template <typename Fn>
void for_each_kivi_group(const KVShape& sh, const KiviParams& p, Fn&& fn) {
  const uint32_t c_count = uint32_t(sh.channels());
  const uint32_t t_quant = sh.tokens - std::min(p.residual, sh.tokens);
  const size_t slice = size_t(sh.tokens) * c_count;
  std::vector<size_t> idx;
  idx.reserve(p.group);
  for (uint32_t l = 0; l < sh.layers; ++l) {
    const size_t k_base = (size_t(l) * 2 + 0) * slice;
    for (uint32_t c = 0; c < c_count; ++c) {
      for (uint32_t t0 = 0; t0 < t_quant; t0 += p.group) {
        idx.clear();
        for (uint32_t t = t0; t < std::min(t_quant, t0 + p.group); ++t) idx.push_back(k_base + size_t(t) * c_count + c);
        fn(idx);
      }
    }
    const size_t v_base = (size_t(l) * 2 + 1) * slice;
    for (uint32_t t = 0; t < t_quant; ++t) {
      for (uint32_t c0 = 0; c0 < c_count; c0 += p.group) {
        idx.clear();
        for (uint32_t c = c0; c < std::min(c_count, c0 + p.group); ++c) idx.push_back(v_base + size_t(t) * c_count + c);
        fn(idx);
      }
    }
  }
}

// Visits the residual (fp16) elements in stream order.
template <typename Fn>
void for_each_kivi_residual(const KVShape& sh, const KiviParams& p, Fn&& fn) {
  const size_t c_count = sh.channels();
  const uint32_t t_quant = sh.tokens - std::min(p.residual, sh.tokens);
  const size_t slice = size_t(sh.tokens) * c_count;
  for (size_t lkv = 0; lkv < size_t(sh.layers) * 2; ++lkv)
    for (size_t i = size_t(t_quant) * c_count; i < slice; ++i) fn(lkv * slice + i);
}

class KiviScheme final : public Scheme {
 public:
  KiviScheme(std::string name, const KiviParams& p)
      : Scheme(std::move(name), p.bits, std::to_string(p.bits) + "-bit"), p_(p) {}

  StatusOr<uint64_t> run(const FloatKV& in, FloatKV& out) const override {
    const uint32_t qmax = (1u << p_.bits) - 1;
    std::vector<uint8_t> params, codes, residual;
    ByteWriter pw(params);
    write_shape(pw, in.shape);
    BitWriter cw(codes);
    for_each_kivi_group(in.shape, p_, [&](const std::vector<size_t>& idx) {
      float lo = in.values[idx[0]], hi = lo;
      for (size_t i : idx) {
        lo = std::min(lo, in.values[i]);
        hi = std::max(hi, in.values[i]);
      }
      const float z = f16_floor(lo);
      const float s = f16_ceil((hi - z) / float(qmax));
      pw.f16(z);
      pw.f16(s);
      for (size_t i : idx) {
        float q = s > 0.0f ? std::nearbyint((in.values[i] - z) / s) : 0.0f;
        cw.put(uint32_t(std::clamp(q, 0.0f, float(qmax))), p_.bits);
      }
    });
    cw.flush();
    ByteWriter rw(residual);
    for_each_kivi_residual(in.shape, p_, [&](size_t i) { rw.f16(in.values[i]); });

    std::vector<uint8_t> bytes = params;
    bytes.insert(bytes.end(), codes.begin(), codes.end());
    bytes.insert(bytes.end(), residual.begin(), residual.end());
    KVCODEC_RETURN_IF_ERROR(decode(bytes, out));
    return uint64_t(bytes.size());
  }

 private:
  Status decode(std::span<const uint8_t> bytes, FloatKV& out) const {
    ByteReader r(bytes);
    KVCODEC_ASSIGN_OR_RETURN(KVShape shape, read_shape(r));
    out = FloatKV::zeros(shape);
    // Sizes of the three sections follow from the shape and the parameters.
    uint64_t groups = 0, quantized = 0;
    for_each_kivi_group(shape, p_, [&](const std::vector<size_t>& idx) {
      ++groups;
      quantized += idx.size();
    });
    std::span<const uint8_t> params = r.bytes(4 * groups);
    std::span<const uint8_t> codes = r.bytes((quantized * p_.bits + 7) / 8);
    if (!r.ok()) return CorruptData("kivi: truncated stream");
    ByteReader pr(params);
    BitReader cr(codes);
    for_each_kivi_group(shape, p_, [&](const std::vector<size_t>& idx) {
      const float z = pr.f16();
      const float s = pr.f16();
      for (size_t i : idx) out.values[i] = z + float(cr.get(p_.bits)) * s;
    });
    if (cr.overran()) return CorruptData("kivi: truncated codes");
    for_each_kivi_residual(shape, p_, [&](size_t i) { out.values[i] = r.f16(); });
    return r.finish("kivi");
  }

  KiviParams p_;
};

}  // namespace

std::unique_ptr<Scheme> make_fp16(std::string name) { return std::make_unique<Fp16Scheme>(std::move(name)); }
std::unique_ptr<Scheme> make_zstd(std::string name, int zstd_level) {
  return std::make_unique<ZstdScheme>(std::move(name), zstd_level);
}
std::unique_ptr<Scheme> make_int8(std::string name) { return std::make_unique<Int8Scheme>(std::move(name)); }
std::unique_ptr<Scheme> make_kivi(std::string name, const KiviParams& p) {
  return std::make_unique<KiviScheme>(std::move(name), p);
}

}  // namespace kvcodec::eval::internal
