// Reference transformer for llama2.c "v0" checkpoints (see src/model/include/kvcodec/model.hpp).
//
// The per-token arithmetic follows llama2.c's run.c (RMSNorm with eps added to the mean square,
// RoPE frequencies from powf/cosf/sinf in float, softmax with max subtraction, SiLU as
// x / (1 + exp(-x))) so that greedy decoding reproduces it token for token. The matrix products
// are batched over all tokens of a call with Eigen, which sums in a different order than
// run.c's loops; the difference is rounding noise (about 1e-6 relative).
#include "kvcodec/model.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <new>
#include <string>
#include <thread>

#include "common/dtype.hpp"
#include "common/parallel.hpp"

namespace kvcodec {
namespace {

// Threads are started per call. A prefill of a few hundred tokens does milliseconds of work per
// call, against tens of microseconds to start a thread, so a pool would buy nothing; calls pass
// a minimum amount of work per thread so that small ones stay on the calling thread.
using detail::parallel_ranges;
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMatrixMap = Eigen::Map<const RowMatrix>;
using MatrixMap = Eigen::Map<RowMatrix>;
// A block of columns of a row-major matrix: rows keep the parent's row stride.
using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
using StridedMap = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;

constexpr float kRmsEps = 1e-5f;
constexpr float kRopeTheta = 10000.0f;
constexpr size_t kHeaderInts = 7;

// Header sanity limits. They keep every size computation far from overflow; the file size
// check then guarantees that what is allocated is what the file holds.
constexpr int32_t kMaxDim = 1 << 16;
constexpr int32_t kMaxHidden = 1 << 20;
constexpr int32_t kMaxVocab = 1 << 22;

// Work below which a call stays on the calling thread: single-token decoding of these small
// models is faster without thread start-up.
constexpr size_t kMinRowsPerThread = 8;

// Weights, as views into one float buffer holding the checkpoint after its header.
struct Weights {
  const float* token_embedding;  // [vocab, dim]
  const float* rms_att;          // [layers, dim]
  const float* wq;               // [layers, dim, dim]
  const float* wk;               // [layers, kv_dim, dim]
  const float* wv;               // [layers, kv_dim, dim]
  const float* wo;               // [layers, dim, dim]
  const float* rms_ffn;          // [layers, dim]
  const float* w1;               // [layers, hidden, dim]
  const float* w2;               // [layers, dim, hidden]
  const float* w3;               // [layers, hidden, dim]
  const float* rms_final;        // [dim]
  const float* wcls;             // [vocab, dim]
};

// y[n, out] = x[n, in] * w^T with w row-major [out, in] (PyTorch's Linear.weight), split over
// row blocks of x.
Status matmul(unsigned threads, const float* x, size_t n, const float* w, size_t out, size_t in,
              float* y) {
  ConstMatrixMap wm(w, Eigen::Index(out), Eigen::Index(in));
  return parallel_ranges(n, int(threads), kMinRowsPerThread, [&](size_t b, size_t e) {
    ConstMatrixMap xm(x + b * in, Eigen::Index(e - b), Eigen::Index(in));
    MatrixMap ym(y + b * out, Eigen::Index(e - b), Eigen::Index(out));
    ym.noalias() = xm * wm.transpose();
  });
}

// out[i] = weight * x[i] / sqrt(mean(x[i]^2) + eps), row by row, as run.c's rmsnorm.
void rmsnorm(const float* x, size_t n, size_t dim, const float* weight, float* out) {
  for (size_t r = 0; r < n; ++r) {
    const float* xr = x + r * dim;
    float* o = out + r * dim;
    float ss = 0.0f;
    for (size_t j = 0; j < dim; ++j) ss += xr[j] * xr[j];
    ss /= float(dim);
    ss += kRmsEps;
    ss = 1.0f / std::sqrt(ss);
    for (size_t j = 0; j < dim; ++j) o[j] = weight[j] * (ss * xr[j]);
  }
}

// Rotates interleaved pairs (2i, 2i+1) of each head of `rows` (n rows of `width` floats, heads
// of head_dim) by angle position * 10000^-(2i / head_dim), computed in float as run.c does.
void apply_rope(float* rows, size_t n, size_t width, uint32_t head_dim, uint32_t first_position) {
  const uint32_t pairs = head_dim / 2;
  std::vector<float> cs(pairs), sn(pairs);
  for (size_t r = 0; r < n; ++r) {
    const int pos = int(first_position + r);
    for (uint32_t i = 0; i < pairs; ++i) {
      float freq = 1.0f / std::pow(kRopeTheta, float(2 * i) / float(head_dim));
      float val = float(pos) * freq;
      cs[i] = std::cos(val);
      sn[i] = std::sin(val);
    }
    float* v = rows + r * width;
    for (size_t base = 0; base < width; base += head_dim) {
      for (uint32_t i = 0; i < pairs; ++i) {
        float v0 = v[base + 2 * i], v1 = v[base + 2 * i + 1];
        v[base + 2 * i] = v0 * cs[i] - v1 * sn[i];
        v[base + 2 * i + 1] = v0 * sn[i] + v1 * cs[i];
      }
    }
  }
}

// Causal attention of one layer for n query rows (positions first_position + i) over kv's
// cached rows; see Model::attention_output for the masking rule. q and out are [n, dim].
Status attend(const ModelConfig& c, unsigned threads, uint32_t layer, const float* q, size_t n,
            uint32_t first_position, const KVState& kv, float* out) {
  const Eigen::Index hs = c.head_dim(), dim = c.dim, kv_dim = c.kv_dim();
  const uint32_t group = c.heads / c.kv_heads;
  const float scale = std::sqrt(float(hs));
  // Queries go in blocks of kQueryBlock rows, each block scored only against the keys its last
  // row may see: in a prefill this skips most of the masked upper triangle.
  constexpr Eigen::Index kQueryBlock = 64;
  // Heads are independent: each thread takes whole heads.
  return parallel_ranges(c.heads, int(threads), 1, [&](size_t hb, size_t he) {
    RowMatrix scores;
    for (size_t h = hb; h < he; ++h) {
      const Eigen::Index g = Eigen::Index(h / group);
      for (Eigen::Index i0 = 0; i0 < Eigen::Index(n); i0 += kQueryBlock) {
        const Eigen::Index rows = std::min<Eigen::Index>(kQueryBlock, Eigen::Index(n) - i0);
        const Eigen::Index visible = std::min<int64_t>(int64_t(first_position) + i0 + rows, kv.tokens());
        ConstStridedMap qh(q + i0 * dim + h * hs, rows, hs, Eigen::OuterStride<>(dim));
        ConstStridedMap kh(kv.keys(layer) + g * hs, visible, hs, Eigen::OuterStride<>(kv_dim));
        ConstStridedMap vh(kv.values(layer) + g * hs, visible, hs, Eigen::OuterStride<>(kv_dim));
        scores.noalias() = qh * kh.transpose();
        for (Eigen::Index i = 0; i < rows; ++i) {
          float* s = scores.row(i).data();
          const Eigen::Index len = std::min<Eigen::Index>(int64_t(first_position) + i0 + i + 1, visible);
          float mx = -std::numeric_limits<float>::infinity();
          for (Eigen::Index t = 0; t < len; ++t) {
            s[t] /= scale;
            mx = std::max(mx, s[t]);
          }
          float sum = 0.0f;
          for (Eigen::Index t = 0; t < len; ++t) {
            s[t] = std::exp(s[t] - mx);
            sum += s[t];
          }
          for (Eigen::Index t = 0; t < len; ++t) s[t] /= sum;
          std::fill(s + len, s + visible, 0.0f);  // masked: later positions
        }
        StridedMap oh(out + i0 * dim + h * hs, rows, hs, Eigen::OuterStride<>(dim));
        oh.noalias() = scores * vh;
      }
    }
  });
}

Status validate_header(const int32_t (&h)[kHeaderInts], ModelConfig& c) {
  const int32_t dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4],
                vocab = h[5], seq_len = h[6];
  if (dim <= 0 || dim > kMaxDim || hidden <= 0 || hidden > kMaxHidden || layers <= 0 ||
      layers > int32_t(kMaxLayers) || heads <= 0 || kv_heads <= 0 || vocab == 0 ||
      vocab < -kMaxVocab || vocab > kMaxVocab || seq_len <= 0 || seq_len > int32_t(kMaxTokens))
    return CorruptData("checkpoint header: dimension out of range");
  if (dim % heads != 0 || heads % kv_heads != 0 || (dim / heads) % 2 != 0)
    return CorruptData("checkpoint header: dim must split into heads of even size, heads into kv_heads");
  c.dim = uint32_t(dim);
  c.hidden_dim = uint32_t(hidden);
  c.layers = uint32_t(layers);
  c.heads = uint32_t(heads);
  c.kv_heads = uint32_t(kv_heads);
  c.vocab_size = uint32_t(vocab < 0 ? -vocab : vocab);
  c.seq_len = uint32_t(seq_len);
  c.shared_classifier = vocab > 0;
  return Status::Ok();
}

// Floats after the header that the configuration implies, including the two unused RoPE
// tables (freq_cis_real, freq_cis_imag: seq_len * head_dim / 2 each).
uint64_t weight_floats(const ModelConfig& c) {
  const uint64_t d = c.dim, kv = c.kv_dim(), hid = c.hidden_dim, L = c.layers, V = c.vocab_size;
  uint64_t n = V * d                       // token_embedding
               + L * d                     // rms_att
               + L * d * d                 // wq
               + 2 * L * kv * d            // wk, wv
               + L * d * d                 // wo
               + L * d                     // rms_ffn
               + 3 * L * hid * d           // w1, w2, w3
               + d                         // rms_final
               + uint64_t(c.seq_len) * c.head_dim();  // freq_cis_real + freq_cis_imag
  if (!c.shared_classifier) n += V * d;    // wcls
  return n;
}

}  // namespace

