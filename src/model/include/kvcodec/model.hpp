// A reference transformer for llama2.c "v0" checkpoints, on the CPU, in float32.
//
// It exists to produce REAL KV caches and to measure what compressing them costs in model
// quality; it is not a serving engine. The architecture is Llama's as llama2.c implements it:
// RMSNorm (eps 1e-5), rotary embeddings on interleaved pairs (2i, 2i+1), grouped-query
// attention, SwiGLU feed-forward, no biases, classifier tied to the embedding or separate.
//
//   KVCODEC_ASSIGN_OR_RETURN(Model m, Model::load("kvc-bytes-a.bin"));
//   KVState kv = m.new_state();
//   std::vector<float> logits;                          // [tokens, vocab]
//   KVCODEC_RETURN_IF_ERROR(m.forward(prompt, kv, &logits));   // prefill
//   KVCODEC_RETURN_IF_ERROR(m.forward(next, kv, &logits));     // continue at kv.tokens()
//
// The KV cache is what a server keeps: per layer, K (after RoPE) and V, each
// [tokens, kv_heads, head_dim] in float32. It converts to and from kvcodec::KVCache
// ([layers, 2, tokens, kv_heads, head_dim] in any storage dtype), so a context can be prefilled,
// compressed, decompressed, loaded back and CONTINUED: forward() on new tokens then attends to
// the supplied (possibly lossy) keys and values.
//
// Thread-safety: a loaded Model is immutable; concurrent forward() calls on distinct KVStates
// are safe. A KVState must not be used by two calls at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/io.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec {

// Hyper-parameters from the checkpoint header.
struct ModelConfig {
  uint32_t dim = 0;         // residual stream width
  uint32_t hidden_dim = 0;  // feed-forward width
  uint32_t layers = 0;
  uint32_t heads = 0;       // query heads
  uint32_t kv_heads = 0;    // key/value heads (grouped-query attention: heads % kv_heads == 0)
  uint32_t vocab_size = 0;
  uint32_t seq_len = 0;     // trained context length: positions must stay below it
  bool shared_classifier = true;  // logits use the token embedding (header vocab_size > 0)

  uint32_t head_dim() const noexcept { return dim / heads; }
  uint32_t kv_dim() const noexcept { return kv_heads * head_dim(); }
  // Shape of this model's KV cache for `tokens` tokens.
  KVShape kv_shape(uint32_t tokens) const noexcept { return {layers, tokens, kv_heads, head_dim()}; }
};

// The KV cache of one sequence in float32: per layer, K and V rows [tokens, kv_heads, head_dim]
// for positions 0 .. tokens()-1. Keys are stored after RoPE, as a serving engine caches them.
class KVState {
 public:
  KVState() = default;
  // An empty cache (zero tokens) for the given geometry.
  KVState(uint32_t layers, uint32_t kv_heads, uint32_t head_dim);

  uint32_t layers() const noexcept { return uint32_t(keys_.size()); }
  uint32_t kv_heads() const noexcept { return kv_heads_; }
  uint32_t head_dim() const noexcept { return head_dim_; }
  uint32_t tokens() const noexcept { return tokens_; }
  KVShape shape() const noexcept { return {layers(), tokens_, kv_heads_, head_dim_}; }

  // Row-major [tokens(), kv_heads, head_dim] of layer `layer` (< layers(), not checked).
  // Pointers stay valid until the state grows or shrinks.
  const float* keys(uint32_t layer) const noexcept { return keys_[layer].data(); }
  const float* values(uint32_t layer) const noexcept { return values_[layer].data(); }
  float* keys(uint32_t layer) noexcept { return keys_[layer].data(); }
  float* values(uint32_t layer) noexcept { return values_[layer].data(); }

  // Drops every token at position >= tokens (a no-op when tokens >= tokens()).
  void truncate(uint32_t tokens);

  // Copies the cache into kvcodec's contiguous layout, rounding to `dtype` (round to nearest
  // even; f8e4m3 saturates).
  StatusOr<KVCache> to_cache(DType dtype) const;
  // Converts a (for example decompressed) cache of any dtype to float32.
  static StatusOr<KVState> from_cache(const KVCache& cache);

 private:
  friend class Model;  // forward() appends rows in place
  void grow(uint32_t count);  // appends `count` zeroed token rows to every layer

  uint32_t kv_heads_ = 0;
  uint32_t head_dim_ = 0;
  uint32_t tokens_ = 0;
  std::vector<std::vector<float>> keys_;    // per layer, tokens_ * kv_heads_ * head_dim_
  std::vector<std::vector<float>> values_;
};

