// Encode / decode speed with and without a transform-coding profile (issue 10), in one process:
// GB/s of uncompressed fp16, medians of alternating repetitions, one thread unless --threads.
//   transform_bench --kv kv.safetensors --profile a.kvprofile [--level 4] [--reps 7] [--threads 1]
//   transform_bench --synthetic llama3-8b --tokens 512 [--layers 4] ...
// --clock cpu: this thread's CPU time instead of wall time (with --threads 1: what a busy shared
// machine distorts least; the default is wall).
// The synthetic case calibrates its profile (keys before RoPE) on another synthetic cache of
// the same shape (seed 2; the measured cache is seed 1), as `kvcodec calibrate` does on a model.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/dtype.hpp"
#include "common/profile_rows.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/eval.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/synthetic.hpp"

namespace {

using namespace kvcodec;
// Wall time, or with --clock cpu this thread's CPU time, in seconds.
bool g_cpu_clock = false;
double now() {
  if (g_cpu_clock) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "transform_bench: %s\n", what.c_str());
  std::exit(1);
}

KVCache synthetic(const std::string& name, uint32_t tokens, uint32_t layers, uint64_t seed) {
  auto kv = make_synthetic(name, tokens, DType::kF16, seed);
  if (!kv.ok()) die(kv.status().to_string());
  if (layers && layers < kv->shape.layers) {  // keep the first layers (same per-element cost)
    KVShape s = kv->shape;
    s.layers = layers;
    kv->data.resize(size_t(s.elements()) * dtype_size(kv->dtype));
    kv->shape = s;
  }
  return std::move(*kv);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string kv_path, profile_path, synth;
  uint32_t tokens = 512, layers = 4;
  int level = 4, reps = 7, threads = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--kv") kv_path = v;
    else if (a == "--profile") profile_path = v;
    else if (a == "--synthetic") synth = v;
    else if (a == "--tokens") tokens = uint32_t(std::stoul(v));
    else if (a == "--layers") layers = uint32_t(std::stoul(v));
    else if (a == "--level") level = std::stoi(v);
    else if (a == "--reps") reps = std::stoi(v);
    else if (a == "--threads") threads = std::stoi(v);
    else if (a == "--clock" && (v == "cpu" || v == "wall")) g_cpu_clock = v == "cpu";
    else die("unknown option " + a);
  }
  KVCache kv;
  Profile profile;
  if (!synth.empty()) {
    kv = synthetic(synth, tokens, layers, 1);
    std::vector<KVCache> calib;
    calib.push_back(synthetic(synth, tokens, layers, 2));
    auto lp = eval::calibrate_kv_profile(calib, true, 500000.0);
    if (!lp.ok()) die(lp.status().to_string());
    profile = std::move(*lp);
  } else {
    auto k = load_kv(kv_path);
    if (!k.ok()) die(k.status().to_string());
    kv = std::move(*k);
    auto bytes = read_file(profile_path);
    if (!bytes.ok()) die(bytes.status().to_string());
    auto p = parse_profile(*bytes);
    if (!p.ok()) die(p.status().to_string());
    profile = std::move(*p);
  }
  EncodeOptions eo;
  eo.level = level;
  eo.threads = threads;
  DecodeOptions dopt;
  dopt.threads = threads;
  const KVView in = kv.view();
  std::vector<uint8_t> plain(max_encoded_size(kv.shape, kv.dtype, eo)), coded(max_encoded_size(kv.shape, kv.dtype, eo, profile));
  std::vector<uint8_t> out(kv.data.size());
  KVView ov = contiguous_view(out.data(), kv.dtype, kv.shape);
  std::vector<float> coefs(size_t(kv.shape.elements()));
  std::vector<double> te0, te1, td0, td1, tdc;
  size_t n0 = 0, n1 = 0;
  for (int r = 0; r < reps; ++r) {
    double t = now();
    auto a = encode_into(in, eo, plain);
    te0.push_back(now() - t);
    t = now();
    auto b = encode_into(in, eo, profile, coded);
    te1.push_back(now() - t);
    if (!a.ok() || !b.ok()) die("encode failed");
    n0 = *a;
    n1 = *b;
    t = now();
    Status s0 = decode_into(std::span<const uint8_t>(plain).first(n0), ov, dopt);
    td0.push_back(now() - t);
    t = now();
    Status s1 = decode_into(std::span<const uint8_t>(coded).first(n1), profile, ov, dopt);
    td1.push_back(now() - t);
    if (!s0.ok() || !s1.ok()) die("decode failed");
    // The part of a decode with the profile that is the ordinary decoder: the coefficients'
    // version 3 frame (a copy) decoded to fp32.
    t = now();
    auto inner = detail::coefficient_frame(std::span<const uint8_t>(coded).first(n1), &profile);
    Status s2 = inner.ok() ? decode_into(*inner, contiguous_view(coefs.data(), DType::kF32, kv.shape), dopt) : inner.status();
    tdc.push_back(now() - t);
    if (!s2.ok()) die("coefficient decode failed");
  }
  const double gb = double(kv.shape.elements()) * 2 / 1e9;
  const KVShape& s = kv.shape;
  std::printf("shape %ux%ux%ux%u tokens %u, level %d, threads %d, reps %d, %s time; bits/element %.3f plain, %.3f profile\n",
              s.layers, 2u, s.kv_heads, s.head_dim, s.tokens, level, threads, reps, g_cpu_clock ? "thread CPU" : "wall",
              8.0 * double(n0) / double(s.elements()), 8.0 * double(n1) / double(s.elements()));
  std::printf("encode  plain %.4f s %.3f GB/s | profile %.4f s %.3f GB/s | ratio %.2f\n", median(te0), gb / median(te0),
              median(te1), gb / median(te1), median(te1) / median(te0));
  std::printf("decode  plain %.4f s %.3f GB/s | profile %.4f s %.3f GB/s | ratio %.2f\n", median(td0), gb / median(td0),
              median(td1), gb / median(td1), median(td1) / median(td0));
  std::printf("decode  of which the coefficients (copy + ordinary decoder to fp32) %.4f s, the inverse transform the rest\n",
              median(tdc));
  // A digest of the last decoded tensor, so old and new builds can be compared bit for bit.
  uint64_t h = 1469598103934665603ull;
  for (uint8_t c : out) h = (h ^ c) * 1099511628211ull;
  uint64_t hf = 1469598103934665603ull;
  for (size_t i = 0; i < n1; ++i) hf = (hf ^ coded[i]) * 1099511628211ull;
  std::printf("digest decoded %016llx frame %016llx\n", (unsigned long long)h, (unsigned long long)hf);
  return 0;
}