// ---- KVState --------------------------------------------------------------------------------

KVState::KVState(uint32_t layers, uint32_t kv_heads, uint32_t head_dim)
    : kv_heads_(kv_heads), head_dim_(head_dim), keys_(layers), values_(layers) {}

void KVState::truncate(uint32_t tokens) {
  if (tokens >= tokens_) return;
  const size_t row = size_t(kv_heads_) * head_dim_;
  for (auto& k : keys_) k.resize(tokens * row);
  for (auto& v : values_) v.resize(tokens * row);
  tokens_ = tokens;
}

void KVState::grow(uint32_t count) {
  const size_t row = size_t(kv_heads_) * head_dim_;
  try {
    for (auto& k : keys_) k.resize((size_t(tokens_) + count) * row);
    for (auto& v : values_) v.resize((size_t(tokens_) + count) * row);
  } catch (const std::bad_alloc&) {  // leave every layer as it was
    for (auto& k : keys_) k.resize(size_t(tokens_) * row);
    for (auto& v : values_) v.resize(size_t(tokens_) * row);
    throw;
  }
  tokens_ += count;
}

StatusOr<KVCache> KVState::to_cache(DType dtype) const {
  KVCODEC_ASSIGN_OR_RETURN(KVCache cache, KVCache::allocate(dtype, shape()));
  const size_t esize = dtype_size(dtype);
  uint8_t* dst = cache.data.data();
  for (uint32_t l = 0; l < layers(); ++l) {
    for (const std::vector<float>* src : {&keys_[l], &values_[l]})
      for (float f : *src) {
        detail::store_from_f32(dst, uint8_t(dtype), f);
        dst += esize;
      }
  }
  return cache;
}