// What one layer's attention computed for the tokens of a forward() call. Spans point into
// buffers owned by forward() and are valid only during the callback.
struct AttentionTrace {
  uint32_t layer = 0;
  uint32_t first_position = 0;  // position of the call's first token
  uint32_t tokens = 0;          // tokens in the call
  // [tokens, heads, head_dim]: the real queries, after RoPE, before the 1/sqrt(head_dim) scale.
  std::span<const float> queries;
  // [tokens, heads, head_dim]: softmax(q k^T / sqrt(head_dim)) v per head, before wo.
  std::span<const float> output;
};

// Observes a forward pass; called synchronously once per layer, in layer order, after the
// layer's attention (so trace.output is final and the layer's new K/V are in the KVState).
class ForwardHooks {
 public:
  virtual ~ForwardHooks() = default;
  virtual void on_attention(const AttentionTrace& trace) = 0;
};

// A ForwardHooks that keeps a copy of every layer's queries and attention output, e.g. to
// compare attention over an original and a decompressed cache with the model's real queries:
//
//   AttentionRecorder rec;
//   m.forward(continuation, kv_with_context, nullptr, &rec);   // context at positions < P
//   m.attention_output(l, rec.queries[l], P, original_context, ref);      // both over the
//   m.attention_output(l, rec.queries[l], P, decompressed_context, out);  // context only
//   // error of layer l: out - ref (rec.outputs[l] also attends to the continuation itself)
struct AttentionRecorder final : ForwardHooks {
  uint32_t first_position = 0;
  uint32_t tokens = 0;
  std::vector<std::vector<float>> queries;  // per layer, [tokens, heads, head_dim]
  std::vector<std::vector<float>> outputs;  // per layer, [tokens, heads, head_dim]
  void on_attention(const AttentionTrace& trace) override;
};

class Model {
 public:
  // Loads a llama2.c "v0" checkpoint. The header is validated (positive dimensions within
  // documented limits, heads divisible by kv_heads, even head_dim) and the file size must equal
  // exactly what the header implies, so a corrupt or truncated file is kCorruptData, never a
  // crash or an oversized allocation. kIoError when the file cannot be read.
  static StatusOr<Model> load(const std::string& path);

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const ModelConfig& config() const noexcept;

  // Worker threads used by forward() for large batches (default: hardware concurrency, at
  // least 1). Small batches (single-token decoding) always run on the calling thread.
  void set_threads(unsigned threads) noexcept;
  unsigned threads() const noexcept;

  // An empty KV cache with this model's geometry.
  KVState new_state() const;
  // Checks that `kv` has this model's layers, kv_heads and head_dim.
  Status check_state(const KVState& kv) const;

  // Runs `tokens` at positions kv.tokens() .. kv.tokens() + n - 1, appending their K and V to
  // `kv`. When `logits` is non-null it is resized to [n, vocab_size] and receives the logits
  // of every input position. `hooks`, when non-null, observes each layer's attention.
  // Errors (kv unchanged): kInvalidArgument for an empty input, a token id outside
  // [0, vocab_size) or a mismatching state; kOutOfRange when the positions would reach seq_len.
  Status forward(std::span<const int32_t> tokens, KVState& kv, std::vector<float>* logits,
                 ForwardHooks* hooks = nullptr) const;

  // Causal multi-head attention of one layer, exactly as forward() computes it, over the keys
  // and values held in `kv`: query i (at position first_position + i) attends to the cached
  // positions t with t <= first_position + i and t < kv.tokens(). So a state holding only a
  // context attends to the context alone, and a state that also holds the queried tokens
  // reproduces forward()'s AttentionTrace::output.
  // queries: [n, heads, head_dim] after RoPE (AttentionTrace::queries); out: resized to the
  // same shape. Errors: kInvalidArgument for a mismatching state, an empty state, a layer out
  // of range or a query size that is not a non-zero multiple of dim.
  Status attention_output(uint32_t layer, std::span<const float> queries, uint32_t first_position,
                          const KVState& kv, std::vector<float>& out) const;

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Index of the largest value of one logits row (the first one on ties), as greedy decoding uses.
int32_t argmax(std::span<const float> row) noexcept;

// Times one prefill of `tokens` tokens (ids i % vocab_size) into a fresh state and returns
// tokens per second of wall time, with the model's current thread count. kOutOfRange when
// tokens exceeds seq_len; kInvalidArgument for 0.
StatusOr<double> measure_prefill_throughput(const Model& model, uint32_t tokens);

}  // namespace kvcodec
