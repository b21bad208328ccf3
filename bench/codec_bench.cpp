// Microbenchmarks of each stage: quantize, rANS encode/decode, whole encode/decode. Inputs are
// synthetic caches with statistics fitted to real ones (kvcodec/synthetic.hpp). Throughput is
// reported as bytes of uncompressed fp16 per second ("bytes_per_second"), plus bits/element.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "common/block.hpp"
#include "common/frame.hpp"
#include "encode/block_model.hpp"
#include "encode/encode_model.hpp"
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

// `kv` encoded at `level` (default options).
StatusOr<std::vector<uint8_t>> encoded(const KVCache& kv, int level) {
  EncodeOptions o;
  o.level = level;
  std::vector<uint8_t> frame(max_encoded_size(kv.shape, kv.dtype, o));
  KVView v = contiguous_view(const_cast<uint8_t*>(kv.data.data()), kv.dtype, kv.shape);
  KVCODEC_ASSIGN_OR_RETURN(size_t n, encode_into(v, o, frame));
  frame.resize(n);
  return frame;
}

void BM_Decode(benchmark::State& st) {
  const KVCache& kv = cache(uint32_t(st.range(1)));
  auto encoded_frame = encoded(kv, int(st.range(0)));
  if (!encoded_frame.ok()) return st.SkipWithError(encoded_frame.status().to_string().c_str());
  const std::vector<uint8_t>& frame = *encoded_frame;
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
  std::vector<float> inv_f(C), half_f(C);  // the float screen's constants, as the encoder sets them
  detail::screen_constants(step.data(), inv.data(), C, inv_f.data(), half_f.data());
  const detail::RowGrid rg{step.data(), inv.data(), center.data(), center_i.data(), inv_f.data(), half_f.data()};
  std::vector<int16_t> q(x.size());
  for (auto _ : st) {
    for (uint32_t t = 0; t < T; ++t) detail::quantize_row(&x[size_t(t) * C], rg, C, 2, &q[size_t(t) * C]);
    benchmark::DoNotOptimize(q.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(x.size() * 2));
}

// The model builder alone (issue 13, "one model builder"): the histograms of layer 0 K of the
// 1024-token cache at level range(1) (0 = lossless byte planes), built into channel groups,
// tables, lane codes and the serialised model by the CPU builder (range(0) = 0: sparse counts,
// build_layer_model + write_layer_model) or by the device algorithm run on a host block
// (range(0) = 1: block_build_model on HostBlock, dense [slot][bin][channel] histograms).
struct ModelInput {
  uint32_t C = 0, slots = 1, bins = 0;
  bool lossless = false;
  std::vector<uint32_t> hist;  // [slot][bin][channel]
  std::vector<uint64_t> feature;
  std::vector<ChannelGrid> grids;
};

ModelInput model_input(int level) {
  const KVCache& kv = cache(1024);
  ModelInput in;
  in.C = uint32_t(kv.shape.channels());
  const uint32_t C = in.C, T = kv.shape.tokens;
  const uint16_t* h = reinterpret_cast<const uint16_t*>(kv.data.data());  // layer 0 K: the first T x C
  in.lossless = level == 0;
  in.bins = in.lossless ? detail::kLosslessBins : detail::kLossyBins;
  in.slots = in.lossless ? 2 : 1;
  in.hist.assign(size_t(in.slots) * in.bins * C, 0);
  in.feature.assign(C, 0);
  if (in.lossless) {
    for (size_t i = 0; i < size_t(T) * C; ++i)
      for (uint32_t p = 0; p < 2; ++p) ++in.hist[(p * in.bins + ((h[i] >> (8 * p)) & 0xff)) * C + i % C];
    for (size_t i = 0; i < size_t(T) * C; ++i) in.feature[i % C] += (h[i] >> 8) & 0x7f;
    return in;
  }
  std::vector<float> x(size_t(T) * C);
  for (size_t i = 0; i < x.size(); ++i) x[i] = detail::f16_to_f32(h[i]);
  in.grids.resize(C);
  compute_grids(x.data(), T, C, kLevelStep[level] * layer_factor(0, kv.shape.layers), StepMode::kLayer,
                in.grids.data());
  std::vector<float> step(C);
  std::vector<double> inv(C), center(C);
  std::vector<int32_t> center_i(C);
  for (uint32_t c = 0; c < C; ++c) {
    step[c] = step_from_code(in.grids[c].step_code);
    inv[c] = 1.0 / step[c];
    center[c] = center_i[c] = in.grids[c].center;
  }
  const detail::RowGrid rg{step.data(), inv.data(), center.data(), center_i.data()};
  std::vector<int16_t> q(C);
  for (uint32_t t = 0; t < T; ++t) {
    detail::quantize_row(&x[size_t(t) * C], rg, C, 2, q.data());
    for (uint32_t c = 0; c < C; ++c) {
      ++in.hist[size_t(detail::lossy_bin(q[c])) * C + c];
      if (q[c] != detail::kEscapeQ) in.feature[c] += uint64_t(q[c] < 0 ? -q[c] : q[c]);
    }
  }
  return in;
}

void BM_ModelBuild(benchmark::State& st) {
  const ModelInput in = model_input(int(st.range(1)));
  const uint32_t C = in.C, groups = 8;
  if (st.range(0) == 0) {
    detail::ChannelCounts cc;  // the CPU encoder counts into this form directly
    cc.reset(C, in.slots, in.bins);
    for (uint32_t c = 0; c < C; ++c) {
      for (uint32_t i = 0; i < in.slots * in.bins; ++i)
        if (const uint32_t n = in.hist[size_t(i) * C + c]) {
          cc.index.push_back(i);
          cc.count.push_back(n);
        }
      cc.begin.push_back(uint32_t(cc.index.size()));
    }
    FrameInfo f;
    f.level = in.lossless ? 0 : 4;
    std::vector<uint32_t> codes;
    std::vector<uint8_t> bytes;
    for (auto _ : st) {
      detail::LayerModel m;
      if (!detail::build_layer_model(cc, in.feature.data(), in.lossless, groups, m, codes).ok())
        return st.SkipWithError("build_layer_model failed");
      for (const ChannelGrid& g : in.grids) {
        m.step_code.push_back(g.step_code);
        m.center.push_back(g.center);
      }
      bytes.clear();
      detail::write_layer_model(f, m, bytes);
      benchmark::DoNotOptimize(bytes.data());
    }
    st.counters["model_bytes"] = double(bytes.size());
    return;
  }
  detail::EncodeLayout el;
  el.lossless = in.lossless;
  el.layers = 1;
  el.channels = C;
  el.slots = in.slots;
  el.bins = in.bins;
  el.max_tables = groups * in.slots;
  const detail::ModelLayout ml = detail::model_layout(el);
  std::vector<uint32_t> codes(el.max_tables * el.bins);
  std::vector<uint16_t> table_base(C);
  std::vector<uint8_t> model(ml.model_stride), scratch(ml.scratch_stride);
  std::vector<uint64_t> sums(ml.sums_bytes / 8);
  uint32_t model_size = 0;
  const detail::ModelArgs args{in.hist.data(), in.feature.data(), in.grids.data(), codes.data(), table_base.data(),
                               model.data(),   &model_size,       scratch.data()};
  for (auto _ : st) {
    detail::HostBlock blk;
    detail::ModelShared sh;
    if (!detail::block_build_model(blk, el, ml, args, 0, sh, sums.data())) return st.SkipWithError("block model failed");
    benchmark::DoNotOptimize(model.data());
  }
  st.counters["model_bytes"] = double(model_size);
}

// Opening a frame's head (what a streaming client does once per level before decoding chunks):
// parsing the models and building the decode tables. Reported per head, 4 layers x 1024 channels.
void BM_OpenHead(benchmark::State& st) {
  auto frame = encoded(cache(256), int(st.range(0)));
  if (!frame.ok()) return st.SkipWithError(frame.status().to_string().c_str());
  for (auto _ : st) {
    auto d = FrameDecoder::open(*frame);
    if (!d.ok()) return st.SkipWithError(d.status().to_string().c_str());
    benchmark::DoNotOptimize(&*d);
  }
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
BENCHMARK(BM_ModelBuild)->ArgsProduct({{0, 1}, {0, 4}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RansDecode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Encode)->ArgsProduct({{0, 2, 4, 8}, {1024}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->ArgsProduct({{0, 4, 8}, {1024}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_OpenHead)->Arg(1)->Arg(5)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