StatusOr<KVState> KVState::from_cache(const KVCache& cache) {
  const KVShape& s = cache.shape;
  KVCODEC_RETURN_IF_ERROR(validate_shape(s).with_context("from_cache"));
  if (!is_valid_dtype(uint8_t(cache.dtype))) return InvalidArgument("from_cache: unknown dtype");
  const size_t esize = dtype_size(cache.dtype);
  if (cache.data.size() != s.elements() * esize)
    return InvalidArgument("from_cache: data size does not match shape and dtype");
  KVState kv(s.layers, s.kv_heads, s.head_dim);
  try {
    kv.grow(s.tokens);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("from_cache: cannot allocate the state");
  }
  const size_t per_tensor = size_t(s.tokens) * s.channels();
  const uint8_t* src = cache.data.data();
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (std::vector<float>* dst : {&kv.keys_[l], &kv.values_[l]}) {
      for (size_t i = 0; i < per_tensor; ++i, src += esize)
        (*dst)[i] = detail::load_as_f32(src, uint8_t(cache.dtype));
    }
  }
  return kv;
}

void AttentionRecorder::on_attention(const AttentionTrace& trace) {
  if (queries.size() <= trace.layer) {
    queries.resize(trace.layer + 1);
    outputs.resize(trace.layer + 1);
  }
  first_position = trace.first_position;
  tokens = trace.tokens;
  queries[trace.layer].assign(trace.queries.begin(), trace.queries.end());
  outputs[trace.layer].assign(trace.output.begin(), trace.output.end());
}

// ---- Model ----------------------------------------------------------------------------------

