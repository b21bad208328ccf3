// Microbenchmarks of each stage: quantize, rANS encode/decode, whole encode/decode. Inputs are
// synthetic caches with statistics fitted to real ones (kvcodec/synthetic.hpp). Throughput is
// reported as bytes of uncompressed fp16 per second ("bytes_per_second"), plus bits/element.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "encode/quantize_row.hpp"
#include "kvcodec/codec.hpp"
#include "common/quant.hpp"
#include "common/entropy.hpp"
#include "encode/quantize.hpp"
#include "kvcodec/synthetic.hpp"

namespace {

using namespace kvcodec;

const KVCache& cache(uint32_t tokens) {
  static std::vector<std::pair<uint32_t, KVCache>> made;
  for (auto& [t, c] : made)
    if (t == tokens) return c;
  // A Llama-3-8B layer count would make setup slow; 4 layers keep the per-element cost the same.
  auto kv = make_synthetic(KVShape{4, tokens, 8, 128}, DType::kF16, 1, reference_kv_stats(), 500000.0f);
  if (!kv.ok()) std::abort();
  made.emplace_back(tokens, std::move(*kv));
  return made.back().second;
}

void BM_Encode(benchmark::State& st) {
  const KVCache& kv = cache(uint32_t(st.range(1)));
  EncodeOptions o;
  o.level = int(st.range(0));
  std::vector<uint8_t> frame(max_encoded_size(kv.shape, kv.dtype, o));
  KVView v = contiguous_view(const_cast<uint8_t*>(kv.data.data()), kv.dtype, kv.shape);
  size_t n = 0;
  for (auto _ : st) {
    auto r = encode_into(v, o, frame);
    if (!r.ok()) st.SkipWithError(r.status().to_string().c_str());
    n = r.ok() ? *r : 0;
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(kv.shape.elements() * 2));
  st.counters["bits_per_element"] = 8.0 * double(n) / double(kv.shape.elements());
}

void BM_Decode(benchmark::State& st) {
  const KVCache& kv = cache(uint32_t(st.range(1)));
  EncodeOptions o;
  o.level = int(st.range(0));
  std::vector<uint8_t> frame(max_encoded_size(kv.shape, kv.dtype, o));
  KVView v = contiguous_view(const_cast<uint8_t*>(kv.data.data()), kv.dtype, kv.shape);
  auto r = encode_into(v, o, frame);
  if (!r.ok()) return st.SkipWithError(r.status().to_string().c_str());
  frame.resize(*r);
  std::vector<uint8_t> out(kv.data.size());
  KVView dst = contiguous_view(out.data(), kv.dtype, kv.shape);
  for (auto _ : st) {
    Status s = decode_into(frame, dst);
    if (!s.ok()) st.SkipWithError(s.to_string().c_str());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(kv.shape.elements() * 2));
  st.counters["bits_per_element"] = 8.0 * double(frame.size()) / double(kv.shape.elements());
}

// The quantizer alone (the encoder's row loop): grid offset of every element of one (layer, K/V)
// tensor.
void BM_Quantize(benchmark::State& st) {
  const KVCache& kv = cache(1024);
  const uint32_t C = uint32_t(kv.shape.channels()), T = kv.shape.tokens;
  std::vector<float> x(size_t(T) * C);
  for (size_t i = 0; i < x.size(); ++i) x[i] = detail::f16_to_f32(reinterpret_cast<const uint16_t*>(kv.data.data())[i]);
  std::vector<ChannelGrid> g(C);
  compute_grids(x.data(), T, C, kLevelStep[st.range(0)], StepMode::kLayer, g.data());
  std::vector<float> step(C);
  std::vector<double> inv(C), center(C);
  std::vector<int32_t> center_i(C);
  for (uint32_t c = 0; c < C; ++c) {
    step[c] = step_from_code(g[c].step_code);
    inv[c] = 1.0 / step[c];
    center[c] = center_i[c] = g[c].center;
  }
  const detail::RowGrid rg{step.data(), inv.data(), center.data(), center_i.data()};
  std::vector<int16_t> q(x.size());
  for (auto _ : st) {
    for (uint32_t t = 0; t < T; ++t) detail::quantize_row(&x[size_t(t) * C], rg, C, 2, &q[size_t(t) * C]);
    benchmark::DoNotOptimize(q.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(x.size() * 2));
}

// rANS alone on a geometric-like symbol distribution (~2.5 bits/symbol); bytes are 2 per symbol,
// as for fp16 elements.
std::vector<uint8_t> symbols(size_t n, std::vector<uint64_t>& counts) {
  std::mt19937 rng(7);
  std::geometric_distribution<int> geo(0.35);
  std::vector<uint8_t> s(n);
  counts.assign(32, 0);
  for (auto& v : s) ++counts[v = uint8_t(std::min(geo(rng), 31))];
  return s;
}

void BM_RansEncode(benchmark::State& st) {
  std::vector<uint64_t> counts;
  auto s = symbols(1 << 20, counts);
  auto t = FreqTable::from_counts(counts);
  std::vector<uint8_t> out;
  for (auto _ : st) {
    out.clear();
    (void)rans_encode(s, *t, out);
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(s.size() * 2));
  st.counters["bits_per_symbol"] = 8.0 * double(out.size()) / double(s.size());
}

void BM_RansDecode(benchmark::State& st) {
  std::vector<uint64_t> counts;
  auto s = symbols(1 << 20, counts);
  auto t = FreqTable::from_counts(counts);
  std::vector<uint8_t> stream, back(s.size());
  (void)rans_encode(s, *t, stream);
  for (auto _ : st) {
    auto r = rans_decode(stream, *t, back);
    benchmark::DoNotOptimize(back.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(s.size() * 2));
}

BENCHMARK(BM_Quantize)->Arg(4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RansEncode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RansDecode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Encode)->ArgsProduct({{0, 4, 8}, {1024}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->ArgsProduct({{0, 4, 8}, {1024}})->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