struct Model::Impl {
  ModelConfig config;
  std::vector<float> data;  // the checkpoint after its header
  Weights w{};
  unsigned threads = 1;
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

const ModelConfig& Model::config() const noexcept { return impl_->config; }
void Model::set_threads(unsigned threads) noexcept { impl_->threads = std::max(1u, threads); }
unsigned Model::threads() const noexcept { return impl_->threads; }

KVState Model::new_state() const {
  const ModelConfig& c = impl_->config;
  return KVState(c.layers, c.kv_heads, c.head_dim());
}

Status Model::check_state(const KVState& kv) const {
  const ModelConfig& c = impl_->config;
  if (kv.layers() != c.layers || kv.kv_heads() != c.kv_heads || kv.head_dim() != c.head_dim())
    return InvalidArgument("KV state geometry (layers, kv_heads, head_dim) does not match the model");
  return Status::Ok();
}

StatusOr<Model> Model::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError("cannot open checkpoint " + path);
  std::error_code ec;
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  if (ec) return IoError("cannot stat checkpoint " + path);
  int32_t header[kHeaderInts];
  if (file_size < sizeof(header)) return CorruptData("checkpoint shorter than its header: " + path);
  if (!f.read(reinterpret_cast<char*>(header), sizeof(header))) return IoError("cannot read " + path);

  auto impl = std::make_unique<Impl>();
  ModelConfig& c = impl->config;
  KVCODEC_RETURN_IF_ERROR(validate_header(header, c));
  const uint64_t floats = weight_floats(c);
  if (file_size != sizeof(header) + floats * sizeof(float))
    return CorruptData("checkpoint size " + std::to_string(file_size) + " does not match its header (" +
                       std::to_string(sizeof(header) + floats * sizeof(float)) + " bytes expected)");
  try {
    impl->data.resize(floats);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("cannot allocate the model weights");
  }
  if (!f.read(reinterpret_cast<char*>(impl->data.data()), std::streamsize(floats * sizeof(float))))
    return IoError("cannot read the weights of " + path);

  const uint64_t d = c.dim, kv = c.kv_dim(), hid = c.hidden_dim, L = c.layers, V = c.vocab_size;
  const float* p = impl->data.data();
  auto take = [&p](uint64_t n) {
    const float* at = p;
    p += n;
    return at;
  };
  Weights& w = impl->w;
  w.token_embedding = take(V * d);
  w.rms_att = take(L * d);
  w.wq = take(L * d * d);
  w.wk = take(L * kv * d);
  w.wv = take(L * kv * d);
  w.wo = take(L * d * d);
  w.rms_ffn = take(L * d);
  w.w1 = take(L * hid * d);
  w.w2 = take(L * d * hid);
  w.w3 = take(L * hid * d);
  w.rms_final = take(d);
  take(uint64_t(c.seq_len) * c.head_dim());  // freq_cis tables: recomputed as run.c does
  w.wcls = c.shared_classifier ? w.token_embedding : take(V * d);

  impl->threads = std::max(1u, std::thread::hardware_concurrency());
  return Model(std::move(impl));
}

Status Model::forward(std::span<const int32_t> tokens, KVState& kv, std::vector<float>* logits,
                      ForwardHooks* hooks) const {
  const ModelConfig& c = impl_->config;
  const Weights& w = impl_->w;
  const unsigned threads = impl_->threads;
  KVCODEC_RETURN_IF_ERROR(check_state(kv));
  if (tokens.empty()) return InvalidArgument("forward: no tokens");
  for (int32_t t : tokens)
    if (t < 0 || uint32_t(t) >= c.vocab_size)
      return InvalidArgument("forward: token id " + std::to_string(t) + " outside the vocabulary");
  const uint32_t first = kv.tokens();
  if (uint64_t(first) + tokens.size() > c.seq_len)
    return OutOfRange("forward: positions up to " + std::to_string(uint64_t(first) + tokens.size()) +
                      " exceed the model's seq_len " + std::to_string(c.seq_len));

  const size_t n = tokens.size(), dim = c.dim, kv_dim = c.kv_dim(), hidden = c.hidden_dim;
  // The layers, run on the state grown by n positions; any failure leaves the state as it was.
  auto run = [&]() -> Status {
    std::vector<float> x(n * dim), xn(n * dim), q(n * dim), att(n * dim), h1(n * hidden),
        h3(n * hidden);
    for (size_t i = 0; i < n; ++i)
      std::memcpy(&x[i * dim], w.token_embedding + size_t(tokens[i]) * dim, dim * sizeof(float));
    kv.grow(uint32_t(n));

    for (uint32_t l = 0; l < c.layers; ++l) {
      // Attention block.
      rmsnorm(x.data(), n, dim, w.rms_att + l * dim, xn.data());
      float* k_rows = kv.keys(l) + size_t(first) * kv_dim;
      float* v_rows = kv.values(l) + size_t(first) * kv_dim;
      KVCODEC_RETURN_IF_ERROR(matmul(threads, xn.data(), n, w.wq + size_t(l) * dim * dim, dim, dim, q.data()));
      KVCODEC_RETURN_IF_ERROR(matmul(threads, xn.data(), n, w.wk + size_t(l) * kv_dim * dim, kv_dim, dim, k_rows));
      KVCODEC_RETURN_IF_ERROR(matmul(threads, xn.data(), n, w.wv + size_t(l) * kv_dim * dim, kv_dim, dim, v_rows));
      apply_rope(q.data(), n, dim, c.head_dim(), first);
      apply_rope(k_rows, n, kv_dim, c.head_dim(), first);
      KVCODEC_RETURN_IF_ERROR(attend(c, threads, l, q.data(), n, first, kv, att.data()));
      if (hooks) hooks->on_attention({l, first, uint32_t(n), q, att});
      KVCODEC_RETURN_IF_ERROR(matmul(threads, att.data(), n, w.wo + size_t(l) * dim * dim, dim, dim, xn.data()));
      for (size_t i = 0; i < n * dim; ++i) x[i] += xn[i];

      // Feed-forward block: w2(silu(w1 x) * w3 x).
      rmsnorm(x.data(), n, dim, w.rms_ffn + l * dim, xn.data());
      KVCODEC_RETURN_IF_ERROR(matmul(threads, xn.data(), n, w.w1 + size_t(l) * hidden * dim, hidden, dim, h1.data()));
      KVCODEC_RETURN_IF_ERROR(matmul(threads, xn.data(), n, w.w3 + size_t(l) * hidden * dim, hidden, dim, h3.data()));
      for (size_t i = 0; i < n * hidden; ++i) {
        float v = h1[i];
        v *= 1.0f / (1.0f + std::exp(-v));
        h1[i] = v * h3[i];
      }
      KVCODEC_RETURN_IF_ERROR(matmul(threads, h1.data(), n, w.w2 + size_t(l) * dim * hidden, dim, hidden, xn.data()));
      for (size_t i = 0; i < n * dim; ++i) x[i] += xn[i];
    }

    if (logits) {
      rmsnorm(x.data(), n, dim, w.rms_final, xn.data());
      logits->resize(n * c.vocab_size);
      KVCODEC_RETURN_IF_ERROR(matmul(threads, xn.data(), n, w.wcls, c.vocab_size, dim, logits->data()));
    }
    return Status::Ok();
  };
  Status status;
  try {
    status = run();
  } catch (const std::bad_alloc&) {
    status = ResourceExhausted("forward: out of memory");
  }
  if (!status.ok()) kv.truncate(first);
  return status;
}

Status Model::attention_output(uint32_t layer, std::span<const float> queries,
                               uint32_t first_position, const KVState& kv,
                               std::vector<float>& out) const {
  const ModelConfig& c = impl_->config;
  KVCODEC_RETURN_IF_ERROR(check_state(kv));
  if (layer >= c.layers) return InvalidArgument("attention_output: layer out of range");
  if (kv.tokens() == 0) return InvalidArgument("attention_output: empty KV state");
  if (queries.empty() || queries.size() % c.dim != 0)
    return InvalidArgument("attention_output: queries must be [n, heads, head_dim] with n > 0");
  const size_t n = queries.size() / c.dim;
  try {
    out.resize(queries.size());
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("attention_output: out of memory");
  }
  return attend(c, impl_->threads, layer, queries.data(), n, first_position, kv, out.data());
}

int32_t argmax(std::span<const float> row) noexcept {
  int32_t best = 0;
  for (size_t i = 1; i < row.size(); ++i)
    if (row[i] > row[size_t(best)]) best = int32_t(i);
  return best;
}

StatusOr<double> measure_prefill_throughput(const Model& model, uint32_t tokens) {
  const ModelConfig& c = model.config();
  if (tokens == 0) return InvalidArgument("measure_prefill_throughput: zero tokens");
  if (tokens > c.seq_len) return OutOfRange("measure_prefill_throughput: more tokens than seq_len");
  std::vector<int32_t> ids(tokens);
  for (uint32_t i = 0; i < tokens; ++i) ids[i] = int32_t(i % c.vocab_size);
  KVState kv = model.new_state();
  const auto start = std::chrono::steady_clock::now();
  KVCODEC_RETURN_IF_ERROR(model.forward(ids, kv, nullptr));
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return double(tokens) / std::max(elapsed.count(), 1e-9);
}

}  // namespace kvcodec
